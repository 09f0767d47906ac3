"""MNIST and CIFAR-10 as tensors in [0, 1]: official files, torchvision download, or the offline stand-in.

Where the data comes from (first match wins), for `root` = the argument, else
$HASHROBUST_DATA, else the repository's `data/` (an installed, non-checkout
hashrobust: `datasets/` in the user's cache folder; see `data_root` for how a
relative path is resolved):

1. official files already under root (torchvision's layout: MNIST/raw/...,
   cifar-10-batches-py/...);
2. CIFAR-10 only: `cifar10-jpeg.zip` under root, the JPEG (quality 75)
   re-encoding of CIFAR-10 used on machines without internet; decoded once
   and cached as uint8 in $HASHROBUST_CACHE, else the user's cache folder
   (`~/.cache/hashrobust` on Linux), never in the repository. Its pixels are
   not the official ones, and every result on it says so through `.variant`;
3. torchvision's download of the official files into root (needs internet;
   only into a root that exists: a missing root is never created).

Nothing available raises one error that names the absolute root, HASHROBUST_DATA
and the download.
"""
from __future__ import annotations

import io
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from ._validation import check_choice, check_device

__all__ = ["ImageDataset", "load_dataset", "data_root", "shipped_path", "CIFAR10_CLASSES", "DATASETS"]

PROJECT_DIR = Path(__file__).resolve().parent.parent
# Where a wheel or a non-editable install keeps what the repository ships (pyproject.toml's package-dir maps
# data/checkpoints and results/<dataset> here); a source checkout reads them in place.
SHIPPED_DIR = Path(__file__).resolve().parent / "_shipped"
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
DATASETS = ("mnist", "cifar10")
OFFICIAL = "official"
STAND_IN = "jpeg-q75 stand-in"
STAND_IN_ZIP = "cifar10-jpeg.zip"


@dataclass
class ImageDataset(Dataset):
    """A labelled image set held in memory: `.images` (N, C, H, W) float32 in [0, 1], `.labels` (N,) int64."""

    images: Tensor
    labels: Tensor
    name: str
    split: str
    variant: str

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        return self.images[i], self.labels[i]

    def subset(self, n: int) -> ImageDataset:
        """The first n examples (a fixed, reproducible evaluation subset)."""
        return ImageDataset(self.images[:n], self.labels[:n], self.name, self.split, self.variant)

    def to(self, device: torch.device | str) -> ImageDataset:
        """The same examples with images and labels on `device` (the tensors themselves where they already are).

        `device`: "cpu", "cuda", "cuda:1", "mps" or a torch.device; one this machine lacks raises ValueError
        (`_validation.check_device`) naming it and the devices the machine has.
        """
        device = check_device(device, "ImageDataset.to")
        return ImageDataset(self.images.to(device), self.labels.to(device), self.name, self.split, self.variant)

    @property
    def description(self) -> str:
        """E.g. 'CIFAR-10 test (jpeg-q75 stand-in)': what every figure and table names."""
        pretty = {"mnist": "MNIST", "cifar10": "CIFAR-10"}[self.name]
        return f"{pretty} {self.split} ({self.variant})"


def _in_source_checkout() -> bool:
    """True when hashrobust is imported from a source checkout (pyproject.toml beside the package)."""
    return (PROJECT_DIR / "pyproject.toml").is_file()


def shipped_path(*parts: str) -> Path:
    """A file or folder the repository ships, e.g. shipped_path("data", "checkpoints") or shipped_path("results").

    From a source checkout: the repository's own folder. From an installed package (wheel, sdist, `pip install .`):
    the copy inside the package, `hashrobust/_shipped/checkpoints` and `hashrobust/_shipped/results`, so the
    pretrained zoo and the committed results travel with every install route.
    """
    if _in_source_checkout():
        return PROJECT_DIR.joinpath(*parts)
    allowed = {("data", "checkpoints"): ("checkpoints",), ("results",): ("results",)}
    for prefix, inside in allowed.items():
        if parts[:len(prefix)] == prefix:
            return SHIPPED_DIR.joinpath(*inside, *parts[len(prefix):])
    raise ValueError(f"shipped_path{parts}: an install ships only data/checkpoints/... and results/...")


def _absolute(path: str | os.PathLike, base: Path) -> Path:
    """`path` with ~ expanded, joined to `base` if relative, and '..' folded (no symlink is followed)."""
    path = Path(path).expanduser()
    return Path(os.path.normpath(path if path.is_absolute() else base / path))


def _from_environment(variable: str) -> Path | None:
    """$variable as an absolute path (the rule of `data_root`), or None where it is unset or empty."""
    value = os.environ.get(variable)
    if not value:
        return None
    return _absolute(value, PROJECT_DIR if _in_source_checkout() else Path.cwd())


def data_root(root: str | os.PathLike | None = None) -> Path:
    """The data folder, always as an absolute path: `root`, else $HASHROBUST_DATA, else a default.

    The default is the repository's data/ in a source checkout, and `datasets/` in the cache folder
    (`_cache_dir`: $HASHROBUST_CACHE, else ~/.cache/hashrobust) for an installed package, so a download
    never lands in site-packages.

    - `root` (the argument) is a Python path: a relative one is taken from the current working directory.
    - An absolute $HASHROBUST_DATA is used as is (after expanding a leading ~).
    - A relative $HASHROBUST_DATA is resolved against the repository root (PROJECT_DIR, the folder holding
      pyproject.toml) when hashrobust runs from a source checkout, so the README's
      `export HASHROBUST_DATA=../shared/datasets` means the same folder for `make test` (run in the
      repository) and for a notebook kernel (started in notebooks/); for an installed (non-checkout)
      hashrobust it is resolved against the current working directory.

    Every "data not found" error names this absolute path. Nothing here touches the disk but the
    check for pyproject.toml.
    """
    if root is not None:
        return _absolute(root, Path.cwd())
    found = _from_environment("HASHROBUST_DATA")
    if found is not None:
        return found
    return PROJECT_DIR / "data" if _in_source_checkout() else _cache_dir() / "datasets"


def _describe(folder: Path, root: str | os.PathLike | None) -> str:
    """Where `folder` came from, for error messages."""
    if root is not None:
        return f"root={str(root)!r}"
    value = os.environ.get("HASHROBUST_DATA")
    if not value:
        return "the default: HASHROBUST_DATA is not set"
    if Path(value).expanduser().is_absolute():
        return f"HASHROBUST_DATA={value}"
    base = "the repository root" if _in_source_checkout() else "the current working directory"
    return f"HASHROBUST_DATA={value}, relative, so resolved against {base}"


def _user_cache_dir() -> Path:
    """The user's cache folder for hashrobust: platformdirs' where it is installed, else $XDG_CACHE_HOME or ~/.cache."""
    try:
        import platformdirs
    except ImportError:
        base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
        return _absolute(base, Path.cwd()) / "hashrobust"
    return Path(platformdirs.user_cache_dir("hashrobust", appauthor=False))


def _cache_dir() -> Path:
    """Where decoded data are cached: $HASHROBUST_CACHE (relative: as for HASHROBUST_DATA), else the user's cache.

    Never site-packages or the repository (`~/.cache/hashrobust` on Linux, honouring $XDG_CACHE_HOME).
    """
    return _from_environment("HASHROBUST_CACHE") or _user_cache_dir()


MNIST_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def _mnist_found(folder: Path) -> bool:
    """True when the four official MNIST files are under folder/MNIST/raw (what torchvision reads offline)."""
    raw = folder / "MNIST" / "raw"
    return all((raw / name).is_file() for name in MNIST_FILES)


def _to_dataset(images_uint8: np.ndarray | Tensor, labels, name: str, split: str, variant: str) -> ImageDataset:
    images = torch.as_tensor(images_uint8)
    if images.ndim == 3:  # (N, H, W) -> (N, 1, H, W)
        images = images.unsqueeze(1)
    elif images.shape[-1] == 3:  # (N, H, W, C) -> (N, C, H, W)
        images = images.permute(0, 3, 1, 2)
    images = images.contiguous().float().div_(255)
    return ImageDataset(images, torch.as_tensor(labels, dtype=torch.int64), name, split, variant)


def _decode_stand_in(zip_path: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Decode test/ or train/ of the JPEG zip, ordered by (file number, class): classes interleave."""
    from PIL import Image

    with zipfile.ZipFile(zip_path) as archive:
        entries = []
        for name in archive.namelist():
            parts = name.split("/")
            if len(parts) == 3 and parts[0] == split and parts[2].endswith(".jpg"):
                entries.append((int(parts[2][:-4]), CIFAR10_CLASSES.index(parts[1]), name))
        entries.sort()
        images = np.empty((len(entries), 32, 32, 3), dtype=np.uint8)
        for i, (_, _, name) in enumerate(entries):
            images[i] = np.asarray(Image.open(io.BytesIO(archive.read(name))).convert("RGB"))
    return images, np.array([label for _, label, _ in entries], dtype=np.int64)


def _load_stand_in(zip_path: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    cache = _cache_dir() / f"cifar10-jpeg-{split}-{zip_path.stat().st_size}.npz"
    if cache.exists():
        with np.load(cache) as stored:
            return stored["images"], stored["labels"]
    images, labels = _decode_stand_in(zip_path, split)
    cache.parent.mkdir(parents=True, exist_ok=True)
    # a name of this process's own, so that processes decoding at the same time (several experiments
    # started together) never rename each other's file; the rename itself is atomic
    tmp = cache.with_name(f"{cache.stem}.{os.getpid()}.tmp.npz")
    np.savez(tmp, images=images, labels=labels)
    tmp.replace(cache)
    return images, labels


def _missing(name: str, folder: Path, source: str, error: Exception | None) -> FileNotFoundError:
    extra = f" or {STAND_IN_ZIP}" if name == "cifar10" else ""
    if error is None:
        why = "the folder does not exist, so nothing was downloaded into it"
    else:
        why = f"downloading it failed ({type(error).__name__}: {error})"
    return FileNotFoundError(
        f"No {name} data under {folder} ({source}; torchvision's layout{extra}): {why}. Set HASHROBUST_DATA "
        f"to a folder that holds it (an absolute path, or one relative to the repository root, e.g. "
        f"HASHROBUST_DATA=../shared/datasets), pass root=..., or run once with internet access so "
        f"torchvision can download it.")


def _download(make, folder: Path, name: str, source: str, makes: tuple[Path, ...] = ()):
    """torchvision's `make()` (download=True) into an existing folder.

    On failure, the folders of `makes` (deepest last) that it created and left empty are removed again, and one
    clear FileNotFoundError is raised (torchvision's MNIST makes MNIST/raw before it tries the network).
    """
    existed = {path for path in makes if path.exists()}
    try:
        return make()
    except Exception as error:  # no files and no network: one clear message
        for path in reversed(makes):
            if path not in existed:
                try:
                    path.rmdir()  # only if empty
                except OSError:
                    pass
        raise _missing(name, folder, source, error) from error


def load_dataset(name: str, split: str = "test", root: str | os.PathLike | None = None) -> ImageDataset:
    """MNIST or CIFAR-10 as float32 images in [0, 1], NCHW, with int64 labels.

    Paper: Liu et al. (ASP-DAC 2018), abstract (MNIST and CIFAR-10).

    Args:
        name: "mnist" or "cifar10".
        split: "train" or "test".
        root: data folder; default $HASHROBUST_DATA (relative: to the repository root), else the
            repository's data/, or for an installed package `datasets/` in the user's cache folder (created
            on first use, so that torchvision can download into it, e.g. on Colab). See `data_root`.

    Returns:
        An ImageDataset (a torch Dataset) with `.variant` "official" or "jpeg-q75 stand-in".

    Example:
        >>> test = load_dataset("mnist", "test")
        >>> test.images.shape, test.labels[:4].tolist(), test.variant
        (torch.Size([10000, 1, 28, 28]), [7, 2, 1, 0], 'official')
    """
    import torchvision

    check_choice(name, "dataset", DATASETS)
    check_choice(split, "split", ("train", "test"))
    folder = data_root(root)
    if root is None and not os.environ.get("HASHROBUST_DATA") and not _in_source_checkout():
        folder.mkdir(parents=True, exist_ok=True)  # an installed package's own download folder, in the user's cache
    source = _describe(folder, root)
    train = split == "train"
    if not folder.is_dir():  # torchvision's download=True would create folder/MNIST/raw, empty, offline
        raise _missing(name, folder, source, None)
    if name == "mnist":
        if _mnist_found(folder):
            ds = torchvision.datasets.MNIST(str(folder), train=train, download=False)
        else:
            ds = _download(lambda: torchvision.datasets.MNIST(str(folder), train=train, download=True),
                           folder, name, source, makes=(folder / "MNIST", folder / "MNIST" / "raw"))
        return _to_dataset(ds.data, ds.targets, name, split, OFFICIAL)

    if (folder / "cifar-10-batches-py").is_dir():
        ds = torchvision.datasets.CIFAR10(str(folder), train=train, download=False)
        return _to_dataset(ds.data, ds.targets, name, split, OFFICIAL)
    if (folder / STAND_IN_ZIP).is_file():
        images, labels = _load_stand_in(folder / STAND_IN_ZIP, split)
        return _to_dataset(images, labels, name, split, STAND_IN)
    ds = _download(lambda: torchvision.datasets.CIFAR10(str(folder), train=train, download=True), folder, name, source)
    return _to_dataset(ds.data, ds.targets, name, split, OFFICIAL)
