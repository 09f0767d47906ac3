"""Session fixtures shared by the test modules: the real MNIST (and CIFAR-10) splits, 32 offline images.

Tests never download: unless HASHROBUST_DATA is already set, it points at the
offline copies in `shared/datasets` beside the repository (see its README.md).
Progress bars are switched off the same way.
"""
from __future__ import annotations

import os
from pathlib import Path

# Set before anything reads them (import time, so also for doctests collected beside these tests).
os.environ.setdefault("HASHROBUST_DATA", str(Path(__file__).resolve().parents[2] / "shared" / "datasets"))
os.environ.setdefault("TQDM_DISABLE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

from hashrobust.data import ImageDataset, load_dataset  # noqa: E402


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
