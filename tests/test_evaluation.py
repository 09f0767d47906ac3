"""Success rate, fooling rate, robust accuracy, the ensemble, intervals, paired tests, JSMA pairs, transfer and
sweeps, against hand computations and the definitions' invariants."""
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from hashrobust.adaptive import Temperature
from hashrobust.attacks import FGSM, JSMA, PGD, Attack
from hashrobust.defenses import gradient_inhibition
from hashrobust.evaluation import (attack_outcomes, ensemble_attacks, jsma_success, pack_outcomes, paired_difference,
                                   robust_accuracy, success_rate, sweep, transfer, unpack_outcomes, verdict,
                                   wilson_interval)
from hashrobust.train import predict
from hashrobust.zoo import load_pretrained


@pytest.fixture(scope="module")
def dense():
    return load_pretrained("mnist", "mlp3", 1)


@pytest.fixture(scope="module")
def hashed():
    return load_pretrained("mnist", "mlp3", 8)


@pytest.fixture(scope="module")
def data(mnist_test):
    return mnist_test.subset(200)


def test_no_perturbation_means_no_success(dense, data):
    row = success_rate(dense, FGSM(dense, eps=0.0), data.images, data.labels)
    assert row["success"] == 0 and row["fooling"] == 0
    assert row["robust_acc"] == row["clean_acc"] > 0.97


def test_rates_match_a_hand_computation(dense, data):
    row = success_rate(dense, FGSM(dense, eps=0.2), data.images, data.labels, batch_size=200)  # one batch, as below
    adv = FGSM(dense, eps=0.2)(data.images)
    clean_pred, adv_pred = predict(dense, data.images), predict(dense, adv)
    correct = clean_pred == data.labels
    assert row["n"] == 200
    assert row["success"] == pytest.approx((adv_pred != clean_pred).float().mean().item())
    assert row["clean_acc"] == pytest.approx(correct.float().mean().item())
    # robust accuracy: correct clean AND correct after the attack against the TRUE label
    adv_true = predict(dense, FGSM(dense, eps=0.2)(data.images, data.labels))
    assert row["robust_acc"] == pytest.approx((correct & (adv_true == data.labels)).float().mean().item())
    assert row["fooling"] == pytest.approx(1 - row["robust_acc"] / row["clean_acc"])
    assert 0.5 < row["success"] < 1 and row["robust_acc"] < row["clean_acc"]
    assert row["success_low"] < row["success"] < row["success_high"]
    assert (row["success_low"], row["success_high"]) == wilson_interval(round(200 * row["success"]), 200)


def test_without_labels_only_success_is_reported(dense, data):
    row = success_rate(dense, FGSM(dense, eps=0.3), data.images)
    assert row["fooling"] is row["robust_acc"] is row["clean_acc"] is None and row["success"] > 0.8


class _Relabel(Attack):
    """An 'attack' that returns, for each input, a fixed image of another class: it flips every correct input."""

    def __init__(self, model, donors):
        super().__init__(model)
        self.donors = donors  # {label: an image of another class}

    def forward(self, images, labels):
        return torch.stack([self.donors[int(y)] for y in labels])


def test_an_attack_that_flips_every_correct_input_gives_exactly_zero(dense, data):
    preds = predict(dense, data.images)
    donors = {y: data.images[(preds != y).nonzero()[0, 0]] for y in range(10)}
    row = success_rate(dense, _Relabel(dense, donors), data.images, data.labels)
    assert row["robust_acc"] == 0 and row["fooling"] == 1 and row["success"] == 1
    assert row["robust_acc_low"] == 0 and row["robust_acc_high"] == pytest.approx(wilson_interval(0, 200)[1])


def test_robust_accuracy_never_exceeds_clean_accuracy_on_a_bad_model(data):
    """The old definition counted misclassified inputs that an attack pushed onto the true label (robust > clean)."""
    weak = load_pretrained("mnist", "mlp3", 64)
    weak = gradient_inhibition(weak, eps=1.25)  # about 74% clean, gradients masked
    for attack in (FGSM(weak, eps=0.3), PGD(weak, eps=0.3, alpha=0.05, steps=10, loss="margin")):
        row = success_rate(weak, attack, data.images, data.labels)
        assert row["robust_acc"] <= row["clean_acc"]


@settings(max_examples=20, deadline=None)
@given(eps=st.floats(0, 0.3), steps=st.integers(1, 3), loss=st.sampled_from(["ce", "margin"]))
def test_property_robust_accuracy_is_at_most_clean_accuracy(hashed, data, eps, steps, loss):
    row = success_rate(hashed, PGD(hashed, eps=eps, alpha=0.1, steps=steps, loss=loss),
                       data.images[:40], data.labels[:40])
    assert row["robust_acc"] <= row["clean_acc"]
    assert row["robust_acc_low"] <= row["robust_acc"] <= row["robust_acc_high"]


def test_an_attack_on_a_wrapper_of_the_model_is_accepted(dense, data):
    """success_rate takes an attack built on Temperature(model): same predictions, so the same rates as transfer."""
    attack = FGSM(Temperature(dense, 1000.0), eps=0.1)
    assert success_rate(dense, attack, data.images, data.labels) == transfer(attack.model, dense, attack, data.images,
                                                                             data.labels)


def test_attack_built_on_another_model_is_refused(dense, hashed, data):
    with pytest.raises(ValueError, match="built on another model; use transfer"):
        success_rate(hashed, FGSM(dense, eps=0.3), data.images)
    with pytest.raises(ValueError, match="must be built on source_model"):
        transfer(hashed, dense, FGSM(dense, eps=0.3), data.images)


def test_transfer_to_itself_is_white_box_and_across_models_is_weaker(dense, hashed, data):
    attack = FGSM(dense, eps=0.1)
    white = success_rate(dense, attack, data.images, data.labels)
    assert transfer(dense, dense, attack, data.images, data.labels) == white
    crossed = transfer(dense, hashed, attack, data.images, data.labels)
    assert crossed["clean_acc"] == success_rate(hashed, FGSM(hashed, eps=0.1), data.images, data.labels)["clean_acc"]
    assert 0 < crossed["success"] <= 1


def test_jsma_counts_every_non_true_target(dense, data):
    row = jsma_success(dense, JSMA(dense, theta=1.0, gamma=0.1), data.images[:2], data.labels[:2])
    assert row["n"] == 18
    assert 0.5 <= row["success"] <= 1
    assert 0 < row["changed_pixels"] <= 0.1 + 2 / 784  # at most gamma of the pixels, pairs at a time


def test_sweep_rows_are_tidy_and_transfer_is_paired_with_the_dense_twin(dense, hashed, data):
    rows = sweep({("mlp3", 1): dense, ("mlp3", 8): hashed}, {"FGSM": lambda m, e: FGSM(m, eps=e)},
                 [0.05, 0.3], data.subset(100), twin_ratio=1)
    keys = {"dataset", "variant", "arch", "ratio", "source_ratio", "mode", "attack", "eps", "n", "success",
            "success_low", "success_high", "fooling", "robust_acc", "robust_acc_low", "robust_acc_high", "clean_acc",
            "clean_acc_low", "clean_acc_high", "success_examples", "seconds"}
    assert all(set(r) == keys for r in rows)
    white = {(r["ratio"], r["eps"]): r["success"] for r in rows if r["mode"] == "white-box"}
    crossed = {(r["source_ratio"], r["ratio"], r["eps"]) for r in rows if r["mode"] == "transfer"}
    assert set(white) == {(1, 0.05), (1, 0.3), (8, 0.05), (8, 0.3)}
    assert crossed == {(1, 8, 0.05), (1, 8, 0.3), (8, 1, 0.05), (8, 1, 0.3)}
    assert white[(1, 0.3)] > white[(1, 0.05)] and white[(8, 0.3)] > white[(8, 0.05)]
    assert {r["dataset"] for r in rows} == {"mnist"} and {r["variant"] for r in rows} == {"official"}


def test_outcomes_pack_to_hex_and_back():
    mask = torch.tensor([True, False, False, True, True] + [False] * 60 + [True])
    field = pack_outcomes(mask)
    assert field.startswith("0x") and torch.equal(unpack_outcomes(field, len(mask)), mask)


def test_sweep_stores_per_example_success_for_paired_tests(dense, hashed, data):
    rows = sweep({("mlp3", 1): dense, ("mlp3", 8): hashed}, {"FGSM": lambda m, e: FGSM(m, eps=e)}, [0.1],
                 data.subset(100), twin_ratio=1)
    white = {r["ratio"]: r for r in rows if r["mode"] == "white-box"}
    for ratio, model in ((1, dense), (8, hashed)):
        expected = attack_outcomes(model, FGSM(model, eps=0.1), data.images[:100], data.labels[:100])["success"]
        assert torch.equal(unpack_outcomes(white[ratio]["success_examples"], 100), expected)
        assert white[ratio]["success"] == int(expected.sum()) / 100


# ----------------------------------------------------------------------------- intervals and paired tests
def test_wilson_interval_reference_values():
    """Against values computed by hand from Wilson (1927), z = 1.959964."""
    low, high = wilson_interval(50, 100)
    assert low == pytest.approx(0.403832, abs=1e-6) and high == pytest.approx(0.596168, abs=1e-6)
    low, high = wilson_interval(1000, 1000)
    assert high == 1.0 and low == pytest.approx(0.996173, abs=1e-6)
    assert wilson_interval(0, 0) == (0.0, 1.0)


@settings(max_examples=20, deadline=None)
@given(n=st.integers(1, 2000), frac=st.floats(0, 1))
def test_property_wilson_interval_contains_the_rate_and_shrinks_with_n(n, frac):
    k = round(frac * n)
    low, high = wilson_interval(k, n)
    assert 0 <= low <= k / n <= high <= 1
    low4, high4 = wilson_interval(4 * k, 4 * n)
    assert high4 - low4 < high - low


def test_paired_difference_mcnemar_and_verdict():
    a = torch.tensor([True] * 30 + [False] * 70)
    b = torch.tensor([True] * 20 + [False] * 80)  # a breaks 10 more inputs, b none that a leaves
    row = paired_difference(a, b)
    assert row["difference"] == pytest.approx(0.1) and (row["only_a"], row["only_b"]) == (10, 0)
    assert row["p_value"] == pytest.approx(2 / 2 ** 10)  # exact McNemar: 2 * P(Bin(10, 1/2) = 0)
    assert row["low"] > 0 and verdict(row) == "more vulnerable than"
    same = paired_difference(a, a)
    assert same["difference"] == 0 and same["p_value"] == 1 and verdict(same) == "no detectable difference at n = 100"
    assert verdict(paired_difference(b, a)) == "less vulnerable than"
    with pytest.raises(ValueError, match="two non-empty vectors of one length. Got lengths 100 and 3"):
        paired_difference(a, a[:3])


def test_paired_interval_is_narrower_than_two_independent_ones():
    generator = torch.Generator().manual_seed(0)
    base = torch.rand(1000, generator=generator) < 0.5
    flip = torch.rand(1000, generator=generator) < 0.03
    a, b = base | flip, base
    row = paired_difference(a, b)
    la, ha = wilson_interval(int(a.sum()), 1000)
    lb, hb = wilson_interval(int(b.sum()), 1000)
    assert row["low"] > 0 and la < hb  # paired: significant; the independent intervals overlap
    assert math.isclose(row["difference"], (int(a.sum()) - int(b.sum())) / 1000, abs_tol=1e-12)


# ----------------------------------------------------------------------------- the ensemble
@pytest.fixture(scope="module")
def ensemble(hashed, data):
    images, labels = data.images[:30], data.labels[:30]
    return robust_accuracy(hashed, images, labels, eps=0.1, preset="course"), images, labels


def test_ensemble_is_the_worst_case_per_example_and_below_each_member(hashed, ensemble):
    result, images, labels = ensemble
    assert [step["attack"] for step in result["per_attack"]] == ["APGD-CE", "APGD-T (DLR)", "Square"]
    assert result["robust_acc"] <= result["clean_acc"]
    for name, attack in ensemble_attacks(hashed, 0.1, preset="course"):
        alone = success_rate(hashed, attack, images, labels)["robust_acc"]
        assert result["robust_acc"] <= alone + 1e-12, name
    # cumulative robust accuracy never rises, and the per-example vector is what the rate counts
    steps = [result["clean_acc"]] + [step["robust_acc"] for step in result["per_attack"]]
    assert steps == sorted(steps, reverse=True)
    assert result["robust_acc"] == int(result["robust"].sum()) / len(labels)
    assert sum(step["broken"] for step in result["per_attack"]) == round(30 * (result["clean_acc"] - result["robust_acc"]))


def test_ensemble_continued_from_known_outcomes_equals_the_whole_ensemble(hashed, ensemble):
    """`known`: the first attack's per-example outcome, then the others on what it left = the ensemble at once."""
    result, images, labels = ensemble
    (first, attack), *rest = ensemble_attacks(hashed, 0.1, preset="course")
    after_first = robust_accuracy(hashed, images, labels, eps=0.1, attacks=[(first, attack)])["robust"]
    continued = robust_accuracy(hashed, images, labels, eps=0.1, attacks=rest, known=after_first)
    assert torch.equal(continued["robust"], result["robust"]) and continued["robust_acc"] == result["robust_acc"]
    assert [step["attack"] for step in continued["per_attack"]] == ["APGD-T (DLR)", "Square"]
    assert continued["clean_acc"] == result["clean_acc"]
    none_left = robust_accuracy(hashed, images, labels, eps=0.1, attacks=rest, known=torch.zeros(30, dtype=torch.bool))
    assert none_left["robust_acc"] == 0 and all(step["broken"] == 0 for step in none_left["per_attack"])
    with pytest.raises(ValueError, match=r"'known' parameter of robust_accuracy must be a bool tensor of shape \(30,\)"):
        robust_accuracy(hashed, images, labels, eps=0.1, attacks=rest, known=torch.ones(29, dtype=torch.bool))


def test_ensemble_breaks_an_undefended_model_at_a_large_eps(dense, data):
    result = robust_accuracy(dense, data.images[:20], data.labels[:20], eps=0.3, preset="course")
    assert result["robust_acc"] == 0 and result["clean_acc"] > 0.9


def test_ensemble_sees_through_gradient_masking(dense, data):
    """GI zeroes cross-entropy gradients: APGD-CE alone reports a high robust accuracy, the ensemble about 0."""
    masked = gradient_inhibition(dense, eps=0.35)
    images, labels = data.images[:40], data.labels[:40]
    result = robust_accuracy(masked, images, labels, eps=0.3, preset="course")
    apgd_ce = result["per_attack"][0]["robust_acc"]
    assert apgd_ce > 0.5 and result["robust_acc"] <= 0.05


def test_ensemble_input_checks(dense, data):
    with pytest.raises(ValueError, match="Unknown preset 'fast'; choose one of: course, standard"):
        robust_accuracy(dense, data.images[:4], data.labels[:4], eps=0.1, preset="fast")
    with pytest.raises(ValueError, match="Unknown norm 'l1'; choose one of: l2, linf"):
        robust_accuracy(dense, data.images[:4], data.labels[:4], eps=0.1, norm="l1")
    with pytest.raises(ValueError, match="FGSM with targeted=True cannot be scored as an untargeted attack"):
        robust_accuracy(dense, data.images[:4], data.labels[:4], eps=0.1,
                        attacks=[("x", FGSM(dense, eps=0.1, targeted=True))])


def test_ensemble_of_given_attacks_takes_transfer_attacks_and_scores_on_the_model(dense, hashed, data):
    images, labels = data.images[:50], data.labels[:50]
    crossed = FGSM(dense, eps=0.1)  # crafted on the dense model, scored on the hashed one
    result = robust_accuracy(hashed, images, labels, eps=0.1, attacks=[("transfer", crossed)])
    assert result["robust_acc"] == transfer(dense, hashed, crossed, images, labels)["robust_acc"]
