"""Beyond the paper: does gradient inhibition survive an attacker who adapts to it?

GI saturates the float32 softmax, so the cross-entropy gradient vanishes and
FGSM/BIM make no step (notebook 05, "Why it works"). That is gradient
masking: it stops one way of computing an attack, not the attack. Following
Carlini et al. 2019 ("On Evaluating Adversarial Robustness") and Athalye,
Carlini & Wagner 2018, each GI model of the zoo is attacked, within the same
L-inf budget and against the TRUE labels (robust accuracy, evaluation.py), by

- the paper's cross-entropy attacks and the usual off-the-shelf defaults (PGD and APGD on cross-entropy);
- FGSM and PGD on the C&W logit margin, and on cross-entropy of logits / T (T = 1000 undoes any GI scale here);
- APGD with the DLR loss and APGD-T (Croce & Hein 2020): DLR is a ratio of logit differences, unchanged
  by any scaling of the logits;
- PGD (margin) with 5 random restarts; an eps curve up to the whole pixel range;
- transfer: PGD (margin) crafted on the undefended model, scored on the GI model;
- Square Attack, gradient-free;
- the AutoAttack-grade ensemble (`evaluation.robust_accuracy`: APGD-CE, APGD-T, Square 5000 queries), whose
  per-example worst case is the robust accuracy each model is reported with;
- JSMA-Z (the logits' Jacobian) beside JSMA-F (the softmax's), and C&W L2 (unbounded: it must reach
  ~100%, reported with its median L2 distortion);
- the authors' randomised GI (uniform U redrawn at every forward) with and without EOT.

The GI strength is the reproduction's rule (defenses.choose_strength).
"""
from __future__ import annotations

import statistics
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path

import torch
from IPython.display import Markdown
from torch import Tensor, nn
from tqdm.auto import tqdm

from ._validation import check_device
from .attacks import APGD, APGDT, CW, EOT, FGSM, JSMA, PGD, Attack, Square
from .data import load_dataset
from .defenses import GradientMaskingWarning, choose_strength, gradient_inhibition, inhibition_report
from .evaluation import (_adversarials, _outcomes, ensemble_attacks, jsma_success, pack_outcomes, robust_accuracy,
                         summarize, unpack_outcomes, wilson_interval)
from .reports import DATASET_NAMES, eps_label, percent, rounded, with_interval, write_csv
from .reports import table as rendered_table
from .reproduction import ATTACK_EPS, SELECTION, defend_by_rule
from .train import predict
from .zoo import load_pretrained

__all__ = ["Temperature", "adaptive_attacks", "evaluate_adaptive", "write_adaptive", "MODELS", "CHECKLIST",
           "OFF_THE_SHELF", "EPS_CURVE", "run_attacks", "success_by_attack", "worst_case_by_model",
           "defaults_table", "checklist_markdown", "success_markdown", "worst_case_markdown"]

MODELS = {"mnist": [("mlp3", 1), ("mlp3", 8), ("mlp3", 64), ("lenet", 1), ("lenet", 8)],
          "cifar10": [("cifar_cnn", 1), ("cifar_cnn", 8), ("cifar_cnn", 64)]}
EPS_CURVE = {"mnist": (0.1, 0.2, 0.3, 0.4, 0.6, 1.0), "cifar10": (2 / 255, 4 / 255, 8 / 255, 16 / 255, 32 / 255, 1.0)}
ENSEMBLE = "AutoAttack-grade ensemble (APGD-CE, APGD-T, Square 5000)"
RESTARTS = "PGD-40, margin, 5 restarts"
EOT_DRAWS = 10


class Temperature(nn.Module):
    """logits / T: the same predictions, an unsaturated softmax (an attacker's view of a GI model)."""

    def __init__(self, model: nn.Module, temperature: float) -> None:
        super().__init__()
        self.model, self.temperature = model, temperature

    def forward(self, images: Tensor) -> Tensor:
        return self.model(images) / self.temperature


def adaptive_attacks(eps: float, undefended: nn.Module) -> dict:
    """{name: factory(model) -> attack}, L-inf eps; the attack's own `.model` is where gradients are taken.

    In order: the paper's attack and the off-the-shelf cross-entropy defaults, then the attacks adapted
    to a saturated softmax (margin, logits / T, DLR), then transfer and the gradient-free Square.
    """
    pgd = dict(eps=eps, alpha=2.5 * eps / 40, steps=40, seed=0)
    return {
        "FGSM, CE (the paper's)": lambda m: FGSM(m, eps=eps),
        "PGD-40, CE": lambda m: PGD(m, **pgd),
        "APGD-CE, 100 steps": lambda m: APGD(m, eps=eps, steps=100, loss="ce"),
        "FGSM, margin": lambda m: FGSM(m, eps=eps, loss="margin"),
        "PGD-40, margin": lambda m: PGD(m, **pgd, loss="margin"),
        "FGSM, CE on logits/1000": lambda m: FGSM(Temperature(m, 1000.0), eps=eps),
        "PGD-40, CE on logits/1000": lambda m: PGD(Temperature(m, 1000.0), **pgd),
        "APGD-DLR, 100 steps": lambda m: APGD(m, eps=eps, steps=100, loss="dlr"),
        "APGD-T (DLR), 9 targets": lambda m: APGDT(m, eps=eps, steps=100, n_target_classes=9),
        "transfer: PGD-40 margin from the undefended model": lambda m: PGD(undefended, **pgd, loss="margin"),
        "Square, margin, 1000 queries": lambda m: Square(m, eps=eps, queries=1000, seed=0),
    }


# Against GI, what the usual defaults report next to what DLR-based attacks report (notebook 06's lesson).
OFF_THE_SHELF = ("PGD-40, CE", "APGD-CE, 100 steps", "APGD-DLR, 100 steps", "APGD-T (DLR), 9 targets", ENSEMBLE)


def run_attacks(model: nn.Module, attacks: Mapping[str, Callable[[nn.Module], Attack]], images: Tensor,
                labels: Tensor | None = None, batch_size: int = 500, crafted: dict | None = None) -> list[dict]:
    """Each attack on `model`, as `evaluate_adaptive` scores it: one row per attack, in the order given.

    An attack crafts its examples on its own `.model` (the model itself, `Temperature` of it, or the
    undefended model for a transfer attack) and they are scored on `model`, against the true labels
    for robust accuracy and against the source's own prediction for the paper's success rate.

    Args:
        model: the model under attack, e.g. a GI model.
        attacks: {name: factory(model) -> attack}, e.g. (a selection of) `adaptive_attacks(0.3, undefended)`.
        images, labels: (N, C, H, W) in [0, 1] and the true labels (N,), or None for success only.
        crafted: a dict to share between calls on the same images and labels: an attack of the same class
            and settings on the same source model is crafted once and scored on every model (the transfer
            attack of the GI model is the undefended model's own PGD). None crafts every attack.

    Returns:
        [{"attack", the rates of `evaluation.success_rate` with intervals, "robust_examples"
        (per-example robust outcome, `evaluation.pack_outcomes`; None without labels)}].

    Used in: notebooks/06_adaptive_attacks.ipynb.
    """
    rows = []
    for name, make in attacks.items():
        attack = make(model)
        key = (id(attack.model), repr(attack))  # the stored adversarials keep the source alive: ids are not reused
        if crafted is None or key not in crafted:
            adversarials = _adversarials(attack, images, labels, batch_size)
            if crafted is not None:
                crafted[key] = adversarials
        else:
            adversarials = crafted[key]
        outcomes = _outcomes(model, images, labels, adversarials)
        robust = outcomes.get("robust")
        rows.append({"attack": name, **summarize(outcomes),
                     "robust_examples": None if robust is None else pack_outcomes(robust)})
    return rows


def _restarts(model: nn.Module, eps: float, images: Tensor, labels: Tensor, seed_0: Tensor,
              restarts: int = 5) -> dict:
    """PGD-40 (margin) from `restarts` random starts (seeds 0..restarts-1), worst case per example.

    seed_0: (N,) bool, the per-example robust outcome of seed 0 ("PGD-40, margin" of `adaptive_attacks`),
    which is not run again.
    """
    attacks = [(f"seed {k}", PGD(model, eps=eps, alpha=2.5 * eps / 40, steps=40, seed=k, loss="margin"))
               for k in range(1, restarts)]
    return robust_accuracy(model, images, labels, eps, attacks=attacks, known=seed_0)


def _unbounded(m: nn.Module, test, jsma_images: int, n_cw: int) -> list[dict]:
    """JSMA-F, JSMA-Z (pairs) and C&W L2 (unbounded; median L2 of its successes): rows without robust accuracy."""
    empty = {k: None for k in ("robust_acc", "robust_acc_low", "robust_acc_high", "clean_acc", "clean_acc_low",
                               "clean_acc_high", "fooling", "robust_examples")}
    rows = []
    for jacobian, name in (("probs", "JSMA-F (softmax Jacobian)"), ("logits", "JSMA-Z (logit Jacobian)")):
        row = jsma_success(m, JSMA(m, jacobian=jacobian), test.images[:jsma_images], test.labels[:jsma_images])
        rows.append({"attack": name, "bounded": False, "n": row["n"], "success": row["success"],
                     "success_low": row["success_low"], "success_high": row["success_high"], **empty,
                     "median_l2": None})
    images = test.images[:n_cw]
    adv = CW(m)(images)
    changed = predict(m, adv) != predict(m, images)
    l2 = (adv - images).flatten(1).norm(dim=1).cpu()[changed]
    low, high = wilson_interval(int(changed.sum()), n_cw)
    rows.append({"attack": "C&W L2 (9 binary-search steps)", "bounded": False, "n": n_cw,
                 "success": changed.float().mean().item(), "success_low": low, "success_high": high, **empty,
                 "median_l2": l2.median().item() if len(l2) else None})
    return rows


def _eps_curve(dataset: str, m: nn.Module, base: dict, test, crafted: dict | None = None) -> list[dict]:
    """PGD-40 (margin) at growing eps, up to the whole pixel range: success must reach 100%.

    crafted: `run_attacks`' store, when `test` holds the images it was filled on (the study's eps is not run again).
    """
    attacks = {eps: lambda m, eps=eps: PGD(m, eps=eps, alpha=2.5 * eps / 40, steps=40, seed=0, loss="margin")
               for eps in EPS_CURVE[dataset]}
    rows = run_attacks(m, attacks, test.images, test.labels, crafted=crafted)
    return [{**base, **row, "attack": "PGD-40, margin (eps curve)", "eps": row["attack"], "bounded": True,
             "robust_examples": None, "median_l2": None} for row in rows]


def evaluate_adaptive(dataset: str, n: int = 1000, n_cw: int = 100, jsma_images: int = 10,
                      models: list[tuple[str, float]] | None = None, n_curve: int | None = None,
                      device: str | torch.device = "cpu") -> list[dict]:
    """Attack each model undefended, with GI, and with the randomised GI; one row per (model, defence, attack).

    Rows of attack "PGD-40, margin (eps curve)" carry their own eps (on the first `n_curve` images,
    default n); every other bounded row is at ATTACK_EPS[dataset]. The randomised GI ("GI, resampled":
    the uniform variant, U redrawn at every forward, strength by the same rule) is attacked by PGD-40
    (CE and margin) directly and through EOT over 10 draws.

    Args:
        dataset: "mnist" or "cifar10".
        n: the first n test images for the bounded attacks.
        n_cw: C&W L2 on the first k test images.
        jsma_images: JSMA-F and JSMA-Z on the first k test images x their 9 other classes.
        models: [(arch, ratio)] of the zoo (default MODELS[dataset]).
        n_curve: the first k test images for the eps curve (default n).
        device: torch device for the models and images, e.g. "cpu", "cuda", "cuda:1" (checked first:
            `_validation.check_device`). The rows hold plain numbers whatever the device.
    """
    device = check_device(device, "evaluate_adaptive")
    eps = ATTACK_EPS[dataset]
    test = load_dataset(dataset, "test").subset(n).to(device)
    curve_set = test if n_curve is None or n_curve >= len(test) else test.subset(n_curve)
    selection = load_dataset(dataset, "train").subset(SELECTION).to(device)
    rows = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", GradientMaskingWarning)  # expected: GI masks gradients
        for arch, ratio in tqdm(models or MODELS[dataset], desc=f"adaptive {dataset}", unit="model"):
            model = load_pretrained(dataset, arch, ratio, device=device)
            defended, strength, _ = defend_by_rule(model, selection, stop_at_target=True)
            crafted = {}  # each attack crafted once per source model: see run_attacks
            for defence, m in (("none", model), ("GI", defended)):
                base = {"dataset": dataset, "variant": test.variant, "arch": arch, "ratio": ratio,
                        "defence": defence, "gi_strength": strength if defence == "GI" else 0.0,
                        "zero_grad_fraction": inhibition_report(m, test.images)["zero_grad_fraction"]}
                bounded = run_attacks(m, adaptive_attacks(eps, model), test.images, test.labels, crafted=crafted)
                robust = {r["attack"]: unpack_outcomes(r["robust_examples"], r["n"]) for r in bounded}
                # the ensemble's first attack is the "APGD-CE, 100 steps" row: only APGD-T and Square are left to run
                ensemble = robust_accuracy(m, test.images, test.labels, eps, attacks=ensemble_attacks(m, eps)[1:],
                                           known=robust["APGD-CE, 100 steps"])
                bounded.append({"attack": ENSEMBLE, **_worst_case_row(ensemble)})
                restarts = _restarts(m, eps, test.images, test.labels, seed_0=robust["PGD-40, margin"])
                bounded.append({"attack": RESTARTS, **_worst_case_row(restarts)})
                rows += [{**base, **row, "eps": eps, "bounded": True, "median_l2": None} for row in bounded]
                rows += [{**base, **row, "eps": None} for row in _unbounded(m, test, jsma_images, n_cw)]
                rows += _eps_curve(dataset, m, base, curve_set, crafted if curve_set is test else None)
            rows += _resampled_rows(model, selection, test, eps, {"dataset": dataset, "variant": test.variant,
                                                                  "arch": arch, "ratio": ratio})
    return [{key: row[key] for key in rows[0]} for row in rows]  # one column order, as adaptive.csv stores it


def _worst_case_row(result: dict) -> dict:
    """A row from a `robust_accuracy` result (worst case over several attacks): robust accuracy, no success."""
    return {"n": result["n"], "success": None, "success_low": None, "success_high": None,
            **{k: result[k] for k in ("robust_acc", "robust_acc_low", "robust_acc_high", "clean_acc",
                                      "clean_acc_low", "clean_acc_high")},
            "fooling": 1 - result["robust_acc"] / result["clean_acc"] if result["clean_acc"] else None,
            "robust_examples": pack_outcomes(result["robust"])}


def _resampled_rows(model: nn.Module, selection, test, eps: float, base: dict) -> list[dict]:
    """The authors' randomised GI (uniform, U redrawn per forward) under PGD-40, with and without EOT."""
    strength, _ = choose_strength(model, selection.images, selection.labels, variant="uniform", stop_at_target=True)
    randomised = gradient_inhibition(model, eps=strength, variant="uniform", seed=0, resample=True)
    torch.manual_seed(0)
    pgd = dict(eps=eps, alpha=2.5 * eps / 40, steps=40, seed=0)
    attacks = {"PGD-40, CE": lambda m: PGD(m, **pgd), "PGD-40, margin": lambda m: PGD(m, **pgd, loss="margin"),
               f"PGD-40, margin, EOT over {EOT_DRAWS} draws": lambda m: PGD(EOT(m, EOT_DRAWS), **pgd, loss="margin")}
    base = {**base, "defence": "GI, resampled", "gi_strength": strength,
            "zero_grad_fraction": inhibition_report(randomised, test.images)["zero_grad_fraction"]}
    return [{**base, **row, "eps": eps, "bounded": True, "median_l2": None}
            for row in run_attacks(randomised, attacks, test.images, test.labels)]


# ----------------------------------------------------------------------------- summaries (adaptive.md, notebook 06)
# The white-box attacks built for GI's mechanism (a loss that does not saturate); the checklist averages them.
ADAPTIVE = ("FGSM, margin", "PGD-40, margin", "FGSM, CE on logits/1000", "PGD-40, CE on logits/1000",
            "APGD-DLR, 100 steps", "APGD-T (DLR), 9 targets")
CURVE = "PGD-40, margin (eps curve)"


def _at_eps(rows: list[dict]) -> list[dict]:
    """The rows of the main evaluation: every defence but the randomised one, no eps-curve rows."""
    return [r for r in rows if r["attack"] != CURVE and r["defence"] in ("none", "GI")]


def _mean(rows: list[dict], attack: str, defence: str, key: str = "success") -> float:
    return statistics.fmean(r[key] for r in rows if r["attack"] == attack and r["defence"] == defence)


def success_by_attack(rows: list[dict]) -> list[dict]:
    """Mean success (the paper's rate) of each attack over the models, undefended and with GI.

    Args:
        rows: the rows of adaptive.csv (`evaluate_adaptive`, or `reports.read_results(dataset, "adaptive")`).

    Returns:
        [{"attack", "none", "GI"}], the attacks with a success rate, in the order of the rows.

    Used in: notebooks/06_adaptive_attacks.ipynb.
    """
    rows = [r for r in _at_eps(rows) if r["success"] is not None]
    attacks = list(dict.fromkeys(r["attack"] for r in rows))
    return [{"attack": a, **{d: _mean(rows, a, d) for d in ("none", "GI")}} for a in attacks]


def defaults_table(rows: list[dict]) -> list[dict]:
    """Mean robust accuracy over the models of the OFF_THE_SHELF attacks, undefended and with GI.

    Against GI the cross-entropy defaults (PGD, APGD-CE) report a high robust accuracy because the
    gradient vanishes; the DLR-based attacks and the ensemble report about 0.

    Returns:
        [{"attack", "none", "GI"}] in OFF_THE_SHELF order.

    Used in: notebooks/06_adaptive_attacks.ipynb.
    """
    rows = _at_eps(rows)
    return [{"attack": a, **{d: _mean(rows, a, d, "robust_acc") for d in ("none", "GI")}} for a in OFF_THE_SHELF]


def _worst(rows: list[dict]) -> tuple[Tensor, int]:
    """Per-example worst case over the bounded rows that carry per-example outcomes: (robust (N,), n)."""
    carrying = [r for r in rows if r["bounded"] and r["robust_examples"] is not None]
    n = carrying[0]["n"]
    robust = torch.ones(n, dtype=torch.bool)
    for r in carrying:
        robust &= unpack_outcomes(r["robust_examples"], n)
    return robust, n


def worst_case_by_model(rows: list[dict]) -> list[dict]:
    """Per model and defence: clean accuracy, robust accuracy under the ensemble and under every attack at once.

    "ensemble" is the AutoAttack-grade ensemble's robust accuracy; "worst" the per-example worst case
    over every bounded attack of the study (the ensemble included), so worst <= ensemble. Both come
    with their 95% Wilson intervals.

    Returns:
        [{"arch", "ratio", "defence", "gi_strength", "clean_acc", "ensemble", "ensemble_low",
        "ensemble_high", "worst", "worst_low", "worst_high", "strongest" (the single attack leaving the
        lowest robust accuracy)}], models in row order, undefended then GI.

    Used in: notebooks/06_adaptive_attacks.ipynb.
    """
    rows, table = _at_eps(rows), []
    for arch, ratio in dict.fromkeys((r["arch"], r["ratio"]) for r in rows):
        for defence in ("none", "GI"):
            mine = [r for r in rows if (r["arch"], r["ratio"], r["defence"]) == (arch, ratio, defence)]
            ensemble = next(r for r in mine if r["attack"] == ENSEMBLE)
            robust, n = _worst(mine)
            low, high = wilson_interval(int(robust.sum()), n)
            single = min((r for r in mine if r["bounded"] and r["attack"] not in (ENSEMBLE, RESTARTS)),
                         key=lambda r: r["robust_acc"])
            table.append({"arch": arch, "ratio": ratio, "defence": defence, "gi_strength": ensemble["gi_strength"],
                          "clean_acc": ensemble["clean_acc"], "ensemble": ensemble["robust_acc"],
                          "ensemble_low": ensemble["robust_acc_low"], "ensemble_high": ensemble["robust_acc_high"],
                          "worst": int(robust.sum()) / n, "worst_low": low, "worst_high": high,
                          "strongest": single["attack"]})
    return table


def success_markdown(rows: list[dict]) -> Markdown:
    """`success_by_attack` as a rendered table: success per attack, undefended and GI, mean over the models.

    Used in: notebooks/06_adaptive_attacks.ipynb (MNIST and CIFAR-10).
    """
    return rendered_table(["attack (success, mean over the models)", "undefended", "GI"],
                          [[r["attack"], f"{100 * r['none']:.1f}%", f"{100 * r['GI']:.1f}%"]
                           for r in success_by_attack(rows)])


def worst_case_markdown(rows: list[dict]) -> Markdown:
    """`worst_case_by_model` as a rendered table: clean accuracy, and robust accuracy with its 95% interval
    under the ensemble and under every attack at once, per model and defence.

    Used in: notebooks/06_adaptive_attacks.ipynb (MNIST and CIFAR-10).
    """
    return rendered_table(["model", "defence", "clean", "ensemble [95% CI]", "every attack [95% CI]"],
                          [[f"{t['arch']} r{t['ratio']:g}", t["defence"], f"{100 * t['clean_acc']:.1f}%",
                            with_interval(t, "ensemble", "%"), with_interval(t, "worst", "%")]
                           for t in worst_case_by_model(rows)],
                          align="llrrr")


def _span(values: list[float]) -> str:
    low, high = percent(min(values)), percent(max(values))
    return f"{low}%" if low == high else f"{low}-{high}%"


CHECKLIST = [
    ("State a precise threat model", "L-inf, eps = {eps} in pixel units, white-box: the attacker knows the model, "
     "its hash and that GI was applied, and may query it; untargeted. Robust accuracy = correct clean and after "
     "an attack run against the true label; success = prediction changed (the paper's)."),
    ("Perform adaptive attacks", "the margin, logits/T and DLR attacks are built for GI's mechanism (a saturated "
     "softmax): averaged over the GI models they succeed {adaptive}% of the time against {paper}% for the "
     "paper's FGSM."),
    ("Check that iterative attacks beat single-step ones", "PGD-40 (margin) {pgd}% vs FGSM (margin) {fgsm}% on "
     "the GI models."),
    ("Try gradient-free and transfer attacks", "Square (gradient-free) {square}%; transfer from the undefended "
     "model {transfer}%. A defence that stops white-box gradients but not these is masking gradients."),
    ("Look for gradient masking", "{zero}% of test inputs have an exactly-zero cross-entropy input gradient "
     "under GI (undefended: {zero0}%): the textbook signature; `inhibition_report` warns about it."),
    ("Verify that unbounded attacks reach 100%", "C&W L2 succeeds on {cw0} of the inputs of the undefended "
     "models and {cw} under GI (lowest model): the attack is at full strength."),
    ("Check that success grows to 100% as eps grows", "PGD-40 (margin) at eps = {eps_max} succeeds on {curve} "
     "of the inputs of every model, undefended and GI (lowest model)."),
    ("Use random restarts", "PGD-40 (margin) leaves {one}% robust accuracy on the GI models with one start "
     "and {five}% with the worst of 5 restarts."),
    ("Apply EOT to randomised defences", "the authors' randomised GI (uniform U redrawn at every forward): "
     "PGD-40 on cross-entropy succeeds {rand_ce}%, on the margin {rand_margin}%, on the margin through EOT "
     "over 10 draws {rand_eot}%."),
    ("Report robust accuracy under the strongest attack, per example", "under the AutoAttack-grade ensemble "
     "(worst case per example) the GI models keep {ensemble} robust accuracy, the undefended {ensemble0}; "
     "the table above gives each with its 95% interval."),
    ("Do not evaluate with the softmax's saturated loss alone", "off-the-shelf APGD-CE leaves {apgd_ce}% robust "
     "accuracy on the GI models, APGD-DLR {apgd_dlr}%; PGD-40 on cross-entropy succeeds {ce}%, the same attack "
     "on logits/1000 {temp}%."),
]


def _checklist_values(rows: list[dict]) -> dict:
    """The numbers CHECKLIST's answers quote, as percent strings (the same as write_adaptive's)."""
    main = _at_eps(rows)
    gi = [r for r in main if r["defence"] == "GI"]

    def mean(name: str, defence: str = "GI", key: str = "success") -> str:
        return percent(_mean(main, name, defence, key))

    def lowest(name: str, defence: str | None, source: list[dict]) -> str:
        return percent(min(r["success"] for r in source if r["attack"] == name
                           and (defence is None or r["defence"] == defence)))

    curve = [r for r in rows if r["attack"] == CURVE]
    eps_max = max(r["eps"] for r in curve)
    resampled = [r for r in rows if r["defence"] == "GI, resampled"]
    cw = next(r["attack"] for r in main if r["attack"].startswith("C&W"))
    table = worst_case_by_model(rows)
    return {"eps": eps_label(rows[0]["dataset"], main[0]["eps"]), "paper": mean("FGSM, CE (the paper's)"),
            "adaptive": percent(statistics.fmean(r["success"] for r in gi if r["attack"] in ADAPTIVE)),
            "pgd": mean("PGD-40, margin"), "fgsm": mean("FGSM, margin"),
            "square": mean("Square, margin, 1000 queries"),
            "transfer": mean("transfer: PGD-40 margin from the undefended model"),
            "zero": mean("FGSM, CE (the paper's)", key="zero_grad_fraction"),
            "zero0": mean("FGSM, CE (the paper's)", "none", key="zero_grad_fraction"),
            "cw0": lowest(cw, "none", main) + "%", "cw": lowest(cw, "GI", main) + "%",
            "eps_max": eps_label(rows[0]["dataset"], eps_max),
            "curve": lowest(CURVE, None, [r for r in curve if r["eps"] == eps_max]) + "%",
            "one": mean("PGD-40, margin", key="robust_acc"), "five": mean(RESTARTS, key="robust_acc"),
            "rand_ce": percent(statistics.fmean(r["success"] for r in resampled if r["attack"] == "PGD-40, CE")),
            "rand_margin": percent(statistics.fmean(r["success"] for r in resampled
                                                    if r["attack"] == "PGD-40, margin")),
            "rand_eot": percent(statistics.fmean(r["success"] for r in resampled if "EOT" in r["attack"])),
            "ensemble": _span([t["ensemble"] for t in table if t["defence"] == "GI"]),
            "ensemble0": _span([t["ensemble"] for t in table if t["defence"] == "none"]),
            "apgd_ce": mean("APGD-CE, 100 steps", key="robust_acc"),
            "apgd_dlr": mean("APGD-DLR, 100 steps", key="robust_acc"),
            "ce": mean("PGD-40, CE"), "temp": mean("PGD-40, CE on logits/1000")}


def checklist_markdown(rows: list[dict]) -> str:
    """CHECKLIST (Carlini et al. 2019) as a markdown list, each item with GI's answer from the rows' numbers.

    Args:
        rows: the rows of adaptive.csv (`evaluate_adaptive`, or `reports.read_results(dataset, "adaptive")`).

    Used in: notebooks/06_adaptive_attacks.ipynb.
    """
    values = _checklist_values(rows)
    return "\n".join(f"- **{item}**: {text.format(**values)}" for item, text in CHECKLIST)


def write_adaptive(rows: list[dict], out_dir: str | Path, command: str) -> list[Path]:
    """adaptive.csv and adaptive.md under out_dir."""
    out_dir = Path(out_dir)
    rows = rounded(rows)  # the text then says what adaptive.csv says, to the last digit
    path = write_csv(rows, out_dir / "adaptive.csv")
    main = _at_eps(rows)
    dataset, variant, eps = rows[0]["dataset"], rows[0]["variant"], main[0]["eps"]
    label = f"{DATASET_NAMES[dataset]} ({variant})"
    models = list(dict.fromkeys((r["arch"], r["ratio"]) for r in main))
    first = main[0]
    n_cw = next(r["n"] for r in main if r["attack"].startswith("C&W"))
    n_jsma = next(r["n"] for r in main if r["attack"].startswith("JSMA"))
    md = [f"# Gradient inhibition under adaptive attacks: {label}", "",
          f"Made by `{command}`. Same GI strength rule as reproduction.md; L-inf eps = {eps_label(dataset, eps)} "
          f"on the first {first['n']} test images; C&W on the first {n_cw}; JSMA on {n_jsma} (image, target) "
          "pairs. **Robust accuracy** (the standard: correct clean and after an attack run against the true "
          "label) is what a defence is judged by; **success** (the paper's: prediction changed) is shown for "
          "comparison with the paper. Brackets: 95% Wilson intervals.", "",
          "## Robust accuracy per model: the AutoAttack-grade ensemble, and every attack at once", "",
          "The ensemble is APGD-CE (100 steps), APGD-T (DLR, 9 targets x 100 steps) and Square (5000 queries), "
          "worst case per example (`evaluation.robust_accuracy`, preset \"standard\"). \"Every attack\" is the "
          "worst case per example over all bounded attacks below.", "",
          "| model | defence | GI strength | clean acc. | robust acc., ensemble | robust acc., every attack | "
          "strongest single attack |", "|---|---|---:|---:|---:|---:|---|"]
    table = worst_case_by_model(rows)
    md += [f"| {t['arch']} r{t['ratio']:g} | {t['defence']} | {t['gi_strength']:g} | {percent(t['clean_acc'])} | "
           f"{with_interval(t, 'ensemble')} | {with_interval(t, 'worst')} | {t['strongest']} |" for t in table]
    md += ["", "## What off-the-shelf defaults report (mean robust accuracy over the models, %)", "",
           "| attack | undefended | GI |", "|---|---:|---:|"]
    md += [f"| {r['attack']} | {percent(r['none'])} | {percent(r['GI'])} |" for r in defaults_table(rows)]
    md += ["", "Cross-entropy attacks at their usual defaults see a vanishing gradient on the GI models and report "
           "them robust; the DLR loss, a ratio of logit differences that no scaling of the logits changes, "
           "reports what the model really keeps.", "",
           "## Success per attack (%, the paper's rate), averaged over the models", "",
           "| attack | undefended | GI |", "|---|---:|---:|"]
    md += [f"| {r['attack']} | {percent(r['none'])} | {percent(r['GI'])} |" for r in success_by_attack(rows)]
    md += ["", "## Every cell: robust accuracy (%) [success (%)]", "", "| attack | " + " | ".join(
        f"{a} r{q:g} none / GI" for a, q in models) + " |", "|---|" + "---:|" * len(models)]
    for attack in dict.fromkeys(r["attack"] for r in main):
        cells = []
        for arch, ratio in models:
            pick = {r["defence"]: r for r in main if (r["arch"], r["ratio"], r["attack"]) == (arch, ratio, attack)}
            cells.append(" / ".join(f"{percent(pick[d]['robust_acc'])} [{percent(pick[d]['success'])}]"
                                    for d in ("none", "GI")))
        md.append(f"| {attack} | " + " | ".join(cells) + " |")
    cw = [r for r in main if r["attack"].startswith("C&W")]
    md += ["", "C&W median L2 of successful examples: " + ", ".join(
        f"{r['arch']} r{r['ratio']:g} {r['defence']}: {r['median_l2']:.2f}" for r in cw if r["median_l2"] is not None)]
    md += ["", "## Success grows to 100% as eps grows (PGD-40, margin)", "",
           "| model | defence | " + " | ".join(eps_label(dataset, e) for e in EPS_CURVE[dataset]) + " |",
           "|---|---|" + "---:|" * len(EPS_CURVE[dataset])]
    for arch, ratio in models:
        for defence in ("none", "GI"):
            curve = {r["eps"]: r for r in rows if r["attack"] == CURVE
                     and (r["arch"], r["ratio"], r["defence"]) == (arch, ratio, defence)}
            md.append(f"| {arch} r{ratio:g} | {defence} | " + " | ".join(
                percent(curve[e]["success"]) for e in sorted(curve)) + " |")
    resampled = [r for r in rows if r["defence"] == "GI, resampled"]
    md += ["", "## The authors' randomised GI (uniform U redrawn at every forward): success (%) [robust acc. (%)]",
           "", "| model | strength | " + " | ".join(dict.fromkeys(r["attack"] for r in resampled)) + " |",
           "|---|---:|" + "---:|" * len(dict.fromkeys(r["attack"] for r in resampled))]
    for arch, ratio in models:
        mine = [r for r in resampled if (r["arch"], r["ratio"]) == (arch, ratio)]
        md.append(f"| {arch} r{ratio:g} | {mine[0]['gi_strength']:g} | " + " | ".join(
            f"{percent(r['success'])} [{percent(r['robust_acc'])}]" for r in mine) + " |")
    md += ["", "## Carlini et al. 2019, item by item, for GI", "",
           "The evaluation checklist of *On Evaluating Adversarial Robustness* (Carlini, Athalye, Papernot, Brendel, "
           "Rauber, Tsipras, Goodfellow, Madry, Kurakin; arXiv:1902.06705), applied to this defence:", ""]
    md.append(checklist_markdown(rows))
    gi = [t for t in table if t["defence"] == "GI"]
    masked = max(t["ensemble_high"] for t in gi) < 0.1
    md += ["", f"Verdict from these numbers: under the ensemble every GI model keeps at most "
           f"{percent(max(t['ensemble'] for t in gi))}% robust accuracy (upper 95% bound "
           f"{percent(max(t['ensemble_high'] for t in gi))}%), "
           + ("so GI adds no meaningful robustness: its drop in the paper's success rate comes from the float32 "
              "softmax (gradient masking), not from a more robust decision boundary, and the paper's headline is a "
              "result about one loss function." if masked else "which is not negligible; look at the cells above "
              "before concluding either way.")]
    (out_dir / "adaptive.md").write_text("\n".join(md) + "\n")
    return [path, out_dir / "adaptive.md"]
