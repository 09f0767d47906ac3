"""The reproduction and adaptive pipelines end to end on one small model, and their reports."""
import pytest
import torch

from hashrobust.adaptive import Temperature, evaluate_adaptive, write_adaptive
from hashrobust.reproduction import PAPER_AVERAGE, reproduce, write_reproduction
from hashrobust.zoo import load_pretrained


@pytest.fixture(scope="module")
def reproduced():
    return reproduce("mnist", n=100, jsma_images=1, models=[("mlp3", 8)])


@pytest.fixture(scope="module")
def adaptive_rows():
    return evaluate_adaptive("mnist", n=60, n_cw=10, jsma_images=1, models=[("mlp3", 1)], n_curve=30)


def test_reproduction_cells_show_the_papers_effect(reproduced):
    cells, curves = reproduced
    assert {(c["defence"], c["attack"]) for c in cells} == {
        (d, a) for d in ("none", "GI") for a in ("FGSM", "BIM", "JSMA-F")}
    success = {(c["defence"], c["attack"]): c["success"] for c in cells}
    assert success["none", "FGSM"] > 0.9 and success["GI", "FGSM"] < 0.15
    assert success["none", "JSMA-F"] > 0.8 and success["GI", "JSMA-F"] == 0  # 9 pairs
    gi = next(c for c in cells if c["defence"] == "GI")
    assert gi["zero_grad_fraction"] >= 0.85 and gi["gi_strength"] > 0
    assert [p["eps"] for p in curves] == sorted(p["eps"] for p in curves)  # one curve, the whole grid
    assert curves[0]["eps"] == 0 and curves[0]["fgsm_success"] > 0.9 and curves[-1]["fgsm_success"] < 0.1


def test_reproduction_report(reproduced, tmp_path):
    cells, curves = reproduced
    paths = write_reproduction(cells, curves, tmp_path, "hashrobust reproduce --dataset mnist")
    assert {p.name for p in paths} == {"cells.csv", "strength_curves.csv", "reproduction.png", "reproduction.md"}
    text = (tmp_path / "reproduction.md").read_text()
    assert f"| the paper (abstract) | {100 * PAPER_AVERAGE['mnist'][0]:.1f}% | {100 * PAPER_AVERAGE['mnist'][1]:.1f}% |" in text
    assert "| this run |" in text and "| mlp3 r8 | FGSM |" in text and "adaptive.md" in text


def test_temperature_keeps_predictions_and_unsaturates_the_softmax():
    model = load_pretrained("mnist", "mlp3", 1)
    hot = Temperature(model, 1000.0)
    images = torch.rand(4, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(model(images).argmax(1), hot(images).argmax(1))
        assert hot(images).softmax(1).max() < 0.2


def test_adaptive_attacks_restore_the_undefended_success(adaptive_rows):
    rows = [r for r in adaptive_rows if r["attack"] != "PGD-40, margin (eps curve)"]
    success = {(r["defence"], r["attack"]): r["success"] for r in rows}
    robust = {(r["defence"], r["attack"]): r["robust_acc"] for r in rows}
    assert success["GI", "FGSM, CE (the paper's)"] < 0.1
    for attack in ("PGD-40, margin", "FGSM, CE on logits/1000", "Square, margin, 1000 queries", "APGD-DLR, 100 steps"):
        assert success["GI", attack] >= 0.9 * success["none", attack], attack
    assert success["GI", "JSMA-F (softmax Jacobian)"] == 0 and success["GI", "JSMA-Z (logit Jacobian)"] > 0.8
    # the lesson of notebook 06: cross-entropy defaults report GI robust, DLR and the ensemble do not
    assert robust["GI", "APGD-CE, 100 steps"] > 0.5 > 0.05 >= robust["GI", "APGD-DLR, 100 steps"]
    assert robust["GI", "AutoAttack-grade ensemble (APGD-CE, APGD-T, Square 5000)"] <= 0.05
    # unbounded and eps-growing attacks reach 100%
    assert success["none", "C&W L2 (9 binary-search steps)"] >= 0.99 and success["GI", "C&W L2 (9 binary-search steps)"] >= 0.99
    curve = [r for r in adaptive_rows if r["attack"] == "PGD-40, margin (eps curve)"]
    assert all(r["success"] == 1 for r in curve if r["eps"] == 1.0) and len({r["eps"] for r in curve}) == 6
    for r in rows:
        if r["robust_acc"] is not None:
            assert r["robust_acc"] <= r["clean_acc"], r["attack"]


def test_adaptive_report(adaptive_rows, tmp_path):
    write_adaptive(adaptive_rows, tmp_path, "hashrobust adaptive --dataset mnist")
    text = (tmp_path / "adaptive.md").read_text()
    assert "## Carlini et al. 2019, item by item, for GI" in text
    assert "so GI adds no meaningful robustness" in text
    assert "| mlp3 r1 | GI | 0.35 |" in text  # the rule's strength for the shipped mlp3 r1
    assert "## What off-the-shelf defaults report" in text and "Apply EOT to randomised defences" in text


# ----------------------------------------------------------------------------- the notebooks' helpers (05, 06)
def test_reproduction_and_strength_figures_from_the_committed_results():
    from hashrobust.reports import read_results
    from hashrobust.reproduction import reproduction_figure, strength_figure

    cells, curves = read_results("mnist", "cells"), read_results("mnist", "strength_curves")
    assert len(reproduction_figure(cells, curves, "MNIST (official)").axes) == 4
    fig = strength_figure(curves, "MNIST (official)")
    assert len(fig.axes) == 3
    models = {(c["arch"], c["ratio"]) for c in curves}
    assert len(fig.axes[0].lines) == 2 * len(models) + 1  # a curve and its chosen point per model, the target


@pytest.mark.parametrize("dataset", ["mnist", "cifar10"])
def test_adaptive_summaries_match_the_committed_report(dataset):
    from hashrobust.adaptive import checklist_markdown, defaults_table, success_by_attack, worst_case_by_model
    from hashrobust.reports import RESULTS, read_results

    rows = read_results(dataset, "adaptive")
    report = (RESULTS / dataset / "adaptive.md").read_text()
    for row in success_by_attack(rows) + defaults_table(rows):
        assert f"| {row['attack']} | {100 * row['none']:.1f} | {100 * row['GI']:.1f} |" in report
    for row in worst_case_by_model(rows):
        assert row["worst"] <= row["ensemble"] <= row["clean_acc"]
        assert f"| {row['arch']} r{row['ratio']:g} | {row['defence']} | {row['gi_strength']:g} |" in report
    assert checklist_markdown(rows) in report


def test_run_attacks_scores_each_attack_like_transfer():
    from hashrobust.adaptive import run_attacks
    from hashrobust.attacks import FGSM
    from hashrobust.data import load_dataset
    from hashrobust.evaluation import success_rate, transfer

    model, twin = load_pretrained("mnist", "mlp3", 1), load_pretrained("mnist", "mlp3", 8)
    test = load_dataset("mnist").subset(20)
    rows = run_attacks(model, {"own": lambda m: FGSM(m, eps=0.1), "twin": lambda m: FGSM(twin, eps=0.1)},
                       test.images, test.labels)
    assert [r["attack"] for r in rows] == ["own", "twin"]
    own = success_rate(model, FGSM(model, eps=0.1), test.images, test.labels)
    assert {k: v for k, v in rows[0].items() if k not in ("attack", "robust_examples")} == own
    assert rows[1]["robust_acc"] == transfer(twin, model, FGSM(twin, eps=0.1), test.images, test.labels)["robust_acc"]


def test_evaluate_adaptive_end_to_end_on_a_small_subset_has_the_committed_columns(one_thread):
    """Same columns as the committed report; and the attacks it does not run twice (the ensemble's APGD-CE,
    seed 0 of the restarts, the eps curve at the study's eps, the transfer source's PGD) give what running
    them afresh gives."""
    from hashrobust.attacks import PGD
    from hashrobust.data import load_dataset
    from hashrobust.evaluation import robust_accuracy, success_rate, transfer, unpack_outcomes
    from hashrobust.reports import read_results
    from hashrobust.reproduction import SELECTION, defend_by_rule

    rows = evaluate_adaptive("mnist", n=20, n_cw=5, jsma_images=1, models=[("mlp3", 64)])
    committed = read_results("mnist", "adaptive")
    assert [list(r) for r in rows] == [list(r) for r in committed[:len(rows)]]  # same columns, same order
    assert [r["attack"] for r in rows] == [r["attack"] for r in committed[:len(rows)]]
    gi = {r["attack"]: r for r in rows if r["defence"] == "GI"}
    assert gi["FGSM, CE (the paper's)"]["gi_strength"] == 1.25  # the rule's pick, as in results/mnist
    assert gi["PGD-40, margin"]["success"] >= 0.9 > gi["FGSM, CE (the paper's)"]["success"]

    model = load_pretrained("mnist", "mlp3", 64)
    defended, strength, _ = defend_by_rule(model, load_dataset("mnist", "train").subset(SELECTION))
    test = load_dataset("mnist").subset(20)
    images, labels = test.images, test.labels
    for defence, m in (("none", model), ("GI", defended)):
        mine = {r["attack"]: r for r in rows if r["defence"] == defence and r["eps"] == 0.3}
        ensemble = robust_accuracy(m, images, labels, 0.3, preset="standard")["robust"]
        assert torch.equal(unpack_outcomes(mine["AutoAttack-grade ensemble (APGD-CE, APGD-T, Square 5000)"]
                                           ["robust_examples"], 20), ensemble)
        seeds = [(k, PGD(m, eps=0.3, alpha=2.5 * 0.3 / 40, steps=40, seed=k, loss="margin")) for k in range(5)]
        restarts = robust_accuracy(m, images, labels, 0.3, attacks=seeds)["robust"]
        assert torch.equal(unpack_outcomes(mine["PGD-40, margin, 5 restarts"]["robust_examples"], 20), restarts)
        curve = next(r for r in rows if r["defence"] == defence and r["attack"] == "PGD-40, margin (eps curve)"
                     and r["eps"] == 0.3)
        fresh = success_rate(m, seeds[0][1], images, labels)
        assert (curve["success"], curve["robust_acc"]) == (fresh["success"], fresh["robust_acc"])
        moved = transfer(model, m, PGD(model, eps=0.3, alpha=2.5 * 0.3 / 40, steps=40, seed=0, loss="margin"),
                         images, labels)
        row = mine["transfer: PGD-40 margin from the undefended model"]
        assert (row["success"], row["robust_acc"]) == (moved["success"], moved["robust_acc"])
