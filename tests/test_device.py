"""Tests for the `device` argument of run_analysis, reproduce and evaluate_adaptive, and for check_device.

CUDA is faked (torch.cuda.is_available / device_count monkeypatched) wherever only the checks and the
wiring are under test, so these pass on any machine; the CUDA-vs-CPU comparison runs only with a GPU.
"""
from __future__ import annotations

import pytest
import torch

import hashrobust.adaptive
import hashrobust.analysis
import hashrobust.reproduction
from hashrobust._validation import check_device
from hashrobust.adaptive import evaluate_adaptive
from hashrobust.analysis import ATTACKS, run_analysis
from hashrobust.reproduction import reproduce

pytestmark = pytest.mark.usefixtures("one_thread")

MALFORMED = ("The 'device' parameter of run_analysis must be 'cpu', 'cuda' or 'cuda:<index>' (e.g. 'cuda:1'). "
             "Got {!r} instead.")
NO_CUDA = ("The 'device' parameter of run_analysis asks for {!r}, but this machine has no CUDA device "
           "(torch.cuda.is_available() is False); use 'cpu'.")
TINY = {"n": 4, "archs": ["mlp3"], "eps_values": [0.1], "attacks": {"FGSM": ATTACKS["FGSM"]}}
PLAIN = (bool, int, float, str, type(None))


@pytest.fixture
def no_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


@pytest.fixture
def one_gpu(monkeypatch):
    """A machine with exactly one CUDA device, whatever this one has."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)


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


@pytest.mark.parametrize("value", ["gpu", "CPU", "", "cuda:x", "cuda:-1", "mps", "meta", 0, None])
def test_check_device_rejects_malformed_values_naming_the_allowed_forms(value):
    with pytest.raises(ValueError) as excinfo:
        check_device(value, "run_analysis")
    assert str(excinfo.value) == MALFORMED.format(value)


@pytest.mark.parametrize("value", ["cuda", "cuda:1", torch.device("cuda", 0)])
def test_check_device_rejects_cuda_on_a_machine_without_it(value, no_cuda):
    with pytest.raises(ValueError) as excinfo:
        check_device(value, "run_analysis")
    assert str(excinfo.value) == NO_CUDA.format(str(value))


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
