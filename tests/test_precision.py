"""Tests for hashrobust.precision: the softmax's two thresholds per float format (formula and PyTorch's kernels),
and GI's masking measured in float64, float32, bfloat16, float16 and under autocast."""
from __future__ import annotations

import math

import pytest
import torch

from hashrobust.defenses import gradient_inhibition
from hashrobust.precision import FORMATS, PRECISIONS, measured_thresholds, precision_study, softmax_thresholds
from hashrobust.zoo import load_pretrained

pytestmark = pytest.mark.usefixtures("one_thread")
LN9 = math.log(9)  # 10 classes: a kernel that sums the nine small terms first saturates up to ln 9 later


@pytest.mark.parametrize("name, saturation, underflow", [
    ("float64", 53 * math.log(2), 1075 * math.log(2)),
    ("float32", 24 * math.log(2), 150 * math.log(2)),
    ("bfloat16", 8 * math.log(2), 134 * math.log(2)),
    ("float16", 11 * math.log(2), 25 * math.log(2)),
])
def test_softmax_thresholds_are_the_formats_half_ulp_and_half_smallest_subnormal(name, saturation, underflow):
    found = softmax_thresholds(FORMATS[name])
    assert found["saturation"] == pytest.approx(saturation, rel=1e-12)
    assert found["underflow"] == pytest.approx(underflow, rel=1e-12)


@pytest.mark.parametrize("name, spacing", [("float64", 0.01), ("float32", 0.01), ("bfloat16", 0.5),
                                           ("float16", 0.02)])
def test_pytorch_kernels_zero_the_gradient_between_the_formula_and_ln_9_later(name, spacing):
    """`spacing`: the grid step, or the format's spacing of representable margins near the threshold if wider."""
    formula, found = softmax_thresholds(FORMATS[name]), measured_thresholds(FORMATS[name])
    assert formula["saturation"] - spacing <= found["saturation"] <= formula["saturation"] + LN9 + spacing
    assert found["underflow"] == pytest.approx(formula["underflow"], abs=spacing)
    assert found["saturation"] < found["underflow"]


def test_measured_thresholds_is_inf_when_the_gradient_never_vanishes_below_top():
    assert measured_thresholds(torch.float64, top=30.0) == {"saturation": math.inf, "underflow": math.inf}


@pytest.fixture(scope="module")
def study(mnist_test):
    gi = gradient_inhibition(load_pretrained("mnist", "mlp3"), 0.35)  # the reproduction's strength for mlp3
    before = [p.detach().clone() for p in gi.parameters()]
    test = mnist_test.subset(500)
    rows = {(r["precision"], r["attack"]): r for r in precision_study(gi, test.images, test.labels, eps=0.1)}
    assert all(p.dtype == torch.float32 and torch.equal(p, b) for p, b in zip(gi.parameters(), before))
    return rows


def test_gi_masks_in_float32_and_not_in_float64(study):
    """Measured on these 500 images: float64 3.0% zero gradients, FGSM 79.4%; float32 89.6%, 6.8%."""
    wide, single = study["float64", "FGSM"], study["float32", "FGSM"]
    assert wide["zero_grad_fraction"] < 0.1 and wide["success"] > 0.6
    assert single["zero_grad_fraction"] > 0.8 and single["success"] < 0.15
    assert wide["success_low"] > single["success_high"]  # the intervals do not overlap
    assert wide["clean_acc"] == pytest.approx(single["clean_acc"], abs=0.01)  # the same model, the same answers


def test_narrower_formats_mask_at_least_as_much(study):
    """float16 saturates and underflows earliest (7.6 and 17.3): more zeros, fewer successes (95.4%, 1.0% here)."""
    single, half = study["float32", "FGSM"], study["float16", "FGSM"]
    assert half["zero_grad_fraction"] >= single["zero_grad_fraction"]
    assert half["success"] <= single["success"]
    for precision in ("bfloat16", "autocast-bfloat16"):
        assert study[precision, "FGSM"]["zero_grad_fraction"] > 0.8 and study[precision, "FGSM"]["success"] < 0.15


def test_fgsm_crafted_in_float64_breaks_the_float32_model(study):
    crafted = study["float32", "FGSM crafted in float64"]
    assert crafted["success"] > 0.6 and crafted["success_low"] > study["float32", "FGSM"]["success_high"]
    # float64 gives the gradient back (3.5% zeros on this data, 88.6% in float32): the attack's source
    assert study["float64", "FGSM"]["zero_grad_fraction"] < 0.1 < 0.8 < study["float32", "FGSM"]["zero_grad_fraction"]


def test_every_precision_has_a_row_and_the_study_checks_its_arguments(study, mnist_test):
    assert {p for p, _ in study} == set(PRECISIONS) and len(study) == len(PRECISIONS) + 1
    model, images, labels = load_pretrained("mnist", "mlp3"), mnist_test.images[:8], mnist_test.labels[:8]
    with pytest.raises(ValueError, match="Unknown precision 'float8'"):
        precision_study(model, images, labels, 0.1, precisions=["float8"])
    with pytest.raises(ValueError, match="'eps'"):
        precision_study(model, images, labels, 1.5)
