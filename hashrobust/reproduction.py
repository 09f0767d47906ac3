"""The paper's headline, reproduced: attack success without and with gradient inhibition, on the zoo.

Paper: Liu et al. (ASP-DAC 2018), abstract (GI as the authors' code implements it): GI lowers the average
attack success rate from 87.99% to 4.77% on MNIST and from 86.74% to 4.64% on
CIFAR-10. The paper's per-network tables are not available, only these
averages, so the protocol is this project's documented reconstruction
(from HashedNets and the authors' related public code; docs/protocol.md):

- every shipped network and ratio of the dataset; the first `n` test images;
- FGSM (eps 0.3 on MNIST, 8/255 on CIFAR-10), BIM (same eps, step eps/10,
  40 iterations), labels = the model's own predictions; JSMA-F (theta 1,
  gamma 0.1) on the first 10 test images x their 9 other classes;
- GI: the constant variant W + s * sign(W) on the fully connected layers, its
  strength s chosen per model by one stated rule, never by attack success:
  the smallest s of a fixed grid at which at least 90% of 1000 *training*
  images get an exactly-zero input gradient (defenses.choose_strength);
- "average success rate" = the mean over attacks x networks x ratios.

Every cell goes to cells.csv, so any other averaging can be recomputed.
"""
from __future__ import annotations

import statistics
import warnings
from pathlib import Path

import matplotlib
import torch
from matplotlib.figure import Figure
from torch import nn
from tqdm.auto import tqdm

from ._validation import check_device
from .attacks import BIM, FGSM, JSMA
from .data import ImageDataset, load_dataset
from .defenses import GradientMaskingWarning, choose_strength, gradient_inhibition, inhibition_report
from .evaluation import jsma_success, success_rate
from .reports import DATASET_NAMES, OKABE_ITO, percent, with_interval, write_csv
from .zoo import load_pretrained, standard_entries

__all__ = ["PAPER_AVERAGE", "ATTACK_EPS", "SELECTION", "defend_by_rule", "reproduce", "average_success",
           "average_half_width",
           "write_reproduction", "reproduction_figure", "strength_figure"]

SELECTION = 1000  # the first SELECTION training images choose the GI strength (never the test images)
PAPER_AVERAGE = {"mnist": (0.8799, 0.0477), "cifar10": (0.8674, 0.0464)}  # (no defence, GI), the abstract
ATTACK_EPS = {"mnist": 0.3, "cifar10": 8 / 255}


def defend_by_rule(model: nn.Module, selection: ImageDataset, variant: str = "constant",
                   target: float = 0.9, stop_at_target: bool = False) -> tuple[nn.Module, float, list[dict]]:
    """GI at the strength this project's rule picks (module docstring): (defended model, strength, curve).

    Used by both `reproduce` and adaptive.evaluate_adaptive, so both reports defend the same models.
    stop_at_target: the curve ends at the chosen strength (`defenses.choose_strength`); the strength is the same.
    """
    strength, curve = choose_strength(model, selection.images, selection.labels, variant=variant, target=target,
                                      stop_at_target=stop_at_target)
    return gradient_inhibition(model, eps=strength, variant=variant, seed=0), strength, curve


def reproduce(dataset: str, n: int = 1000, jsma_images: int = 10, variant: str = "constant",
              target: float = 0.9, models: list[tuple[str, float]] | None = None,
              device: str | torch.device = "cpu") -> tuple[list[dict], list[dict]]:
    """Run the protocol on every shipped model of `dataset` (or on `models`, a list of (arch, ratio)).

    Args:
        dataset: "mnist" or "cifar10".
        n: the first n test images.
        jsma_images: JSMA-F on the first k test images x their 9 other classes.
        variant, target: the GI variant and the zero-gradient fraction its strength rule aims at.
        models: [(arch, ratio)] of the zoo (default: every shipped model of `dataset`).
        device: torch device for the models and images, e.g. "cpu", "cuda", "cuda:1" (checked first:
            `_validation.check_device`). The cells and curves hold plain numbers whatever the device.

    Returns:
        (cells, curves): one cell per (model, defence, attack) with success,
        clean accuracy, zero-gradient fraction and the GI strength; and the
        strength trade-off curve of every model (zero-gradient fraction and
        clean accuracy on the strength-selection images, FGSM success on the
        first `n` test images).
    """
    device = check_device(device, "reproduce")
    eps = ATTACK_EPS[dataset]
    attacks = {"FGSM": lambda m: FGSM(m, eps=eps), "BIM": lambda m: BIM(m, eps=eps, alpha=eps / 10, steps=40)}
    test = load_dataset(dataset, "test").subset(n).to(device)
    selection = load_dataset(dataset, "train").subset(SELECTION).to(device)
    entries = sorted((e for e in standard_entries().values() if e["dataset"] == dataset
                      and (models is None or (e["arch"], e["ratio"]) in models)), key=lambda e: (e["arch"], e["ratio"]))
    cells, curves = [], []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", GradientMaskingWarning)  # expected here: it is what GI does
        for entry in tqdm(entries, desc=f"reproduce {dataset}", unit="model"):
            model = load_pretrained(dataset, entry["arch"], entry["ratio"], device=device)
            defended, strength, curve = defend_by_rule(model, selection, variant, target)
            for point in curve:
                masked = gradient_inhibition(model, eps=point["eps"], variant=variant, seed=0)
                fgsm = success_rate(masked, attacks["FGSM"](masked), test.images, test.labels)["success"]
                curves.append({"arch": entry["arch"], "ratio": entry["ratio"], **point, "fgsm_success": fgsm})
            for defence, m in (("none", model), ("GI", defended)):
                report = inhibition_report(m, test.images, test.labels)
                base = {"dataset": dataset, "variant": test.variant, "arch": entry["arch"], "ratio": entry["ratio"],
                        "defence": defence, "gi_variant": variant, "gi_strength": strength if defence == "GI" else 0.0,
                        "clean_acc": report["clean_acc"], "zero_grad_fraction": report["zero_grad_fraction"],
                        "median_margin": report["median_margin"]}
                for name, make in attacks.items():
                    row = success_rate(m, make(m), test.images, test.labels)
                    cells.append({**base, "attack": name, "eps": eps, **_success(row)})
                jsma = jsma_success(m, JSMA(m, theta=1.0, gamma=0.1), test.images[:jsma_images],
                                    test.labels[:jsma_images])
                cells.append({**base, "attack": "JSMA-F", "eps": None, **_success(jsma)})
    return cells, curves


def _success(row: dict) -> dict:
    return {k: row[k] for k in ("n", "success", "success_low", "success_high")}


def average_success(cells: list[dict], defence: str) -> float:
    """The paper's "average attack success rate": the mean over attacks x networks x ratios of one defence."""
    return statistics.fmean(c["success"] for c in cells if c["defence"] == defence)


def average_half_width(cells: list[dict], defence: str) -> float:
    """The 95% half-width of `average_success`, treating its cells as independent binomials (normal approximation).

    The cells share images, so this understates the uncertainty a little; each cell's own Wilson interval
    is in cells.csv.
    """
    picked = [c for c in cells if c["defence"] == defence]
    variance = sum(c["success"] * (1 - c["success"]) / c["n"] for c in picked) / len(picked) ** 2
    return 1.959964 * variance ** 0.5


ARCH_COLOURS = [OKABE_ITO[c] for c in ("blue", "vermillion", "green", "purple")]
# One colour and one marker per compression ratio (Okabe-Ito without its yellow, which is faint on white), so no two
# series differ by colour alone: ratio = colour + marker, architecture = line style.
RATIO_STYLES = dict(zip((1, 2, 4, 8, 16, 32, 64),
                        zip((OKABE_ITO[c] for c in ("black", "orange", "sky blue", "green", "blue", "vermillion", "purple")),
                            ("o", "s", "^", "D", "v", "P", "X"))))
ARCH_LINES = {"mlp3": "-", "lenet": "--", "cifar_cnn": "-", "mlp5": ":"}
LINE_NAMES = {"-": "solid", "--": "dashed", ":": "dotted", "-.": "dash-dot"}
ATTACK_MARKERS = {"FGSM": "o", "BIM": "s", "JSMA-F": "^"}


def reproduction_figure(cells: list[dict], curves: list[dict], label: str) -> Figure:
    """The figure of reproduction.md: success per ratio before/after GI, clean-accuracy cost, zero-gradient
    fraction, and the strength trade-off.

    Colour = architecture, marker = attack, solid = no defence, dashed = GI; in the trade-off panel colour =
    compression ratio, solid = FGSM success, dotted = fraction of inputs with a zero gradient.

    Args:
        cells, curves: the rows of cells.csv and strength_curves.csv (`reproduce`, or `reports.read_results`).
        label: what the title names, e.g. "MNIST (official)".

    Used in: notebooks/05_gradient_inhibition.ipynb.
    """
    fig = Figure(figsize=(16, 5.6), layout="constrained")
    ax_success, ax_clean, ax_zero, ax_trade = fig.subplots(1, 4)
    archs = sorted({c["arch"] for c in cells})
    for arch, colour in zip(archs, ARCH_COLOURS):
        rows = [c for c in cells if c["arch"] == arch]
        ratios = sorted({c["ratio"] for c in rows})
        for defence, style in (("none", "-"), ("GI", "--")):
            pick = {(c["ratio"], c["attack"]): c for c in rows if c["defence"] == defence}
            for attack, marker in ATTACK_MARKERS.items():
                ax_success.plot(ratios, [100 * pick[r, attack]["success"] for r in ratios], style, color=colour,
                                marker=marker, label=f"{arch} {attack} {defence}")
            first = [pick[r, "FGSM"] for r in ratios]
            ax_clean.plot(ratios, [100 * c["clean_acc"] for c in first], style, color=colour, marker="o",
                          label=f"{arch} {defence}")
            ax_zero.plot(ratios, [100 * c["zero_grad_fraction"] for c in first], style, color=colour, marker="o",
                         label=f"{arch} {defence}")
    models = sorted({(c["arch"], c["ratio"]) for c in curves}, key=lambda m: (m[0] != "mlp3", m))
    first_arch = models[0][0] if models else None
    for arch, ratio in models:  # colour + marker = ratio (as `strength_figure`); hollow markers: the other architecture
        points = sorted((c for c in curves if (c["arch"], c["ratio"]) == (arch, ratio)), key=lambda c: c["eps"])
        xs = [p["eps"] for p in points]
        colour, marker = RATIO_STYLES.get(int(ratio), ("#777777", "*"))
        face = colour if arch == first_arch else "white"
        ax_trade.plot(xs, [100 * p["fgsm_success"] for p in points], "-", color=colour, marker=marker, markevery=4,
                      ms=5, mfc=face, label=f"{arch} r{ratio:g}")
        ax_trade.plot(xs, [100 * p["zero_grad_fraction"] for p in points], ":", color=colour, marker=marker,
                      markevery=4, ms=5, mfc=face)
    for ax, title in ((ax_success, "attack success (%): solid none, dashed GI"),
                      (ax_clean, "clean accuracy (%)"), (ax_zero, "test inputs with zero gradient (%)")):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("compression ratio")
        ax.set_title(title, fontsize=9)
    ax_trade.set_xscale("symlog", linthresh=0.1)
    ax_trade.set_xlabel("GI strength (constant variant)")
    ax_trade.set_title("trade-off: FGSM success (solid), zero-gradient (dotted)", fontsize=9)
    for ax in (ax_success, ax_clean, ax_trade):  # below the panels, legible, never over the data
        ax.legend(fontsize=7.5, ncol=2, loc="upper center", bbox_to_anchor=(0.5, -0.2))
    fig.suptitle(f"{label}: gradient inhibition (reconstructed protocol)", fontsize=10)
    return fig


def strength_figure(curves: list[dict], label: str = "") -> Figure:
    """The GI strength trade-off per model: zero-gradient fraction, clean accuracy and FGSM success vs strength.

    One line per model (colour and marker = compression ratio, line style = architecture, legend outside the
    panels); the strength the rule
    chose (`chosen`) is circled; the zero-gradient panel draws the rule's 90% target.

    Args:
        curves: rows of strength_curves.csv ("arch", "ratio", "eps", "zero_grad_fraction", "clean_acc",
            "fgsm_success", "chosen"): the first two measured on the strength-selection training images,
            FGSM success on the test images.
        label: what the title names, e.g. "MNIST (official)".

    Used in: notebooks/05_gradient_inhibition.ipynb.
    """
    fig = Figure(figsize=(13, 4.2), layout="constrained")
    axes = fig.subplots(1, 3, sharex=True)
    models = sorted({(c["arch"], c["ratio"]) for c in curves}, key=lambda m: (m[0] != "mlp3", m))
    keys = ("zero_grad_fraction", "clean_acc", "fgsm_success")
    for arch, ratio in models:
        points = sorted((c for c in curves if (c["arch"], c["ratio"]) == (arch, ratio)), key=lambda c: c["eps"])
        colour, marker = RATIO_STYLES.get(int(ratio), ("#777777", "*"))
        hollow = ARCH_LINES.get(arch, "-") != "-"  # the dashed architecture gets hollow markers too
        for ax, key in zip(axes, keys):
            ax.plot([p["eps"] for p in points], [100 * p[key] for p in points], ARCH_LINES.get(arch, "-."),
                    color=colour, marker=marker, markevery=3, ms=5, mfc="white" if hollow else colour, lw=1.4,
                    label=f"{arch}, ratio {ratio:g}")
            ax.plot([p["eps"] for p in points if p["chosen"]], [100 * p[key] for p in points if p["chosen"]], "o",
                    ms=11, mfc="none", mec="black", mew=1.5)
    axes[0].axhline(90, color="grey", lw=1, ls=":", label="the rule's target (90%)")
    titles = ("inputs with an exactly-zero gradient (%)\n(strength-selection training images)",
              "clean accuracy (%)\n(strength-selection training images)", "FGSM success (%)\n(test images)")
    for ax, title in zip(axes, titles):
        ax.set_xscale("symlog", linthresh=0.1)
        ax.set_title(title, fontsize=9)
        ax.set_ylim(-3, 103)
    axes[0].set_xlim(0, max(c["eps"] for c in curves))
    fig.supxlabel("GI strength, constant variant (black circle: the strength the rule chose)", fontsize=10)
    fig.legend(*axes[0].get_legend_handles_labels(), fontsize=9, loc="outside right center",
               title="colour + marker = ratio\nline: " + ", ".join(
                   f"{LINE_NAMES[ARCH_LINES.get(a, '-.')]} {a}" for a in dict.fromkeys(a for a, _ in models)),
               title_fontsize=8)
    fig.suptitle(f"{label}: the GI strength trade-off (reconstructed protocol)".lstrip(": "), fontsize=10)
    return fig


def write_reproduction(cells: list[dict], curves: list[dict], out_dir: str | Path, command: str) -> list[Path]:
    """cells.csv, strength_curves.csv, reproduction.png and reproduction.md under out_dir."""
    out_dir = Path(out_dir)
    dataset, variant = cells[0]["dataset"], cells[0]["variant"]
    label = f"{DATASET_NAMES[dataset]} ({variant})"
    paths = [write_csv(cells, out_dir / "cells.csv"), write_csv(curves, out_dir / "strength_curves.csv")]
    reproduction_figure(cells, curves, label).savefig(out_dir / "reproduction.png", dpi=110)
    before, after = average_success(cells, "none"), average_success(cells, "GI")
    half = {d: percent(average_half_width(cells, d)) for d in ("none", "GI")}
    paper_before, paper_after = PAPER_AVERAGE[dataset]
    models = sorted({(c["arch"], c["ratio"]) for c in cells})
    md = [f"# Gradient inhibition, reproduced: {label}", "",
          f"Made by `{command}`. Reconstructed protocol (module docstring of hashrobust/reproduction.py and "
          "docs/protocol.md): the paper's per-network tables are not available, only its averages. Success is the "
          "paper's rate (the prediction changes, attacks aimed at the model's own prediction); robust accuracy, "
          "the standard measure of a defence, is in adaptive.md.", "",
          "## The headline", "",
          "| average attack success | no defence | gradient inhibition |", "|---|---:|---:|",
          f"| the paper (abstract) | {percent(paper_before)}% | {percent(paper_after)}% |",
          f"| this run | {percent(before)}% ± {half['none']} | {percent(after)}% ± {half['GI']} |", "",
          "± is the 95% half-width of the average (normal approximation over the cells).", "",
          f"Averaged over {len({c['attack'] for c in cells})} attacks x {len(models)} networks/ratios "
          f"({', '.join(f'{a} r{r:g}' for a, r in models)}).", "",
          "## GI strength: the rule and what each model needed", "",
          "Rule, fixed before any attack was run: the smallest strength s on the grid of "
          "`defenses.choose_strength` at which at least 90% of the first 1000 training images get an "
          "exactly-zero input gradient (the float32 softmax saturates, so p - y = 0). The authors' default is 0.1.",
          "", "| model | GI strength | clean acc. before | after | zero-gradient inputs before | after | "
          "median logit margin before | after |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for arch, ratio in models:
        pick = {d: next(c for c in cells if (c["arch"], c["ratio"], c["defence"]) == (arch, ratio, d))
                for d in ("none", "GI")}
        md.append(f"| {arch} r{ratio:g} | {pick['GI']['gi_strength']:g} | {percent(pick['none']['clean_acc'])} | "
                  f"{percent(pick['GI']['clean_acc'])} | {percent(pick['none']['zero_grad_fraction'])} | "
                  f"{percent(pick['GI']['zero_grad_fraction'])} | {pick['none']['median_margin']:.1f} | "
                  f"{pick['GI']['median_margin']:.1f} |")
    md += ["", "## Every cell: attack success (%) [95% Wilson interval]", "", "| model | attack | no defence | GI |",
           "|---|---|---:|---:|"]
    for arch, ratio in models:
        for attack in ("FGSM", "BIM", "JSMA-F"):
            pick = {d: next(c for c in cells if (c["arch"], c["ratio"], c["defence"], c["attack"]) ==
                            (arch, ratio, d, attack)) for d in ("none", "GI")}
            md.append(f"| {arch} r{ratio:g} | {attack} | " + " | ".join(
                with_interval(c, "success") for c in (pick["none"], pick["GI"])) + " |")
    md += ["", "![success, clean accuracy, zero-gradient fraction and the strength trade-off](reproduction.png)", "",
           "The full strength trade-off of every model (zero-gradient fraction and clean accuracy on the selection "
           "images, FGSM success on the test images) is in strength_curves.csv.", "",
           "## Read this before quoting the number", "",
           "GI does not make the models robust: it saturates the float32 softmax so that the cross-entropy "
           "gradient is exactly zero and `sign(0) = 0` stops FGSM and BIM (gradient masking, as with defensive "
           "distillation). adaptive.md in this folder attacks the same defended models with losses on the "
           "logits, transfer and a gradient-free attack."]
    (out_dir / "reproduction.md").write_text("\n".join(md) + "\n")
    return [*paths, out_dir / "reproduction.png", out_dir / "reproduction.md"]
