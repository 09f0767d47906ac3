"""Solutions to the exercises of notebooks/00_start_here.ipynb (the course, the paper, the zoo).

Each function has the name of its exercise stub; the doctests check the values the notebook asks for
(run by `make test` through pytest's --doctest-modules).
"""
from __future__ import annotations

from torch import nn

import hashrobust as hr


def compression_ratio(model: nn.Module) -> float:
    """Exercise 1: the effective compression ratio, virtual / real parameters (`hr.count_parameters`).

    It is a little below the nominal ratio: biases are not hashed, and K = ceil(numel / r) rounds up.

    Example:
        >>> round(compression_ratio(hr.load_pretrained("mnist", "mlp3", ratio=8)), 2)
        7.93
        >>> compression_ratio(hr.load_pretrained("mnist", "mlp3", ratio=1))
        1.0
    """
    real, virtual = hr.count_parameters(model)
    return virtual / real


def smallest_checkpoint(manifest: dict[str, dict], min_accuracy: float = 0.975) -> str | None:
    """Exercise 2: the file name of the smallest checkpoint (bytes) with clean test accuracy >= min_accuracy.

    Returns None when no checkpoint is accurate enough.

    Example:
        >>> smallest_checkpoint(hr.read_manifest(), 0.975)
        'mnist-mlp3-r32.pt'
        >>> smallest_checkpoint(hr.read_manifest(), 0.99)
        'mnist-lenet-r64.pt'
        >>> smallest_checkpoint(hr.read_manifest(), 1.0) is None
        True
    """
    accurate = [name for name, entry in manifest.items() if entry["clean_test_accuracy"] >= min_accuracy]
    return min(accurate, key=lambda name: manifest[name]["bytes"], default=None)
