"""C&W-L2: Carlini, Wagner, "Towards Evaluating the Robustness of Neural Networks", IEEE S&P 2017."""
from __future__ import annotations

import torch
from torch import Tensor, nn

from .._validation import check_number
from .base import Attack, _check_bool, _check_positive, logit_margin


class CW(Attack):
    """Carlini-Wagner L2: minimise ||x' - x||_2^2 + c * f(x') over x' = (tanh(w) + 1) / 2 with Adam.

    f = max(Z_y - max_{i != y} Z_i, -kappa) untargeted, max(max_{i != t} Z_i - Z_t, -kappa) targeted:
    a logit margin, so a saturated softmax does not hide the gradient. With binary_search_steps > 1,
    c is bisected per example (x10 until a first success). Returns, per example, the successful
    adversarial image (margin beyond kappa) of smallest L2 distance seen, or the original image.

    Paper: Carlini & Wagner, IEEE S&P 2017, Sec. V (objective f_6, change of variables) and VI-A (the L2 attack).

    Args:
        model: any classifier taking images in [0, 1] and returning logits (N, K).
        c: initial weight of f against the squared L2 distance, > 0.
        kappa: confidence, the logit margin to reach, >= 0.
        steps: Adam steps per value of c, >= 1.
        lr: Adam learning rate in tanh space, > 0.
        binary_search_steps: values of c tried per example, >= 1.
        targeted: if True, labels are target labels.

    Shape: images (N, C, H, W) in [0, 1], labels (N,) int64 or None -> adv_images (N, C, H, W).

    Example:
        >>> from hashrobust.attacks import CW
        >>> images = hr.load_dataset("mnist").images[:8]
        >>> CW(hr.load_pretrained("mnist", "mlp3", 1), c=1.0, steps=20)(images).shape
        torch.Size([8, 1, 28, 28])

    Used in: notebooks/06_adaptive_attacks.ipynb.
    """

    def __init__(self, model: nn.Module, c: float = 1.0, kappa: float = 0.0, steps: int = 100, lr: float = 0.01,
                 binary_search_steps: int = 1, targeted: bool = False) -> None:
        super().__init__(model)
        self.c = _check_positive(c, "c", "CW")
        self.kappa = check_number(kappa, "kappa", "CW", low=0)
        self.steps = check_number(steps, "steps", "CW", low=1, integer=True)
        self.lr = _check_positive(lr, "lr", "CW")
        self.binary_search_steps = check_number(binary_search_steps, "binary_search_steps", "CW", low=1,
                                                integer=True)
        self.targeted = _check_bool(targeted, "targeted", "CW")

    def forward(self, images: Tensor, labels: Tensor) -> Tensor:
        w_start = torch.atanh((2 * images - 1) * (1 - 1e-6))  # (N, C, H, W), finite at 0 and 1 (as C&W's code)
        c = torch.full((len(images),), float(self.c), device=images.device, dtype=images.dtype)  # (N,)
        lower, upper = torch.zeros_like(c), torch.full_like(c, 1e10)
        best_l2, best_adv = torch.full_like(c, float("inf")), images.clone()
        for _ in range(self.binary_search_steps):
            w = w_start.clone().requires_grad_(True)
            optimizer = torch.optim.Adam([w], lr=self.lr)
            succeeded = torch.zeros_like(c, dtype=torch.bool)
            for _ in range(self.steps):
                adv_images = (torch.tanh(w) + 1) / 2
                l2 = (adv_images - images).flatten(1).pow(2).sum(1)  # (N,) squared L2 distance
                margin = logit_margin(self.model(adv_images), labels)  # (N,)
                margin = -margin if self.targeted else margin  # > kappa: success
                loss = (l2 + c * (-margin).clamp(min=-self.kappa)).sum()
                (w.grad,) = torch.autograd.grad(loss, w)
                with torch.no_grad():  # keep the best success of this iterate, then take the step
                    better = (margin > self.kappa) & (l2 < best_l2)
                    best_l2 = torch.where(better, l2, best_l2)
                    best_adv[better] = adv_images[better]
                    succeeded |= margin > self.kappa
                optimizer.step()
            upper = torch.where(succeeded, torch.minimum(upper, c), upper)
            lower = torch.where(succeeded, lower, torch.maximum(lower, c))
            c = torch.where(upper < 1e9, (lower + upper) / 2, 10 * c)
        return best_adv
