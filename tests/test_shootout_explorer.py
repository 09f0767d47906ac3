"""The shoot-out explorer of notebook 08 and its figure, on hand-made rows (no model, no data, no CSV).

The rows have the columns of `shootout.run_shootout`; every number is chosen so that a readout or a bar
can only come from the row it belongs to.
"""
from __future__ import annotations

import pytest
from matplotlib.container import BarContainer

from hashrobust.widgets import SHOOTOUT_METRICS, ShootoutExplorer, shootout_figure

ATTACKS = ("FGSM", "PGD-40", "transfer: PGD-40 from the dense model", "ensemble (standard)")
METHODS = ("hashed", "pruned", "quantized", "small dense")


def _row(method: str, ratio: float, attack: str, clean: float, success: float | None, robust: float) -> dict:
    rates = {"clean_acc": clean, "success": success, "robust_acc": robust}
    row = {"dataset": "mnist", "arch": "mlp3", "training": "standard", "ratio_target": ratio, "method": method,
           "eps": 0.1, "ratio": 1.0 if ratio == 1 else ratio - 0.01 * METHODS.index(method),
           "ratio_all": 1.0 if ratio == 1 else ratio / 2, "index_bits": 0, "codebook_bits": 0, "attack": attack,
           "n": 1000}
    for key, value in rates.items():
        row.update({key: value, f"{key}_low": None if value is None else value - 0.01,
                    f"{key}_high": None if value is None else value + 0.02})
    return row


def _rows() -> list[dict]:
    """Clean accuracy 0.9 + ratio/1000 + method/100; success and robust accuracy likewise, per attack."""
    rows = [_row("dense", 1, a, 0.98, None if a.startswith("ensemble") else 0.5 + i / 10, 0.1 * i)
            for i, a in enumerate(ATTACKS)]
    for ratio in (8, 64):
        for m, method in enumerate(METHODS):
            attacks = (("FGSM through the rounding (masked)",) if method == "quantized" else ()) + ATTACKS
            for i, attack in enumerate(attacks):
                success = None if attack.startswith("ensemble") else 0.3 + i / 10 + m / 100 + ratio / 1000
                rows.append(_row(method, ratio, attack, 0.9 + ratio / 1000 + m / 100, success,
                                 0.05 * i + m / 100 + ratio / 1000))
    return rows


@pytest.fixture
def rows():
    return _rows()


def test_readout_gives_the_selected_rows_numbers(rows):
    explorer = ShootoutExplorer(rows)
    values = explorer.state["values"]
    assert (explorer.state["ratio"], explorer.state["method"]) == (8, "hashed")
    assert values["clean accuracy"]["value"] == pytest.approx(0.908)
    assert values["PGD-40 white-box success"]["value"] == pytest.approx(0.408)  # the 2nd attack, not FGSM
    assert values["PGD-40 transfer from dense"]["value"] == pytest.approx(0.508)
    assert values["ensemble robust accuracy"] == pytest.approx({"value": 0.158, "low": 0.148, "high": 0.178})
    assert explorer.readout.value == (
        "hashed at storage ratio 8 (8.0 on values, 4.0 counting indices and codebooks): clean accuracy 90.8%; "
        "PGD-40 white-box success 40.8%; PGD-40 transfer from dense 50.8%; ensemble robust accuracy 15.8%")


def test_set_moves_the_budget_and_the_method(rows):
    explorer = ShootoutExplorer(rows)
    explorer.set(ratio=64, method="quantized")
    values = explorer.state["values"]
    assert (explorer.state["ratio"], explorer.state["method"]) == (64, "quantized")
    assert values["clean accuracy"]["value"] == pytest.approx(0.984)
    # the quantised model's first row is the masked FGSM: PGD-40 is its 3rd attack, the ensemble its 5th
    assert values["PGD-40 white-box success"]["value"] == pytest.approx(0.3 + 0.2 + 0.02 + 0.064)
    assert values["ensemble robust accuracy"]["value"] == pytest.approx(0.2 + 0.02 + 0.064)
    assert explorer.state["storage_ratio"] == pytest.approx(63.98) and explorer.state["ratio_all"] == 32
    assert "quantized at storage ratio 64 (64.0 on values, 32.0 counting" in explorer.readout.value
    assert [value for _, value in explorer.sliders["ratio"].options] == [8, 64]  # the dense ratio 1 is no budget
    assert list(explorer.sliders["method"].options) == list(METHODS)


def test_bad_settings_name_what_is_allowed(rows):
    explorer = ShootoutExplorer(rows)
    with pytest.raises(ValueError, match="must be one of hashed, pruned, quantized, small dense. Got 'dense' "
                                         "instead."):
        explorer.set(method="dense")
    with pytest.raises(ValueError, match="must be one of 8, 64. Got 16 instead."):
        explorer.set(ratio=16)
    with pytest.raises(ValueError, match="Unknown method 'binarised'; choose one of: hashed, pruned, quantized, "
                                         "small dense."):
        ShootoutExplorer(rows, method="binarised")
    with pytest.raises(ValueError, match="must be one of 8, 64 .* Got 32 instead."):
        ShootoutExplorer(rows, ratio=32)
    with pytest.raises(ValueError, match="one shoot-out run"):
        ShootoutExplorer(rows + [{**rows[-1], "training": "pgd-at"}])
    with pytest.raises(ValueError, match="The 'ratio' of shootout_figure must be one of 8, 64"):
        shootout_figure(rows, 16, "pruned")
    with pytest.raises(ValueError, match="no 'small dense' row at ratio 64 for attack 'ensemble'"):
        shootout_figure([r for r in rows if not (r["method"] == "small dense" and r["attack"].startswith("ens"))],
                        64, "hashed")


def test_the_figure_has_one_bar_group_per_method_and_the_selected_numbers(rows):
    fig = shootout_figure(rows, 64, "pruned")
    (ax,) = fig.axes
    ticks = [t.get_text().split("\n")[0] for t in ax.get_xticklabels()]
    assert ticks == ["dense", *METHODS]  # one group per method, the dense reference first
    assert ax.get_xticklabels()[2].get_text() == "pruned\n64.0x on values, 32.0x all"
    bars = [c for c in ax.containers if isinstance(c, BarContainer)]
    assert [c.get_label() for c in bars] == [label for label, _, _ in SHOOTOUT_METRICS]
    assert all(len(c) == 5 for c in bars)
    heights = [c[2].get_height() for c in bars]  # the pruned group
    assert heights == pytest.approx([97.4, 47.4, 57.4, 22.4])
    assert [c[1].get_height() for c in bars][0] == pytest.approx(96.4)  # hashed at 64: its own clean accuracy
    assert [c[0].get_height() for c in bars] == pytest.approx([98, 60, 70, 30])  # dense, at ratio 1
    assert {c[2].get_alpha() for c in bars} == {1.0} and {c[1].get_alpha() for c in bars} == {0.35}
    printed = [t.get_text() for t in ax.texts if t.get_text()]
    assert printed == ["97.4", "47.4", "57.4", "22.4"]  # only the selected method's bars are numbered


def test_show_displays_the_png_first_and_redraws_on_a_move(rows, displayed):
    explorer = ShootoutExplorer(rows)
    explorer.show()
    (image, _, handle), (controls, _, _) = displayed
    assert image.data.startswith(b"\x89PNG\r\n\x1a\n") and controls is explorer.controls
    explorer.set(method="small dense")
    (new_image,) = handle.updates
    assert new_image.data.startswith(b"\x89PNG") and new_image.data != image.data
