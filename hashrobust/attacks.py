"""White-box adversarial attacks on any image classifier, dense or hashed: FGSM, BIM, PGD, JSMA, C&W-L2, DeepFool.

Paper: Liu et al. (ASP-DAC 2018), Sec. 4 attacks HashedNets models with FGSM,
BIM and JSMA in cleverhans v2 conventions: pixels in [0, 1], and the labels
default to the model's own clean prediction (no label leaking). A hashed
model computes exactly the function of the dense model with weights V, so an
attack simply backpropagates through it; this module never looks inside a
model (it imports no hashrobust layer) and works on any `nn.Module`.

Sources, in the order of this file:
    FGSM      Goodfellow, Shlens, Szegedy, "Explaining and Harnessing Adversarial Examples", ICLR 2015.
    BIM       Kurakin, Goodfellow, Bengio, "Adversarial Examples in the Physical World", arXiv:1607.02533, 2016.
    PGD       Madry et al., "Towards Deep Learning Models Resistant to Adversarial Attacks", ICLR 2018;
              its `step`/`project` split follows MadryLab/robustness (attack_steps.py).
    JSMA      Papernot et al., "The Limitations of Deep Learning in Adversarial Settings", EuroS&P 2016;
              batched like cleverhans v2 (attacks_tf.jsma_symbolic).
    CW        Carlini, Wagner, "Towards Evaluating the Robustness of Neural Networks", IEEE S&P 2017.
    DeepFool  Moosavi-Dezfooli, Fawzi, Frossard, "DeepFool", CVPR 2016.
The "margin" loss of FGSM/BIM/PGD is C&W's logit margin: it keeps its
gradient where a saturated float32 softmax gives cross-entropy an exactly
zero one, which is how "gradient inhibition" masks gradients (../shared/PAPER.md;
Carlini & Wagner 2016; Athalye, Carlini, Wagner 2018). tests/test_attacks.py
checks FGSM and PGD against torchattacks to float precision.

Shapes: N batch, C/H/W image, D = C*H*W features, K classes.
"""
from __future__ import annotations

import inspect
import math
from numbers import Real

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._validation import check_choice, check_number

__all__ = ["Attack", "FGSM", "BIM", "PGD", "JSMA", "CW", "DeepFool",
           "ce_loss", "margin_loss", "logit_margin", "loss_gradient", "changed_fraction"]


# ----------------------------------------------------------------------------- checks and losses
def _check_positive(value: object, name: str, owner: str, high: float | None = None) -> float:
    """check_number with an open lower bound: 0 < value (<= high)."""
    allowed = "a number > 0" + (f" and <= {high:g}" if high is not None else "")
    ok = isinstance(value, Real) and not isinstance(value, bool) and math.isfinite(value) and value > 0
    if not ok or (high is not None and value > high):
        raise ValueError(f"The '{name}' parameter of {owner} must be {allowed}. Got {value!r} instead.")
    return value


def _check_bool(value: object, name: str, owner: str) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"The '{name}' parameter of {owner} must be True or False. Got {value!r} instead.")
    return value


def logit_margin(logits: Tensor, labels: Tensor) -> Tensor:
    """max_{i != y} Z_i - Z_y per example, (N, K) -> (N,): > 0 iff the model does not predict y."""
    others = logits.masked_fill(F.one_hot(labels, logits.shape[1]).bool(), float("-inf"))  # (N, K)
    return others.amax(1) - logits.gather(1, labels[:, None]).squeeze(1)


def ce_loss(logits: Tensor, labels: Tensor) -> Tensor:
    """Cross-entropy of the softmax, batch mean: its input gradient is exactly 0 once float32 p_y rounds to 1."""
    return F.cross_entropy(logits, labels)


def margin_loss(logits: Tensor, labels: Tensor) -> Tensor:
    """The C&W logit margin, batch mean: invariant to softmax saturation, so gradient inhibition cannot zero it."""
    return logit_margin(logits, labels).mean()


LOSSES = {"ce": ce_loss, "margin": margin_loss}


def loss_gradient(model: nn.Module, images: Tensor, labels: Tensor, loss: str = "ce",
                  targeted: bool = False) -> Tensor:
    """grad_x of the loss an attack ascends: LOSSES[loss] of the labels, negated when they are targets."""
    with torch.enable_grad():
        images = images.detach().requires_grad_(True)
        value = LOSSES[loss](model(images), labels)
        (grad,) = torch.autograd.grad(-value if targeted else value, images)
    return grad  # (N, C, H, W)


def _project_linf(adv_images: Tensor, images: Tensor, eps: float) -> Tensor:
    """Nearest point of {x' : ||x' - x||_inf <= eps} n [0, 1]^D: clip the perturbation, then the pixels."""
    delta = (adv_images - images).clamp(-eps, eps)
    return (images + delta).clamp(0, 1)


def _per_example_norm(x: Tensor) -> Tensor:
    """||x_n||_2 of each example, shaped (N, 1, 1, 1) to broadcast over images."""
    return x.flatten(1).norm(dim=1).view(-1, 1, 1, 1)


def _unit_l2(x: Tensor) -> Tensor:
    """x_n / ||x_n||_2 per example, 0 where x_n = 0; divides by max |x_n| first so tiny x_n do not underflow."""
    tiny = torch.finfo(x.dtype).tiny
    x = x / x.flatten(1).abs().amax(1).view(-1, 1, 1, 1).clamp_min(tiny)
    return x / _per_example_norm(x).clamp_min(tiny)


def changed_fraction(images: Tensor, adv_images: Tensor) -> Tensor:
    """The fraction of the D features of each example that an attack changed (JSMA's L0 cost), (N,)."""
    return (adv_images != images).flatten(1).float().mean(1)


# ----------------------------------------------------------------------------- the base class
class Attack:
    """What every attack shares: input checks, eval mode and frozen parameters during the call, default labels.

    A subclass validates and stores its hyper-parameters in `__init__` and
    implements `forward(images, labels) -> adv_images`, the algorithm. Calling
    the attack checks the inputs, puts the model in eval mode with every
    parameter's requires_grad off (no parameter gradient; hashed layers reuse
    their cached V), runs `forward`, restores both in `finally`, and returns
    the adversarial images clamped to [0, 1] and detached, on the images' device.
    """

    def __init__(self, model: nn.Module) -> None:
        if not isinstance(model, nn.Module):
            raise ValueError(f"The 'model' parameter of {type(self).__name__} must be an nn.Module. "
                             f"Got {type(model).__name__} instead.")
        self.model = model

    def forward(self, images: Tensor, labels: Tensor) -> Tensor:
        raise NotImplementedError

    def default_labels(self, logits: Tensor) -> Tensor:
        """labels=None: the model's own clean prediction, (N, K) -> (N,)."""
        if getattr(self, "targeted", False):
            raise ValueError(f"{type(self).__name__} with targeted=True needs target labels. Got labels=None.")
        return logits.argmax(1)

    def __call__(self, images: Tensor, labels: Tensor | None = None) -> Tensor:
        name = type(self).__name__
        if not (torch.is_tensor(images) and images.is_floating_point() and images.dim() == 4):
            got = f"{images.dim()}-D {images.dtype}" if torch.is_tensor(images) else type(images).__name__
            raise ValueError(f"The 'images' of {name} must be a 4-D float tensor (N, C, H, W) with values "
                             f"in [0, 1]. Got {got} instead.")
        if not ((images >= 0) & (images <= 1)).all():
            raise ValueError(f"The 'images' of {name} must have values in [0, 1]. "
                             f"Got values in [{images.min().item():g}, {images.max().item():g}] instead.")
        images = images.detach()
        modes = [(m, m.training) for m in self.model.modules()]
        flags = [(p, p.requires_grad) for p in self.model.parameters()]
        try:
            self.model.eval()
            for p, _ in flags:
                p.requires_grad_(False)
            with torch.no_grad():
                logits = self.model(images)  # (N, K)
            if labels is None:
                labels = self.default_labels(logits)
            else:
                labels = self._check_labels(labels, len(images), logits.shape[1]).to(images.device)
            with torch.enable_grad():
                adv_images = self.forward(images, labels)
        finally:
            for m, mode in modes:
                m.training = mode
            for p, flag in flags:
                p.requires_grad_(flag)
        return adv_images.clamp(0, 1).detach()

    def _check_labels(self, labels: object, n: int, k: int) -> Tensor:
        ok = torch.is_tensor(labels) and labels.dtype == torch.int64 and tuple(labels.shape) == (n,)
        if not ok or not ((labels >= 0) & (labels < k)).all():
            got = type(labels).__name__
            if torch.is_tensor(labels):
                values = f", values in [{labels.min().item()}, {labels.max().item()}]" if labels.numel() else ""
                got = f"{labels.dtype} of shape {tuple(labels.shape)}{values}"
            raise ValueError(f"The 'labels' of {type(self).__name__} must be a 1-D int64 tensor of length {n} "
                             f"with values in [0, {k}). Got {got} instead.")
        return labels

    def __repr__(self) -> str:
        names = list(inspect.signature(type(self).__init__).parameters)[2:]  # after self, model
        return f"{type(self).__name__}({', '.join(f'{n}={getattr(self, n)!r}' for n in names)})"


# ----------------------------------------------------------------------------- the attacks, in paper order
class FGSM(Attack):
    """Fast Gradient Sign Method: one signed-gradient step, x* = clip(x + eps * sign(grad_x L(x, y)), 0, 1).

    Paper: Goodfellow et al. ICLR 2015, Sec. 4; Liu et al. ASP-DAC 2018, Sec. 4 (eps = 0.3 on MNIST).

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


class BIM(Attack):
    """Basic Iterative Method (I-FGSM): `steps` FGSM steps of size alpha, each clipped to the L-inf eps-ball.

    x_0 = x;  x_{t+1} = clip_{x, eps}(x_t + alpha * sign(grad_x L(x_t, y))), clipped to [0, 1].

    Paper: Kurakin et al. 2016, Sec. 2.2; Liu et al. ASP-DAC 2018, Sec. 4 (eps 0.3, alpha 0.03, 40 steps).

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


class PGD(Attack):
    """Projected Gradient Descent: BIM from a random start in the eps-ball, for the L-inf or the L2 norm.

    x_0 = x + uniform noise in the ball (or x);  x_{t+1} = project(step(x_t, grad_x L(x_t, y))).

    Paper: Madry et al. ICLR 2018, Sec. 2.1 and Appendix (eps 0.3, alpha 0.01, 40 steps on MNIST).

    Args:
        model: any classifier taking images in [0, 1] and returning logits (N, K).
        eps: radius in pixel units: L-inf in [0, 1]; L2 >= 0 (sqrt(D) is the whole image box).
        alpha: step size in pixel units (L-inf) or L2 length per step, > 0.
        steps: number of iterations, >= 1.
        norm: "linf" or "l2".
        random_start: start from a point drawn uniformly from the eps-ball (clipped to [0, 1]).
        seed: seed of the random start (a fresh torch.Generator per call); None draws from torch's global RNG.
        loss: "ce" or "margin" (see FGSM).
        targeted: if True, labels are target labels and the steps descend the loss towards them.

    Shape: images (N, C, H, W) in [0, 1], labels (N,) int64 or None -> adv_images (N, C, H, W).

    Example:
        >>> from hashrobust.attacks import PGD
        >>> model, images = hr.load_pretrained("mnist", "mlp3", 1), hr.load_dataset("mnist").images[:8]
        >>> adv_images = PGD(model, eps=2.0, alpha=0.2, steps=10, norm="l2", seed=0)(images)
        >>> bool((adv_images - images).flatten(1).norm(dim=1).max() <= 2.0 + 1e-5)
        True

    Used in: notebooks/06_adaptive_attacks.ipynb.
    """

    def __init__(self, model: nn.Module, eps: float = 0.3, alpha: float = 0.01, steps: int = 40,
                 norm: str = "linf", random_start: bool = True, seed: int | None = None, loss: str = "ce",
                 targeted: bool = False) -> None:
        super().__init__(model)
        self.norm = check_choice(norm, "norm", ("linf", "l2"))
        self.eps = check_number(eps, "eps", "PGD", low=0, high=1 if norm == "linf" else None)
        self.alpha = _check_positive(alpha, "alpha", "PGD")
        self.steps = check_number(steps, "steps", "PGD", low=1, integer=True)
        self.random_start = _check_bool(random_start, "random_start", "PGD")
        self.seed = seed if seed is None else check_number(seed, "seed", "PGD", low=0, integer=True)
        self.loss = check_choice(loss, "loss", LOSSES)
        self.targeted = _check_bool(targeted, "targeted", "PGD")

    def start(self, images: Tensor) -> Tensor:
        """x_0: uniform in the cube [-eps, eps]^D (L-inf) or in the ball ||d||_2 <= eps (L2), added, clipped."""
        if not self.random_start:
            return images.clone()
        generator = None if self.seed is None else torch.Generator(images.device).manual_seed(self.seed)
        like = {"generator": generator, "device": images.device, "dtype": images.dtype}
        if self.norm == "linf":
            noise = self.eps * (2 * torch.rand(images.shape, **like) - 1)  # (N, C, H, W)
        else:  # a Gaussian direction, radius eps * U^(1/D): uniform in the ball's volume
            radius = self.eps * torch.rand(len(images), **like) ** (1 / images[0].numel())  # (N,)
            noise = _unit_l2(torch.randn(images.shape, **like)) * radius.view(-1, 1, 1, 1)
        return (images + noise).clamp(0, 1)

    def step(self, adv_images: Tensor, grad: Tensor) -> Tensor:
        """Steepest ascent for the norm: L-inf x + alpha * sign(g); L2 x + alpha * g / ||g||_2 per example.

        Like sign(), the L2 step is a full step however tiny g is, and no step where g is exactly 0.
        """
        if self.norm == "linf":
            return adv_images + self.alpha * grad.sign()
        return adv_images + self.alpha * _unit_l2(grad)

    def project(self, adv_images: Tensor, images: Tensor) -> Tensor:
        """Onto {x' : ||x' - x|| <= eps}, then [0, 1]: L-inf clips each pixel; L2 rescales d to eps if longer.

        Clipping to [0, 1] after the L2 rescale only shortens d, so the result stays in the ball.
        """
        if self.norm == "linf":
            return _project_linf(adv_images, images, self.eps)
        delta = adv_images - images
        delta = delta * (self.eps / (_per_example_norm(delta) + 1e-12)).clamp(max=1)
        return (images + delta).clamp(0, 1)

    def forward(self, images: Tensor, labels: Tensor) -> Tensor:
        adv_images = self.start(images)
        for _ in range(self.steps):
            grad = loss_gradient(self.model, adv_images, labels, self.loss, self.targeted)  # (N, C, H, W)
            adv_images = self.project(self.step(adv_images, grad), images)
        return adv_images


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


class DeepFool(Attack):
    """DeepFool (multi-class, L2, untargeted): step to the nearest linearised decision boundary until fooled.

    At x_t, for each class k != y: f_k = Z_k - Z_y, w_k = grad Z_k - grad Z_y; the closest boundary
    l = argmin_k |f_k| / ||w_k||_2 gives r_t = (|f_l| / ||w_l|| + 1e-4) * w_l / ||w_l||. Then
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
