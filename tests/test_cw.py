"""C&W L2 at full strength: unbounded success, per-example early abort (batch independence), the search over c.

Models: the shipped MNIST mlp3, dense (ratio 1) and hashed (ratio 64). The
comparison with torchattacks (one run at a fixed c, no abort) and the shared
attack contract are in tests/test_attacks.py.
"""
from __future__ import annotations

import re

import pytest
import torch
from torch import nn

from hashrobust.attacks import CW, logit_margin
from hashrobust.zoo import load_pretrained

pytestmark = pytest.mark.usefixtures("one_thread")

# A matrix product over another batch size may be blocked differently and change the logits in their last
# bits (float32 eps 1.2e-7); Adam carries that into the pixels: measured 7e-7 at most here. 1e-4 is far
# above that and far below what a batch-dependent abort or loss scaling would change.
PIXEL_ATOL = 1e-4


@pytest.fixture(scope="module")
def dense() -> nn.Module:
    return load_pretrained("mnist", "mlp3", ratio=1)


@pytest.fixture(scope="module")
def hashed() -> nn.Module:
    return load_pretrained("mnist", "mlp3", ratio=64)


class Counting(nn.Module):
    """The model, counting the rows it is called on."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model, self.rows = model, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.rows += len(x)
        return self.model(x)


def predict(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(images).argmax(1)


def l2(adv_images: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
    return (adv_images - images).flatten(1).norm(dim=1)


@pytest.mark.parametrize("which, n, low, high", [("dense", 100, 0.8, 1.3), ("hashed", 50, 0.4, 0.75)])
def test_unbounded_cw_fools_at_least_99_percent(request, mnist_test, which, n, low, high):
    """The default budget (9 values of c, up to 1000 Adam steps at lr 0.01, early abort): about 0.3 s an image."""
    model = request.getfixturevalue(which)
    images = mnist_test.images[:n]
    adv_images = CW(model)(images)  # labels=None: the model's own prediction
    fooled = predict(model, adv_images) != predict(model, images)
    assert fooled.float().mean() >= 0.99  # measured 100/100 on both (100 images)
    median = l2(adv_images, images)[fooled].median()
    assert low < median < high  # measured 1.05 (dense), 0.56 (ratio 64); 1.91 on dense with 200 steps


def test_adversarial_images_do_not_depend_on_the_batch(dense, mnist_test):
    """Early abort is per example: one batch of 37, batches of 5 and one by one give the same images."""
    images = mnist_test.images[:37]
    attack = CW(dense, c=1.0, steps=20, lr=0.1, binary_search_steps=3)  # an abort check every 2 steps
    whole = attack(images)
    fives = torch.cat([attack(images[i:i + 5]) for i in range(0, 37, 5)])
    ones = torch.cat([attack(images[i:i + 1]) for i in range(37)])
    assert (whole - fives).abs().max() <= PIXEL_ATOL
    assert (whole - ones).abs().max() <= PIXEL_ATOL
    fooled = predict(dense, whole) != predict(dense, images)
    assert 0 < fooled.sum() < 37  # measured 36: successes and a failure are both compared


def test_early_abort_stops_the_run(dense, tiny_images):
    """A stalled example leaves the batch, and the run ends once all have: far fewer model rows than N x steps."""
    images = tiny_images[0][:8]
    counting = Counting(dense)
    CW(counting, binary_search_steps=1)(images)  # c = 0.01
    assert counting.rows < 0.7 * 8 * 1000  # measured 0.59
    counting.rows = 0
    CW(counting, steps=100, binary_search_steps=1, abort_early=False)(images)
    assert counting.rows == 8 + 8 * 100  # the clean prediction, then every step for every example


def test_binary_search_beats_one_large_c(dense, mnist_test):
    """The search over c finds smaller perturbations than one run at a large c; successes clear kappa.

    A cheaper budget (200 steps at lr 0.05: as good on MNIST, see the docstring) for speed.
    """
    images = mnist_test.images[:32]
    labels = predict(dense, images)
    kappa = 1.0
    searched = CW(dense, kappa=kappa, steps=200, lr=0.05)(images, labels)
    large_c = CW(dense, c=100.0, kappa=kappa, steps=200, lr=0.05, binary_search_steps=1)(images, labels)
    margins = [logit_margin(dense(a).detach(), labels) for a in (searched, large_c)]
    ok = [m > kappa for m in margins]
    assert ok[0].float().mean() >= 0.99 and ok[1].float().mean() >= 0.99
    both = ok[0] & ok[1]
    assert l2(searched, images)[both].median() < 0.6 * l2(large_c, images)[both].median()  # measured 1.08 vs 2.81


def test_failures_return_the_original_and_successes_clear_kappa(dense, mnist_test):
    """A budget too small to fool every example: the failures are returned unchanged, bit for bit."""
    images = mnist_test.images[:32]
    labels = predict(dense, images)
    kappa = 2.0
    adv_images = CW(dense, c=1.0, kappa=kappa, steps=20, lr=0.05, binary_search_steps=1)(images, labels)
    fooled = logit_margin(dense(adv_images).detach(), labels) > kappa
    assert 0 < fooled.sum() < 32  # measured 8
    assert torch.equal(adv_images[~fooled], images[~fooled])  # every failure is the original, bit for bit
    changed = (adv_images != images).flatten(1).any(1)
    assert torch.equal(changed, fooled)  # and every image that changed clears kappa


def test_abort_early_must_be_a_bool(dense):
    with pytest.raises(ValueError, match=re.escape(
            "The 'abort_early' parameter of CW must be True or False. Got 1 instead.")):
        CW(dense, abort_early=1)
