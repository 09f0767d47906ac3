"""FGSM: Goodfellow, Shlens, Szegedy, "Explaining and Harnessing Adversarial Examples", ICLR 2015."""
from __future__ import annotations

from torch import Tensor, nn

from .._validation import check_choice, check_number
from .base import LOSSES, Attack, _check_bool, loss_gradient


class FGSM(Attack):
    """Fast Gradient Sign Method: one signed-gradient step, x* = clip(x + eps * sign(grad_x L(x, y)), 0, 1).

    Paper: Goodfellow et al. ICLR 2015, Sec. 4; Liu et al. ASP-DAC 2018, the authors' code (eps = 0.3 on MNIST).

    Args:
        model: any classifier taking images in [0, 1] and returning logits (N, K).
        eps: L-inf radius in pixel units, [0, 1].
        loss: "ce" (cross-entropy of the softmax) or "margin" (C&W logit margin, see `margin_loss`).
        targeted: if True, labels are target labels and the step descends the loss towards them.

    Shape: images (N, C, H, W) in [0, 1], labels (N,) int64 or None (the model's prediction)
        -> adv_images (N, C, H, W) in [0, 1].

    Example:
        >>> from hashrobust.attacks import FGSM
        >>> model, images = hr.load_pretrained("mnist", "mlp3", 1), hr.load_dataset("mnist").images[:8]
        >>> adv_images = FGSM(model, eps=0.3)(images)
        >>> round((adv_images - images).abs().max().item(), 4)
        0.3

    Used in: notebooks/02_adversarial_examples.ipynb.
    """

    def __init__(self, model: nn.Module, eps: float = 0.3, loss: str = "ce", targeted: bool = False) -> None:
        super().__init__(model)
        self.eps = check_number(eps, "eps", "FGSM", low=0, high=1)
        self.loss = check_choice(loss, "loss", LOSSES)
        self.targeted = _check_bool(targeted, "targeted", "FGSM")

    def forward(self, images: Tensor, labels: Tensor) -> Tensor:
        grad = loss_gradient(self.model, images, labels, self.loss, self.targeted)  # (N, C, H, W)
        adv_images = images + self.eps * grad.sign()
        return adv_images.clamp(0, 1)
