"""Tests for hashrobust.shootout: pruning, quantisation, BPDA, the equivalent-size network and storage accounting."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from hashrobust.attacks import FGSM
from hashrobust.layers import compress
from hashrobust.models import build_model
from hashrobust.shootout import (QUANTIZATION_AT, QuantizedLinear, bpda, equivalent_size, prune, quantize,
                                 storage)
from hashrobust.train import TrainRecipe, predict, train
from hashrobust.zoo import load_pretrained

pytestmark = pytest.mark.usefixtures("one_thread")
N = 784 * 1000 + 1000 * 10  # mlp3's fully connected weights


@pytest.fixture(scope="module")
def dense():
    return load_pretrained("mnist", "mlp3")


def _weights(model):
    return [m.weight for m in model.modules() if type(m) is nn.Linear]


@pytest.mark.parametrize("ratio", [8, 64])
def test_prune_keeps_the_largest_n_over_r_weights_globally_and_leaves_the_model_alone(dense, ratio):
    before = [w.detach().clone() for w in _weights(dense)]
    pruned = prune(dense, ratio)
    kept = torch.cat([w.detach().flatten() for w in _weights(pruned)])
    original = torch.cat([w.flatten() for w in before])
    assert int((kept != 0).sum()) == math.ceil(N / ratio)
    assert original[kept != 0].abs().min() >= original[kept == 0].abs().max()  # one global threshold
    assert torch.equal(kept[kept != 0], original[kept != 0])
    assert all(torch.equal(w, b) for w, b in zip(_weights(dense), before))
    found = storage(pruned, N)
    assert found["values"] == math.ceil(N / ratio) and found["ratio"] == pytest.approx(ratio, rel=1e-4)
    expected_index = sum(
        int(m.weight_mask.sum()) * math.ceil(math.log2(m.weight.shape[1])) + 32 * (m.weight.shape[0] + 1)
        for m in pruned.modules() if hasattr(m, "weight_mask"))
    assert found["index_bits"] == expected_index and found["ratio_all"] < found["ratio"]


def test_fine_tuning_a_pruned_model_keeps_its_zeros(dense, mnist_train):
    pruned = prune(dense, 8)
    zeros = [w.detach() == 0 for w in _weights(pruned)]
    train(pruned, mnist_train.subset(256), TrainRecipe(epochs=1, batch_size=128, lr=0.01), device="cpu",
          progress=False)
    assert all(bool((w.detach()[z] == 0).all()) for w, z in zip(_weights(pruned), zeros))
    assert storage(pruned, N)["values"] == math.ceil(N / 8)


@pytest.mark.parametrize("bits, most", [(1, 2), (2, 3), (4, 15), (8, 255)])
def test_quantized_weights_take_at_most_the_codebooks_levels(dense, bits, most):
    model = quantize(dense, bits)
    for layer in (m for m in model.modules() if isinstance(m, QuantizedLinear)):
        levels = layer.quantized_weight().unique()
        assert 2 <= len(levels) <= most
        if bits <= 2:  # +-alpha (and 0 for ternary)
            assert len(levels[levels != 0].abs().unique()) == 1 and (bits == 2 or 0 not in levels)
        else:  # integer multiples of the scale max|w| / (2^(k-1) - 1), the largest |w| on the top level
            steps = levels * (2 ** (bits - 1) - 1) / levels.abs().max()
            assert torch.allclose(steps, steps.round(), atol=1e-3)
            assert steps.abs().max() == pytest.approx(2 ** (bits - 1) - 1)


@pytest.mark.parametrize("bits", [1, 2])
def test_low_bit_statistics_are_over_the_kept_weights_not_the_pruned_zeros(dense, bits):
    """XNOR-Net's scale mean|w| and TWN's threshold 0.7 mean|w| and alpha, over what is stored."""
    model = quantize(dense, bits, keep=0.25)
    for layer in (m for m in model.modules() if isinstance(m, QuantizedLinear)):
        kept = layer.weight[layer.mask.bool()].abs()
        q = layer.quantized_weight()
        assert torch.equal(q[layer.mask == 0], torch.zeros_like(q[layer.mask == 0]))
        if bits == 1:
            expected = kept.mean()
        else:
            expected = kept[kept > 0.7 * kept.mean()].mean()
            assert int(torch.count_nonzero(q)) == int((kept > 0.7 * kept.mean()).sum())
        assert q[q != 0].abs().unique().item() == pytest.approx(expected.item(), rel=1e-6)


@pytest.mark.parametrize("ratio", [8, 64])
def test_the_quantisation_settings_reach_their_storage_ratio_and_keep_accuracy(dense, mnist_train, mnist_test, ratio):
    bits, keep = QUANTIZATION_AT[ratio]
    model = quantize(dense, bits, keep, calibration=mnist_train.images[:1000])
    found = storage(model, N)
    assert found["ratio"] == pytest.approx(ratio, rel=1e-3)
    assert found["codebook_bits"] == 2 * 32 and (found["index_bits"] > 0) == (keep < 1)
    accuracy = (predict(model, mnist_test.images[:1000]) == mnist_test.labels[:1000]).float().mean().item()
    assert accuracy > (0.95 if ratio == 8 else 0.85)  # before any fine-tuning (measured: 0.983, 0.915)


def test_activation_range_is_the_largest_input_seen_and_the_forward_is_the_formula(dense, mnist_train):
    images = mnist_train.images[:200]
    model = quantize(dense, 4, calibration=images)
    first = model[2]
    x = model[1](model[0](images))
    assert first.activation_range.item() == pytest.approx(x.abs().max().item())
    scale = first.activation_range / 127
    expected = nn.functional.linear((x / scale).round().clamp(-127, 127) * scale, first.quantized_weight(),
                                    first.bias)
    assert torch.allclose(first(x), expected, rtol=0, atol=1e-5)


def test_rounding_masks_the_gradient_and_bpda_gives_it_back(dense, mnist_train, mnist_test):
    model = quantize(dense, 4, calibration=mnist_train.images[:1000])
    naive, straight = bpda(model, straight_through=False), bpda(model)
    images, labels = mnist_test.images[:500], mnist_test.labels[:500]
    assert torch.equal(predict(naive, images), predict(straight, images))  # the same forward pass
    x = images[:50].clone().requires_grad_(True)
    nn.functional.cross_entropy(naive(x), labels[:50]).backward()
    assert torch.count_nonzero(x.grad) == 0
    clean = predict(naive, images)
    masked = (predict(naive, FGSM(naive, eps=0.1)(images, labels)) != clean).float().mean().item()
    broken = (predict(naive, FGSM(straight, eps=0.1)(images, labels)) != clean).float().mean().item()
    assert masked == 0 and broken > 0.5  # measured: 0.0 and 0.78 after one epoch of fine-tuning


def test_equivalent_size_networks_hold_about_one_over_r_of_the_fc_weights():
    for ratio in (8, 64):
        small = equivalent_size("mlp3", ratio)
        assert sum(w.numel() for w in _weights(small)) == pytest.approx(N / ratio, rel=0.03)
        assert small(torch.rand(2, 1, 28, 28)).shape == (2, 10)
        assert storage(small, N)["ratio"] == pytest.approx(ratio, rel=0.03)
    lenet = equivalent_size("lenet", 8)
    assert [m.out_features for m in lenet if isinstance(m, nn.Linear)] == [62, 10]
    assert lenet(torch.rand(2, 1, 28, 28)).shape == (2, 10)


def test_hashed_and_dense_storage(dense):
    assert storage(dense, N) == {"values": N, "value_bits": 32 * N, "index_bits": 0, "codebook_bits": 0,
                                 "ratio": 1.0, "ratio_all": 1.0}
    hashed = storage(compress(dense, 64), N)
    assert hashed["ratio"] == pytest.approx(64, rel=1e-3) and hashed["index_bits"] == 0


def test_bad_inputs_say_what_is_allowed(dense):
    with pytest.raises(ValueError, match="needs a dense model"):
        prune(build_model("mlp3", ratio=8), 8)
    with pytest.raises(ValueError, match="'bits'"):
        quantize(dense, 0)
    with pytest.raises(ValueError, match="'keep' of quantize must be in \\(0, 1\\]"):
        quantize(dense, 2, keep=0)
    with pytest.raises(ValueError, match="bpda needs a quantised model"):
        bpda(dense)
    with pytest.raises(ValueError, match="no nn.Linear layer"):
        prune(nn.Sequential(nn.Conv2d(1, 2, 3)), 8)
    with pytest.raises(ValueError, match="Unknown arch 'cifar_cnn'"):
        equivalent_size("cifar_cnn", 8)
    from hashrobust.shootout import run_shootout
    with pytest.raises(ValueError, match="'ratio'"):  # refused before the dense model is even evaluated
        run_shootout("mlp3", (8, 2), n=10)


@pytest.fixture(scope="module")
def small_run():
    from hashrobust.shootout import run_shootout
    return run_shootout("mlp3", (8,), n=60, eps=0.1, epochs=1, preset="course", train_subset=1000)


def test_the_shootout_has_every_method_and_attack_with_intervals(small_run):
    methods = {}
    for row in small_run:
        methods.setdefault(row["method"], []).append(row["attack"])
    assert list(methods) == ["dense", "hashed", "pruned", "quantized", "small dense"]
    attacks = ["FGSM", "PGD-40", "transfer: PGD-40 from the dense model", "ensemble (course)"]
    assert methods["dense"] == methods["hashed"] == methods["pruned"] == methods["small dense"] == attacks
    assert methods["quantized"] == ["FGSM through the rounding (masked)"] + attacks
    for row in small_run:
        assert row["n"] == 60 and (row["dataset"], row["arch"], row["training"]) == ("mnist", "mlp3", "standard")
        assert row["robust_acc_low"] <= row["robust_acc"] <= row["robust_acc_high"]
        assert row["robust_acc"] <= row["clean_acc"]
        assert (row["success"] is None) == row["attack"].startswith("ensemble")


def test_the_shootout_compares_at_equal_storage_and_bpda_unmasks_quantisation(small_run):
    pick = {(r["method"], r["attack"]): r for r in small_run}
    for method in ("hashed", "pruned", "quantized"):
        assert pick[method, "FGSM"]["ratio"] == pytest.approx(8, rel=1e-3)
    assert pick["small dense", "FGSM"]["ratio"] == pytest.approx(8, rel=0.03)
    assert pick["dense", "FGSM"]["ratio"] == 1 and pick["pruned", "FGSM"]["ratio_all"] < 8
    assert pick["quantized", "FGSM through the rounding (masked)"]["success"] == 0
    assert pick["quantized", "FGSM"]["success"] > 0.3
    # the dense model's "transfer" is its own white-box PGD: the same adversarial images, the same numbers
    own, moved = pick["dense", "PGD-40"], pick["dense", "transfer: PGD-40 from the dense model"]
    assert (own["success"], own["robust_acc"]) == (moved["success"], moved["robust_acc"])


def test_write_shootout_writes_what_it_was_given(small_run, tmp_path):
    from hashrobust.reports import read_csv, rounded
    from hashrobust.shootout import write_shootout
    csv_path, md_path = write_shootout(small_run, tmp_path, "hashrobust shootout --n 60")
    assert read_csv(csv_path) == rounded(small_run)
    text = md_path.read_text()
    assert "Made by `hashrobust shootout --n 60`." in text
    assert text.count("\n| 8 | ") == len([r for r in small_run if r["ratio_target"] == 8])


def test_cli_shootout_passes_its_options_and_writes_the_report(monkeypatch, small_run, tmp_path, capsys):
    import hashrobust.shootout
    from hashrobust.cli import main
    seen = {}

    def fake_run(arch, ratios, **kwargs):
        seen.update(arch=arch, ratios=ratios, **kwargs)
        return small_run

    monkeypatch.setattr(hashrobust.shootout, "run_shootout", fake_run)
    assert main(["shootout", "--arch", "lenet", "--ratios", "8", "64", "--eps", "0.2", "--n", "60",
                 "--out", str(tmp_path)]) == 0
    assert (seen["arch"], seen["ratios"], seen["eps"], seen["n"], seen["training"]) == ("lenet", (8.0, 64.0), 0.2,
                                                                                     60, "standard")
    assert (tmp_path / "shootout-mlp3-standard.md").is_file()
    assert "rows in" in capsys.readouterr().out
