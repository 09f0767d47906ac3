"""The notebook explorers: slider values in, figure data and numbers out (no browser, no kernel).

Setting a control through `explorer.set(...)` fires the observers a user's drag
fires (static first); the numbers are checked
against the library functions the explorers call, and `show()` is checked to
display a PNG first and replace it through the display handle.
"""
from __future__ import annotations

import IPython.display
import numpy as np
import pytest
import torch
from matplotlib.figure import Figure

from hashrobust import FGSM, hash_positions, load_pretrained, num_buckets, read_manifest, success_rate, transfer
from hashrobust.widgets import (MINUS, OKABE_ITO, RATIOS, AdversarialExplorer, CompressionAttackExplorer,
                                InhibitionExplorer, RatioExplorer)

pytestmark = pytest.mark.usefixtures("one_thread")

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def subset(mnist_test):
    """The first 200 MNIST test images: the explorers' fixed evaluation subset."""
    return mnist_test.subset(200)


@pytest.fixture(scope="module")
def mlp3():
    return load_pretrained("mnist", "mlp3", 1)


def _manifest_accuracy(ratio: float) -> float:
    return read_manifest()[f"mnist-mlp3-r{ratio:g}.pt"]["clean_test_accuracy"]


# ----------------------------------------------------------------------------- controls
def test_ratio_slider_offers_only_powers_of_two():
    explorer = RatioExplorer()
    slider = explorer.sliders["ratio"]
    assert [value for _, value in slider.options] == [1, 2, 4, 8, 16, 32, 64] == list(RATIOS)
    assert "ratio" in slider.description and "virtual / real" in slider.description  # labelled with its unit
    with pytest.raises(ValueError, match=r"The 'ratio' parameter of RatioExplorer.set must be one of 1, 2, 4, "
                                         r"8, 16, 32, 64. Got 3 instead."):
        explorer.set(ratio=3)
    with pytest.raises(ValueError, match="Unknown control 'eps'; choose one of: ratio."):
        explorer.set(eps=0.1)


def test_eps_slider_is_in_pixel_units_and_refuses_values_out_of_range(subset, mlp3):
    explorer = AdversarialExplorer(mlp3, subset, n=2)
    slider = explorer.sliders["eps"]
    assert (slider.min, slider.max, slider.step, slider.value) == (0, 0.3, 0.01, 0.1)
    assert "pixel units" in slider.description
    assert list(explorer.sliders["attack"].options) == ["FGSM", "BIM", "PGD"]
    with pytest.raises(ValueError, match=r"The 'eps' parameter of AdversarialExplorer.set must be a number "
                                         r">= 0 and <= 0.3. Got 0.5 instead."):
        explorer.set(eps=0.5)  # a FloatSlider would silently clamp it to 0.3
    assert explorer.state["eps"] == 0.1


# ----------------------------------------------------------------------------- 01: RatioExplorer
@pytest.mark.parametrize("ratio", [1, 8, 64])
def test_ratio_explorer_highlights_the_manifest_point_and_draws_the_hash(ratio):
    explorer = RatioExplorer(ratio=2, seed=3)
    explorer.set(ratio=ratio)
    acc_ax, size_ax, hash_ax = explorer.figure().axes
    (selected,) = [line for line in acc_ax.lines if line.get_label() == "selected"]
    assert (selected.get_xdata()[0], selected.get_ydata()[0]) == pytest.approx((ratio, 100 * _manifest_accuracy(ratio)))
    (size,) = [line for line in size_ax.lines if line.get_label() == "selected"]
    assert size.get_ydata()[0] == pytest.approx(read_manifest()[f"mnist-mlp3-r{ratio}.pt"]["bytes"] / 1024)
    bucket, sign = hash_positions((8, 8), ratio, 3) if ratio != 1 else (torch.arange(64).view(8, 8), torch.ones(8, 8))
    marks = [text.get_text() for text in hash_ax.texts]  # "+w12" / "\u2212w3": sign times real weight, row-major
    assert marks == [f"{'+' if s > 0 else MINUS}w{b}" for s, b in zip(sign.flatten().tolist(), bucket.flatten().tolist())]
    colours = torch.as_tensor(np.asarray(hash_ax.images[0].get_array())).reshape(64, 3)
    if num_buckets(64, ratio) <= len(OKABE_ITO):  # one colour per real weight: same bucket, same colour, and only then
        same_bucket = bucket.flatten()[:, None] == bucket.flatten()[None, :]
        same_colour = (colours[:, None] == colours[None, :]).all(-1)
        assert torch.equal(same_bucket, same_colour)
    else:  # too many real weights for distinct safe colours: the labels alone
        assert (colours == 1).all()
    assert explorer.state["clean_acc"] == _manifest_accuracy(ratio)
    assert f"{100 * _manifest_accuracy(ratio):.2f}%" in explorer.readout.value


# ----------------------------------------------------------------------------- 02: AdversarialExplorer
@pytest.mark.parametrize("attack", ["FGSM", "BIM", "PGD"])
def test_adversarial_explorer_eps_zero_changes_nothing(subset, mlp3, attack):
    explorer = AdversarialExplorer(mlp3, subset, n=3)
    explorer.set(attack=attack, eps=0)
    s = explorer.state
    assert torch.equal(s["adv_images"], explorer.images)
    assert torch.equal(s["adv_pred"], s["clean_pred"])
    perturbation = explorer.figure().axes[1].images[0].get_array()
    assert (perturbation == 0).all()
    assert f"{attack} eps 0.00" in explorer.figure().axes[2].get_title()


@pytest.mark.parametrize("attack", ["FGSM", "BIM", "PGD"])
def test_adversarial_explorer_stays_in_the_eps_ball_and_draws_its_perturbation(subset, mlp3, attack):
    explorer = AdversarialExplorer(mlp3, subset, n=3)
    explorer.set(attack=attack, eps=0.2)
    s = explorer.state
    delta = s["adv_images"] - explorer.images  # (N, C, H, W)
    assert 0 < delta.abs().max() <= 0.2 + 1e-6
    assert torch.equal(s["linf"], delta.flatten(1).abs().amax(1))
    axes = explorer.figure().axes  # rows of (clean, perturbation, adversarial)
    for i in range(3):
        assert torch.allclose(torch.as_tensor(axes[3 * i + 1].images[0].get_array()), delta[i, 0])
        assert axes[3 * i + 1].images[0].get_clim() == (-0.2, 0.2)  # centred at 0
        assert axes[3 * i + 2].get_title().startswith(f"{attack} eps 0.20: {int(s['adv_pred'][i])} (")
    assert torch.equal(s["adv_pred"], mlp3(s["adv_images"]).argmax(1))  # exact: the same batch of 3 images


def test_adversarial_explorer_caches_each_setting(subset, mlp3):
    explorer = AdversarialExplorer(mlp3, subset, n=2)
    explorer.set(eps=0.2)
    first = explorer.state["adv_images"]
    explorer.set(attack="BIM")
    explorer.set(attack="FGSM", eps=0.2)
    assert explorer.state["adv_images"] is first  # moving back reuses the result
    assert set(explorer.cache) == {("FGSM", 0.1), ("FGSM", 0.2), ("BIM", 0.2)}


# ----------------------------------------------------------------------------- 03: CompressionAttackExplorer
def test_compression_attack_readout_equals_success_rate_and_transfer(subset):
    explorer = CompressionAttackExplorer(data=subset, n=200)
    images, labels = subset.images, subset.labels
    dense = load_pretrained("mnist", "mlp3", 1)
    readouts = {}
    for ratio in (1, 64):
        explorer.set(ratio=ratio, eps=0.05)
        model = load_pretrained("mnist", "mlp3", ratio)
        white_box = success_rate(model, FGSM(model, eps=0.05), images, labels)["success"]
        transferred = transfer(dense, model, FGSM(dense, eps=0.05), images, labels)["success"]
        # exact: the explorer makes these same calls on the same images and batches (the same float ops)
        assert (explorer.state["white_box"], explorer.state["transfer"]) == (white_box, transferred)
        assert f"white-box success {100 * white_box:.1f}%" in explorer.readout.value
        assert f"transfer dense -> hashed success {100 * transferred:.1f}%" in explorer.readout.value
        readouts[ratio] = explorer.readout.value
    assert readouts[1] != readouts[64]
    assert explorer.state["white_box"] > 0.5 > explorer.state["transfer"]  # r64: fragile white-box, poor transfer
    ax = explorer.figure().axes[0]
    assert [row["ratio"] for row in explorer.state["rows"]] == list(RATIOS)
    assert list(ax.lines[0].get_ydata()) == pytest.approx([100 * row["white_box"] for row in explorer.state["rows"]])


def test_compression_attack_explorer_needs_the_dense_source(mlp3, subset):
    with pytest.raises(ValueError, match="must include ratio 1"):
        CompressionAttackExplorer(models={8: load_pretrained("mnist", "mlp3", 8)}, data=subset)
    explorer = CompressionAttackExplorer(models={1: mlp3}, data=subset, n=50, ratio=1)
    assert [value for _, value in explorer.sliders["ratio"].options] == [1]


# ----------------------------------------------------------------------------- 05: InhibitionExplorer
def test_inhibition_explorer_zero_gradients_grow_with_strength(mlp3, subset):
    explorer = InhibitionExplorer(mlp3, subset, n=200)
    explorer.set(strength=0)
    assert explorer.state["after"]["zero_grad_fraction"] == 0 == explorer.state["before"]["zero_grad_fraction"]
    explorer.set(strength=10)
    after = explorer.state["after"]
    assert after["zero_grad_fraction"] >= 0.9 and after["saturated"] >= 0.9
    assert after["success"] < explorer.state["before"]["success"]  # FGSM cannot step: masking, not robustness
    margins = explorer.figure().axes[0].patches[1]  # the "after" histogram
    assert margins.get_label() == "after GI, strength 10"
    assert "zero input gradients 0.0% -> " + f"{100 * after['zero_grad_fraction']:.1f}%" in explorer.readout.value
    assert mlp3[-1].weight.abs().max() < 10  # the model itself was not edited


# ----------------------------------------------------------------------------- static first (`displayed`: conftest.py)
@pytest.mark.parametrize("make, move", [
    (lambda data, model: RatioExplorer(), {"ratio": 16}),
    (lambda data, model: AdversarialExplorer(model, data, n=2), {"eps": 0.2}),
    (lambda data, model: CompressionAttackExplorer(data=data, n=100), {"ratio": 64}),
    (lambda data, model: InhibitionExplorer(model, data, n=100), {"strength": 1}),
], ids=["ratio", "adversarial", "compression", "inhibition"])
def test_show_displays_a_png_first_then_the_controls_and_updates_the_png(displayed, subset, mlp3, make, move):
    explorer = make(subset, mlp3)
    assert explorer.show() is None
    (image, display_id, handle), (controls, _, _) = displayed
    assert isinstance(image, IPython.display.Image) and image.data.startswith(PNG_MAGIC) and display_id is True
    assert controls is explorer.controls and explorer.readout in controls.children
    old_figure = explorer.figure()
    explorer.set(**move)
    (new_image,) = handle.updates
    assert isinstance(new_image, IPython.display.Image) and new_image.data.startswith(PNG_MAGIC)
    assert new_image.data != image.data
    assert isinstance(explorer.figure(), Figure) and explorer.figure() is not old_figure
    explorer.set(**move)  # the same value again: no observer fires, nothing redrawn
    assert len(handle.updates) == 1
