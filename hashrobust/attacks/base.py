"""What every attack shares: the `Attack` base class, the input checks, the losses and the projections.

The losses an attack ascends: cross-entropy of the softmax (`ce_loss`) and the
C&W logit margin (`margin_loss`; Carlini & Wagner, IEEE S&P 2017). The margin
keeps its gradient where a saturated float32 softmax gives cross-entropy an
exactly zero one, which is how "gradient inhibition" masks gradients
(../shared/PAPER.md). The L-inf and L2 helpers serve BIM, PGD and Square.

Shapes: N batch, C/H/W image, D = C*H*W features, K classes.
"""
from __future__ import annotations

import inspect
import math
from numbers import Real

import torch
import torch.nn.functional as F
from torch import Tensor, nn


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
    """Cross-entropy of the softmax, batch mean: its input gradient is exactly 0 once float32 p_y rounds to 1."""
    return F.cross_entropy(logits, labels)


def margin_loss(logits: Tensor, labels: Tensor) -> Tensor:
    """The C&W logit margin, batch mean: invariant to softmax saturation, so gradient inhibition cannot zero it."""
    return logit_margin(logits, labels).mean()


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
    their cached V), runs `forward`, restores both in `finally`, and returns
    the adversarial images clamped to [0, 1] and detached, on the images' device.
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
                             f"Got values in [{images.min().item():g}, {images.max().item():g}] instead.")
        images = images.detach()
        modes = [(m, m.training) for m in self.model.modules()]
        flags = [(p, p.requires_grad) for p in self.model.parameters()]
        try:
            self.model.eval()
            for p, _ in flags:
                p.requires_grad_(False)
            with torch.no_grad():  # the prediction is needed only without labels; else one image gives K
                logits = self.model(images if labels is None else images[:1])  # (N, K) or (1, K)
            if labels is None:
                labels = self.default_labels(logits)
            else:
                labels = self._check_labels(labels, len(images), logits.shape[1]).to(images.device)
            with torch.enable_grad():
                adv_images = self.forward(images, labels)
        finally:
            for m, mode in modes:
                m.training = mode
            for p, flag in flags:
                p.requires_grad_(flag)
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
