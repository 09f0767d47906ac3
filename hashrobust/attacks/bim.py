"""BIM: Kurakin, Goodfellow, Bengio, "Adversarial Examples in the Physical World", arXiv:1607.02533, 2016."""
from __future__ import annotations

from torch import Tensor, nn

from .._validation import check_choice, check_number
from .base import LOSSES, Attack, _check_bool, _check_positive, _project_linf, loss_gradient


class BIM(Attack):
    """Basic Iterative Method (I-FGSM): `steps` FGSM steps of size alpha, each clipped to the L-inf eps-ball.

    x_0 = x;  x_{t+1} = clip_{x, eps}(x_t + alpha * sign(grad_x L(x_t, y))), clipped to [0, 1].

    Paper: Kurakin et al. 2016, Sec. 2.2; Liu et al. ASP-DAC 2018, the authors' code (eps 0.3, alpha 0.03, 40 steps).

    Args:
        model: any classifier taking images in [0, 1] and returning logits (N, K).
        eps: L-inf radius in pixel units, [0, 1].
        alpha: step size in pixel units, > 0.
        steps: number of iterations, >= 1.
        loss: "ce" or "margin" (see FGSM).
        targeted: if True, labels are target labels and the steps descend the loss towards them.

    Shape: images (N, C, H, W) in [0, 1], labels (N,) int64 or None -> adv_images (N, C, H, W).

    Example:
        >>> from hashrobust.attacks import BIM
        >>> model, images = hr.load_pretrained("mnist", "mlp3", 1), hr.load_dataset("mnist").images[:8]
        >>> adv_images = BIM(model, eps=0.3, alpha=0.03, steps=10)(images)
        >>> round((adv_images - images).abs().max().item(), 4)
        0.3

    Used in: notebooks/02_adversarial_examples.ipynb.
    """

    def __init__(self, model: nn.Module, eps: float = 0.3, alpha: float = 0.03, steps: int = 40,
                 loss: str = "ce", targeted: bool = False) -> None:
        super().__init__(model)
        self.eps = check_number(eps, "eps", "BIM", low=0, high=1)
        self.alpha = _check_positive(alpha, "alpha", "BIM")
        self.steps = check_number(steps, "steps", "BIM", low=1, integer=True)
        self.loss = check_choice(loss, "loss", LOSSES)
        self.targeted = _check_bool(targeted, "targeted", "BIM")

    def forward(self, images: Tensor, labels: Tensor) -> Tensor:
        adv_images = images.clone()
        for _ in range(self.steps):
            grad = loss_gradient(self.model, adv_images, labels, self.loss, self.targeted)  # (N, C, H, W)
            adv_images = adv_images + self.alpha * grad.sign()
            adv_images = _project_linf(adv_images, images, self.eps)
        return adv_images
