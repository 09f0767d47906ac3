"""Tests for hashrobust.cli: `hashrobust train` and `hashrobust zoo` on 512-image subsets, in tmp_path; --device."""
from __future__ import annotations

import subprocess
import sys

import pytest
import torch

import hashrobust.cli
from hashrobust import __version__
from hashrobust.cli import main
from hashrobust.data import load_dataset
from hashrobust.zoo import CHECKPOINT_DIR, load_checkpoint, read_manifest

TRAIN = ["train", "--dataset", "mnist", "--arch", "mlp3", "--epochs", "1"]


@pytest.fixture
def small_data(monkeypatch, mnist_train, mnist_test):
    """The CLI sees only the first 512 images of each MNIST split (a run takes about a second)."""
    splits = {"train": mnist_train.subset(512), "test": mnist_test.subset(512)}

    def load_small(name, split="test", root=None):
        assert name == "mnist"
        return splits[split]

    monkeypatch.setattr(hashrobust.cli, "load_dataset", load_small)
    return splits


def test_version(capsys):
    with pytest.raises(SystemExit) as excinfo:
        main(["--version"])
    assert excinfo.value.code == 0
    assert capsys.readouterr().out.strip() == f"hashrobust {__version__}"


def test_python_dash_m_runs_the_same_command():
    """`python -m hashrobust` is the console script (for a Jupyter kernel whose scripts folder is not on PATH)."""
    done = subprocess.run([sys.executable, "-m", "hashrobust", "--version"], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"hashrobust {__version__}"
    bad = subprocess.run([sys.executable, "-m", "hashrobust", "shootout", "--arch", "resnet"],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "invalid choice: 'resnet'" in bad.stderr


def test_train_writes_checkpoint_and_manifest_entry(small_data, tmp_path, capsys):
    argv = TRAIN + ["--ratio", "8", "--seed", "3", "--out", str(tmp_path)]
    assert main(argv) == 0
    path = tmp_path / "mnist-mlp3-r8.pt"
    assert path.is_file()
    entry = read_manifest(tmp_path)["mnist-mlp3-r8.pt"]
    assert entry["command"].startswith("hashrobust train ") and "--ratio 8" in entry["command"]
    assert (entry["seed"], entry["epochs"], entry["variant"]) == (3, 1, "official")
    assert entry["recipe"]["seed"] == 3 and entry["recipe"]["lr"] == 0.05
    assert entry["method"] == "trained from scratch"
    assert entry["real_parameters"] < entry["virtual_parameters"] == 795010
    assert entry["test_n"] == 512
    model = load_checkpoint(path)
    assert model[2].ratio == 8
    accuracy = (model(small_data["test"].images).argmax(1) == small_data["test"].labels).float().mean().item()
    assert entry["clean_test_accuracy"] == round(accuracy, 4)
    assert "mnist-mlp3-r8.pt: clean test accuracy" in capsys.readouterr().out


def test_train_from_dense_compresses_then_fine_tunes(small_data, tmp_path):
    assert main(TRAIN + ["--ratio", "1", "--out", str(tmp_path)]) == 0
    dense = tmp_path / "mnist-mlp3-r1.pt"
    assert main(TRAIN + ["--ratio", "4", "--from-dense", str(dense), "--out", str(tmp_path)]) == 0
    manifest = read_manifest(tmp_path)
    assert set(manifest) == {"mnist-mlp3-r1.pt", "mnist-mlp3-r4.pt"}
    entry = manifest["mnist-mlp3-r4.pt"]
    assert entry["method"].startswith(f"compressed from {dense}")
    assert f"--from-dense {dense}" in entry["command"]
    assert entry["recipe"]["lr"] == pytest.approx(0.05 / 5)  # fine-tuning uses a fifth of the learning rate
    assert entry["virtual_parameters"] == manifest["mnist-mlp3-r1.pt"]["real_parameters"] == 795010
    assert entry["real_parameters"] < entry["virtual_parameters"] / 3
    assert manifest["mnist-mlp3-r1.pt"]["method"] == "trained from scratch"


def test_train_is_deterministic_for_a_seed(small_data, tmp_path):
    shas = []
    for folder, seed in (("a", 5), ("b", 5), ("c", 6)):
        assert main(TRAIN + ["--ratio", "8", "--seed", str(seed), "--out", str(tmp_path / folder)]) == 0
        shas.append(read_manifest(tmp_path / folder)["mnist-mlp3-r8.pt"]["sha256"])
    assert shas[0] == shas[1] != shas[2]


def test_zoo_lists_and_verifies(small_data, tmp_path, capsys):
    assert main(TRAIN + ["--ratio", "8", "--out", str(tmp_path)]) == 0
    assert main(TRAIN + ["--ratio", "64", "--out", str(tmp_path)]) == 0
    capsys.readouterr()
    assert main(["zoo", "--out", str(tmp_path), "--verify"]) == 0
    out = capsys.readouterr().out
    assert "mnist-mlp3-r8.pt" in out and "mnist-mlp3-r64.pt" in out
    assert "measured" in out and "MISMATCH" not in out


def test_zoo_flags_a_wrong_accuracy(small_data, tmp_path, capsys):
    assert main(TRAIN + ["--ratio", "8", "--out", str(tmp_path)]) == 0
    manifest = tmp_path / "MANIFEST.json"
    entry = read_manifest(tmp_path)["mnist-mlp3-r8.pt"]
    manifest.write_text(manifest.read_text().replace(f'"clean_test_accuracy": {entry["clean_test_accuracy"]}',
                                                     '"clean_test_accuracy": 0.01'))
    assert main(["zoo", "--out", str(tmp_path), "--verify"]) == 1
    assert "MISMATCH" in capsys.readouterr().out


def test_zoo_of_empty_folder_returns_1(tmp_path, capsys):
    assert main(["zoo", "--out", str(tmp_path)]) == 1
    assert f"No checkpoints in {tmp_path}" in capsys.readouterr().out


def test_arch_dataset_mismatch_exits(tmp_path):
    with pytest.raises(SystemExit) as excinfo:
        main(["train", "--dataset", "cifar10", "--arch", "mlp3", "--out", str(tmp_path)])
    assert "'mlp3' is built for 'mnist', not 'cifar10'" in str(excinfo.value.code)
    assert list(tmp_path.iterdir()) == []


def test_bad_ratio_returns_2_with_message(tmp_path, capsys):
    assert main(TRAIN + ["--ratio", "0.5", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("hashrobust: error:")
    assert "The 'ratio' parameter of build_model must be a number >= 1. Got 0.5 instead." in err
    assert list(tmp_path.iterdir()) == []


def test_bad_from_dense_path_returns_2(tmp_path, capsys):
    missing = tmp_path / "nope.pt"
    assert main(TRAIN + ["--ratio", "4", "--from-dense", str(missing), "--out", str(tmp_path)]) == 2
    assert f"No checkpoint {missing}" in capsys.readouterr().err


def test_the_real_loader_is_what_the_cli_uses():
    assert hashrobust.cli.load_dataset is load_dataset


def test_epochs_zero_is_rejected_not_replaced_by_the_default(capsys):
    assert main(["train", "--dataset", "mnist", "--arch", "mlp3", "--epochs", "0", "--out", "/nonexistent"]) == 2
    assert "'epochs' parameter of TrainRecipe must be an integer >= 1. Got 0" in capsys.readouterr().err


def test_from_dense_must_be_a_dense_checkpoint_of_the_same_arch(capsys):
    from hashrobust.zoo import CHECKPOINT_DIR

    hashed = str(CHECKPOINT_DIR / "mnist-mlp3-r8.pt")
    assert main(["train", "--dataset", "mnist", "--arch", "mlp3", "--ratio", "4", "--from-dense", hashed]) == 2
    assert "needs a dense (ratio 1) mnist mlp3 checkpoint" in capsys.readouterr().err
    dense = str(CHECKPOINT_DIR / "mnist-mlp3-r1.pt")
    assert main(["train", "--dataset", "mnist", "--arch", "lenet", "--ratio", "4", "--from-dense", dense]) == 2
    assert "is mnist mlp3 at ratio 1" in capsys.readouterr().err


def test_analyze_writes_the_report_for_the_default_arch(tmp_path, capsys):
    assert main(["analyze", "--dataset", "mnist", "--n", "20", "--out", str(tmp_path)]) == 0
    text = (tmp_path / "analysis.md").read_text()
    assert "## mlp3" in text and "## lenet" not in text  # the default: the arch shipped at every ratio 1..64
    assert "--dataset mnist --n 20" in text and (tmp_path / "heatmap_mlp3_whitebox.png").is_file()
    rows = (tmp_path / "analysis.csv").read_text().splitlines()
    assert len(rows) == 1 + 3 * 6 * (7 + 12)  # header + attacks x eps x (7 white-box + 6 + 6 transfer) cells


EXPERIMENTS = {"analyze": ("hashrobust.analysis", "run_analysis"), "reproduce": ("hashrobust.reproduction", "reproduce"),
               "adaptive": ("hashrobust.adaptive", "evaluate_adaptive")}


@pytest.mark.parametrize("command", sorted(EXPERIMENTS))
def test_device_cuda_without_cuda_is_a_clear_error(command, monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # the same on a machine with CUDA
    argv = [command, "--dataset", "mnist", "--n", "4", "--device", "cuda", "--out", str(tmp_path)]
    assert main(argv) == 2
    assert capsys.readouterr().err == (
        f"hashrobust: error: The '--device' parameter of hashrobust {command} asks for 'cuda', but this machine "
        "has no CUDA device (torch.cuda.is_available() is False); use 'cpu'.\n")
    assert list(tmp_path.iterdir()) == []


@pytest.fixture
def cpu_only(monkeypatch):
    """This machine has the CPU only, whatever it really has: the messages name the devices available."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)


@pytest.mark.parametrize("command", sorted(EXPERIMENTS))
def test_device_gpu_is_a_malformed_device(command, tmp_path, capsys, cpu_only):
    assert main([command, "--dataset", "mnist", "--n", "4", "--device", "gpu", "--out", str(tmp_path)]) == 2
    assert capsys.readouterr().err == (
        f"hashrobust: error: The '--device' parameter of hashrobust {command} must be 'cpu', 'cuda', "
        "'cuda:<index>' (e.g. 'cuda:1') or 'mps'. Got 'gpu' instead. Available on this machine: 'cpu'.\n")
    assert list(tmp_path.iterdir()) == []


def test_train_checks_the_device_before_reading_data_or_checkpoints(tmp_path, capsys, cpu_only, monkeypatch):
    def no_reading(*args, **kwargs):
        raise AssertionError("data or a checkpoint was read before the device was checked")

    monkeypatch.setattr("hashrobust.cli.load_dataset", no_reading)
    monkeypatch.setattr("hashrobust.cli.load_checkpoint", no_reading)
    dense = str(CHECKPOINT_DIR / "mnist-mlp3-r1.pt")
    argv = ["train", "--dataset", "mnist", "--arch", "mlp3", "--ratio", "8", "--from-dense", dense, "--device", "gpu",
            "--out", str(tmp_path)]
    assert main(argv) == 2
    assert capsys.readouterr().err == (
        "hashrobust: error: The '--device' parameter of hashrobust train must be 'cpu', 'cuda', "
        "'cuda:<index>' (e.g. 'cuda:1') or 'mps'. Got 'gpu' instead. Available on this machine: 'cpu'.\n")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("command", sorted(EXPERIMENTS))
@pytest.mark.parametrize("option, expected", [([], torch.device("cpu")), (["--device", "cpu"], torch.device("cpu")),
                                              (["--device", "cuda:0"], torch.device("cuda", 0))])
def test_device_reaches_the_experiment(command, option, expected, monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # checked, never used: the experiment is stubbed
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    seen = []

    def experiment(dataset, **kwargs):
        seen.append(kwargs["device"])
        raise ValueError("stubbed experiment")

    module, function = EXPERIMENTS[command]
    monkeypatch.setattr(f"{module}.{function}", experiment)
    assert main([command, "--dataset", "mnist", "--n", "4", *option]) == 2
    assert "stubbed experiment" in capsys.readouterr().err
    assert seen == [expected]


@pytest.mark.parametrize("command", sorted(EXPERIMENTS))
def test_device_is_in_the_help(command, capsys):
    with pytest.raises(SystemExit) as excinfo:
        main([command, "--help"])
    assert excinfo.value.code == 0
    help_text = " ".join(capsys.readouterr().out.split())
    assert "--device DEVICE torch device for the models and images, e.g. cpu, cuda, cuda:1, mps (default: cpu)" \
        in help_text


def test_adaptive_parts_save_each_model_and_a_rerun_reuses_them(monkeypatch, tmp_path, capsys):
    """--parts: each model's rows go to DIR/<arch>-r<ratio>.csv when it is done; a rerun reads them instead of
    attacking again, and refuses parts made with other settings. The study itself is stubbed (one row kind each)."""
    import hashrobust.adaptive as adaptive

    calls, written = [], []

    def study(dataset, models, device, n, n_cw, jsma_images):
        calls.append(models)
        (arch, ratio), = models
        rows = [{"dataset": dataset, "arch": arch, "ratio": ratio, "attack": attack, "n": size, "bounded": bounded,
                 "robust_examples": "0x5"} for attack, size, bounded in
                (("PGD-40, CE", n, True), ("C&W L2", n_cw, False), ("JSMA-F", 9 * jsma_images, False))]
        return rows

    monkeypatch.setattr(adaptive, "MODELS", {"mnist": [("mlp3", 1), ("mlp3", 8)]})
    monkeypatch.setattr(adaptive, "evaluate_adaptive", study)
    monkeypatch.setattr(adaptive, "write_adaptive", lambda rows, out, command: written.append(rows) or [])
    argv = ["adaptive", "--dataset", "mnist", "--n", "4", "--n-cw", "2", "--jsma-images", "1",
            "--parts", str(tmp_path / "parts"), "--out", str(tmp_path)]
    assert main(argv) == 0
    assert calls == [[("mlp3", 1)], [("mlp3", 8)]]
    assert sorted(p.name for p in (tmp_path / "parts").iterdir()) == ["mlp3-r1.csv", "mlp3-r8.csv"]
    (tmp_path / "parts" / "mlp3-r8.csv").unlink()  # as if the first run had stopped during the second model
    assert main(argv) == 0
    assert calls[2:] == [[("mlp3", 8)]]  # only the missing model is attacked again
    assert written[1] == written[0]  # the rows read back are the rows written
    assert "read " in capsys.readouterr().out
    with pytest.raises(SystemExit, match="was made with .*'n': 4.*this run asks for .*'n': 5"):
        main([*argv[:4], "5", *argv[5:]])
