"""Square Attack (L-inf): Andriushchenko, Croce, Flammarion, Hein, "Square Attack: a Query-Efficient Black-Box
Adversarial Attack via Random Search", ECCV 2020 (arXiv:1912.00049).

A score-based random search: it reads the model's logits and never a gradient. The schedule of the
square's size and the count of queries follow the authors' reference implementation (max-andr/square-attack).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._validation import check_choice, check_number
from .base import LOSSES, Attack, _check_positive, _project_linf, logit_margin

CHECKPOINTS = (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)  # p halves after each, in a 10000-query run


def p_schedule(p_init: float, t: int, queries: int) -> float:
    """The fraction p of the H*W pixels a square covers at iteration t: p_init, halved at each checkpoint passed.

    The checkpoints are the paper's for 10000 queries; t is rescaled to that budget, as the reference code does.
    """
    scaled = int(t / queries * 10000)
    return p_init / 2 ** sum(scaled > k for k in CHECKPOINTS)


def _uniform(generators: list[torch.Generator], rows: list[int], shape: tuple[int, ...],
             device: torch.device) -> Tensor:
    """Uniform draws in [0, 1) of `shape` for each example of `rows`, each from its own generator, (M, *shape)."""
    return torch.stack([torch.rand(shape, generator=generators[i], device=device) for i in rows])


class Square(Attack):
    """Square Attack (L-inf, untargeted): random search over squares of +-eps, keeping what raises the loss.

    Start from vertical stripes of +-eps (one random sign per column and channel). Each iteration,
    for every example not yet misclassified: pick a square of side s = round(sqrt(p * H * W)) at a
    random position, set the perturbation on it to +-eps (one random sign per channel), clip to the
    eps-ball and [0, 1], query the model, and keep the candidate if its loss is higher (or it fools
    the model). p starts at p_init and halves on a fixed schedule (`p_schedule`). An example stops
    once it is misclassified (logit margin > 0) or after `queries` queries, the start included.
    After a call, `last_queries` (N,) holds the number of queries each example used.

    It needs only the model's scores, never a gradient (`forward` runs under torch.no_grad()), so
    gradient masking such as gradient inhibition (../shared/PAPER.md), which zeroes the input
    gradient of cross-entropy, does not stop it: a defence that beats gradient attacks but not
    Square is masking gradients, not robust (Carlini et al. 2019, "On Evaluating Adversarial Robustness").

    Each example draws from its own torch.Generator (on the images' device), seeded from `seed` and
    its position in the batch: the same seed gives the same result, whatever the rest of the batch.

    Paper: Andriushchenko et al. ECCV 2020, Sec. 3.1 and Algorithms 1-2 (L-inf: stripes start, squares
    of +-eps, p halved at 10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000 of 10000 queries).

    Args:
        model: any classifier taking images in [0, 1] and returning logits (N, K).
        eps: L-inf radius in pixel units, [0, 1].
        queries: model evaluations per example, the start included, >= 1.
        p_init: initial fraction of the H * W pixels a square covers, in (0, 1].
        loss: "margin" (C&W logit margin, max_{i != y} Z_i - Z_y) or "ce" (cross-entropy of the softmax;
            it saturates with the softmax, so on a gradient-inhibited model its score is flat and the search stalls).
        seed: seed of the random stripes and squares, an integer >= 0.

    Shape: images (N, C, H, W) in [0, 1], labels (N,) int64 or None (the model's prediction)
        -> adv_images (N, C, H, W) in [0, 1]; last_queries (N,) int64.

    Example:
        >>> from hashrobust.attacks import Square
        >>> model, images = hr.load_pretrained("mnist", "mlp3", 1), hr.load_dataset("mnist").images[:8]
        >>> adv_images = Square(model, eps=0.3, queries=100)(images)
        >>> round((adv_images - images).abs().max().item(), 4)
        0.3

    Used in: notebooks/06_adaptive_attacks.ipynb.
    """

    def __init__(self, model: nn.Module, eps: float = 0.3, queries: int = 1000, p_init: float = 0.05,
                 loss: str = "margin", seed: int = 0) -> None:
        super().__init__(model)
        self.eps = check_number(eps, "eps", "Square", low=0, high=1)
        self.queries = check_number(queries, "queries", "Square", low=1, integer=True)
        self.p_init = _check_positive(p_init, "p_init", "Square", high=1)
        self.loss = check_choice(loss, "loss", LOSSES)
        self.seed = check_number(seed, "seed", "Square", low=0, integer=True)
        self.last_queries: Tensor | None = None

    def generators(self, n: int, device: torch.device) -> list[torch.Generator]:
        """One generator per example, seeded by the n first draws of a CPU generator seeded by `seed`."""
        seeds = torch.randint(2**63 - 1, (n,), generator=torch.Generator().manual_seed(self.seed))  # (N,)
        return [torch.Generator(device).manual_seed(int(s)) for s in seeds]

    def score(self, adv_images: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        """One query per example: the loss to raise and the logit margin (> 0: misclassified), both (M,)."""
        logits = self.model(adv_images)  # (M, K)
        margin = logit_margin(logits, labels)
        loss = margin if self.loss == "margin" else F.cross_entropy(logits, labels, reduction="none")
        return loss, margin

    @torch.no_grad()
    def forward(self, images: Tensor, labels: Tensor) -> Tensor:
        n, c, h, w = images.shape
        device = images.device
        generators = self.generators(n, device)
        stripes = torch.where(_uniform(generators, list(range(n)), (c, 1, w), device) < 0.5, -self.eps, self.eps)
        adv_images = (images + stripes).clamp(0, 1)  # (N, C, H, W): vertical stripes of +-eps
        best_loss, margin = self.score(adv_images, labels)  # (N,), (N,)
        queries = torch.ones(n, dtype=torch.int64, device=device)
        pixel_rows, pixel_cols = torch.arange(h, device=device), torch.arange(w, device=device)
        for t in range(self.queries - 1):
            rows = (margin <= 0).nonzero().squeeze(1)  # (M,) the examples not yet misclassified
            if len(rows) == 0:
                break
            s = min(max(round(math.sqrt(p_schedule(self.p_init, t, self.queries) * h * w)), 1), h, w)
            draws = _uniform(generators, rows.tolist(), (2 + c,), device)  # (M, 2 + C)
            top = (draws[:, :1] * (h - s + 1)).long().clamp(max=h - s)  # (M, 1) in {0, ..., H - s}
            left = (draws[:, 1:2] * (w - s + 1)).long().clamp(max=w - s)  # (M, 1) in {0, ..., W - s}
            square = (((pixel_rows >= top) & (pixel_rows < top + s))[:, :, None]
                      & ((pixel_cols >= left) & (pixel_cols < left + s))[:, None, :])  # (M, H, W)
            signs = torch.where(draws[:, 2:] < 0.5, -self.eps, self.eps)[:, :, None, None]  # (M, C, 1, 1)
            delta = torch.where(square[:, None], signs, adv_images[rows] - images[rows])  # (M, C, H, W)
            candidates = _project_linf(images[rows] + delta, images[rows], self.eps)
            loss, candidate_margin = self.score(candidates, labels[rows])  # (M,), (M,)
            queries[rows] += 1
            better = (loss > best_loss[rows]) | (candidate_margin > 0)  # (M,)
            kept = rows[better]
            adv_images[kept], best_loss[kept] = candidates[better], loss[better]
            margin[kept] = candidate_margin[better]
        self.last_queries = queries
        return adv_images
