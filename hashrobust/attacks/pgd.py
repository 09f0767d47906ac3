"""PGD: Madry et al., "Towards Deep Learning Models Resistant to Adversarial Attacks", ICLR 2018.

Its `step`/`project` split follows MadryLab/robustness (attack_steps.py).
"""
from __future__ import annotations

from torch import Tensor, nn

from .._validation import check_choice, check_number
from .base import (LOSSES, Attack, _check_bool, _check_positive, _per_example_norm, _project_linf, _unit_l2,
                   example_keys, example_normal, example_uniform, loss_gradient)


class PGD(Attack):
    """Projected Gradient Descent: BIM from a random start in the eps-ball, for the L-inf or the L2 norm.

    x_0 = x + uniform noise in the ball (or x);  x_{t+1} = project(step(x_t, grad_x L(x_t, y))).

    Paper: Madry et al. ICLR 2018, Sec. 2.1 and Appendix (eps 0.3, alpha 0.01, 40 steps on MNIST).

    Args:
        model: any classifier taking images in [0, 1] and returning logits (N, K).
        eps: radius in pixel units: L-inf in [0, 1]; L2 >= 0 (sqrt(D) is the whole image box).
        alpha: step size in pixel units (L-inf) or L2 length per step, > 0.
        steps: number of iterations, >= 1.
        norm: "linf" or "l2".
        random_start: start from a point drawn uniformly from the eps-ball (clipped to [0, 1]).
        seed: seed of the random start, an integer >= 0. Each example draws from a key made of its own
            pixels and the seed (`example_keys`), so the start does not depend on the batch.
        loss: "ce" or "margin" (see FGSM).
        targeted: if True, labels are target labels and the steps descend the loss towards them.

    Shape: images (N, C, H, W) in [0, 1], labels (N,) int64 or None -> adv_images (N, C, H, W).

    Example:
        >>> from hashrobust.attacks import PGD
        >>> model, images = hr.load_pretrained("mnist", "mlp3", 1), hr.load_dataset("mnist").images[:8]
        >>> adv_images = PGD(model, eps=2.0, alpha=0.2, steps=10, norm="l2", seed=0)(images)
        >>> bool((adv_images - images).flatten(1).norm(dim=1).max() <= 2.0 + 1e-5)
        True

    Used in: notebooks/06_adaptive_attacks.ipynb.
    """

    def __init__(self, model: nn.Module, eps: float = 0.3, alpha: float = 0.01, steps: int = 40,
                 norm: str = "linf", random_start: bool = True, seed: int = 0, loss: str = "ce",
                 targeted: bool = False) -> None:
        super().__init__(model)
        self.norm = check_choice(norm, "norm", ("linf", "l2"))
        self.eps = check_number(eps, "eps", "PGD", low=0, high=1 if norm == "linf" else None)
        self.alpha = _check_positive(alpha, "alpha", "PGD")
        self.steps = check_number(steps, "steps", "PGD", low=1, integer=True)
        self.random_start = _check_bool(random_start, "random_start", "PGD")
        self.seed = check_number(seed, "seed", "PGD", low=0, integer=True)
        self.loss = check_choice(loss, "loss", LOSSES)
        self.targeted = _check_bool(targeted, "targeted", "PGD")

    def start(self, images: Tensor) -> Tensor:
        """x_0: uniform in the cube [-eps, eps]^D (L-inf) or in the ball ||d||_2 <= eps (L2), added, clipped."""
        if not self.random_start:
            return images.clone()
        keys, shape = example_keys(images, self.seed), images.shape[1:]
        like = {"device": images.device, "dtype": images.dtype}
        if self.norm == "linf":
            noise = self.eps * (2 * example_uniform(keys, shape, 0, **like) - 1)  # (N, C, H, W)
        else:  # a Gaussian direction, radius eps * U^(1/D): uniform in the ball's volume
            radius = self.eps * example_uniform(keys, (1,), 1, **like).squeeze(1) ** (1 / images[0].numel())  # (N,)
            noise = _unit_l2(example_normal(keys, shape, 1, **like)) * radius.view(-1, 1, 1, 1)
        return (images + noise).clamp(0, 1)

    def step(self, adv_images: Tensor, grad: Tensor) -> Tensor:
        """Steepest ascent for the norm: L-inf x + alpha * sign(g); L2 x + alpha * g / ||g||_2 per example.

        Like sign(), the L2 step is a full step however tiny g is, and no step where g is exactly 0.
        """
        if self.norm == "linf":
            return adv_images + self.alpha * grad.sign()
        return adv_images + self.alpha * _unit_l2(grad)

    def project(self, adv_images: Tensor, images: Tensor) -> Tensor:
        """Onto {x' : ||x' - x|| <= eps}, then [0, 1]: L-inf clips each pixel; L2 rescales d to eps if longer.

        Clipping to [0, 1] after the L2 rescale only shortens d, so the result stays in the ball.
        """
        if self.norm == "linf":
            return _project_linf(adv_images, images, self.eps)
        delta = adv_images - images
        delta = delta * (self.eps / (_per_example_norm(delta) + 1e-12)).clamp(max=1)
        return (images + delta).clamp(0, 1)

    def forward(self, images: Tensor, labels: Tensor) -> Tensor:
        adv_images = self.start(images)
        for _ in range(self.steps):
            grad = loss_gradient(self.model, adv_images, labels, self.loss, self.targeted)  # (N, C, H, W)
            adv_images = self.project(self.step(adv_images, grad), images)
        return adv_images
