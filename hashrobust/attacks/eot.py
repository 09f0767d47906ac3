"""EOT: Expectation over Transformation, for attacking a randomised model.

Athalye, Engstrom, Ilyas, Kwok, "Synthesizing Robust Adversarial Examples", ICML 2018 (EOT);
Athalye, Carlini, Wagner, "Obfuscated Gradients Give a False Sense of Security", ICML 2018, Sec. 4.3
(randomised defences are broken by optimising the expectation over their randomness).
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from .._validation import check_number


class EOT(nn.Module):
    """The mean logits of `draws` forward passes of a randomised model: attack this, score the model.

    A randomised defence (e.g. `gradient_inhibition(model, variant="uniform", resample=True)`, which
    redraws its weights at every forward) gives an attacker one noisy gradient per pass, and the pass
    that scores the attack sees yet another draw. Averaging the logits of k draws averages their
    gradients too: any attack built on `EOT(model, k)` ascends (an estimate of) the expected loss.
    On a deterministic model it changes nothing but the cost (k forwards).

    Paper: Athalye, Carlini, Wagner ICML 2018, Sec. 4.3; here the expectation is taken over the
    logits, which for the losses used here (margin, DLR, cross-entropy) is what the attacks need.

    Args:
        model: a (randomised) classifier returning logits (N, K).
        draws: forward passes averaged per call, >= 1.

    Shape: images (N, C, H, W) -> logits (N, K).

    Example:
        >>> from hashrobust.attacks import EOT, PGD
        >>> model = hr.gradient_inhibition(hr.load_pretrained("mnist", "mlp3", 1), 0.2, "uniform", resample=True)
        >>> PGD(EOT(model, draws=4), eps=0.3, alpha=0.05, steps=3)(hr.load_dataset("mnist").images[:2]).shape
        torch.Size([2, 1, 28, 28])

    Used in: notebooks/06_adaptive_attacks.ipynb.
    """

    def __init__(self, model: nn.Module, draws: int = 10) -> None:
        super().__init__()
        self.model = model
        self.draws = check_number(draws, "draws", "EOT", low=1, integer=True)

    def forward(self, images: Tensor) -> Tensor:
        return torch.stack([self.model(images) for _ in range(self.draws)]).mean(0)  # (N, K)
