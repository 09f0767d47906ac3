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


DEVICE_FORMS = "'cpu', 'cuda', 'cuda:<index>' (e.g. 'cuda:1') or 'mps'"


def available_devices() -> list[str]:
    """The devices this machine has, as check_device accepts them: 'cpu', then 'cuda:0', 'cuda:1', ..., then 'mps'.

    ['cpu', 'cuda:0', 'cuda:1'] on a machine with two GPUs, ['cpu', 'mps'] on Apple silicon.

    Example:
        >>> available_devices()[0]
        'cpu'
    """
    devices = ["cpu"]
    if torch.cuda.is_available():
        devices += [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    if torch.backends.mps.is_available():
        devices.append("mps")
    return devices


def _quoted(devices: list[str], last: str) -> str:
    """['cpu', 'mps'] -> "'cpu' or 'mps'" (last='or'); ['cpu', 'cuda:0'] -> "'cpu', 'cuda:0'" (last=',')."""
    quoted = [repr(d) for d in devices]
    if last == "," or len(quoted) == 1:
        return ", ".join(quoted)
    return f"{', '.join(quoted[:-1])} {last} {quoted[-1]}"


def check_device(value: object, owner: str, name: str = "device") -> torch.device:
    """Return `value` as a torch.device if it is the CPU, or a CUDA or MPS device this machine has; else ValueError.

    Every public function that puts a model or tensors on a device calls this first, before it reads a
    file or moves anything, so a device the machine lacks gives this one message, not torch's.

    Args:
        value: e.g. "cpu", "cuda", "cuda:1", "mps" or a torch.device.
        owner: who asks, as the message names it (a function, or "hashrobust analyze").
        name: the parameter, as the user spelled it ("device", "--device").

    Example messages:

        The 'device' parameter of run_analysis must be 'cpu', 'cuda', 'cuda:<index>' (e.g. 'cuda:1') or 'mps'.
        Got 'gpu' instead. Available on this machine: 'cpu'.

        The 'device' parameter of run_analysis asks for 'cuda', but this machine has no CUDA device
        (torch.cuda.is_available() is False); use 'cpu'.
    """
    def malformed() -> ValueError:
        return ValueError(f"The '{name}' parameter of {owner} must be {DEVICE_FORMS}. Got {value!r} instead. "
                          f"Available on this machine: {_quoted(available_devices(), ',')}.")

    if not isinstance(value, (str, torch.device)):
        raise malformed()
    try:
        device = torch.device(value)
    except (RuntimeError, ValueError) as error:
        raise malformed() from error
    if device.type not in ("cpu", "cuda", "mps"):
        raise malformed()
    asked = f"The '{name}' parameter of {owner} asks for {str(value)!r}, but"
    if device.type == "cuda":
        if not torch.cuda.is_available():
            others = [d for d in available_devices() if not d.startswith("cuda")]
            raise ValueError(f"{asked} this machine has no CUDA device (torch.cuda.is_available() is False); "
                             f"use {_quoted(others, 'or')}.")
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise ValueError(f"{asked} the CUDA devices of this machine are "
                             f"{', '.join(f'cuda:{i}' for i in range(count))}.")
    if device.type == "mps":
        if not torch.backends.mps.is_available():
            others = [d for d in available_devices() if d != "mps"]
            raise ValueError(f"{asked} this machine has no MPS device (torch.backends.mps.is_available() is False); "
                             f"use {_quoted(others, 'or')}.")
        if device.index not in (None, 0):
            raise ValueError(f"{asked} the MPS device of this machine is mps:0.")
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
