"""JSMA: Papernot et al., "The Limitations of Deep Learning in Adversarial Settings", EuroS&P 2016.

Batched like cleverhans v2 (attacks_tf.jsma_symbolic): the saliency map first, then the attack.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._validation import check_choice
from .base import Attack, _check_positive, changed_fraction


def _pair_search(alpha_terms: Tensor, beta_terms: Tensor, chunk_elements: int = 1 << 24) -> tuple[Tensor, ...]:
    """The exhaustive pair search: score every pair (p, q), p != q, and keep the best one per row.

    Inputs (M, K): a_p (the target's gradient, -inf where a feature may not be chosen) and c_p = -b_p
    (minus the other classes' gradient). Saliency = max(a_p + a_q, 0) * max(c_p + c_q, 0), which is
    Papernot et al.'s alpha * |beta| where alpha > 0 and beta < 0, else 0. Returns the column indices
    p, q (M,), the best saliency (M,) and `found` (M,), False where no pair scores above 0. The (K, K)
    maps are built a few rows at a time so that no chunk holds more than `chunk_elements` floats.
    """
    k = alpha_terms.shape[1]
    rows = max(1, chunk_elements // max(k * k, 1))
    p, q, best = [], [], []
    for a, c in zip(alpha_terms.split(rows), beta_terms.split(rows)):
        alpha = (a[:, :, None] + a[:, None, :]).clamp_(min=0)  # (n, K, K)
        minus_beta = (c[:, :, None] + c[:, None, :]).clamp_(min=0)
        saliency = alpha.mul_(minus_beta)
        saliency.diagonal(dim1=1, dim2=2).zero_()  # p != q
        value, index = saliency.flatten(1).max(1)
        p.append(index // k)
        q.append(index % k)
        best.append(value)
    best = torch.cat(best)
    return torch.cat(p), torch.cat(q), best, best > 0


def _skyband(a: Tensor, c: Tensor) -> Tensor:
    """(M, D) bool: the points (a_p, c_p) dominated by at most one other point (the "2-skyband").

    Points are ranked by a, largest first (ties by index); q is dominated by every point ranked
    before it whose c is at least c_q, since such a point has a and c both at least as large.
    q is in the band iff c_q exceeds the second-largest c ranked before it. The largest c so far is
    one cumulative max; the second-largest is the cumulative max of min(c_j, largest before j).
    Points with a = -inf (outside the domain) rank last and so dominate no one.
    """
    order = a.argsort(dim=1, descending=True, stable=True)
    c_ranked = c.gather(1, order)
    lowest = c_ranked.new_full((len(c), 1), float("-inf"))
    largest_before = torch.cat([lowest, c_ranked.cummax(1).values[:, :-1]], 1)
    second_upto = torch.minimum(c_ranked, largest_before).cummax(1).values
    second_before = torch.cat([lowest, second_upto[:, :-1]], 1)
    return torch.zeros_like(order, dtype=torch.bool).scatter_(1, order, c_ranked > second_before)


def _best_pairs(grad_target: Tensor, grad_other: Tensor, domain: Tensor) -> tuple[Tensor, ...]:
    """JSMA's saliency map for increasing features (Papernot et al. 2016, eq. 10), maximised over pairs.

    For features p != q both in the search domain: alpha = a_p + a_q (a: the target's gradient),
    beta = b_p + b_q (b: the sum of the other classes' gradients); a pair counts only if alpha > 0
    and beta < 0, and its saliency is alpha * |beta| = (a_p + a_q)(c_p + c_q) with c = -b.

    Exact in O(D log D) instead of scoring all D x D pairs: the saliency grows with both a_q and
    c_q, so if two other points both dominate q (a and c at least as large), q can be swapped for
    the one that is not p without lowering the saliency (float rounding is monotone, so this holds
    bit for bit). Hence a best pair lies in the 2-skyband (`_skyband`), typically tens of points,
    and the exhaustive search (`_pair_search`) runs over the band alone. The saliency returned is
    the same as the D x D search's (`_best_pairs_exhaustive`); with ties the pair may differ.

    Inputs (M, D); returns p, q (M,) feature indices and `found` (M,), False where no pair counts.
    """
    a = grad_target.masked_fill(~domain, float("-inf"))  # a feature outside the domain: alpha < 0
    c = grad_other.neg().masked_fill(~domain, float("-inf"))
    band = _skyband(a, c)
    k = max(int(band.sum(1).max()), 2) if len(band) else 2
    columns = band.to(torch.uint8).argsort(dim=1, descending=True, stable=True)[:, :k]  # band first
    outside = ~band.gather(1, columns)
    p, q, _, found = _pair_search(a.gather(1, columns).masked_fill(outside, float("-inf")),
                                  c.gather(1, columns).masked_fill(outside, float("-inf")))
    return columns.gather(1, p[:, None]).squeeze(1), columns.gather(1, q[:, None]).squeeze(1), found


def _best_pairs_exhaustive(grad_target: Tensor, grad_other: Tensor, domain: Tensor) -> tuple[Tensor, ...]:
    """The reference for `_best_pairs`: all D x D pairs scored (cleverhans v2's jsma_symbolic), O(D^2)."""
    a = grad_target.masked_fill(~domain, float("-inf"))
    p, q, _, found = _pair_search(a, grad_other.neg())
    return p, q, found


def _score_gradients(scores: Tensor, x: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
    """The two rows of the Jacobian JSMA needs (Papernot et al. eq. 8): d scores[target] / dx and d sum(others) / dx.

    scores (n, K) computed from x (n, D) (probabilities for JSMA-F, logits for JSMA-Z); returns
    grad_target, grad_other (n, D), each example's gradient from its own row (the rows are independent).
    """
    target = F.one_hot(targets, scores.shape[1]).bool()  # (n, K)
    (grad_target,) = torch.autograd.grad(scores[target].sum(), x, retain_graph=True)
    (grad_other,) = torch.autograd.grad(scores[~target].sum(), x)
    return grad_target, grad_other


class JSMA(Attack):
    """Jacobian-based Saliency Map Attack (targeted, L0): raise the pair of pixels that most favour the target.

    Each iteration takes the Jacobian of the class scores, picks the pair (p, q) of the search domain
    with the largest saliency (see `_best_pairs`: exact, in O(D log D)), adds theta to both (clipped to 1) and removes a
    feature from the domain once it saturates at 1. An example stops when the model predicts its
    target, when no pair qualifies or after floor(gamma * D / 2) iterations. Batched over examples.
    After a call, `last_changed_fraction` (N,) holds the fraction of features each example changed.

    Paper: Papernot et al. EuroS&P 2016, Sec. III-IV, eq. 8-10 (pairwise saliency; theta 1, gamma 0.1 on MNIST);
    Liu et al. ASP-DAC 2018, the authors' code (JSMA-F as in cleverhans v2: the Jacobian of the softmax).

    Args:
        model: any classifier taking images in [0, 1] and returning logits (N, K).
        theta: amount added to a chosen feature in pixel units, in (0, 1] (only increasing features).
        gamma: maximum fraction of the D features to change, in (0, 1].
        jacobian: "probs" (of the softmax: JSMA-F, cleverhans v2) or "logits" (JSMA-Z, Papernot et al.).

    Shape: images (N, C, H, W) in [0, 1], target_labels (N,) int64 or None -> adv_images (N, C, H, W).
        labels=None targets the next class, (prediction + 1) % K, as torchattacks does.

    Example:
        >>> from hashrobust.attacks import JSMA
        >>> attack = JSMA(hr.load_pretrained("mnist", "mlp3", 1), theta=1.0, gamma=0.1)
        >>> attack(hr.load_dataset("mnist").images[:2]).shape, bool(attack.last_changed_fraction.max() <= 0.1)
        (torch.Size([2, 1, 28, 28]), True)

    Used in: notebooks/02_adversarial_examples.ipynb.
    """

    def __init__(self, model: nn.Module, theta: float = 1.0, gamma: float = 0.1, jacobian: str = "probs") -> None:
        super().__init__(model)
        self.theta = _check_positive(theta, "theta", "JSMA", high=1)
        self.gamma = _check_positive(gamma, "gamma", "JSMA", high=1)
        self.jacobian = check_choice(jacobian, "jacobian", ("probs", "logits"))
        self.last_changed_fraction: Tensor | None = None

    def default_labels(self, logits: Tensor) -> Tensor:
        """labels=None: target the next class, (prediction + 1) % K."""
        return (logits.argmax(1) + 1) % logits.shape[1]

    def forward(self, images: Tensor, target_labels: Tensor) -> Tensor:
        adv = images.flatten(1).clone()  # (N, D)
        domain = adv < 1  # (N, D): features that can still increase
        active = torch.ones(len(adv), dtype=torch.bool, device=adv.device)
        for _ in range(int(self.gamma * adv.shape[1] / 2)):
            rows = active.nonzero().squeeze(1)  # only the examples still running cost a Jacobian
            if len(rows) == 0:
                break
            x = adv[rows].requires_grad_(True)
            scores = self.model(x.view(len(rows), *images.shape[1:]))  # (n, K)
            scores = scores.softmax(1) if self.jacobian == "probs" else scores
            targets = target_labels[rows]
            running = (scores.argmax(1) != targets) & (domain[rows].sum(1) >= 2)
            active[rows[~running]] = False
            if not running.any():
                break
            grad_target, grad_other = _score_gradients(scores, x, targets)  # (n, D) each
            rows, grad_target, grad_other = rows[running], grad_target[running], grad_other[running]
            p, q, found = _best_pairs(grad_target, grad_other, domain[rows])
            active[rows[~found]] = False
            rows, p, q = rows[found], p[found], q[found]
            for feature in (p, q):
                adv[rows, feature] = (adv[rows, feature] + self.theta).clamp(max=1)
                domain[rows, feature] = adv[rows, feature] < 1  # saturated features leave the domain
        adv_images = adv.view_as(images)
        self.last_changed_fraction = changed_fraction(images, adv_images)
        return adv_images
