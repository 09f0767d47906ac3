"""Scoring attacks: success rate, fooling rate, robust accuracy, transfer, and sweeps as tidy rows.

Paper: Liu et al. (ASP-DAC 2018), Sec. 5: the success rate of an
untargeted attack is the fraction of inputs whose predicted label changes
(the authors' definition, as in their cleverhans-based code); for JSMA it is
the fraction of (image, target) pairs, over the 9 classes other than the true
one, that reach the target. Alongside we report what later work reports
(Carlini et al. 2019, "On Evaluating Adversarial Robustness", Sec. 5):

- fooling rate: among correctly classified inputs, the fraction misclassified after the attack;
- robust accuracy: the fraction of all inputs still correctly classified after the attack.

Each function returns plain dicts; `sweep` returns one dict per cell, which a
table, a CSV writer or a plot takes as is.
"""
from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from .attacks import JSMA, Attack
from .data import ImageDataset
from .train import predict

__all__ = ["success_rate", "jsma_success", "transfer", "sweep", "AttackFactory"]

AttackFactory = Callable[[nn.Module, float], Attack]  # (model, eps) -> attack


def _batched_attack(attack: Attack, images: Tensor, labels: Tensor | None, batch_size: int) -> Tensor:
    return torch.cat([attack(images[i:i + batch_size], None if labels is None else labels[i:i + batch_size])
                      for i in range(0, len(images), batch_size)])


def _scores(model: nn.Module, images: Tensor, adv_images: Tensor, labels: Tensor | None) -> dict:
    """The three rates for adversarial images already crafted (on `model` or elsewhere)."""
    clean = predict(model, images)
    adv = predict(model, adv_images)
    row = {"n": len(images), "success": (adv != clean).float().mean().item(),
           "fooling": None, "robust_acc": None, "clean_acc": None}
    if labels is not None:
        labels = labels.cpu()
        correct = clean == labels
        row["clean_acc"] = correct.float().mean().item()
        row["robust_acc"] = (adv == labels).float().mean().item()
        row["fooling"] = (adv[correct] != labels[correct]).float().mean().item() if correct.any() else float("nan")
    return row


def success_rate(model: nn.Module, attack: Attack, images: Tensor, labels: Tensor | None = None,
                 batch_size: int = 500) -> dict:
    """Score an untargeted attack on `model`: success, fooling rate, robust and clean accuracy.

    Paper: Liu et al. Sec. 5 ("attack success rate"); Carlini et al. 2019 Sec. 5.

    Args:
        model: the model under attack (the attack must have been built on it).
        attack: e.g. FGSM(model, eps=0.3). The attack's own labels are always
            the model's clean predictions (the authors' convention), so the
            true `labels` are used for scoring only.
        images: (N, C, H, W) in [0, 1].
        labels: true labels (N,), or None to report `success` only.

    Returns:
        {"n", "success", "fooling", "robust_acc", "clean_acc"}: success is the
        fraction of predictions that change; the other three need labels (else None).

    Example:
        >>> from hashrobust.attacks import FGSM
        >>> model, test = load_pretrained("mnist", "mlp3"), load_dataset("mnist").subset(100)
        >>> success_rate(model, FGSM(model, eps=0.3), test.images, test.labels)["success"] > 0.8
        True
    """
    if getattr(attack, "model", model) is not model:
        raise ValueError("The 'attack' passed to success_rate was built on another model; "
                         "use transfer(source_model, target_model, attack, images) for transferred examples.")
    adv_images = _batched_attack(attack, images, None, batch_size)
    return _scores(model, images, adv_images, labels)


def jsma_success(model: nn.Module, attack: JSMA, images: Tensor, labels: Tensor, batch_size: int = 90) -> dict:
    """JSMA success over every (image, target) pair with target != true label.

    Paper: Papernot et al. 2016 (JSMA); Liu et al. Sec. 5 (10 images x 9 targets).

    Returns:
        {"n": pairs, "success": fraction of pairs whose prediction is the target,
         "changed_pixels": mean fraction of input features the attack changed}.
    """
    with torch.no_grad():
        classes = torch.arange(model(images[:1].to(next(model.parameters()).device)).shape[1])
    pairs_images, targets = [], []
    for image, label in zip(images, labels):
        others = classes[classes != label]
        pairs_images.append(image.expand(len(others), *image.shape))
        targets.append(others)
    pairs_images, targets = torch.cat(pairs_images), torch.cat(targets)
    adv_images = _batched_attack(attack, pairs_images, targets, batch_size)
    reached = predict(model, adv_images) == targets
    changed = (adv_images != pairs_images).flatten(1).float().mean(1)
    return {"n": len(targets), "success": reached.float().mean().item(), "changed_pixels": changed.mean().item()}


def transfer(source_model: nn.Module, target_model: nn.Module, attack: Attack, images: Tensor,
             labels: Tensor | None = None, batch_size: int = 500) -> dict:
    """Craft adversarial images on `source_model`, score them on `target_model` (a black-box attacker).

    Paper: Liu et al. Sec. 4-5: dense -> compressed models an attacker who knows
    only the software model; compressed -> dense, one who attacks the deployed device.

    Returns:
        The rates of `success_rate`, measured on the target model.
    """
    if getattr(attack, "model", source_model) is not source_model:
        raise ValueError("The 'attack' passed to transfer must be built on source_model.")
    adv_images = _batched_attack(attack, images, None, batch_size)
    return _scores(target_model, images, adv_images, labels)


def sweep(models: Mapping[tuple[str, float], nn.Module], attacks: Mapping[str, AttackFactory],
          eps_values: Iterable[float], data: ImageDataset, twin_ratio: float | None = None,
          batch_size: int = 500) -> list[dict]:
    """Attack every model with every attack at every eps; one tidy row per cell.

    Paper: Liu et al. Sec. 5 (the multi-factor analysis: compression ratio x perturbation size).

    Args:
        models: {(arch, ratio): model}, e.g. the zoo's mlp3 at ratios 1..64.
        attacks: {name: factory(model, eps) -> attack}, e.g. {"FGSM": lambda m, e: FGSM(m, eps=e)}.
        eps_values: L-inf radii in pixel units.
        data: the images and true labels to attack (e.g. test.subset(1000)).
        twin_ratio: if given (e.g. 1), also score transfer: each model's
            adversarial images on its twin (same arch) at this ratio (hashed ->
            dense), and the twin's on every other ratio of its arch (dense ->
            hashed); those rows have mode "transfer" and ratio != source_ratio.

    Returns:
        Rows with keys dataset, variant, arch, ratio, source_ratio, mode
        ("white-box" or "transfer"), attack, eps, n, success, fooling,
        robust_acc, clean_acc, seconds.
    """
    eps_values = list(eps_values)
    rows = []
    cells = len(models) * len(attacks) * len(eps_values)
    with tqdm(total=cells, desc="sweep", unit="cell") as bar:
        for (arch, ratio), model in models.items():
            for name, make in attacks.items():
                for eps in eps_values:
                    start = time.perf_counter()
                    adv = _batched_attack(make(model, eps), data.images, None, batch_size)
                    seconds = time.perf_counter() - start
                    base = {"dataset": data.name, "variant": data.variant, "arch": arch, "attack": name, "eps": eps}
                    rows.append({**base, "ratio": ratio, "source_ratio": ratio, "mode": "white-box",
                                 **_scores(model, data.images, adv, data.labels), "seconds": seconds})
                    if twin_ratio is None:
                        targets = []
                    elif ratio == twin_ratio:
                        targets = [(r, m) for (a, r), m in models.items() if a == arch and r != ratio]
                    else:
                        targets = [(twin_ratio, models[(arch, twin_ratio)])]
                    for target_ratio, target in targets:
                        rows.append({**base, "ratio": target_ratio, "source_ratio": ratio, "mode": "transfer",
                                     **_scores(target, data.images, adv, data.labels), "seconds": seconds})
                    bar.update()
    return rows
