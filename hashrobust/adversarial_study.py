"""Beyond the paper: do adversarially trained networks, dense and hashed, stand up to an honest evaluation?

Papers: Madry et al., "Towards Deep Learning Models Resistant to Adversarial Attacks", ICLR 2018 (PGD
adversarial training); Wong, Rice, Kolter, "Fast is better than free", ICLR 2020 (fast FGSM training and
catastrophic overfitting); Croce & Hein, ICML 2020 (AutoAttack: robust accuracy under an ensemble, the
number RobustBench ranks by); Carlini et al., "On Evaluating Adversarial Robustness", 2019, Sec. 5 (the
signs that an evaluation was fooled by gradient masking).

Every model of the adversarially trained zoo (adversarial_training.py, `hashrobust train --adversarial`) is
scored on the first n test images at the radius it was trained for (MNIST 0.3, CIFAR-10 8/255) by

- clean accuracy, FGSM and PGD-40 (cross-entropy) robust accuracy, and the ensemble's robust accuracy
  (evaluation.robust_accuracy: APGD-CE, APGD-T with the DLR loss, Square), each with a 95% Wilson interval;
- four masking signals, which should stay silent on a model that is really robust and fire on GI:
  1. `inhibition_report` warns (at least half the input gradients exactly 0, or the median logit margin
     past the float32 softmax's saturation);
  2. one FGSM step leaves fewer inputs robust than PGD-40 (an iterative attack must be at least as strong);
  3. the gradient-free Square attack breaks inputs that APGD left (more than 1% of n): the gradients misled;
  4. PGD-40 on cross-entropy leaves over 20 points more robust accuracy than the ensemble: the loss is masked
     (on adversarially trained models the two differ by a few points, as RobustBench's PGD and AutoAttack
     columns do; on GI by about 90).
- beside them, the undefended (standard) model and GI on it (the paper's defence at the reproduction's
  strength rule), so the same signals are seen silent and loud side by side.

`hashing_under_at` answers the research question of notebook 07: at the same training, how much robust
accuracy does hashing at ratio 8 and 64 keep against the dense model, as a paired difference on the same
images (evaluation.paired_difference: Agresti-Min interval, exact McNemar test).
"""
from __future__ import annotations

import time
import warnings
from collections.abc import Sequence
from pathlib import Path

import torch
from matplotlib.figure import Figure
from torch import Tensor, nn
from tqdm.auto import tqdm

from ._validation import check_choice, check_device
from .attacks import FGSM, PGD
from .data import load_dataset
from .defenses import GradientMaskingWarning, inhibition_report
from .evaluation import (_craft, ensemble_attacks, pack_outcomes, paired_difference, robust_accuracy, unpack_outcomes,
                         wilson_interval)
from .reports import DATASET_NAMES, OKABE_ITO, eps_label, percent, rounded, with_interval, write_csv
from .reproduction import SELECTION, defend_by_rule
from .train import predict
from .zoo import load_pretrained, read_manifest

__all__ = ["EPS", "MODELS", "ANCHORS", "CURVE_EPS", "evaluate_model", "masking_signals",
           "evaluate_adversarial_training", "eps_curves", "hashing_under_at", "eps_curve_figure",
           "training_histories", "training_curve_figure", "adversarial_training_markdown", "write_adversarial_training",
           "curve_archs", "LABELS"]

EPS = {"mnist": 0.3, "cifar10": 8 / 255}  # the radius the zoo was trained for, and the papers' evaluation radius
# (arch, ratio, training): "standard" and "GI" are the undefended model and the paper's defence on it
MODELS = {
    "mnist": [("lenet", 1, "standard"), ("lenet", 1, "GI"), ("lenet", 1, "fgsm-at"), ("lenet", 1, "pgd-at"),
              ("lenet", 8, "pgd-at"), ("lenet", 64, "pgd-at"), ("mlp3", 1, "standard"), ("mlp3", 1, "GI"),
              ("mlp3", 1, "pgd-at"), ("mlp3", 8, "pgd-at"), ("mlp3", 64, "pgd-at")],
    "cifar10": [("cifar_cnn", 1, "standard"), ("cifar_cnn", 1, "GI"), ("cifar_cnn", 1, "fgsm-at"),
                ("cifar_cnn", 8, "fgsm-at")],
}
# Published clean / AutoAttack robust accuracy at the same radius (RobustBench's leaderboards list both).
ANCHORS = {
    "mnist": [("Wong et al. 2020, fast FGSM-AT, small CNN", 0.9850, 0.8293),
              ("Madry et al. 2018, PGD-AT, 2-conv CNN", 0.9853, 0.8850)],
    "cifar10": [("Wong et al. 2020, fast FGSM-AT, PreActResNet-18 (11M parameters, real CIFAR-10)", 0.8334, 0.4321)],
}
CURVE_EPS = {"mnist": (0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4),
             "cifar10": (2 / 255, 4 / 255, 8 / 255, 12 / 255, 16 / 255)}
SQUARE_SIGNAL = 0.01  # Square breaking more than this fraction of n beyond APGD: the gradients misled the attacks
CE_GAP_SIGNAL = 0.2  # PGD-40 (CE) leaving this much more robust accuracy than the ensemble: the CE loss is masked


def _robust(model: nn.Module, adv_images: Tensor, labels: Tensor, correct: Tensor) -> Tensor:
    return correct & (predict(model, adv_images) == labels)


def evaluate_model(model: nn.Module, images: Tensor, labels: Tensor, eps: float, preset: str = "standard",
                   batch_size: int = 500) -> dict:
    """One model's row: clean, FGSM, PGD-40 and ensemble robust accuracy with intervals, and the masking signals.

    Args:
        model: a classifier on images in [0, 1] (on its device; `images` are moved there batch by batch).
        images, labels: (N, C, H, W) and (N,), e.g. the first 1000 test images.
        eps: L-inf radius in pixel units.
        preset: the ensemble's budget, "standard" (AutoAttack's) or "course" (evaluation.ENSEMBLES).

    Returns:
        {"n", "clean_acc", "fgsm_robust_acc", "pgd_robust_acc", "robust_acc" (the ensemble's), each with
        "_low"/"_high", "apgd_ce_robust_acc", "apgd_t_robust_acc" (cumulative after each attack),
        "square_broken", "zero_grad_fraction", "median_margin", "masking_warning", "signals" (`masking_signals`),
        "robust_examples" (`pack_outcomes`), "seconds"}.
    """
    start = time.perf_counter()
    labels = labels.cpu()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", GradientMaskingWarning)
        report = inhibition_report(model, images, labels)
    correct = predict(model, images) == labels
    device = next(model.parameters()).device
    x, y = images.to(device), labels.to(device)
    fgsm = _robust(model, _craft(FGSM(model, eps=eps), x, y, batch_size), labels, correct)
    pgd_attack = PGD(model, eps=eps, alpha=2.5 * eps / 40, steps=40, random_start=True, seed=0)
    pgd = _robust(model, _craft(pgd_attack, x, y, batch_size), labels, correct)
    ensemble = robust_accuracy(model, images, labels, eps, preset=preset, batch_size=batch_size)
    steps = {step["attack"]: step for step in ensemble["per_attack"]}
    row = {"n": len(labels), "eps": eps}
    for key, mask in (("clean_acc", correct), ("fgsm_robust_acc", fgsm), ("pgd_robust_acc", pgd),
                      ("robust_acc", ensemble["robust"])):
        k = int(mask.sum())
        row[key] = k / len(labels)
        row[key + "_low"], row[key + "_high"] = wilson_interval(k, len(labels))
    row.update({"apgd_ce_robust_acc": steps["APGD-CE"]["robust_acc"],
                "apgd_t_robust_acc": steps["APGD-T (DLR)"]["robust_acc"],
                "square_broken": steps["Square"]["broken"] if "Square" in steps else 0,
                "zero_grad_fraction": report["zero_grad_fraction"], "median_margin": report["median_margin"],
                "masking_warning": any(issubclass(w.category, GradientMaskingWarning) for w in caught)})
    row["signals"] = "; ".join(masking_signals(row)) or "none"
    row["robust_examples"] = pack_outcomes(ensemble["robust"])
    row["seconds"] = time.perf_counter() - start
    return row


def masking_signals(row: dict) -> list[str]:
    """The masking signals (module docstring, 1-4) that fire on an `evaluate_model` row; [] when none does.

    Example:
        >>> masking_signals({"n": 100, "masking_warning": False, "fgsm_robust_acc": 0.5, "pgd_robust_acc": 0.4,
        ...                  "square_broken": 0, "robust_acc": 0.38})
        []
        >>> masking_signals({"n": 100, "masking_warning": True, "fgsm_robust_acc": 0.9, "pgd_robust_acc": 0.95,
        ...                  "square_broken": 30, "robust_acc": 0.0})  # doctest: +NORMALIZE_WHITESPACE
        ['zero gradients / saturated margins', 'FGSM stronger than PGD-40', 'Square broke 30 that APGD left',
         'PGD-40 (CE) 95.0% vs ensemble 0.0%']
    """
    found = []
    if row["masking_warning"]:
        found.append("zero gradients / saturated margins")
    if row["fgsm_robust_acc"] < row["pgd_robust_acc"] - 1e-9:
        found.append("FGSM stronger than PGD-40")
    if row["square_broken"] > SQUARE_SIGNAL * row["n"]:
        found.append(f"Square broke {row['square_broken']} that APGD left")
    if row["pgd_robust_acc"] - row["robust_acc"] > CE_GAP_SIGNAL + 1e-9:  # a gap of exactly 20 points stays silent
        found.append(f"PGD-40 (CE) {percent(row['pgd_robust_acc'])}% vs ensemble {percent(row['robust_acc'])}%")
    return found


def _load(dataset: str, arch: str, ratio: float, training: str, device: torch.device) -> nn.Module:
    if training != "GI":
        return load_pretrained(dataset, arch, ratio, device=device, training=training)
    undefended = load_pretrained(dataset, arch, ratio, device=device)
    selection = load_dataset(dataset, "train").subset(SELECTION)  # the strength rule never sees test images
    return defend_by_rule(undefended, selection)[0]


def _models(dataset: str, models: Sequence[tuple[str, float, str]] | None) -> list[tuple[str, float, str]]:
    check_choice(dataset, "dataset", EPS)
    return list(MODELS[dataset] if models is None else models)


def evaluate_adversarial_training(dataset: str, n: int = 1000, preset: str = "standard",
                                  models: Sequence[tuple[str, float, str]] | None = None,
                                  device: torch.device | str = "cpu") -> list[dict]:
    """`evaluate_model` on every model of MODELS[dataset] (or `models`: (arch, ratio, training) triples).

    Args:
        dataset: "mnist" or "cifar10"; the radius is EPS[dataset], the one the zoo was trained for.
        n: the first n test images.
        preset: the ensemble's budget ("standard": AutoAttack's; "course": for tests).
        models: (arch, ratio, training) with training "standard", "GI", "fgsm-at" or "pgd-at".
        device: "cpu", "cuda", ... (checked first).

    Returns:
        One row per model: dataset, arch, ratio, training, and evaluate_model's keys.
    """
    device = check_device(device, "evaluate_adversarial_training")
    models = _models(dataset, models)
    test = load_dataset(dataset, "test").subset(n)
    rows = []
    for arch, ratio, training in tqdm(models, desc="adversarial training study", unit="model"):
        model = _load(dataset, arch, ratio, training, device)
        rows.append({"dataset": dataset, "arch": arch, "ratio": ratio, "training": training,
                     **evaluate_model(model, test.images, test.labels, EPS[dataset], preset)})
    return rows


def curve_archs(dataset: str) -> list[str]:
    """The architectures `eps_curves` can draw for `dataset` (those of MODELS[dataset])."""
    return sorted({a for a, _, _ in _models(dataset, None)})


def eps_curves(dataset: str, arch: str, n: int = 1000, eps_values: Sequence[float] | None = None,
               models: Sequence[tuple[float, str]] | None = None, device: torch.device | str = "cpu") -> list[dict]:
    """Robust accuracy against eps for one architecture's models: the explorer's curves (notebook 07).

    Each point is the worst case over APGD-CE and APGD-T (DLR) with the course budget (50 steps, 3 targets;
    evaluation.ENSEMBLES), without Square: a curve is an upper bound on the robust accuracy, cheaper than
    the full ensemble, which `evaluate_adversarial_training` reports at the trained radius.

    Args:
        arch: an architecture of MODELS[dataset]; models: (ratio, training) pairs (default: all of MODELS'
            for that arch); eps_values: radii (default CURVE_EPS[dataset]).

    Returns:
        Rows {"dataset", "arch", "ratio", "training", "eps", "n", "robust_acc", "robust_acc_low", "robust_acc_high"}.
    """
    device = check_device(device, "eps_curves")
    pairs = [(r, t) for a, r, t in _models(dataset, None) if a == arch] if models is None else list(models)
    if not pairs:
        raise ValueError(f"The 'arch' of eps_curves must be one of {curve_archs(dataset)} for {dataset}. "
                         f"Got {arch!r} instead.")
    test = load_dataset(dataset, "test").subset(n)
    rows = []
    for ratio, training in tqdm(pairs, desc=f"eps curves ({arch})", unit="model"):
        model = _load(dataset, arch, ratio, training, device)
        for eps in CURVE_EPS[dataset] if eps_values is None else eps_values:
            attacks = ensemble_attacks(model, eps, preset="course")[:2]  # APGD-CE, APGD-T (DLR)
            result = robust_accuracy(model, test.images, test.labels, eps, attacks=attacks)
            rows.append({"dataset": dataset, "arch": arch, "ratio": ratio, "training": training, "eps": eps,
                         "n": result["n"], **{k: result[k] for k in ("robust_acc", "robust_acc_low",
                                                                       "robust_acc_high")}})
    return rows


def hashing_under_at(rows: list[dict]) -> list[dict]:
    """Per arch and adversarial training: robust accuracy of each hashed model minus the dense one's, paired.

    Args:
        rows: evaluate_adversarial_training's rows (or read back from adversarial_training.csv).

    Returns:
        Rows {"arch", "training", "ratio", "dense", "hashed", "difference", "low", "high", "p_value"}: the
        difference hashed - dense of ensemble robust accuracy on the same images, with its 95% interval.
    """
    found = []
    for dense in (r for r in rows if r["ratio"] == 1 and r["training"].endswith("-at")):
        base = unpack_outcomes(dense["robust_examples"], dense["n"])
        for hashed in (r for r in rows if r["arch"] == dense["arch"] and r["training"] == dense["training"]
                       and r["ratio"] != 1):
            diff = paired_difference(unpack_outcomes(hashed["robust_examples"], hashed["n"]), base)
            found.append({"arch": dense["arch"], "training": dense["training"], "ratio": hashed["ratio"],
                          "dense": dense["robust_acc"], "hashed": hashed["robust_acc"],
                          **{k: diff[k] for k in ("difference", "low", "high", "p_value")}})
    return found


LABELS = {"standard": "undefended", "GI": "GI (the paper's defence)", "fgsm-at": "fast FGSM-AT", "pgd-at": "PGD-AT"}


def _label(ratio: float, training: str) -> str:
    return LABELS[training] + ("" if ratio == 1 else f", hashed r{ratio:g}")


def eps_curve_figure(curves: list[dict], eps: float | None = None) -> Figure:
    """Robust accuracy against eps, one line per model, 95% bands; a vertical line at `eps` (the slider's)."""
    first = curves[0]
    fig = Figure(figsize=(8.4, 4.0), layout="constrained")
    ax = fig.add_subplot()
    colours = [OKABE_ITO[name] for name in ("orange", "sky blue", "green", "blue", "vermillion", "purple")]
    keys = list(dict.fromkeys((r["ratio"], r["training"]) for r in curves))
    scale = 255 if first["dataset"] == "cifar10" else 1
    for i, (ratio, training) in enumerate(keys):
        line = sorted((r for r in curves if (r["ratio"], r["training"]) == (ratio, training)), key=lambda r: r["eps"])
        xs = [r["eps"] * scale for r in line]
        ax.fill_between(xs, [r["robust_acc_low"] for r in line], [r["robust_acc_high"] for r in line],
                        color=colours[i % len(colours)], alpha=0.2, linewidth=0)
        ax.plot(xs, [r["robust_acc"] for r in line], marker="o", color=colours[i % len(colours)],
                linestyle="-" if ratio == 1 else "--", label=_label(ratio, training))
    if eps is not None:
        ax.axvline(eps * scale, color="black", linewidth=1, linestyle=":")
    ax.set(xlabel="eps (L-inf" + (", in 1/255)" if scale == 255 else ", pixel units)"), ylabel="robust accuracy",
           ylim=(-0.02, 1.02), title=f"{DATASET_NAMES[first['dataset']]} {first['arch']}: robust accuracy "
                                    f"(APGD-CE + APGD-T) on {first['n']} test images")
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))  # beside the axes: never over a curve
    ax.grid(alpha=0.3)
    return fig


def training_histories(dataset: str, arch: str, ratio: float = 1) -> dict[str, list[float]]:
    """Each adversarial training's check robust accuracy after every epoch, from the zoo's manifest.

    The check is PGD-10 (step eps / 4) on the first 512 training images (adversarial_training.py), the signal
    Wong et al.'s guard watches for catastrophic overfitting.

    Example:
        >>> sorted(training_histories("mnist", "lenet"))
        ['fgsm-at', 'pgd-at']
    """
    found = {}
    for entry in read_manifest().values():
        if (entry["dataset"], entry["arch"], entry["ratio"]) == (dataset, arch, ratio) and "training" in entry:
            found[entry["training"]] = entry["check_robust_accuracy"]
    return found


def training_curve_figure(histories: dict[str, list[float]], title: str = "") -> Figure:
    """Check robust accuracy (PGD-10) per epoch, one line per adversarial training: where FGSM training collapses."""
    fig = Figure(figsize=(6.4, 3.4), layout="constrained")
    ax = fig.add_subplot()
    for (training, values), colour in zip(histories.items(), (OKABE_ITO["vermillion"], OKABE_ITO["blue"])):
        ax.plot(range(1, len(values) + 1), values, marker="o", color=colour, label=LABELS[training])
    ax.set(xlabel="epoch", ylabel="PGD-10 robust accuracy\n(512 training images)", ylim=(0, 1), title=title)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return fig


def adversarial_training_markdown(rows: list[dict]) -> str:
    """The report: per model clean and robust accuracy with intervals, the signals, the anchors, the question."""
    dataset = rows[0]["dataset"]
    lines = [f"# Adversarial training on {DATASET_NAMES[dataset]}, evaluated with the ensemble", "",
             f"L-inf eps = {eps_label(dataset, rows[0]['eps'])} on the first {rows[0]['n']} test images. Robust "
             "accuracy: correct clean and after every attack (ensemble: APGD-CE, APGD-T (DLR), Square). Brackets: "
             "95% Wilson intervals. Masking signals: adversarial_study.py.", "",
             "| model | ratio | clean | FGSM | PGD-40 (CE) | ensemble | masking signals |",
             "|---|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        lines.append(f"| {r['arch']}, {LABELS[r['training']]} | {r['ratio']:g} | {with_interval(r, 'clean_acc')} | "
                     f"{percent(r['fgsm_robust_acc'])} | {with_interval(r, 'pgd_robust_acc')} | "
                     f"{with_interval(r, 'robust_acc')} | {r['signals']} |")
    lines += ["", "Published anchors (clean / robust under AutoAttack at the same eps):", ""]
    lines += [f"- {source}: {percent(clean)}% / {percent(robust)}%" for source, clean, robust in ANCHORS[dataset]]
    comparisons = hashing_under_at(rows)
    if comparisons:
        lines += ["", "Hashing under adversarial training: ensemble robust accuracy, hashed minus dense, paired on "
                  "the same images (95% Agresti-Min interval, exact McNemar p):", ""]
        lines += [f"- {c['arch']} {LABELS[c['training']]}, ratio {c['ratio']:g}: {percent(c['hashed'])}% vs "
                  f"{percent(c['dense'])}%, difference {100 * c['difference']:+.1f} points "
                  f"[{100 * c['low']:+.1f}, {100 * c['high']:+.1f}], p = {c['p_value']:.2g}" for c in comparisons]
    return "\n".join(lines) + "\n"


def write_adversarial_training(rows: list[dict], curves: list[dict], out_dir: str | Path, command: str) -> list[Path]:
    """adversarial_training.csv/.md, at_eps_curves.csv and at_eps_curves.png under out_dir."""
    out_dir = Path(out_dir)
    rows, curves = rounded(rows), rounded(curves)  # the report then says what the CSV says, to the last digit
    paths = [write_csv(rows, out_dir / "adversarial_training.csv"), write_csv(curves, out_dir / "at_eps_curves.csv")]
    md = out_dir / "adversarial_training.md"
    md.write_text(adversarial_training_markdown(rows).replace("\n\n", f"\n\nMade by `{command}`.\n\n", 1))
    png = out_dir / "at_eps_curves.png"
    eps_curve_figure(curves, EPS[rows[0]["dataset"]]).savefig(png, dpi=110)
    return paths + [md, png]
