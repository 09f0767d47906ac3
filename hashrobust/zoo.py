"""The pretrained zoo: checkpoints under data/checkpoints/, verified against MANIFEST.json.

A checkpoint `<dataset>-<arch>-r<ratio>.pt` holds what hardware would store:
the real weights, biases, BatchNorm statistics and each hashed layer's seed
and ratio (never the expanded virtual weights or the hash buffers). It is
loaded with `torch.load(..., weights_only=True)` (no pickled code runs) and
only after its size and sha256 match the manifest, whose entry also records
the command, seed, epochs, dataset variant and clean test accuracy.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch
from torch import nn

from ._validation import check_choice
from .data import PROJECT_DIR
from .models import build_model

__all__ = ["CHECKPOINT_DIR", "checkpoint_name", "save_checkpoint", "load_checkpoint", "load_pretrained",
           "read_manifest"]

CHECKPOINT_DIR = PROJECT_DIR / "data" / "checkpoints"
MANIFEST = "MANIFEST.json"
FORMAT = 1


def checkpoint_name(dataset: str, arch: str, ratio: float) -> str:
    """E.g. checkpoint_name("mnist", "mlp3", 8) == "mnist-mlp3-r8.pt"."""
    return f"{dataset}-{arch}-r{ratio:g}.pt"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_manifest(directory: str | os.PathLike | None = None) -> dict[str, dict]:
    """The manifest: checkpoint file name -> entry (command, seed, accuracy, sha256, bytes, ...)."""
    path = Path(directory or CHECKPOINT_DIR) / MANIFEST
    return json.loads(path.read_text()) if path.exists() else {}


def save_checkpoint(model: nn.Module, dataset: str, arch: str, ratio: float, hashed: str, entry: dict,
                    directory: str | os.PathLike | None = None) -> Path:
    """Write the model's state_dict and add/replace its manifest entry (with sha256 and bytes)."""
    directory = Path(directory or CHECKPOINT_DIR)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / checkpoint_name(dataset, arch, ratio)
    state = {k: v.detach().cpu() if torch.is_tensor(v) else v for k, v in model.state_dict().items()}
    torch.save({"format": FORMAT, "dataset": dataset, "arch": arch, "ratio": float(ratio), "hashed": hashed,
                "state_dict": state}, path)
    manifest = read_manifest(directory)
    manifest[path.name] = {**entry, "dataset": dataset, "arch": arch, "ratio": float(ratio), "hashed": hashed,
                           "sha256": _sha256(path), "bytes": path.stat().st_size}
    tmp = directory / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(dict(sorted(manifest.items())), indent=2) + "\n")
    tmp.replace(directory / MANIFEST)
    return path


def load_checkpoint(path: str | os.PathLike, device: torch.device | str = "cpu") -> nn.Module:
    """An eval-mode model from a checkpoint file, verified against the manifest beside it.

    Raises:
        FileNotFoundError: the file, or its manifest entry, is missing.
        ValueError: the file's size or sha256 differs from the manifest (tampered or truncated).
    """
    path = Path(path)
    manifest = read_manifest(path.parent)
    if not path.is_file():
        raise FileNotFoundError(f"No checkpoint {path}. Known checkpoints: {', '.join(manifest) or 'none'}.")
    if path.name not in manifest:
        raise FileNotFoundError(f"{path} has no entry in {path.parent / MANIFEST}; refusing an unverified file.")
    expected = manifest[path.name]
    size, sha = path.stat().st_size, _sha256(path)
    if size != expected["bytes"] or sha != expected["sha256"]:
        raise ValueError(f"{path} does not match {MANIFEST}: expected sha256 {expected['sha256']} "
                         f"({expected['bytes']} bytes), got {sha} ({size} bytes). The file is corrupt, "
                         f"truncated or was changed; restore it with `git checkout -- {path}`.")
    stored = torch.load(path, map_location=device, weights_only=True)
    model = build_model(stored["arch"], stored["ratio"], stored["hashed"])
    model.load_state_dict(stored["state_dict"])
    return model.to(device).eval()


def load_pretrained(dataset: str, arch: str, ratio: float = 1, device: torch.device | str = "cpu",
                    directory: str | os.PathLike | None = None) -> nn.Module:
    """A shipped model of the zoo, in eval mode, after checking its sha256.

    Paper: Liu et al. Sec. 5 (the dense and hash-compressed networks under attack).

    Args:
        dataset: "mnist" or "cifar10".
        arch: e.g. "mlp3", "lenet", "cifar_cnn".
        ratio: compression ratio (1 = dense).
        device: where to put the model.

    Example:
        >>> model = load_pretrained("mnist", "mlp3", ratio=8)
        >>> count_parameters(model)
        (100260, 795010)

    Used in: every notebook from 01_hashednets.ipynb on.
    """
    directory = Path(directory or CHECKPOINT_DIR)
    name = checkpoint_name(dataset, arch, ratio)
    manifest = read_manifest(directory)
    if name not in manifest:
        check_choice(name, "checkpoint", manifest or ["(the zoo is empty)"])
    return load_checkpoint(directory / name, device)
