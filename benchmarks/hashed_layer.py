"""Hashed vs dense mlp3 (784-1000-10): step-time ratios and checkpoint-size ratios, measured in one run.

    python benchmarks/hashed_layer.py [--rounds 7] [--steps 30]

(a) a training step (forward, backward to the real weights, SGD step) and
(b) an input-gradient step with frozen weights (what an attack does: the
gradient of the loss with respect to the images, then a sign step), for
ratios 8 and 64 at batch 64 and 256. Dense and hashed runs alternate in
rounds on the same inputs and the ratio of the medians is printed, since
these 2-core machines are noisy; compare ratios, not absolute times.
Targets (issue #2): (a) <= 1.3x, (b) <= 1.05x. A layer that materialises V
every training step has a floor of about 2x at batch 64 and 1.3x at batch
256 on this machine.
"""
from __future__ import annotations

import argparse
import io
import statistics
import time

import torch
import torch.nn.functional as F

from hashrobust import build_model, compress


def training_step(model, opt, images, labels) -> None:
    opt.zero_grad(set_to_none=True)
    F.cross_entropy(model(images), labels).backward()
    opt.step()


def input_gradient_step(model, images, labels) -> torch.Tensor:
    images = images.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(F.cross_entropy(model(images), labels), images)
    return (images + 0.1 * grad.sign()).clamp(0, 1)


def seconds_per_step(fn, steps: int) -> float:
    start = time.perf_counter()
    for _ in range(steps):
        fn()
    return (time.perf_counter() - start) / steps


def compare(dense_fn, hashed_fn, rounds: int, steps: int) -> tuple[float, float]:
    """Median seconds per step of each, alternating dense and hashed runs within every round."""
    dense_fn(), hashed_fn()  # warm-up
    dense, hashed = [], []
    for _ in range(rounds):
        dense.append(seconds_per_step(dense_fn, steps))
        hashed.append(seconds_per_step(hashed_fn, steps))
    return statistics.median(dense), statistics.median(hashed)


def checkpoint_bytes(model) -> int:
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    return buffer.tell()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--steps", type=int, default=30)
    args = parser.parse_args()
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; median of {args.rounds} rounds "
          f"x {args.steps} steps\n")
    print(f"{'ratio':>5} {'batch':>5} | {'train dense ms':>14} {'hashed ms':>9} {'ratio':>6} | "
          f"{'input-grad dense ms':>19} {'hashed ms':>9} {'ratio':>6}")
    dense = build_model("mlp3")
    for ratio in (8, 64):
        hashed = compress(dense, ratio)
        for batch in (64, 256):
            images, labels = torch.rand(batch, 1, 28, 28), torch.randint(0, 10, (batch,))
            models = [dense, hashed]
            for m in models:
                m.train().requires_grad_(True)
            opts = [torch.optim.SGD(m.parameters(), lr=1e-3, momentum=0.9) for m in models]
            t_dense, t_hashed = compare(lambda: training_step(dense, opts[0], images, labels),
                                        lambda: training_step(hashed, opts[1], images, labels),
                                        args.rounds, args.steps)
            for m in models:
                m.eval().requires_grad_(False)  # what an attack does: frozen weights, cached V
            g_dense, g_hashed = compare(lambda: input_gradient_step(dense, images, labels),
                                        lambda: input_gradient_step(hashed, images, labels),
                                        args.rounds, args.steps)
            print(f"{ratio:5d} {batch:5d} | {t_dense * 1e3:14.2f} {t_hashed * 1e3:9.2f} {t_hashed / t_dense:5.2f}x | "
                  f"{g_dense * 1e3:19.2f} {g_hashed * 1e3:9.2f} {g_hashed / g_dense:5.2f}x")
    print()
    dense_bytes = checkpoint_bytes(dense)
    for ratio in (8, 64):
        hashed_bytes = checkpoint_bytes(compress(dense, ratio))
        print(f"checkpoint: dense {dense_bytes / 1024:.0f} KiB, ratio {ratio} {hashed_bytes / 1024:.0f} KiB, "
              f"dense/hashed {dense_bytes / hashed_bytes:.1f}x")


if __name__ == "__main__":
    main()
