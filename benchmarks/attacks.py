"""Attack throughput: ours vs torchattacks, and a ratio-8 hashed model vs its dense twin, measured in one run.

    python benchmarks/attacks.py [--rounds 5] [--batch 256]

(a) FGSM and PGD-40 (no random start) images per second, ours / torchattacks,
    on the same pretrained model and batch (target >= 1.0x);
(b) the same attacks on the zoo's ratio-8 hashed model vs the dense model
    whose weights are that hashed model's expanded virtual weights (target
    <= 1.05x: with frozen weights a hashed layer reuses its cached V).
Runs alternate within each round and the medians are compared, since these
2-core machines are noisy.
"""
from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch
import torchattacks
from torch import nn

from hashrobust import FGSM, PGD, HashedLinear, load_dataset, load_pretrained


def dense_twin(model: nn.Module) -> nn.Module:
    """The same function with every HashedLinear replaced by an nn.Linear holding its virtual weight."""
    twin = copy.deepcopy(model)
    for name, layer in list(twin.named_modules()):
        if isinstance(layer, HashedLinear):
            dense = nn.Linear(layer.in_features, layer.out_features)
            with torch.no_grad():
                dense.weight.copy_(layer.virtual_weight())
                dense.bias.copy_(layer.bias)
            parent, _, attr = name.rpartition(".")
            setattr(twin.get_submodule(parent), attr, dense)
    return twin.eval()


def median_seconds(fns: dict, rounds: int) -> dict:
    for fn in fns.values():
        fn()  # warm-up
    times = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--batch", type=int, default=256)
    args = parser.parse_args()
    data = load_dataset("mnist", "test").subset(args.batch)
    images, labels = data.images, data.labels
    print(f"torch {torch.__version__}, torchattacks {torchattacks.__version__}, {torch.get_num_threads()} threads, "
          f"batch {args.batch}, median of {args.rounds} rounds\n")

    print("(a) ours vs torchattacks (images/s; ratio > 1 means ours is faster)")
    for arch in ("mlp3", "lenet"):
        model = load_pretrained("mnist", arch, 1)
        pairs = {
            "FGSM": (FGSM(model, eps=0.3), torchattacks.FGSM(model, eps=0.3)),
            "PGD-40": (PGD(model, eps=0.3, alpha=0.01, steps=40, random_start=False),
                       torchattacks.PGD(model, eps=0.3, alpha=0.01, steps=40, random_start=False)),
        }
        for name, (ours, peer) in pairs.items():
            t = median_seconds({"ours": lambda: ours(images, labels), "peer": lambda: peer(images, labels)},
                               args.rounds)
            print(f"  {arch:6} {name:7} ours {args.batch / t['ours']:9.0f}/s   torchattacks "
                  f"{args.batch / t['peer']:9.0f}/s   ours/peer throughput {t['peer'] / t['ours']:.2f}x")

    print("\n(b) ratio-8 hashed model vs its dense twin (same function), our attacks (time ratio; target <= 1.05x)")
    for arch in ("mlp3", "lenet"):
        hashed = load_pretrained("mnist", arch, 8)
        twin = dense_twin(hashed)
        assert torch.equal(hashed(images).argmax(1), twin(images).argmax(1))
        for name, make in {"FGSM": lambda m: FGSM(m, eps=0.3),
                           "PGD-40": lambda m: PGD(m, eps=0.3, alpha=0.01, steps=40, random_start=False)}.items():
            on_hashed, on_dense = make(hashed), make(twin)
            t = median_seconds({"hashed": lambda: on_hashed(images), "dense": lambda: on_dense(images)}, args.rounds)
            print(f"  {arch:6} {name:7} hashed {t['hashed'] * 1e3:8.1f} ms   dense {t['dense'] * 1e3:8.1f} ms   "
                  f"hashed/dense {t['hashed'] / t['dense']:.2f}x")


if __name__ == "__main__":
    main()
