"""Precision: gradient inhibition's masking is a property of the number format, not of the model.

GI inflates the logits until the softmax saturates (defenses.py): the cross-entropy input gradient
p - y is then exactly 0 and FGSM cannot step. Where that happens depends only on the float format the
softmax runs in. For a top-1 logit margin m over the other classes:

    saturation  p_y rounds to exactly 1 once e^-m is below half an ulp of 1:   m > -ln(eps / 2)
    underflow   every other p_i rounds to 0 once e^-m is below half the smallest subnormal:
                                                                         m > -ln(tiny * eps / 2)

(eps: the format's machine epsilon, tiny: its smallest normal number; IEEE 754, and Goldberg, "What
every computer scientist should know about floating-point arithmetic", ACM Computing Surveys 1991).
float32: 16.6 and 104.0; float64: 36.7 and 745.1; float16: 7.6 and 17.3; bfloat16: 5.5 and 92.9.
These bound one rival class. With K - 1 rivals all at margin m, p_y = 1 / (1 + (K - 1) e^-m), and a
kernel that sums the rivals' terms before adding 1 (or computes in a wider type and rounds once, as
PyTorch's float16 and bfloat16 softmax do on CPU) saturates ln(K - 1) later: m > ln(K - 1) - ln(eps / 2),
ln 9 = 2.2 later for 10 classes (float16 9.83, bfloat16 7.75). A kernel that adds the terms to 1 one at
a time saturates at the one-rival formula (PyTorch's float32 softmax at 10 classes: 16.64); underflow is
per class and does not move. `softmax_thresholds` gives the one-rival formulas; `measured_thresholds`
finds where PyTorch's own kernels give an exactly zero gradient for logits (m, 0, ..., 0), between the two.

`precision_study` runs a GI model in several formats (the whole model cast, as low-precision hardware
would run it, or float32 under CPU autocast) and measures, per format, the exactly-zero gradients and
FGSM's success, plus FGSM crafted in float64 and scored on the float32 model: the same weights, in a
wider format, give the attack its gradient back (Athalye, Carlini, Wagner, ICML 2018, on gradient
masking; Carlini et al. 2019, "On Evaluating Adversarial Robustness", Sec. 4: "verify that the attack
has converged", "try different loss functions"). The protocol: docs/protocol.md §10.

Shapes: N batch, C/H/W image, K classes, G margins.
"""
from __future__ import annotations

import copy
import math
import warnings
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._validation import check_choice, check_number, evaluating
from .attacks import FGSM
from .defenses import GradientMaskingWarning, inhibition_report
from .evaluation import wilson_interval

__all__ = ["FORMATS", "PRECISIONS", "softmax_thresholds", "measured_thresholds", "precision_study"]

FORMATS = {"float64": torch.float64, "float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# Each way of running the model: the whole model cast to a format, or float32 weights under CPU autocast to bf16.
PRECISIONS = ("float64", "float32", "bfloat16", "float16", "autocast-bfloat16")


def softmax_thresholds(dtype: torch.dtype) -> dict[str, float]:
    """The two margins at which a softmax in `dtype` stops giving cross-entropy a gradient, from the format alone.

    Returns:
        {"saturation": -ln(eps / 2), "underflow": -ln(tiny * eps / 2)} (module docstring).

    Example:
        >>> {k: round(v, 2) for k, v in softmax_thresholds(torch.float32).items()}
        {'saturation': 16.64, 'underflow': 103.97}
    """
    info = torch.finfo(dtype)
    saturation = -math.log(info.eps / 2)
    return {"saturation": saturation, "underflow": saturation - math.log(info.smallest_normal)}  # in logs: 2^-1075


def measured_thresholds(dtype: torch.dtype, classes: int = 10, step: float = 0.01, top: float = 1000.0) -> dict:
    """Where PyTorch's cross-entropy gradient becomes exactly 0 for logits (m, 0, ..., 0) in `dtype`, on this CPU.

    Margins m = 0, step, 2 step, ... < top are cast to `dtype` (so in a coarse format they are its nearest
    representable values). "saturation": the smallest m from which the true class's entry of the gradient
    is 0 at every larger m; "underflow": the same for every entry. inf if it never happens below `top`.

    Example:
        >>> found = measured_thresholds(torch.float32)
        >>> 16.6 < found["saturation"] < 18.9 and 103.9 < found["underflow"] < 104.1
        True
    """
    check_number(classes, "classes", "measured_thresholds", low=2, integer=True)
    check_number(step, "step", "measured_thresholds", low=0)
    margins = torch.arange(0, top, step, dtype=torch.float64).to(dtype)  # (G,)
    logits = torch.zeros(len(margins), classes, dtype=dtype)
    logits[:, 0] = margins
    logits.requires_grad_(True)
    loss = F.cross_entropy(logits, torch.zeros(len(margins), dtype=torch.int64), reduction="sum")
    (grad,) = torch.autograd.grad(loss, logits)  # (G, K): p - y per row, each row its own loss

    def from_here(zero: Tensor) -> float:
        nonzero = (~zero).nonzero()
        if len(nonzero) == 0:
            return 0.0
        last = int(nonzero[-1])
        return math.inf if last + 1 == len(margins) else float(margins[last + 1])

    return {"saturation": from_here(grad[:, 0] == 0), "underflow": from_here((grad == 0).all(1))}


def _run_as(model: nn.Module, precision: str) -> tuple[nn.Module, torch.dtype]:
    """A copy of `model` that computes in `precision`, and the dtype its inputs need."""
    if precision == "autocast-bfloat16":
        return _Autocast(copy.deepcopy(model).float()), torch.float32
    dtype = FORMATS[precision]
    return copy.deepcopy(model).to(dtype), dtype


class _Autocast(nn.Module):
    """float32 weights, run under torch.autocast(bfloat16) on the inputs' device type (matmuls in bf16)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: Tensor) -> Tensor:
        with torch.autocast(images.device.type, dtype=torch.bfloat16):
            return self.model(images)


def _success(model: nn.Module, images: Tensor, adv_images: Tensor, labels: Tensor, batch_size: int) -> Tensor:
    """(N,) True where the prediction on adv_images differs from the clean one (the paper's success)."""
    with torch.no_grad(), evaluating(model):
        changed = [model(images[i:i + batch_size]).argmax(1) != model(adv_images[i:i + batch_size]).argmax(1)
                   for i in range(0, len(images), batch_size)]
    return torch.cat(changed).cpu()


def _row(precision: str, report: dict, changed: Tensor, attack: str) -> dict:
    n, hits = len(changed), int(changed.sum())
    low, high = wilson_interval(hits, n)
    return {"precision": precision, "attack": attack, "n": n, "zero_grad_fraction": report["zero_grad_fraction"],
            "median_margin": report["median_margin"], "clean_acc": report["clean_acc"],
            "success": hits / n, "success_low": low, "success_high": high}


def precision_study(model: nn.Module, images: Tensor, labels: Tensor, eps: float,
                    precisions: Sequence[str] = PRECISIONS, batch_size: int = 500) -> list[dict]:
    """A (GI) model run in each precision: its exactly-zero cross-entropy gradients and FGSM's success.

    Each precision gets its own copy of `model` (the model itself is not changed): cast whole to that
    format, or float32 under CPU autocast to bfloat16 ("autocast-bfloat16"). FGSM (cross-entropy, the
    paper's attack, labels = the true labels) is crafted on that copy and scored on it. One more row,
    attack "FGSM crafted in float64", crafts on the float64 copy and scores on the float32 model:
    the same weights, with the gradient the float32 softmax hid.

    Args:
        model: a classifier returning logits, e.g. `gradient_inhibition(load_pretrained(...), 0.35)`.
        images, labels: (N, C, H, W) in [0, 1] and (N,) true labels.
        eps: FGSM's L-inf radius in pixel units, in [0, 1].
        precisions: a subset of PRECISIONS.
        batch_size: examples per pass.

    Returns:
        One row per precision and attack: {"precision", "attack", "n", "zero_grad_fraction",
        "median_margin", "clean_acc", "success", "success_low", "success_high"} (95% Wilson interval);
        zero_grad_fraction, median_margin and clean_acc are those of the model the attack differentiates.

    Example:
        >>> from hashrobust.defenses import gradient_inhibition
        >>> gi = gradient_inhibition(load_pretrained("mnist", "mlp3"), 0.35)
        >>> test = load_dataset("mnist").subset(200)
        >>> rows = precision_study(gi, test.images, test.labels, eps=0.1, precisions=["float64", "float32"])
        >>> [(r["precision"], r["success"] > 0.5) for r in rows]
        [('float64', True), ('float32', False), ('float32', True)]
    """
    check_number(eps, "eps", "precision_study", low=0, high=1)
    for precision in precisions:
        check_choice(precision, "precision", PRECISIONS)
    rows, reports, crafted64 = [], {}, None
    for precision in precisions:
        runner, dtype = _run_as(model, precision)
        x = images.to(dtype)
        with warnings.catch_warnings():  # masking is what this study measures
            warnings.simplefilter("ignore", GradientMaskingWarning)
            reports[precision] = inhibition_report(runner, x, labels, batch_size)
        adv = FGSM(runner, eps=eps)(x, labels)
        rows.append(_row(precision, reports[precision], _success(runner, x, adv, labels, batch_size), "FGSM"))
        if precision == "float64":
            crafted64 = adv
    if crafted64 is not None and "float32" in precisions:
        runner, _ = _run_as(model, "float32")
        changed = _success(runner, images.float(), crafted64.float(), labels, batch_size)
        rows.append(_row("float32", reports["float32"], changed, "FGSM crafted in float64"))
    return rows
