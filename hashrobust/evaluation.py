"""Scoring attacks, in one place: every metric this package reports, its definition and its uncertainty.

Two rates answer two different questions, and every table says which one it shows:

- **success rate** (the paper's; Liu et al. ASP-DAC 2018, abstract, as the
  authors' cleverhans-based code computes it): the fraction of inputs whose predicted label
  changes, for an attack aimed at the model's own clean prediction. It needs no
  labels and counts inputs that were misclassified to begin with. For JSMA it
  is the fraction of (image, target) pairs that reach the target.
- **robust accuracy** (the field's standard, as RobustBench and AutoAttack
  define it; Croce & Hein 2020; Carlini et al. 2019, Sec. 5): the fraction of
  inputs classified correctly clean AND still correctly after an attack run
  against the TRUE label. It is never above clean accuracy. Under several
  attacks it is the worst case per example: an input counts only if no attack
  of the ensemble breaks it (`robust_accuracy`).

An attack here is deterministic per example (summed losses, per-example
randomness; see attacks/base.py), so crafting against the true label and
re-crafting only the inputs whose clean prediction is wrong gives both rates
from one pass. Every rate comes with a 95% Wilson score interval
(`wilson_interval`); a comparison of two models on the same images uses the
paired difference with an Agresti-Min interval and an exact McNemar test
(`paired_difference`). `sweep` returns one tidy row per cell and the
per-example outcomes, so any paired test can be recomputed from the CSV.
"""
from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Iterable, Mapping

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from ._validation import check_choice, check_number, evaluating
from .attacks import APGD, APGDT, JSMA, Attack, Square
from .data import ImageDataset
from .train import predict

__all__ = ["success_rate", "robust_accuracy", "attack_outcomes", "jsma_success", "transfer", "sweep",
           "summarize", "ensemble_attacks", "wilson_interval", "paired_difference", "verdict", "ENSEMBLES",
           "AttackFactory",
           "pack_outcomes", "unpack_outcomes"]

AttackFactory = Callable[[nn.Module, float], Attack]  # (model, eps) -> attack
CONFIDENCE = 0.95


# ----------------------------------------------------------------------------- uncertainty
def wilson_interval(successes: int, n: int, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """The Wilson score interval of a binomial proportion successes / n (Wilson 1927).

    Unlike the normal approximation it stays inside [0, 1] and is not degenerate at 0% or 100%.

    Example:
        >>> [round(v, 4) for v in wilson_interval(0, 1000)]
        [0.0, 0.0038]
    """
    if n == 0:
        return (0.0, 1.0)
    z = statistics.NormalDist().inv_cdf(0.5 + confidence / 2)
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    # exactly p at the ends: centre - half is 0 (or 1) in exact arithmetic, a few ulps off in floats
    return (0.0 if successes == 0 else max(0.0, min(p, centre - half)),
            1.0 if successes == n else min(1.0, max(p, centre + half)))


def _mcnemar_p(only_a: int, only_b: int) -> float:
    """Exact two-sided McNemar p-value: the discordant pairs are Binomial(only_a + only_b, 1/2) under H0."""
    n, k = only_a + only_b, min(only_a, only_b)
    if n == 0:
        return 1.0
    return min(1.0, 2 * sum(math.comb(n, i) for i in range(k + 1)) / 2 ** n)


def paired_difference(a: Tensor, b: Tensor, confidence: float = CONFIDENCE) -> dict:
    """Compare two per-example outcomes on the SAME inputs (e.g. attack success on a hashed and a dense model).

    The difference mean(a) - mean(b) with the Agresti-Min (2005) interval for paired proportions (a
    Wald interval after adding 1/2 to each cell of the 2 x 2 table), and the exact McNemar test. A
    paired test is far more sensitive than comparing two independent intervals: inputs on which both
    models agree carry no information about the difference.

    Args:
        a, b: boolean (or 0/1) tensors of the same length N, one outcome per input.

    Returns:
        {"n", "difference", "low", "high", "p_value", "only_a", "only_b"}.

    Example:
        >>> row = paired_difference(torch.tensor([1, 1, 1, 0] * 50), torch.tensor([1, 0, 0, 0] * 50))
        >>> row["difference"], row["low"] > 0, row["p_value"] < 1e-6
        (0.5, True, True)
    """
    a, b = torch.as_tensor(a).bool().flatten(), torch.as_tensor(b).bool().flatten()
    if a.shape != b.shape or len(a) == 0:
        raise ValueError(f"The outcomes of paired_difference must be two non-empty vectors of one length. "
                         f"Got lengths {len(a)} and {len(b)} instead.")
    n = len(a)
    only_a, only_b = int((a & ~b).sum()), int((~a & b).sum())
    z = statistics.NormalDist().inv_cdf(0.5 + confidence / 2)
    n_adj, a_adj, b_adj = n + 2, only_a + 0.5, only_b + 0.5
    diff_adj = (a_adj - b_adj) / n_adj
    se = math.sqrt(max(0.0, (a_adj + b_adj) - (a_adj - b_adj) ** 2 / n_adj)) / n_adj
    return {"n": n, "difference": (only_a - only_b) / n, "low": max(-1.0, diff_adj - z * se),
            "high": min(1.0, diff_adj + z * se), "p_value": _mcnemar_p(only_a, only_b),
            "only_a": only_a, "only_b": only_b}


def verdict(comparison: dict, more: str = "more vulnerable than", less: str = "less vulnerable than") -> str:
    """Words for a `paired_difference`: `more` or `less` only when its interval excludes 0.

    Example:
        >>> verdict({"n": 1000, "difference": 0.004, "low": -0.003, "high": 0.011})
        'no detectable difference at n = 1000'
    """
    if comparison["low"] > 0:
        return more
    if comparison["high"] < 0:
        return less
    return f"no detectable difference at n = {comparison['n']}"


def _rate(mask: Tensor, name: str) -> dict:
    """{name, name_low, name_high} for a boolean mask: the rate and its Wilson interval."""
    k, n = int(mask.sum()), len(mask)
    low, high = wilson_interval(k, n)
    return {name: k / n if n else float("nan"), f"{name}_low": low, f"{name}_high": high}


def pack_outcomes(mask: Tensor) -> str:
    """A boolean vector as a compact CSV field: '0x' + hex of its bits (example 0 = the lowest bit)."""
    value = sum(1 << i for i in mask.nonzero().flatten().tolist())
    return f"0x{value:x}"


def unpack_outcomes(field: str, n: int) -> Tensor:
    """The inverse of `pack_outcomes`: (n,) bool."""
    value = int(field, 16)
    return torch.tensor([(value >> i) & 1 for i in range(n)], dtype=torch.bool)


# ----------------------------------------------------------------------------- crafting and scoring
def _source_of(attack: Attack) -> nn.Module:
    if getattr(attack, "targeted", False):
        raise ValueError(f"{type(attack).__name__} with targeted=True cannot be scored as an untargeted attack; "
                         "build it with targeted=False (or use jsma_success for JSMA).")
    return attack.model


def _wraps(outer: nn.Module, inner: nn.Module) -> bool:
    """Whether `outer` is `inner` or a wrapper of it (a chain of `.model` attributes, e.g. Temperature, EOT)."""
    while outer is not None:
        if outer is inner:
            return True
        outer = getattr(outer, "model", None)
    return False


def _craft(attack: Attack, images: Tensor, labels: Tensor, batch_size: int) -> Tensor:
    return torch.cat([attack(images[i:i + batch_size], labels[i:i + batch_size])
                      for i in range(0, len(images), batch_size)]) if len(images) else images.clone()


def _adversarials(attack: Attack, images: Tensor, labels: Tensor | None, batch_size: int) -> dict:
    """Craft once for every target model: against the true labels, and against the source's own prediction.

    With labels the attack runs against them (robust accuracy's definition); the inputs whose clean
    prediction on `attack.model` is wrong are crafted again against that prediction (the paper's
    success rate). For every other input the two coincide, since an attack is deterministic per example.
    The source and its clean prediction are kept, so a white-box score does not predict them again.
    """
    source = _source_of(attack)
    source_pred = predict(source, images)
    if labels is None:
        return {"paper": _craft(attack, images, source_pred, batch_size), "true": None,
                "source": source, "source_pred": source_pred}
    true = _craft(attack, images, labels.cpu(), batch_size)  # (N, C, H, W)
    paper = true.clone()
    wrong = (source_pred != labels.cpu()).nonzero().flatten()
    if len(wrong):
        paper[wrong] = _craft(attack, images[wrong], source_pred[wrong], batch_size)
    return {"paper": paper, "true": true, "source": source, "source_pred": source_pred}


def _outcomes(target_model: nn.Module, images: Tensor, labels: Tensor | None, adversarials: dict) -> dict:
    white_box = target_model is adversarials["source"]
    clean_pred = adversarials["source_pred"] if white_box else predict(target_model, images)
    adv_pred = predict(target_model, adversarials["paper"])
    outcomes = {"clean_pred": clean_pred, "adv_pred": adv_pred, "success": adv_pred != clean_pred}
    if labels is not None:
        labels = labels.cpu()
        correct = clean_pred == labels
        outcomes.update(correct=correct, robust=correct & (predict(target_model, adversarials["true"]) == labels))
    return outcomes


def attack_outcomes(target_model: nn.Module, attack: Attack, images: Tensor, labels: Tensor | None = None,
                    batch_size: int = 500) -> dict:
    """Per-example outcomes of an untargeted attack crafted on `attack.model`, scored on `target_model`.

    Returns:
        {"clean_pred", "adv_pred" (N,) int64: `target_model`'s predictions, clean and on the images
        crafted against the source's own prediction; "success" (N,) bool, prediction changed (the
        paper's); and with labels "correct" (N,) bool, correct clean, and "robust" (N,) bool, correct
        clean and after the attack against the true label (the standard robust accuracy)}.
    """
    return _outcomes(target_model, images, labels, _adversarials(attack, images, labels, batch_size))


def summarize(outcomes: dict) -> dict:
    """The row of rates of `success_rate` (with Wilson intervals) from the per-example `attack_outcomes`."""
    row = {"n": len(outcomes["success"]), **_rate(outcomes["success"], "success")}
    if "robust" in outcomes:
        correct, robust = outcomes["correct"], outcomes["robust"]
        row.update(_rate(robust, "robust_acc"), **_rate(correct, "clean_acc"))
        row["fooling"] = 1 - robust.sum().item() / correct.sum().item() if correct.any() else float("nan")
    else:
        row.update({k: None for k in ("robust_acc", "robust_acc_low", "robust_acc_high", "clean_acc",
                                      "clean_acc_low", "clean_acc_high", "fooling")})
    return row


def success_rate(model: nn.Module, attack: Attack, images: Tensor, labels: Tensor | None = None,
                 batch_size: int = 500) -> dict:
    """Score an untargeted attack on `model`: the paper's success rate and, with labels, robust accuracy.

    Paper: Liu et al. abstract (success rate, as the authors' code computes it); robust
    accuracy as RobustBench / AutoAttack define it (Croce & Hein 2020); module docstring for both definitions.

    Args:
        model: the model under attack. The attack must be built on it or on a wrapper of it (a chain
            of `.model` attributes, e.g. `adaptive.Temperature(model, 1000)` or `defenses.EOT`).
        attack: e.g. FGSM(model, eps=0.3), untargeted.
        images: (N, C, H, W) in [0, 1].
        labels: true labels (N,), or None to report `success` only.

    Returns:
        {"n", "success", "success_low", "success_high", "robust_acc", "robust_acc_low",
        "robust_acc_high", "clean_acc", "clean_acc_low", "clean_acc_high", "fooling"}: success =
        fraction of predictions that change; robust_acc = fraction correct clean and after the attack
        (<= clean_acc); fooling = 1 - robust_acc / clean_acc; `*_low`, `*_high`: the 95% Wilson interval.
        Without labels the robust and clean entries are None.

    Example:
        >>> from hashrobust.attacks import FGSM
        >>> model, test = load_pretrained("mnist", "mlp3"), load_dataset("mnist").subset(100)
        >>> row = success_rate(model, FGSM(model, eps=0.3), test.images, test.labels)
        >>> row["success"] > 0.8, row["robust_acc"] <= row["clean_acc"]
        (True, True)

    Used in: notebooks/02_adversarial_examples.ipynb.
    """
    if not _wraps(_source_of(attack), model):
        raise ValueError("The 'attack' passed to success_rate was built on another model; "
                         "use transfer(source_model, target_model, attack, images) for transferred examples.")
    return summarize(attack_outcomes(model, attack, images, labels, batch_size))


def transfer(source_model: nn.Module, target_model: nn.Module, attack: Attack, images: Tensor,
             labels: Tensor | None = None, batch_size: int = 500) -> dict:
    """Craft adversarial images on `source_model`, score them on `target_model` (a black-box attacker).

    Paper: Liu et al. abstract (attacks on compressed models); reconstructed protocol, docs/protocol.md §3:
    dense -> compressed models an attacker who knows only the software model; compressed -> dense, one
    who attacks the deployed device.

    Returns:
        The rates of `success_rate`, measured on the target model.
    """
    if not _wraps(_source_of(attack), source_model):
        raise ValueError("The 'attack' passed to transfer must be built on source_model.")
    return summarize(attack_outcomes(target_model, attack, images, labels, batch_size))


def jsma_success(model: nn.Module, attack: JSMA, images: Tensor, labels: Tensor, batch_size: int = 90) -> dict:
    """JSMA success over every (image, target) pair with target != true label.

    The images go where `attack.model` is; the labels may be on any device (pairs are scored on the CPU).
    `model` runs in eval mode and is handed back as found: each submodule's mode, BatchNorm statistics.

    Paper: Papernot et al. 2016 (JSMA); Liu et al., the authors' code (10 images x 9 targets).

    Returns:
        {"n": pairs, "success": fraction of pairs whose prediction is the target, with its Wilson
         interval ("success_low", "success_high"), "changed_pixels": mean fraction of input features changed}.
    """
    labels = labels.cpu()
    with torch.no_grad(), evaluating(model):  # in train mode this one forward would update BatchNorm statistics
        classes = torch.arange(model(images[:1].to(next(model.parameters()).device)).shape[1])
    pairs_images, targets = [], []
    for image, label in zip(images, labels):
        others = classes[classes != label]
        pairs_images.append(image.expand(len(others), *image.shape))
        targets.append(others)
    pairs_images, targets = torch.cat(pairs_images), torch.cat(targets)
    adv_images = _craft(attack, pairs_images, targets, batch_size)
    reached = predict(model, adv_images) == targets
    changed = (adv_images != pairs_images).flatten(1).float().mean(1)
    return {"n": len(targets), **_rate(reached, "success"), "changed_pixels": changed.mean().item()}


# ----------------------------------------------------------------------------- the ensemble
ENSEMBLES = {
    # AutoAttack's "standard" version (Croce & Hein 2020): APGD-CE 100 steps, APGD-T on 9 target classes
    # x 100 steps, Square 5000 queries. FAB-T, AutoAttack's fourth attack, is not implemented here.
    "standard": {"apgd_steps": 100, "targets": 9, "square_queries": 5000},
    # the course's budget: the same attacks, a fifth of the work, for notebooks and CI
    "course": {"apgd_steps": 50, "targets": 3, "square_queries": 1000},
}


def ensemble_attacks(model: nn.Module, eps: float, norm: str = "linf", preset: str = "standard",
                     seed: int = 0) -> list[tuple[str, Attack]]:
    """The ensemble's attacks on `model`, in AutoAttack's order: APGD-CE, APGD-T (DLR), Square (L-inf only)."""
    budget = ENSEMBLES[check_choice(preset, "preset", ENSEMBLES)]
    check_choice(norm, "norm", ("linf", "l2"))
    attacks = [("APGD-CE", APGD(model, eps=eps, norm=norm, steps=budget["apgd_steps"], loss="ce", seed=seed)),
               ("APGD-T (DLR)", APGDT(model, eps=eps, norm=norm, steps=budget["apgd_steps"],
                                      n_target_classes=budget["targets"], seed=seed))]
    if norm == "linf":
        attacks.append(("Square", Square(model, eps=eps, queries=budget["square_queries"], seed=seed)))
    return attacks


def robust_accuracy(model: nn.Module, images: Tensor, labels: Tensor, eps: float, norm: str = "linf",
                    preset: str = "standard", attacks: list[tuple[str, Attack]] | None = None, seed: int = 0,
                    batch_size: int = 500, known: Tensor | None = None) -> dict:
    """Robust accuracy under an AutoAttack-grade ensemble: the worst case per example over every attack.

    Paper: Croce & Hein, "Reliable evaluation of adversarial robustness with an ensemble of diverse
    parameter-free attacks", ICML 2020 (AutoAttack): an input counts as robust only if it is classified
    correctly clean and no attack of the ensemble, run against its true label, changes that. Each
    attack runs only on the inputs still robust after the previous ones (the result is the same, since
    every attack here is deterministic per example; the time is not).

    Presets (`ENSEMBLES`): "standard" = APGD-CE 100 steps, APGD-T with the DLR loss on 9 targets x 100
    steps, Square 5000 queries; "course" = 50 steps, 3 targets, 1000 queries. Square is L-inf only.

    Args:
        model: the model to evaluate (deterministic, or randomised: then attack it through
            `attacks` built on `defenses.EOT(model, draws)` and each input is scored on one draw).
        images, labels: (N, C, H, W) in [0, 1] and the true labels (N,).
        eps: radius in pixel units (L-inf in [0, 1], or L2).
        norm: "linf" or "l2".
        preset: "standard" or "course"; ignored when `attacks` is given.
        attacks: [(name, attack)] to use instead of the preset: built on `model`, on a wrapper of it
            (Temperature, EOT) or, for a transfer attack, on another model; always scored on `model`.
        seed: seed of the attacks' random starts and searches.
        known: (N,) bool, which inputs attacks run before left robust (e.g. a row of the same study,
            `unpack_outcomes`): only those are attacked, and the result is the worst case over all of them.

    Returns:
        {"n", "clean_acc", "clean_acc_low", "clean_acc_high", "robust_acc", "robust_acc_low",
        "robust_acc_high", "robust": (N,) bool per example, "per_attack": [{"attack", "broken" (inputs
        it broke that earlier attacks left), "robust_acc" (after it, cumulative), "seconds"}]}.

    Example:
        >>> model, test = load_pretrained("mnist", "mlp3"), load_dataset("mnist").subset(20)
        >>> result = robust_accuracy(model, test.images, test.labels, eps=0.3, preset="course")
        >>> result["robust_acc"] <= min(step["robust_acc"] for step in result["per_attack"]) <= result["clean_acc"]
        True

    Used in: notebooks/06_adaptive_attacks.ipynb.
    """
    labels = labels.cpu()
    if attacks is None:
        attacks = ensemble_attacks(model, check_number(eps, "eps", "robust_accuracy", low=0), norm, preset, seed)
    correct = predict(model, images) == labels
    if known is not None and not (torch.is_tensor(known) and known.dtype == torch.bool
                                  and tuple(known.shape) == (len(labels),)):
        raise ValueError(f"The 'known' parameter of robust_accuracy must be a bool tensor of shape ({len(labels)},) "
                         f"or None. Got {known.dtype if torch.is_tensor(known) else type(known).__name__} "
                         f"{tuple(known.shape) if torch.is_tensor(known) else ''} instead.")
    robust = correct.clone() if known is None else correct & known.cpu()
    per_attack = []
    for name, attack in attacks:
        _source_of(attack)  # untargeted only
        start = time.perf_counter()
        rows = robust.nonzero().flatten()
        adv_images = _craft(attack, images[rows], labels[rows], batch_size)
        broken = rows[predict(model, adv_images) != labels[rows]] if len(rows) else rows
        robust[broken] = False
        per_attack.append({"attack": name, "broken": len(broken), "robust_acc": robust.float().mean().item(),
                           "seconds": time.perf_counter() - start})
    return {"n": len(labels), **_rate(correct, "clean_acc"), **_rate(robust, "robust_acc"),
            "robust": robust, "per_attack": per_attack}


# ----------------------------------------------------------------------------- sweeps
def sweep(models: Mapping[tuple[str, float], nn.Module], attacks: Mapping[str, AttackFactory],
          eps_values: Iterable[float], data: ImageDataset, twin_ratio: float | None = None,
          batch_size: int = 500) -> list[dict]:
    """Attack every model with every attack at every eps; one tidy row per cell.

    Paper: Liu et al. abstract ("multi-factor adversarial attack"); the grid is the reconstructed protocol,
    docs/protocol.md §7 (compression ratio x perturbation size).

    Args:
        models: {(arch, ratio): model}, e.g. the zoo's mlp3 at ratios 1..64.
        attacks: {name: factory(model, eps) -> attack}, e.g. {"FGSM": lambda m, e: FGSM(m, eps=e)}.
        eps_values: L-inf radii in pixel units.
        data: the images and true labels to attack (e.g. test.subset(1000)).
        twin_ratio: if given (e.g. 1), also score transfer: each model's
            adversarial images on its twin (same arch) at this ratio (hashed ->
            dense), and the twin's on every other ratio of its arch (dense ->
            hashed); those rows have mode "transfer" and ratio != source_ratio.

    Returns:
        Rows with keys dataset, variant, arch, ratio, source_ratio, mode ("white-box" or "transfer"),
        attack, eps, the rates of `success_rate` with their intervals, "success_examples" (the
        per-example success, `pack_outcomes`), and seconds.
    """
    eps_values = list(eps_values)
    rows = []
    cells = len(models) * len(attacks) * len(eps_values)
    with tqdm(total=cells, desc="sweep", unit="cell") as bar:
        for (arch, ratio), model in models.items():
            if twin_ratio is None:
                targets = [(ratio, model)]
            elif ratio == twin_ratio:
                targets = [(ratio, model)] + [(r, m) for (a, r), m in models.items() if a == arch and r != ratio]
            else:
                targets = [(ratio, model), (twin_ratio, models[(arch, twin_ratio)])]
            for name, make in attacks.items():
                for eps in eps_values:
                    start = time.perf_counter()
                    adversarials = _adversarials(make(model, eps), data.images, data.labels, batch_size)
                    seconds = time.perf_counter() - start
                    base = {"dataset": data.name, "variant": data.variant, "arch": arch, "attack": name, "eps": eps}
                    for target_ratio, target in targets:
                        outcomes = _outcomes(target, data.images, data.labels, adversarials)
                        rows.append({**base, "ratio": target_ratio, "source_ratio": ratio,
                                     "mode": "white-box" if target is model else "transfer", **summarize(outcomes),
                                     "success_examples": pack_outcomes(outcomes["success"]), "seconds": seconds})
                    bar.update()
    return rows
