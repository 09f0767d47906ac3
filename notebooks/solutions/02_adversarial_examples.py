"""Solutions to the exercises of notebooks/02_adversarial_examples.ipynb (FGSM, BIM, JSMA on the dense model).

Each function has the name of its exercise stub; the doctests check the values the notebook asks for
(run by `make test` through pytest's --doctest-modules).
"""
from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import hashrobust as hr


def my_fgsm(model: nn.Module, images: Tensor, eps: float) -> Tensor:
    """Exercise 1: one FGSM step, x* = clip(x + eps * sign(grad_x CE(model(x), y_pred)), 0, 1).

    The labels are the model's own clean predictions (cleverhans v2 convention); the loss is the sum of the
    per-example cross-entropies, as in `hr.FGSM`, so each image gets its own gradient whatever the batch (a mean
    would scale every gradient by 1/N, which sign() ignores, but tiny gradients could underflow), and the result
    is identical to `hr.FGSM`, not merely close.

    Args:
        model: a classifier taking images in [0, 1] (N, C, H, W) and returning logits (N, K), in eval mode.
        images: (N, C, H, W) in [0, 1].
        eps: L-inf radius in pixel units.

    Returns:
        adv_images (N, C, H, W) in [0, 1].

    Example:
        >>> model = hr.load_pretrained("mnist", "mlp3", ratio=1)
        >>> images = hr.load_dataset("mnist", "test").images[:8]
        >>> adv_images = my_fgsm(model, images, 0.1)
        >>> torch.equal(adv_images, hr.FGSM(model, eps=0.1)(images))
        True
        >>> round((adv_images - images).abs().max().item(), 4)
        0.1
    """
    images = images.detach().clone().requires_grad_(True)
    logits = model(images)  # (N, K)
    loss = F.cross_entropy(logits, logits.argmax(1).detach(), reduction="sum")  # each image's own gradient
    (grad,) = torch.autograd.grad(loss, images)  # (N, C, H, W)
    return (images + eps * grad.sign()).clamp(0, 1).detach()


def smallest_flipping_eps(model: nn.Module, image: Tensor, eps_grid: Iterable[float]) -> float | None:
    """Exercise 2: the first eps of `eps_grid` at which FGSM changes the model's prediction of `image`, else None.

    Args:
        model: a classifier taking images in [0, 1].
        image: one image, shape (1, C, H, W), in [0, 1].
        eps_grid: increasing L-inf radii in pixel units.

    Example:
        >>> model = hr.load_pretrained("mnist", "mlp3", ratio=1)
        >>> images = hr.load_dataset("mnist", "test").images[:2]
        >>> grid = [round(0.01 * k, 2) for k in range(1, 31)]
        >>> smallest_flipping_eps(model, images[:1], grid), smallest_flipping_eps(model, images[1:2], grid)
        (0.07, 0.11)
        >>> smallest_flipping_eps(model, images[:1], [0.01, 0.02]) is None
        True
    """
    clean = hr.predict(model, image)
    for eps in eps_grid:
        if not torch.equal(hr.predict(model, hr.FGSM(model, eps=eps)(image)), clean):
            return eps
    return None
