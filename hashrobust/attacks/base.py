"""What every attack shares: the `Attack` base class, the input checks, the losses, the projections and the
per-example randomness.

The losses an attack ascends: cross-entropy of the softmax (`ce_loss`) and the
C&W logit margin (`margin_loss`; Carlini & Wagner, IEEE S&P 2017). Both are
SUMS over the batch, never means: the gradient w.r.t. an example is then that
example's own loss gradient, unscaled, whatever the batch size (a mean divides
it by N, and in float32 more tiny gradients flush to zero as N grows, so a
masking defence would look stronger on bigger batches). The margin keeps its
gradient where a saturated float32 softmax gives cross-entropy a vanishing
one, which is how "gradient inhibition" masks gradients (notebook 05). The
L-inf and L2 helpers serve BIM, PGD, APGD and Square.

Randomness (PGD's random start, Square's search) is drawn per example from a
key made of the example's own pixels and the attack's seed (`example_keys`,
`example_uniform`): an adversarial image depends on the image and the seed,
never on its position in the batch, the batch size or the chunk of an evaluation.

Shapes: N batch, C/H/W image, D = C*H*W features, K classes.
"""
from __future__ import annotations

import inspect
import math
from collections.abc import Sequence
from numbers import Real

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._validation import evaluating
from ..hashing import mix64

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)  # SplitMix64's increment

# ----------------------------------------------------------------------------- checks and losses
def _check_positive(value: object, name: str, owner: str, high: float | None = None) -> float:
    """check_number with an open lower bound: 0 < value (<= high)."""
    allowed = "a number > 0" + (f" and <= {high:g}" if high is not None else "")
    ok = isinstance(value, Real) and not isinstance(value, bool) and math.isfinite(value) and value > 0
    if not ok or (high is not None and value > high):
        raise ValueError(f"The '{name}' parameter of {owner} must be {allowed}. Got {value!r} instead.")
    return value


def _check_bool(value: object, name: str, owner: str) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"The '{name}' parameter of {owner} must be True or False. Got {value!r} instead.")
    return value


def logit_margin(logits: Tensor, labels: Tensor) -> Tensor:
    """max_{i != y} Z_i - Z_y per example, (N, K) -> (N,): > 0 iff the model does not predict y."""
    others = logits.masked_fill(F.one_hot(labels, logits.shape[1]).bool(), float("-inf"))  # (N, K)
    return others.amax(1) - logits.gather(1, labels[:, None]).squeeze(1)


def ce_loss(logits: Tensor, labels: Tensor) -> Tensor:
    """Cross-entropy of the softmax, summed over the batch (so each example's gradient is its own).

    Its logit gradient is p - onehot(y). In float32, once the top-1 margin passes about 17-20 p_y
    rounds to exactly 1, but the other entries exp(-margin) stay tiny and non-zero (about 1e-13 at
    a margin of 30); only past a margin of about 104 (UNDERFLOW_MARGIN in defenses.py) do they
    underflow to 0, and the input gradient is exactly 0. Between the two, sign() still takes a full step.
    """
    return F.cross_entropy(logits, labels, reduction="sum")


def margin_loss(logits: Tensor, labels: Tensor) -> Tensor:
    """The C&W logit margin, summed over the batch: invariant to softmax saturation, so GI cannot zero it."""
    return logit_margin(logits, labels).sum()


LOSSES = {"ce": ce_loss, "margin": margin_loss}


def loss_gradient(model: nn.Module, images: Tensor, labels: Tensor, loss: str = "ce",
                  targeted: bool = False) -> Tensor:
    """grad_x of the loss an attack ascends: LOSSES[loss] of the labels, negated when they are targets."""
    with torch.enable_grad():
        images = images.detach().requires_grad_(True)
        value = LOSSES[loss](model(images), labels)
        (grad,) = torch.autograd.grad(-value if targeted else value, images)
    return grad  # (N, C, H, W)


def _project_linf(adv_images: Tensor, images: Tensor, eps: float) -> Tensor:
    """Nearest point of {x' : ||x' - x||_inf <= eps} n [0, 1]^D: clip the perturbation, then the pixels."""
    delta = (adv_images - images).clamp(-eps, eps)
    return (images + delta).clamp(0, 1)


def _per_example_norm(x: Tensor) -> Tensor:
    """||x_n||_2 of each example, shaped (N, 1, 1, 1) to broadcast over images."""
    return x.flatten(1).norm(dim=1).view(-1, 1, 1, 1)


def _unit_l2(x: Tensor) -> Tensor:
    """x_n / ||x_n||_2 per example, 0 where x_n = 0; divides by max |x_n| first so tiny x_n do not underflow."""
    tiny = torch.finfo(x.dtype).tiny
    x = x / x.flatten(1).abs().amax(1).view(-1, 1, 1, 1).clamp_min(tiny)
    return x / _per_example_norm(x).clamp_min(tiny)


def example_keys(images: Tensor, seed: int) -> np.ndarray:
    """One 64-bit key per example, a hash of its float32 pixels and `seed`: (N, C, H, W) -> uint64 (N,).

    The same image gets the same key wherever it sits in a batch, so every draw made from it
    (`example_uniform`) is the same one by one, in batches of 5 or in one batch of 1000.
    """
    pixels = (images.detach().float() + 0.0).cpu().contiguous().view(len(images), -1)  # + 0.0: -0.0 -> 0.0
    bits = pixels.numpy().view(np.uint32).astype(np.uint64)  # (N, D)
    with np.errstate(over="ignore"):
        positions = mix64(np.arange(1, bits.shape[1] + 1, dtype=np.uint64) * _GOLDEN)  # (D,)
        folded = mix64(bits ^ positions).sum(axis=1, dtype=np.uint64)  # (N,) wraps mod 2^64
        return mix64(folded ^ mix64(np.array([seed], dtype=np.uint64)))


def example_uniform(keys: np.ndarray, shape: Sequence[int], stream: int, device: torch.device | str,
                    dtype: torch.dtype = torch.float32) -> Tensor:
    """Uniform draws in [0, 1) of `shape` for each key, shape `(M, *shape)`: a counter-based generator.

    Draw j of row m is a hash of (keys[m], stream, j), so a row depends on its key only; a new
    `stream` (e.g. the iteration number) gives fresh, independent draws. 24-bit resolution.
    """
    numel = math.prod(shape)
    with np.errstate(over="ignore"):
        row = mix64(keys ^ mix64(np.array([stream], dtype=np.uint64) + _GOLDEN))  # (M,)
        bits = mix64(row[:, None] + np.arange(1, numel + 1, dtype=np.uint64) * _GOLDEN)  # (M, numel)
    uniform = (bits >> np.uint64(40)).astype(np.float32) * np.float32(2.0 ** -24)
    return torch.from_numpy(uniform).view(len(keys), *shape).to(device=device, dtype=dtype)


def example_normal(keys: np.ndarray, shape: Sequence[int], stream: int, device: torch.device | str,
                   dtype: torch.dtype = torch.float32) -> Tensor:
    """Standard normal draws per key, shape `(M, *shape)`, by Box-Muller from two streams of `example_uniform`."""
    u1 = example_uniform(keys, shape, 2 * stream, device, torch.float64)
    u2 = example_uniform(keys, shape, 2 * stream + 1, device, torch.float64)
    return (torch.sqrt(-2 * torch.log1p(-u1)) * torch.cos(2 * math.pi * u2)).to(dtype)


def changed_fraction(images: Tensor, adv_images: Tensor) -> Tensor:
    """The fraction of the D features of each example that an attack changed (JSMA's L0 cost), (N,)."""
    return (adv_images != images).flatten(1).float().mean(1)


# ----------------------------------------------------------------------------- the base class
class Attack:
    """What every attack shares: input checks, eval mode and frozen parameters during the call, default labels.

    A subclass validates and stores its hyper-parameters in `__init__` and
    implements `forward(images, labels) -> adv_images`, the algorithm. Calling
    the attack checks the inputs, puts the model in eval mode with every
    parameter's requires_grad off (no parameter gradient; hashed layers reuse
    their cached V), runs `forward`, restores both in `finally` (each submodule
    its own training flag; BatchNorm statistics are never updated, see
    `_validation.evaluating`), and returns the adversarial images clamped to
    [0, 1] and detached, on the images' device.
    """

    def __init__(self, model: nn.Module) -> None:
        if not isinstance(model, nn.Module):
            raise ValueError(f"The 'model' parameter of {type(self).__name__} must be an nn.Module. "
                             f"Got {type(model).__name__} instead.")
        self.model = model

    def forward(self, images: Tensor, labels: Tensor) -> Tensor:
        raise NotImplementedError

    def default_labels(self, logits: Tensor) -> Tensor:
        """labels=None: the model's own clean prediction, (N, K) -> (N,)."""
        if getattr(self, "targeted", False):
            raise ValueError(f"{type(self).__name__} with targeted=True needs target labels. Got labels=None.")
        return logits.argmax(1)

    def __call__(self, images: Tensor, labels: Tensor | None = None) -> Tensor:
        name = type(self).__name__
        if not (torch.is_tensor(images) and images.is_floating_point() and images.dim() == 4):
            got = f"{images.dim()}-D {images.dtype}" if torch.is_tensor(images) else type(images).__name__
            raise ValueError(f"The 'images' of {name} must be a 4-D float tensor (N, C, H, W) with values "
                             f"in [0, 1]. Got {got} instead.")
        if not ((images >= 0) & (images <= 1)).all():
            raise ValueError(f"The 'images' of {name} must have values in [0, 1]. "
                             f"Got values in [{images.min().item():.9g}, {images.max().item():.9g}] instead.")
        images = images.detach()
        with evaluating(self.model, freeze=True):  # each module's own mode and requires_grad come back after
            with torch.no_grad():  # the prediction is needed only without labels; else one image gives K
                logits = self.model(images if labels is None else images[:1])  # (N, K) or (1, K)
            if labels is None:
                labels = self.default_labels(logits)
            else:
                labels = self._check_labels(labels, len(images), logits.shape[1]).to(images.device)
            with torch.enable_grad():
                adv_images = self.forward(images, labels)
        return adv_images.clamp(0, 1).detach()

    def _check_labels(self, labels: object, n: int, k: int) -> Tensor:
        ok = torch.is_tensor(labels) and labels.dtype == torch.int64 and tuple(labels.shape) == (n,)
        if not ok or not ((labels >= 0) & (labels < k)).all():
            got = type(labels).__name__
            if torch.is_tensor(labels):
                values = f", values in [{labels.min().item()}, {labels.max().item()}]" if labels.numel() else ""
                got = f"{labels.dtype} of shape {tuple(labels.shape)}{values}"
            raise ValueError(f"The 'labels' of {type(self).__name__} must be a 1-D int64 tensor of length {n} "
                             f"with values in [0, {k}). Got {got} instead.")
        return labels

    def __repr__(self) -> str:
        names = list(inspect.signature(type(self).__init__).parameters)[2:]  # after self, model
        return f"{type(self).__name__}({', '.join(f'{n}={getattr(self, n)!r}' for n in names)})"
