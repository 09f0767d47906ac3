"""Adversarial training: the min-max objective, with fast FGSM (Wong et al.) or PGD (Madry et al.) as the inner max.

Papers: Madry, Makelov, Schmidt, Tsipras, Vladu, "Towards Deep Learning Models Resistant to Adversarial
Attacks", ICLR 2018, eq. (2.1): train on

    min_theta  E_(x, y) [ max_{||delta||_inf <= eps}  L(theta, x + delta, y) ]

with the inner max approximated by PGD from a random start in the ball (they take 40 steps of 0.01 at
eps 0.3 on MNIST and 7 steps of 2/255 at 8/255 on CIFAR-10; the default here, 2.5 * eps / steps per
step, is the rule of thumb of MadryLab's `robustness` library, which lets PGD cross the ball 2.5 times).
Wong, Rice, Kolter, "Fast is better than free: Revisiting adversarial training", ICLR 2020, Sec. 3-5: one
FGSM step of 1.25 * eps from a uniform random start ("FGSM-RS") is enough, with a cyclic learning rate, if
training stops when robustness collapses ("catastrophic overfitting": the model learns to defeat the one
FGSM step while PGD breaks it). Their guard, kept here in a slightly stricter form: after every epoch,
PGD on a fixed training batch (here 10 steps of eps / 4; they use 5 steps and compare with the previous
epoch); if its robust accuracy falls more than 0.2 below the best epoch's, that epoch's weights come back
and training stops.

`train.train` runs the loop (one loop for standard, adversarial, dense and hashed training); this module
holds the inner max and the guard. A hashed model needs nothing special: the attacks backpropagate through
the hash to the input, and the training step through it to the real weights (layers.py).

Crafting uses the package's PGD (attacks/pgd.py), so it runs in eval mode with the parameters frozen: for
a BatchNorm network the perturbation sees the running statistics, where Wong et al. craft in train mode.
Each training step draws its own random starts (the attack's seed is the step number). The protocol:
docs/protocol.md §10.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ._validation import check_choice, check_number, evaluating
from .attacks import PGD

__all__ = ["AdversarialRecipe", "CollapseGuard", "METHODS", "COLLAPSE"]

METHODS = ("fgsm", "pgd")
COLLAPSE = 0.2  # Wong et al.'s early-stopping rule: a drop of the check's PGD robust accuracy by more than this


@dataclass
class AdversarialRecipe:
    """The inner maximisation of adversarial training, and the catastrophic-overfitting guard.

    Args:
        method: "fgsm" (Wong et al. 2020: one step of `alpha` from a uniform random start) or "pgd"
            (Madry et al. 2018: `steps` steps of `alpha` from a uniform random start).
        eps: L-inf radius in pixel units, in (0, 1] (MNIST 0.3, CIFAR-10 8/255 in the papers).
        alpha: step size, > 0; None takes 1.25 * eps for fgsm (Wong et al.) and 2.5 * eps / steps for pgd
            (MadryLab's `robustness` library's rule; Madry et al. themselves: 0.01 x 40 at eps 0.3).
        steps: PGD steps of the inner max (ignored for fgsm), >= 1; Madry et al. use 7 to 40.
        check_size: images of the fixed training batch that PGD-10 attacks after every epoch, >= 1.

    Example:
        >>> recipe = AdversarialRecipe("fgsm", eps=0.3)
        >>> recipe.step_size, recipe.inner_steps
        (0.375, 1)
    """

    method: str
    eps: float
    alpha: float | None = None
    steps: int = 10
    check_size: int = 512

    def __post_init__(self) -> None:
        check_choice(self.method, "method", METHODS)
        check_number(self.eps, "eps", "AdversarialRecipe", low=0, high=1)
        if self.eps == 0:
            raise ValueError("The 'eps' of AdversarialRecipe must be > 0 (adversarial training at eps 0 is "
                             "standard training: pass no AdversarialRecipe). Got 0 instead.")
        if self.alpha is not None:
            check_number(self.alpha, "alpha", "AdversarialRecipe", low=0)
            if self.alpha == 0:
                raise ValueError("The 'alpha' of AdversarialRecipe must be > 0 (the inner max's step size; None "
                                 "takes 1.25 * eps for fgsm, 2.5 * eps / steps for pgd). Got 0 instead.")
        check_number(self.steps, "steps", "AdversarialRecipe", low=1, integer=True)
        check_number(self.check_size, "check_size", "AdversarialRecipe", low=1, integer=True)

    @property
    def inner_steps(self) -> int:
        return 1 if self.method == "fgsm" else self.steps

    @property
    def step_size(self) -> float:
        if self.alpha is not None:
            return self.alpha
        return 1.25 * self.eps if self.method == "fgsm" else 2.5 * self.eps / self.steps

    def perturb(self, model: nn.Module, images: Tensor, labels: Tensor, step: int) -> Tensor:
        """The inner max: images + delta, ||delta||_inf <= eps, in [0, 1]; `step` seeds the random starts."""
        attack = PGD(model, eps=self.eps, alpha=self.step_size, steps=self.inner_steps, random_start=True,
                     seed=step)
        return attack(images, labels)

    def robust_accuracy(self, model: nn.Module, images: Tensor, labels: Tensor) -> tuple[float, float]:
        """(clean, robust) accuracy on the check batch; robust under PGD-10 with alpha = eps / 4 from a random start."""
        attack = PGD(model, eps=self.eps, alpha=self.eps / 4, steps=10, random_start=True, seed=0)
        adv_images = attack(images, labels)
        with torch.no_grad(), evaluating(model):
            clean_ok = model(images).argmax(1) == labels
            robust_ok = clean_ok & (model(adv_images).argmax(1) == labels)
        return clean_ok.float().mean().item(), robust_ok.float().mean().item()


class CollapseGuard:
    """Wong et al.'s early stopping: keep the weights of the epoch with the best check robust accuracy,
    and stop (restoring them) when the check's robust accuracy falls more than COLLAPSE below that best."""

    def __init__(self, model: nn.Module) -> None:
        self.model, self.best, self.best_epoch, self.best_state = model, -1.0, 0, None

    def collapsed(self, robust: float, epoch: int) -> bool:
        """Record the epoch's check robust accuracy; True (weights restored to the best epoch's) on a collapse."""
        if robust > self.best:
            self.best, self.best_epoch = robust, epoch
            self.best_state = copy.deepcopy(self.model.state_dict())
            return False
        if self.best - robust > COLLAPSE:
            self.model.load_state_dict(self.best_state)
            return True
        return False
