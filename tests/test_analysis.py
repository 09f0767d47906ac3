"""Reports (tables, CSV, heatmaps) and the analysis write-up, including the data-driven findings."""
import csv

import pytest

import torch

from hashrobust.analysis import analysis_heatmap, findings, paired_cells, write_analysis
from hashrobust.evaluation import pack_outcomes
from hashrobust.reports import markdown_table, percent, pivot, read_csv, read_results, write_csv


def _row(ratio, eps, success, mode="white-box", source_ratio=None, attack="FGSM"):
    return {"dataset": "mnist", "variant": "official", "arch": "mlp3", "ratio": ratio,
            "source_ratio": ratio if source_ratio is None else source_ratio, "mode": mode, "attack": attack,
            "eps": eps, "n": 100, "success": success, "fooling": success, "robust_acc": 1 - success,
            "clean_acc": 0.98, "success_examples": pack_outcomes(torch.arange(100) < round(100 * success)),
            "seconds": 0.1}


def _grid(dense, hashed):
    rows = [_row(1, e, dense) for e in (0.1, 0.3)] + [_row(q, e, hashed) for q in (8, 64) for e in (0.1, 0.3)]
    rows += [_row(q, e, hashed / 2, "transfer", 1) for q in (8, 64) for e in (0.1, 0.3)]
    rows += [_row(1, e, dense / 2, "transfer", q) for q in (8, 64) for e in (0.1, 0.3)]
    return rows


def test_percent_and_pivot():
    assert percent(0.8799) == "88.0" and percent(None) == "-"
    rows = [_row(1, 0.1, 0.5), _row(8, 0.1, 0.25), _row(8, 0.3, 1.0)]
    assert pivot(rows, "ratio", "eps", "success") == ([1, 8], [0.1, 0.3], [[0.5, None], [0.25, 1.0]])


def test_markdown_table_layout():
    table = markdown_table([_row(1, 0.1, 0.5), _row(8, 0.1, 0.25)], "ratio", "eps", "success")
    assert table.splitlines() == ["| ratio | eps 0.1 |", "|---|---:|", "| 1 | 50.0 |", "| 8 | 25.0 |"]


def test_write_csv_round_trips(tmp_path):
    path = write_csv([_row(1, 0.1, 0.123456)], tmp_path / "x" / "rows.csv")
    (row,) = csv.DictReader(open(path))
    assert row["success"] == "0.1235" and row["mode"] == "white-box"
    (back,) = read_csv(path)  # types come back: int, float, str
    assert back["ratio"] == 1 and isinstance(back["ratio"], int) and back["success"] == 0.1235
    assert back["mode"] == "white-box" and back["eps"] == 0.1


def test_read_csv_restores_none_and_bools(tmp_path):
    path = write_csv([{"a": None, "b": True, "c": "PGD-40, CE", "d": 2.5}], tmp_path / "rows.csv")
    assert read_csv(path) == [{"a": None, "b": True, "c": "PGD-40, CE", "d": 2.5}]


def test_read_results_reads_the_committed_files_and_names_the_command():
    rows = read_results("mnist", "analysis")
    assert len(rows) == 468 and {r["mode"] for r in rows} == {"white-box", "transfer"}
    with pytest.raises(FileNotFoundError, match="hashrobust adaptive --dataset nowhere"):
        read_results("nowhere", "adaptive")


def test_analysis_heatmap_panels_and_errors():
    rows = _grid(0.5, 0.6)
    fig = analysis_heatmap(rows, "mlp3", "transfer hashed -> dense")
    panel = fig.axes[0]
    assert panel.get_ylabel() == "source_ratio" and [t.get_text() for t in panel.get_yticklabels()] == ["8", "64"]
    assert "hashed -> dense" in fig._suptitle.get_text() and "official" in fig._suptitle.get_text()
    with pytest.raises(ValueError, match="archs \\['mlp3'\\]"):
        analysis_heatmap(rows, "lenet")
    with pytest.raises(ValueError, match="Unknown mode"):
        analysis_heatmap(rows, "mlp3", "sideways")


@pytest.mark.parametrize("dense, hashed, counts", [
    (0.50, 0.60, "higher in 4, lower in 0, no detectable difference in 0 of 4"),
    (0.50, 0.40, "higher in 0, lower in 4, no detectable difference in 0 of 4"),
    (0.50, 0.51, "higher in 0, lower in 0, no detectable difference in 4 of 4")])
def test_findings_follow_the_paired_numbers(dense, hashed, counts):
    """The same first images succeed on both models, so the discordant pairs are |hashed - dense| x 100."""
    lines = findings(_grid(dense, hashed))
    assert f"{percent(dense)}% on the dense" in lines[0] and f"hashed success is {counts} (ratio, eps) cells" in lines[0]
    assert f"succeed on the hashed models {percent(hashed / 2)}%" in lines[1]
    assert "transfer success is higher in 0, lower in 4" in lines[1]


def test_paired_cells_are_mcnemar_on_the_stored_outcomes():
    cells = paired_cells(_grid(0.5, 0.6), "mlp3", "FGSM")
    assert [(c["ratio"], c["eps"]) for c in cells] == [(8, 0.1), (8, 0.3), (64, 0.1), (64, 0.3)]
    for c in cells:
        assert c["difference"] == pytest.approx(0.1) and (c["only_a"], c["only_b"]) == (10, 0)
        assert c["p_value"] == pytest.approx(2 / 2 ** 10) and c["verdict"] == "higher"


def test_write_analysis_files(tmp_path):
    paths = write_analysis(_grid(0.5, 0.6), tmp_path, "hashrobust analyze --dataset mnist")
    names = {p.name for p in paths}
    assert {"analysis.csv", "analysis.md", "heatmap_mlp3_whitebox.png", "heatmap_mlp3_dense_to_hashed.png",
            "heatmap_mlp3_hashed_to_dense.png"} == names
    text = (tmp_path / "analysis.md").read_text()
    assert "## What the data shows" in text and "hashed success is higher in 4" in text
    assert "| 8 | +10.0* | +10.0* |" in text  # the paired table: hashed minus dense, significant
    assert "### FGSM, white-box: success (%)" in text and "| 64 | 60.0 | 60.0 |" in text
    assert (tmp_path / "heatmap_mlp3_whitebox.png").read_bytes()[:4] == b"\x89PNG"


def test_rows_without_per_example_outcomes_make_no_paired_claim():
    rows = [{k: v for k, v in r.items() if k != "success_examples"} for r in _grid(0.5, 0.6)]
    assert paired_cells(rows, "mlp3", "FGSM") == []
    line = findings(rows)[0]
    assert "not testable: these rows carry no per-example outcomes" in line and "higher in" not in line


# --- reports.table: the notebooks' rendered tables ---------------------------------------------------------------

def test_table_renders_markdown_with_alignment_and_escapes_pipes():
    from hashrobust.reports import table
    rendered = table(["attack", "success", "note"], [["FGSM", "99.2%", "a|b"], ["BIM", 1.0, ""]], align="lrl")
    assert rendered.data.splitlines() == ["| attack | success | note |", "|:---|---:|:---|",
                                          "| FGSM | 99.2% | a\\|b |", "| BIM | 1.0 |  |"]
    assert rendered._repr_markdown_() == rendered.data  # what Jupyter renders, as a table


@pytest.mark.parametrize("header, rows, align, message", [
    (["a", "b"], [["1", "2", "3"]], None, "a row has 3 cells for 2 columns"),
    (["a", "b"], [["1", "2"]], "lc", "align must give 'l' or 'r' for each of the 2 columns"),
    (["a", "b"], [["1", "2"]], "l", "align must give 'l' or 'r' for each of the 2 columns"),
])
def test_table_rejects_rows_and_alignments_that_do_not_fit(header, rows, align, message):
    from hashrobust.reports import table
    with pytest.raises(ValueError, match=message):
        table(header, rows, align)


def test_findings_table_states_what_the_findings_sentences_state():
    from hashrobust.analysis import findings_table
    rows = read_results("mnist", "analysis")
    sentences = findings(rows)
    body = findings_table(rows).data.splitlines()[2:]
    assert len(body) == len({(r["arch"], r["attack"]) for r in rows})
    for line in body:
        arch, attack, dense, hashed, tally, to_hashed, to_dense, transfer_tally, cost = line.strip("| ").split(" | ")
        white = next(s for s in sentences if s.startswith(f"**{arch}, {attack}, white-box**"))
        assert f"success is {dense} on the dense model and {hashed} on the hashed ones" in white
        higher, lower, same = (int(x) for x in tally.split(" / "))
        assert f"higher in {higher}, lower in {lower}, no detectable difference in {same} of" in white
        moved = next(s for s in sentences if s.startswith(f"**{arch}, {attack}, transfer**"))
        assert f"succeed on the hashed models {to_hashed} of the time" in moved and f"costs the attacker {cost} points" in moved
