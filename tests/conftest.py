"""Session fixtures shared by the test modules: the real MNIST (and CIFAR-10) splits, 32 offline images.

Tests never download: unless HASHROBUST_DATA is already set, it points at the
offline copies in `shared/datasets` beside the repository (see its README.md).
Where MNIST is not there, the session stops at its start with one message
(`pytest_sessionstart`, exit code 4) instead of failing test after test.
Progress bars are switched off the same way.
"""
from __future__ import annotations

import os
from pathlib import Path

# Set before anything reads them (import time, so also for doctests collected beside these tests).
os.environ.setdefault("HASHROBUST_DATA", str(Path(__file__).resolve().parents[2] / "shared" / "datasets"))
os.environ.setdefault("TQDM_DISABLE", "1")

import copy  # noqa: E402
import importlib  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

from hashrobust.data import ImageDataset, _mnist_found, data_root, load_dataset  # noqa: E402
from hashrobust.zoo import load_pretrained  # noqa: E402


def pytest_sessionstart(session):
    """No MNIST, no tests: one message in seconds instead of hundreds of failures (and no download attempt)."""
    root = data_root()
    if _mnist_found(root):
        return
    pytest.exit(
        f"MNIST not found under {root} (it needs MNIST/raw/ with the four official IDX files; "
        f"HASHROBUST_DATA={os.environ.get('HASHROBUST_DATA', '(unset)')}). Point HASHROBUST_DATA at a folder "
        f"that holds them, as an absolute path or one relative to the repository root, e.g. "
        f"`export HASHROBUST_DATA=../shared/datasets` (the offline copy beside the repository), then rerun. "
        f"The tests never download: torchvision's download needs internet access; on a machine with internet, "
        f"fetch the data once with `python -c \"import hashrobust as hr; hr.load_dataset('mnist', 'train')\"` "
        f"into an existing HASHROBUST_DATA folder.",
        returncode=pytest.ExitCode.USAGE_ERROR)


@pytest.fixture(scope="session")
def mnist_test() -> ImageDataset:
    """The official MNIST test split, (10000, 1, 28, 28) in [0, 1]."""
    return load_dataset("mnist", "test")


@pytest.fixture(scope="session")
def mnist_train() -> ImageDataset:
    """The official MNIST training split, (60000, 1, 28, 28) in [0, 1]."""
    return load_dataset("mnist", "train")


@pytest.fixture(scope="session")
def cifar10_test() -> ImageDataset:
    """The CIFAR-10 test split: official files if present, else the JPEG stand-in (see `.variant`)."""
    return load_dataset("cifar10", "test")


@pytest.fixture(scope="session")
def tiny_images(mnist_test: ImageDataset):
    """The first 32 MNIST test images (32, 1, 28, 28) and their labels (32,): small, fixed, offline."""
    return mnist_test.images[:32].clone(), mnist_test.labels[:32].clone()


@pytest.fixture(scope="module")
def one_thread():
    """Small batches: one thread is faster, and far faster when another job holds the cores.

    Use per module with `pytestmark = pytest.mark.usefixtures("one_thread")`.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def dense() -> nn.Module:
    """The shipped dense MNIST mlp3 (784-1000-10); a test module may define its own `dense` instead."""
    return load_pretrained("mnist", "mlp3", ratio=1)


@pytest.fixture(scope="module")
def masked(dense) -> nn.Module:
    """mlp3 with its last Linear scaled by 1000: the same predictions, a saturated softmax."""
    model = copy.deepcopy(dense)
    with torch.no_grad():
        model[-1].weight.mul_(1000)
        model[-1].bias.mul_(1000)
    return model


class OneByOne(nn.Module):
    """Runs the model on each image on its own, so that its float32 arithmetic cannot depend on the batch.

    A matrix product over another batch size may round differently on another CPU (AVX2, AVX-512); tests of
    an attack's own batch independence run on this wrapper.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.model(image[None]) for image in images])


@pytest.fixture(scope="session")
def one_by_one() -> type[OneByOne]:
    """The OneByOne wrapper: `one_by_one(model)`."""
    return OneByOne


@pytest.fixture(scope="session")
def ta():
    """torchattacks, the peer; `make test` installs it, so CI (CI=true) fails rather than skips without it."""
    if os.environ.get("CI"):
        return importlib.import_module("torchattacks")
    return pytest.importorskip("torchattacks")


@pytest.fixture
def displayed(monkeypatch):
    """Record IPython.display.display calls; display_id=True returns a handle that records its updates."""
    import IPython.display

    calls = []

    class Handle:
        def __init__(self):
            self.updates = []

        def update(self, obj):
            self.updates.append(obj)

    def display(obj, display_id=None):
        handle = Handle() if display_id else None
        calls.append((obj, display_id, handle))
        return handle

    monkeypatch.setattr(IPython.display, "display", display)
    return calls
