"""JSMA's fast pair search (the 2-skyband) against the exhaustive D x D search it replaces.

Both searches score a pair with the same float operations, and the dominance argument holds
under monotone rounding, so the best saliency must agree exactly; only the pair may differ on ties.
"""
from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from hashrobust.attacks import JSMA
from hashrobust.attacks import jsma as jsma_module
from hashrobust.attacks.jsma import _best_pairs, _best_pairs_exhaustive, _score_gradients, _skyband
from hashrobust.zoo import load_pretrained

pytestmark = pytest.mark.usefixtures("one_thread")


def saliency(grad_target, grad_other, p, q):
    """Papernot et al. eq. 10 for the chosen pairs, computed independently of both searches."""
    pick = lambda g: g.gather(1, p[:, None]).squeeze(1) + g.gather(1, q[:, None]).squeeze(1)  # noqa: E731
    return pick(grad_target).clamp(min=0) * (-pick(grad_other)).clamp(min=0)


def assert_same_best(grad_target, grad_other, domain):
    p, q, found = _best_pairs(grad_target, grad_other, domain)
    p_ref, q_ref, found_ref = _best_pairs_exhaustive(grad_target, grad_other, domain)
    assert torch.equal(found, found_ref)
    got, want = saliency(grad_target, grad_other, p, q), saliency(grad_target, grad_other, p_ref, q_ref)
    torch.testing.assert_close(got[found], want[found], rtol=0, atol=0)
    assert (p != q)[found].all()
    assert domain.gather(1, p[:, None]).squeeze(1)[found].all() and domain.gather(1, q[:, None]).squeeze(1)[found].all()
    return found


def test_skyband_is_the_set_dominated_by_at_most_one_point():
    """Brute force: count, for every point, the points ranked before it (a larger, ties by index) with c >= its c."""
    generator = torch.Generator().manual_seed(0)
    a = torch.randint(0, 6, (4, 60), generator=generator).float()  # few values: many ties
    c = torch.randint(0, 6, (4, 60), generator=generator).float()
    band = _skyband(a, c)
    rank = a.argsort(dim=1, descending=True, stable=True).argsort(dim=1)  # position of each point
    before = rank[:, None, :] < rank[:, :, None]  # [m, i, j]: j ranked before i
    dominators = (before & (c[:, None, :] >= c[:, :, None])).sum(2)
    assert torch.equal(band, dominators <= 1)


@pytest.mark.parametrize("d", [2, 3, 50, 784, 3072])
def test_random_gradients_with_domains(d):
    generator = torch.Generator().manual_seed(d)
    grad_target = torch.randn(6, d, generator=generator)
    grad_other = torch.randn(6, d, generator=generator)
    domain = torch.rand(6, d, generator=generator) < 0.7
    domain[:, :2] = True  # at least two features to choose from
    assert_same_best(grad_target, grad_other, domain)


def test_ties_all_negative_and_anticorrelated_gradients():
    d = 300
    generator = torch.Generator().manual_seed(1)
    ties = torch.randint(-3, 4, (2, d), generator=generator).float(), torch.randint(-3, 4, (2, d), generator=generator).float()
    negative = -torch.rand(2, d, generator=generator), torch.rand(2, d, generator=generator)  # alpha < 0 everywhere
    positive_beta = torch.rand(2, d, generator=generator), torch.rand(2, d, generator=generator)  # beta > 0 everywhere
    a = torch.rand(2, d, generator=generator)
    anticorrelated = a, a - 1  # c = 1 - a: every point on the skyline, the band is the whole domain
    grad_target = torch.cat([ties[0], negative[0], positive_beta[0], anticorrelated[0]])
    grad_other = torch.cat([ties[1], negative[1], positive_beta[1], anticorrelated[1]])
    found = assert_same_best(grad_target, grad_other, torch.ones_like(grad_target, dtype=torch.bool))
    assert found.tolist() == [True, True, False, False, False, False, True, True]
    assert _skyband(anticorrelated[0], -anticorrelated[1]).all()


def test_a_domain_of_one_feature_finds_no_pair():
    grad_target, grad_other = torch.ones(1, 10), -torch.ones(1, 10)
    domain = torch.zeros(1, 10, dtype=torch.bool)
    domain[0, 3] = True
    assert not _best_pairs(grad_target, grad_other, domain)[2].item()


@settings(max_examples=60, deadline=None)
@given(st.integers(2, 40), st.integers(0, 2**31 - 1), st.sampled_from([2, 5, 1000]))
def test_the_fast_search_is_exact_property(d, seed, levels):
    """Any gradients (few levels: many ties), any domain: the same best saliency and `found` flag."""
    generator = torch.Generator().manual_seed(seed)
    grad_target = torch.randint(-levels, levels + 1, (3, d), generator=generator).float() / levels
    grad_other = torch.randint(-levels, levels + 1, (3, d), generator=generator).float() / levels
    domain = torch.rand(3, d, generator=generator) < 0.8
    assert_same_best(grad_target, grad_other, domain)


def real_gradients(model, images, jacobian):
    """The two gradients JSMA takes at the clean images towards each of the 9 other classes."""
    images = images.repeat_interleave(9, 0)
    with torch.no_grad():
        predictions = model(images).argmax(1)
    targets = (predictions + torch.arange(1, 10).repeat(len(images) // 9)) % 10
    x = images.flatten(1).clone().requires_grad_(True)
    scores = model(x.view_as(images))
    scores = scores.softmax(1) if jacobian == "probs" else scores
    grad_target, grad_other = _score_gradients(scores, x, targets)
    return grad_target, grad_other, x.detach() < 1


@pytest.mark.parametrize("jacobian", ["probs", "logits"])
@pytest.mark.parametrize("dataset, arch", [("mnist", "lenet"), ("cifar10", "cifar_cnn")])
def test_real_gradients(request, dataset, arch, jacobian):
    images = request.getfixturevalue(f"{dataset}_test").images[:3]
    grad_target, grad_other, domain = real_gradients(load_pretrained(dataset, arch, 1), images, jacobian)
    found = assert_same_best(grad_target, grad_other, domain)
    assert found.all()
    band = _skyband(grad_target.masked_fill(~domain, float("-inf")), grad_other.neg().masked_fill(~domain, float("-inf")))
    assert band.sum(1).max() <= 0.05 * domain.shape[1]  # measured at most a few tens of points


def relative_gap_and_target_probability(model, images, dtype):
    grad_target, grad_other, _ = real_gradients(model.to(dtype), images.to(dtype), "probs")
    with torch.no_grad():
        probs = model(images.to(dtype).repeat_interleave(9, 0)).softmax(1)
    targets = (probs.argmax(1) + torch.arange(1, 10).repeat(len(images))) % 10
    gap = (grad_target + grad_other).abs().amax(1) / grad_target.abs().amax(1)
    return gap, probs.gather(1, targets[:, None]).squeeze(1)


def test_jsma_f_saliency_is_alpha_squared_up_to_rounding(mnist_test):
    """Softmax probabilities sum to 1, so b = -a in exact arithmetic and JSMA-F ranks pairs by (a_p + a_q)^2.

    In floats the gap |a + b| / |a| is about (machine epsilon) / (target probability): the softmax
    backward rounds 1 - p_t. Where the target's probability is far above epsilon, b = -a holds;
    where it is below (a saturated softmax, common on MNIST), rounding is as large as a itself.
    """
    model, images = load_pretrained("mnist", "lenet", 1), mnist_test.images[:3]
    gap, target_probability = relative_gap_and_target_probability(model, images, torch.float64)
    assert gap[target_probability > 1e-10].max() < 1e-3  # measured 5e-7 (epsilon 2e-16)
    gap, target_probability = relative_gap_and_target_probability(model, images, torch.float32)
    assert gap[target_probability < 1e-9].min() > 0.1  # measured 0.5 (epsilon 1.2e-7)
    assert (target_probability < 1e-9).sum() >= 10  # measured 16 of 27


def test_the_attack_with_either_search_is_the_same(dense, mnist_test, monkeypatch):
    images = mnist_test.images[:3].repeat_interleave(9, 0)
    targets = (dense(images).argmax(1) + torch.arange(1, 10).repeat(3)) % 10
    fast = JSMA(dense, theta=1.0, gamma=0.1, jacobian="logits")(images, targets)
    monkeypatch.setattr(jsma_module, "_best_pairs", _best_pairs_exhaustive)
    exhaustive = JSMA(dense, theta=1.0, gamma=0.1, jacobian="logits")(images, targets)
    assert torch.equal(fast, exhaustive)  # real gradients have no exact ties in practice
