"""Tests for hashrobust.data: the official MNIST, the CIFAR-10 JPEG stand-in and its cache, errors."""
from __future__ import annotations

import io
import os
import re
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
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


# --- where HASHROBUST_DATA points: a relative value is the repository root's, whatever the working directory ---

def test_relative_hashrobust_data_is_resolved_against_the_repository_not_the_kernel(monkeypatch, tmp_path):
    monkeypatch.setenv("HASHROBUST_DATA", "../shared/datasets")  # the README's value, meant from the repository root
    expected = Path(os.path.normpath(PROJECT_DIR / ".." / "shared" / "datasets"))
    seen = {}
    for where in (PROJECT_DIR, PROJECT_DIR / "notebooks", tmp_path):  # make test, a notebook kernel, elsewhere
        monkeypatch.chdir(where)
        seen[where] = data_root()
    assert set(seen.values()) == {expected}, seen
    assert expected.is_absolute()


def test_absolute_hashrobust_data_is_used_as_is(monkeypatch, tmp_path):
    monkeypatch.setenv("HASHROBUST_DATA", str(tmp_path / "somewhere"))
    monkeypatch.chdir(PROJECT_DIR / "notebooks")
    assert data_root() == tmp_path / "somewhere"


@pytest.mark.parametrize("name", ["mnist", "cifar10"])
def test_missing_data_root_names_its_absolute_path_and_creates_nothing(monkeypatch, tmp_path, name):
    work = tmp_path / "kernel"  # a notebook kernel's working directory
    work.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.setenv("HASHROBUST_DATA", "no-such-folder/datasets")
    expected = Path(os.path.normpath(PROJECT_DIR / "no-such-folder" / "datasets"))
    with pytest.raises(FileNotFoundError) as excinfo:
        load_dataset(name, "test")
    message = str(excinfo.value)
    assert str(expected) in message
    assert "does not exist" in message and "HASHROBUST_DATA" in message
    assert not (PROJECT_DIR / "no-such-folder").exists()  # torchvision's download=True would make <root>/MNIST/raw
    assert not expected.exists()
    assert list(work.iterdir()) == []


def test_failed_download_into_an_existing_root_leaves_no_empty_folders(monkeypatch, tmp_path):
    def offline_download(self):  # what torchvision does offline: make MNIST/raw, then fail
        os.makedirs(self.raw_folder, exist_ok=True)
        raise RuntimeError("Error downloading train-images-idx3-ubyte.gz")

    monkeypatch.setattr(torchvision.datasets.MNIST, "download", offline_download)
    with pytest.raises(FileNotFoundError, match=re.escape(str(tmp_path))):
        load_dataset("mnist", "test", root=tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_an_installed_package_downloads_into_its_cache_folder_and_creates_it(monkeypatch, tmp_path, mnist_test):
    """Colab: no HASHROBUST_DATA, no repository; torchvision's download must get a folder (the user's cache)."""
    roots = []

    def downloading_mnist(root, train=True, download=False):  # what torchvision does online, with the real files
        assert download and Path(root).is_dir(), "the download needs an existing folder"
        roots.append(Path(root))
        return type("Downloaded", (), {"data": (mnist_test.images * 255).round().to(torch.uint8).squeeze(1),
                                       "targets": mnist_test.labels})()

    monkeypatch.setattr(hashrobust.data, "_in_source_checkout", lambda: False)
    monkeypatch.delenv("HASHROBUST_DATA", raising=False)
    monkeypatch.setenv("HASHROBUST_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(torchvision.datasets, "MNIST", downloading_mnist)
    test = load_dataset("mnist", "test")
    assert roots == [tmp_path / "cache" / "datasets"] and torch.equal(test.images, mnist_test.images)
    monkeypatch.setattr(hashrobust.data, "_in_source_checkout", lambda: True)  # a checkout's data/ is never made
    assert data_root() == PROJECT_DIR / "data"


# --- the stand-in's cache: $HASHROBUST_CACHE, else the user's cache folder; never the repository ---------

@pytest.fixture
def fake_stand_in(tmp_path) -> Path:
    """A data folder holding a 20-image cifar10-jpeg.zip (test/<class>/<n>.jpg, 2 per class): decodes at once."""
    from PIL import Image

    folder = tmp_path / "data"
    folder.mkdir()
    with zipfile.ZipFile(folder / STAND_IN_ZIP, "w") as archive:
        for number in range(2):
            for label, cls in enumerate(hashrobust.data.CIFAR10_CLASSES):
                buffer = io.BytesIO()
                Image.new("RGB", (32, 32), (25 * label, 100 * number, 7)).save(buffer, "JPEG", quality=75)
                archive.writestr(f"test/{cls}/{number:04d}.jpg", buffer.getvalue())
    return folder


def _cache_files_in_repository() -> list[Path]:
    return [p for p in PROJECT_DIR.rglob("cifar10-jpeg-*.npz") if ".venv" not in p.parts]


def test_stand_in_cache_goes_to_hashrobust_cache_and_nowhere_in_the_repository(monkeypatch, tmp_path, fake_stand_in):
    monkeypatch.setenv("HASHROBUST_CACHE", str(tmp_path / "cache"))
    before = set(_cache_files_in_repository())
    loaded = load_dataset("cifar10", "test", root=fake_stand_in)
    assert loaded.labels.tolist() == list(range(10)) * 2 and loaded.variant == "jpeg-q75 stand-in"
    size = (fake_stand_in / STAND_IN_ZIP).stat().st_size
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [f"cifar10-jpeg-test-{size}.npz"]
    assert set(_cache_files_in_repository()) == before


def test_two_processes_decoding_at_once_do_not_rename_each_others_temporary_file(monkeypatch, tmp_path, fake_stand_in):
    # The interleaving that broke three experiments started together: process A writes its temporary
    # file; before A renames it, process B decodes, writes and renames; then A renames. With one shared
    # temporary name B had taken A's file away and A's rename raised FileNotFoundError.
    monkeypatch.setenv("HASHROBUST_CACHE", str(tmp_path / "cache"))
    pids = iter([1001, 1002])
    monkeypatch.setattr(hashrobust.data.os, "getpid", lambda: next(pids))
    real_savez = np.savez
    nested = []

    def savez_then_let_another_process_finish(path, **arrays):
        real_savez(path, **arrays)
        if not nested:
            nested.append(path)
            hashrobust.data._load_stand_in(fake_stand_in / STAND_IN_ZIP, "test")  # process B, start to end

    monkeypatch.setattr(hashrobust.data.np, "savez", savez_then_let_another_process_finish)
    images, labels = hashrobust.data._load_stand_in(fake_stand_in / STAND_IN_ZIP, "test")  # process A
    assert labels.tolist() == list(range(10)) * 2 and images.shape == (20, 32, 32, 3)
    size = (fake_stand_in / STAND_IN_ZIP).stat().st_size
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [f"cifar10-jpeg-test-{size}.npz"]


def test_default_cache_is_the_users_cache_folder_not_the_repository(monkeypatch, tmp_path):
    monkeypatch.delenv("HASHROBUST_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    cache = hashrobust.data._cache_dir()
    assert cache.is_absolute()
    assert PROJECT_DIR not in cache.parents and "site-packages" not in cache.parts
    if sys.platform.startswith("linux"):
        assert cache == tmp_path / "xdg" / "hashrobust"
        monkeypatch.delenv("XDG_CACHE_HOME")
        assert hashrobust.data._cache_dir() == Path.home() / ".cache" / "hashrobust"


# --- `make test` without data: one message, in seconds (tests/conftest.py) -----------------------------------

def test_test_session_without_mnist_stops_at_once_with_one_clear_message(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    env = {**os.environ, "HASHROBUST_DATA": str(empty), "OMP_NUM_THREADS": "1"}
    start = time.monotonic()
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                          "tests/test_packaging.py::test_public_api_is_listed_and_importable"],
                         cwd=PROJECT_DIR, env=env, capture_output=True, text=True, timeout=120)
    elapsed = time.monotonic() - start
    output = run.stdout + run.stderr
    assert run.returncode == pytest.ExitCode.USAGE_ERROR, output
    assert f"MNIST not found under {empty}" in output
    assert "HASHROBUST_DATA" in output and "internet" in output
    assert "passed" not in output and "failed" not in output  # no test ran
    assert elapsed < 20, elapsed
    assert list(empty.iterdir()) == []
