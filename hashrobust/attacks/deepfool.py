"""DeepFool: Moosavi-Dezfooli, Fawzi, Frossard, "DeepFool: a simple and accurate method to fool deep neural
networks", CVPR 2016."""
from __future__ import annotations

import torch
from torch import Tensor, nn

from .._validation import check_number
from .base import Attack


class DeepFool(Attack):
    """DeepFool (multi-class, L2, untargeted): step to the nearest linearised decision boundary until fooled.

    At x_t, for each class k != y: f_k = Z_k - Z_y, w_k = grad Z_k - grad Z_y; the closest boundary
    l = argmin_k abs(f_k) / ||w_k||_2 gives r_t = (abs(f_l) / ||w_l|| + 1e-4) * w_l / ||w_l||. Then
    x_{t+1} = clip(x + (1 + overshoot) * sum_t r_t, 0, 1). An example stops once it is misclassified.

    Paper: Moosavi-Dezfooli et al. CVPR 2016, Algorithm 2 (and the authors' code for the 1e-4 and overshoot).

    Args:
        model: any classifier taking images in [0, 1] and returning logits (N, K).
        steps: maximum iterations, >= 1.
        overshoot: relative length added to the total perturbation, >= 0.

    Shape: images (N, C, H, W) in [0, 1], labels (N,) int64 or None -> adv_images (N, C, H, W).

    Example:
        >>> from hashrobust.attacks import DeepFool
        >>> model, images = hr.load_pretrained("mnist", "mlp3", 1), hr.load_dataset("mnist").images[:8]
        >>> adv_images = DeepFool(model, steps=50, overshoot=0.02)(images)
        >>> bool((model(adv_images).argmax(1) != model(images).argmax(1)).all())
        True

    Used in: notebooks/06_adaptive_attacks.ipynb.
    """

    def __init__(self, model: nn.Module, steps: int = 50, overshoot: float = 0.02) -> None:
        super().__init__(model)
        self.steps = check_number(steps, "steps", "DeepFool", low=1, integer=True)
        self.overshoot = check_number(overshoot, "overshoot", "DeepFool", low=0)

    def forward(self, images: Tensor, labels: Tensor) -> Tensor:
        adv_images, r_total = images.clone(), torch.zeros_like(images)
        active = torch.ones(len(images), dtype=torch.bool, device=images.device)
        for _ in range(self.steps):
            rows = active.nonzero().squeeze(1)
            x = adv_images[rows].requires_grad_(True)
            logits = self.model(x)  # (M, K)
            y = labels[rows]
            fooled = logits.argmax(1) != y
            active[rows[fooled]] = False
            if fooled.all():
                break
            jacobian = torch.stack([torch.autograd.grad(logits[:, k].sum(), x, retain_graph=True)[0]
                                    for k in range(logits.shape[1])], 1)  # (M, K, C, H, W)
            keep = ~fooled  # go on with the examples not yet fooled
            rows, logits, y, jacobian = rows[keep], logits[keep], y[keep], jacobian[keep]
            m = torch.arange(len(rows), device=x.device)
            f = (logits - logits[m, y][:, None]).detach()  # (M, K)
            w = jacobian - jacobian[m, y][:, None]  # (M, K, C, H, W)
            w_norm = w.flatten(2).norm(dim=2)  # (M, K)
            distance = f.abs() / (w_norm + 1e-12)  # (M, K) to each linearised boundary
            distance[m, y] = float("inf")
            nearest = distance.argmin(1)  # (M,)
            r = (distance[m, nearest] + 1e-4) / (w_norm[m, nearest] + 1e-12)  # (M,)
            r_total[rows] += r.view(-1, 1, 1, 1) * w[m, nearest]
            adv_images[rows] = (images[rows] + (1 + self.overshoot) * r_total[rows]).clamp(0, 1)
        return adv_images
