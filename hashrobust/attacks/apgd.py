"""APGD and APGD-T: Croce & Hein, "Reliable evaluation of adversarial robustness with an ensemble of diverse
parameter-free attacks", ICML 2020 (arXiv:2003.01690), the gradient attacks of AutoAttack.

APGD is PGD without a step size to tune: it starts at 2 * eps, adds momentum, and halves the step at
checkpoints where progress stalled, restarting from the best point found. APGD-T runs it with a targeted
DLR loss towards each of the most likely other classes. The schedule and the bookkeeping follow the
authors' reference code (fra31/auto-attack, autopgd_base.py, and torchattacks' port of it); where the
reference and the paper differ, the comments say which one is followed.

Everything is per example: each example ascends its own loss (the SUM over the batch is differentiated),
has its own step size and checkpoint conditions, and draws its random start from its own pixels and the
seed (`example_keys`), so an adversarial image does not depend on the batch it was computed in.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._validation import check_choice, check_number
from .base import (Attack, _per_example_norm, _project_linf, _unit_l2, example_keys, example_normal,
                   example_uniform, logit_margin)

MOMENTUM = 0.75  # alpha of Algorithm 1: weight of the new step against the last one (none on the first)


# ----------------------------------------------------------------------------- losses and schedule
def dlr_loss(logits: Tensor, labels: Tensor) -> Tensor:
    """Difference of Logits Ratio, per example, (N, K) -> (N,): -(z_y - max_{i != y} z_i) / (z_pi1 - z_pi3).

    pi sorts the logits in decreasing order. > 0 iff misclassified. Shifting or scaling the logits does
    not change it, so unlike cross-entropy it cannot be saturated away (Paper: Croce & Hein ICML 2020, Sec. 4).
    """
    top = logits.topk(3, dim=1).values  # (N, 3)
    return logit_margin(logits, labels) / (top[:, 0] - top[:, 2] + 1e-12)


def targeted_dlr_loss(logits: Tensor, labels: Tensor, target_labels: Tensor) -> Tensor:
    """Targeted DLR per example, (N, K) -> (N,): -(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4) / 2) (Croce & Hein Sec. 4)."""
    top = logits.topk(4, dim=1).values  # (N, 4)
    margin = logits.gather(1, target_labels[:, None]) - logits.gather(1, labels[:, None])  # (N, 1)
    return margin.squeeze(1) / (top[:, 0] - (top[:, 2] + top[:, 3]) / 2 + 1e-12)


def ce_losses(logits: Tensor, labels: Tensor) -> Tensor:
    """Cross-entropy of the softmax per example, (N, K) -> (N,)."""
    return F.cross_entropy(logits, labels, reduction="none")


def checkpoints(steps: int) -> list[int]:
    """The iterations w_1 < w_2 < ... (counted in steps taken) after which the step size may halve.

    Paper: p_0 = 0, p_1 = 0.22, p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06), w_j = p_j * steps;
    as in the reference code each interval is rounded down on its own (0.22, 0.03 and 0.06 of steps, >= 1).
    For 100 steps: 22, 41, 57, 70, 80, 87, 93, 99.
    """
    first, shrink, least = (max(int(p * steps), 1) for p in (0.22, 0.03, 0.06))
    marks, length = [first], first
    while marks[-1] + max(length - shrink, least) <= steps:
        length = max(length - shrink, least)
        marks.append(marks[-1] + length)
    return marks


# ----------------------------------------------------------------------------- one run of Algorithm 1
def random_start(images: Tensor, keys, stream: int, eps: float, norm: str) -> Tensor:
    """x_0 as in the reference: L-inf uniform noise rescaled so its largest entry is eps; L2 a Gaussian
    direction of length eps (on the sphere). Added to the images and clipped to [0, 1]."""
    like = {"device": images.device, "dtype": images.dtype}
    if norm == "linf":
        noise = 2 * example_uniform(keys, images.shape[1:], stream, **like) - 1  # (N, C, H, W)
        noise = noise / noise.flatten(1).abs().amax(1).view(-1, 1, 1, 1)
    else:
        noise = _unit_l2(example_normal(keys, images.shape[1:], stream, **like))
    return (images + eps * noise).clamp(0, 1)


def project(adv_images: Tensor, images: Tensor, eps: float, norm: str) -> Tensor:
    """Onto the eps-ball around the images (L-inf: clip each pixel; L2: shorten d to eps), then [0, 1]."""
    if norm == "linf":
        return _project_linf(adv_images, images, eps)
    delta = adv_images - images
    delta = delta * (eps / (_per_example_norm(delta) + 1e-12)).clamp(max=1)
    return (images + delta).clamp(0, 1)


def apgd_run(model: nn.Module, images: Tensor, labels: Tensor, loss_fn, start: Tensor, eps: float, norm: str,
             steps: int, rho: float, stop_when_fooled: bool = True) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """One run of APGD (Paper: Algorithm 1) from `start`, every example on its own.

    loss_fn(logits (M, K), rows (M,)) -> (M,): the loss to maximise of the examples `rows` of the batch
    (index the labels with rows). Returns (best_images, best_loss, adv_images, fooled), (N, ...): the
    point of highest loss and its loss, an iterate the model misclassified (`start` where none was) and
    whether there was one.

    stop_when_fooled: an example leaves the run at its first misclassified iterate, which is then its
    adv_image. Whether an example is ever fooled, so robust accuracy, is the same either way, at a
    fraction of the passes when most examples fall early. False runs every example for every step and
    returns the LAST misclassified iterate, as the reference does: with loss_fn = ce_losses and
    torchattacks' random start it then retraces torchattacks' APGD step by step (tests/test_apgd.py).
    """
    def loss_and_grad(x: Tensor, rows: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        with torch.enable_grad():
            x = x.detach().requires_grad_(True)
            logits = model(x)  # (M, K)
            loss = loss_fn(logits, rows)  # (M,)
            (grad,) = torch.autograd.grad(loss.sum(), x)  # the sum: each example's gradient is its own
        return loss.detach(), grad, logits.detach().argmax(1) != labels[rows]

    def where(mask: Tensor, a: Tensor, b: Tensor) -> Tensor:  # per example: a where mask (M,), else b
        return torch.where(mask.view(-1, *[1] * (a.dim() - 1)), a, b)

    rows = torch.arange(len(images), device=images.device)  # (M,) the examples still running
    x = x_old = start
    x0 = images
    loss, grad, fooled = loss_and_grad(x, rows)  # (M,), (M, C, H, W), (M,)
    best_images, best_loss, best_grad, adv_images = x, loss, grad, x
    out = [start.clone(), loss.clone(), start.clone(), fooled.clone()]  # (N, ...): what is returned

    def finish(done: Tensor) -> None:  # write the examples `done` (M,) of the run into `out`
        for tensor, value in zip(out, (best_images, best_loss, adv_images, fooled)):
            tensor[rows[done]] = value[done]

    step_size = torch.full((len(images), 1, 1, 1), 2.0 * eps, device=images.device, dtype=images.dtype)
    marks = set(checkpoints(steps))
    # since the last checkpoint, how many steps raised the loss, f(x_{t+1}) > f(x_t); the first step is compared
    # with f(x_0) as in the paper (the reference compares it with 0, an unfilled row of its loss history)
    last_mark, increases = 0, torch.zeros_like(loss)
    best_at_mark, halved_at_mark = best_loss, torch.ones_like(fooled)  # reference: no condition 2 at w_1
    for t in range(steps):
        if stop_when_fooled and fooled.any():
            finish(fooled)
            going = ~fooled
            (rows, x0, x, x_old, grad, loss, fooled, best_images, best_loss, best_grad, adv_images, step_size,
             increases, best_at_mark, halved_at_mark) = (
                v[going] for v in (rows, x0, x, x_old, grad, loss, fooled, best_images, best_loss, best_grad,
                                   adv_images, step_size, increases, best_at_mark, halved_at_mark))
            if len(rows) == 0:
                return tuple(out)
        direction = grad.sign() if norm == "linf" else _unit_l2(grad)  # steepest ascent for the norm
        z = project(x + step_size * direction, x0, eps, norm)  # z: the plain PGD step, then momentum
        a = 1.0 if t == 0 else MOMENTUM
        x, x_old = project(x + a * (z - x) + (1 - a) * (x - x_old), x0, eps, norm), x
        new_loss, grad, wrong = loss_and_grad(x, rows)
        increases, loss = increases + (new_loss > loss), new_loss
        fooled, adv_images = fooled | wrong, where(wrong, x, adv_images)
        better = loss > best_loss  # (M,)
        best_images, best_grad = where(better, x, best_images), where(better, grad, best_grad)
        best_loss = torch.maximum(loss, best_loss)
        if t + 1 in marks:
            # condition 1: at most rho of the steps since the last checkpoint raised the loss (the reference
            # counts with <=, the paper with <); condition 2: step not halved and best loss not raised since.
            stalled = increases <= rho * (t + 1 - last_mark)
            halve = stalled | (~halved_at_mark & (best_loss <= best_at_mark))
            step_size = where(halve, step_size / 2, step_size)
            x, grad = where(halve, best_images, x), where(halve, best_grad, grad)  # restart from the best point
            last_mark, increases, best_at_mark, halved_at_mark = t + 1, torch.zeros_like(loss), best_loss, halve
    finish(torch.ones_like(fooled))
    return tuple(out)


def best_of_runs(attack: APGD | APGDT, images: Tensor, labels: Tensor, logits: Tensor, runs: list,
                 loss_fn) -> Tensor:
    """APGD runs on the examples still classified correctly; per example the first misclassified image found.

    runs: (stream, target_labels (N,) or None) per run, in order; loss_fn(logits, labels, target_labels) -> (N,).
    An example the model misclassifies clean is returned as it is; one never misclassified gets the point
    of highest loss over all its runs. The seed and the stream give each run its own random starts.
    """
    keys = example_keys(images, attack.seed)
    fooled = logits.argmax(1) != labels  # (N,)
    adv_images, best_loss = images.clone(), torch.full_like(fooled, float("-inf"), dtype=images.dtype)
    for stream, target_labels in runs:
        rows = (~fooled).nonzero().squeeze(1)  # (M,) the examples still classified correctly
        if len(rows) == 0:
            break
        x, y = images[rows], labels[rows]
        t = None if target_labels is None else target_labels[rows]
        start = random_start(x, keys[rows.cpu().numpy()], stream, attack.eps, attack.norm)

        def losses(logits: Tensor, running: Tensor) -> Tensor:  # running: rows of x still in the run
            return loss_fn(logits, y[running], None if t is None else t[running])

        best, loss, adv, wrong = apgd_run(attack.model, x, y, losses, start, attack.eps, attack.norm, attack.steps,
                                          attack.rho)
        keep = torch.where(wrong, True, loss > best_loss[rows]).view(-1, 1, 1, 1)  # fooled, or a higher loss
        adv_images[rows] = torch.where(keep, torch.where(wrong.view(-1, 1, 1, 1), adv, best), adv_images[rows])
        best_loss[rows], fooled[rows] = torch.maximum(loss, best_loss[rows]), wrong
    return adv_images


def _check_args(attack: Attack, name: str, eps: float, norm: str, steps: int, restarts: int, rho: float,
                seed: int) -> None:
    """Validate and store the arguments APGD and APGDT share."""
    attack.norm = check_choice(norm, "norm", ("linf", "l2"))
    attack.eps = check_number(eps, "eps", name, low=0, high=1 if norm == "linf" else None)
    attack.steps = check_number(steps, "steps", name, low=1, integer=True)
    attack.restarts = check_number(restarts, "restarts", name, low=1, integer=True)
    attack.rho = check_number(rho, "rho", name, low=0, high=1)
    attack.seed = check_number(seed, "seed", name, low=0, integer=True)


def _check_classes(name: str, k: int, least: int, why: str) -> None:
    if k < least:
        raise ValueError(f"{name} needs a model with at least {least} classes ({why}). Got {k} classes instead.")


# ----------------------------------------------------------------------------- the attacks
class APGD(Attack):
    """Auto-PGD (untargeted): PGD with momentum whose step size, starting at 2 * eps, halves when progress stalls.

    From a random start, each step is x <- P(x + 0.75 (P(x + eta * step(grad)) - x) + 0.25 (x - x_prev)).
    At checkpoints (22%, 41%, 57%, ... of the steps) an example's eta halves, and it goes back to its best
    point, if at most rho of the steps since the last checkpoint raised its loss, or if its eta and its best
    loss both stayed the same. Each restart attacks only the examples not yet misclassified, and an example
    leaves a run at its first misclassified iterate (the reference runs it on; whether it is fooled is the
    same, the passes are fewer). Returns per example that iterate, from the first run that found one; else
    the point of highest loss over all runs; the clean image where the model already misclassifies it.

    Paper: Croce & Hein ICML 2020, Sec. 3 and Algorithm 1 (APGD), Sec. 4 (DLR loss).

    Args:
        model: any classifier taking images in [0, 1] and returning logits (N, K).
        eps: radius in pixel units: L-inf in [0, 1]; L2 >= 0 (sqrt(D) is the whole image box).
        norm: "linf" or "l2".
        steps: iterations per run, >= 1 (the paper uses 100).
        loss: "ce" (cross-entropy of the softmax) or "dlr" (Difference of Logits Ratio, `dlr_loss`: invariant
            to the scale of the logits, so a saturated softmax does not mask its gradient); needs K >= 3.
        restarts: runs from fresh random starts, >= 1.
        rho: condition 1's threshold on the fraction of steps that raised the loss, [0, 1].
        seed: seed of the random starts, an integer >= 0; each example draws from its own pixels and the seed.

    Shape: images (N, C, H, W) in [0, 1], labels (N,) int64 or None -> adv_images (N, C, H, W).

    Example:
        >>> from hashrobust.attacks import APGD
        >>> model, images = hr.load_pretrained("mnist", "mlp3", 1), hr.load_dataset("mnist").images[:8]
        >>> adv_images = APGD(model, eps=0.1, steps=10, loss="dlr")(images)
        >>> bool((adv_images - images).abs().max() <= 0.1 + 1e-6)
        True

    Used in: hashrobust.evaluation.robust_accuracy (AutoAttack's APGD-CE), notebooks/06_adaptive_attacks.ipynb.
    """

    def __init__(self, model: nn.Module, eps: float = 0.3, norm: str = "linf", steps: int = 100,
                 loss: str = "ce", restarts: int = 1, rho: float = 0.75, seed: int = 0) -> None:
        super().__init__(model)
        _check_args(self, "APGD", eps, norm, steps, restarts, rho, seed)
        self.loss = check_choice(loss, "loss", ("ce", "dlr"))

    def forward(self, images: Tensor, labels: Tensor) -> Tensor:
        with torch.no_grad():
            logits = self.model(images)  # (N, K)
        if self.loss == "dlr":
            _check_classes("APGD with loss='dlr'", logits.shape[1], 3, "the DLR loss uses the 3rd largest logit")
        loss_fn = dlr_loss if self.loss == "dlr" else ce_losses
        runs = [(restart, None) for restart in range(self.restarts)]
        return best_of_runs(self, images, labels, logits, runs, lambda logits, labels, _: loss_fn(logits, labels))


class APGDT(Attack):
    """APGD-T: APGD with the targeted DLR loss towards each of the n_target_classes most likely other classes.

    Untargeted from the user's point of view: call it with the true labels. For the target classes ranked
    2nd, 3rd, ... by the clean logits, it runs APGD ascending -(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4) / 2)
    (`targeted_dlr_loss`) on the examples still classified correctly, and keeps per example the first
    misclassified image found (AutoAttack's APGD-T); else the point of highest targeted loss over all runs.

    Paper: Croce & Hein ICML 2020, Sec. 4 (targeted DLR loss), Sec. 5 (AutoAttack: 9 target classes).

    Args:
        model: any classifier taking images in [0, 1] and returning logits (N, K), K >= 4.
        eps: radius in pixel units: L-inf in [0, 1]; L2 >= 0.
        norm: "linf" or "l2".
        steps: iterations per run, >= 1.
        n_target_classes: how many target classes to try, >= 1; all K - 1 others if K - 1 is fewer.
        restarts: runs per target class from fresh random starts, >= 1.
        rho: condition 1's threshold on the fraction of steps that raised the loss, [0, 1].
        seed: seed of the random starts, an integer >= 0.

    Shape: images (N, C, H, W) in [0, 1], labels (N,) int64 or None -> adv_images (N, C, H, W).

    Example:
        >>> from hashrobust.attacks import APGDT
        >>> model, images = hr.load_pretrained("mnist", "mlp3", 1), hr.load_dataset("mnist").images[:8]
        >>> adv_images = APGDT(model, eps=0.1, steps=10, n_target_classes=2)(images)
        >>> bool((adv_images - images).abs().max() <= 0.1 + 1e-6)
        True

    Used in: hashrobust.evaluation.robust_accuracy (AutoAttack's APGD-T), notebooks/06_adaptive_attacks.ipynb.
    """

    def __init__(self, model: nn.Module, eps: float = 0.3, norm: str = "linf", steps: int = 100,
                 n_target_classes: int = 9, restarts: int = 1, rho: float = 0.75, seed: int = 0) -> None:
        super().__init__(model)
        _check_args(self, "APGDT", eps, norm, steps, restarts, rho, seed)
        self.n_target_classes = check_number(n_target_classes, "n_target_classes", "APGDT", low=1, integer=True)

    def forward(self, images: Tensor, labels: Tensor) -> Tensor:
        with torch.no_grad():
            logits = self.model(images)  # (N, K)
        _check_classes("APGDT", logits.shape[1], 4, "the targeted DLR loss uses the 4th largest logit")
        ranked = logits.argsort(1, descending=True)  # (N, K): column 0 is the prediction, then the targets
        ranks = range(1, min(self.n_target_classes, logits.shape[1] - 1) + 1)
        runs = [((rank - 1) * self.restarts + restart, ranked[:, rank])
                for rank in ranks for restart in range(self.restarts)]
        return best_of_runs(self, images, labels, logits, runs, targeted_dlr_loss)
