"""Success rate, fooling rate, robust accuracy, JSMA pairs, transfer and sweeps, against hand computations."""
import pytest
import torch

from hashrobust.attacks import FGSM, JSMA
from hashrobust.evaluation import jsma_success, success_rate, sweep, transfer
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
    row = success_rate(dense, FGSM(dense, eps=0.2), data.images, data.labels, batch_size=64)
    adv = FGSM(dense, eps=0.2)(data.images)
    clean_pred, adv_pred = predict(dense, data.images), predict(dense, adv)
    correct = clean_pred == data.labels
    assert row["n"] == 200
    assert row["success"] == pytest.approx((adv_pred != clean_pred).float().mean().item())
    assert row["clean_acc"] == pytest.approx(correct.float().mean().item())
    assert row["robust_acc"] == pytest.approx((adv_pred == data.labels).float().mean().item())
    assert row["fooling"] == pytest.approx((adv_pred[correct] != data.labels[correct]).float().mean().item())
    assert 0.5 < row["success"] < 1 and row["robust_acc"] < row["clean_acc"]


def test_without_labels_only_success_is_reported(dense, data):
    row = success_rate(dense, FGSM(dense, eps=0.3), data.images)
    assert row["fooling"] is row["robust_acc"] is row["clean_acc"] is None and row["success"] > 0.8


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
            "fooling", "robust_acc", "clean_acc", "seconds"}
    assert all(set(r) == keys for r in rows)
    white = {(r["ratio"], r["eps"]): r["success"] for r in rows if r["mode"] == "white-box"}
    crossed = {(r["source_ratio"], r["ratio"], r["eps"]) for r in rows if r["mode"] == "transfer"}
    assert set(white) == {(1, 0.05), (1, 0.3), (8, 0.05), (8, 0.3)}
    assert crossed == {(1, 8, 0.05), (1, 8, 0.3), (8, 1, 0.05), (8, 1, 0.3)}
    assert white[(1, 0.3)] > white[(1, 0.05)] and white[(8, 0.3)] > white[(8, 0.05)]
    assert {r["dataset"] for r in rows} == {"mnist"} and {r["variant"] for r in rows} == {"official"}
