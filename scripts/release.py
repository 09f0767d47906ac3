"""The course as autograded assignments in nbgrader 0.9's format: `make release`.

    python scripts/release.py [--out release] [--only 02_adversarial_examples ...] [--check]

The instructor version stays what the repository holds: notebooks/0*.ipynb and notebooks/solutions/. From
them this script writes an nbgrader course directory (default: release/, git-ignored):

    release/nbgrader_config.py                 the course's nbgrader configuration (root: this folder)
    release/gradebook.db                       nbgrader's sqlite gradebook
    release/source/<stem>/<stem>.ipynb         instructor version with nbgrader metadata (one assignment per notebook)
    release/release/<stem>/<stem>.ipynb        student version, written by nbgrader's own generate_assignment
    release/submitted/, autograded/, feedback/ where nbgrader collects, grades and returns submissions

In each source notebook, every exercise cell (tag "exercise") becomes an nbgrader solution cell: the stub of
the notebook, whose `raise NotImplementedError(...)` is replaced by the body of the function of the same name
in notebooks/solutions/<stem>.py between `### BEGIN SOLUTION` and `### END SOLUTION` (helper functions it
calls are nested inside that region; the imports it needs go at the top of the cell). nbgrader's
generate_assignment replaces the region with `raise NotImplementedError()` again. After it comes a new
autograded test cell (TESTS below): visible asserts, then hidden tests between `### BEGIN HIDDEN TESTS` and
`### END HIDDEN TESTS` that the student version does not show and that autograding restores. Every other code
cell is locked (autograding restores its source); markdown cells stay plain.

Autograding (the instructor, in release/): put a submission at submitted/<student>/<stem>/<stem>.ipynb, then
`cd release && nbgrader autograde <stem>` (HASHROBUST_DATA must point at the data, as for `make test`).
`--check` does that here for each assignment with the solved student version (`fill_solutions`) and asserts
full marks. tests/test_release.py grades solved, unsolved and one-wrong submissions.
"""
from __future__ import annotations

import argparse
import ast
import contextlib
import json
import os
import shutil
import sys
import textwrap
import warnings
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
SOLUTIONS = NOTEBOOKS / "solutions"
COURSE_ID = "hashrobust"
CELL_TIMEOUT_S = 600  # per cell when nbgrader executes a notebook (its default, 30 s, is too short on a busy CPU)

CONFIG = f'''\
"""nbgrader configuration of the hashrobust course directory; written by scripts/release.py (do not edit here)."""
import os

c = get_config()  # noqa: F821 (provided by traitlets' config loader)
root = os.path.dirname(os.path.abspath(__file__))
c.CourseDirectory.root = root
c.CourseDirectory.course_id = {COURSE_ID!r}
c.CourseDirectory.db_url = "sqlite:///" + os.path.join(root, "gradebook.db")
c.Execute.timeout = {CELL_TIMEOUT_S}
c.ClearSolutions.code_stub = {{"python": "# YOUR CODE HERE\\nraise NotImplementedError()"}}
'''


@dataclass(frozen=True)
class Tests:
    """The autograded test cell of one exercise: `points`, asserts shown to students, asserts only graded."""

    points: int
    visible: str
    hidden: str


# One entry per exercise cell, keyed by the first function the cell defines. Inputs of the hidden tests differ
# from the visible ones. Tolerances: exact where the quantity is exactly defined (a CSV value, a ratio of
# integers, the bit-identical FGSM the solutions' doctests assert), otherwise a few images of a success rate
# (other CPUs may round a gradient or a softmax differently) or float32 round-off.
TESTS: dict[str, Tests] = {
    # ------------------------------------------------------------------ 00_start_here
    "compression_ratio": Tests(1, '''\
ratio8 = compression_ratio(hr.load_pretrained("mnist", "mlp3", ratio=8))
assert abs(ratio8 - 7.93) < 0.005, f"mlp3, ratio 8: expected about 7.93 (virtual / real parameters), got {ratio8}"
assert compression_ratio(hr.load_pretrained("mnist", "mlp3", ratio=1)) == 1.0, "the dense model: exactly 1.0"
''', '''\
for arch, ratio in (("mlp3", 64), ("lenet", 8), ("lenet", 64)):
    check_model = hr.load_pretrained("mnist", arch, ratio=ratio)
    real, virtual = hr.count_parameters(check_model)
    assert abs(compression_ratio(check_model) - virtual / real) < 1e-9, (arch, ratio)
assert abs(compression_ratio(hr.load_pretrained("mnist", "mlp3", ratio=64)) - 59.254) < 0.001
'''),
    "smallest_checkpoint": Tests(1, '''\
assert smallest_checkpoint(hr.read_manifest(), 0.975) == "mnist-mlp3-r32.pt"
''', '''\
assert smallest_checkpoint(hr.read_manifest(), 0.99) == "mnist-lenet-r64.pt"
assert smallest_checkpoint(hr.read_manifest(), 0.5) == "mnist-mlp3-r64-pgd-at.pt"  # adversarially trained: 70 bytes less
assert smallest_checkpoint(hr.read_manifest()) == "mnist-mlp3-r32.pt"  # the default min_accuracy, 0.975
assert smallest_checkpoint(hr.read_manifest(), 1.0) is None
toy = {"a.pt": {"clean_test_accuracy": 0.90, "bytes": 10}, "b.pt": {"clean_test_accuracy": 0.99, "bytes": 50},
       "c.pt": {"clean_test_accuracy": 0.95, "bytes": 20}, "d.pt": {"clean_test_accuracy": 0.97, "bytes": 30}}
assert smallest_checkpoint(toy, 0.95) == "c.pt" and smallest_checkpoint(toy, 0.96) == "d.pt"
assert smallest_checkpoint(toy, 0.0) == "a.pt" and smallest_checkpoint(toy, 0.995) is None
'''),
    # ------------------------------------------------------------------ 01_hashednets
    "virtual_matrix": Tests(1, '''\
check_layer = hr.HashedLinear(in_features=6, out_features=4, ratio=4, seed=0)
V = virtual_matrix(check_layer.weight, check_layer.bucket, check_layer.sign)
assert tuple(V.shape) == (4, 6), f"V has the shape of bucket, (4, 6); got {tuple(V.shape)}"
assert torch.equal(V, check_layer.virtual_weight()), "V[i, j] must be sign[i, j] * weight[bucket[i, j]]"
''', '''\
small = virtual_matrix(torch.tensor([0.5, -2.0]), torch.tensor([[1, 0], [0, 1]]),
                       torch.tensor([[1.0, -1.0], [1.0, 1.0]]))
assert torch.equal(small, torch.tensor([[-2.0, -0.5], [0.5, -2.0]]))
for shape, ratio, seed in (((5, 9), 3, 7), ((8, 20), 5, 3)):
    check_layer = hr.HashedLinear(in_features=shape[1], out_features=shape[0], ratio=ratio, seed=seed)
    assert torch.equal(virtual_matrix(check_layer.weight, check_layer.bucket, check_layer.sign),
                       check_layer.virtual_weight()), (shape, ratio, seed)
zoo_layer = hr.load_pretrained("mnist", "mlp3", ratio=8)[2]
assert torch.equal(virtual_matrix(zoo_layer.weight, zoo_layer.bucket, zoo_layer.sign), zoo_layer.virtual_weight())
'''),
    "real_weight_grad": Tests(2, '''\
torch.manual_seed(0)
check_layer = hr.HashedLinear(in_features=6, out_features=4, ratio=4, seed=0)
x_check = torch.rand(5, 6)
V_leaf = check_layer.virtual_weight().detach().requires_grad_(True)  # a dense copy of V, to get dL/dV
(x_check @ V_leaf.T + check_layer.bias).square().sum().backward()
check_layer(x_check).square().sum().backward()  # the same loss through the hashed layer: dL/dw by autograd
grad_w = real_weight_grad(V_leaf.grad, check_layer.bucket, check_layer.sign, check_layer.weight.numel())
assert tuple(grad_w.shape) == (6,), f"one gradient per real weight: shape (6,), got {tuple(grad_w.shape)}"
assert torch.allclose(grad_w, check_layer.weight.grad, rtol=1e-5, atol=1e-6), "dL/dw differs from autograd's"
''', '''\
small = real_weight_grad(torch.ones(2, 2), torch.tensor([[1, 0], [0, 1]]), torch.tensor([[1.0, -1.0], [1.0, 1.0]]), 3)
assert torch.equal(small, torch.tensor([0.0, 2.0, 0.0])), "an empty bucket's gradient is 0"
torch.manual_seed(1)
check_layer = hr.HashedLinear(in_features=20, out_features=8, ratio=5, seed=3)
x_check = torch.randn(7, 20)
V_leaf = check_layer.virtual_weight().detach().requires_grad_(True)
(x_check @ V_leaf.T + check_layer.bias).tanh().sum().backward()
check_layer(x_check).tanh().sum().backward()
assert torch.allclose(real_weight_grad(V_leaf.grad, check_layer.bucket, check_layer.sign, check_layer.weight.numel()),
                      check_layer.weight.grad, rtol=1e-5, atol=1e-6)
'''),
    "finetune_hashed": Tests(2, '''\
check_train = hr.load_dataset("mnist", "train").subset(10_000)
before, after = finetune_hashed(dense, 8, check_train, test)
assert abs(before - hr.evaluate(hr.compress(dense, ratio=8), test)) < 1e-9, "before: compress(dense, 8), not trained"
assert before < 0.5 and after > 0.88, f"expected about 0.289 before and 0.91 after; got {before:.3f}, {after:.3f}"
''', '''\
reference = hr.load_pretrained("mnist", "mlp3", ratio=1, device=device)
assert all(torch.equal(a, b) for a, b in zip(dense.state_dict().values(), reference.state_dict().values())), \
    "the dense model must not be modified"
before, after = finetune_hashed(dense, 4, check_train.subset(5000), test, epochs=1, lr=0.05)
assert abs(before - 0.662) < 0.004 and after > 0.88, (before, after)  # about 0.662 and 0.906
before, after = finetune_hashed(dense, 64, check_train, test, epochs=1, lr=0.05)
assert before < 0.2 and after > 0.85, (before, after)  # about 0.089 and 0.892
'''),
    "inference_cost": Tests(1, '''\
batch = test.images[:256].to(device)
costs = {r: inference_cost(hr.load_pretrained("mnist", "mlp3", ratio=r, device=device), batch) for r in (1, 8, 64)}
assert [costs[r]["macs"] for r in (1, 8, 64)] == [203_264_000] * 3, "MACs: 256 x (784 x 1000 + 1000 x 10), any ratio"
assert [costs[r]["stored"] for r in (1, 8, 64)] == [795_010, 100_260, 13_417], "stored: hr.count_parameters(model)[0]"
''', '''\
assert [costs[r]["resident_bytes"] for r in (1, 8, 64)] == [3_180_048, 13_105_048, 12_757_676], \
    [costs[r]["resident_bytes"] for r in (1, 8, 64)]
assert all(costs[r]["seconds"] > 0 for r in (1, 8, 64))
toy = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3), torch.nn.ReLU(), hr.HashedLinear(3, 2, ratio=2))
toy_cost = inference_cost(toy, torch.rand(7, 1, 2, 2), repeats=3)
assert toy_cost["macs"] == 7 * (4 * 3 + 3 * 2) and toy_cost["stored"] == 12 + 3 + 3 + 2, toy_cost
'''),
    # ------------------------------------------------------------------ 02_adversarial_examples
    "my_fgsm": Tests(2, '''\
check_model = hr.load_pretrained("mnist", "mlp3", ratio=1)
check_images = hr.load_dataset("mnist", "test").images[:8]
adv_images = my_fgsm(check_model, check_images, 0.1)
assert adv_images.shape == check_images.shape
assert torch.equal(adv_images, hr.FGSM(check_model, eps=0.1)(check_images)), "not the same images as hr.FGSM"
''', '''\
check_images = hr.load_dataset("mnist", "test").images[100:164]
before = check_images.clone()
for arch, ratio, eps in (("mlp3", 8, 0.25), ("mlp3", 1, 0.05)):
    check_model = hr.load_pretrained("mnist", arch, ratio=ratio)
    adv_images = my_fgsm(check_model, check_images, eps)
    assert torch.equal(adv_images, hr.FGSM(check_model, eps=eps)(check_images)), (arch, ratio, eps)
    assert 0 <= adv_images.min() and adv_images.max() <= 1
    assert (adv_images - check_images).abs().max() <= eps + 1e-6
assert torch.equal(check_images, before), "the input images must not be modified"
'''),
    "smallest_flipping_eps": Tests(1, '''\
check_model = hr.load_pretrained("mnist", "mlp3", ratio=1)
check_images = hr.load_dataset("mnist", "test").images[:8]
grid = [round(0.01 * k, 2) for k in range(1, 31)]
assert smallest_flipping_eps(check_model, check_images[:1], grid) == 0.07
''', '''\
assert smallest_flipping_eps(check_model, check_images[1:2], grid) == 0.11
assert smallest_flipping_eps(check_model, check_images[4:5], grid) == 0.05
assert smallest_flipping_eps(check_model, check_images[:1], [0.01, 0.02]) is None
assert smallest_flipping_eps(hr.load_pretrained("mnist", "mlp3", ratio=8), check_images[3:4], grid) == 0.13
'''),
    # ------------------------------------------------------------------ 03_attacking_compressed_models
    "transfer_gap": Tests(1, '''\
check_test = hr.load_dataset("mnist", "test")
check_dense = hr.load_pretrained("mnist", "mlp3", 1)
gap = transfer_gap(check_dense, hr.load_pretrained("mnist", "mlp3", 8), 0.1, check_test.images[:200],
                   check_test.labels[:200])
assert abs(gap - 0.445) <= 0.01, f"expected about 0.445 (white-box minus transfer success), got {gap}"
''', '''\
gap = transfer_gap(check_dense, hr.load_pretrained("mnist", "mlp3", 64), 0.2, check_test.images[200:400],
                   check_test.labels[200:400])
assert abs(gap - 0.08) <= 0.01, gap
assert abs(transfer_gap(check_dense, check_dense, 0.1, check_test.images[:100], check_test.labels[:100])) < 1e-9
'''),
    "eq2_gradient": Tests(2, '''\
from hashrobust.attacks import loss_gradient

check_test = hr.load_dataset("mnist", "test")
check_hashed = hr.load_pretrained("mnist", "mlp3", 8)
check_images, check_labels = check_test.images[:100], check_test.labels[:100]
by_hand = eq2_gradient(check_hashed, check_images, check_labels)
assert tuple(by_hand.shape) == (100, 1, 28, 28), f"one gradient per image, as the images: {tuple(by_hand.shape)}"
assert (by_hand - loss_gradient(check_hashed, check_images, check_labels)).abs().max().item() < 1e-6
''', '''\
check_images, check_labels = check_test.images[300:350], (check_test.labels[300:350] + 3) % 10  # wrong labels too
for ratio in (1, 64):
    check_model = hr.load_pretrained("mnist", "mlp3", ratio)
    by_hand = eq2_gradient(check_model, check_images, check_labels)
    assert (by_hand - loss_gradient(check_model, check_images, check_labels)).abs().max().item() < 1e-6, ratio
'''),
    "dense_twin": Tests(1, '''\
lenet = hr.load_pretrained("mnist", "lenet", 64)
twin = dense_twin(lenet)
assert hr.count_parameters(lenet) == (32409, 431080), "the argument must not be modified"
assert hr.count_parameters(twin) == (431080, 431080), f"every weight of the twin is real: {hr.count_parameters(twin)}"
''', '''\
check_images = hr.load_dataset("mnist", "test").images[:100]
for arch, ratio in (("lenet", 64), ("mlp3", 8), ("mlp3", 1)):
    check_model = hr.load_pretrained("mnist", arch, ratio)
    twin = dense_twin(check_model)
    assert not any(isinstance(m, hr.HashedLinear) for m in twin.modules()), (arch, ratio)
    assert any(isinstance(m, hr.HashedLinear) for m in check_model.modules()) == (ratio != 1), (arch, ratio)
    with torch.no_grad():
        assert (twin(check_images) - check_model(check_images)).abs().max().item() < 1e-4, (arch, ratio)
'''),
    # ------------------------------------------------------------------ 04_robustness_analysis
    "eps_over_half": Tests(1, '''\
check_rows = reports.read_results("mnist", "analysis")
assert eps_over_half(check_rows, "mlp3") == {1.0: 0.1, 2.0: 0.1, 4.0: 0.1, 8.0: 0.1, 16.0: 0.1, 32.0: 0.05, 64.0: 0.05}
''', '''\
assert eps_over_half(check_rows, "lenet") == {1.0: 0.25, 8.0: 0.2, 64.0: 0.15}
toy = [dict(arch="toy", mode="white-box", attack="FGSM", ratio=r, source_ratio=r, eps=e, success=s)
       for r, cells in ((1.0, ((0.1, 0.2), (0.2, 0.5), (0.3, 0.9))), (4.0, ((0.1, 0.6), (0.2, 0.7))),
                        (8.0, ((0.1, 0.1), (0.2, 0.3))))
       for e, s in cells]
toy += [dict(arch="toy", mode="white-box", attack="BIM", ratio=1.0, source_ratio=1.0, eps=0.1, success=0.99),
        dict(arch="toy", mode="transfer", attack="FGSM", ratio=8.0, source_ratio=1.0, eps=0.1, success=0.99),
        dict(arch="other", mode="white-box", attack="FGSM", ratio=8.0, source_ratio=8.0, eps=0.1, success=0.99)]
assert eps_over_half(toy, "toy") == {1.0: 0.3, 4.0: 0.1, 8.0: None}  # 0.5 is not above 50%
assert eps_over_half(toy, "toy", "BIM") == {1.0: 0.1}
'''),
    "hashed_minus_dense": Tests(1, '''\
check_rows = reports.read_results("mnist", "analysis")
gaps = hashed_minus_dense(check_rows, "mlp3")
assert sorted(gaps) == ["BIM", "FGSM", "PGD"]
assert all(abs(gaps[a] - v) < 0.0005 for a, v in {"FGSM": 0.085, "BIM": 0.056, "PGD": 0.056}.items()), gaps
''', '''\
gaps = hashed_minus_dense(check_rows, "lenet")
assert all(abs(gaps[a] - v) < 1e-6 for a, v in {"FGSM": 0.126333, "BIM": 0.036333, "PGD": 0.03575}.items()), gaps
toy = [dict(arch="toy", mode="white-box", attack="FGSM", ratio=r, source_ratio=r, eps=e, success=s)
       for r, cells in ((1.0, ((0.1, 0.2), (0.2, 0.5))), (4.0, ((0.1, 0.6), (0.2, 0.7))),
                        (8.0, ((0.1, 0.1), (0.2, 0.3))))
       for e, s in cells]
toy.append(dict(arch="toy", mode="transfer", attack="FGSM", ratio=8.0, source_ratio=1.0, eps=0.1, success=0.99))
toy_gap = hashed_minus_dense(toy, "toy")
assert list(toy_gap) == ["FGSM"] and abs(toy_gap["FGSM"] - 0.075) < 1e-9, toy_gap
'''),
    "transfer_asymmetry": Tests(1, '''\
check_rows = reports.read_results("mnist", "analysis")
asymmetry = transfer_asymmetry(check_rows, "mlp3", "FGSM", 0.1)
expected = {2.0: 0.016, 4.0: 0.032, 8.0: 0.073, 16.0: 0.156, 32.0: 0.273, 64.0: 0.328}
assert sorted(asymmetry) == sorted(expected), f"one value per hashed ratio: {sorted(asymmetry)}"
assert all(abs(asymmetry[r] - v) < 0.0005 for r, v in expected.items()), asymmetry
''', '''\
for arch, attack, eps, expected in (
        ("lenet", "BIM", 0.2, {8.0: -0.007, 64.0: 0.147}),
        ("mlp3", "PGD", 0.05, {2.0: 0.011, 4.0: 0.022, 8.0: 0.03, 16.0: 0.053, 32.0: 0.071, 64.0: 0.107})):
    asymmetry = transfer_asymmetry(check_rows, arch, attack, eps)
    assert sorted(asymmetry) == sorted(expected), (arch, attack, eps, asymmetry)
    assert all(abs(asymmetry[r] - v) < 1e-6 for r, v in expected.items()), (arch, attack, eps, asymmetry)
'''),
    "margin_by_ratio": Tests(2, '''\
stats = margin_by_ratio("mlp3", (1, 2, 8, 64), images, labels)
expected = {1: (11.532, 253.06, 0.04575), 2: (6.843, 151.88, 0.04434), 8: (6.740, 176.39, 0.03827),
            64: (7.935, 428.08, 0.01827)}
assert sorted(stats) == [1, 2, 8, 64], f"one tuple per ratio: {sorted(stats)}"
for r, (m, g, d) in expected.items():
    assert abs(stats[r][0] - m) < 0.01 and abs(stats[r][1] - g) < 0.1 and abs(stats[r][2] - d) < 1e-4, (r, stats[r])
''', '''\
stats = margin_by_ratio("mlp3", (4, 16, 32), images, labels)
for r, (m, g, d) in {4: (6.674, 153.64, 0.04304), 16: (7.121, 217.18, 0.03226), 32: (7.494, 308.10, 0.02441)}.items():
    assert abs(stats[r][0] - m) < 0.01 and abs(stats[r][1] - g) < 0.1 and abs(stats[r][2] - d) < 1e-4, (r, stats[r])
stats = margin_by_ratio("lenet", (1, 8, 64), images[:200], labels[:200])
for r, (m, g, d) in {1: (16.638, 158.62, 0.11467), 8: (11.284, 103.44, 0.11533), 64: (12.615, 158.36, 0.08324)}.items():
    assert abs(stats[r][0] - m) < 0.01 and abs(stats[r][1] - g) < 0.1 and abs(stats[r][2] - d) < 1e-4, (r, stats[r])
'''),
    # ------------------------------------------------------------------ 05_gradient_inhibition
    "softmax_is_one": Tests(2, '''\
import math

softmax_margin = smallest_margin(softmax_is_one)
# 24 ln 2 = 16.64 .. 24 ln 2 + ln 9 = 18.84: where float32 rounds p_0 to 1 depends on the CPU's summation order
assert 24 * math.log(2) - 0.01 <= softmax_margin <= 24 * math.log(2) + math.log(9) + 0.01, softmax_margin
gradient_margin = smallest_margin(ce_gradient_is_zero)
assert abs(gradient_margin - 103.97) < 0.01, f"expected about 150 ln 2 = 103.97, got {gradient_margin}"
''', '''\
assert not softmax_is_one(15.0) and softmax_is_one(20.0) and not softmax_is_one(20.0, torch.float64)
assert not ce_gradient_is_zero(50.0) and ce_gradient_is_zero(110.0) and not ce_gradient_is_zero(110.0, torch.float64)
assert abs(smallest_margin(lambda m: ce_gradient_is_zero(m, torch.float64)) - 745.13) < 0.05
found = smallest_margin(lambda m: m >= 3.25)
assert 3.25 <= found <= 3.25 + 1e-4, found
found = smallest_margin(lambda m: m > 10.0, low=5.0, high=20.0, tol=1e-3)
assert 10.0 < found <= 10.0 + 1e-3, found
'''),
    "zero_gradient_fraction": Tests(1, '''\
import warnings

check_model = hr.load_pretrained("mnist", "mlp3", 1)
check_gi = hr.gradient_inhibition(check_model, eps=0.35)
check_images = hr.load_dataset("mnist", "test").images[:500]
fraction32 = zero_gradient_fraction(check_gi, check_images)
fraction64 = zero_gradient_fraction(check_gi, check_images, torch.float64)
assert abs(fraction32 - 0.908) <= 0.02, f"float32: expected about 0.908, got {fraction32}"
assert abs(fraction64 - 0.03) <= 0.02, f"float64: expected about 0.03, got {fraction64}"
''', '''\
other_images = hr.load_dataset("mnist", "test").images[500:800]
with warnings.catch_warnings():
    warnings.simplefilter("ignore", hr.GradientMaskingWarning)
    report = hr.inhibition_report(check_gi, other_images)
assert abs(zero_gradient_fraction(check_gi, other_images) - report["zero_grad_fraction"]) <= 0.01
assert abs(zero_gradient_fraction(check_gi, other_images, torch.float64) - 0.0367) <= 0.02
assert zero_gradient_fraction(check_model, other_images) <= 0.01  # undefended: no saturated softmax
'''),
    # ------------------------------------------------------------------ 06_adaptive_attacks
    "cw_margin": Tests(1, '''\
from hashrobust.attacks import logit_margin

check_gi = hr.gradient_inhibition(hr.load_pretrained("mnist", "mlp3", 1), eps=0.35)
check_images = hr.load_dataset("mnist", "test").images[:200]
with torch.no_grad():
    z = check_gi(check_images)
margin = cw_margin(z, z.argmax(1))
assert tuple(margin.shape) == (200,), f"one margin per image: {tuple(margin.shape)}"
assert torch.allclose(margin, logit_margin(z, z.argmax(1)), rtol=1e-6, atol=1e-5)
''', '''\
small = cw_margin(torch.tensor([[2.0, 5.0, 1.0], [0.0, -1.0, 3.0]]), torch.tensor([1, 0]))
assert torch.allclose(small, torch.tensor([-3.0, 3.0])), small
torch.manual_seed(0)
logits, true_labels = torch.randn(64, 10) * 5, torch.randint(0, 10, (64,))
before = logits.clone()
assert torch.allclose(cw_margin(logits, true_labels), logit_margin(logits, true_labels), rtol=1e-6, atol=1e-5)
assert torch.equal(logits, before), "the logits must not be modified"
'''),
    "fgsm_on_logits": Tests(1, '''\
from hashrobust.adaptive import Temperature

check_gi = hr.gradient_inhibition(hr.load_pretrained("mnist", "mlp3", 1), eps=0.35)
check_images = hr.load_dataset("mnist", "test").images[:200]
adv_images = fgsm_on_logits(check_gi, check_images, 0.3, 1000.0)
assert torch.equal(adv_images, hr.FGSM(Temperature(check_gi, 1000.0), eps=0.3)(check_images))
assert (hr.predict(check_gi, adv_images) != hr.predict(check_gi, check_images)).float().mean() >= 0.98
''', '''\
other_images = hr.load_dataset("mnist", "test").images[200:400]
for eps, temperature in ((0.1, 5.0), (0.2, 50.0)):
    adv_images = fgsm_on_logits(check_gi, other_images, eps, temperature)
    expected = hr.FGSM(Temperature(check_gi, temperature), eps=eps)(other_images)
    assert torch.equal(adv_images, expected), (eps, temperature)
    assert 0 <= adv_images.min() and adv_images.max() <= 1
'''),
    "worst_case_accuracy": Tests(1, '''\
from hashrobust.adaptive import Temperature

check_gi = hr.gradient_inhibition(hr.load_pretrained("mnist", "mlp3", 1), eps=0.35)
check_test = hr.load_dataset("mnist", "test")
check_images, check_labels = check_test.images[:200], check_test.labels[:200]
check_model = hr.load_pretrained("mnist", "mlp3", 1)
attacks = [hr.FGSM(check_gi, eps=0.05), hr.FGSM(Temperature(check_gi, 1000.0), eps=0.05),
           hr.PGD(check_model, eps=0.05, alpha=0.0125, steps=10, seed=0, loss="margin")]  # the last: a transfer
accuracy = worst_case_accuracy(check_gi, attacks, check_images, check_labels)
assert abs(accuracy - 0.58) <= 0.01, f"expected about 0.58, got {accuracy}"
''', '''\
other_images, other_labels = check_test.images[200:400], check_test.labels[200:400]
for attack, expected in zip(attacks, (0.90, 0.615, 0.665)):
    assert abs(worst_case_accuracy(check_gi, [attack], other_images, other_labels) - expected) <= 0.011, attack
assert abs(worst_case_accuracy(check_gi, attacks, other_images, other_labels) - 0.585) <= 0.011
clean = (hr.predict(check_gi, other_images) == other_labels).float().mean().item()
assert abs(worst_case_accuracy(check_gi, [], other_images, other_labels) - clean) < 1e-6
'''),
    # ------------------------------------------------------------------ 07_adversarial_training
    "fgsm_from": Tests(1, '''\
check_at = hr.load_pretrained("mnist", "lenet", 1, training="pgd-at")
check_test = hr.load_dataset("mnist", "test")
check_images, check_labels = check_test.images[:100], check_test.labels[:100]
adv_images = fgsm_from(check_at, check_images, check_labels, 0.3, 0.3, torch.zeros_like(check_images))
assert torch.equal(adv_images, hr.FGSM(check_at, eps=0.3)(check_images, check_labels)), "delta = 0, alpha = eps: FGSM"
''', '''\
other_images, other_labels = check_test.images[100:200], check_test.labels[100:200]
start = torch.empty_like(other_images).uniform_(-0.1, 0.1, generator=torch.Generator().manual_seed(1))
adv_images = fgsm_from(check_at, other_images, other_labels, 0.1, 0.125, start)
assert (adv_images - other_images).abs().max() <= 0.1 + 1e-6 and 0 <= adv_images.min() and adv_images.max() <= 1
x = (other_images + start).requires_grad_(True)
torch.nn.functional.cross_entropy(check_at(x), other_labels).backward()
expected = (other_images + (start + 0.125 * x.grad.sign()).clamp(-0.1, 0.1)).clamp(0, 1)
assert torch.allclose(adv_images, expected, atol=1e-6)
'''),
    "masked_fraction": Tests(1, '''\
import warnings

check_test = hr.load_dataset("mnist", "test")
check_images, check_labels = check_test.images[:200], check_test.labels[:200]
check_at = hr.load_pretrained("mnist", "lenet", 1, training="pgd-at")
assert masked_fraction(check_at, check_images, check_labels) <= 0.01, "adversarial training masks nothing"
''', '''\
check_gi = hr.gradient_inhibition(hr.load_pretrained("mnist", "lenet", 1), eps=0.35)
other_images, other_labels = check_test.images[200:400], check_test.labels[200:400]
with warnings.catch_warnings():
    warnings.simplefilter("ignore", hr.GradientMaskingWarning)
    report = hr.inhibition_report(check_gi, other_images, other_labels)
assert abs(masked_fraction(check_gi, other_images, other_labels) - report["zero_grad_fraction"]) <= 0.01
'''),
    "collapse_epoch": Tests(1, '''\
from hashrobust.adversarial_study import training_histories

assert collapse_epoch([0.5, 0.8, 0.55]) == (3, 2)
assert collapse_epoch(training_histories("mnist", "lenet")["fgsm-at"]) == (None, 4)
''', '''\
assert collapse_epoch([0.9, 0.75, 0.65]) == (3, 1), "a fall of 0.15 goes on, one of 0.25 stops"
assert collapse_epoch([0.2, 0.3, 0.4]) == (None, 3)
assert collapse_epoch([0.6, 0.6, 0.5], drop=0.05) == (3, 1), "equal epochs keep the first best"
assert collapse_epoch(training_histories("mnist", "lenet")["pgd-at"]) == (None, 10)
'''),
    # ------------------------------------------------------------------ 08_compression_and_robustness
    "ste_round": Tests(1, '''\
x = torch.tensor([0.4, 1.6, -2.5, 3.0], requires_grad=True)
y = ste_round(x)
assert torch.equal(y.detach(), torch.tensor([0.0, 2.0, -2.0, 3.0])), f"forward: torch.round(x), got {y}"
(3 * y).sum().backward()
assert torch.equal(x.grad, torch.full((4,), 3.0)), f"the gradient must pass straight through: {x.grad}"
''', '''\
torch.manual_seed(0)
x = (torch.randn(5, 7) * 4).requires_grad_(True)
w = torch.randn(5, 7)
y = ste_round(x)
assert y.shape == x.shape and torch.equal(y.detach(), torch.round(x.detach()))
(w * y).sum().backward()
assert torch.equal(x.grad, w), "d(sum(w * ste_round(x))) / dx must be w"
'''),
    "pruned_storage_ratio": Tests(1, '''\
assert abs(pruned_storage_ratio(1000, 784, 8) - 6.048) < 5e-4, pruned_storage_ratio(1000, 784, 8)
assert abs(pruned_storage_ratio(1000, 784, 64) - 45.9) < 5e-3, pruned_storage_ratio(1000, 784, 64)
''', '''\
from torch import nn
from hashrobust.shootout import prune, storage

for out_features, in_features, ratio in ((10, 1000, 8), (300, 500, 16), (64, 3, 2)):
    layer = nn.Sequential(nn.Linear(in_features, out_features))
    expected = storage(prune(layer, ratio), out_features * in_features)["ratio_all"]
    got = pruned_storage_ratio(out_features, in_features, ratio)
    assert abs(got - expected) <= 1e-9 * expected, (out_features, in_features, ratio, got, expected)
'''),
    "saturation_margin": Tests(1, '''\
got = [round(saturation_margin(d), 2) for d in (torch.float64, torch.float32, torch.bfloat16, torch.float16)]
assert got == [36.74, 16.64, 5.55, 7.62], got
''', '''\
import math
from hashrobust.precision import softmax_thresholds

for dtype in (torch.float64, torch.float32, torch.bfloat16, torch.float16):
    assert math.isclose(saturation_margin(dtype), softmax_thresholds(dtype)["saturation"], rel_tol=1e-12), dtype
m = saturation_margin(torch.float32)
assert torch.softmax(torch.tensor([m + 0.5, 0.0]), 0)[0].item() == 1.0
assert torch.softmax(torch.tensor([m - 0.5, 0.0]), 0)[0].item() < 1.0
'''),
}


# ----------------------------------------------------------------------------- building the source notebooks
def _source(cell: dict) -> str:
    source = cell["source"]
    return source if isinstance(source, str) else "".join(source)


def _lines(text: str) -> list[str]:
    """A notebook cell's `source` as a JSON list of lines, as Jupyter writes it."""
    return text.splitlines(keepends=True)


def is_exercise(cell: dict) -> bool:
    return cell["cell_type"] == "code" and "exercise" in cell.get("metadata", {}).get("tags", [])


def exercise_functions(cell: dict) -> list[str]:
    """The names of the functions an exercise cell defines (its stubs), in order."""
    return [node.name for node in ast.parse(_source(cell)).body if isinstance(node, ast.FunctionDef)]


def _nbgrader(grade_id: str, *, solution: bool = False, grade: bool = False, locked: bool = False,
              points: int | None = None) -> dict:
    meta = {"grade": grade, "grade_id": grade_id, "locked": locked, "schema_version": 3, "solution": solution,
            "task": False}
    if points is not None:
        meta["points"] = points
    return meta


class _Solutions:
    """The top-level functions and imports of one notebooks/solutions/<stem>.py, as source text."""

    def __init__(self, path: Path):
        self.path = path
        self.text = path.read_text()
        self.lines = self.text.splitlines()
        tree = ast.parse(self.text)
        self.functions = {node.name: node for node in tree.body if isinstance(node, ast.FunctionDef)}
        self.imports: dict[str, str] = {}  # bound name -> one import statement
        for node in tree.body:
            if isinstance(node, ast.Import):
                for alias in node.names:
                    name = alias.asname or alias.name.split(".")[0]
                    self.imports[name] = f"import {alias.name}" + (f" as {alias.asname}" if alias.asname else "")
            elif isinstance(node, ast.ImportFrom) and node.module != "__future__":
                for alias in node.names:
                    self.imports[alias.asname or alias.name] = (
                        f"from {'.' * node.level}{node.module or ''} import {alias.name}"
                        + (f" as {alias.asname}" if alias.asname else ""))

    def body(self, name: str) -> tuple[list[str], list[str]]:
        """(the decorators' sources, the function's body without its docstring, dedented to column 0)."""
        node = self.functions[name]
        statements = node.body
        if (statements and isinstance(statements[0], ast.Expr) and isinstance(statements[0].value, ast.Constant)
                and isinstance(statements[0].value.value, str)):
            statements = statements[1:]  # the docstring: its doctests would show the expected values
        if not statements:
            raise ValueError(f"{self.path.name}: {name} has no body besides its docstring")
        lines = self.lines[statements[0].lineno - 1:node.end_lineno]
        decorators = [ast.unparse(d) for d in node.decorator_list]
        return decorators, textwrap.dedent("\n".join(lines)).splitlines()

    def signature(self, name: str) -> str:
        """`def name(args):` without annotations (a nested helper needs no imports for its type hints)."""
        node = ast.parse(ast.unparse(self.functions[name])).body[0]  # a copy
        for arg in [*node.args.posonlyargs, *node.args.args, *node.args.kwonlyargs, node.args.vararg,
                    node.args.kwarg]:
            if arg is not None:
                arg.annotation = None
        node.returns, node.decorator_list, node.body = None, [], [ast.Pass()]
        return ast.unparse(node).splitlines()[0]

    def names_used(self, name: str) -> set[str]:
        node = self.functions[name]
        used = {n.id for n in ast.walk(ast.Module(body=node.body, type_ignores=[])) if isinstance(n, ast.Name)}
        for default in [*node.args.defaults, *node.args.kw_defaults, *node.decorator_list]:
            if default is not None:
                used |= {n.id for n in ast.walk(default) if isinstance(n, ast.Name)}
        return used


def _with_decorators(decorators: list[str], body: list[str], where: str) -> list[str]:
    """A decorated solution becomes a `with` block inside the stub (the stub's def line stays the notebook's)."""
    for decorator in reversed(decorators):
        if decorator not in ("torch.no_grad()", "torch.inference_mode()"):
            raise ValueError(f"{where}: decorator @{decorator} is not supported; use a `with` block in the solution")
        body = [f"with {decorator}:", *("    " + line if line else line for line in body)]
    return body


def solution_cell_source(cell: dict, solutions: _Solutions) -> str:
    """The instructor's solution cell: the notebook's stub cell with each stub's `raise NotImplementedError(...)`
    replaced by a comment with its message and the solution's body between BEGIN/END SOLUTION markers."""
    source = _source(cell)
    tree = ast.parse(source)
    lines = source.splitlines()
    stubs = [node for node in tree.body if isinstance(node, ast.FunctionDef)]
    defined = {node.name for node in stubs}
    needed_names: set[str] = set()
    # bottom-up, so that the line numbers of the stubs above stay valid
    for stub in reversed(stubs):
        where = f"{solutions.path.name}: {stub.name}"
        if stub.name not in solutions.functions:
            raise ValueError(f"{where}: no solution for this exercise")
        solved = solutions.functions[stub.name]
        params = lambda f: [a.arg for a in [*f.args.posonlyargs, *f.args.args, *f.args.kwonlyargs]]  # noqa: E731
        if params(stub) != params(solved):
            raise ValueError(f"{where}: the stub's parameters {params(stub)} differ from the solution's "
                             f"{params(solved)}")
        if len(stub.body) != 1 or not isinstance(stub.body[0], ast.Raise):
            raise ValueError(f"{where}: a stub's body must be one `raise NotImplementedError(...)`")
        raise_node = stub.body[0]
        indent = " " * raise_node.col_offset
        message = ""
        exc = raise_node.exc
        if isinstance(exc, ast.Call) and exc.args and isinstance(exc.args[0], ast.Constant):
            message = str(exc.args[0].value)

        # helpers: other top-level functions of the solutions module the solution calls, nested in its body
        helpers: list[str] = []
        todo, seen = [stub.name], {stub.name}
        used: set[str] = set()
        while todo:
            name = todo.pop()
            names = solutions.names_used(name)
            used |= names
            for other in sorted(names):
                if other in solutions.functions and other not in seen and other not in defined:
                    seen.add(other)
                    helpers.append(other)
                    todo.append(other)
        needed_names |= used
        region: list[str] = []
        for helper in reversed(helpers):  # a helper's own helpers were found after it: define them first
            decorators, body = solutions.body(helper)
            region += [solutions.signature(helper), *("    " + line if line else line
                                                      for line in _with_decorators(decorators, body, where))]
        decorators, body = solutions.body(stub.name)
        region += _with_decorators(decorators, body, where)
        new = ([f"{indent}# {message}"] if message else []) + [f"{indent}### BEGIN SOLUTION"]
        new += [indent + line if line else line for line in region] + [f"{indent}### END SOLUTION"]
        lines[raise_node.lineno - 1:raise_node.end_lineno] = new

    imports = [solutions.imports[name] for name in sorted(needed_names) if name in solutions.imports]
    imports = [statement for statement in dict.fromkeys(imports) if statement not in lines]
    imports.sort(key=lambda s: (s.startswith("from"), s))
    text = "\n".join(imports + ([""] if imports else []) + lines)
    ast.parse(text)  # the solved cell must stay valid Python
    return text


def grading_cell_source(tests: Tests) -> str:
    """The autograded test cell: visible asserts, then the hidden ones between nbgrader's markers."""
    return (tests.visible.rstrip("\n") + "\n\n### BEGIN HIDDEN TESTS\n" + tests.hidden.rstrip("\n")
            + "\n### END HIDDEN TESTS\n")


def source_notebook(path: Path, solutions_path: Path | None = None) -> dict:
    """The instructor version of one notebook with nbgrader metadata (a notebook dict, nbformat 4)."""
    solutions = _Solutions(solutions_path or SOLUTIONS / f"{path.stem}.py")
    notebook = json.loads(path.read_text())
    cells = []
    exercise = 0
    for index, cell in enumerate(notebook["cells"]):
        cell = json.loads(json.dumps(cell))  # a copy
        meta = cell.setdefault("metadata", {})
        if is_exercise(cell):
            exercise += 1
            names = exercise_functions(cell)
            key = names[0]
            if key not in TESTS:
                raise ValueError(f"{path.name}: no tests for the exercise {key} in scripts/release.py TESTS")
            grade_id = f"ex{exercise}_{key}"
            cell["source"] = _lines(solution_cell_source(cell, solutions))
            cell["outputs"], cell["execution_count"] = [], None
            meta["nbgrader"] = _nbgrader(grade_id, solution=True)
            cells.append(cell)
            test = {"cell_type": "code", "execution_count": None, "outputs": [],
                    "metadata": {"tags": ["exercise-tests"],
                                 "nbgrader": _nbgrader(f"{grade_id}_tests", grade=True, locked=True,
                                                       points=TESTS[key].points)},
                    "source": _lines(grading_cell_source(TESTS[key]))}
            if "id" in cell:
                test["id"] = f"{cell['id']}-tests"
            cells.append(test)
        elif cell["cell_type"] == "code":
            meta["nbgrader"] = _nbgrader(f"locked_{cell.get('id', index)}", locked=True)
            cells.append(cell)
        else:
            cells.append(cell)
    notebook["cells"] = cells
    return notebook


def exercise_points(path: Path) -> dict[str, int]:
    """{grade id of each test cell: its points} for one repository notebook, in order."""
    notebook = json.loads(path.read_text())
    exercises = [exercise_functions(c)[0] for c in notebook["cells"] if is_exercise(c)]
    return {f"ex{k}_{name}_tests": TESTS[name].points for k, name in enumerate(exercises, 1)}


# ----------------------------------------------------------------------------- nbgrader
def course_config(course: Path):
    """The traitlets Config of course/nbgrader_config.py (what the `nbgrader` CLI reads there too)."""
    from traitlets.config.loader import PyFileConfigLoader

    return PyFileConfigLoader("nbgrader_config.py", path=str(course)).load_config()


def nbgrader_api(course: Path):
    """nbgrader's Python API on the course directory `course`."""
    from nbgrader.apps import NbGraderAPI

    # A new gradebook asks the `alembic` command for its schema version: find the one beside this Python
    # (a venv's bin/), also when the venv is not activated (`make release` runs .venv/bin/python).
    bin_dir = str(Path(sys.executable).parent)
    if bin_dir not in os.environ.get("PATH", "").split(os.pathsep):
        os.environ["PATH"] = bin_dir + os.pathsep + os.environ.get("PATH", "")

    return NbGraderAPI(config=course_config(course))


@contextlib.contextmanager
def _quiet_gradebook():
    """nbgrader 0.9's gradebook (SQLAlchemy models) warns under SQLAlchemy 2 about its own session use: harmless."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", module=r"nbgrader\.")
        yield


def _run(result: dict, what: str) -> None:
    if not result["success"]:
        raise RuntimeError(f"nbgrader {what} failed:\n{result.get('log', '')}\n{result.get('error', '')}")


def notebook_paths(only: list[str] | None = None) -> list[Path]:
    paths = sorted(NOTEBOOKS.glob("[0-9][0-9]_*.ipynb"))
    if only:
        unknown = set(only) - {p.stem for p in paths}
        if unknown:
            raise SystemExit(f"no notebook {sorted(unknown)}; choose from {[p.stem for p in paths]}")
        paths = [p for p in paths if p.stem in only]
    return paths


CHECK_STUDENT = "solutions-check"  # the student --check submits as; never a real student


def forget(course: Path, student_id: str) -> None:
    """Remove `student_id` from the gradebook and their submitted/, autograded/ and feedback/ folders.

    nbgrader refuses to regenerate an assignment whose cells changed once it has a submission
    ("Cannot add or remove cells ... because there are submissions associated with it"), so the
    check's own submission must not outlive the check.
    """
    for folder in ("submitted", "autograded", "feedback"):
        shutil.rmtree(course / folder / student_id, ignore_errors=True)
    if not (course / "gradebook.db").exists():
        return
    with _quiet_gradebook():
        from nbgrader.api import Gradebook, MissingEntry

        with Gradebook(course_config(course).CourseDirectory.db_url) as gradebook:
            try:
                gradebook.remove_student(student_id)
            except MissingEntry:
                pass


def build(course: Path, only: list[str] | None = None, solutions: Path = SOLUTIONS) -> list[str]:
    """Write the course directory `course` and the student versions (nbgrader generate_assignment).

    source/ and release/ are rewritten; submitted/, autograded/, feedback/ and the gradebook are kept,
    except what an earlier `--check` left (student CHECK_STUDENT), which would block changed notebooks.
    Returns the assignment names (the notebooks' stems).
    """
    course = course.resolve()
    course.mkdir(parents=True, exist_ok=True)
    (course / "nbgrader_config.py").write_text(CONFIG)
    for folder in ("submitted", "autograded", "feedback"):
        (course / folder).mkdir(exist_ok=True)
    forget(course, CHECK_STUDENT)
    assignments = []
    for path in notebook_paths(only):
        assignment = path.stem
        for folder in ("source", "release"):
            shutil.rmtree(course / folder / assignment, ignore_errors=True)
        target = course / "source" / assignment / path.name
        target.parent.mkdir(parents=True)
        target.write_text(json.dumps(source_notebook(path, solutions / f"{path.stem}.py"), indent=1,
                                     ensure_ascii=False) + "\n")
        assignments.append(assignment)
    with _quiet_gradebook():
        api = nbgrader_api(course)
        for assignment in assignments:
            _run(api.generate_assignment(assignment), f"generate_assignment {assignment}")
    return assignments


def fill_solutions(student: dict, solutions_path: Path) -> dict:
    """The student version with every solution cell solved from `solutions_path` (a solutions module)."""
    solutions = _Solutions(solutions_path)
    notebook = json.loads(json.dumps(student))
    for cell in notebook["cells"]:
        if cell.get("metadata", {}).get("nbgrader", {}).get("solution"):
            solved = solution_cell_source(cell, solutions).splitlines()
            cell["source"] = _lines("\n".join(line for line in solved
                                              if line.strip() not in ("### BEGIN SOLUTION", "### END SOLUTION")))
    return notebook


def submit(course: Path, assignment: str, student_id: str, notebook: dict) -> Path:
    """Put `notebook` where nbgrader collects student_id's submission of `assignment`."""
    target = course / "submitted" / student_id / assignment / f"{assignment}.ipynb"
    shutil.rmtree(target.parent, ignore_errors=True)
    target.parent.mkdir(parents=True)
    target.write_text(json.dumps(notebook, indent=1, ensure_ascii=False) + "\n")
    return target


def autograde(course: Path, assignment: str, student_id: str) -> dict:
    """nbgrader autograde of one submission; returns {"score", "max_score", "cells": {grade id: score}}."""
    with _quiet_gradebook():
        from nbgrader.api import Gradebook

        _run(nbgrader_api(course).autograde(assignment, student_id), f"autograde {assignment} {student_id}")
        with Gradebook(course_config(course).CourseDirectory.db_url) as gradebook:
            submission = gradebook.find_submission(assignment, student_id)
            notebook = submission.notebooks[0]
            return {"score": submission.score, "max_score": submission.max_score,
                    "cells": {grade.name: grade.score for grade in notebook.grades}}


def student_version(course: Path, assignment: str) -> dict:
    return json.loads((course / "release" / assignment / f"{assignment}.ipynb").read_text())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "release",
                        help="the course directory (default: %(default)s)")
    parser.add_argument("--only", nargs="+", metavar="STEM", help="only these notebooks (default: all nine)")
    parser.add_argument("--check", action="store_true",
                        help=f"autograde the solved student version of each assignment (student {CHECK_STUDENT!r}, "
                             "removed afterwards); "
                             "needs the data (HASHROBUST_DATA)")
    args = parser.parse_args(argv)
    assignments = build(args.out, args.only)
    course = args.out.resolve()
    for assignment in assignments:
        print(f"{course / 'release' / assignment / assignment}.ipynb")
    if args.check:
        failed = 0
        for assignment in assignments:
            solved = fill_solutions(student_version(course, assignment), SOLUTIONS / f"{assignment}.py")
            submit(course, assignment, CHECK_STUDENT, solved)
            try:
                result = autograde(course, assignment, CHECK_STUDENT)
            finally:
                forget(course, CHECK_STUDENT)
            ok = result["score"] == result["max_score"]
            failed += not ok
            print(f"{assignment}: solutions score {result['score']:g} / {result['max_score']:g}"
                  f"{'' if ok else '  <- NOT FULL MARKS ' + str(result['cells'])}")
        return 1 if failed else 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
