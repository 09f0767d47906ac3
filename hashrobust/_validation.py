"""Input checks with one message shape, after scikit-learn's parameter validation: who, what is allowed, what was given.

    The 'ratio' parameter of HashedLinear must be a number >= 1. Got 0.5 instead.

Also the one guard (`evaluating`) that every function running a model in eval mode on the caller's
behalf (predict, the attacks, the diagnostics) uses to hand the model back as it found it.
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from numbers import Integral, Real

import torch
from torch import nn


def check_number(value: object, name: str, owner: str, *, low: float | None = None,
                 high: float | None = None, integer: bool = False) -> float | int:
    """Return `value` if it is a finite (integer) number within [low, high]; else raise ValueError."""
    kind = "an integer" if integer else "a number"
    bounds = []
    if low is not None:
        bounds.append(f">= {low:g}")
    if high is not None:
        bounds.append(f"<= {high:g}")
    allowed = f"{kind} {' and '.join(bounds)}".strip()
    ok_type = isinstance(value, Integral) if integer else isinstance(value, Real)
    if isinstance(value, bool) or not ok_type:
        raise ValueError(f"The '{name}' parameter of {owner} must be {allowed}. Got {value!r} instead.")
    if not math.isfinite(value) or (low is not None and value < low) or (high is not None and value > high):
        raise ValueError(f"The '{name}' parameter of {owner} must be {allowed}. Got {value!r} instead.")
    return value


def check_choice(value: object, name: str, choices: Iterable[str]) -> str:
    """Return `value` if it is one of `choices`; else raise ValueError listing them."""
    choices = sorted(choices)
    if value not in choices:
        raise ValueError(f"Unknown {name} {value!r}; choose one of: {', '.join(choices)}.")
    return value  # type: ignore[return-value]


DEVICE_FORMS = "'cpu', 'cuda' or 'cuda:<index>' (e.g. 'cuda:1')"


def check_device(value: object, owner: str, name: str = "device") -> torch.device:
    """Return `value` as a torch.device if it is the CPU or a CUDA device this machine has; else raise ValueError.

    Args:
        value: e.g. "cpu", "cuda", "cuda:1" or a torch.device.
        owner: who asks, as the message names it (a function, or "hashrobust analyze").
        name: the parameter, as the user spelled it ("device", "--device").

    Example message:

        The 'device' parameter of run_analysis asks for 'cuda', but this machine has no CUDA device
        (torch.cuda.is_available() is False); use 'cpu'.
    """
    malformed = ValueError(f"The '{name}' parameter of {owner} must be {DEVICE_FORMS}. Got {value!r} instead.")
    if not isinstance(value, (str, torch.device)):
        raise malformed
    try:
        device = torch.device(value)
    except (RuntimeError, ValueError) as error:
        raise malformed from error
    if device.type not in ("cpu", "cuda"):
        raise malformed
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"The '{name}' parameter of {owner} asks for {str(value)!r}, but this machine has no "
                             "CUDA device (torch.cuda.is_available() is False); use 'cpu'.")
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise ValueError(f"The '{name}' parameter of {owner} asks for {str(value)!r}, but the CUDA devices of "
                             f"this machine are {', '.join(f'cuda:{i}' for i in range(count))}.")
    return device


@contextmanager
def evaluating(model: nn.Module, freeze: bool = False) -> Iterator[nn.Module]:
    """Run the block with `model` in eval mode, then give every submodule back its OWN training flag.

    `model.train(was_training)` would not do: it sets every submodule to the root's mode, so a submodule
    the caller had put in eval mode (a frozen BatchNorm in a model being fine-tuned) would come back in
    train mode. Eval mode inside the block also keeps BatchNorm's running statistics (running_mean,
    running_var, num_batches_tracked) and dropout untouched by the forward passes. With `freeze`, every
    parameter's requires_grad is off inside the block and restored after it (an attack or a diagnostic
    needs input gradients only). Restored in `finally`, so also when the block raises.

    Example:
        >>> net = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2)).train()
        >>> _ = net[1].eval()
        >>> with evaluating(net):
        ...     net.training
        False
        >>> [m.training for m in net.modules()]
        [True, True, False]
    """
    modes = [(m, m.training) for m in model.modules()]
    flags = [(p, p.requires_grad) for p in model.parameters()] if freeze else []
    try:
        model.eval()
        for p, _ in flags:
            p.requires_grad_(False)
        yield model
    finally:
        for m, mode in modes:
            m.training = mode
        for p, flag in flags:
            p.requires_grad_(flag)
