"""MNIST and CIFAR-10 as tensors in [0, 1]: official files, torchvision download, or the offline stand-in.

Where the data comes from (first match wins), for `root` = the argument, else
$HASHROBUST_DATA, else the repository's `data/`:

1. official files already under root (torchvision's layout: MNIST/raw/...,
   cifar-10-batches-py/...);
2. CIFAR-10 only: `cifar10-jpeg.zip` under root, the JPEG (quality 75)
   re-encoding of CIFAR-10 used on machines without internet; decoded once
   and cached as uint8 under data/cache/ (git-ignored). Its pixels are not
   the official ones, and every result on it says so through `.variant`;
3. torchvision's download of the official files into root (needs internet).

Nothing available raises one error that names HASHROBUST_DATA and the download.
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

__all__ = ["ImageDataset", "load_dataset", "data_root", "CIFAR10_CLASSES", "DATASETS"]

PROJECT_DIR = Path(__file__).resolve().parent.parent
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


def data_root(root: str | os.PathLike | None = None) -> Path:
    """The data folder: `root`, else $HASHROBUST_DATA, else the repository's data/."""
    if root is not None:
        return Path(root)
    env = os.environ.get("HASHROBUST_DATA")
    return Path(env) if env else PROJECT_DIR / "data"


def _cache_dir() -> Path:
    return Path(os.environ.get("HASHROBUST_CACHE", PROJECT_DIR / "data" / "cache"))


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
    tmp = cache.with_suffix(".tmp.npz")
    np.savez(tmp, images=images, labels=labels)
    tmp.replace(cache)
    return images, labels


def _missing(name: str, root: Path, error: Exception) -> FileNotFoundError:
    extra = f" or {STAND_IN_ZIP}" if name == "cifar10" else ""
    return FileNotFoundError(
        f"No {name} data under {root} (torchvision's layout{extra}), and downloading it failed "
        f"({type(error).__name__}: {error}). Set HASHROBUST_DATA to a folder that holds it "
        f"(e.g. HASHROBUST_DATA=../shared/datasets), pass root=..., or run once with internet "
        f"access so torchvision can download it.")


def load_dataset(name: str, split: str = "test", root: str | os.PathLike | None = None) -> ImageDataset:
    """MNIST or CIFAR-10 as float32 images in [0, 1], NCHW, with int64 labels.

    Paper: Liu et al. Sec. 5 (MNIST and CIFAR-10).

    Args:
        name: "mnist" or "cifar10".
        split: "train" or "test".
        root: data folder; default $HASHROBUST_DATA, else the repository's data/.

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
    train = split == "train"
    if name == "mnist":
        try:
            ds = torchvision.datasets.MNIST(str(folder), train=train, download=True)
        except Exception as error:  # no files and no network: one clear message
            raise _missing(name, folder, error) from error
        return _to_dataset(ds.data, ds.targets, name, split, OFFICIAL)

    if (folder / "cifar-10-batches-py").is_dir():
        ds = torchvision.datasets.CIFAR10(str(folder), train=train, download=False)
        return _to_dataset(ds.data, ds.targets, name, split, OFFICIAL)
    if (folder / STAND_IN_ZIP).is_file():
        images, labels = _load_stand_in(folder / STAND_IN_ZIP, split)
        return _to_dataset(images, labels, name, split, STAND_IN)
    try:
        ds = torchvision.datasets.CIFAR10(str(folder), train=train, download=True)
    except Exception as error:
        raise _missing(name, folder, error) from error
    return _to_dataset(ds.data, ds.targets, name, split, OFFICIAL)
