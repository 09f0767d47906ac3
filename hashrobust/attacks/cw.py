"""C&W-L2: Carlini, Wagner, "Towards Evaluating the Robustness of Neural Networks", IEEE S&P 2017."""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from .._validation import check_number
from .base import Attack, _check_bool, _check_positive, logit_margin

_BETA1, _BETA2, _EPS = 0.9, 0.999, 1e-8  # Adam's defaults, as torch.optim.Adam and C&W's TensorFlow code
_NO_UPPER = 1e10  # "no success yet" upper bound of c, as C&W's code (x10 while upper >= 1e9)


class CW(Attack):
    """Carlini-Wagner L2: minimise ||x' - x||_2^2 + c * f(x') over x' = (tanh(w) + 1) / 2 with Adam.

    f = max(Z_y - max_{i != y} Z_i + kappa, 0) untargeted, max(max_{i != t} Z_i - Z_t + kappa, 0)
    targeted: a logit margin, so a saturated softmax does not hide the gradient. Each value of c
    starts again from x with a fresh Adam. c is searched per example: x10 until a first success,
    then bisected between the largest failing and the smallest succeeding c. Returns, per example,
    the successful adversarial image (margin beyond kappa) of smallest L2 distance seen over all
    runs, or the original image if no iterate ever succeeded.

    Early abort (abort_early=True) is per example: every max(steps // 10, 1) iterations an example
    whose own loss has not fallen below 0.9999 x its loss at the previous check stops for this c
    (its iterate is frozen and leaves the batch); a run ends when every example has stopped. An
    adversarial image therefore depends on its image only, not on the batch it comes in.

    The defaults, 9 values of c from 0.01 and up to 1000 Adam steps each at lr 0.01 with early abort
    (the reference: c from 1e-3, up to 10000 steps), fool every undefended zoo model on its 100 first
    test images (MNIST mlp3 and lenet, CIFAR-10 cifar_cnn, ratios 1, 8 and 64: 100% each); 3000 steps
    (lr 0.01 or 0.005) lower the median L2 by < 1% (cifar_cnn r8). On one CPU core that costs about
    0.5 s per image for mlp3, up to 10 s for lenet and cifar_cnn. Cheaper budgets still fool them
    all but give larger distances: 200 steps at lr 0.05 match on MNIST (a pixel at 0 or 1, w = -/+7.25,
    needs steps x lr >~ 7 to move; 200 steps at lr 0.01: 97% success, median L2 1.9 instead of 1.05
    on mlp3) but are 56% larger on CIFAR-10, whose perturbations are finer than such steps.

    Paper: Carlini & Wagner, IEEE S&P 2017, Sec. V (objective f_6, change of variables) and VI-A (the L2
    attack: binary search over c, Adam, early abort, as the authors' l2_attack.py).

    Args:
        model: any classifier taking images in [0, 1] and returning logits (N, K).
        c: initial weight of f against the squared L2 distance, > 0.
        kappa: confidence, the logit margin to reach, >= 0.
        steps: maximum Adam steps per value of c, >= 1.
        lr: Adam learning rate in tanh space, > 0.
        binary_search_steps: values of c tried per example, >= 1 (1: a single run at c).
        abort_early: stop an example's run once its loss stalls (see above); False runs all steps.
        targeted: if True, labels are target labels.

    Shape: images (N, C, H, W) in [0, 1], labels (N,) int64 or None -> adv_images (N, C, H, W).

    Example:
        >>> from hashrobust.attacks import CW
        >>> model, images = hr.load_pretrained("mnist", "mlp3", 1), hr.load_dataset("mnist").images[:8]
        >>> adv_images = CW(model, steps=50, lr=0.05)(images)
        >>> bool((model(adv_images).argmax(1) != model(images).argmax(1)).all())
        True

    Used in: notebooks/06_adaptive_attacks.ipynb.
    """

    def __init__(self, model: nn.Module, c: float = 1e-2, kappa: float = 0.0, steps: int = 1000,
                 lr: float = 0.01, binary_search_steps: int = 9, abort_early: bool = True,
                 targeted: bool = False) -> None:
        super().__init__(model)
        self.c = _check_positive(c, "c", "CW")
        self.kappa = check_number(kappa, "kappa", "CW", low=0)
        self.steps = check_number(steps, "steps", "CW", low=1, integer=True)
        self.lr = _check_positive(lr, "lr", "CW")
        self.binary_search_steps = check_number(binary_search_steps, "binary_search_steps", "CW", low=1,
                                                integer=True)
        self.abort_early = _check_bool(abort_early, "abort_early", "CW")
        self.targeted = _check_bool(targeted, "targeted", "CW")

    def forward(self, images: Tensor, labels: Tensor) -> Tensor:
        w_start = torch.atanh((2 * images - 1) * (1 - 1e-6))  # (N, C, H, W), finite at 0 and 1 (as C&W's code)
        c = torch.full((len(images),), float(self.c), device=images.device, dtype=images.dtype)  # (N,)
        lower, upper = torch.zeros_like(c), torch.full_like(c, _NO_UPPER)
        best_l2, best_adv = torch.full_like(c, float("inf")), images.clone()
        for _ in range(self.binary_search_steps):
            succeeded = self._run(images, labels, w_start, c, best_l2, best_adv)
            upper = torch.where(succeeded, torch.minimum(upper, c), upper)
            lower = torch.where(succeeded, lower, torch.maximum(lower, c))
            c = torch.where(upper < 1e9, (lower + upper) / 2, 10 * c)
        return best_adv

    def _run(self, images: Tensor, labels: Tensor, w_start: Tensor, c: Tensor, best_l2: Tensor,
             best_adv: Tensor) -> Tensor:
        """One run of Adam at a fixed c per example; updates best_l2/best_adv in place; returns succeeded (N,).

        Only the examples still running are computed: `rows` indexes them in the batch, and every
        per-example tensor (w, Adam's moments, x, y, c, the last checked loss) is kept compact.
        """
        rows = torch.arange(len(images), device=images.device)  # (M,) examples still running
        w, x, y, c = w_start.clone(), images, labels, c
        m, v = torch.zeros_like(w), torch.zeros_like(w)  # Adam's moments, fresh for each c
        checked = torch.full_like(c, float("inf"))  # each example's loss at its last check
        succeeded = torch.zeros(len(images), dtype=torch.bool, device=images.device)
        every = max(self.steps // 10, 1)
        for step in range(self.steps):
            w.requires_grad_(True)
            adv_images = (torch.tanh(w) + 1) / 2
            l2 = (adv_images - x).flatten(1).pow(2).sum(1)  # (M,) squared L2 distance
            margin = logit_margin(self.model(adv_images), y)  # (M,)
            margin = -margin if self.targeted else margin  # > kappa: success
            loss = l2 + c * (self.kappa - margin).clamp(min=0)  # (M,) >= 0, as the reference's
            (grad,) = torch.autograd.grad(loss.sum(), w)  # summed: each example's gradient is its own
            with torch.no_grad():
                w = w.detach()
                hit = margin > self.kappa
                better = hit & (l2 < best_l2[rows])
                best_l2[rows[better]] = l2[better]
                best_adv[rows[better]] = adv_images[better].detach()
                succeeded[rows[hit]] = True
                if self.abort_early and step % every == 0:
                    going = loss <= checked * 0.9999  # stalled since the last check: stop this example
                    checked = loss
                    if not going.all():
                        if not going.any():
                            break
                        rows, w, grad, m, v, x, y, c, checked = (
                            t[going] for t in (rows, w, grad, m, v, x, y, c, checked))
                # Adam, as torch.optim.Adam computes it, element-wise (so on the running rows only)
                m.lerp_(grad, 1 - _BETA1)
                v.mul_(_BETA2).addcmul_(grad, grad, value=1 - _BETA2)
                denom = (v.sqrt() / math.sqrt(1 - _BETA2 ** (step + 1))).add_(_EPS)
                w.addcdiv_(m, denom, value=-self.lr / (1 - _BETA1 ** (step + 1)))
        return succeeded
