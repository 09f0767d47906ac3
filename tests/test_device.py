"""Tests for the `device` argument of every public entry point (run_analysis, reproduce, evaluate_adaptive,
load_checkpoint, load_pretrained, ImageDataset.to, train), for check_device, and for the determinism of the
hashed backward under torch.use_deterministic_algorithms.

CUDA and MPS are faked (torch.cuda.is_available / device_count, torch.backends.mps.is_available
monkeypatched) wherever only the checks and the wiring are under test, so these pass on any machine; the
CUDA-vs-CPU comparison and the CUDA determinism test run only with a GPU.
"""
from __future__ import annotations

import importlib
import os
import re

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import hashrobust.adaptive
import hashrobust.analysis
import hashrobust.reproduction
import hashrobust.zoo
from hashrobust._validation import check_device
from hashrobust.adaptive import evaluate_adaptive
from hashrobust.analysis import ATTACKS, run_analysis
from hashrobust.data import ImageDataset
from hashrobust.layers import HashedConv2d, HashedLinear
from hashrobust.models import build_model
from hashrobust.reproduction import reproduce
from hashrobust.train import TrainRecipe, default_device, train
from hashrobust.zoo import CHECKPOINT_DIR, load_checkpoint, load_pretrained

pytestmark = pytest.mark.usefixtures("one_thread")
TRAIN_MODULE = importlib.import_module("hashrobust.train")  # `hashrobust.train` is the function train

MALFORMED = ("The 'device' parameter of run_analysis must be 'cpu', 'cuda', 'cuda:<index>' (e.g. 'cuda:1') or "
             "'mps'. Got {!r} instead. Available on this machine: 'cpu'.")
NO_CUDA = ("The 'device' parameter of run_analysis asks for {!r}, but this machine has no CUDA device "
           "(torch.cuda.is_available() is False); use 'cpu'.")
NO_MPS = ("The 'device' parameter of run_analysis asks for {!r}, but this machine has no MPS device "
          "(torch.backends.mps.is_available() is False); use 'cpu'.")
TINY = {"n": 4, "archs": ["mlp3"], "eps_values": [0.1], "attacks": {"FGSM": ATTACKS["FGSM"]}}
PLAIN = (bool, int, float, str, type(None))


@pytest.fixture
def no_cuda(monkeypatch):
    """A machine with only a CPU (no CUDA, no MPS), whatever this one has."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)


@pytest.fixture
def one_gpu(monkeypatch):
    """A machine with exactly one CUDA device (and no MPS), whatever this one has."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)


def _without_seconds(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in row.items() if k != "seconds"} for row in rows]


def _not_plain(rows: list[dict]) -> dict:
    return {key: type(value).__name__ for row in rows for key, value in row.items() if not isinstance(value, PLAIN)}


# ----------------------------------------------------------------------------- check_device
@pytest.mark.parametrize("value", ["cpu", "cpu:0", torch.device("cpu")])
def test_check_device_accepts_the_cpu(value, no_cuda):
    assert check_device(value, "run_analysis").type == "cpu"


@pytest.mark.parametrize("value, expected", [("cuda", torch.device("cuda")), ("cuda:0", torch.device("cuda", 0)),
                                             (torch.device("cuda", 0), torch.device("cuda", 0))])
def test_check_device_accepts_a_cuda_device_the_machine_has(value, expected, one_gpu):
    assert check_device(value, "run_analysis") == expected


@pytest.mark.parametrize("value", ["gpu", "CPU", "", "cuda:x", "cuda:-1", "mps:x", "meta", 0, None])
def test_check_device_rejects_malformed_values_naming_the_allowed_forms(value, no_cuda):
    with pytest.raises(ValueError) as excinfo:
        check_device(value, "run_analysis")
    assert str(excinfo.value) == MALFORMED.format(value)


@pytest.mark.parametrize("value, message", [
    *[(value, NO_CUDA) for value in ("cuda", "cuda:1", torch.device("cuda", 0))],
    *[(value, NO_MPS) for value in ("mps", "mps:0", torch.device("mps"))],
])
def test_check_device_rejects_an_accelerator_the_machine_lacks(value, message, no_cuda):
    with pytest.raises(ValueError) as excinfo:
        check_device(value, "run_analysis")
    assert str(excinfo.value) == message.format(str(value))


def test_check_device_rejects_an_index_the_machine_lacks(one_gpu):
    with pytest.raises(ValueError, match=r"asks for 'cuda:1', but the CUDA devices of this machine are cuda:0\.$"):
        check_device("cuda:1", "run_analysis")


def test_check_device_names_the_cli_option():
    with pytest.raises(ValueError, match=r"^The '--device' parameter of hashrobust analyze must be 'cpu', 'cuda'"):
        check_device("gpu", "hashrobust analyze", "--device")


# ----------------------------------------------------------------------------- the experiments
@pytest.mark.parametrize("owner, run", [
    ("run_analysis", lambda device: run_analysis("mnist", **TINY, device=device)),
    ("reproduce", lambda device: reproduce("mnist", n=4, jsma_images=1, models=[("mlp3", 8)], device=device)),
    ("evaluate_adaptive", lambda device: evaluate_adaptive("mnist", n=4, n_cw=1, jsma_images=1,
                                                           models=[("mlp3", 8)], device=device)),
])
@pytest.mark.parametrize("value, message", [("gpu", MALFORMED), ("cuda", NO_CUDA)])
def test_experiments_check_the_device_before_loading_anything(owner, run, value, message, no_cuda, monkeypatch):
    def load(*args, **kwargs):
        raise AssertionError("data or a model was loaded before the device was checked")

    for module in (hashrobust.analysis, hashrobust.reproduction, hashrobust.adaptive):
        monkeypatch.setattr(module, "load_dataset", load)
        monkeypatch.setattr(module, "load_pretrained", load)
    with pytest.raises(ValueError) as excinfo:
        run(value)
    assert str(excinfo.value) == message.format(value).replace("run_analysis", owner)


class _Stop(Exception):
    """Raised where a test has seen what it needs of an experiment."""


class _FakeSplit:
    """A stand-in for ImageDataset that records where it is sent."""

    def __init__(self, moved: list) -> None:
        self.moved, self.variant = moved, "official"

    def subset(self, n: int) -> _FakeSplit:
        return self

    def to(self, device: torch.device | str) -> _FakeSplit:
        self.moved.append(device)
        return self


@pytest.mark.parametrize("module, run, consumer", [
    (hashrobust.analysis, lambda device: run_analysis("mnist", n=4, archs=["mlp3"], device=device), "sweep"),
    (hashrobust.reproduction, lambda device: reproduce("mnist", n=4, models=[("mlp3", 8)], device=device),
     "defend_by_rule"),
    (hashrobust.adaptive, lambda device: evaluate_adaptive("mnist", n=4, models=[("mlp3", 8)], device=device),
     "defend_by_rule"),
], ids=["run_analysis", "reproduce", "evaluate_adaptive"])
def test_models_and_images_go_to_the_requested_device(module, run, consumer, one_gpu, monkeypatch):
    moved, loaded = [], []

    def load_pretrained(dataset, arch, ratio=1, device="cpu", directory=None):
        loaded.append((arch, ratio, device))
        return torch.nn.Identity()

    def stop(*args, **kwargs):
        raise _Stop

    monkeypatch.setattr(module, "load_dataset", lambda name, split="test", root=None: _FakeSplit(moved))
    monkeypatch.setattr(module, "load_pretrained", load_pretrained)
    monkeypatch.setattr(module, consumer, stop)
    with pytest.raises(_Stop):
        run("cuda:0")
    cuda0 = torch.device("cuda", 0)
    assert moved and moved == [cuda0] * len(moved)
    assert loaded and {device for _, _, device in loaded} == {cuda0}
    if module is hashrobust.analysis:  # every shipped ratio of mlp3
        assert sorted(ratio for _, ratio, _ in loaded) == [1, 2, 4, 8, 16, 32, 64]


def test_run_analysis_on_the_cpu_explicitly_gives_the_default_rows():
    default = run_analysis("mnist", **TINY)
    assert len(default) == 7 + 12  # 7 white-box cells (ratios 1..64) + 6 + 6 transfer cells
    assert _not_plain(default) == {}
    for device in ("cpu", torch.device("cpu")):
        assert _without_seconds(run_analysis("mnist", **TINY, device=device)) == _without_seconds(default)


# ----------------------------------------------------------------------------- on a GPU
CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def _close(gpu: list[dict], cpu: list[dict], keys: tuple[str, ...]) -> None:
    """Same rows in the same order; each rate within one example of the CPU's (float32 may round differently)."""
    assert len(gpu) == len(cpu) and _not_plain(gpu) == {}
    for g, c in zip(gpu, cpu):
        assert (g.get("arch"), g.get("ratio"), g.get("attack"), g.get("defence")) == \
            (c.get("arch"), c.get("ratio"), c.get("attack"), c.get("defence"))
        for key in keys:
            if c.get(key) is not None:
                assert g[key] == pytest.approx(c[key], abs=1 / c["n"] + 1e-9), (key, g, c)


@CUDA
def test_run_analysis_on_cuda_matches_the_cpu():
    tiny = {**TINY, "n": 16}
    _close(run_analysis("mnist", **tiny, device="cuda"), run_analysis("mnist", **tiny),
           ("success", "clean_acc", "robust_acc"))


@CUDA
def test_reproduce_on_cuda_matches_the_cpu():
    kwargs = {"n": 16, "jsma_images": 1, "models": [("mlp3", 8)]}
    (gpu, gpu_curves), (cpu, cpu_curves) = reproduce("mnist", **kwargs, device="cuda"), reproduce("mnist", **kwargs)
    _close(gpu, cpu, ("success", "clean_acc"))
    assert len(gpu_curves) == len(cpu_curves) and _not_plain(gpu_curves) == {}


@CUDA
def test_evaluate_adaptive_on_cuda_matches_the_cpu():
    kwargs = {"n": 8, "n_cw": 2, "jsma_images": 1, "models": [("mlp3", 8)], "n_curve": 4}
    _close(evaluate_adaptive("mnist", **kwargs, device="cuda"), evaluate_adaptive("mnist", **kwargs),
           ("success", "clean_acc", "robust_acc"))


# ----------------------------------------------------------------------------- check_device: MPS, availability


@pytest.fixture
def mps_only(monkeypatch):
    """An Apple-silicon machine: MPS, no CUDA."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)


@pytest.mark.parametrize("value", ["mps", "mps:0", torch.device("mps")])
def test_check_device_accepts_mps_where_the_machine_has_it(value, mps_only):
    assert check_device(value, "run_analysis").type == "mps"




def test_check_device_rejects_an_mps_index_the_machine_lacks(mps_only):
    with pytest.raises(ValueError, match=r"asks for 'mps:1', but the MPS device of this machine is mps:0\.$"):
        check_device("mps:1", "run_analysis")


def test_check_device_names_every_device_the_machine_has(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)  # not a real machine: every kind at once
    with pytest.raises(ValueError, match=r"Got 'gpu' instead\. Available on this machine: 'cpu', 'cuda:0', "
                                         r"'cuda:1', 'mps'\.$"):
        check_device("gpu", "run_analysis")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match=r"no CUDA device \(torch\.cuda\.is_available\(\) is False\); "
                                         r"use 'cpu' or 'mps'\.$"):
        check_device("cuda", "run_analysis")


# ----------------------------------------------------------------------------- the other entry points
def _tiny_set() -> ImageDataset:
    """8 random 1x28x28 images with labels 0..7: enough for one training epoch in a blink."""
    generator = torch.Generator().manual_seed(0)
    return ImageDataset(torch.rand(8, 1, 28, 28, generator=generator), torch.arange(8), "mnist", "test", "official")


def _forbid(*args, **kwargs):
    raise AssertionError("work was done before the device was checked")


def _forbid_work(monkeypatch) -> None:
    """Make every first step of the entry points fail, so a device check that comes late shows."""
    monkeypatch.setattr(hashrobust.zoo, "read_manifest", _forbid)
    monkeypatch.setattr(hashrobust.zoo, "_verified_manifest", _forbid)
    monkeypatch.setattr(hashrobust.zoo.torch, "load", _forbid)
    monkeypatch.setattr(TRAIN_MODULE, "set_seed", _forbid)


class _Immovable(torch.nn.Linear):
    """A model that must not be moved (or trained) before the device is checked."""

    def to(self, *args, **kwargs):
        _forbid()


ENTRY_POINTS = {
    "load_checkpoint": lambda device: load_checkpoint(CHECKPOINT_DIR / "mnist-mlp3-r8.pt", device=device),
    "load_pretrained": lambda device: load_pretrained("mnist", "mlp3", 8, device=device),
    "ImageDataset.to": lambda device: _tiny_set().to(device),
    "train": lambda device: train(_Immovable(784, 10), _tiny_set(), TrainRecipe(epochs=1), device=device,
                                  progress=False),
}


@pytest.mark.parametrize("owner", sorted(ENTRY_POINTS))
@pytest.mark.parametrize("value, message", [
    ("gpu", MALFORMED.format("gpu")),
    ("cuda:7", NO_CUDA.format("cuda:7")),
    ("cuda", NO_CUDA.format("cuda")),
    ("mps", NO_MPS.format("mps")),
    (torch.device("cuda", 7), NO_CUDA.format("cuda:7")),
])
def test_entry_points_reject_a_device_the_machine_lacks_before_any_work(owner, value, message, no_cuda, monkeypatch):
    _forbid_work(monkeypatch)
    with pytest.raises(ValueError, match=r"'(gpu|cuda|cuda:7|mps)'.*'cpu'") as excinfo:
        ENTRY_POINTS[owner](value)
    assert str(excinfo.value) == message.replace("run_analysis", owner)


@pytest.mark.parametrize("owner", sorted(ENTRY_POINTS))
def test_entry_points_reject_a_cuda_index_the_machine_lacks(owner, one_gpu, monkeypatch):
    _forbid_work(monkeypatch)
    with pytest.raises(ValueError, match=rf"^The 'device' parameter of {re.escape(owner)} asks for 'cuda:7', but the "
                                         r"CUDA devices of this machine are cuda:0\.$"):
        ENTRY_POINTS[owner]("cuda:7")


def test_load_pretrained_checks_the_device_before_the_checkpoint_name(no_cuda):
    with pytest.raises(ValueError, match=r"^The 'device' parameter of load_pretrained must be"):
        load_pretrained("no-such-dataset", "mlp3", 8, device="gpu")


def test_load_checkpoint_checks_the_device_before_the_file(no_cuda, tmp_path):
    with pytest.raises(ValueError, match=r"^The 'device' parameter of load_checkpoint asks for 'cuda'"):
        load_checkpoint(tmp_path / "missing.pt", device="cuda")


CPU = torch.device("cpu")


@pytest.mark.parametrize("value", ["cpu", torch.device("cpu")])
def test_the_zoo_loads_onto_the_cpu(value):
    for model in (load_checkpoint(CHECKPOINT_DIR / "mnist-mlp3-r8.pt", device=value),
                  load_pretrained("mnist", "mlp3", 8, device=value)):
        assert {p.device for p in model.parameters()} == {CPU} and not model.training


@pytest.mark.parametrize("value", ["cpu", torch.device("cpu")])
def test_image_dataset_moves_to_the_cpu(value):
    data = _tiny_set()
    moved = data.to(value)
    assert moved.images.device == moved.labels.device == CPU
    assert moved.images is data.images and moved.labels is data.labels  # already there: the tensors themselves


@pytest.mark.parametrize("value", ["cpu", torch.device("cpu")])
def test_train_runs_on_the_cpu(value):
    model = build_model("mlp3", 8)
    history = train(model, _tiny_set(), TrainRecipe(epochs=1, batch_size=4), device=value, progress=False)
    assert len(history) == 1 and {p.device for p in model.parameters()} == {CPU}


def test_default_device_is_one_check_device_accepts():
    assert check_device(default_device(), "train") == default_device()


# ----------------------------------------------------------------------------- determinism of the hashed backward
@pytest.fixture
def deterministic():
    """torch.use_deterministic_algorithms(True) for the test; the previous setting (and warn_only) restored."""
    enabled = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(enabled, warn_only=warn_only)


def _hashed_net() -> nn.Module:
    """HashedConv2d and HashedLinear at ratio 8: many virtual weights per real one, so each bucket sum adds many."""
    return nn.Sequential(HashedConv2d(1, 8, 3, ratio=8, seed=1, stride=2, padding=1), nn.ReLU(), nn.Flatten(),
                         HashedLinear(8 * 14 * 14, 32, ratio=8, seed=2), nn.ReLU(),
                         HashedLinear(32, 10, ratio=8, seed=3))


def _training_step(device: torch.device | str) -> dict[str, torch.Tensor]:
    """One seeded SGD step on 64 fixed images; the weight gradients and updated weights as int32 bit patterns.

    The loss is a cross-entropy written with log_softmax (not F.cross_entropy, whose CUDA nll_loss kernels
    may lack a deterministic variant), so every op but the ones under test is deterministic on any device.
    """
    torch.manual_seed(0)
    model = _hashed_net().to(device).train()
    generator = torch.Generator().manual_seed(0)  # data drawn on the CPU: the same on every device
    images = torch.rand(64, 1, 28, 28, generator=generator).to(device)
    onehot = F.one_hot(torch.randint(0, 10, (64,), generator=generator), 10).float().to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    loss = -(model(images).log_softmax(1) * onehot).sum(1).mean()
    optimizer.zero_grad()
    loss.backward()
    bits = {f"{name}.grad": p.grad.detach().cpu().view(torch.int32).clone() for name, p in model.named_parameters()}
    optimizer.step()
    bits.update({name: p.detach().cpu().view(torch.int32).clone() for name, p in model.named_parameters()})
    return bits


def _assert_bit_identical(first: dict[str, torch.Tensor], second: dict[str, torch.Tensor]) -> None:
    assert first.keys() == second.keys()
    assert [name for name in first if not torch.equal(first[name], second[name])] == []


def test_hashed_training_step_is_bit_reproducible_on_the_cpu_in_deterministic_mode(deterministic):
    first, second = _training_step("cpu"), _training_step("cpu")
    assert any(first[f"{name}.weight.grad"].count_nonzero() for name in ("0", "3", "5"))
    _assert_bit_identical(first, second)


@CUDA
def test_hashed_training_step_is_bit_reproducible_on_cuda_in_deterministic_mode(deterministic, monkeypatch):
    # cuBLAS (the linear layers) is deterministic only with a fixed workspace; without this variable the
    # matmuls raise under deterministic mode. Best set before the process starts (before cuBLAS initialises).
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", os.environ.get("CUBLAS_WORKSPACE_CONFIG", ":4096:8"))
    first, second = _training_step("cuda"), _training_step("cuda")
    _assert_bit_identical(first, second)
    cpu = _training_step("cpu")  # across devices: only to float32 tolerance
    for name in cpu:
        if name.endswith(".grad"):
            assert torch.allclose(first[name].view(torch.float32), cpu[name].view(torch.float32),
                                  rtol=1e-4, atol=1e-6), name
