"""Tests for hashrobust.adversarial_training and its use by train.train and `hashrobust train --adversarial`:
the recipe's checks and defaults, the inner max, the catastrophic-overfitting guard, and that adversarial
training (fast FGSM and PGD, dense and hashed) buys robust accuracy that standard training does not."""
from __future__ import annotations

import pytest
import torch

import hashrobust.cli
from hashrobust.adversarial_training import COLLAPSE, AdversarialRecipe, CollapseGuard
from hashrobust.attacks import PGD
from hashrobust.cli import main
from hashrobust.models import build_model
from hashrobust.train import TrainRecipe, predict, train
from hashrobust.zoo import checkpoint_name, load_pretrained, read_manifest

pytestmark = pytest.mark.usefixtures("one_thread")
EPS = 0.1  # small enough that 4 epochs on 5000 MNIST images show the effect in seconds


@pytest.mark.parametrize("kwargs, message", [
    ({"method": "free", "eps": 0.3}, "Unknown method 'free'; choose one of: fgsm, pgd"),
    ({"method": "fgsm", "eps": 0}, "must be > 0"),
    ({"method": "fgsm", "eps": 1.5}, "'eps'"),
    ({"method": "pgd", "eps": 0.3, "steps": 0}, "'steps'"),
    ({"method": "pgd", "eps": 0.3, "alpha": -0.1}, "'alpha'"),
    ({"method": "pgd", "eps": 0.3, "alpha": 0}, "'alpha' of AdversarialRecipe must be > 0"),
    ({"method": "pgd", "eps": 0.3, "check_size": 0}, "'check_size'"),
])
def test_recipe_rejects_what_it_cannot_run_and_says_what_is_allowed(kwargs, message):
    with pytest.raises(ValueError, match=message):
        AdversarialRecipe(**kwargs)


def test_recipe_defaults_are_the_papers_step_sizes():
    assert (AdversarialRecipe("fgsm", 0.3).step_size, AdversarialRecipe("fgsm", 0.3).inner_steps) == (0.375, 1)
    assert AdversarialRecipe("fgsm", 8 / 255).step_size == pytest.approx(1.25 * 8 / 255)  # Wong et al.
    pgd = AdversarialRecipe("pgd", 0.3, steps=7)
    assert (pgd.step_size, pgd.inner_steps) == (pytest.approx(2.5 * 0.3 / 7), 7)  # MadryLab robustness rule of thumb
    assert AdversarialRecipe("pgd", 0.3, alpha=0.01).step_size == 0.01
    with pytest.raises(ValueError, match="AdversarialRecipe or None"):
        TrainRecipe(adversarial={"method": "fgsm", "eps": 0.3})


@pytest.mark.parametrize("method", ["fgsm", "pgd"])
def test_perturb_stays_in_the_ball_and_the_image_box_and_leaves_the_model_as_it_was(mnist_test, method):
    model, images, labels = build_model("mlp3", ratio=8).train(), mnist_test.images[:64], mnist_test.labels[:64]
    recipe = AdversarialRecipe(method, 0.3, steps=3)
    adv = recipe.perturb(model, images, labels, step=5)
    assert (adv - images).abs().max() <= 0.3 + 1e-6 and adv.min() >= 0 and adv.max() <= 1
    assert (adv - images).abs().max() > 0.25  # it moved, by about eps
    assert torch.equal(adv, recipe.perturb(model, images, labels, step=5))  # the step number seeds it
    assert not torch.equal(adv, recipe.perturb(model, images, labels, step=6))  # a fresh start every step
    assert model.training and all(p.requires_grad and p.grad is None for p in model.parameters())
    ref = PGD(model, eps=0.3, alpha=recipe.step_size, steps=recipe.inner_steps, seed=5)(images, labels)
    assert torch.equal(adv, ref)


def test_collapse_guard_keeps_the_best_epoch_and_restores_it_on_a_fall_of_more_than_collapse():
    model = torch.nn.Linear(3, 2)
    guard = CollapseGuard(model)
    weights = {}
    for epoch, robust in enumerate([0.5, 0.6, 0.6 - COLLAPSE + 0.01], start=1):  # a fall of 0.19 is tolerated
        with torch.no_grad():
            model.weight.fill_(epoch)
        weights[epoch] = model.weight.clone()
        assert not guard.collapsed(robust, epoch)
    assert guard.best_epoch == 2
    with torch.no_grad():
        model.weight.fill_(4)
    assert guard.collapsed(0.6 - COLLAPSE - 0.01, 4)
    assert torch.equal(model.weight, weights[2])


def test_train_stops_on_catastrophic_overfitting_with_the_best_epochs_weights(mnist_train, monkeypatch):
    """Collapse forced through the check (a real one needs long runs): the row says so, the weights are epoch 2's."""
    checks = iter([(0.9, 0.40), (0.9, 0.50), (0.95, 0.05), (0.9, 0.9)])
    snapshots = []

    def fake_check(self, model, images, labels):
        snapshots.append({k: v.clone() for k, v in model.state_dict().items() if torch.is_tensor(v)})
        return next(checks)

    monkeypatch.setattr(AdversarialRecipe, "robust_accuracy", fake_check)
    torch.manual_seed(0)
    model = build_model("mlp3")
    recipe = TrainRecipe(epochs=4, batch_size=256, adversarial=AdversarialRecipe("fgsm", EPS, check_size=64))
    history = train(model, mnist_train.subset(512), recipe, device="cpu", progress=False)
    assert [row["epoch"] for row in history] == [1, 2, 3]
    assert [row["check_robust_accuracy"] for row in history] == [0.40, 0.50, 0.05]
    assert "catastrophic overfitting: back to epoch 2" in history[-1]["stopped"]
    assert all(torch.equal(v, snapshots[1][k]) for k, v in model.state_dict().items() if torch.is_tensor(v))


@pytest.fixture(scope="module")
def trained(mnist_train, mnist_test):
    """mlp3 dense and ratio 8, standard and adversarially trained (FGSM-RS, PGD-5), 4 epochs on 5000 images;
    robust accuracy under PGD-20 (alpha eps/4) on 500 test images."""
    train_set, test = mnist_train.subset(5000), mnist_test.subset(500)
    results = {}
    for method in (None, "fgsm", "pgd"):
        for ratio in (1, 8):
            torch.manual_seed(0)
            model = build_model("mlp3", ratio=ratio)
            adversarial = AdversarialRecipe(method, EPS, steps=5) if method else None
            history = train(model, train_set, TrainRecipe(epochs=4, adversarial=adversarial), device="cpu",
                            progress=False)
            adv = PGD(model, eps=EPS, alpha=EPS / 4, steps=20)(test.images, test.labels)
            clean = predict(model, test.images) == test.labels
            robust = clean & (predict(model, adv) == test.labels)
            results[method, ratio] = (clean.float().mean().item(), robust.float().mean().item(), history, model)
    return results


@pytest.mark.parametrize("ratio", [1, 8])
@pytest.mark.parametrize("method", ["fgsm", "pgd"])
def test_adversarial_training_buys_robust_accuracy_dense_and_hashed(trained, method, ratio):
    clean, robust, history, _ = trained[method, ratio]
    standard_clean, standard_robust, _, _ = trained[None, ratio]
    # measured on this subset: standard 0.18 / 0.07 (ratio 1 / 8), adversarial 0.58-0.65, clean within 2 points
    assert standard_robust < 0.3 and robust > standard_robust + 0.3
    assert clean > standard_clean - 0.05
    assert all({"check_clean_accuracy", "check_robust_accuracy"} <= row.keys() for row in history)
    assert not any("stopped" in row for row in history)
    assert history[-1]["check_robust_accuracy"] > history[0]["check_robust_accuracy"]


def test_standard_training_rows_have_no_check(trained):
    assert all("check_robust_accuracy" not in row for row in trained[None, 1][2])


def test_adversarial_training_is_deterministic_for_a_seed(mnist_train):
    weights = []
    for _ in range(2):
        torch.manual_seed(0)
        model = build_model("mlp3", ratio=8)
        train(model, mnist_train.subset(512), TrainRecipe(epochs=1, batch_size=128,
              adversarial=AdversarialRecipe("fgsm", 0.3, check_size=64)), device="cpu", progress=False)
        weights.append(torch.cat([p.detach().flatten() for p in model.parameters()]))
    assert torch.equal(weights[0], weights[1])


def test_checkpoint_names_of_adversarially_trained_models():
    assert checkpoint_name("mnist", "lenet", 8) == "mnist-lenet-r8.pt"
    assert checkpoint_name("mnist", "lenet", 8, "fgsm-at") == "mnist-lenet-r8-fgsm-at.pt"
    with pytest.raises(ValueError, match="Unknown training 'trades'; choose one of: fgsm-at, pgd-at, standard"):
        checkpoint_name("mnist", "lenet", 8, "trades")


def test_cli_adversarial_training_writes_its_own_checkpoint_and_loads_back(monkeypatch, mnist_train, mnist_test,
                                                                          tmp_path, capsys):
    splits = {"train": mnist_train.subset(512), "test": mnist_test.subset(512)}
    monkeypatch.setattr(hashrobust.cli, "load_dataset", lambda name, split="test", root=None: splits[split])
    argv = ["train", "--dataset", "mnist", "--arch", "mlp3", "--ratio", "8", "--epochs", "2", "--out", str(tmp_path)]
    assert main(argv + ["--adversarial", "pgd", "--eps", "0.3", "--pgd-steps", "3"]) == 0
    entry = read_manifest(tmp_path)["mnist-mlp3-r8-pgd-at.pt"]
    assert entry["training"] == "pgd-at" and "adversarially trained (PGD inner max, eps 0.3)" in entry["method"]
    assert entry["recipe"]["adversarial"] == {"method": "pgd", "eps": 0.3, "alpha": None, "steps": 3,
                                              "check_size": 512}
    assert len(entry["check_robust_accuracy"]) == 2 and all(0 <= r <= 1 for r in entry["check_robust_accuracy"])
    model = load_pretrained("mnist", "mlp3", 8, directory=tmp_path, training="pgd-at")
    assert model[2].ratio == 8
    with pytest.raises(ValueError, match="mnist-mlp3-r8-pgd-at.pt"):
        load_pretrained("mnist", "mlp3", 8, directory=tmp_path)  # the standard one is not there
    with pytest.raises(SystemExit, match="needs --eps"):
        main(argv + ["--adversarial", "fgsm"])
    with pytest.raises(SystemExit, match="give --adversarial"):
        main(argv + ["--eps", "0.3"])
