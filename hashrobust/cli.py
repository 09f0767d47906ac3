"""`hashrobust` command line: a thin argparse layer over the functions the notebooks call.

    hashrobust train --dataset mnist --arch mlp3 --ratio 8 --epochs 5 --seed 0 \
        --from-dense data/checkpoints/mnist-mlp3-r1.pt
    hashrobust train --dataset mnist --arch lenet --ratio 8 --adversarial fgsm --eps 0.3   # adversarial training
    hashrobust zoo                 # list the shipped checkpoints
    hashrobust zoo --verify        # re-measure each one's clean accuracy
    hashrobust analyze --dataset mnist --n 1000   # the multi-factor analysis -> results/mnist/
    hashrobust reproduce --dataset mnist          # the paper's headline, with and without GI
    hashrobust adaptive --dataset mnist           # GI against attacks that adapt to it
    hashrobust analyze --dataset mnist --device cuda   # on a GPU (analyze, reproduce, adaptive; default cpu)
    hashrobust shootout --arch mlp3 --eps 0.1     # hashing vs pruning vs quantisation at equal storage
    hashrobust at-eval --dataset mnist            # the adversarially trained zoo under the ensemble
"""
from __future__ import annotations

import argparse
import shlex
import sys
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import torch

from . import __version__
from ._memory import keep_freed_memory
from ._validation import check_device
from .adversarial_training import AdversarialRecipe
from .data import load_dataset
from .layers import compress, count_parameters
from .models import ARCHS, DATASET_OF_ARCH, build_model
from .train import RECIPES, evaluate, train
from .zoo import CHECKPOINT_DIR, load_checkpoint, load_pretrained, read_manifest, save_checkpoint


def _train(args: argparse.Namespace) -> int:
    if DATASET_OF_ARCH[args.arch] != args.dataset:
        raise SystemExit(f"error: arch {args.arch!r} is built for {DATASET_OF_ARCH[args.arch]!r}, "
                         f"not {args.dataset!r}")
    if args.device is not None:  # checked before any data or checkpoint is read
        _device(args)
    base = RECIPES[args.arch]
    lr = args.lr if args.lr is not None else (base.lr / 5 if args.from_dense else base.lr)
    adversarial = None
    if args.adversarial is not None:
        if args.eps is None:
            raise SystemExit(f"error: --adversarial {args.adversarial} needs --eps (the L-inf radius in pixel "
                             f"units, e.g. 0.3 for MNIST, 0.0314 = 8/255 for CIFAR-10)")
        adversarial = AdversarialRecipe(args.adversarial, args.eps, steps=args.pgd_steps)
    elif args.eps is not None:
        raise SystemExit("error: --eps is the radius of adversarial training: give --adversarial fgsm or pgd too")
    recipe = replace(base, lr=lr, seed=args.seed, adversarial=adversarial,
                     epochs=base.epochs if args.epochs is None else args.epochs,
                     batch_size=base.batch_size if args.batch_size is None else args.batch_size)
    if args.from_dense:
        dense = load_checkpoint(args.from_dense)
        source = read_manifest(Path(args.from_dense).parent)[Path(args.from_dense).name]
        if (source["dataset"], source["arch"], source["ratio"]) != (args.dataset, args.arch, 1):
            raise ValueError(f"--from-dense needs a dense (ratio 1) {args.dataset} {args.arch} checkpoint; "
                             f"{args.from_dense} is {source['dataset']} {source['arch']} at ratio {source['ratio']:g}.")
        model = compress(dense, args.ratio, layers=args.hashed, seed=args.hash_seed)
        method = (f"fine-tuned from {args.from_dense}" if args.ratio == 1 else
                  f"compressed from {args.from_dense} (least-squares bucket means), then fine-tuned")
    else:
        torch.manual_seed(args.seed)
        model = build_model(args.arch, args.ratio, args.hashed, seed=args.hash_seed)
        method = "trained from scratch"
    train_set, test_set = load_dataset(args.dataset, "train"), load_dataset(args.dataset, "test")
    start = time.perf_counter()
    history = train(model, train_set, recipe, device=args.device)
    seconds = time.perf_counter() - start
    accuracy = evaluate(model, test_set)
    real, virtual = count_parameters(model)
    if adversarial is not None:
        method += f"; adversarially trained ({args.adversarial.upper()} inner max, eps {args.eps:g})"
        stopped = [row["stopped"] for row in history if "stopped" in row]
        method += f"; {stopped[0]}" if stopped else ""
    entry = {"command": "hashrobust " + " ".join(shlex.quote(a) for a in args.argv), "method": method,
             "seed": args.seed, "epochs": recipe.epochs, "recipe": recipe.as_dict(), "variant": test_set.variant,
             "clean_test_accuracy": round(accuracy, 4), "test_n": len(test_set), "real_parameters": real,
             "virtual_parameters": virtual, "final_train_loss": round(history[-1]["loss"], 4),
             "train_seconds": round(seconds), "torch": torch.__version__.split("+")[0]}
    if adversarial is not None:
        entry["check_robust_accuracy"] = [round(row["check_robust_accuracy"], 4) for row in history]
    training = "standard" if adversarial is None else f"{args.adversarial}-at"
    path = save_checkpoint(model.cpu(), args.dataset, args.arch, args.ratio, args.hashed, entry, args.out, training)
    print(f"{path.name}: clean test accuracy {accuracy:.2%} on {test_set.description}; "
          f"{real:,} real / {virtual:,} virtual parameters; {seconds:.0f} s")
    return 0


def _zoo(args: argparse.Namespace) -> int:
    manifest = read_manifest(args.out)
    if not manifest:
        print(f"No checkpoints in {args.out or CHECKPOINT_DIR}.")
        return 1
    print(f"{'checkpoint':28} {'accuracy':>9} {'KiB':>7}  variant / method")
    failures = 0
    for name, entry in manifest.items():
        line = f"{name:28} {entry['clean_test_accuracy']:9.2%} {entry['bytes'] / 1024:7.0f}  " \
               f"{entry['variant']} / {entry['method']}"
        if args.verify:
            test = load_dataset(entry["dataset"], "test")
            if args.n:
                test = test.subset(args.n)
            model = load_pretrained(entry["dataset"], entry["arch"], entry["ratio"], directory=args.out,
                                    training=entry.get("training", "standard"))
            measured = evaluate(model, test)
            if args.n:  # a subset's accuracy differs from the full split's: shown, not compared
                line += f"  measured {measured:.2%} on the first {len(test)} (not compared)"
            else:
                ok = abs(measured - entry["clean_test_accuracy"]) <= 0.002
                failures += not ok
                line += f"  measured {measured:.2%} on {len(test)}{'' if ok else '  MISMATCH'}"
        print(line)
    return 1 if failures else 0


DEFAULT_ANALYSIS_ARCHS = {"mnist": ["mlp3"], "cifar10": ["cifar_cnn"]}
DEVICE_HELP = "torch device for the models and images, e.g. cpu, cuda, cuda:1, mps (default: cpu)"


def _device(args: argparse.Namespace) -> torch.device:
    """--device, checked before any data or model is loaded."""
    return check_device(args.device, f"hashrobust {args.command}", "--device")


def _analyze(args: argparse.Namespace) -> int:
    from .analysis import run_analysis, write_analysis  # imports the attacks only when asked for

    start = time.perf_counter()
    device = _device(args)
    rows = run_analysis(args.dataset, n=args.n, archs=args.archs or DEFAULT_ANALYSIS_ARCHS[args.dataset],
                        device=device)
    out_dir = Path(args.out or f"results/{args.dataset}")
    command = "hashrobust " + " ".join(shlex.quote(a) for a in args.argv)
    for path in write_analysis(rows, out_dir, command):
        print(f"wrote {path}")
    print(f"{len(rows)} cells in {time.perf_counter() - start:.0f} s")
    return 0


def _reproduce(args: argparse.Namespace) -> int:
    from .reproduction import PAPER_AVERAGE, average_success, reproduce, write_reproduction

    start = time.perf_counter()
    device = _device(args)
    cells, curves = reproduce(args.dataset, n=args.n, jsma_images=args.jsma_images, device=device)
    out_dir = Path(args.out or f"results/{args.dataset}")
    for path in write_reproduction(cells, curves, out_dir, "hashrobust " + " ".join(map(shlex.quote, args.argv))):
        print(f"wrote {path}")
    before, after = average_success(cells, "none"), average_success(cells, "GI")
    paper = PAPER_AVERAGE[args.dataset]
    print(f"average attack success, no defence -> GI: ours {before:.2%} -> {after:.2%}; "
          f"the paper {paper[0]:.2%} -> {paper[1]:.2%} ({time.perf_counter() - start:.0f} s)")
    return 0


def _adaptive(args: argparse.Namespace) -> int:
    from .adaptive import MODELS, evaluate_adaptive, write_adaptive
    from .reports import write_csv

    start = time.perf_counter()
    device = _device(args)
    settings = {"n": args.n, "n_cw": args.n_cw, "jsma_images": args.jsma_images}
    rows = []
    for arch, ratio in MODELS[args.dataset]:
        part = Path(args.parts) / f"{arch}-r{ratio:g}.csv" if args.parts else None
        if part is not None and part.is_file():
            rows += _adaptive_part(part, settings)
            print(f"read {part} (made earlier with the same settings)")
            continue
        found = evaluate_adaptive(args.dataset, models=[(arch, ratio)], device=device, **settings)
        if part is not None:
            print(f"wrote {write_csv(found, part)}")
        rows += found
    out_dir = Path(args.out or f"results/{args.dataset}")
    for path in write_adaptive(rows, out_dir, "hashrobust " + " ".join(map(shlex.quote, args.argv))):
        print(f"wrote {path}")
    print(f"{len(rows)} cells in {time.perf_counter() - start:.0f} s")
    return 0


def _adaptive_part(path: Path, settings: dict) -> list[dict]:
    """The rows of one model saved by an earlier `--parts` run, if it used these n, n_cw and jsma_images."""
    from .reports import read_csv

    rows = read_csv(path)
    made = {"n": next(r["n"] for r in rows if r["bounded"]),
            "n_cw": next(r["n"] for r in rows if r["attack"].startswith("C&W")),
            "jsma_images": next(r["n"] for r in rows if r["attack"].startswith("JSMA")) // 9}
    if made != settings:
        raise SystemExit(f"error: {path} was made with {made}, this run asks for {settings}: delete the folder's "
                         f"parts, or run with the settings they were made with")
    return rows


def _shootout(args: argparse.Namespace) -> int:
    from .shootout import run_shootout, write_shootout

    start = time.perf_counter()
    rows = run_shootout(args.arch, tuple(args.ratios), n=args.n, eps=args.eps, epochs=args.epochs,
                        training=args.training, device=_device(args))
    out_dir = Path(args.out or "results/mnist")
    for path in write_shootout(rows, out_dir, "hashrobust " + " ".join(map(shlex.quote, args.argv))):
        print(f"wrote {path}")
    print(f"{len(rows)} rows in {time.perf_counter() - start:.0f} s")
    return 0


def _at_eval(args: argparse.Namespace) -> int:
    from .adversarial_study import (curve_archs, eps_curves, evaluate_adversarial_training,
                                    write_adversarial_training)

    start = time.perf_counter()
    device = _device(args)
    arch = args.curve_arch or {"mnist": "lenet", "cifar10": "cifar_cnn"}[args.dataset]
    if arch not in curve_archs(args.dataset):  # before the hours of the study, not after
        raise ValueError(f"The '--curve-arch' of hashrobust at-eval must be one of {curve_archs(args.dataset)} for "
                         f"{args.dataset}. Got {arch!r} instead.")
    rows = evaluate_adversarial_training(args.dataset, n=args.n, preset=args.preset, device=device)
    curves = eps_curves(args.dataset, arch, n=args.n, device=device)
    out_dir = Path(args.out or f"results/{args.dataset}")
    for path in write_adversarial_training(rows, curves, out_dir, "hashrobust " + " ".join(map(shlex.quote, args.argv))):
        print(f"wrote {path}")
    print(f"{len(rows)} models and {len(curves)} curve points in {time.perf_counter() - start:.0f} s")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hashrobust", description=__doc__.split("\n")[0])
    parser.add_argument("--version", action="version", version=f"hashrobust {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train a (hashed) model and add it to the zoo")
    t.add_argument("--dataset", choices=["mnist", "cifar10"], required=True)
    t.add_argument("--arch", choices=sorted(ARCHS), required=True)
    t.add_argument("--ratio", type=float, default=1.0, help="compression ratio r >= 1 (1 = dense)")
    t.add_argument("--hashed", choices=["fc", "all"], default="fc", help="which layers to hash")
    t.add_argument("--epochs", type=int, default=None, help="default: the arch's recipe")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--hash-seed", type=int, default=0)
    t.add_argument("--lr", type=float, default=None)
    t.add_argument("--batch-size", type=int, default=None)
    t.add_argument("--from-dense", metavar="CKPT", help="compress this dense checkpoint, then fine-tune")
    t.add_argument("--adversarial", choices=["fgsm", "pgd"], default=None,
                   help="adversarial training: fast FGSM with a random start (Wong et al. 2020) or PGD "
                        "(Madry et al. 2018) as the inner max; saved as <name>-fgsm-at.pt / <name>-pgd-at.pt")
    t.add_argument("--eps", type=float, default=None, help="with --adversarial: L-inf radius in pixel units")
    t.add_argument("--pgd-steps", type=int, default=10, help="with --adversarial pgd: inner PGD steps (default 10)")
    t.add_argument("--device", default=None, help="cpu, cuda, cuda:1 or mps (default: cuda if available)")
    t.add_argument("--out", default=None, help=f"checkpoint folder (default {CHECKPOINT_DIR})")
    t.set_defaults(func=_train)

    z = sub.add_parser("zoo", help="list the shipped checkpoints, optionally re-measuring them")
    z.add_argument("--verify", action="store_true", help="re-measure clean accuracy on the test split")
    z.add_argument("--n", type=int, default=None, help="with --verify: only the first n test images")
    z.add_argument("--out", default=None, help=f"checkpoint folder (default {CHECKPOINT_DIR})")
    z.set_defaults(func=_zoo)

    a = sub.add_parser("analyze", help="attack success over compression ratio x eps, white-box and transfer")
    a.add_argument("--dataset", choices=["mnist", "cifar10"], required=True)
    a.add_argument("--n", type=int, default=1000, help="the first n test images (default 1000)")
    a.add_argument("--archs", nargs="+", choices=sorted(ARCHS), default=None,
                   help="zoo architectures (default: mlp3 on MNIST, the one shipped at every ratio 1..64, "
                        "about 4 minutes on 2 CPU cores; adding lenet takes about 20 minutes more)")
    a.add_argument("--device", default="cpu", help=DEVICE_HELP)
    a.add_argument("--out", default=None, help="output folder (default results/<dataset>)")
    a.set_defaults(func=_analyze)

    for name, func, text in (("reproduce", _reproduce, "the paper's headline: attack success without and with GI"),
                             ("adaptive", _adaptive, "GI against adaptive, transfer and gradient-free attacks")):
        p = sub.add_parser(name, help=text)
        p.add_argument("--dataset", choices=["mnist", "cifar10"], required=True)
        p.add_argument("--n", type=int, default=1000, help="the first n test images (default 1000)")
        p.add_argument("--jsma-images", type=int, default=10,
                       help="JSMA on the first k test images x 9 targets (default 10, the protocol's; "
                            "seconds per model with the exact skyband pair search)")
        if name == "adaptive":
            p.add_argument("--parts", metavar="DIR", default=None,
                           help="save each model's rows to DIR/<arch>-r<ratio>.csv as soon as it is done, and reuse "
                                "the ones already there: a long run (CIFAR-10, about 45 minutes a model on 2 CPU "
                                "cores) can stop and resume, or be split across sessions and machines")
            p.add_argument("--n-cw", type=int, default=100,
                           help="C&W L2 (9 binary-search steps, up to 1000 Adam steps each) on the first k test "
                                "images (default 100; about 1 s per image for lenet, 2 s for cifar_cnn)")
        p.add_argument("--device", default="cpu", help=DEVICE_HELP)
        p.add_argument("--out", default=None, help="output folder (default results/<dataset>)")
        p.set_defaults(func=func)
    s = sub.add_parser("shootout", help="hashing vs pruning vs quantisation vs a small dense net at equal storage "
                                         "(MNIST)")
    s.add_argument("--arch", choices=["mlp3", "lenet"], default="mlp3")
    s.add_argument("--ratios", type=float, nargs="+", default=[8, 64], help="storage ratios (default 8 64)")
    s.add_argument("--n", type=int, default=1000, help="the first n test images (default 1000)")
    s.add_argument("--eps", type=float, default=0.1, help="the attacks' L-inf radius (default 0.1)")
    s.add_argument("--epochs", type=int, default=3, help="fine-tuning epochs of the compressed models (default 3)")
    s.add_argument("--training", choices=["standard", "fgsm-at", "pgd-at"], default="standard",
                   help="start from the zoo's standard or adversarially trained dense model, and fine-tune alike")
    s.add_argument("--device", default="cpu", help=DEVICE_HELP)
    s.add_argument("--out", default=None, help="output folder (default results/mnist)")
    s.set_defaults(func=_shootout)
    e = sub.add_parser("at-eval", help="the adversarially trained zoo, the undefended model and GI under the "
                                       "ensemble, with the masking signals and eps curves")
    e.add_argument("--dataset", choices=["mnist", "cifar10"], required=True)
    e.add_argument("--n", type=int, default=1000, help="the first n test images (default 1000)")
    e.add_argument("--preset", choices=["standard", "course"], default="standard",
                   help="the ensemble's budget (default standard: AutoAttack's)")
    e.add_argument("--curve-arch", choices=["lenet", "mlp3", "cifar_cnn"], default=None,
                   help="whose models the eps curves show (default lenet on MNIST, cifar_cnn on CIFAR-10)")
    e.add_argument("--device", default="cpu", help=DEVICE_HELP)
    e.add_argument("--out", default=None, help="output folder (default results/<dataset>)")
    e.set_defaults(func=_at_eval)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args.argv = argv
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError) as error:
        print(f"hashrobust: error: {error}", file=sys.stderr)
        return 2


def command() -> int:
    """The `hashrobust` console script: `main` in a process that keeps freed memory for reuse (`_memory`)."""
    keep_freed_memory()
    return main()


if __name__ == "__main__":
    raise SystemExit(command())
