"""Training and clean-accuracy evaluation, seeded and on any device.

Paper: reconstructed protocol, docs/protocol.md §7 (dense training, then hash compression and "hash
retraining"); HashedNets Sec. 6. One loop serves both: a hashed model trains
exactly like a dense one, since autograd reaches its real weights through the
bucket-sum backward of layers.py.

SGD with Nesterov momentum under a one-cycle learning-rate schedule (Smith &
Topin 2017) reaches the zoo's accuracy floors in a few CPU epochs.
"""
from __future__ import annotations

import random
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from ._validation import check_device, check_number, evaluating
from .adversarial_training import AdversarialRecipe, CollapseGuard
from .data import ImageDataset

__all__ = ["TrainRecipe", "set_seed", "train", "evaluate", "predict", "default_device", "RECIPES"]


@dataclass
class TrainRecipe:
    """What a training run needs besides the model and data; stored in the zoo's manifest."""

    epochs: int = 10
    lr: float = 0.05
    batch_size: int = 128
    weight_decay: float = 0.0
    augment: bool = False  # random 4-pixel shifts (reflect padding) and horizontal flips: CIFAR-10 only
    seed: int = 0
    adversarial: AdversarialRecipe | None = None  # None: standard training

    def __post_init__(self) -> None:
        check_number(self.epochs, "epochs", "TrainRecipe", low=1, integer=True)
        check_number(self.lr, "lr", "TrainRecipe", low=0)
        check_number(self.batch_size, "batch_size", "TrainRecipe", low=1, integer=True)
        check_number(self.weight_decay, "weight_decay", "TrainRecipe", low=0)
        check_number(self.seed, "seed", "TrainRecipe", low=0, integer=True)
        if self.adversarial is not None and not isinstance(self.adversarial, AdversarialRecipe):
            raise ValueError("The 'adversarial' of TrainRecipe must be an AdversarialRecipe or None. "
                             f"Got {type(self.adversarial).__name__} instead.")

    def as_dict(self) -> dict:
        return asdict(self)


# Defaults per architecture; fine-tuning a compressed model uses a fifth of the learning rate.
RECIPES = {
    "mlp3": TrainRecipe(epochs=15, lr=0.05),
    "mlp5": TrainRecipe(epochs=10, lr=0.05),
    "lenet": TrainRecipe(epochs=10, lr=0.05),
    "cifar_cnn": TrainRecipe(epochs=20, lr=0.05, weight_decay=5e-4, augment=True),
}


def default_device() -> torch.device:
    """CUDA when available, else CPU: where `train` runs without a `device`.

    MPS is never picked: it is used only when asked for (`train(..., device="mps")`).
    """
    return check_device("cuda" if torch.cuda.is_available() else "cpu", "default_device")


def set_seed(seed: int) -> None:
    """Seed Python, numpy and torch (CPU and CUDA) for reproducible runs."""
    check_number(seed, "seed", "set_seed", low=0, integer=True)
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _augment(images: Tensor, generator: torch.Generator) -> Tensor:
    """Random shifts of up to 4 pixels (reflect-padded crops) and horizontal flips, per image."""
    n, _, h, w = images.shape  # (N, C, H, W)
    padded = F.pad(images, (4, 4, 4, 4), mode="reflect")
    dy, dx = (torch.randint(0, 9, (n,), generator=generator) for _ in range(2))
    rows = (dy[:, None] + torch.arange(h))[:, :, None].to(images.device)  # (N, H, 1)
    cols = (dx[:, None] + torch.arange(w))[:, None, :].to(images.device)  # (N, 1, W)
    crops = padded[torch.arange(n, device=images.device)[:, None, None], :, rows, cols]  # (N, H, W, C)
    crops = crops.permute(0, 3, 1, 2)
    flip = (torch.rand(n, generator=generator) < 0.5).to(images.device)[:, None, None, None]
    return torch.where(flip, crops.flip(3), crops)


def train(model: nn.Module, train_set: ImageDataset, recipe: TrainRecipe | None = None,
          device: torch.device | str | None = None, progress: bool = True) -> list[dict]:
    """Train `model` in place with cross-entropy; return one row per epoch (loss, accuracy).

    Deterministic for `recipe.seed` on a given machine: shuffling and
    augmentation draw from a generator seeded by it (dropout from torch's
    global RNG, which is seeded too).

    With `recipe.adversarial` (an `AdversarialRecipe`), every batch is replaced by its adversarial
    version before the step (the min-max objective of Madry et al. 2018, eq. 2.1; adversarial_training.py),
    and after every epoch PGD-10 attacks a fixed batch of the first `check_size` training images: its
    clean and robust accuracy go into the epoch's row and the progress bar, and a fall of the robust
    accuracy by more than 0.2 below the best epoch's restores that epoch's weights and stops training
    (Wong et al. 2020's guard against catastrophic overfitting; the row says `stopped`). The row's
    `loss` and `train_accuracy` are then those of the adversarial batches the model trained on, as
    the papers' training curves report them; the clean accuracy is `check_clean_accuracy`.

    `device`: "cpu", "cuda", "cuda:1", "mps" or a torch.device; None picks `default_device()`. It is
    checked first (`_validation.check_device`), before the seed is set or the model is moved.

    Example:
        >>> history = train(build_model("mlp3"), load_dataset("mnist", "train"), TrainRecipe(epochs=1))
        >>> round(history[-1]["train_accuracy"], 2) > 0.9
        True
    """
    device = check_device(device, "train") if device is not None else default_device()
    recipe = recipe or TrainRecipe()
    adversary = recipe.adversarial
    set_seed(recipe.seed)
    generator = torch.Generator().manual_seed(recipe.seed)
    model.to(device).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=recipe.lr, momentum=0.9, nesterov=True,
                                weight_decay=recipe.weight_decay)
    steps = (len(train_set) + recipe.batch_size - 1) // recipe.batch_size
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=recipe.lr, total_steps=recipe.epochs * steps)
    if adversary is not None:
        check = (train_set.images[:adversary.check_size].to(device), train_set.labels[:adversary.check_size].to(device))
        guard = CollapseGuard(model)
    history, step = [], 0
    # TQDM_DISABLE (set by CI and nbval runs) is tqdm's own switch; pass `disable` only to force the bar off
    bar = tqdm(total=recipe.epochs * steps, desc="adversarial training" if adversary else "train", unit="batch",
               **({} if progress else {"disable": True}))
    for epoch in range(recipe.epochs):
        order = torch.randperm(len(train_set), generator=generator)
        total_loss, correct = 0.0, 0
        for start in range(0, len(order), recipe.batch_size):
            idx = order[start:start + recipe.batch_size]
            images = train_set.images[idx].to(device)
            labels = train_set.labels[idx].to(device)
            if recipe.augment:
                images = _augment(images, generator)
            if adversary is not None:
                images = adversary.perturb(model, images, labels, step)
            logits = model(images)
            loss = F.cross_entropy(logits, labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            step += 1
            total_loss += loss.item() * len(idx)
            correct += (logits.argmax(1) == labels).sum().item()
            bar.update()
            bar.set_postfix(epoch=epoch + 1, loss=f"{loss.item():.3f}", refresh=False)
        row = {"epoch": epoch + 1, "loss": total_loss / len(order), "train_accuracy": correct / len(order)}
        history.append(row)
        if adversary is not None:
            row["check_clean_accuracy"], row["check_robust_accuracy"] = adversary.robust_accuracy(model, *check)
            bar.set_postfix(epoch=epoch + 1, clean=f"{row['check_clean_accuracy']:.1%}",
                            robust=f"{row['check_robust_accuracy']:.1%}")
            if guard.collapsed(row["check_robust_accuracy"], epoch + 1):
                row["stopped"] = f"catastrophic overfitting: back to epoch {guard.best_epoch}'s weights"
                break
    bar.close()
    model.eval()
    return history


@torch.no_grad()
def predict(model: nn.Module, images: Tensor, batch_size: int = 1000) -> Tensor:
    """The model's predicted labels (N,), computed in eval mode on the model's device, batched.

    Every submodule gets its own training flag back, and BatchNorm statistics are not touched
    (`evaluating`), so predicting in the middle of training or fine-tuning changes nothing.
    """
    device = next(model.parameters()).device
    with evaluating(model):
        return torch.cat([model(images[i:i + batch_size].to(device)).argmax(1).cpu()
                          for i in range(0, len(images), batch_size)])


def evaluate(model: nn.Module, dataset: ImageDataset, batch_size: int = 1000) -> float:
    """Clean accuracy in [0, 1] of `model` on `dataset` (eval mode, no gradients; modes restored as `predict` does).

    Example:
        >>> evaluate(load_pretrained("mnist", "mlp3", 1), load_dataset("mnist").subset(1000)) > 0.97
        True
    """
    return (predict(model, dataset.images, batch_size) == dataset.labels).float().mean().item()
