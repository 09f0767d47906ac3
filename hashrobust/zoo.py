"""The pretrained zoo: checkpoints under data/checkpoints/, verified against MANIFEST.json.

A checkpoint `<dataset>-<arch>-r<ratio>.pt` holds what hardware would store:
the real weights, biases, BatchNorm statistics and each hashed layer's seed
and ratio (never the expanded virtual weights or the hash buffers). Its
manifest entry records its size and sha256 and also the command, seed,
epochs, dataset variant and clean test accuracy.

Two checks guard every load. First, the checkpoint file is read once: its
size and sha256 are compared with its manifest entry, and
`torch.load(..., weights_only=True)` (no pickled code runs) reads those same
bytes from memory, so a file changed between the check and the load cannot
slip through. Second, the shipped manifest is pinned: MANIFEST_SHA256 below
is the sha256 of data/checkpoints/MANIFEST.json, and a load from that folder
refuses a manifest with another hash, so a checkpoint rewritten together with
its manifest entry is caught too (git tracks this file). After rebuilding the
zoo on purpose, `python scripts/pin_manifest.py` updates the pin. Manifests
in other folders (`hashrobust train --out DIR`) are not pinned: their entries
catch corrupt or truncated files, not someone who can rewrite both.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import warnings
from pathlib import Path

import torch
from torch import nn

from ._validation import check_choice, check_device
from .data import shipped_path
from .models import build_model

__all__ = ["CHECKPOINT_DIR", "checkpoint_name", "save_checkpoint", "load_checkpoint", "load_pretrained",
           "read_manifest", "standard_entries", "MANIFEST_SHA256"]

CHECKPOINT_DIR = shipped_path("data", "checkpoints")  # an installed package: its own copy (`shipped_path`)
MANIFEST = "MANIFEST.json"
FORMAT = 1
# The sha256 of the shipped data/checkpoints/MANIFEST.json; `python scripts/pin_manifest.py` rewrites this line.
MANIFEST_SHA256 = "bae847dbc284fdf73d158943a063ae40a84c80c23b13017997ef8e449c32cf90"
_PIN_HOWTO = ("restore it with `git checkout data/checkpoints`, or, if you rebuilt the zoo on purpose, "
              "re-pin it with `python scripts/pin_manifest.py` and commit hashrobust/zoo.py with the checkpoints")


TRAININGS = ("standard", "fgsm-at", "pgd-at")  # standard, or adversarial training with fast FGSM / PGD


def checkpoint_name(dataset: str, arch: str, ratio: float, training: str = "standard") -> str:
    """E.g. "mnist-mlp3-r8.pt" (standard training), "mnist-mlp3-r8-fgsm-at.pt" (fast FGSM adversarial training).

    Example:
        >>> checkpoint_name("mnist", "lenet", 8, "pgd-at")
        'mnist-lenet-r8-pgd-at.pt'
    """
    check_choice(training, "training", TRAININGS)
    return f"{dataset}-{arch}-r{ratio:g}{'' if training == 'standard' else '-' + training}.pt"


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _is_shipped(directory: Path) -> bool:
    """Whether `directory` is the shipped zoo (CHECKPOINT_DIR), the only folder whose manifest is pinned."""
    return directory.resolve() == Path(CHECKPOINT_DIR).resolve()


def read_manifest(directory: str | os.PathLike | None = None) -> dict[str, dict]:
    """The manifest: checkpoint file name -> entry (command, seed, accuracy, sha256, bytes, ...).

    For listing and reporting only: it does not check the pin. `load_checkpoint` checks the
    manifest against MANIFEST_SHA256 itself before it trusts an entry.
    """
    path = Path(directory or CHECKPOINT_DIR) / MANIFEST
    return json.loads(path.read_text()) if path.exists() else {}


def standard_entries(manifest: dict[str, dict] | None = None) -> dict[str, dict]:
    """The entries of the standardly trained models (`manifest`, default the shipped one's): what the paper's
    experiments and notebooks 01-06 use. The adversarially trained ones (notebook 07) share their (arch, ratio).

    Example:
        >>> sorted({e["training"] for e in read_manifest().values() if "training" in e})
        ['fgsm-at', 'pgd-at']
        >>> any("training" in e for e in standard_entries().values())
        False
    """
    manifest = read_manifest() if manifest is None else manifest
    return {name: entry for name, entry in manifest.items() if entry.get("training", "standard") == "standard"}


def _verified_manifest(directory: Path) -> dict[str, dict]:
    """The manifest of `directory` ({} if it has none), checked against the pin if it is the shipped zoo.

    The hash and the parse use the same bytes, read once, so the checked file is the parsed file.
    """
    path = directory / MANIFEST
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return {}
    if _is_shipped(directory):
        found = _sha256(data)
        if found != MANIFEST_SHA256:
            raise ValueError(f"{path} does not match the sha256 pinned in hashrobust/zoo.py (MANIFEST_SHA256): "
                             f"expected sha256 {MANIFEST_SHA256}, got {found}. The shipped manifest was changed, "
                             f"so none of its entries is trusted; {_PIN_HOWTO}.")
    return json.loads(data)


def save_checkpoint(model: nn.Module, dataset: str, arch: str, ratio: float, hashed: str, entry: dict,
                    directory: str | os.PathLike | None = None, training: str = "standard") -> Path:
    """Write the model's state_dict and add/replace its manifest entry (with sha256 and bytes).

    Saving into the shipped zoo (CHECKPOINT_DIR) changes its pinned manifest: a UserWarning then says
    to re-pin with `python scripts/pin_manifest.py`, since loads from there fail until then.
    """
    directory = Path(directory or CHECKPOINT_DIR)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / checkpoint_name(dataset, arch, ratio, training)
    state = {k: v.detach().cpu() if torch.is_tensor(v) else v for k, v in model.state_dict().items()}
    buffer = io.BytesIO()  # serialised once: the bytes written are the bytes hashed
    torch.save({"format": FORMAT, "dataset": dataset, "arch": arch, "ratio": float(ratio), "hashed": hashed,
                "state_dict": state}, buffer)
    data = buffer.getvalue()
    path.write_bytes(data)
    manifest = read_manifest(directory)
    trained = {} if training == "standard" else {"training": training}
    manifest[path.name] = {**entry, "dataset": dataset, "arch": arch, "ratio": float(ratio), "hashed": hashed,
                           **trained, "sha256": _sha256(data), "bytes": len(data)}
    text = (json.dumps(dict(sorted(manifest.items())), indent=2) + "\n").encode()
    tmp = directory / (MANIFEST + ".tmp")
    tmp.write_bytes(text)
    tmp.replace(directory / MANIFEST)
    # Rewriting the pin here would let any save re-bless the zoo; a person re-pins (and commits) on purpose.
    found = _sha256(text) if _is_shipped(directory) else MANIFEST_SHA256
    if found != MANIFEST_SHA256:
        warnings.warn(f"{path.name} was saved into the shipped zoo {directory}, whose {MANIFEST} now has sha256 "
                      f"{found}, not the pinned {MANIFEST_SHA256}: loading from {directory} fails until you "
                      f"re-pin with `python scripts/pin_manifest.py` (then commit hashrobust/zoo.py with the "
                      f"checkpoints).", UserWarning, stacklevel=2)
    return path


def load_checkpoint(path: str | os.PathLike, device: torch.device | str = "cpu") -> nn.Module:
    """An eval-mode model from a checkpoint file, verified against the manifest beside it, on `device`.

    `device` ("cpu", "cuda", "cuda:1", "mps" or a torch.device) is checked first, before any file is
    read (`_validation.check_device`). The file is read once; the bytes whose size and sha256 match
    the manifest entry are the bytes loaded. In the shipped zoo (CHECKPOINT_DIR) the manifest must
    first match MANIFEST_SHA256; manifests in other folders are not pinned.

    Raises:
        FileNotFoundError: the file, or its manifest entry, is missing.
        ValueError: `device` is malformed or not on this machine; the file's size or sha256 differs from
            the manifest (tampered or truncated), or the shipped manifest's sha256 differs from the pin.
    """
    device = check_device(device, "load_checkpoint")
    path = Path(path)
    manifest = _verified_manifest(path.parent)
    if not path.is_file():
        raise FileNotFoundError(f"No checkpoint {path}. Known checkpoints: {', '.join(manifest) or 'none'}.")
    if path.name not in manifest:
        raise FileNotFoundError(f"{path} has no entry in {path.parent / MANIFEST}; refusing an unverified file.")
    expected = manifest[path.name]
    data = path.read_bytes()
    size, sha = len(data), _sha256(data)
    if size != expected["bytes"] or sha != expected["sha256"]:
        raise ValueError(f"{path} does not match {MANIFEST}: expected sha256 {expected['sha256']} "
                         f"({expected['bytes']} bytes), got {sha} ({size} bytes). The file is corrupt, "
                         f"truncated or was changed; restore it with `git checkout -- {path}`.")
    stored = torch.load(io.BytesIO(data), map_location=device, weights_only=True)
    model = build_model(stored["arch"], stored["ratio"], stored["hashed"])
    model.load_state_dict(stored["state_dict"])
    return model.to(device).eval()


def load_pretrained(dataset: str, arch: str, ratio: float = 1, device: torch.device | str = "cpu",
                    directory: str | os.PathLike | None = None, training: str = "standard") -> nn.Module:
    """A shipped model of the zoo, in eval mode, after checking its sha256 (and the manifest's pin).

    Paper: reconstructed protocol, docs/protocol.md §7 (the dense and hash-compressed networks under attack).

    Args:
        dataset: "mnist" or "cifar10".
        arch: e.g. "mlp3", "lenet", "cifar_cnn".
        ratio: compression ratio (1 = dense).
        device: where to put the model: "cpu", "cuda", "cuda:1", "mps" or a torch.device; checked first,
            before any file is read (`_validation.check_device`).
        training: "standard", or "fgsm-at" / "pgd-at" for an adversarially trained model
            (adversarial_training.py), where the zoo has one.

    Example:
        >>> model = load_pretrained("mnist", "mlp3", ratio=8)
        >>> count_parameters(model)
        (100260, 795010)

    Used in: every notebook from 01_hashednets.ipynb on.
    """
    device = check_device(device, "load_pretrained")
    directory = Path(directory or CHECKPOINT_DIR)
    name = checkpoint_name(dataset, arch, ratio, training)
    manifest = read_manifest(directory)
    if name not in manifest:
        check_choice(name, "checkpoint", manifest or ["(the zoo is empty)"])
    return load_checkpoint(directory / name, device)
