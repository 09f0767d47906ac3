"""Tests for hashrobust.data: the official MNIST, the CIFAR-10 JPEG stand-in and its cache, errors."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
import torchvision
from torch.utils.data import Dataset

import hashrobust.data
from hashrobust.data import PROJECT_DIR, STAND_IN_ZIP, data_root, load_dataset

DATA = data_root()  # the offline copies (conftest.py points HASHROBUST_DATA there unless it is set)


# --- MNIST ------------------------------------------------------------------------------------------

def test_mnist_test_split_shape_dtype_range(mnist_test):
    assert mnist_test.images.shape == (10000, 1, 28, 28)
    assert mnist_test.images.dtype == torch.float32
    assert mnist_test.images.min().item() == 0.0
    assert mnist_test.images.max().item() == 1.0
    assert mnist_test.labels.shape == (10000,)
    assert mnist_test.labels.dtype == torch.int64
    assert mnist_test.name == "mnist" and mnist_test.split == "test"
    assert mnist_test.variant == "official"
    assert mnist_test.description == "MNIST test (official)"


def test_mnist_first_labels_are_the_official_order(mnist_train, mnist_test):
    assert mnist_train.labels[:10].tolist() == [5, 0, 4, 1, 9, 2, 1, 3, 1, 4]
    assert mnist_test.labels[:10].tolist() == [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]
    assert mnist_train.images.shape == (60000, 1, 28, 28)
    assert mnist_train.variant == "official"


def test_mnist_pixels_are_bytes_over_255(mnist_test):
    scaled = mnist_test.images[:100] * 255
    assert torch.equal(scaled, scaled.round())


def test_image_dataset_is_a_torch_dataset(mnist_test):
    assert isinstance(mnist_test, Dataset)
    assert len(mnist_test) == 10000
    image, label = mnist_test[3]
    assert image.shape == (1, 28, 28)
    assert torch.equal(image, mnist_test.images[3])
    assert label.item() == 0
    loader = torch.utils.data.DataLoader(mnist_test.subset(20), batch_size=8)
    images, labels = next(iter(loader))
    assert images.shape == (8, 1, 28, 28) and labels.tolist() == mnist_test.labels[:8].tolist()


def test_subset_is_the_first_n_examples(mnist_test):
    small = mnist_test.subset(32)
    assert len(small) == 32
    assert torch.equal(small.images, mnist_test.images[:32])
    assert torch.equal(small.labels, mnist_test.labels[:32])
    assert (small.name, small.split, small.variant) == ("mnist", "test", "official")


# --- CIFAR-10 (JPEG q75 stand-in) --------------------------------------------------------------------

def test_cifar10_stand_in_shape_variant_and_description(cifar10_test):
    assert cifar10_test.images.shape == (10000, 3, 32, 32)
    assert cifar10_test.images.dtype == torch.float32
    assert 0.0 <= cifar10_test.images.min().item() and cifar10_test.images.max().item() <= 1.0
    assert cifar10_test.labels.dtype == torch.int64
    assert cifar10_test.variant == "jpeg-q75 stand-in"
    assert cifar10_test.description == "CIFAR-10 test (jpeg-q75 stand-in)"


def test_cifar10_stand_in_labels_balanced_and_interleaved(cifar10_test):
    assert torch.bincount(cifar10_test.labels, minlength=10).tolist() == [1000] * 10
    assert cifar10_test.labels[:10].tolist() == list(range(10))
    assert cifar10_test.labels[10:20].tolist() == list(range(10))


def test_cifar10_stand_in_is_cached_once_and_reused(monkeypatch, tmp_path, cifar10_test):
    monkeypatch.setenv("HASHROBUST_CACHE", str(tmp_path))
    calls = []
    real_decode = hashrobust.data._decode_stand_in

    def counting_decode(zip_path, split):
        calls.append(split)
        return real_decode(zip_path, split)

    monkeypatch.setattr(hashrobust.data, "_decode_stand_in", counting_decode)
    first = load_dataset("cifar10", "test")
    assert calls == ["test"]
    size = (data_root() / STAND_IN_ZIP).stat().st_size
    assert [p.name for p in tmp_path.iterdir()] == [f"cifar10-jpeg-test-{size}.npz"]  # no temporary file left

    def no_decode(zip_path, split):
        raise AssertionError("the cache was not used: the zip was decoded a second time")

    monkeypatch.setattr(hashrobust.data, "_decode_stand_in", no_decode)
    second = load_dataset("cifar10", "test")
    assert torch.equal(first.images, second.images) and torch.equal(first.labels, second.labels)
    assert second.variant == "jpeg-q75 stand-in"
    # A fresh decode gives what the default cache holds.
    assert torch.equal(first.images, cifar10_test.images) and torch.equal(first.labels, cifar10_test.labels)


# --- bad input and missing data ----------------------------------------------------------------------

def test_unknown_dataset_lists_the_choices():
    with pytest.raises(ValueError, match=re.escape("Unknown dataset 'svhn'; choose one of: cifar10, mnist.")):
        load_dataset("svhn")


def test_unknown_split_lists_the_choices():
    with pytest.raises(ValueError, match=re.escape("Unknown split 'val'; choose one of: test, train.")):
        load_dataset("mnist", "val")


def _offline(*args, **kwargs):
    raise RuntimeError("Error downloading")


@pytest.mark.parametrize("name, torchvision_class", [("mnist", "MNIST"), ("cifar10", "CIFAR10")])
def test_no_data_and_no_network_names_hashrobust_data(monkeypatch, tmp_path, name, torchvision_class):
    monkeypatch.setattr(torchvision.datasets, torchvision_class, _offline)
    with pytest.raises(FileNotFoundError, match="HASHROBUST_DATA") as excinfo:
        load_dataset(name, "test", root=tmp_path)
    message = str(excinfo.value)
    assert f"No {name} data under {tmp_path}" in message
    assert "RuntimeError: Error downloading" in message
    assert (STAND_IN_ZIP in message) == (name == "cifar10")
    assert list(tmp_path.iterdir()) == []  # nothing written


def test_data_root_argument_beats_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("HASHROBUST_DATA", str(tmp_path / "from-env"))
    assert data_root(tmp_path / "from-arg") == tmp_path / "from-arg"
    assert data_root() == tmp_path / "from-env"
    monkeypatch.delenv("HASHROBUST_DATA")
    assert data_root() == PROJECT_DIR / "data"


def test_load_dataset_root_argument_beats_environment(monkeypatch, tmp_path, mnist_test):
    real_mnist = torchvision.datasets.MNIST

    def mnist_only_from_data(root, **kwargs):  # any other folder is empty and offline
        if Path(root) != DATA:
            raise RuntimeError("Error downloading")
        return real_mnist(root, **kwargs)

    monkeypatch.setattr(torchvision.datasets, "MNIST", mnist_only_from_data)
    monkeypatch.setenv("HASHROBUST_DATA", str(tmp_path))
    with pytest.raises(FileNotFoundError, match=re.escape(str(tmp_path))):
        load_dataset("mnist", "test")
    loaded = load_dataset("mnist", "test", root=DATA)
    assert torch.equal(loaded.labels, mnist_test.labels)
