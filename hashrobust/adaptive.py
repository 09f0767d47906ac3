"""Beyond the paper: does gradient inhibition survive an attacker who adapts to it?

GI saturates the float32 softmax, so the cross-entropy gradient is exactly
zero and FGSM/BIM make no step (../shared/PAPER.md, "Why it works"). That
is gradient masking: it stops one way of computing an attack, not the
attack. Following Carlini et al. 2019 ("On Evaluating Adversarial
Robustness") and Athalye, Carlini & Wagner 2018, each GI model of the zoo is
attacked, within the same L-inf budget, by attacks that do not rely on the
saturated softmax:

- FGSM and PGD on the C&W logit margin instead of cross-entropy;
- FGSM and PGD on cross-entropy of logits / T (T = 1000 undoes any GI scale here);
- JSMA-Z (the logits' Jacobian) beside JSMA-F (the softmax's, which GI zeroes);
- C&W L2 (logit-based, unbounded: reported with its median L2 distortion);
- transfer: PGD (margin) crafted on the undefended twin, scored on the GI model;
- Square Attack, gradient-free (margin loss, 1000 queries).

The GI strength is the reproduction's rule (defenses.choose_strength).
"""
from __future__ import annotations

import statistics
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path

from torch import Tensor, nn
from tqdm.auto import tqdm

from .attacks import CW, FGSM, JSMA, PGD, Attack, Square
from .data import load_dataset
from .defenses import GradientMaskingWarning, inhibition_report
from .evaluation import jsma_success, transfer
from .reports import DATASET_NAMES, eps_label, percent, rounded, write_csv
from .reproduction import ATTACK_EPS, SELECTION, defend_by_rule
from .train import predict
from .zoo import load_pretrained

__all__ = ["Temperature", "adaptive_attacks", "evaluate_adaptive", "write_adaptive", "MODELS", "CHECKLIST",
           "run_attacks", "success_by_attack", "strongest_by_model", "checklist_markdown"]

MODELS = {"mnist": [("mlp3", 1), ("mlp3", 8), ("mlp3", 64), ("lenet", 1), ("lenet", 8)],
          "cifar10": [("cifar_cnn", 1), ("cifar_cnn", 8), ("cifar_cnn", 64)]}


class Temperature(nn.Module):
    """logits / T: the same predictions, an unsaturated softmax (an attacker's view of a GI model)."""

    def __init__(self, model: nn.Module, temperature: float) -> None:
        super().__init__()
        self.model, self.temperature = model, temperature

    def forward(self, images: Tensor) -> Tensor:
        return self.model(images) / self.temperature


def adaptive_attacks(eps: float, undefended: nn.Module) -> dict:
    """{name: factory(model) -> attack}, L-inf eps; the attack's own `.model` is where gradients are taken."""
    pgd = dict(eps=eps, alpha=2.5 * eps / 40, steps=40, seed=0)
    return {
        "FGSM, CE (the paper's)": lambda m: FGSM(m, eps=eps),
        "PGD-40, CE": lambda m: PGD(m, **pgd),
        "FGSM, margin": lambda m: FGSM(m, eps=eps, loss="margin"),
        "PGD-40, margin": lambda m: PGD(m, **pgd, loss="margin"),
        "FGSM, CE on logits/1000": lambda m: FGSM(Temperature(m, 1000.0), eps=eps),
        "PGD-40, CE on logits/1000": lambda m: PGD(Temperature(m, 1000.0), **pgd),
        "transfer: PGD-40 margin from the undefended twin": lambda m: PGD(undefended, **pgd, loss="margin"),
        "Square, margin, 1000 queries": lambda m: Square(m, eps=eps, queries=1000, seed=0),
    }


def evaluate_adaptive(dataset: str, n: int = 1000, n_cw: int = 100, jsma_images: int = 10,
                      models: list[tuple[str, float]] | None = None) -> list[dict]:
    """Attack each model undefended and with GI; one row per (model, defence, attack)."""
    eps = ATTACK_EPS[dataset]
    test = load_dataset(dataset, "test").subset(n)
    selection = load_dataset(dataset, "train").subset(SELECTION)
    rows = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", GradientMaskingWarning)  # expected: GI masks gradients
        for arch, ratio in tqdm(models or MODELS[dataset], desc=f"adaptive {dataset}", unit="model"):
            model = load_pretrained(dataset, arch, ratio)
            defended, strength, _ = defend_by_rule(model, selection)
            for defence, m in (("none", model), ("GI", defended)):
                base = {"dataset": dataset, "variant": test.variant, "arch": arch, "ratio": ratio,
                        "defence": defence, "gi_strength": strength if defence == "GI" else 0.0,
                        "zero_grad_fraction": inhibition_report(m, test.images)["zero_grad_fraction"]}
                for row in run_attacks(m, adaptive_attacks(eps, model), test.images, test.labels):
                    rows.append({**base, "attack": row.pop("attack"), "eps": eps, "bounded": True, **row,
                                 "median_l2": None})
                for jacobian, name in (("probs", "JSMA-F (softmax Jacobian)"), ("logits", "JSMA-Z (logit Jacobian)")):
                    row = jsma_success(m, JSMA(m, jacobian=jacobian), test.images[:jsma_images],
                                       test.labels[:jsma_images])
                    rows.append({**base, "attack": name, "eps": None, "bounded": False, "n": row["n"],
                                 "success": row["success"], "fooling": None, "robust_acc": None, "clean_acc": None,
                                 "median_l2": None})
                images = test.images[:n_cw]
                adv = CW(m, c=10.0, kappa=0.0, steps=100, lr=0.01)(images)
                changed = predict(m, adv) != predict(m, images)
                l2 = (adv - images).flatten(1).norm(dim=1)[changed]
                rows.append({**base, "attack": "C&W L2 (c=10, 100 steps)", "eps": None, "bounded": False,
                             "n": n_cw, "success": changed.float().mean().item(), "fooling": None,
                             "robust_acc": None, "clean_acc": None,
                             "median_l2": l2.median().item() if len(l2) else None})
    return rows


def _strongest(rows: list[dict]) -> dict:
    """The L-inf-bounded attack leaving the lowest robust accuracy (ties: the higher success)."""
    return min((r for r in rows if r["bounded"]), key=lambda r: (r["robust_acc"], -r["success"]))


# The white-box attacks built for GI's mechanism (a loss that does not saturate); the checklist averages them.
ADAPTIVE = ("FGSM, margin", "PGD-40, margin", "FGSM, CE on logits/1000", "PGD-40, CE on logits/1000")

CHECKLIST = [
    ("State a precise threat model", "L-inf, eps = {eps} in pixel units, white-box: the attacker knows the "
     "model, its hash and that GI was applied, and may query it; untargeted; success = changed prediction."),
    ("Perform adaptive attacks", "the margin loss and logits/T attacks are built for GI's mechanism (a saturated "
     "softmax): averaged over the GI models they succeed {adaptive}% of the time against {paper}% for the "
     "paper's FGSM."),
    ("Check that iterative attacks beat single-step ones", "PGD-40 (margin) {pgd}% vs FGSM (margin) {fgsm}% on "
     "the GI models."),
    ("Try gradient-free and transfer attacks", "Square (gradient-free) {square}%; transfer from the undefended "
     "twin {transfer}%. A defence that stops white-box gradients but not these is masking gradients."),
    ("Look for gradient masking", "{zero}% of test inputs have an exactly-zero cross-entropy input gradient "
     "under GI (undefended: {zero0}%): the textbook signature; `inhibition_report` warns about it."),
    ("Report robust accuracy under the strongest attack", "the second table above gives it per model."),
    ("Do not evaluate with the softmax's saturated loss alone", "CE-based success under GI: {ce}%; the same "
     "attack on logits/1000: {temp}%. Dividing the logits is all an attacker needs."),
]


def run_attacks(model: nn.Module, attacks: Mapping[str, Callable[[nn.Module], Attack]], images: Tensor,
                labels: Tensor | None = None, batch_size: int = 500) -> list[dict]:
    """Each attack on `model`, as `evaluate_adaptive` scores it: one row per attack, in the order given.

    An attack crafts its examples on its own `.model` (the model itself, `Temperature` of it, or the
    undefended twin for a transfer attack) and they are scored on `model` (evaluation.transfer).

    Args:
        model: the model under attack, e.g. a GI model.
        attacks: {name: factory(model) -> attack}, e.g. (a selection of) `adaptive_attacks(0.3, undefended)`.
        images, labels: (N, C, H, W) in [0, 1] and the true labels (N,), or None for success only.

    Returns:
        [{"attack", "n", "success", "fooling", "robust_acc", "clean_acc"}].

    Used in: notebooks/06_adaptive_attacks.ipynb.
    """
    rows = []
    for name, make in attacks.items():
        attack = make(model)
        rows.append({"attack": name, **transfer(attack.model, model, attack, images, labels, batch_size)})
    return rows


def success_by_attack(rows: list[dict]) -> list[dict]:
    """Mean success of each attack over the models, undefended and with GI (adaptive.md's first table).

    Args:
        rows: the rows of adaptive.csv (`evaluate_adaptive`, or `reports.read_results(dataset, "adaptive")`).

    Returns:
        [{"attack", "none", "GI"}], the attacks in the order of the rows.

    Used in: notebooks/06_adaptive_attacks.ipynb.
    """
    attacks = list(dict.fromkeys(r["attack"] for r in rows))
    return [{"attack": a, **{d: statistics.fmean(r["success"] for r in rows if r["attack"] == a and r["defence"] == d)
                             for d in ("none", "GI")}} for a in attacks]


def strongest_by_model(rows: list[dict]) -> list[dict]:
    """Per model, the L-inf-bounded attack that leaves the lowest robust accuracy (adaptive.md's second table).

    Args:
        rows: the rows of adaptive.csv.

    Returns:
        [{"arch", "ratio", "gi_strength", "clean_acc" (GI), "attack", "robust_acc", "success" (GI, under its
        strongest attack), "attack_none", "robust_acc_none", "success_none" (undefended, under its own
        strongest)}], models in row order.

    Used in: notebooks/06_adaptive_attacks.ipynb.
    """
    table = []
    for arch, ratio in dict.fromkeys((r["arch"], r["ratio"]) for r in rows):
        mine = [r for r in rows if (r["arch"], r["ratio"]) == (arch, ratio)]
        gi = _strongest([r for r in mine if r["defence"] == "GI"])
        none = _strongest([r for r in mine if r["defence"] == "none"])
        table.append({"arch": arch, "ratio": ratio, "gi_strength": gi["gi_strength"], "clean_acc": gi["clean_acc"],
                      "attack": gi["attack"], "robust_acc": gi["robust_acc"], "success": gi["success"],
                      "attack_none": none["attack"], "robust_acc_none": none["robust_acc"],
                      "success_none": none["success"]})
    return table


def _checklist_values(rows: list[dict]) -> dict:
    """The numbers CHECKLIST's answers quote, as percent strings (the same as write_adaptive's)."""
    gi = [r for r in rows if r["defence"] == "GI"]

    def mean(name: str, defence: str = "GI", key: str = "success") -> str:
        return percent(statistics.fmean(r[key] for r in rows if r["attack"] == name and r["defence"] == defence))

    return {"eps": eps_label(rows[0]["dataset"], rows[0]["eps"]), "paper": mean("FGSM, CE (the paper's)"),
            "adaptive": percent(statistics.fmean(r["success"] for r in gi if r["attack"] in ADAPTIVE)),
            "pgd": mean("PGD-40, margin"), "fgsm": mean("FGSM, margin"),
            "square": mean("Square, margin, 1000 queries"),
            "transfer": mean("transfer: PGD-40 margin from the undefended twin"),
            "zero": mean("FGSM, CE (the paper's)", key="zero_grad_fraction"),
            "zero0": mean("FGSM, CE (the paper's)", "none", key="zero_grad_fraction"),
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
    dataset, variant, eps = rows[0]["dataset"], rows[0]["variant"], rows[0]["eps"]
    label = f"{DATASET_NAMES[dataset]} ({variant})"
    models = list(dict.fromkeys((r["arch"], r["ratio"]) for r in rows))
    attacks = list(dict.fromkeys(r["attack"] for r in rows))

    md = [f"# Gradient inhibition under adaptive attacks: {label}", "",
          f"Made by `{command}`. Same GI strength rule as reproduction.md; L-inf eps = {eps_label(dataset, eps)} "
          f"on the first "
          f"{rows[0]['n']} test images; C&W on the first {next(r['n'] for r in rows if r['attack'].startswith('C&W'))}"
          f"; JSMA on {next(r['n'] for r in rows if r['attack'].startswith('JSMA'))} (image, target) pairs.", "",
          "## Success per attack (%), averaged over the models", "",
          "| attack | undefended | GI |", "|---|---:|---:|"]
    md += [f"| {r['attack']} | {percent(r['none'])} | {percent(r['GI'])} |" for r in success_by_attack(rows)]
    md += ["", "## Robust accuracy under the strongest bounded attack, per model", "",
           "| model | GI strength | clean acc. (GI) | strongest attack on GI | robust acc. (GI) | "
           "robust acc. (undefended, its strongest) |", "|---|---:|---:|---|---:|---:|"]
    strongest = strongest_by_model(rows)
    md += [f"| {t['arch']} r{t['ratio']:g} | {t['gi_strength']:g} | {percent(t['clean_acc'])} | {t['attack']} | "
           f"{percent(t['robust_acc'])} | {percent(t['robust_acc_none'])} |" for t in strongest]
    md += ["", "## Every cell: success (%)", "", "| attack | " + " | ".join(
        f"{a} r{q:g} none / GI" for a, q in models) + " |", "|---|" + "---:|" * len(models)]
    for attack in attacks:
        cells = []
        for arch, ratio in models:
            pick = {r["defence"]: r for r in rows if (r["arch"], r["ratio"], r["attack"]) == (arch, ratio, attack)}
            cells.append(f"{percent(pick['none']['success'])} / {percent(pick['GI']['success'])}")
        md.append(f"| {attack} | " + " | ".join(cells) + " |")
    cw = [r for r in rows if r["attack"].startswith("C&W")]
    md += ["", "C&W median L2 of successful examples: " + ", ".join(
        f"{r['arch']} r{r['ratio']:g} {r['defence']}: {r['median_l2']:.2f}" for r in cw if r["median_l2"] is not None)]
    md += ["", "## Carlini et al. 2019, item by item, for GI", "",
           "The evaluation checklist of *On Evaluating Adversarial Robustness* (Carlini, Athalye, Papernot, Brendel, "
           "Rauber, Tsipras, Goodfellow, Madry, Kurakin; arXiv:1902.06705), applied to this defence:", ""]
    md.append(checklist_markdown(rows))
    best_gi = statistics.fmean(t["success"] for t in strongest)
    best_none = statistics.fmean(t["success_none"] for t in strongest)
    restored = best_gi >= 0.9 * best_none
    md += ["", f"Verdict from these numbers: the strongest bounded attack succeeds {percent(best_gi)}% of the time "
           f"against GI and {percent(best_none)}% against the undefended models, so adaptive attacks "
           + ("restore the undefended success: GI's drop comes from the float32 softmax (gradient masking), not "
              "from a more robust decision boundary, and the paper's headline is a result about one loss function."
              if restored else "do NOT restore the undefended success here; look at the cells above before "
              "concluding either way.")]
    (out_dir / "adaptive.md").write_text("\n".join(md) + "\n")
    return [path, out_dir / "adaptive.md"]
