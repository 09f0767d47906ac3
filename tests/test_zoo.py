"""Tests for hashrobust.zoo: checkpoint round trip and verification (in tmp_path), the manifest's pin
(on tmp copies of the shipped zoo), scripts/pin_manifest.py (on a tmp copy of zoo.py), and the shipped zoo."""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

import hashrobust.zoo
from hashrobust.data import load_dataset
from hashrobust.models import build_model
from hashrobust.train import evaluate
from hashrobust.zoo import CHECKPOINT_DIR, MANIFEST, load_checkpoint, load_pretrained, read_manifest, save_checkpoint

ENTRY = {"command": "test", "seed": 0}


@pytest.fixture
def hashed_checkpoint(tmp_path):
    """A seeded mlp3 at ratio 64, saved to tmp_path: (model, path)."""
    torch.manual_seed(0)
    model = build_model("mlp3", ratio=64).eval()
    return model, save_checkpoint(model, "mnist", "mlp3", 64, "fc", ENTRY, tmp_path)


def test_save_load_round_trip_is_exact(hashed_checkpoint, tiny_images):
    model, path = hashed_checkpoint
    assert path.name == "mnist-mlp3-r64.pt"
    loaded = load_checkpoint(path)
    assert not loaded.training and not any(m.training for m in loaded.modules())
    images = tiny_images[0][:8]
    with torch.no_grad():  # exact: the same weights (bit for bit) through the same float ops on the same batch
        assert torch.equal(loaded(images), model(images))
    assert loaded.state_dict().keys() == model.state_dict().keys()
    assert loaded[2].seed == model[2].seed and loaded[4].seed == model[4].seed != model[2].seed
    assert torch.equal(loaded[2].bucket, model[2].bucket) and torch.equal(loaded[2].sign, model[2].sign)


def test_checkpoint_stores_real_weights_only_and_loads_weights_only(hashed_checkpoint):
    model, path = hashed_checkpoint
    stored = torch.load(path, weights_only=True)
    assert {k: stored[k] for k in ("format", "dataset", "arch", "ratio", "hashed")} == \
        {"format": 1, "dataset": "mnist", "arch": "mlp3", "ratio": 64.0, "hashed": "fc"}
    keys = list(stored["state_dict"])
    assert not [k for k in keys if "bucket" in k or "sign" in k]
    assert stored["state_dict"]["2.weight"].numel() == 12250  # ceil(784000 / 64), not 784000 virtual weights
    assert stored["state_dict"]["2._extra_state"] == {"hash_seed": 0, "ratio": 64.0}


def test_manifest_entry_has_sha256_and_size(hashed_checkpoint):
    _, path = hashed_checkpoint
    entry = read_manifest(path.parent)[path.name]
    assert re.fullmatch(r"[0-9a-f]{64}", entry["sha256"])
    assert entry["bytes"] == path.stat().st_size
    assert (entry["command"], entry["seed"], entry["arch"], entry["ratio"]) == ("test", 0, "mlp3", 64.0)


def test_saving_another_checkpoint_keeps_the_first_entry(hashed_checkpoint):
    _, path = hashed_checkpoint
    save_checkpoint(build_model("mlp3", ratio=8), "mnist", "mlp3", 8, "fc", ENTRY, path.parent)
    assert list(read_manifest(path.parent)) == ["mnist-mlp3-r64.pt", "mnist-mlp3-r8.pt"]
    load_checkpoint(path)  # still verifies


def _flip_middle_byte(path):
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def _truncate(path):
    path.write_bytes(path.read_bytes()[:-100])


@pytest.mark.parametrize("damage", [_flip_middle_byte, _truncate], ids=["tampered", "truncated"])
def test_damaged_checkpoint_is_refused(hashed_checkpoint, damage):
    _, path = hashed_checkpoint
    expected = read_manifest(path.parent)[path.name]["sha256"]
    damage(path)
    with pytest.raises(ValueError, match=re.escape(f"{path} does not match MANIFEST.json: expected sha256 {expected}")):
        load_checkpoint(path)


def test_checkpoint_without_manifest_entry_is_refused(tmp_path, hashed_checkpoint):
    _, path = hashed_checkpoint
    stray = tmp_path / "mnist-mlp3-r2.pt"
    stray.write_bytes(path.read_bytes())
    with pytest.raises(FileNotFoundError, match="has no entry in"):
        load_checkpoint(stray)
    with pytest.raises(FileNotFoundError, match="No checkpoint"):
        load_checkpoint(tmp_path / "missing.pt")


def test_load_pretrained_unknown_checkpoint_lists_known_ones(hashed_checkpoint):
    _, path = hashed_checkpoint
    pattern = re.escape("Unknown checkpoint 'mnist-lenet-r3.pt'; choose one of: mnist-mlp3-r64.pt.")
    with pytest.raises(ValueError, match=pattern):
        load_pretrained("mnist", "lenet", 3, directory=path.parent)
    assert load_pretrained("mnist", "mlp3", 64, directory=path.parent)[2].ratio == 64


def test_hashed_checkpoint_is_about_ratio_times_smaller(tmp_path):
    dense = save_checkpoint(build_model("mlp3"), "mnist", "mlp3", 1, "fc", ENTRY, tmp_path)
    hashed = save_checkpoint(build_model("mlp3", ratio=64), "mnist", "mlp3", 64, "fc", ENTRY, tmp_path)
    assert dense.stat().st_size / 80 < hashed.stat().st_size < dense.stat().st_size / 40


# --- one read per load: the verified bytes are the loaded bytes -----------------------------------------

def test_torch_load_gets_the_verified_bytes_not_the_path(hashed_checkpoint, monkeypatch):
    _, path = hashed_checkpoint
    expected = read_manifest(path.parent)[path.name]["sha256"]
    real_load, loaded = torch.load, []

    def spy(f, *args, **kwargs):
        assert not isinstance(f, (str, os.PathLike)), f"torch.load got {f!r}: it would read the file a second time"
        loaded.append(hashlib.sha256(f.read()).hexdigest())
        f.seek(0)
        return real_load(f, *args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    load_checkpoint(path)
    assert loaded == [expected]


def test_a_file_swapped_after_the_check_is_not_loaded(hashed_checkpoint, tmp_path, monkeypatch):
    model, path = hashed_checkpoint
    torch.manual_seed(1)
    other = save_checkpoint(build_model("mlp3", ratio=64), "mnist", "mlp3", 64, "fc", ENTRY, tmp_path / "other")
    real_load = torch.load

    def swap_then_load(f, *args, **kwargs):  # the window between the sha256 check and the load
        path.write_bytes(other.read_bytes())
        return real_load(f, *args, **kwargs)

    monkeypatch.setattr(torch, "load", swap_then_load)
    loaded = load_checkpoint(path)
    assert torch.equal(loaded[2].weight, model[2].weight)  # the verified weights, not the swapped-in ones


# --- the pinned manifest (MANIFEST_SHA256), on tmp copies of the shipped zoo -----------------------------

SHIPPED_SHA256 = hashlib.sha256((CHECKPOINT_DIR / MANIFEST).read_bytes()).hexdigest()
SMALLEST = "mnist-mlp3-r64.pt"
PIN_SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "pin_manifest.py"


@pytest.fixture
def pinned_zoo(tmp_path, monkeypatch):
    """tmp_path/checkpoints: the shipped manifest and its smallest checkpoint, as CHECKPOINT_DIR (pin kept)."""
    directory = tmp_path / "checkpoints"
    directory.mkdir()
    for name in (MANIFEST, SMALLEST):
        shutil.copyfile(CHECKPOINT_DIR / name, directory / name)
    monkeypatch.setattr(hashrobust.zoo, "CHECKPOINT_DIR", directory)
    return directory


def _forge(directory):
    """Replace SMALLEST by another model and rewrite its manifest entry to match (sha256 and bytes)."""
    torch.manual_seed(1)
    forged = save_checkpoint(build_model("mlp3", ratio=64), "mnist", "mlp3", 64, "fc", ENTRY,
                             directory.parent / "forged").read_bytes()
    (directory / SMALLEST).write_bytes(forged)
    manifest = json.loads((directory / MANIFEST).read_bytes())
    manifest[SMALLEST].update(sha256=hashlib.sha256(forged).hexdigest(), bytes=len(forged))
    (directory / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")


def _symlink(directory):
    link = directory.parent / "link"
    link.symlink_to(directory, target_is_directory=True)
    return link


@pytest.mark.parametrize("spell", [lambda d: d, lambda d: d / ".." / d.name, _symlink],
                         ids=["path", "dotdot", "symlink"])
def test_checkpoint_and_manifest_rewritten_together_are_refused_in_the_shipped_zoo(pinned_zoo, spell):
    _forge(pinned_zoo)
    found = hashlib.sha256((pinned_zoo / MANIFEST).read_bytes()).hexdigest()
    folder = spell(pinned_zoo)
    pattern = re.escape(f"{folder / MANIFEST} does not match the sha256 pinned in hashrobust/zoo.py "
                        f"(MANIFEST_SHA256): expected sha256 {SHIPPED_SHA256}, got {found}. ") + \
        r".*restore it with `git checkout data/checkpoints`.*re-pin it with `python scripts/pin_manifest.py`"
    with pytest.raises(ValueError, match=pattern):
        load_checkpoint(folder / SMALLEST)


def test_an_untouched_copy_of_the_shipped_zoo_loads(pinned_zoo):
    assert hashrobust.zoo.MANIFEST_SHA256 == hashlib.sha256((pinned_zoo / MANIFEST).read_bytes()).hexdigest()
    model = load_pretrained("mnist", "mlp3", 64)  # from the monkeypatched CHECKPOINT_DIR
    assert model[2].ratio == 64 and not model.training


def test_a_user_folder_with_its_own_manifest_is_not_pinned(pinned_zoo, tmp_path):
    _forge(pinned_zoo)
    mine = tmp_path / "mine"
    shutil.copytree(pinned_zoo, mine)
    assert load_pretrained("mnist", "mlp3", 64, directory=mine)[2].ratio == 64  # its own manifest: no pin
    with pytest.raises(ValueError, match=re.escape("does not match the sha256 pinned in hashrobust/zoo.py")):
        load_pretrained("mnist", "mlp3", 64)  # the same files as the shipped zoo: refused


def test_saving_into_the_shipped_zoo_warns_that_the_pin_is_stale(pinned_zoo, tmp_path):
    with pytest.warns(UserWarning, match=re.escape("re-pin with `python scripts/pin_manifest.py`")):
        save_checkpoint(build_model("mlp3", ratio=64), "mnist", "mlp3", 64, "fc", ENTRY)
    with pytest.raises(ValueError, match="does not match the sha256 pinned"):
        load_pretrained("mnist", "mlp3", 64)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a user folder is not pinned: nothing to warn about
        save_checkpoint(build_model("mlp3", ratio=64), "mnist", "mlp3", 64, "fc", ENTRY, tmp_path / "mine")


def test_the_pin_is_the_sha256_of_the_shipped_manifest():
    assert hashrobust.zoo.MANIFEST_SHA256 == SHIPPED_SHA256, \
        "data/checkpoints/MANIFEST.json changed without a re-pin: run `python scripts/pin_manifest.py`"


def _pin(*args):
    return subprocess.run([sys.executable, str(PIN_SCRIPT), *map(str, args)], capture_output=True, text=True)


def test_pin_script_rewrites_only_the_pin_line(tmp_path):
    original = Path(hashrobust.zoo.__file__).read_text()
    zoo_py, manifest = tmp_path / "zoo.py", tmp_path / MANIFEST
    zoo_py.write_text(original)
    manifest.write_text('{"rebuilt": true}\n')
    old, new = hashrobust.zoo.MANIFEST_SHA256, hashlib.sha256(manifest.read_bytes()).hexdigest()
    result = _pin("--manifest", manifest, "--zoo", zoo_py)
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"{zoo_py}: MANIFEST_SHA256 {old} -> {new}\n"
    before, after = original.splitlines(keepends=True), zoo_py.read_text().splitlines(keepends=True)
    changed = [(a, b) for a, b in zip(before, after) if a != b]
    assert len(before) == len(after) and changed == [(f'MANIFEST_SHA256 = "{old}"\n', f'MANIFEST_SHA256 = "{new}"\n')]
    assert _pin("--manifest", manifest, "--zoo", zoo_py).stdout.endswith(f"{new} -> {new} (unchanged)\n")


def test_pin_script_without_the_pin_line_fails_and_changes_nothing(tmp_path):
    zoo_py = tmp_path / "zoo.py"
    zoo_py.write_text('"""No pin here."""\nPIN = "abc"\n')
    result = _pin("--manifest", CHECKPOINT_DIR / MANIFEST, "--zoo", zoo_py)
    assert result.returncode == 1
    assert f'{zoo_py} needs exactly one line `MANIFEST_SHA256 = "<64 lowercase hex digits>"`, found 0' in result.stderr
    assert zoo_py.read_text() == '"""No pin here."""\nPIN = "abc"\n'


# --- the shipped zoo (data/checkpoints/, written by `make zoo`) ----------------------------------------

REQUIRED = {("mnist", "mlp3", r) for r in (1, 2, 4, 8, 16, 32, 64)} | \
    {("mnist", "lenet", r) for r in (1, 8, 64)} | {("cifar10", "cifar_cnn", r) for r in (1, 8, 64)}
# Full-test-split accuracy floors of the issue; ratios without one are checked only against the manifest.
FLOORS = {("mnist", "mlp3", 1): 0.980, ("mnist", "mlp3", 8): 0.975, ("mnist", "mlp3", 64): 0.955,
          ("mnist", "lenet", 1): 0.990, ("cifar10", "cifar_cnn", 1): 0.75, ("cifar10", "cifar_cnn", 8): 0.73}
# Adversarially trained models (notebook 07): lenet meets the course's 98.0% target; mlp3 has little capacity for
# eps 0.3 (78.6% dense); CIFAR-10 at 8/255 trades about 20 points of clean accuracy
AT_FLOORS = {("mnist", "lenet", 1, "pgd-at"): 0.980, ("mnist", "lenet", 8, "pgd-at"): 0.975,
             ("mnist", "lenet", 64, "pgd-at"): 0.975, ("mnist", "lenet", 1, "fgsm-at"): 0.980,
             ("mnist", "mlp3", 1, "pgd-at"): 0.75, ("mnist", "mlp3", 8, "pgd-at"): 0.58,
             ("mnist", "mlp3", 64, "pgd-at"): 0.55, ("cifar10", "cifar_cnn", 1, "fgsm-at"): 0.60,
             ("cifar10", "cifar_cnn", 8, "fgsm-at"): 0.55}
ENTRY_KEYS = {"command", "seed", "epochs", "variant", "clean_test_accuracy", "sha256", "bytes", "method"}
SHIPPED = read_manifest()


def test_shipped_manifest_lists_the_required_zoo():
    shipped = {(e["dataset"], e["arch"], e["ratio"]) for e in SHIPPED.values()}
    assert shipped == REQUIRED, f"missing {sorted(REQUIRED - shipped)}, unexpected {sorted(shipped - REQUIRED)}"
    for name, entry in SHIPPED.items():
        assert ENTRY_KEYS <= entry.keys(), f"{name} lacks {ENTRY_KEYS - entry.keys()}"
        assert (CHECKPOINT_DIR / name).is_file(), name
        expected_variants = {"jpeg-q75 stand-in", "official"} if entry["dataset"] == "cifar10" else {"official"}
        assert entry["variant"] in expected_variants, name


def test_shipped_checkpoints_are_small():
    total = sum(p.stat().st_size for p in CHECKPOINT_DIR.glob("*.pt"))
    assert 0 < total < 40e6


@pytest.fixture(scope="module")
def loaded_splits():
    """dataset name -> its test split, loaded once for all shipped checkpoints."""
    return {}


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_shipped_checkpoint_reproduces_its_accuracy(name, loaded_splits):
    entry = SHIPPED[name]
    key = (entry["dataset"], entry["arch"], entry["ratio"])
    if entry["dataset"] not in loaded_splits:
        loaded_splits[entry["dataset"]] = load_dataset(entry["dataset"], "test")
    test = loaded_splits[entry["dataset"]]
    assert test.variant == entry["variant"], f"{name} was measured on {entry['variant']}, not {test.variant}"
    training = entry.get("training", "standard")
    model = load_pretrained(*key, training=training)  # verifies size and sha256
    measured = evaluate(model, test)  # the full split: the manifest's number (4 digits), from when the zoo was built
    # 0.001 = 10 of 10000 predictions, for a build on another CPU: its float32 kernels move a logit by at most
    # ~eps_f32 * sqrt(4096) * 25 ~ 2e-4, so only predictions whose top two logits are that close can flip. Measured:
    # none in mlp3 r1/r8/r64 and lenet r1 (smallest gap 4e-3), one in cifar_cnn r8 (gap 4e-4).
    assert abs(measured - entry["clean_test_accuracy"]) <= 0.001, (name, measured)
    assert entry["test_n"] == len(test) == 10000, f"{name}: the floors are for the full test split"
    # the floors are the standard models'; adversarial training trades clean accuracy for robustness
    assert entry["clean_test_accuracy"] >= (FLOORS.get(key, 0.0) if training == "standard" else AT_FLOORS[(*key, training)]), name
