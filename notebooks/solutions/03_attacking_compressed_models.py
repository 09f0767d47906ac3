"""Solutions to the exercises of notebooks/03_attacking_compressed_models.ipynb.

Paper: Liu et al. (ASP-DAC 2018), abstract (attacks on compressed models); the reconstructed protocol,
docs/protocol.md §3 ("Attacking a compressed model"): a HashedNets model computes the dense function of its
virtual weights V = sign * w[bucket], so a white-box attacker backpropagates through V (eq. 2 of the
notebook), and a transfer attacker crafts on the dense software model instead.
"""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import hashrobust as hr


def transfer_gap(dense: nn.Module, hashed: nn.Module, eps: float, images: Tensor, labels: Tensor) -> float:
    """Exercise 1: white-box FGSM success on `hashed` minus the success on `hashed` of FGSM crafted on `dense`.

    Both successes are fractions in [0, 1] (predictions that change), so the gap is in [-1, 1].

    Example:
        >>> dense, hashed = hr.load_pretrained("mnist", "mlp3", 1), hr.load_pretrained("mnist", "mlp3", 8)
        >>> test = hr.load_dataset("mnist", "test").subset(200)
        >>> round(transfer_gap(dense, hashed, 0.1, test.images, test.labels), 3)
        0.445
    """
    white_box = hr.success_rate(hashed, hr.FGSM(hashed, eps=eps), images, labels)["success"]
    transferred = hr.transfer(dense, hashed, hr.FGSM(dense, eps=eps), images, labels)["success"]
    return white_box - transferred


def _matrix(layer: nn.Module) -> Tensor:
    """The weight an mlp3 layer computes with: V for a HashedLinear, W for an nn.Linear, (O, I)."""
    return layer.virtual_weight() if isinstance(layer, hr.HashedLinear) else layer.weight


@torch.no_grad()
def eq2_gradient(model: nn.Module, images: Tensor, labels: Tensor) -> Tensor:
    """Exercise 2: grad_x of the summed cross-entropy of an mlp3 model by eq. (2), without autograd.

    grad_x J = V1^T D1 V2^T (p - y) / sigma, written for row vectors, one row per image (the loss is summed
    over the batch, so each image's gradient is its own); model[0] is the Normalize layer,
    model[2] and model[4] the two (hashed or dense) linear layers. Shape: (N, 1, 28, 28) -> (N, 1, 28, 28).

    Example:
        >>> from hashrobust.attacks import loss_gradient
        >>> hashed = hr.load_pretrained("mnist", "mlp3", 8)
        >>> test = hr.load_dataset("mnist", "test").subset(100)
        >>> by_hand = eq2_gradient(hashed, test.images, test.labels)
        >>> by_autograd = loss_gradient(hashed, test.images, test.labels)
        >>> tuple(by_hand.shape), (by_hand - by_autograd).abs().max().item() < 1e-6
        ((100, 1, 28, 28), True)
    """
    normalize, first, second = model[0], model[2], model[4]
    u = normalize(images).flatten(1)                             # (N, I)
    z1 = u @ _matrix(first).T + first.bias                       # (N, H)
    z2 = z1.relu() @ _matrix(second).T + second.bias             # (N, K)
    delta = z2.softmax(1) - F.one_hot(labels, z2.shape[1]).to(z2)  # p - y, (N, K)
    grad_hidden = (delta @ _matrix(second)) * (z1 > 0)           # D1 V2^T (p - y), (N, H)
    grad_u = grad_hidden @ _matrix(first)                        # V1^T ..., (N, I)
    return grad_u.view_as(images) / normalize.std                # 1/sigma of the normalisation layer


def dense_twin(model: nn.Module) -> nn.Module:
    """Exercise 3: a copy of `model` in which every HashedLinear is an nn.Linear with weight V and the same bias.

    Works for any zoo model whose hashed layers are HashedLinear (mlp3, lenet, cifar_cnn); the argument is
    not modified.

    Example:
        >>> hashed = hr.load_pretrained("mnist", "lenet", 64)
        >>> twin = dense_twin(hashed)
        >>> images = hr.load_dataset("mnist", "test").images[:100]
        >>> with torch.no_grad():
        ...     difference = (twin(images) - hashed(images)).abs().max().item()
        >>> hr.count_parameters(hashed), hr.count_parameters(twin), difference < 1e-5
        ((32409, 431080), (431080, 431080), True)
    """
    twin = copy.deepcopy(model)
    for name, layer in list(twin.named_modules()):
        if isinstance(layer, hr.HashedLinear):
            linear = nn.Linear(layer.in_features, layer.out_features, bias=layer.bias is not None)
            linear = linear.to(device=layer.weight.device, dtype=layer.weight.dtype)
            with torch.no_grad():
                linear.weight.copy_(layer.virtual_weight())
                if layer.bias is not None:
                    linear.bias.copy_(layer.bias)
            parent_name, _, attr = name.rpartition(".")
            setattr(twin.get_submodule(parent_name), attr, linear)
    return twin.train(model.training)
