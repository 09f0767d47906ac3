"""Hashed vs dense mlp3 (784-1000-10): step-time ratios and checkpoint-size ratios, measured in one run.

    python benchmarks/hashed_layer.py [--rounds 7] [--steps 30] [--no-compile]

(a) a training step (forward, backward to the real weights, SGD step) and
(b) an input-gradient step with frozen weights (what an attack does: the
gradient of the loss with respect to the images, then a sign step), for
ratios 8 and 64 at batch 64 and 256. Dense and hashed runs alternate in
rounds on the same inputs and the ratio of the medians is printed, since
these 2-core machines are noisy; compare ratios, not absolute times.
Targets (issue #2): (a) <= 1.3x, (b) <= 1.05x. A layer that materialises V
every training step has a floor of about 2x at batch 64 and 1.3x at batch
256 on this machine.

Two more tables, measured the same way:
(c) the training step under torch.compile (inductor, static shapes; compile
time excluded by a warm-up), dense and hashed, compiled and eager, with the
hashed/dense ratio of each and the compiled/eager ratio of each model;
(d) both steps under torch.autocast("cpu", dtype=torch.bfloat16), hashed vs
dense. On a CPU without native bf16 instructions bf16 is emulated and slower
than float32; the hashed/dense ratio is what matters.
"""
from __future__ import annotations

import argparse
import copy
import io
import statistics
import time

import torch
import torch.nn.functional as F
from torch import nn

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


def compare(*fns, rounds: int, steps: int) -> list[float]:
    """Median seconds per step of each function, alternating them within every round."""
    for fn in fns:  # warm-up (and, for a compiled model, compilation)
        fn()
    times = [[] for _ in fns]
    for _ in range(rounds):
        for fn, t in zip(fns, times):
            t.append(seconds_per_step(fn, steps))
    return [statistics.median(t) for t in times]


def training_setup(models: list[nn.Module]) -> list[torch.optim.Optimizer]:
    """Each model in train mode with trainable weights, and an SGD optimizer for each."""
    for m in models:
        m.train().requires_grad_(True)
    return [torch.optim.SGD(m.parameters(), lr=1e-3, momentum=0.9) for m in models]


def compile_table(dense: nn.Module, args: argparse.Namespace) -> None:
    """(c): the training step, compiled (inductor) and eager, dense and hashed."""
    print(f"\n(c) training step under torch.compile (inductor, dynamic=False)\n"
          f"{'ratio':>5} {'batch':>5} | {'dense ms':>8} {'compiled':>8} {'hashed ms':>9} {'compiled':>8} | "
          f"{'hashed/dense eager':>18} {'compiled':>8} | {'compiled/eager dense':>20} {'hashed':>6}")
    for ratio in (8, 64):
        for batch in (64, 256):
            images, labels = torch.rand(batch, 1, 28, 28), torch.randint(0, 10, (batch,))
            models = [copy.deepcopy(dense), copy.deepcopy(dense), compress(dense, ratio), compress(dense, ratio)]
            opts = training_setup(models)
            runners = [models[0], torch.compile(models[1], dynamic=False), models[2],
                       torch.compile(models[3], dynamic=False)]
            torch._dynamo.reset()
            d, dc, h, hc = compare(*[lambda m=m, o=o: training_step(m, o, images, labels)
                                     for m, o in zip(runners, opts)], rounds=args.rounds, steps=args.steps)
            print(f"{ratio:5d} {batch:5d} | {d * 1e3:8.2f} {dc * 1e3:8.2f} {h * 1e3:9.2f} {hc * 1e3:8.2f} | "
                  f"{h / d:17.2f}x {hc / dc:7.2f}x | {dc / d:19.2f}x {hc / h:5.2f}x")


def steps_table(dense: nn.Module, args: argparse.Namespace, title: str, autocast: bool = False) -> None:
    """A training step and an input-gradient step (frozen weights, cached V), hashed vs dense, eager."""
    print(f"{title}{'ratio':>5} {'batch':>5} | {'train dense ms':>14} {'hashed ms':>9} {'ratio':>6} | "
          f"{'input-grad dense ms':>19} {'hashed ms':>9} {'ratio':>6}")
    for ratio in (8, 64):
        hashed = compress(dense, ratio)
        for batch in (64, 256):
            images, labels = torch.rand(batch, 1, 28, 28), torch.randint(0, 10, (batch,))
            models = [dense, hashed]
            opts = training_setup(models)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
                t_dense, t_hashed = compare(lambda: training_step(dense, opts[0], images, labels),
                                            lambda: training_step(hashed, opts[1], images, labels),
                                            rounds=args.rounds, steps=args.steps)
                for m in models:
                    m.eval().requires_grad_(False)  # what an attack does: frozen weights, cached V
                g_dense, g_hashed = compare(lambda: input_gradient_step(dense, images, labels),
                                            lambda: input_gradient_step(hashed, images, labels),
                                            rounds=args.rounds, steps=args.steps)
            print(f"{ratio:5d} {batch:5d} | {t_dense * 1e3:14.2f} {t_hashed * 1e3:9.2f} {t_hashed / t_dense:5.2f}x | "
                  f"{g_dense * 1e3:19.2f} {g_hashed * 1e3:9.2f} {g_hashed / g_dense:5.2f}x")


def checkpoint_bytes(model) -> int:
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    return buffer.tell()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--no-compile", action="store_true", help="skip table (c), which compiles 8 models")
    args = parser.parse_args()
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; median of {args.rounds} rounds "
          f"x {args.steps} steps\n")
    dense = build_model("mlp3")
    steps_table(dense, args, "")
    if not args.no_compile:
        compile_table(dense, args)
    steps_table(dense, args, "\n(d) autocast bfloat16\n", autocast=True)
    print()
    dense_bytes = checkpoint_bytes(dense)
    for ratio in (8, 64):
        hashed_bytes = checkpoint_bytes(compress(dense, ratio))
        print(f"checkpoint: dense {dense_bytes / 1024:.0f} KiB, ratio {ratio} {hashed_bytes / 1024:.0f} KiB, "
              f"dense/hashed {dense_bytes / hashed_bytes:.1f}x")


if __name__ == "__main__":
    main()
