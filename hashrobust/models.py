"""The networks of the protocol, dense or hashed, built by name.

Paper: Liu et al. (ASP-DAC 2018), abstract (MNIST and CIFAR-10); the networks are
the reconstructed protocol, docs/protocol.md §7: HashedNets' MLPs and a LeNet on MNIST,
a VGG-style CNN on CIFAR-10. Every model takes images in [0, 1] and its first
layer normalises them, so an attack's eps is in pixel units.

| arch      | layers                                                                  |
|-----------|-------------------------------------------------------------------------|
| mlp3      | 784-1000-10 (HashedNets' 3-layer net)                                   |
| mlp5      | 784-1000-1000-1000-10                                                   |
| lenet     | conv 20 5x5, pool, conv 50 5x5, pool, FC 500, FC 10                     |
| cifar_cnn | conv 32, 32, pool, conv 64, 64, pool (3x3, BN), FC 256, 256, 10         |

cifar_cnn is the protocol's VGG-style net at half its width (64/128 channels
took about 260 s per epoch on 2 CPU cores, 32/64 about 65 s), so the zoo can
be trained on the machines the course runs on.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from ._validation import check_choice, check_number
from .layers import HASHABLE_LAYERS, hash_layers_

__all__ = ["Normalize", "build_model", "ARCHS", "DATASET_OF_ARCH"]

MNIST_MEAN, MNIST_STD = (0.1307,), (0.3081,)
CIFAR_MEAN, CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)


class Normalize(nn.Module):
    """(images - mean) / std per channel, as the model's first layer (inputs stay in [0, 1])."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1), persistent=False)

    def forward(self, images: Tensor) -> Tensor:
        return (images - self.mean) / self.std

    def extra_repr(self) -> str:
        return f"mean={self.mean.flatten().tolist()}, std={self.std.flatten().tolist()}"


def _mlp(widths: Sequence[int]) -> nn.Sequential:
    layers: list[nn.Module] = [Normalize(MNIST_MEAN, MNIST_STD), nn.Flatten()]
    for i, (n_in, n_out) in enumerate(zip(widths[:-1], widths[1:])):
        layers.append(nn.Linear(n_in, n_out))
        if i < len(widths) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def _lenet() -> nn.Sequential:
    return nn.Sequential(
        Normalize(MNIST_MEAN, MNIST_STD),
        nn.Conv2d(1, 20, 5), nn.ReLU(), nn.MaxPool2d(2),   # (N, 20, 12, 12)
        nn.Conv2d(20, 50, 5), nn.ReLU(), nn.MaxPool2d(2),  # (N, 50, 4, 4)
        nn.Flatten(), nn.Linear(800, 500), nn.ReLU(), nn.Linear(500, 10),
    )


def _cifar_cnn() -> nn.Sequential:
    def block(c_in: int, c_out: int) -> list[nn.Module]:
        return [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU()]

    return nn.Sequential(
        Normalize(CIFAR_MEAN, CIFAR_STD),
        *block(3, 32), *block(32, 32), nn.MaxPool2d(2),   # (N, 32, 16, 16)
        *block(32, 64), *block(64, 64), nn.MaxPool2d(2),  # (N, 64, 8, 8)
        nn.Flatten(), nn.Linear(64 * 8 * 8, 256), nn.ReLU(), nn.Dropout(0.3),
        nn.Linear(256, 256), nn.ReLU(), nn.Dropout(0.3), nn.Linear(256, 10),
    )


ARCHS: dict[str, Callable[[], nn.Sequential]] = {
    "mlp3": lambda: _mlp([784, 1000, 10]),
    "mlp5": lambda: _mlp([784, 1000, 1000, 1000, 10]),
    "lenet": _lenet,
    "cifar_cnn": _cifar_cnn,
}
DATASET_OF_ARCH = {"mlp3": "mnist", "mlp5": "mnist", "lenet": "mnist", "cifar_cnn": "cifar10"}


def build_model(arch: str, ratio: float = 1, hashed: str = "fc", seed: int = 0) -> nn.Sequential:
    """A freshly initialised network of the protocol, dense (ratio 1) or hashed.

    Paper: reconstructed protocol, docs/protocol.md §7; HashedNets Sec. 6 (MLP-3, MLP-5 on MNIST).

    Args:
        arch: one of mlp3, mlp5, lenet, cifar_cnn.
        ratio: compression ratio r >= 1 of the hashed layers; 1 builds the dense net.
        hashed: "fc" hashes the fully connected layers, "all" also the convolutions.
        seed: hash seed of the first hashed layer (layer i uses seed + i); the
            weights' initialisation follows torch's global RNG (see train.set_seed).

    Shape: (N, 1, 28, 28) in [0, 1] -> (N, 10) logits for MNIST nets; (N, 3, 32, 32) for cifar_cnn.

    Example:
        >>> model = build_model("mlp3", ratio=8)
        >>> model(torch.rand(2, 1, 28, 28)).shape
        torch.Size([2, 10])
    """
    check_choice(arch, "arch", ARCHS)
    check_number(ratio, "ratio", "build_model", low=1)
    check_choice(hashed, "hashed", HASHABLE_LAYERS)
    model = ARCHS[arch]()
    if ratio != 1:
        hash_layers_(model, ratio, hashed, seed, project=False)
    return model
