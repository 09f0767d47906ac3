"""Tests for hashrobust.adversarial_study and `hashrobust at-eval`: evaluate_model on the PGD-AT, fast-FGSM-AT and
GI models of the zoo (the masking signals silent on a robust model, loud on GI; the rates' invariants), the signals'
thresholds on hand-made rows, the paired hashing comparison, the eps curves, the written report, and the command."""
from __future__ import annotations

import shlex

import pytest
import torch

from hashrobust.adversarial_study import (ANCHORS, CE_GAP_SIGNAL, EPS, SQUARE_SIGNAL, _load,
                                          adversarial_training_markdown, eps_curves, evaluate_model,
                                          hashing_under_at, masking_signals, write_adversarial_training)
from hashrobust.cli import main
from hashrobust.evaluation import pack_outcomes, paired_difference, unpack_outcomes, wilson_interval
from hashrobust.reports import read_csv

pytestmark = pytest.mark.usefixtures("one_thread")
N = 30  # test images for the real evaluations: seconds per model with preset="course"
CPU = torch.device("cpu")
RATES = ("clean_acc", "fgsm_robust_acc", "pgd_robust_acc", "robust_acc")


@pytest.fixture(scope="module")
def test_images(mnist_test):
    """The first N test images: the ones evaluate_adversarial_training and eps_curves take for n=N."""
    return mnist_test.subset(N)


@pytest.fixture(scope="module")
def rows(test_images):
    """evaluate_model on the PGD-AT lenet, fast-FGSM-AT lenet (catastrophically overfitted) and GI on the standard
    lenet, at MNIST's trained radius 0.3, with the course ensemble."""
    found = {}
    for training in ("pgd-at", "fgsm-at", "GI"):
        model = _load("mnist", "lenet", 1, training, CPU)
        found[training] = evaluate_model(model, test_images.images, test_images.labels, EPS["mnist"], preset="course")
    return found


def _count(row, key):
    """A rate back to its number of examples (apgd_*_robust_acc are float32 means, a few ulps off k/n)."""
    value = row[key] * row["n"]
    assert value == pytest.approx(round(value), abs=1e-4)
    return round(value)


# ----------------------------------------------------------------------------- evaluate_model on the zoo
def test_pgd_at_lenet_is_robust_and_no_masking_signal_fires(rows):
    row = rows["pgd-at"]
    assert row["signals"] == "none" and row["masking_warning"] is False
    assert row["zero_grad_fraction"] < 0.5 and row["median_margin"] < 20
    assert row["clean_acc"] > 0.9 and row["robust_acc"] > 0.7 and row["robust_acc_low"] > 0.5
    assert row["pgd_robust_acc"] - row["robust_acc"] <= CE_GAP_SIGNAL  # a few points, as on RobustBench
    assert row["square_broken"] <= SQUARE_SIGNAL * row["n"]


def test_gi_is_flagged_and_the_ensemble_breaks_what_pgd_on_cross_entropy_leaves(rows):
    row = rows["GI"]
    signals = row["signals"].split("; ")
    assert "zero gradients / saturated margins" in signals and row["masking_warning"] is True
    assert row["zero_grad_fraction"] >= 0.5 or row["median_margin"] > 20
    assert row["clean_acc"] > 0.9 and row["pgd_robust_acc"] > 0.6  # PGD-40 (CE) is fooled ...
    assert row["robust_acc"] < 0.2 and row["pgd_robust_acc"] - row["robust_acc"] > 0.5  # ... the ensemble is not
    assert any(s.startswith("PGD-40 (CE) ") for s in signals)
    assert row["signals"] == "; ".join(masking_signals(row))


def test_fast_fgsm_at_lenet_is_robust_to_fgsm_only(rows):
    """Catastrophic overfitting (Wong et al. 2020): FGSM and PGD-40 are scored separately and disagree widely."""
    row = rows["fgsm-at"]
    assert row["fgsm_robust_acc"] > 0.8 and row["pgd_robust_acc"] < 0.3
    assert row["fgsm_robust_acc"] - row["pgd_robust_acc"] > 0.5 and row["robust_acc"] <= 0.1


@pytest.mark.parametrize("training", ["pgd-at", "fgsm-at", "GI"])
def test_evaluate_model_row_invariants(rows, training):
    row = rows[training]
    assert row["n"] == N and row["eps"] == 0.3 and row["seconds"] > 0
    for key in RATES:
        k = _count(row, key)
        assert 0 <= row[key] <= 1
        assert row[key + "_low"] <= row[key] <= row[key + "_high"]
        assert (row[key + "_low"], row[key + "_high"]) == wilson_interval(k, N)
    # the ensemble is cumulative: APGD-CE, then APGD-T on what it left, then Square on what that left
    robust, apgd_t, apgd_ce = _count(row, "robust_acc"), _count(row, "apgd_t_robust_acc"), _count(row, "apgd_ce_robust_acc")
    assert 0 <= robust <= apgd_t <= apgd_ce <= _count(row, "clean_acc")
    assert robust == apgd_t - row["square_broken"]
    mask = unpack_outcomes(row["robust_examples"], N)
    assert int(mask.sum()) == robust and pack_outcomes(mask) == row["robust_examples"]
    assert 0 <= row["zero_grad_fraction"] <= 1


# ----------------------------------------------------------------------------- masking_signals on hand-made rows
QUIET = {"n": 100, "masking_warning": False, "fgsm_robust_acc": 0.5, "pgd_robust_acc": 0.4, "square_broken": 0,
         "robust_acc": 0.38}


@pytest.mark.parametrize("change, expected", [
    ({}, []),
    ({"masking_warning": True}, ["zero gradients / saturated margins"]),
    ({"fgsm_robust_acc": 0.3}, ["FGSM stronger than PGD-40"]),
    ({"square_broken": 5}, ["Square broke 5 that APGD left"]),
    ({"robust_acc": 0.1}, ["PGD-40 (CE) 40.0% vs ensemble 10.0%"]),
])
def test_each_signal_fires_alone_when_its_condition_holds(change, expected):
    assert masking_signals({**QUIET, **change}) == expected


@pytest.mark.parametrize("change, fires", [
    ({"fgsm_robust_acc": 0.4}, False),  # FGSM as strong as PGD-40: fine
    ({"fgsm_robust_acc": 0.4 - 1e-12}, False),  # float noise is not a signal
    ({"fgsm_robust_acc": 0.39}, True),  # one input fewer robust under FGSM than PGD-40 (n=100)
])
def test_fgsm_signal_boundary(change, fires):
    assert ("FGSM stronger than PGD-40" in masking_signals({**QUIET, **change})) is fires


@pytest.mark.parametrize("n, broken, fires", [(100, 1, False), (100, 2, True), (1000, 10, False), (1000, 11, True),
                                              (30, 0, False), (30, 1, True)])
def test_square_signal_needs_more_than_one_percent_of_n(n, broken, fires):
    assert SQUARE_SIGNAL == 0.01
    found = masking_signals({**QUIET, "n": n, "square_broken": broken})
    assert (f"Square broke {broken} that APGD left" in found) is fires and len(found) == fires


@pytest.mark.parametrize("pgd, robust, fires", [(0.4, 0.2, False), (0.41, 0.2, True), (1.0, 0.8, False),
                                                (0.21, 0.0, True), (0.2, 0.0, False)])
def test_ce_gap_signal_needs_over_twenty_points(pgd, robust, fires):
    assert CE_GAP_SIGNAL == 0.2
    found = masking_signals({**QUIET, "fgsm_robust_acc": 1.0, "pgd_robust_acc": pgd, "robust_acc": robust})
    assert (found == [f"PGD-40 (CE) {100 * pgd:.1f}% vs ensemble {100 * robust:.1f}%"]) is fires
    assert found == [] or fires


@pytest.mark.parametrize("pgd, robust", [(0.55, 0.35), (0.9, 0.7)])
def test_ce_gap_signal_is_silent_on_every_exact_twenty_point_gap(pgd, robust):
    assert masking_signals({**QUIET, "fgsm_robust_acc": 1.0, "pgd_robust_acc": pgd, "robust_acc": robust}) == []


# ----------------------------------------------------------------------------- hand-made rows for the reports
def _mask(k, n=20):
    """The first k of n examples robust: a mask whose robust set grows with k (so k1 < k2 means a subset)."""
    return torch.arange(n) < k


def _row(arch, ratio, training, robust, n=20, dataset="mnist"):
    """An evaluate_adversarial_training row with `robust` (n,) bool as the ensemble's outcome."""
    k = int(robust.sum())
    row = {"dataset": dataset, "arch": arch, "ratio": ratio, "training": training, "n": n, "eps": EPS[dataset]}
    for key, count in (("clean_acc", n), ("fgsm_robust_acc", min(n, k + 1)), ("pgd_robust_acc", k),
                       ("robust_acc", k)):
        row[key] = count / n
        row[key + "_low"], row[key + "_high"] = wilson_interval(count, n)
    row.update({"apgd_ce_robust_acc": k / n, "apgd_t_robust_acc": k / n, "square_broken": 0,
                "zero_grad_fraction": 0.0, "median_margin": 5.0, "masking_warning": False, "signals": "none",
                "robust_examples": pack_outcomes(robust), "seconds": 1.5})
    return row


@pytest.fixture
def study_rows():
    """lenet: standard (r1, r8), GI, fast FGSM-AT r1 only, PGD-AT at 1, 8, 64; mlp3 PGD-AT at 1 and 8."""
    return [_row("lenet", 1, "standard", _mask(0)), _row("lenet", 8, "standard", _mask(0)),
            _row("lenet", 1, "GI", _mask(1)), _row("lenet", 1, "fgsm-at", _mask(0)),
            _row("lenet", 1, "pgd-at", _mask(16)), _row("lenet", 8, "pgd-at", _mask(12)),
            _row("lenet", 64, "pgd-at", torch.arange(20) % 2 == 0),
            _row("mlp3", 1, "pgd-at", _mask(10)), _row("mlp3", 8, "pgd-at", _mask(14))]


def test_hashing_under_at_pairs_each_hashed_at_model_with_its_dense_one(study_rows):
    found = hashing_under_at(study_rows)
    assert [(c["arch"], c["training"], c["ratio"]) for c in found] == [
        ("lenet", "pgd-at", 8), ("lenet", "pgd-at", 64), ("mlp3", "pgd-at", 8)]  # no standard, GI or fgsm-at row
    by_key = {(c["arch"], c["ratio"]): c for c in found}
    for (arch, ratio), dense_k, hashed_k in ((("lenet", 8), 16, 12), (("lenet", 64), 16, 10), (("mlp3", 8), 10, 14)):
        c = by_key[arch, ratio]
        assert (c["dense"], c["hashed"]) == (dense_k / 20, hashed_k / 20)
        assert c["difference"] == pytest.approx(c["hashed"] - c["dense"])  # hashed minus dense, not the reverse
        assert c["low"] <= c["difference"] <= c["high"]
    # lenet r8 breaks 4 inputs the dense one kept and keeps none it broke: exact McNemar p = 2 / 2**4
    assert by_key["lenet", 8]["p_value"] == pytest.approx(0.125)
    # lenet r64 keeps the even inputs: 8 of the dense model's 16 lost, 2 new ones kept (16 and 18)
    assert by_key["lenet", 64]["difference"] == pytest.approx(-0.3)
    expected = paired_difference(torch.arange(20) % 2 == 0, _mask(16))
    assert (by_key["lenet", 64]["low"], by_key["lenet", 64]["high"]) == (expected["low"], expected["high"])
    assert by_key["mlp3", 8]["difference"] > 0 and by_key["mlp3", 8]["high"] > by_key["mlp3", 8]["low"]


def test_hashing_under_at_without_a_dense_at_model_or_hashed_models_finds_nothing(study_rows):
    assert hashing_under_at([r for r in study_rows if not (r["ratio"] == 1 and r["training"] == "pgd-at")]) == []
    assert hashing_under_at([r for r in study_rows if r["ratio"] == 1]) == []


# ----------------------------------------------------------------------------- eps curves
def test_eps_curves_rows_fall_with_eps_and_match_the_ensembles_first_two_attacks(rows):
    curves = eps_curves("mnist", "lenet", n=N, eps_values=(0.05, 0.3, 0.45), models=[(1, "pgd-at"), (1, "standard")])
    assert [(r["ratio"], r["training"], r["eps"]) for r in curves] == [
        (1, "pgd-at", 0.05), (1, "pgd-at", 0.3), (1, "pgd-at", 0.45),
        (1, "standard", 0.05), (1, "standard", 0.3), (1, "standard", 0.45)]
    for r in curves:
        assert set(r) == {"dataset", "arch", "ratio", "training", "eps", "n", "robust_acc", "robust_acc_low",
                          "robust_acc_high"}
        assert (r["dataset"], r["arch"], r["n"]) == ("mnist", "lenet", N)
        assert r["robust_acc_low"] <= r["robust_acc"] <= r["robust_acc_high"]
    at = [r["robust_acc"] for r in curves if r["training"] == "pgd-at"]
    assert at[0] >= at[1] >= at[2] and at[0] > 0.8 and at[0] - at[2] > 0.3
    assert [r["robust_acc"] for r in curves if r["training"] == "standard"][1:] == [0.0, 0.0]
    # at the trained radius, the curve's attacks are the course ensemble's APGD-CE and APGD-T (same seed, images)
    assert round(at[1] * N) == _count(rows["pgd-at"], "apgd_t_robust_acc")
    assert at[1] >= rows["pgd-at"]["robust_acc"]  # without Square: an upper bound on the ensemble's


@pytest.mark.parametrize("dataset, arch, allowed", [("mnist", "cifar_cnn", "['lenet', 'mlp3']"),
                                                    ("mnist", "resnet18", "['lenet', 'mlp3']"),
                                                    ("cifar10", "lenet", "['cifar_cnn']")])
def test_eps_curves_rejects_an_arch_the_dataset_has_no_models_for(dataset, arch, allowed):
    with pytest.raises(ValueError) as excinfo:
        eps_curves(dataset, arch, n=4)
    assert str(excinfo.value) == (f"The 'arch' of eps_curves must be one of {allowed} for {dataset}. "
                                  f"Got {arch!r} instead.")


def test_eps_curves_rejects_an_unknown_dataset():
    with pytest.raises(ValueError, match="Unknown dataset 'svhn'; choose one of: cifar10, mnist"):
        eps_curves("svhn", "lenet", n=4)


# ----------------------------------------------------------------------------- the written report
def _curves():
    return [{"dataset": "mnist", "arch": "lenet", "ratio": ratio, "training": training, "eps": eps, "n": 20,
             "robust_acc": acc, "robust_acc_low": wilson_interval(round(acc * 20), 20)[0],
             "robust_acc_high": wilson_interval(round(acc * 20), 20)[1]}
            for ratio, training, accs in ((1, "pgd-at", (0.95, 0.8, 0.1)), (8, "pgd-at", (0.9, 0.6, 0.05)),
                                          (1, "GI", (0.9, 0.0, 0.0)))
            for eps, acc in zip((0.1, 0.3, 0.4), accs)]


def test_write_adversarial_training_writes_four_files_that_read_back(study_rows, tmp_path):
    out = tmp_path / "results"
    command = "hashrobust at-eval --dataset mnist --n 20"
    paths = write_adversarial_training(study_rows, _curves(), out, command)
    assert [p.name for p in paths] == ["adversarial_training.csv", "at_eps_curves.csv", "adversarial_training.md",
                                       "at_eps_curves.png"]
    assert all(p.parent == out and p.is_file() and p.stat().st_size > 0 for p in paths)
    assert paths[3].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    back = read_csv(out / "adversarial_training.csv")
    assert [(r["arch"], r["ratio"], r["training"]) for r in back] == [
        (r["arch"], r["ratio"], r["training"]) for r in study_rows]
    assert [r["robust_examples"] for r in back] == [r["robust_examples"] for r in study_rows]
    assert [r["robust_acc"] for r in back] == [round(r["robust_acc"], 4) for r in study_rows]
    assert [(c["arch"], c["ratio"], c["difference"], c["p_value"]) for c in hashing_under_at(back)] == [
        (c["arch"], c["ratio"], pytest.approx(c["difference"]), pytest.approx(c["p_value"]))
        for c in hashing_under_at(study_rows)]  # the paired comparison works on the CSV as well
    assert len(read_csv(out / "at_eps_curves.csv")) == 9

    text = (out / "adversarial_training.md").read_text()
    lines = text.splitlines()
    assert lines[:3] == ["# Adversarial training on MNIST, evaluated with the ensemble", "", f"Made by `{command}`."]
    assert text.count("Made by") == 1
    assert "L-inf eps = 0.3 on the first 20 test images." in text
    for source, clean, robust in ANCHORS["mnist"]:
        assert f"- {source}: {100 * clean:.1f}% / {100 * robust:.1f}%" in lines
    assert "- Wong et al. 2020, fast FGSM-AT, small CNN: 98.5% / 82.9%" in lines
    assert "| lenet, PGD-AT | 8 | 100.0 [83.9, 100.0] | 65.0 | 60.0 [38.7, 78.1] | 60.0 [38.7, 78.1] | none |" in lines
    assert sum(line.startswith("| lenet, GI (the paper's defence) | 1 |") for line in lines) == 1
    hashing = [line for line in lines if line.startswith("- ") and "ratio" in line]
    assert len(hashing) == 3
    assert hashing[0].startswith("- lenet PGD-AT, ratio 8: 60.0% vs 80.0%, difference -20.0 points [")
    assert hashing[0].endswith("], p = 0.12")
    assert hashing[2].startswith("- mlp3 PGD-AT, ratio 8: 70.0% vs 50.0%, difference +20.0 points [")


def test_the_report_without_hashed_at_models_has_no_hashing_section(study_rows):
    text = adversarial_training_markdown([r for r in study_rows if r["ratio"] == 1])
    assert "Hashing under adversarial training" not in text and "Published anchors" in text


def test_the_markdown_says_what_the_csv_says_to_the_last_digit(tmp_path):
    rows = [_row("lenet", 1, "pgd-at", _mask(24, 30), n=30), _row("lenet", 8, "pgd-at", _mask(0, 30), n=30)]
    write_adversarial_training(rows, _curves(), tmp_path, "hashrobust at-eval --dataset mnist")
    text = (tmp_path / "adversarial_training.md").read_text().replace(
        "Made by `hashrobust at-eval --dataset mnist`.\n\n", "")
    assert text == adversarial_training_markdown(read_csv(tmp_path / "adversarial_training.csv"))


# ----------------------------------------------------------------------------- hashrobust at-eval
@pytest.fixture
def cpu_only(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)


@pytest.fixture
def stubbed(monkeypatch, study_rows):
    """evaluate_adversarial_training and eps_curves replaced by recorders returning hand-made rows."""
    calls = {"study": [], "curves": []}

    def study(dataset, **kwargs):
        calls["study"].append((dataset, kwargs))
        return study_rows

    def curves(dataset, arch, **kwargs):
        calls["curves"].append((dataset, arch, kwargs))
        return _curves()

    monkeypatch.setattr("hashrobust.adversarial_study.evaluate_adversarial_training", study)
    monkeypatch.setattr("hashrobust.adversarial_study.eps_curves", curves)
    return calls


def test_at_eval_device_gpu_is_a_clear_error_before_any_work(tmp_path, capsys, cpu_only, stubbed, monkeypatch):
    def no_work(*args, **kwargs):
        raise AssertionError("a model was loaded before the device was checked")

    monkeypatch.setattr("hashrobust.adversarial_study.load_pretrained", no_work)
    assert main(["at-eval", "--dataset", "mnist", "--n", "4", "--device", "gpu", "--out", str(tmp_path)]) == 2
    assert capsys.readouterr().err == (
        "hashrobust: error: The '--device' parameter of hashrobust at-eval must be 'cpu', 'cuda', "
        "'cuda:<index>' (e.g. 'cuda:1') or 'mps'. Got 'gpu' instead. Available on this machine: 'cpu'.\n")
    assert stubbed == {"study": [], "curves": []} and list(tmp_path.iterdir()) == []


def test_at_eval_device_cuda_without_cuda_is_a_clear_error(tmp_path, capsys, cpu_only, stubbed):
    assert main(["at-eval", "--dataset", "mnist", "--device", "cuda", "--out", str(tmp_path)]) == 2
    assert "hashrobust at-eval asks for 'cuda', but this machine has no CUDA device" in capsys.readouterr().err
    assert stubbed == {"study": [], "curves": []} and list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("extra, arch", [([], "lenet"), (["--curve-arch", "mlp3"], "mlp3")])
def test_at_eval_passes_its_options_through_and_writes_the_report(tmp_path, capsys, stubbed, extra, arch):
    out = tmp_path / "out dir"  # a space: the command in the report is shell-quoted
    argv = ["at-eval", "--dataset", "mnist", "--n", "7", "--preset", "course", "--device", "cpu", *extra,
            "--out", str(out)]
    assert main(argv) == 0
    assert stubbed["study"] == [("mnist", {"n": 7, "preset": "course", "device": CPU})]
    assert stubbed["curves"] == [("mnist", arch, {"n": 7, "device": CPU})]
    names = ["adversarial_training.csv", "at_eps_curves.csv", "adversarial_training.md", "at_eps_curves.png"]
    assert sorted(p.name for p in out.iterdir()) == sorted(names)
    stdout = capsys.readouterr().out
    assert [line for line in stdout.splitlines() if line.startswith("wrote ")] == [f"wrote {out / n}" for n in names]
    assert "9 models and 9 curve points in " in stdout
    command = "hashrobust " + " ".join(shlex.quote(a) for a in argv)
    assert f"Made by `{command}`." in (out / "adversarial_training.md").read_text()
    assert "'" + str(out) + "'" in command


def test_at_eval_defaults_n_1000_and_the_standard_preset(tmp_path, stubbed, capsys):
    assert main(["at-eval", "--dataset", "mnist", "--out", str(tmp_path)]) == 0
    assert stubbed["study"] == [("mnist", {"n": 1000, "preset": "standard", "device": CPU})]
    assert stubbed["curves"] == [("mnist", "lenet", {"n": 1000, "device": CPU})]


def test_at_eval_checks_the_curve_arch_before_the_study(tmp_path, capsys, monkeypatch, study_rows):
    calls = []
    monkeypatch.setattr("hashrobust.adversarial_study.evaluate_adversarial_training",
                        lambda *args, **kwargs: calls.append(args) or study_rows)
    assert main(["at-eval", "--dataset", "cifar10", "--curve-arch", "lenet", "--out", str(tmp_path)]) == 2
    assert "must be one of ['cifar_cnn'] for cifar10" in capsys.readouterr().err
    assert calls == []
