"""The multi-factor analysis: attack success over compression ratio x perturbation size, white-box and transfer.

Paper: Liu et al. (ASP-DAC 2018), abstract ("multi-factor adversarial attack"):
compression (the ratio of a HashedNets model) and input perturbation (eps)
studied jointly, for attackers who know the hashed model (white-box: the
gradient flows through sign * w[bucket]) and for attackers who know only the
dense software model (transfer), and the reverse. The protocol's attack
settings follow the reconstructed protocol (docs/protocol.md §7; cleverhans v2 conventions): BIM with step eps/10
and 40 iterations (0.03 at eps 0.3), PGD with step 2.5 eps / 40, 40 iterations
and a seeded random start (Madry et al. 2018).

`run_analysis` measures; `write_analysis` writes analysis.csv, analysis.md
and one heatmap per architecture; `findings` turns the rows into the
sentences of analysis.md, so the text always says what the numbers show.
"""
from __future__ import annotations

import statistics
from collections.abc import Sequence
from pathlib import Path

import torch
from IPython.display import Markdown
from matplotlib.figure import Figure

from ._validation import check_choice, check_device
from .attacks import BIM, FGSM, PGD
from .data import load_dataset
from .evaluation import paired_difference, sweep, unpack_outcomes, verdict
from .reports import DATASET_NAMES, eps_label, heatmap, markdown_table, percent, rounded, table, write_csv
from .zoo import load_pretrained, standard_entries

__all__ = ["ATTACKS", "EPS_GRID", "MODES", "run_analysis", "paired_cells", "findings", "findings_table", "analysis_heatmap",
           "write_analysis"]

ATTACKS = {
    "FGSM": lambda model, eps: FGSM(model, eps=eps),
    "BIM": lambda model, eps: BIM(model, eps=eps, alpha=eps / 10, steps=40),
    "PGD": lambda model, eps: PGD(model, eps=eps, alpha=2.5 * eps / 40, steps=40, seed=0),
}
EPS_GRID = {
    "mnist": [0.05, 0.1, 0.15, 0.2, 0.25, 0.3],
    "cifar10": [1 / 255, 2 / 255, 4 / 255, 8 / 255, 16 / 255],
}
def run_analysis(dataset: str, n: int = 1000, archs: Sequence[str] | None = None,
                 eps_values: Sequence[float] | None = None, attacks: dict | None = None,
                 device: str | torch.device = "cpu") -> list[dict]:
    """Sweep the zoo's models of `dataset` (every shipped ratio) with FGSM/BIM/PGD, white-box and transfer.

    Args:
        dataset: "mnist" or "cifar10".
        n: the first n test images.
        archs: which architectures of the zoo (default: all shipped for `dataset`).
        eps_values: default EPS_GRID[dataset].
        attacks: default ATTACKS.
        device: torch device for the models and images, e.g. "cpu", "cuda", "cuda:1" (checked first:
            `_validation.check_device`). The rows hold plain numbers whatever the device.

    Returns:
        evaluation.sweep's rows, with twin_ratio=1 (transfer between each hashed model and its dense twin).
    """
    device = check_device(device, "run_analysis")
    entries = [e for e in standard_entries().values() if e["dataset"] == dataset and (archs is None or e["arch"] in archs)]
    models = {(e["arch"], e["ratio"]): load_pretrained(dataset, e["arch"], e["ratio"], device=device)
              for e in sorted(entries, key=lambda e: (e["arch"], e["ratio"]))}
    data = load_dataset(dataset, "test").subset(n).to(device)
    return sweep(models, attacks or ATTACKS, eps_values or EPS_GRID[dataset], data, twin_ratio=1)


def _mean(rows: list[dict], key: str = "success") -> float:
    return statistics.fmean(r[key] for r in rows)


def _outcomes(row: dict):
    return unpack_outcomes(row["success_examples"], row["n"])


def paired_cells(rows: list[dict], arch: str, attack: str, mode: str = "white-box") -> list[dict]:
    """Per (ratio, eps): hashed vs dense success on the same images, as a paired difference with its interval.

    mode "white-box": each hashed model under its own white-box attack against the dense model under its
    own; mode "transfer": on each hashed model, examples transferred from the dense model against its
    own white-box examples (what not knowing the hash costs the attacker, negative when transfer is weaker).

    Returns:
        [{"ratio", "eps", "first", "second" (the two success rates), "difference", "low", "high", "p_value", "n",
        "verdict"}] with `evaluation.paired_difference`'s 95% Agresti-Min interval and exact McNemar p-value;
        [] for rows without per-example outcomes (CSV files written before they were stored).
    """
    mine = [r for r in rows if r["arch"] == arch and r["attack"] == attack]
    if not all(r.get("success_examples") for r in mine):
        return []
    white = {(r["ratio"], r["eps"]): r for r in mine if r["mode"] == "white-box"}
    cells = []
    for (ratio, eps), row in sorted(white.items()):
        if ratio == 1:
            continue
        if mode == "white-box":
            other = white[(1, eps)]
        else:
            other = next(r for r in mine if r["mode"] == "transfer" and r["source_ratio"] == 1
                         and r["ratio"] == ratio and r["eps"] == eps)
            row, other = other, row  # transferred minus white-box, on the same hashed model
        comparison = paired_difference(_outcomes(row), _outcomes(other))
        cells.append({"ratio": ratio, "eps": eps, "first": row["success"], "second": other["success"],
                      **comparison, "verdict": verdict(comparison, "higher", "lower")})
    return cells


def _counted(cells: list[dict]) -> str:
    if not cells:
        return "not testable: these rows carry no per-example outcomes (made before they were stored)"
    higher = sum(c["verdict"] == "higher" for c in cells)
    lower = sum(c["verdict"] == "lower" for c in cells)
    return (f"higher in {higher}, lower in {lower}, no detectable difference in {len(cells) - higher - lower} of "
            f"{len(cells)} (ratio, eps) cells at n = {cells[0]['n']}")


def _summaries(rows: list[dict]) -> list[dict]:
    """Per architecture and attack: the averages over eps and the paired verdicts that `findings` and
    `findings_table` state (white-box dense vs hashed; transfer vs white-box on the same hashed model)."""
    out = []
    for arch in sorted({r["arch"] for r in rows}):
        white = [r for r in rows if r["arch"] == arch and r["mode"] == "white-box"]
        transfer = [r for r in rows if r["arch"] == arch and r["mode"] == "transfer"]
        ratios = sorted({r["ratio"] for r in white if r["ratio"] != 1})
        if not ratios:
            continue
        for attack in sorted({r["attack"] for r in white}):
            per_ratio = {q: _mean([r for r in white if r["attack"] == attack and r["ratio"] == q]) for q in ratios}
            to_hashed = [r for r in transfer if r["attack"] == attack and r["source_ratio"] == 1]
            to_dense = [r for r in transfer if r["attack"] == attack and r["source_ratio"] != 1]
            has_transfer = bool(to_hashed and to_dense)
            out.append({"arch": arch, "attack": attack, "ratios": ratios, "per_ratio": per_ratio,
                        "dense": _mean([r for r in white if r["attack"] == attack and r["ratio"] == 1]),
                        "hashed": statistics.fmean(per_ratio.values()),
                        "white_cells": paired_cells(rows, arch, attack),
                        "to_hashed": _mean(to_hashed) if has_transfer else None,
                        "to_dense": _mean(to_dense) if has_transfer else None,
                        "transfer_cells": paired_cells(rows, arch, attack, "transfer") if has_transfer else None})
    return out


def findings(rows: list[dict]) -> list[str]:
    """Sentences stating what the rows show, per architecture and attack, with paired tests (nothing assumed).

    A difference between two models is called higher or lower only where the 95% interval of the paired
    difference on the same images excludes 0 (`paired_cells`). `findings_table` gives the same in one table.
    """
    lines = []
    for s in _summaries(rows):
        arch, attack, dense, hashed, per_ratio = s["arch"], s["attack"], s["dense"], s["hashed"], s["per_ratio"]
        lines.append(
            f"**{arch}, {attack}, white-box**: averaged over eps, success is {percent(dense)}% on the dense "
            f"model and {percent(hashed)}% on the hashed ones (from {percent(min(per_ratio.values()))}% to "
            f"{percent(max(per_ratio.values()))}% across ratios {', '.join(f'{q:g}' for q in s['ratios'])}). "
            f"Paired on the same images, hashed success is {_counted(s['white_cells'])}.")
        if s["transfer_cells"] is not None:
            lines.append(
                f"**{arch}, {attack}, transfer**: examples crafted on the dense model succeed on the hashed "
                f"models {percent(s['to_hashed'])}% of the time (white-box on those models: "
                f"{percent(hashed)}%); examples crafted on the hashed models succeed on the dense "
                f"one {percent(s['to_dense'])}% of the time (white-box on it: {percent(dense)}%). "
                f"Paired against white-box on the same hashed model, transfer success is "
                f"{_counted(s['transfer_cells'])}: not knowing the hash costs the "
                f"attacker {percent(max(0.0, hashed - s['to_hashed']))} points on average.")
    return lines


def _tally(cells: list[dict] | None) -> str:
    """Paired verdicts as "higher / lower / no difference (of n cells)", or "-" where none could be computed."""
    if not cells:
        return "-"
    higher = sum(c["verdict"] == "higher" for c in cells)
    lower = sum(c["verdict"] == "lower" for c in cells)
    return f"{higher} / {lower} / {len(cells) - higher - lower}"


def findings_table(rows: list[dict]) -> Markdown:
    """`findings` as one short rendered table: a row per architecture and attack, success averaged over eps.

    Columns: white-box success on the dense model and on the hashed ones; the paired verdicts of hashed vs
    dense per (ratio, eps) cell (higher / lower / no detectable difference); transfer success dense -> hashed
    and hashed -> dense; the paired verdicts of transfer vs white-box on the same hashed model; and what not
    knowing the hash costs the attacker (points).

    Example:
        >>> from hashrobust.reports import read_results
        >>> print(findings_table(read_results("mnist", "analysis")).data.splitlines()[2])
        | lenet | BIM | 66.0% | 69.6% | 4 / 0 / 8 | 60.8% | 57.3% | 0 / 10 / 2 | 8.8 |
    """
    return table(["arch", "attack", "white-box: dense", "hashed", "hashed vs dense (higher / lower / same)",
                  "transfer dense -> hashed", "hashed -> dense", "transfer vs white-box (higher / lower / same)",
                  "cost of not knowing the hash (points)"],
                 [[s["arch"], s["attack"], f"{percent(s['dense'])}%", f"{percent(s['hashed'])}%",
                   _tally(s["white_cells"]), f"{percent(s['to_hashed'])}%" if s["to_hashed"] is not None else "-",
                   f"{percent(s['to_dense'])}%" if s["to_dense"] is not None else "-", _tally(s["transfer_cells"]),
                   percent(max(0.0, s["hashed"] - s["to_hashed"])) if s["to_hashed"] is not None else "-"]
                  for s in _summaries(rows)], align="llrrrrrrr")


MODES = {  # title: (which rows, the ratio that labels a row, file-name slug)
    "white-box": (lambda r: r["mode"] == "white-box", "ratio", "whitebox"),
    "transfer dense -> hashed": (lambda r: r["mode"] == "transfer" and r["source_ratio"] == 1, "ratio",
                                 "dense_to_hashed"),
    "transfer hashed -> dense": (lambda r: r["mode"] == "transfer" and r["source_ratio"] != 1, "source_ratio",
                                 "hashed_to_dense"),
}


def _signed(cell: dict) -> str:
    """A paired difference in points, starred where its interval excludes 0."""
    return f"{100 * cell['difference']:+.1f}" + ("*" if cell["low"] > 0 or cell["high"] < 0 else "")


def _eps_fmt(dataset: str):
    return lambda eps: eps_label(dataset, eps)


def analysis_heatmap(rows: Sequence[dict], arch: str, mode: str = "white-box") -> Figure:
    """Attack success over (ratio, eps), one panel per attack, for one architecture and one mode of MODES.

    Rows are `run_analysis` rows, or `reports.read_results(dataset, "analysis")`. The figure's title names
    the dataset variant (the CIFAR-10 stand-in says so).
    """
    keep, row_key, _ = MODES[check_choice(mode, "mode", MODES)]
    archs = sorted({r["arch"] for r in rows})
    rows = [r for r in rows if r["arch"] == arch and keep(r)]
    if not rows:
        raise ValueError(f"No {mode} rows for arch {arch!r}; these rows have archs {archs}.")
    first = rows[0]
    label = DATASET_NAMES[first["dataset"]]
    attacks = list(dict.fromkeys(r["attack"] for r in rows))
    panels = [(attack, [r for r in rows if r["attack"] == attack]) for attack in attacks]
    return heatmap(panels, row_key, "eps", "success", col_fmt=_eps_fmt(first["dataset"]),
                   suptitle=f"{label} ({first['variant']}), {arch}: attack success, {mode}")


def write_analysis(rows: list[dict], out_dir: str | Path, command: str) -> list[Path]:
    """analysis.csv, analysis.md (findings and tables) and heatmap_<arch>_<mode>.png under out_dir."""
    out_dir = Path(out_dir)
    rows = rounded(rows)  # the text then says what analysis.csv says, to the last digit
    written = [write_csv(rows, out_dir / "analysis.csv")]
    first = rows[0]
    label = DATASET_NAMES[first["dataset"]]
    attacks = list(dict.fromkeys(r["attack"] for r in rows))
    md = [f"# Multi-factor analysis: {label} ({first['variant']})", "",
          f"Made by `{command}` on the first {first['n']} test images. Attack success = fraction of "
          "predictions that change (the paper's definition" + ("; robust accuracy, the standard measure, is in "
          "analysis.csv with 95% Wilson intervals for every rate" if "success_low" in first else "; this run predates "
          "the corrected evaluation: no intervals or per-example outcomes, and its robust_acc column used an "
          "inflated definition") + "); white-box attacks backpropagate through the hash, "
          "transfer attacks are crafted on one model and scored on its twin. Settings: FGSM; BIM with step eps/10, "
          "40 iterations; PGD with step 2.5 eps/40, 40 iterations, seeded random start. Reconstructed protocol "
          "(docs/protocol.md): the paper's own tables are not available.", "", "## What the data shows", ""]
    md += [f"- {line}" for line in findings(rows)]
    for arch in sorted({r["arch"] for r in rows}):
        arch_rows = [r for r in rows if r["arch"] == arch]
        clean = {r["ratio"]: r["clean_acc"] for r in arch_rows if r["mode"] == "white-box"}
        md += ["", f"## {arch}", "", "Clean accuracy on these images: " +
               ", ".join(f"ratio {q:g}: {percent(a)}%" for q, a in sorted(clean.items())), ""]
        for mode, (keep, row_key, slug) in MODES.items():
            if not any(keep(r) for r in arch_rows):
                continue
            for attack in attacks:
                cells = [r for r in arch_rows if r["attack"] == attack and keep(r)]
                if cells:
                    md += [f"### {attack}, {mode}: success (%)", "",
                           markdown_table(cells, row_key, "eps", "success", col_fmt=_eps_fmt(first["dataset"])), ""]
                paired = [{**c, "points": _signed(c)} for c in paired_cells(rows, arch, attack)]
                if cells and mode == "white-box" and paired:
                    md += [f"Hashed minus dense, {attack}, in points, paired on the same images (* where the 95% "
                           "interval excludes 0):", "",
                           markdown_table(paired, "ratio", "eps", "points", col_fmt=_eps_fmt(first["dataset"]),
                                          fmt=str), ""]
            path = out_dir / f"heatmap_{arch}_{slug}.png"
            analysis_heatmap(arch_rows, arch, mode).savefig(path, dpi=110)
            written.append(path)
            md += [f"![{arch}: success over ratio and eps, {mode}]({path.name})", ""]
    (out_dir / "analysis.md").write_text("\n".join(md) + "\n")
    return [*written, out_dir / "analysis.md"]
