"""Solutions to the exercises of notebooks/05_gradient_inhibition.ipynb (gradient inhibition: abstract; authors' code).

Exercise 1: the two float32 thresholds of the softmax, by bisection on the top-1 logit margin.
Exercise 2: the fraction of inputs whose cross-entropy input gradient is exactly zero, by hand, in
float32 and in float64.

The doctests run in `make test` (pytest --doctest-modules); HASHROBUST_DATA must point at the data.
"""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import hashrobust as hr


# ----------------------------------------------------------------------------- exercise 1
def margin_logits(margin: float, classes: int = 10, dtype: torch.dtype = torch.float32) -> Tensor:
    """Logits (1, classes): class 0 at `margin`, every other class at 0.

    >>> margin_logits(3.0, classes=4)
    tensor([[3., 0., 0., 0.]])
    """
    logits = torch.zeros(1, classes, dtype=dtype)
    logits[0, 0] = margin
    return logits


def softmax_is_one(margin: float, dtype: torch.dtype = torch.float32) -> bool:
    """Is p_0 = softmax(margin_logits(margin))[0, 0] exactly 1.0 in `dtype`?

    >>> softmax_is_one(15.0), softmax_is_one(20.0), softmax_is_one(20.0, torch.float64)
    (False, True, False)
    """
    return bool(margin_logits(margin, dtype=dtype).softmax(1)[0, 0] == 1)


def ce_gradient_is_zero(margin: float, dtype: torch.dtype = torch.float32) -> bool:
    """Is the gradient of cross-entropy (label 0) w.r.t. all the logits exactly zero in `dtype`?

    The gradient is p - y: its entry 0 is p_0 - 1, the others are p_i = exp(-margin) / sum.

    >>> ce_gradient_is_zero(50.0), ce_gradient_is_zero(110.0), ce_gradient_is_zero(110.0, torch.float64)
    (False, True, False)
    """
    logits = margin_logits(margin, dtype=dtype).requires_grad_(True)
    (grad,) = torch.autograd.grad(F.cross_entropy(logits, torch.tensor([0])), logits)
    return bool((grad == 0).all())


def smallest_margin(predicate, low: float = 0.0, high: float = 1000.0, tol: float = 1e-4) -> float:
    """Bisection: the smallest margin in [low, high] (to `tol`) at which predicate(margin) becomes True.

    Assumes predicate(low) is False, predicate(high) is True, and one switch in between. Returns
    the upper end of the final interval, a margin at which the predicate holds.

    p_0 = 1 / (1 + sum of the 9 terms exp(-margin)) rounds to 1 once that sum is at most 2**-24. Where
    on float32's grid the sum lands depends on the order the softmax kernel adds: each term to 1 on its
    own (PyTorch's AVX-512 kernels) gives margin >= 24 ln 2 = 16.64; the nine small terms added first
    gives 24 ln 2 + ln 9 = 18.84; vector lanes in between (AVX2) give about 18.2. The other entries of
    p - y vanish only when exp(-margin) underflows float32 (< 2**-150, margin > 150 ln 2 = 103.97),
    whatever the order.

    >>> import math
    >>> 24 * math.log(2) - 0.01 <= smallest_margin(softmax_is_one) <= 24 * math.log(2) + math.log(9) + 0.01
    True
    >>> round(smallest_margin(ce_gradient_is_zero), 2)
    103.97
    >>> round(smallest_margin(lambda m: ce_gradient_is_zero(m, torch.float64)), 1)
    745.1
    """
    while high - low > tol:
        middle = (low + high) / 2
        if predicate(middle):
            high = middle
        else:
            low = middle
    return high


# ----------------------------------------------------------------------------- exercise 2
def zero_gradient_fraction(model: nn.Module, images: Tensor, dtype: torch.dtype = torch.float32) -> float:
    """The fraction of images whose cross-entropy input gradient (w.r.t. the model's own prediction) is all zero.

    The model is copied and computed in `dtype`; each example's gradient is that of its own loss
    (reduction="sum"). In float32 this equals hr.inhibition_report(model, images)["zero_grad_fraction"].

    >>> import warnings
    >>> model = hr.load_pretrained("mnist", "mlp3", 1)
    >>> gi = hr.gradient_inhibition(model, eps=0.35)
    >>> images = hr.load_dataset("mnist", "test").images[:500]
    >>> with warnings.catch_warnings():
    ...     warnings.simplefilter("ignore", hr.GradientMaskingWarning)
    ...     report = hr.inhibition_report(gi, images)
    >>> zero_gradient_fraction(gi, images) == report["zero_grad_fraction"]
    True
    >>> round(zero_gradient_fraction(gi, images), 3), round(zero_gradient_fraction(gi, images, torch.float64), 3)
    (0.908, 0.03)
    >>> zero_gradient_fraction(model, images)
    0.0
    """
    model = copy.deepcopy(model).to(dtype).eval()
    images = images.to(dtype).detach().requires_grad_(True)
    logits = model(images)  # (N, K)
    loss = F.cross_entropy(logits, logits.argmax(1), reduction="sum")
    (grad,) = torch.autograd.grad(loss, images)  # (N, C, H, W)
    return (grad.flatten(1) == 0).all(1).float().mean().item()
