"""Tests for hashrobust.train: seeding, the loop, augmentation, evaluate/predict, recipe validation."""
from __future__ import annotations

import math
import random

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from hashrobust.data import ImageDataset
from hashrobust.models import build_model
from hashrobust.train import TrainRecipe, _augment, evaluate, predict, set_seed, train


def _trained_mlp3(train_set, recipe):
    torch.manual_seed(0)  # the same initial weights every time; the recipe's seed drives the rest
    model = build_model("mlp3")
    history = train(model, train_set, recipe, device="cpu")
    return model, history


def _near_ties(logits: torch.Tensor, length: int) -> torch.Tensor:
    """(N,) True where the top two logits are within float32 rounding of each other, so the argmax may differ.

    Another batch size re-blocks the float32 matmul sums (the longest `length` terms), moving each logit by
    rounding errors that grow like sqrt(length): eps_f32 * sqrt(length) * the row's largest |logit|.
    """
    top2 = logits.topk(2, dim=1).values
    return top2[:, 0] - top2[:, 1] <= torch.finfo(torch.float32).eps * math.sqrt(length) * logits.abs().amax(1)


def test_set_seed_seeds_python_numpy_and_torch():
    set_seed(7)
    first = (random.random(), np.random.rand(), torch.rand(3))
    set_seed(7)
    second = (random.random(), np.random.rand(), torch.rand(3))
    assert first[:2] == second[:2] and torch.equal(first[2], second[2])
    with pytest.raises(ValueError, match="'seed' parameter of set_seed"):
        set_seed(-1)


def test_training_is_deterministic_for_a_seed(mnist_train):
    data = mnist_train.subset(1024)
    a, history_a = _trained_mlp3(data, TrainRecipe(epochs=1, seed=1))
    b, history_b = _trained_mlp3(data, TrainRecipe(epochs=1, seed=1))
    c, _ = _trained_mlp3(data, TrainRecipe(epochs=1, seed=2))
    assert history_a == history_b  # exact: the same float ops on the same batches in one process
    for (name, pa), pb, pc in zip(a.state_dict().items(), b.state_dict().values(), c.state_dict().values()):
        assert torch.equal(pa, pb), name
    assert not torch.equal(a[2].weight, c[2].weight)  # another seed shuffles differently
    assert not a.training


def test_training_reduces_loss_and_fits(mnist_train):
    model, history = _trained_mlp3(mnist_train.subset(2048), TrainRecipe(epochs=2, seed=0))
    assert [row["epoch"] for row in history] == [1, 2]
    assert history[1]["loss"] < history[0]["loss"]
    assert history[1]["train_accuracy"] > 0.8


@pytest.fixture
def colour_images():
    return torch.rand(6, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def test_augment_keeps_shape_dtype_and_range(colour_images):
    out = _augment(colour_images, torch.Generator().manual_seed(0))
    assert out.shape == colour_images.shape and out.dtype == colour_images.dtype
    assert out.min() >= 0 and out.max() <= 1


def test_augment_is_deterministic_for_a_generator_seed(colour_images):
    a = _augment(colour_images, torch.Generator().manual_seed(3))
    b = _augment(colour_images, torch.Generator().manual_seed(3))
    c = _augment(colour_images, torch.Generator().manual_seed(4))
    assert torch.equal(a, b) and not torch.equal(a, c)


def _shifts_and_flips(image):
    """Every 4-pixel reflect-padded shift of `image` (C, H, W), plain and flipped horizontally."""
    _, h, w = image.shape
    padded = F.pad(image[None], (4, 4, 4, 4), mode="reflect")[0]
    crops = [padded[:, dy:dy + h, dx:dx + w] for dy in range(9) for dx in range(9)]
    return crops + [crop.flip(2) for crop in crops]


def test_augment_shifts_by_at_most_4_pixels_and_flips(colour_images):
    out = _augment(colour_images, torch.Generator().manual_seed(0))
    changed = 0
    for original, augmented in zip(colour_images, out):
        assert any(torch.equal(augmented, candidate) for candidate in _shifts_and_flips(original))
        changed += not torch.equal(augmented, original)
    assert changed >= 4  # (1 - 1/162) of them move or flip: this is not the identity


@pytest.fixture
def mlp():
    torch.manual_seed(0)
    return build_model("mlp3")


def test_evaluate_is_the_argmax_accuracy(mlp, mnist_test):
    data = mnist_test.subset(50)
    accuracy = evaluate(mlp, data, batch_size=7)
    assert isinstance(accuracy, float) and 0.0 <= accuracy <= 1.0
    with torch.no_grad():
        logits = mlp(data.images)  # one batch of 50, where evaluate used batches of 7
    expected = (logits.argmax(1) == data.labels).float().mean().item()
    # Only near-tied predictions may differ between the batchings (none here: the smallest gap is 8e-3).
    assert accuracy == pytest.approx(expected, abs=_near_ties(logits, 1000).sum().item() / len(data) + 1e-7)
    own_labels = ImageDataset(data.images, predict(mlp, data.images), "mnist", "test", "official")
    assert evaluate(mlp, own_labels) == 1.0


def test_predict_uses_eval_mode_and_restores_training_mode():
    torch.manual_seed(0)
    model = build_model("cifar_cnn")  # BatchNorm and Dropout: train mode would change the outputs
    images = torch.rand(10, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    model.eval()
    with torch.no_grad():
        logits = model(images)  # one batch of 10, where predict uses batches of 3
    model.train()
    labels = predict(model, images, batch_size=3)
    assert labels.shape == (10,) and labels.dtype == torch.int64
    # Only near-tied logits may flip between the batchings (none here: the smallest gap is 0.05, the float32
    # bound below 1e-6); train mode's batch statistics and dropout would change the logits far more.
    assert ((labels == logits.argmax(1)) | _near_ties(logits, 64 * 8 * 8)).all()
    assert model.training and all(m.training for m in model.modules())
    model.eval()
    predict(model, images)
    assert not model.training


@pytest.mark.parametrize("kwargs, name", [({"epochs": 0}, "epochs"), ({"lr": -1}, "lr"),
                                          ({"batch_size": 0}, "batch_size"), ({"epochs": 1.5}, "epochs"),
                                          ({"seed": -1}, "seed")])
def test_bad_recipe_names_the_parameter(kwargs, name):
    with pytest.raises(ValueError, match=f"The '{name}' parameter of TrainRecipe must be"):
        TrainRecipe(**kwargs)


def _mixed_mode_bn_model() -> torch.nn.Module:
    """cifar_cnn in train mode with its first BatchNorm in eval mode, and BN statistics off their defaults."""
    torch.manual_seed(0)
    model = build_model("cifar_cnn").train()
    with torch.no_grad():
        model(torch.rand(4, 3, 32, 32))  # num_batches_tracked 1, running stats moved
    model[2].eval()  # a frozen BatchNorm inside a training model
    return model


def _modes_and_bn_state(model: torch.nn.Module) -> tuple[list[bool], dict]:
    bn = {name: buffer.clone() for name, buffer in model.named_buffers()
          if name.rsplit(".", 1)[-1] in ("running_mean", "running_var", "num_batches_tracked")}
    return [m.training for m in model.modules()], bn


@pytest.mark.parametrize("call", ["predict", "evaluate"])
def test_predict_and_evaluate_restore_every_modules_own_mode_and_bn_statistics(call):
    model = _mixed_mode_bn_model()
    modes, bn = _modes_and_bn_state(model)
    assert modes.count(False) == 1 and len(bn) == 12
    images = torch.rand(6, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    if call == "predict":
        predict(model, images, batch_size=4)
    else:
        evaluate(model, ImageDataset(images, torch.zeros(6, dtype=torch.int64), "cifar10", "test", "official"), 4)
    modes_after, bn_after = _modes_and_bn_state(model)
    assert modes_after == modes  # the eval-mode BatchNorm stays in eval mode
    assert bn_after.keys() == bn.keys() and all(torch.equal(bn_after[k], v) for k, v in bn.items())
