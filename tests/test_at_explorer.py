"""Notebook 07's explorer (widgets.RobustnessCurveExplorer) and the figures of adversarial_study, on hand-made curves."""
import pytest

from hashrobust.adversarial_study import eps_curve_figure, training_curve_figure
from hashrobust.widgets import RobustnessCurveExplorer


def _curves(dataset="mnist", eps_values=(0.1, 0.2, 0.3)):
    models = [(1, "standard", (0.6, 0.1, 0.0)), (1, "pgd-at", (0.97, 0.95, 0.9)), (8, "pgd-at", (0.96, 0.93, 0.88))]
    return [{"dataset": dataset, "arch": "lenet", "ratio": ratio, "training": training, "eps": eps, "n": 100,
             "robust_acc": acc, "robust_acc_low": max(0.0, acc - 0.05), "robust_acc_high": min(1.0, acc + 0.05)}
            for ratio, training, accs in models for eps, acc in zip(eps_values, accs)]


def test_the_explorer_starts_at_the_trained_radius_and_reads_out_every_model():
    explorer = RobustnessCurveExplorer(_curves())
    assert explorer.sliders["eps"].value == 0.3
    assert explorer.readout.value == ("eps 0.3, robust accuracy: undefended 0.0%; PGD-AT 90.0%; "
                                      "PGD-AT, hashed r8 88.0%")
    explorer.set(eps=0.1)
    assert [r["robust_acc"] for r in explorer.state["rows"]] == [0.6, 0.97, 0.96]
    assert "undefended 60.0%" in explorer.readout.value


def test_the_slider_offers_only_the_computed_radii():
    explorer = RobustnessCurveExplorer(_curves())
    with pytest.raises(ValueError, match=r"must be one of 0\.1, 0\.2, 0\.3\. Got 0\.15 instead"):
        explorer.set(eps=0.15)


def test_cifar10_radii_read_in_255ths_and_the_default_is_the_largest_when_8_255_is_missing():
    explorer = RobustnessCurveExplorer(_curves("cifar10", (2 / 255, 4 / 255, 16 / 255)))
    assert [label for label, _ in explorer.sliders["eps"].options] == ["2/255", "4/255", "16/255"]
    assert explorer.sliders["eps"].value == 16 / 255


def test_no_curves_is_a_clear_error():
    with pytest.raises(ValueError, match="non-empty list of eps_curves rows"):
        RobustnessCurveExplorer([])


def test_the_curve_figure_draws_one_line_per_model_and_marks_eps():
    fig = eps_curve_figure(_curves(), eps=0.2)
    ax = fig.axes[0]
    lines = [line for line in ax.get_lines() if line.get_label() and not line.get_label().startswith("_")]
    assert [line.get_label() for line in lines] == ["undefended", "PGD-AT", "PGD-AT, hashed r8"]
    assert list(lines[1].get_ydata()) == [0.97, 0.95, 0.9]
    assert any(list(line.get_xdata()) == [0.2, 0.2] for line in ax.get_lines())  # the vertical line at eps
    assert lines[2].get_linestyle() == "--"  # hashed models dashed


def test_the_training_curve_figure_plots_each_history_per_epoch():
    fig = training_curve_figure({"fgsm-at": [0.3, 0.2], "pgd-at": [0.5, 0.9, 0.95]}, "t")
    lines = fig.axes[0].get_lines()
    assert [list(line.get_xdata()) for line in lines] == [[1, 2], [1, 2, 3]]
    assert [line.get_label() for line in lines] == ["fast FGSM-AT", "PGD-AT"]
