"""JSMA: Papernot et al., "The Limitations of Deep Learning in Adversarial Settings", EuroS&P 2016.

Batched like cleverhans v2 (attacks_tf.jsma_symbolic): the saliency map first, then the attack.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._validation import check_choice
from .base import Attack, _check_positive, changed_fraction


def _best_pairs(grad_target: Tensor, grad_other: Tensor, domain: Tensor, chunk: int = 16) -> tuple[Tensor, ...]:
    """JSMA's saliency map for increasing features (Papernot et al. eq. 10), maximised over pairs.

    For features p != q both in the search domain: alpha = dt_p + dt_q (target), beta = do_p + do_q
    (sum of the other classes); a pair counts only if alpha > 0 and beta < 0, its saliency is
    alpha * |beta|. Inputs (M, D); returns p, q (M,) and `found` (M,), False where no pair counts.
    The (D, D) maps are built `chunk` examples at a time (D = 784: 16 x 2.5 MB per map).
    """
    p, q, found = [], [], []
    d = grad_target.shape[1]
    for g_t, g_o, dom in zip(grad_target.split(chunk), grad_other.split(chunk), domain.split(chunk)):
        g_t = g_t.masked_fill(~dom, float("-inf"))  # a pair with a feature outside the domain gets alpha < 0
        alpha = (g_t[:, :, None] + g_t[:, None, :]).clamp_(min=0)  # (n, D, D) alpha where > 0, else 0
        minus_beta = (g_o[:, :, None] + g_o[:, None, :]).neg_().clamp_(min=0)  # (n, D, D) |beta| where < 0
        saliency = alpha.mul_(minus_beta)  # alpha * |beta| for the pairs that count, else 0
        saliency.diagonal(dim1=1, dim2=2).zero_()  # p != q
        best, index = saliency.flatten(1).max(1)  # (n,)
        p.append(index // d)
        q.append(index % d)
        found.append(best > 0)
    return torch.cat(p), torch.cat(q), torch.cat(found)


class JSMA(Attack):
    """Jacobian-based Saliency Map Attack (targeted, L0): raise the pair of pixels that most favour the target.

    Each iteration takes the Jacobian of the class scores, picks the pair (p, q) of the search domain
    with the largest saliency (see `_best_pairs`), adds theta to both (clipped to 1) and removes a
    feature from the domain once it saturates at 1. An example stops when the model predicts its
    target, when no pair qualifies or after floor(gamma * D / 2) iterations. Batched over examples.
    After a call, `last_changed_fraction` (N,) holds the fraction of features each example changed.

    Paper: Papernot et al. EuroS&P 2016, Sec. III-IV, eq. 8-10 (pairwise saliency; theta 1, gamma 0.1 on MNIST);
    Liu et al. ASP-DAC 2018, Sec. 4 (JSMA-F as in cleverhans v2: the Jacobian of the softmax).

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
            x = adv.clone().requires_grad_(True)
            scores = self.model(x.view_as(images))  # (N, K)
            scores = scores.softmax(1) if self.jacobian == "probs" else scores
            active &= (scores.argmax(1) != target_labels) & (domain.sum(1) >= 2)
            if not active.any():
                break
            target = F.one_hot(target_labels, scores.shape[1]).bool()  # (N, K)
            (grad_target,) = torch.autograd.grad(scores[target].sum(), x, retain_graph=True)  # (N, D)
            (grad_other,) = torch.autograd.grad(scores[~target].sum(), x)  # (N, D)
            rows = active.nonzero().squeeze(1)
            p, q, found = _best_pairs(grad_target[rows], grad_other[rows], domain[rows])
            active[rows[~found]] = False
            rows, p, q = rows[found], p[found], q[found]
            for feature in (p, q):
                adv[rows, feature] = (adv[rows, feature] + self.theta).clamp(max=1)
                domain[rows, feature] = adv[rows, feature] < 1  # saturated features leave the domain
        adv_images = adv.view_as(images)
        self.last_changed_fraction = changed_fraction(images, adv_images)
        return adv_images
