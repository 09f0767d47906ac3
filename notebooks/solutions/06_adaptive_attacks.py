"""Solutions to the exercises of notebooks/06_adaptive_attacks.ipynb (adaptive attacks on gradient inhibition).

Exercise 1: the C&W logit margin by hand, and why gradient inhibition cannot saturate it.
Exercise 2: FGSM on cross-entropy of logits / T, by hand, against the GI model.
Exercise 3: robust accuracy under several attacks at once: the worst case per image.

The doctests run in `make test` (pytest --doctest-modules); HASHROBUST_DATA must point at the data.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import hashrobust as hr


# ----------------------------------------------------------------------------- exercise 1
def cw_margin(logits: Tensor, labels: Tensor) -> Tensor:
    """The C&W logit margin max_{i != y} Z_i - Z_y of each example, (N, K), (N,) -> (N,); > 0 iff misclassified.

    >>> logits = torch.tensor([[2.0, 5.0, 1.0], [0.0, -1.0, 3.0]])
    >>> cw_margin(logits, torch.tensor([1, 0]))
    tensor([-3.,  3.])
    >>> from hashrobust.attacks import logit_margin
    >>> gi = hr.gradient_inhibition(hr.load_pretrained("mnist", "mlp3", 1), eps=0.35)
    >>> images = hr.load_dataset("mnist", "test").images[:200]
    >>> with torch.no_grad():
    ...     z = gi(images)
    >>> torch.equal(cw_margin(z, z.argmax(1)), logit_margin(z, z.argmax(1)))
    True
    >>> torch.equal(cw_margin(4 * z, z.argmax(1)), 4 * cw_margin(z, z.argmax(1)))  # scales with the logits
    True
    """
    true = logits.gather(1, labels[:, None]).squeeze(1)  # (N,)
    others = logits.clone()
    others[torch.arange(len(labels)), labels] = float("-inf")
    return others.amax(1) - true


# ----------------------------------------------------------------------------- exercise 2
def fgsm_on_logits(model: nn.Module, images: Tensor, eps: float, temperature: float) -> Tensor:
    """FGSM on cross-entropy of model(x) / T, labels = the model's own prediction: clip(x + eps sign(grad)).

    The same as hr.FGSM(Temperature(model, temperature), eps=eps)(images), to the bit.

    >>> from hashrobust.adaptive import Temperature
    >>> gi = hr.gradient_inhibition(hr.load_pretrained("mnist", "mlp3", 1), eps=0.35)
    >>> images = hr.load_dataset("mnist", "test").images[:200]
    >>> adv_images = fgsm_on_logits(gi, images, 0.3, 1000.0)
    >>> torch.equal(adv_images, hr.FGSM(Temperature(gi, 1000.0), eps=0.3)(images))
    True
    >>> clean = hr.predict(gi, images)
    >>> [round((hr.predict(gi, fgsm_on_logits(gi, images, 0.3, t)) != clean).float().mean().item(), 3)
    ...  for t in (1.0, 2.0, 5.0, 1000.0)]
    [0.055, 0.22, 0.805, 1.0]
    """
    model.eval()
    images = images.detach()
    with torch.no_grad():
        labels = model(images).argmax(1)  # (N,)
    x = images.clone().requires_grad_(True)
    loss = F.cross_entropy(model(x) / temperature, labels, reduction="sum")  # summed: each image's own gradient
    (grad,) = torch.autograd.grad(loss, x)  # (N, C, H, W)
    return (images + eps * grad.sign()).clamp(0, 1).detach()


# ----------------------------------------------------------------------------- exercise 3
def worst_case_accuracy(model: nn.Module, attacks: list, images: Tensor, labels: Tensor) -> float:
    """The fraction of images that `model` classifies correctly, clean and after every attack of `attacks`.

    Each attack runs against the TRUE labels (the standard definition of robust accuracy) and crafts on
    its own `.model` (a transfer attack's source, or Temperature(model, T)); its examples are scored on
    `model`. Per image the worst case counts, so the result is at most the smallest per-attack robust
    accuracy; `hr.robust_accuracy(model, images, labels, eps, attacks=[(name, attack), ...])` computes
    the same.

    >>> from hashrobust.adaptive import Temperature
    >>> model = hr.load_pretrained("mnist", "mlp3", 1)
    >>> gi = hr.gradient_inhibition(model, eps=0.35)
    >>> test = hr.load_dataset("mnist", "test").subset(200)
    >>> attacks = [hr.FGSM(gi, eps=0.05), hr.FGSM(Temperature(gi, 1000.0), eps=0.05),
    ...            hr.PGD(model, eps=0.05, alpha=0.0125, steps=10, seed=0, loss="margin")]  # the last: transfer
    >>> [round(worst_case_accuracy(gi, [a], test.images, test.labels), 3) for a in attacks]
    [0.925, 0.61, 0.625]
    >>> round(worst_case_accuracy(gi, attacks, test.images, test.labels), 3)  # below the smallest of the three
    0.58
    >>> hr.robust_accuracy(gi, test.images, test.labels, 0.05, attacks=[(str(a), a) for a in attacks])["robust_acc"]
    0.58
    """
    correct = hr.predict(model, images) == labels.cpu()  # (N,)
    for attack in attacks:
        correct &= hr.predict(model, attack(images, labels)) == labels.cpu()
    return correct.float().mean().item()
