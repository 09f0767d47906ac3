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
from .base import LOSSES, Attack, _check_positive, example_keys, example_uniform, logit_margin

CHECKPOINTS = (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)  # p halves after each, in a 10000-query run
REDRAWS = 50  # draws of a square's signs per iteration at most (for eps > 0 each repeats the image w.p. <= 1/2)
STREAMS = 64  # random streams per iteration: 64 * (t + 1) + 0 the square's corner, + 1..REDRAWS its signs


def p_schedule(p_init: float, t: int, queries: int) -> float:
    """The fraction p of the H*W pixels a square covers at iteration t: p_init, halved at each checkpoint passed.

    The checkpoints are the paper's for 10000 queries; t is rescaled to that budget, as the reference code does.
    """
    scaled = int(t / queries * 10000)
    return p_init / 2 ** sum(scaled > k for k in CHECKPOINTS)


class Square(Attack):
    """Square Attack (L-inf, untargeted): random search over squares of +-eps, keeping what raises the loss.

    Start from vertical stripes of +-eps (one random sign per column and channel). Each iteration,
    for every example not yet misclassified: pick a square of side s = round(sqrt(p * H * W)), at
    most min(H, W) - 1, with its top-left corner uniform in {0..H-s-1} x {0..W-s-1} (as in the
    authors' code, so the last row and column keep their stripes), set the perturbation on it to
    +-eps (one random sign per channel), clip to [0, 1], query the model, and keep the candidate if
    its loss is strictly higher (or it fools the model). While the candidate equals the current
    image (the square already holds those signs, or clipping hides the change), its signs are
    redrawn before the query, as the authors' code does: no query is spent on an unchanged image.
    After REDRAWS identical draws (only for an eps so tiny that x +- eps rounds to x) the example
    sits the iteration out, without a query. p starts at p_init and halves on a fixed schedule
    (`p_schedule`). An example stops once it is misclassified (logit margin > 0) or after `queries`
    queries, the start included. After a call, `last_queries` (N,) holds each example's count.

    It needs only the model's scores, never a gradient (`forward` runs under torch.no_grad()), so
    gradient masking such as gradient inhibition (notebook 05), which zeroes the input gradient of
    cross-entropy, does not stop it: a defence that beats gradient attacks but not Square is
    masking gradients, not robust (Carlini et al. 2019, "On Evaluating Adversarial Robustness").

    Randomness is per example: every draw comes from `example_uniform`, keyed on the image's pixels
    and `seed` (`example_keys`), with stream 0 for the stripes and streams STREAMS * (t + 1) + a at
    iteration t (a = 0 the corner, a = 1..REDRAWS the signs). An image gets the same adversarial
    image alone, in batches of 5 or in a batch of 1000.

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

    def score(self, adv_images: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        """One query per example: the loss to raise and the logit margin (> 0: misclassified), both (M,)."""
        logits = self.model(adv_images)  # (M, K)
        margin = logit_margin(logits, labels)
        loss = margin if self.loss == "margin" else F.cross_entropy(logits, labels, reduction="none")
        return loss, margin

    def shifted(self, images: Tensor, uniform: Tensor) -> Tensor:
        """images + eps where uniform >= 0.5, - eps elsewhere (broadcast), clipped to [0, 1]."""
        return (images + torch.where(uniform < 0.5, -self.eps, self.eps)).clamp(0, 1)

    @torch.no_grad()
    def forward(self, images: Tensor, labels: Tensor) -> Tensor:
        n, c, h, w = images.shape
        keys = example_keys(images, self.seed)  # (N,): an example's draws depend on its pixels only

        def draw(rows: Tensor, shape: tuple[int, ...], stream: int) -> Tensor:  # (M, *shape) in [0, 1)
            return example_uniform(keys[rows.cpu().numpy()], shape, stream, images.device)

        adv_images = self.shifted(images, draw(torch.arange(n), (c, 1, w), 0))  # (N, C, H, W): stripes
        best_loss, margin = self.score(adv_images, labels)  # (N,), (N,)
        queries = torch.ones(n, dtype=torch.int64, device=images.device)
        pixel_rows, pixel_cols = torch.arange(h, device=images.device), torch.arange(w, device=images.device)
        for t in range(self.queries - 1 if self.eps > 0 else 0):  # eps = 0: every candidate is the image
            rows = (margin <= 0).nonzero().squeeze(1)  # (M,) the examples not yet misclassified
            if len(rows) == 0:
                break
            s = max(min(round(math.sqrt(p_schedule(self.p_init, t, self.queries) * h * w)), h - 1, w - 1), 1)
            corner = draw(rows, (2,), STREAMS * (t + 1))  # (M, 2): top-left in {0..H-s-1} x {0..W-s-1}
            top = (corner[:, :1] * max(h - s, 1)).long().clamp(max=max(h - s - 1, 0))  # (M, 1)
            left = (corner[:, 1:] * max(w - s, 1)).long().clamp(max=max(w - s - 1, 0))  # (M, 1)
            square = (((pixel_rows >= top) & (pixel_rows < top + s))[:, :, None]
                      & ((pixel_cols >= left) & (pixel_cols < left + s))[:, None, :])[:, None]  # (M, 1, H, W)
            best = adv_images[rows]  # (M, C, H, W)
            candidates, same = best.clone(), torch.arange(len(rows), device=images.device)
            for attempt in range(1, REDRAWS + 1):  # redraw the signs of the candidates equal to their best
                signs = draw(rows[same], (c, 1, 1), STREAMS * (t + 1) + attempt)  # (M', C, 1, 1)
                candidates[same] = torch.where(square[same], self.shifted(images[rows[same]], signs), best[same])
                same = same[(candidates[same] == best[same]).flatten(1).all(1)]
                if len(same) == 0:
                    break
            changed = torch.ones(len(rows), dtype=torch.bool, device=images.device)
            changed[same] = False  # still equal after REDRAWS draws: no query this iteration
            rows, candidates = rows[changed], candidates[changed]
            loss, candidate_margin = self.score(candidates, labels[rows])  # (M,), (M,)
            queries[rows] += 1
            better = (loss > best_loss[rows]) | (candidate_margin > 0)  # (M,)
            kept = rows[better]
            adv_images[kept], best_loss[kept] = candidates[better], loss[better]
            margin[kept] = candidate_margin[better]
        self.last_queries = queries
        return adv_images
