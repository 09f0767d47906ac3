"""Attacks against torchattacks (the oracle), their shared contract, invariants, effectiveness and input checks.

Models: the shipped MNIST mlp3 (dense, and hashed at ratio 8) and, for the
property tests, a tiny seeded MLP on 4x4 images.
"""
from __future__ import annotations

import ast
import copy
import re
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import hashrobust.attacks as attacks
from hashrobust.attacks import BIM, CW, FGSM, JSMA, PGD, Attack, DeepFool, changed_fraction
from hashrobust.layers import HashedLinear
from hashrobust.zoo import load_pretrained

ATTACKS = [name for name in attacks.__all__
           if isinstance(getattr(attacks, name), type) and issubclass(getattr(attacks, name), Attack)
           and name != "Attack"]

# Quick settings for the contract tests: an attack added to __all__ needs a row here.
FAST = {
    "FGSM": dict(eps=0.1),
    "BIM": dict(eps=0.1, alpha=0.02, steps=5),
    "PGD": dict(eps=0.1, alpha=0.02, steps=5, seed=0),
    "JSMA": dict(gamma=0.02),
    "CW": dict(c=10.0, steps=10, lr=0.1),
    "DeepFool": dict(steps=5),
    "Square": dict(eps=0.1, queries=20),
    "APGD": dict(eps=0.1, steps=5),
    "APGDT": dict(eps=0.1, steps=5, n_target_classes=3),
}
LINF = {"FGSM", "BIM", "PGD", "Square", "APGD", "APGDT"}  # attacks whose eps is an L-inf radius


def make(name: str, model: nn.Module, **kwargs) -> Attack:
    return getattr(attacks, name)(model, **{**FAST[name], **kwargs})


def labels_for(name: str, labels: torch.Tensor) -> torch.Tensor:
    """The labels to pass: JSMA is targeted, so it gets the next class as target, the others the true labels."""
    return (labels + 1) % 10 if name == "JSMA" else labels


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def dense() -> nn.Module:
    return load_pretrained("mnist", "mlp3", ratio=1)


@pytest.fixture
def model(dense) -> nn.Module:
    """A private copy of mlp3 r1 that a test may put in train mode or freeze."""
    return copy.deepcopy(dense)


@pytest.fixture(scope="module")
def hashed() -> nn.Module:
    return load_pretrained("mnist", "mlp3", ratio=8)


@pytest.fixture
def batch(tiny_images):
    images, labels = tiny_images
    return images[:8], labels[:8]


@pytest.fixture(scope="module")
def first64(mnist_test):
    return mnist_test.images[:64], mnist_test.labels[:64]


@pytest.fixture(scope="module")
def first200(mnist_test):
    return mnist_test.images[:200], mnist_test.labels[:200]


def same_state(model: nn.Module, state: dict) -> bool:
    """The model's state_dict equals `state` (tensors bitwise; a hashed layer's extra state by value)."""
    now = model.state_dict()
    return now.keys() == state.keys() and all(
        torch.equal(v, state[k]) if torch.is_tensor(v) else v == state[k] for k, v in now.items())


def success(model: nn.Module, adv_images: torch.Tensor, labels: torch.Tensor) -> float:
    with torch.no_grad():
        return (model(adv_images).argmax(1) != labels).float().mean().item()


# ----------------------------------------------------------------------------- the package's rules
def test_every_attack_has_fast_settings_and_paper_order():
    assert ATTACKS == ["FGSM", "BIM", "PGD", "JSMA", "CW", "DeepFool", "Square", "APGD", "APGDT"]
    assert set(FAST) == set(ATTACKS)


def test_attacks_package_imports_only_torch_and_validation():
    """Every file of hashrobust/attacks/ imports the standard library, numpy, torch, _validation, the integer hash
    (for per-example randomness) or its siblings: never a layer, so attacks work on any nn.Module."""
    files = sorted(Path(attacks.__file__).parent.glob("*.py"))
    siblings = {f"hashrobust.attacks.{path.stem}" for path in files}
    for path in files:
        imported = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                imported |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom):  # resolve relative imports: level 1 = this package
                package = ["hashrobust.attacks", "hashrobust"][node.level - 1] if node.level else ""
                imported.add(".".join(filter(None, [package, node.module])))
        assert imported <= {"__future__", "collections.abc", "inspect", "math", "numbers", "numpy", "torch",
                            "torch.nn.functional", "hashrobust._validation", "hashrobust.hashing"} | siblings, (
            path.name, imported)
    assert {path.name for path in files} >= {"__init__.py", "base.py", "fgsm.py", "square.py"}


def test_repr_shows_the_constructor_arguments(dense):
    assert repr(FGSM(dense, eps=0.1)) == "FGSM(eps=0.1, loss='ce', targeted=False)"
    assert repr(PGD(dense, norm="l2", eps=2.0, seed=3)) == (
        "PGD(eps=2.0, alpha=0.01, steps=40, norm='l2', random_start=True, seed=3, loss='ce', targeted=False)")


# ----------------------------------------------------------------------------- torchattacks as the oracle
def test_fgsm_matches_torchattacks(ta, dense, first64):
    images, labels = first64
    ours = FGSM(dense, eps=0.3)(images, labels)
    theirs = ta.FGSM(copy.deepcopy(dense).eval(), eps=0.3)(images, labels)
    assert (ours - theirs).abs().max() <= 1e-6


@pytest.mark.parametrize("ours, theirs", [
    (lambda m: PGD(m, eps=0.3, alpha=0.01, steps=40, random_start=False),
     lambda ta, m: ta.PGD(m, eps=0.3, alpha=0.01, steps=40, random_start=False)),
    (lambda m: BIM(m, eps=0.3, alpha=0.03, steps=40), lambda ta, m: ta.BIM(m, eps=0.3, alpha=0.03, steps=40)),
], ids=["PGD", "BIM"])
def test_iterative_linf_attacks_match_torchattacks(ta, dense, first64, ours, theirs):
    images, labels = first64
    diff = ours(dense)(images, labels) - theirs(ta, copy.deepcopy(dense).eval())(images, labels)
    assert diff.abs().max() <= 1e-5


def test_cw_matches_torchattacks(ta, dense, first64):
    """One run at the same c, kappa, steps, lr: same success rate, same distances (both keep the best L2).

    torchattacks has no search over c and aborts on the batch's total loss, so ours runs one value
    of c without its per-example abort (torchattacks' loss keeps falling here: it never aborts).
    """
    images, labels = first64
    ours = CW(dense, c=10.0, kappa=0.0, steps=100, lr=0.01, binary_search_steps=1, abort_early=False)(images, labels)
    theirs = ta.CW(copy.deepcopy(dense).eval(), c=10, kappa=0, steps=100, lr=0.01)(images, labels)
    rate_ours, rate_theirs = success(dense, ours, labels), success(dense, theirs, labels)
    assert 0.2 < rate_ours < 0.95  # a setting where success is neither trivial nor impossible
    assert abs(rate_ours - rate_theirs) <= 0.03
    both = (dense(ours).argmax(1) != labels) & (dense(theirs).argmax(1) != labels)
    l2_ours, l2_theirs = ((a - images)[both].flatten(1).norm(dim=1).mean() for a in (ours, theirs))
    assert torch.isclose(l2_ours, l2_theirs, rtol=0.01)


def test_deepfool_matches_torchattacks_where_the_pixel_box_does_not_bind(ta, dense, first64):
    """On mid-grey images (no pixel reaches 0 or 1) both compute x + (1 + overshoot) * sum_t r_t.

    On raw MNIST they differ: torchattacks clips after each step and applies the overshoot per
    step, so the clipped part of a step is lost; we clip x + (1 + overshoot) * sum_t r_t, as
    Moosavi-Dezfooli's code and foolbox do (64 images, 50 steps: 100% vs 39% success).
    """
    images, labels = first64
    images = 0.25 + 0.5 * images
    ours = DeepFool(dense, steps=50, overshoot=0.02)(images, labels)
    theirs = ta.DeepFool(copy.deepcopy(dense).eval(), steps=50, overshoot=0.02)(images, labels)
    assert (ours - theirs).abs().max() <= 2e-4  # the original's 1e-4 added to each step's length
    assert abs(success(dense, ours, labels) - success(dense, theirs, labels)) <= 0.03


# ----------------------------------------------------------------------------- the contract, every attack
@pytest.mark.parametrize("name", ATTACKS)
def test_output_shape_dtype_range_and_eps_ball(name, model, batch):
    images, labels = batch[0], labels_for(name, batch[1])
    attack = make(name, model)
    adv_images = attack(images, labels)
    assert adv_images.shape == images.shape and adv_images.dtype == images.dtype
    assert not adv_images.requires_grad and adv_images.grad_fn is None
    assert adv_images.min() >= 0 and adv_images.max() <= 1
    if name in LINF:
        assert (adv_images - images).abs().max() <= attack.eps + 1e-6
    assert not torch.equal(adv_images, images)


@pytest.mark.parametrize("name", ATTACKS)
def test_model_is_left_as_found(name, model, batch):
    """Train mode (mixed), frozen flags, parameters and .grad are restored; the attack itself runs in eval mode."""
    images, labels = batch[0], labels_for(name, batch[1])
    wrapped = nn.Sequential(model, nn.Dropout(0.5))  # in train mode, dropout would randomise the logits
    wrapped.train()
    model[1].eval()  # a submodule in eval mode inside a training model
    model[2].bias.requires_grad_(False)  # a frozen parameter
    modes = [m.training for m in wrapped.modules()]
    flags = [p.requires_grad for p in wrapped.parameters()]
    state = copy.deepcopy(wrapped.state_dict())
    adv_train = make(name, wrapped)(images, labels)
    assert [m.training for m in wrapped.modules()] == modes
    assert [p.requires_grad for p in wrapped.parameters()] == flags
    assert all(p.grad is None for p in wrapped.parameters())
    assert same_state(wrapped, state)
    wrapped.eval()
    assert torch.equal(adv_train, make(name, wrapped)(images, labels))


@pytest.mark.parametrize("name", ATTACKS)
def test_model_is_restored_after_an_error(name, model, batch):
    model.train()
    with pytest.raises(ValueError):
        make(name, model)(batch[0], batch[1].int())
    assert model.training and all(p.requires_grad for p in model.parameters())


@pytest.mark.parametrize("name", ATTACKS)
def test_labels_none_means_the_models_prediction(name, model, batch):
    images = batch[0]
    predictions = model(images).argmax(1)
    expected = (predictions + 1) % 10 if name == "JSMA" else predictions  # JSMA targets the next class
    attack = make(name, model)
    assert torch.equal(attack(images), attack(images, expected))


@pytest.mark.parametrize("name", ATTACKS)
def test_deterministic_and_batch_independent(name, model, batch):
    images, labels = batch[0], labels_for(name, batch[1])
    attack = make(name, model)
    adv_images = attack(images, labels)
    assert torch.equal(adv_images, attack(images, labels))
    assert torch.allclose(adv_images[:3], attack(images[:3], labels[:3]), atol=1e-6)


@pytest.mark.parametrize("name", ATTACKS)
def test_works_on_a_hashed_model_and_leaves_it_unchanged(name, hashed, batch):
    images, labels = batch[0], labels_for(name, batch[1])
    state = copy.deepcopy(hashed.state_dict())
    adv_images = make(name, hashed)(images, labels)
    assert adv_images.shape == images.shape and 0 <= adv_images.min() and adv_images.max() <= 1
    assert not torch.equal(adv_images, images)
    assert same_state(hashed, state)
    assert all(p.requires_grad and p.grad is None for p in hashed.parameters())


def test_under_no_grad_the_attack_still_has_gradients(dense, batch):
    with torch.no_grad():
        adv_images = FGSM(dense, eps=0.1)(*batch)
    assert not torch.equal(adv_images, batch[0])


def test_fgsm_on_hashed_model_equals_fgsm_on_its_dense_twin(hashed, first64):
    """Backprop through the hash is backprop through V: a dense copy with V as weights gives the same attack."""
    twin = copy.deepcopy(hashed)
    for i, layer in enumerate(hashed):
        if isinstance(layer, HashedLinear):
            twin[i] = nn.Linear(layer.in_features, layer.out_features)
            with torch.no_grad():
                twin[i].weight.copy_(layer.virtual_weight())
                twin[i].bias.copy_(layer.bias)
    images, labels = first64
    assert not any(isinstance(m, HashedLinear) for m in twin.modules())
    assert torch.equal(FGSM(hashed, eps=0.3)(images, labels), FGSM(twin.eval(), eps=0.3)(images, labels))


def test_cw_binary_search_keeps_the_best_over_its_runs(dense, tiny_images):
    """Its first run is the single run (same c), and the best is kept: success can only grow, L2 only shrink."""
    images, labels = tiny_images
    single = CW(dense, c=1.0, steps=30, lr=0.05, binary_search_steps=1)(images, labels)
    searched = CW(dense, c=1.0, steps=30, lr=0.05, binary_search_steps=4)(images, labels)
    fooled_single, fooled_searched = dense(single).argmax(1) != labels, dense(searched).argmax(1) != labels
    assert (fooled_searched >= fooled_single).all() and fooled_searched.sum() > fooled_single.sum()
    l2 = [(a - images).flatten(1).norm(dim=1) for a in (single, searched)]
    assert (l2[1][fooled_single] <= l2[0][fooled_single] + 1e-6).all()
    assert torch.equal(searched[~fooled_searched], images[~fooled_searched])  # no success: the original


def test_targeted_cw_reaches_the_target(dense, tiny_images):
    images = tiny_images[0][:16]
    targets = (dense(images).argmax(1) + 1) % 10
    attack = CW(dense, c=10.0, kappa=1.0, steps=100, lr=0.05, binary_search_steps=1, targeted=True)
    adv_images = attack(images, targets)
    logits = dense(adv_images)
    reached = logits.argmax(1) == targets
    assert reached.float().mean() >= 0.9  # measured 16/16
    assert (attacks.logit_margin(logits, targets)[reached] <= -1.0).all()  # Z_t beats the rest by kappa


# ----------------------------------------------------------------------------- PGD's parts
def test_pgd_random_start_follows_the_seed(dense, batch):
    images, labels = batch
    attack = PGD(dense, eps=0.3, steps=2, seed=0)
    assert torch.equal(attack(images, labels), attack(images, labels))
    assert not torch.equal(attack(images, labels), PGD(dense, eps=0.3, steps=2, seed=1)(images, labels))
    default = PGD(dense, eps=0.3, steps=2)  # seeded by default (seed=0): a notebook cell gives the same twice
    assert default.seed == 0 and torch.equal(default(images, labels), attack(images, labels))
    torch.manual_seed(3)  # the global RNG plays no part
    assert torch.equal(default(images, labels), attack(images, labels))
    with pytest.raises(ValueError, match="The 'seed' parameter of PGD must be an integer >= 0. Got None instead."):
        PGD(dense, seed=None)


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_pgd_start_is_uniform_in_the_ball(dense, norm):
    images = torch.full((64, 1, 28, 28), 0.5)  # far from 0 and 1: no clipping
    delta = PGD(dense, eps=0.2, norm=norm, seed=0).start(images) - images
    if norm == "linf":
        assert delta.abs().max() <= 0.2 + 1e-6 and delta.abs().mean() == pytest.approx(0.1, abs=0.005)
    else:  # in 784 dimensions the volume of a ball is close to its surface: radius ~ eps * U^(1/784)
        norms = delta.flatten(1).norm(dim=1)
        assert norms.max() <= 0.2 + 1e-6 and norms.min() >= 0.19


def test_pgd_l2_step_and_project(dense):
    attack = PGD(dense, eps=1.0, alpha=0.5, norm="l2")
    x = torch.full((2, 1, 2, 2), 0.5)
    grad = torch.tensor([[3.0, 4.0, 0.0, 0.0], [1e-30, 0.0, 0.0, 0.0]]).view(2, 1, 2, 2)
    step = attack.step(x, grad) - x
    assert torch.allclose(step.flatten(1), torch.tensor([[0.3, 0.4, 0, 0], [0.5, 0, 0, 0]]))  # tiny g: full step
    assert torch.equal(attack.step(x, torch.zeros_like(x)), x)
    far = x + torch.tensor([0.4, 0.4, -0.4, -0.4]).view(1, 1, 2, 2) * torch.tensor([1.0, 5.0]).view(2, 1, 1, 1)
    projected = attack.project(far, x)
    assert torch.allclose(projected[0], far[0])  # ||d|| = 0.8 <= eps: unchanged
    assert torch.allclose(projected[1], torch.tensor([1.0, 1.0, 0.0, 0.0]).view(1, 2, 2))  # rescaled, clipped


def test_pgd_l2_respects_its_ball(dense, first64):
    images, labels = first64
    adv_images = PGD(dense, eps=2.0, alpha=0.2, steps=20, norm="l2", seed=0)(images, labels)
    assert (adv_images - images).flatten(1).norm(dim=1).max() <= 2.0 + 1e-5
    assert success(dense, adv_images, labels) >= 0.5


# ----------------------------------------------------------------------------- invariants (hypothesis)
def _tiny_model() -> nn.Module:
    generator = torch.Generator().manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 3))
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=generator))
    return model.eval()


TINY = _tiny_model()


def _inputs(seed: int, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Random 4x4 images with some pixels exactly 0 or 1 (where clipping binds), and random labels."""
    generator = torch.Generator().manual_seed(seed)
    images = torch.rand(n, 1, 4, 4, generator=generator)
    images = torch.where(images < 0.2, 0.0, torch.where(images > 0.8, 1.0, images))
    return images, torch.randint(0, 3, (n,), generator=generator)


common = dict(seed=st.integers(0, 2**16), n=st.integers(1, 4), loss=st.sampled_from(["ce", "margin"]),
              targeted=st.booleans())


@settings(max_examples=20, deadline=None)
@given(eps=st.floats(0, 1), **common)
def test_fgsm_moves_every_pixel_by_eps_or_not_at_all(eps, seed, n, loss, targeted):
    images, labels = _inputs(seed, n)
    adv_images = FGSM(TINY, eps=eps, loss=loss, targeted=targeted)(images, labels)
    assert adv_images.min() >= 0 and adv_images.max() <= 1
    assert (adv_images - images).abs().max() <= eps + 1e-6
    allowed = (adv_images == images) | (adv_images == (images + eps).clamp(0, 1)) | (
        adv_images == (images - eps).clamp(0, 1))
    assert allowed.all()


@settings(max_examples=20, deadline=None)
@given(eps=st.floats(0, 1), alpha=st.floats(1e-3, 0.5), steps=st.integers(1, 4), **common)
def test_bim_and_pgd_linf_stay_in_the_ball_and_the_box(eps, alpha, steps, seed, n, loss, targeted):
    images, labels = _inputs(seed, n)
    for attack in (BIM(TINY, eps=eps, alpha=alpha, steps=steps, loss=loss, targeted=targeted),
                   PGD(TINY, eps=eps, alpha=alpha, steps=steps, seed=seed, loss=loss, targeted=targeted)):
        adv_images = attack(images, labels)
        assert adv_images.min() >= 0 and adv_images.max() <= 1
        assert (adv_images - images).abs().max() <= eps + 1e-6
    if eps == 0:
        assert torch.equal(adv_images, images)


@settings(max_examples=20, deadline=None)
@given(eps=st.floats(0, 3), alpha=st.floats(1e-3, 2), steps=st.integers(1, 4), **common)
def test_pgd_l2_stays_in_the_ball_and_the_box(eps, alpha, steps, seed, n, loss, targeted):
    images, labels = _inputs(seed, n)
    attack = PGD(TINY, eps=eps, alpha=alpha, steps=steps, norm="l2", seed=seed, loss=loss, targeted=targeted)
    adv_images = attack(images, labels)
    assert adv_images.min() >= 0 and adv_images.max() <= 1
    assert (adv_images - images).flatten(1).norm(dim=1).max() <= eps + 1e-5


# ----------------------------------------------------------------------------- effectiveness (mlp3 r1)
@pytest.mark.parametrize("attack, least", [
    (lambda m: FGSM(m, eps=0.3), 0.95),  # measured 0.99 on these 200 images
    (lambda m: FGSM(m, eps=0.3, loss="margin"), 0.95),  # 1.00
    (lambda m: BIM(m, eps=0.3, alpha=0.03, steps=40), 0.99),  # 1.00
    (lambda m: PGD(m, eps=0.3, alpha=0.01, steps=40, seed=0), 0.99),  # 1.00
    (lambda m: PGD(m, eps=0.3, alpha=0.01, steps=40, seed=0, loss="margin"), 0.99),  # 1.00
], ids=["FGSM", "FGSM-margin", "BIM", "PGD", "PGD-margin"])
def test_gradient_attacks_change_the_prediction(dense, first200, attack, least):
    images = first200[0]
    predictions = dense(images).argmax(1)
    assert success(dense, attack(dense)(images), predictions) >= least


@pytest.mark.parametrize("loss", ["ce", "margin"])
def test_targeted_pgd_reaches_the_target(dense, tiny_images, loss):
    images = tiny_images[0]
    targets = (dense(images).argmax(1) + 1) % 10
    adv_images = PGD(dense, eps=0.3, seed=0, loss=loss, targeted=True)(images, targets)
    assert (dense(adv_images).argmax(1) == targets).float().mean() >= 0.95  # measured 1.00


@pytest.mark.parametrize("jacobian, n_images, least", [("probs", 5, 0.9), ("logits", 2, 0.85)])
def test_jsma_reaches_most_targets_changing_few_pixels(dense, mnist_test, jacobian, n_images, least):
    """Liu et al.'s protocol: each image towards each of the 9 other classes (measured 45/45 and 17/18)."""
    images = mnist_test.images[:n_images]
    predictions = dense(images).argmax(1)
    targets = torch.stack([(predictions + k) % 10 for k in range(1, 10)], 1).flatten()  # (9 n,)
    attack = JSMA(dense, theta=1.0, gamma=0.1, jacobian=jacobian)
    adv_images = attack(images.repeat_interleave(9, 0), targets)
    assert (dense(adv_images).argmax(1) == targets).float().mean() >= least
    assert torch.equal(attack.last_changed_fraction, changed_fraction(images.repeat_interleave(9, 0), adv_images))
    assert attack.last_changed_fraction.max() <= 0.1 and attack.last_changed_fraction.mean() <= 0.06


def test_margin_loss_attacks_through_a_saturated_softmax(dense, first200):
    """Scaling the logits by 100 (what gradient inhibition does) zeroes CE's gradient, not the margin's."""
    images = first200[0]
    predictions = dense(images).argmax(1)
    saturated = copy.deepcopy(dense)
    with torch.no_grad():
        saturated[-1].weight.mul_(100)
        saturated[-1].bias.mul_(100)
    ce = FGSM(saturated, eps=0.3)(images)
    assert (ce == images).flatten(1).all(1).float().mean() >= 0.9  # measured 0.99: exactly zero gradients
    assert success(saturated, ce, predictions) <= 0.1
    margin = FGSM(saturated, eps=0.3, loss="margin")(images)
    assert success(saturated, margin, predictions) >= 0.95
    assert (margin == FGSM(dense, eps=0.3, loss="margin")(images)).float().mean() >= 0.999  # sign is scale-free


# ----------------------------------------------------------------------------- bad input
BAD_PARAMETERS = [
    (FGSM, dict(eps=2), "The 'eps' parameter of FGSM must be a number >= 0 and <= 1. Got 2 instead."),
    (FGSM, dict(eps=-0.1), "The 'eps' parameter of FGSM must be a number >= 0 and <= 1. Got -0.1 instead."),
    (FGSM, dict(eps="0.3"), "The 'eps' parameter of FGSM must be a number >= 0 and <= 1. Got '0.3' instead."),
    (FGSM, dict(loss="mse"), "Unknown loss 'mse'; choose one of: ce, margin."),
    (FGSM, dict(targeted=1), "The 'targeted' parameter of FGSM must be True or False. Got 1 instead."),
    (BIM, dict(steps=0), "The 'steps' parameter of BIM must be an integer >= 1. Got 0 instead."),
    (BIM, dict(steps=2.5), "The 'steps' parameter of BIM must be an integer >= 1. Got 2.5 instead."),
    (BIM, dict(alpha=0), "The 'alpha' parameter of BIM must be a number > 0. Got 0 instead."),
    (BIM, dict(eps=1.5), "The 'eps' parameter of BIM must be a number >= 0 and <= 1. Got 1.5 instead."),
    (PGD, dict(alpha=-0.01), "The 'alpha' parameter of PGD must be a number > 0. Got -0.01 instead."),
    (PGD, dict(norm="l1"), "Unknown norm 'l1'; choose one of: l2, linf."),
    (PGD, dict(eps=1.5), "The 'eps' parameter of PGD must be a number >= 0 and <= 1. Got 1.5 instead."),
    (PGD, dict(norm="l2", eps=-1), "The 'eps' parameter of PGD must be a number >= 0. Got -1 instead."),
    (PGD, dict(steps=0), "The 'steps' parameter of PGD must be an integer >= 1. Got 0 instead."),
    (PGD, dict(seed=-1), "The 'seed' parameter of PGD must be an integer >= 0. Got -1 instead."),
    (PGD, dict(random_start="yes"), "The 'random_start' parameter of PGD must be True or False. Got 'yes' instead."),
    (PGD, dict(loss="dlr"), "Unknown loss 'dlr'; choose one of: ce, margin."),
    (JSMA, dict(theta=0), "The 'theta' parameter of JSMA must be a number > 0 and <= 1. Got 0 instead."),
    (JSMA, dict(gamma=1.5), "The 'gamma' parameter of JSMA must be a number > 0 and <= 1. Got 1.5 instead."),
    (JSMA, dict(jacobian="softmax"), "Unknown jacobian 'softmax'; choose one of: logits, probs."),
    (CW, dict(c=0), "The 'c' parameter of CW must be a number > 0. Got 0 instead."),
    (CW, dict(kappa=-1), "The 'kappa' parameter of CW must be a number >= 0. Got -1 instead."),
    (CW, dict(steps=0), "The 'steps' parameter of CW must be an integer >= 1. Got 0 instead."),
    (CW, dict(lr=0), "The 'lr' parameter of CW must be a number > 0. Got 0 instead."),
    (CW, dict(binary_search_steps=0), "The 'binary_search_steps' parameter of CW must be an integer >= 1. Got 0"),
    (DeepFool, dict(steps=0), "The 'steps' parameter of DeepFool must be an integer >= 1. Got 0 instead."),
    (DeepFool, dict(overshoot=-0.1), "The 'overshoot' parameter of DeepFool must be a number >= 0. Got -0.1"),
]


@pytest.mark.parametrize("cls, kwargs, message", BAD_PARAMETERS, ids=lambda v: getattr(v, "__name__", None))
def test_bad_parameters_raise_with_the_allowed_range(dense, cls, kwargs, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        cls(dense, **kwargs)


def test_large_l2_radius_is_allowed(dense):
    assert PGD(dense, norm="l2", eps=2.0).eps == 2.0


def test_model_must_be_a_module():
    with pytest.raises(ValueError, match=re.escape("The 'model' parameter of FGSM must be an nn.Module. Got "
                                                   "function instead.")):
        FGSM(lambda x: x)


BAD_IMAGES = [
    (torch.rand(8, 28, 28), "must be a 4-D float tensor (N, C, H, W) with values in [0, 1]. Got 3-D torch.float32"),
    (torch.zeros(8, 1, 28, 28, dtype=torch.uint8), "must be a 4-D float tensor (N, C, H, W) with values in [0, 1]. "
                                                    "Got 4-D torch.uint8 instead."),
    ([[0.5]], "must be a 4-D float tensor (N, C, H, W) with values in [0, 1]. Got list instead."),
    (torch.full((8, 1, 28, 28), 1.5), "must have values in [0, 1]. Got values in [1.5, 1.5] instead."),
    (torch.full((8, 1, 28, 28), float("nan")), "must have values in [0, 1]. Got values in [nan, nan] instead."),
    (torch.full((8, 1, 28, 28), 1.0000001), "must have values in [0, 1]. Got values in [1.00000012, 1.00000012] "
                                            "instead."),  # enough digits to see why 1.0000001 is refused
]
BAD_LABELS = [
    (torch.zeros(8, dtype=torch.int32), "Got torch.int32 of shape (8,), values in [0, 0] instead."),
    (torch.zeros(8, 1, dtype=torch.int64), "Got torch.int64 of shape (8, 1), values in [0, 0] instead."),
    (torch.zeros(7, dtype=torch.int64), "Got torch.int64 of shape (7,), values in [0, 0] instead."),
    (torch.full((8,), 10), "Got torch.int64 of shape (8,), values in [10, 10] instead."),
    (torch.full((8,), -1), "Got torch.int64 of shape (8,), values in [-1, -1] instead."),
    ([1] * 8, "Got list instead."),
]


@pytest.mark.parametrize("name", ATTACKS)
@pytest.mark.parametrize("images, message", BAD_IMAGES, ids=range(len(BAD_IMAGES)))
def test_bad_images_raise(dense, name, images, message):
    with pytest.raises(ValueError, match=re.escape(f"The 'images' of {name} {message}")):
        make(name, dense)(images)


@pytest.mark.parametrize("name", ATTACKS)
@pytest.mark.parametrize("labels, message", BAD_LABELS, ids=range(len(BAD_LABELS)))
def test_bad_labels_raise(dense, batch, name, labels, message):
    expected = f"The 'labels' of {name} must be a 1-D int64 tensor of length 8 with values in [0, 10). {message}"
    with pytest.raises(ValueError, match=re.escape(expected)):
        make(name, dense)(batch[0], labels)


@pytest.mark.parametrize("cls", [FGSM, BIM, PGD, CW])
def test_a_targeted_attack_needs_target_labels(dense, batch, cls):
    with pytest.raises(ValueError, match=f"{cls.__name__} with targeted=True needs target labels. Got labels=None."):
        cls(dense, targeted=True)(batch[0])


# ----------------------------------------------------------------------------- modes and BatchNorm statistics
def _bn_model() -> nn.Module:
    """A small MNIST CNN with BatchNorm, in train mode but for one eval-mode BatchNorm; statistics already moved."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, stride=2), nn.BatchNorm2d(4), nn.ReLU(),
                          nn.Conv2d(4, 4, 3, stride=2), nn.BatchNorm2d(4), nn.ReLU(),
                          nn.Flatten(), nn.Linear(4 * 6 * 6, 10)).train()
    with torch.no_grad():
        model(torch.rand(8, 1, 28, 28))
    model[4].eval()
    return model


def _modes_and_bn_state(model: nn.Module) -> tuple[list[bool], dict]:
    bn = {name: buffer.clone() for name, buffer in model.named_buffers()
          if name.rsplit(".", 1)[-1] in ("running_mean", "running_var", "num_batches_tracked")}
    return [m.training for m in model.modules()], bn


def _assert_same_modes_and_bn_state(model: nn.Module, before: tuple[list[bool], dict]) -> None:
    modes, bn = _modes_and_bn_state(model)
    assert modes == before[0]
    assert bn.keys() == before[1].keys() and all(torch.equal(bn[k], v) for k, v in before[1].items())


@pytest.mark.parametrize("name", [*ATTACKS, "EOT"])
def test_attacks_keep_each_modules_mode_and_bn_statistics(name, batch):
    model = _bn_model()
    before = _modes_and_bn_state(model)
    images, labels = batch[0][:3], batch[1][:3]
    if name == "EOT":
        attack = PGD(attacks.EOT(model, draws=2), **FAST["PGD"])
    else:
        attack, labels = make(name, model), labels_for(name, labels)
    attack(images, labels)
    _assert_same_modes_and_bn_state(model, before)


def test_jsma_success_keeps_each_modules_mode_and_bn_statistics(batch):
    from hashrobust.evaluation import jsma_success

    model = _bn_model()
    before = _modes_and_bn_state(model)
    row = jsma_success(model, JSMA(model, gamma=0.02), batch[0][:1], batch[1][:1], batch_size=9)
    assert row["n"] == 9
    _assert_same_modes_and_bn_state(model, before)
