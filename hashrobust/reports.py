"""Tidy rows out: CSV files, markdown tables and heatmaps (used by `hashrobust analyze` and the notebooks).

Rows are the plain dicts that evaluation.sweep returns. Figures are built
with `matplotlib.figure.Figure` (no pyplot state), in a colour-blind-safe
colour map (viridis), with every cell's number printed on it, so they read
the same in a notebook, on a web page and in print.
"""
from __future__ import annotations

import csv
import os
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

from IPython.display import Markdown
from matplotlib.figure import Figure

from .data import shipped_path

__all__ = ["RESULTS", "DATASET_NAMES", "OKABE_ITO", "table", "rounded", "eps_label", "write_csv", "read_csv", "read_results", "pivot", "markdown_table", "heatmap", "percent",
           "with_interval"]

# The one palette of every line, bar and category (Okabe & Ito 2008): eight colours that colour-blind readers tell
# apart. Figures pair a colour with a marker or line style, so no two series differ by colour alone; heatmaps of
# a number use viridis (sequential, also safe) and write the number in each cell.
OKABE_ITO = {"orange": "#E69F00", "sky blue": "#56B4E9", "green": "#009E73", "yellow": "#F0E442",
             "blue": "#0072B2", "vermillion": "#D55E00", "purple": "#CC79A7", "black": "#000000"}

RESULTS = shipped_path("results")  # the committed results/<dataset>/ (an installed package: its own copy)
DATASET_NAMES = {"mnist": "MNIST", "cifar10": "CIFAR-10"}  # how reports and figure titles name a dataset


def percent(value: float | None) -> str:
    """0.8799 -> '88.0'; None -> '-'."""
    return "-" if value is None else f"{100 * value:.1f}"


def with_interval(row: dict, key: str, sign: str = "") -> str:
    """A rate of a row with its 95% interval (`key`, `key_low`, `key_high`) in percent, for tables.

    Example:
        >>> with_interval({"robust_acc": 0.925, "robust_acc_low": 0.907, "robust_acc_high": 0.939}, "robust_acc")
        '92.5 [90.7, 93.9]'
        >>> with_interval({"success": 0.8, "success_low": 0.739, "success_high": 0.85}, "success", sign="%")
        '80.0% [73.9, 85.0]'
    """
    return f"{percent(row[key])}{sign} [{percent(row[key + '_low'])}, {percent(row[key + '_high'])}]"


def eps_label(dataset: str, eps: float) -> str:
    """An L-inf radius as the reports write it: MNIST 0.3 -> '0.3'; CIFAR-10 8/255 -> '8/255'."""
    return f"{eps * 255:.0f}/255" if dataset == "cifar10" else f"{eps:g}"


def rounded(rows: Sequence[dict]) -> list[dict]:
    """The rows as `write_csv` stores them (floats rounded to 4 digits), so that a report's text computed
    from them equals the same text recomputed from the CSV file."""
    return [{k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()} for row in rows]


def write_csv(rows: Sequence[dict], path: str | os.PathLike) -> Path:
    """Write rows (dicts with the same keys) to a CSV file, floats rounded to 4 digits."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rounded(rows))
    return path


def _value(text: str) -> object:
    """A CSV field back to what `write_csv` wrote: '' -> None, 'True'/'False' -> bool, '3' -> 3, '0.5' -> 0.5."""
    if text == "":
        return None
    if text in ("True", "False"):
        return text == "True"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def read_csv(path: str | os.PathLike) -> list[dict]:
    """The rows of a CSV file written by `write_csv`: numbers as int or float, empty fields as None."""
    with open(path, newline="") as f:
        return [{k: _value(v) for k, v in row.items()} for row in csv.DictReader(f)]


def read_results(dataset: str, name: str) -> list[dict]:
    """The rows of the committed results/<dataset>/<name>.csv (e.g. "mnist", "analysis"), as `read_csv`.

    Example:
        >>> rows = read_results("mnist", "cells")
        >>> sorted({row["defence"] for row in rows})
        ['GI', 'none']
    """
    path = RESULTS / dataset / f"{name}.csv"
    if not path.is_file():
        made_by = {"analysis": "analyze", "cells": "reproduce", "strength_curves": "reproduce", "adaptive": "adaptive",
                   "adversarial_training": "at-eval", "at_eps_curves": "at-eval"}
        if name.startswith("shootout-"):  # shootout-<arch>-<training>
            arch, training = name.split("-", 2)[1:]
            command = f"hashrobust shootout --arch {arch}" + ("" if training == "standard" else f" --training {training}")
        else:
            command = f"hashrobust {made_by.get(name, '<command>')} --dataset {dataset}"
        raise FileNotFoundError(f"No {path}: run `{command}` (or `make results-{dataset}`) to make it.")
    return read_csv(path)


def table(header: Sequence[str], rows: Iterable[Sequence[object]], align: str | None = None) -> Markdown:
    """A table the notebook renders (Markdown), instead of columns printed with f-strings.

    Args:
        header: the column titles.
        rows: one sequence of cells per row, already formatted as the reader should see them (str() of
            anything else); a "|" inside a cell is escaped.
        align: one letter per column, "l" or "r" (default: the first column left, the others right).

    Example:
        >>> print(table(["model", "accuracy"], [["mlp3 r8", "97.8%"]]).data)
        | model | accuracy |
        |:---|---:|
        | mlp3 r8 | 97.8% |
    """
    header = list(header)
    align = align or "l" + "r" * (len(header) - 1)
    if len(align) != len(header) or set(align) - {"l", "r"}:
        raise ValueError(f"table: align must give 'l' or 'r' for each of the {len(header)} columns; got {align!r}")
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(":---" if a == "l" else "---:" for a in align) + "|"]
    for row in rows:
        cells = [str(cell).replace("|", "\\|") for cell in row]
        if len(cells) != len(header):
            raise ValueError(f"table: a row has {len(cells)} cells for {len(header)} columns: {cells}")
        lines.append("| " + " | ".join(cells) + " |")
    return Markdown("\n".join(lines))


def pivot(rows: Iterable[dict], row_key: str, col_key: str, value: str) -> tuple[list, list, list[list]]:
    """(row labels, column labels, values[row][col]) from tidy rows; a missing cell is None."""
    rows = list(rows)
    row_labels = sorted({r[row_key] for r in rows})
    col_labels = sorted({r[col_key] for r in rows})
    cells = {(r[row_key], r[col_key]): r[value] for r in rows}
    return row_labels, col_labels, [[cells.get((a, b)) for b in col_labels] for a in row_labels]


def markdown_table(rows: Iterable[dict], row_key: str, col_key: str, value: str,
                   fmt: Callable[[float | None], str] = percent, row_name: str | None = None,
                   col_fmt: Callable[[object], str] = lambda c: f"{c:g}" if isinstance(c, float) else str(c)) -> str:
    """A markdown table of `value` with one row per `row_key` and one column per `col_key`."""
    row_labels, col_labels, values = pivot(rows, row_key, col_key, value)
    head = f"| {row_name or row_key} | " + " | ".join(f"{col_key} {col_fmt(c)}" for c in col_labels) + " |"
    rule = "|---|" + "---:|" * len(col_labels)
    body = [f"| {a:g} | " if isinstance(a, float) else f"| {a} | " for a in row_labels]
    body = [head_cell + " | ".join(fmt(v) for v in line) + " |" for head_cell, line in zip(body, values)]
    return "\n".join([head, rule, *body])


def heatmap(panels: Sequence[tuple[str, Sequence[dict]]], row_key: str, col_key: str, value: str,
            suptitle: str, col_fmt: Callable[[float], str] = lambda c: f"{c:g}") -> Figure:
    """One heatmap panel per (title, rows): `value` in percent over (row_key, col_key), numbers printed."""
    fig = Figure(figsize=(3.6 * len(panels), 3.4), layout="constrained")
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, (title, rows) in zip(axes, panels):
        row_labels, col_labels, values = pivot(rows, row_key, col_key, value)
        grid = [[float("nan") if v is None else 100 * v for v in line] for line in values]
        image = ax.imshow(grid, vmin=0, vmax=100, cmap="viridis", aspect="auto", origin="lower")
        for i, line in enumerate(grid):
            for j, v in enumerate(line):
                ax.text(j, i, f"{v:.0f}", ha="center", va="center", fontsize=8,
                        color="black" if v > 60 else "white")
        ax.set_xticks(range(len(col_labels)), [col_fmt(c) for c in col_labels], rotation=45)
        ax.set_yticks(range(len(row_labels)), [f"{r:g}" for r in row_labels])
        ax.set_xlabel(col_key)
        ax.set_ylabel(row_key)
        ax.set_title(title, fontsize=10)
    fig.colorbar(image, ax=list(axes), label=f"{value} (%)", shrink=0.9)
    fig.suptitle(suptitle, fontsize=10)
    return fig
