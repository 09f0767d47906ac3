"""Solutions to the exercises of notebooks/07_adversarial_training.ipynb (adversarial training, evaluated).

Exercise 1: the inner max of fast adversarial training, one FGSM step from a given start.
Exercise 2: the first masking signal by hand: the fraction of inputs whose input gradient is exactly zero.
Exercise 3: Wong et al.'s guard against catastrophic overfitting, on the zoo's training histories.

The doctests run in `make test` (pytest --doctest-modules); HASHROBUST_DATA must point at the data.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import hashrobust as hr


# ----------------------------------------------------------------------------- exercise 1
def fgsm_from(model: nn.Module, images: Tensor, labels: Tensor, eps: float, alpha: float, delta: Tensor) -> Tensor:
    """One FGSM step of size alpha from images + delta, projected back into the eps ball and onto [0, 1].

    Wong et al. (ICLR 2020), Algorithm 3: delta ~ U(-eps, eps), then delta + alpha sign(grad), clipped.
    With delta = 0 and alpha = eps this is Goodfellow et al.'s FGSM.

    >>> model = hr.load_pretrained("mnist", "lenet", 1, training="pgd-at")
    >>> test = hr.load_dataset("mnist").subset(100)
    >>> zero = torch.zeros_like(test.images)
    >>> torch.equal(fgsm_from(model, test.images, test.labels, 0.3, 0.3, zero),
    ...             hr.FGSM(model, eps=0.3)(test.images, test.labels))
    True
    >>> start = torch.empty_like(test.images).uniform_(-0.3, 0.3, generator=torch.Generator().manual_seed(0))
    >>> adv = fgsm_from(model, test.images, test.labels, 0.3, 0.375, start)
    >>> (adv - test.images).abs().max().item() <= 0.3 + 1e-6, 0 <= adv.min().item() <= adv.max().item() <= 1
    (True, True)
    """
    delta = delta.clone().requires_grad_(True)
    loss = F.cross_entropy(model(images + delta), labels)
    (grad,) = torch.autograd.grad(loss, delta)
    step = (delta.detach() + alpha * grad.sign()).clamp(-eps, eps)
    return (images + step).clamp(0, 1)


# ----------------------------------------------------------------------------- exercise 2
def masked_fraction(model: nn.Module, images: Tensor, labels: Tensor) -> float:
    """The fraction of inputs whose cross-entropy input gradient is exactly zero in every pixel.

    >>> test = hr.load_dataset("mnist").subset(200)
    >>> at = hr.load_pretrained("mnist", "lenet", 1, training="pgd-at")
    >>> masked_fraction(at, test.images, test.labels)
    0.0
    >>> gi = hr.gradient_inhibition(hr.load_pretrained("mnist", "lenet", 1), eps=0.35)
    >>> found = masked_fraction(gi, test.images, test.labels)
    >>> import warnings
    >>> with warnings.catch_warnings():  # the report warns of masking, as it should here
    ...     warnings.simplefilter("ignore", hr.GradientMaskingWarning)
    ...     report = hr.inhibition_report(gi, test.images, test.labels)
    >>> round(found, 1), found == report["zero_grad_fraction"]  # 199 of the 200 here
    (1.0, True)
    """
    x = images.clone().requires_grad_(True)
    loss = F.cross_entropy(model(x), labels, reduction="sum")  # summed: each input keeps its own gradient
    (grad,) = torch.autograd.grad(loss, x)
    return (grad.flatten(1) == 0).all(1).float().mean().item()


# ----------------------------------------------------------------------------- exercise 3
def collapse_epoch(check: list[float], drop: float = 0.2) -> tuple[int | None, int]:
    """(the epoch at which the guard stops, or None; the best epoch), epochs counted from 1.

    The guard keeps the best epoch's check robust accuracy and stops when an epoch falls more than `drop`
    below it (Wong et al. 2020, Sec. 5.3; hashrobust.adversarial_training.CollapseGuard).

    >>> collapse_epoch([0.5, 0.8, 0.55])
    (3, 2)
    >>> from hashrobust.adversarial_study import training_histories
    >>> histories = training_histories("mnist", "lenet")
    >>> collapse_epoch(histories["fgsm-at"]), max(histories["fgsm-at"])  # never robust, so nothing to fall from
    ((None, 4), 0.3027)
    >>> collapse_epoch(histories["pgd-at"])
    (None, 10)
    """
    best, best_epoch = -1.0, 0
    for epoch, value in enumerate(check, start=1):
        if value > best:
            best, best_epoch = value, epoch
        elif best - value > drop:
            return epoch, best_epoch
    return None, best_epoch
