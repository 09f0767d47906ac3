"""Gradient inhibition (GI): the paper's defence, and the diagnostics that show it is gradient masking.

Paper: Liu et al. (ASP-DAC 2018), the section on gradient inhibition, as the
authors implement it (retraining-free, in their public TF1 code): after training, each fully connected weight matrix is edited once,

    constant     W <- W + eps * sign(W)            (the original method, eps about 0.1)
    w_multiple   W <- (1 + eps) * W                (eps = k = 3 in the authors' code)
    uniform      W <- W + eps * U * sign(W),  U ~ Uniform(0, 1)   (eps = c = 0.2)

with conv layers and biases untouched. In the authors' code U is a graph op, drawn
afresh at every evaluation: `gradient_inhibition(..., variant="uniform",
resample=True)` builds that randomised model, and `attacks.EOT` is the adaptive
answer to it (Expectation over Transformation). On a hashed layer the real weights w
are edited: sign(xi * w[h]) = xi * sign(w[h]), so editing w edits V the same
way (exactly for constant and w_multiple) and the checkpoint keeps its size.

Why it "works": the edit inflates the logits until the float32 softmax
saturates, so the cross-entropy gradient p - y, hence the input gradient, is
exactly 0 and FGSM/BIM take no step. That is gradient masking, the failure
mode of defensive distillation (Papernot, McDaniel, Wu, Jha, Swami, IEEE S&P
2016), which scales the logits by a temperature: logit-based, transfer and
gradient-free attacks are not inhibited (Carlini & Wagner, "Defensive
Distillation is Not Robust to Adversarial Examples", arXiv:1607.04311, 2016;
Athalye, Carlini, Wagner, "Obfuscated Gradients Give a False Sense of
Security", ICML 2018; Carlini et al., "On Evaluating Adversarial Robustness",
arXiv:1902.06705, 2019). `inhibition_report` measures the masking and warns;
`choose_strength` states how strong GI is made (the zero-gradient fraction),
never by tuning it to an attack's success rate.

Shapes: N batch, C/H/W image, K classes.
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
from .layers import HashedConv2d, HashedLinear

__all__ = ["gradient_inhibition", "inhibition_report", "choose_strength", "GradientMaskingWarning",
           "ResampledInhibition", "VARIANTS", "GI_LAYERS", "DEFAULT_GRIDS"]

VARIANTS = ("constant", "uniform", "w_multiple")
GI_LAYERS = {"fc": (nn.Linear, HashedLinear), "all": (nn.Linear, HashedLinear, nn.Conv2d, HashedConv2d)}
# eps added to |W| (constant, uniform): fine steps where a quickly trained MNIST net starts to saturate
_ADDED = (0, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.45, 0.5, 0.6, 0.7, 0.8, 1, 1.25, 1.5, 2, 3, 5, 7.5, 10)
DEFAULT_GRIDS = {"constant": _ADDED, "uniform": _ADDED, "w_multiple": (0, 1, 2, 3, 5, 7.5, 10, 15, 20, 30, 50)}
# The float32 softmax's two thresholds for a top-1 logit margin m (notebook 05, Section 3), computed from float32:
# - SATURATION_MARGIN = 24 ln 2 ~ 16.64: the sum 1 + sum_i e^(-m_i) absorbs a term e^(-m) below half an ulp of 1
#   (2^-24) when it adds it to 1, so from here p_y can round to exactly 1 (kernels that add the small terms together
#   first get there a little later, at most 24 ln 2 + ln 9 ~ 18.8 for 10 classes). The true 1 - p_y is still about
#   9 e^-m ~ 5e-7 here, well above float32's resolution: it is the sum's rounding, not 1 - p_y, that vanishes.
# - UNDERFLOW_MARGIN = 150 ln 2 ~ 103.97: e^(-m) below half the smallest subnormal (2^-149) rounds to 0, so every
#   other p_i, hence p - y and the cross-entropy input gradient, is exactly 0.
_FLOAT32 = torch.finfo(torch.float32)
SATURATION_MARGIN = -math.log(_FLOAT32.eps / 2)
UNDERFLOW_MARGIN = -math.log(_FLOAT32.smallest_normal * _FLOAT32.eps / 2)
EXPLANATION = ("notebooks/06_adaptive_attacks.ipynb and Carlini et al. 2019, "
               "'On Evaluating Adversarial Robustness' (arXiv:1902.06705)")


class GradientMaskingWarning(UserWarning):
    """The input gradients of a model are (mostly) exactly zero: gradient attacks will fail without robustness."""


# ----------------------------------------------------------------------------- the edit
def _edit_(weight: Tensor, variant: str, eps: float, generator: torch.Generator | None) -> None:
    """Apply one GI formula to a weight tensor in place (the caller holds torch.no_grad())."""
    if variant == "constant":
        weight.add_(weight.sign(), alpha=eps)
    elif variant == "w_multiple":
        weight.mul_(1 + eps)
    else:  # uniform: U drawn on the CPU from the seeded generator, so a seed gives the same U on any device
        u = torch.rand(weight.shape, generator=generator, dtype=weight.dtype).to(weight.device)
        weight.add_(u.mul_(weight.sign()), alpha=eps)


class ResampledInhibition(nn.Module):
    """One layer of the randomised uniform GI: W + eps * U * sign(W) with U ~ Uniform(0, 1) drawn at EVERY forward.

    Paper: the authors' TF1 code, where U is a graph op (a fresh draw per evaluation). On a hashed
    layer U is drawn per real weight, so all virtual weights of a bucket share it, as hardware would.
    The wrapped layer is not modified; its weights and hash are read at each forward.
    """

    def __init__(self, layer: nn.Module, eps: float, generator: torch.Generator) -> None:
        super().__init__()
        self.layer, self.eps, self.generator = layer, eps, generator

    def forward(self, x: Tensor) -> Tensor:
        layer, w = self.layer, self.layer.weight
        u = torch.rand(w.shape, generator=self.generator, dtype=w.dtype).to(w.device)  # CPU draw: same on any device
        weight = w + self.eps * u * w.sign()
        if isinstance(layer, (HashedLinear, HashedConv2d)):  # V = sign * w[bucket], HashedNets eq. 4
            weight = layer.gather(weight)
        if isinstance(layer, (nn.Linear, HashedLinear)):
            return F.linear(x, weight, layer.bias)
        if isinstance(layer, nn.Conv2d):
            return layer._conv_forward(x, weight, layer.bias)
        return F.conv2d(x, weight, layer.bias, layer.stride, layer.padding)


def _resampled(model: nn.Module, kinds: tuple[type, ...], eps: float, generator: torch.Generator) -> int:
    """Swap every layer of `kinds` in `model` (in place) for a ResampledInhibition of it; the count swapped."""
    swapped = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, kinds):
                setattr(parent, name, ResampledInhibition(child, eps, generator))
                swapped += 1
    return swapped


def gradient_inhibition(model: nn.Module, eps: float = 0.1, variant: str = "constant", layers: str = "fc",
                        seed: int | None = None, resample: bool = False) -> nn.Module:
    """A copy of `model` whose fully connected weights are pushed away from 0 (GI), once.

    Paper: Liu et al. ASP-DAC 2018, gradient inhibition; the authors' code edits
    dense and hashed FC weights after training (docs/protocol.md, "Gradient inhibition").

    The authors' TF1 code draws the `uniform` variant's U afresh at every
    evaluation (a randomised model whose attack gradient and scoring pass see
    different weights): that is `resample=True`. By default U is drawn once,
    so the model is deterministic. The adaptive answer to the randomised
    version is Expectation over Transformation: attack `attacks.EOT(model,
    draws)`, which averages the logits, hence their gradients, over draws
    (Athalye, Carlini, Wagner, ICML 2018, Sec. 4.3).

    Args:
        model: a trained classifier, dense or hashed; it is not modified.
        eps: GI strength >= 0: the added magnitude (constant, uniform) or k in (1 + k) W (w_multiple).
        variant: "constant" (W + eps sign W), "w_multiple" ((1 + eps) W) or "uniform" (W + eps U sign W).
        layers: "fc" edits nn.Linear and HashedLinear weights; "all" also nn.Conv2d and HashedConv2d.
            Biases are never edited; on a hashed layer the real weights w are.
        seed: seed of U for "uniform" (a torch.Generator, layers drawn in module order);
            None draws a fresh, nondeterministic U. Ignored by the other variants.
        resample: "uniform" only: draw U afresh at every forward pass (each edited layer becomes a
            `ResampledInhibition`; the sequence of draws is fixed by `seed`).

    Returns:
        A deep copy, in the training/eval mode of `model`, with the edit
        recorded as `.gradient_inhibition = {"eps", "variant", "layers", "seed"}`
        (for uniform with seed=None, the seed actually drawn, so it can be replayed).

    Example:
        >>> from hashrobust.defenses import gradient_inhibition
        >>> model = nn.Sequential(nn.Linear(2, 2))
        >>> with torch.no_grad(): _ = model[0].weight.copy_(torch.tensor([[0.5, -0.25], [0.0, 1.0]]))
        >>> gradient_inhibition(model, eps=0.1)[0].weight
        Parameter containing:
        tensor([[ 0.6000, -0.3500],
                [ 0.0000,  1.1000]], requires_grad=True)

    Used in: notebooks/05_gradient_inhibition.ipynb.
    """
    if not isinstance(model, nn.Module):
        raise ValueError(f"The 'model' parameter of gradient_inhibition must be an nn.Module. "
                         f"Got {type(model).__name__} instead.")
    eps = check_number(eps, "eps", "gradient_inhibition", low=0)
    check_choice(variant, "variant", VARIANTS)
    kinds = GI_LAYERS[check_choice(layers, "layers", GI_LAYERS)]
    if seed is not None:
        check_number(seed, "seed", "gradient_inhibition", low=0, integer=True)
    if not isinstance(resample, bool) or (resample and variant != "uniform"):
        raise ValueError(f"The 'resample' parameter of gradient_inhibition must be True only with "
                         f"variant='uniform' (else False). Got {resample!r} with variant={variant!r} instead.")
    new = copy.deepcopy(model)
    targets = [m for m in new.modules() if isinstance(m, kinds)]
    if not targets:
        names = ", ".join(k.__name__ for k in kinds)
        raise ValueError(f"gradient_inhibition with layers={layers!r} found no layer to edit ({names}) "
                         f"in {type(model).__name__}.")
    generator = None
    if variant == "uniform":
        generator = torch.Generator()
        seed = generator.seed() if seed is None else generator.manual_seed(seed).initial_seed()
    if resample:
        _resampled(new, kinds, float(eps), generator)
        new.gradient_inhibition = {"eps": eps, "variant": variant, "layers": layers, "seed": seed, "resample": True}
        return new
    with torch.no_grad():  # in place on the parameter (not `.data`): hashed layers see the version change
        for layer in targets:
            _edit_(layer.weight, variant, float(eps), generator)
    new.gradient_inhibition = {"eps": eps, "variant": variant, "layers": layers, "seed": seed}
    return new


# ----------------------------------------------------------------------------- the diagnostics
def _measure(model: nn.Module, images: Tensor, labels: Tensor | None, batch_size: int, owner: str,
             own_prediction: bool = False) -> dict:
    """Margins, exactly-zero input gradients and accuracy in eval mode; mode and requires_grad restored.

    The loss is taken w.r.t. the labels, or w.r.t. the model's own prediction when
    labels is None or own_prediction is set (labels then only score clean_acc).
    """
    if not (torch.is_tensor(images) and images.is_floating_point() and images.dim() >= 2 and len(images)):
        raise ValueError(f"The 'images' of {owner} must be a non-empty float tensor (N, C, H, W). "
                         f"Got {images.dtype if torch.is_tensor(images) else type(images).__name__} instead.")
    if labels is not None and not (torch.is_tensor(labels) and tuple(labels.shape) == (len(images),)):
        raise ValueError(f"The 'labels' of {owner} must be a 1-D tensor of length {len(images)} or None. "
                         f"Got {tuple(labels.shape) if torch.is_tensor(labels) else type(labels).__name__} instead.")
    check_number(batch_size, "batch_size", owner, low=1, integer=True)
    device = next(model.parameters(), images).device
    margins, zero, correct = [], [], []
    with evaluating(model, freeze=True):
        for i in range(0, len(images), batch_size):
            with torch.enable_grad():
                x = images[i:i + batch_size].detach().to(device).requires_grad_(True)  # (N, C, H, W)
                logits = model(x)  # (N, K)
                preds = logits.argmax(1)
                y = preds if labels is None else labels[i:i + batch_size].to(device)
                # summed, not averaged: each example's gradient is its own loss's, unscaled
                loss = F.cross_entropy(logits, preds if own_prediction else y, reduction="sum")
                (grad,) = torch.autograd.grad(loss, x)
            top2 = logits.detach().topk(2, dim=1).values  # (N, 2)
            margins.append((top2[:, 0] - top2[:, 1]).cpu())
            zero.append((grad.flatten(1) == 0).all(1).cpu())
            correct.append((preds == y).cpu())
    margin = torch.cat(margins)  # (N,)
    quantiles = torch.quantile(margin.double(), torch.tensor([0.1, 0.5, 0.9], dtype=torch.float64)).tolist()
    return {"n": len(margin), "margin": margin, "median_margin": quantiles[1],
            "margin_quantiles": dict(zip((0.1, 0.5, 0.9), quantiles)),
            "zero_grad_fraction": torch.cat(zero).float().mean().item(),
            "clean_acc": None if labels is None else torch.cat(correct).float().mean().item()}


def inhibition_report(model: nn.Module, images: Tensor, labels: Tensor | None = None,
                      batch_size: int = 500) -> dict:
    """How masked are the model's gradients? Logit margins and exactly-zero input gradients, with a warning.

    Paper: Liu et al. (GI "makes adversarial examples hard to generate"); the
    gradient-masking checks of Carlini et al. 2019 and Athalye et al. 2018.

    In float32 the softmax saturates: with a top-1 margin above about 17-20,
    p_y rounds to exactly 1, so the true class's entry of p - y is 0; the
    other entries exp(-margin) stay tiny but non-zero (and sign() turns a tiny
    gradient into a full FGSM step) until margins above about 104 underflow
    them to 0 too. Then the input gradient of cross-entropy is exactly 0, and
    FGSM/BIM/JSMA-F cannot move. Warns (GradientMaskingWarning) when at least
    half of the gradients are exactly 0 or the median margin exceeds 20.

    Args:
        model: any classifier returning logits (N, K); its mode and parameters are left as they were.
        images: (N, C, H, W) inputs, e.g. pixels in [0, 1].
        labels: true labels (N,) for the loss and `clean_acc`; None uses the model's own prediction
            (what FGSM/BIM use by default). With labels, a misclassified input has a large gradient.
        batch_size: examples per forward/backward pass.

    Returns:
        {"n", "margin": (N,) top-1 minus top-2 logit (>= 0), "median_margin",
         "margin_quantiles": {0.1, 0.5, 0.9: value}, "zero_grad_fraction": fraction
         of inputs whose cross-entropy input gradient is exactly 0 everywhere,
         "clean_acc": accuracy, or None without labels}.

    Example:
        >>> from hashrobust.defenses import inhibition_report
        >>> model, test = load_pretrained("mnist", "mlp3"), load_dataset("mnist").subset(100)
        >>> inhibition_report(model, test.images, test.labels)["zero_grad_fraction"] < 0.5
        True

    Used in: notebooks/05_gradient_inhibition.ipynb.
    """
    report = _measure(model, images, labels, batch_size, "inhibition_report")
    if report["zero_grad_fraction"] >= 0.5 or report["median_margin"] > SATURATION_MARGIN:
        warnings.warn(f"Gradient masking: {report['zero_grad_fraction']:.0%} of the inputs have an exactly zero "
                      f"cross-entropy input gradient (median logit margin {report['median_margin']:.1f}; the "
                      f"float32 softmax saturates from about {SATURATION_MARGIN:.1f}). A gradient-based attack "
                      f"that fails on this model shows masked gradients, not robustness: use a logit loss "
                      f"(loss='margin'), transfer or gradient-free attacks. See {EXPLANATION}.",
                      GradientMaskingWarning, stacklevel=2)
    return report


def choose_strength(model: nn.Module, images: Tensor, labels: Tensor | None = None, variant: str = "constant",
                    target: float = 0.9, grid: Sequence[float] | None = None, layers: str = "fc",
                    seed: int | None = 0, batch_size: int = 500,
                    stop_at_target: bool = False) -> tuple[float, list[dict]]:
    """The project's rule for GI strength: the smallest eps on a grid that zeroes `target` of the input gradients.

    Paper: Liu et al. use eps about 0.1 (constant), k = 3 (w_multiple), c = 0.2
    (uniform); what is strong enough depends on the weight scale
    (docs/protocol.md), so this project states a rule that looks only at the
    gradients, never at an attack's success rate. The gradient is that of
    cross-entropy w.r.t. the defended model's own prediction, the label
    FGSM/BIM use by default, so a misclassified input counts by whether an
    attack could step, and the labels only score clean_acc.

    Args:
        model: the undefended model; it is not modified.
        images, labels: the inputs to measure on; labels (N,) or None (then clean_acc is None).
        variant, layers, seed: as in `gradient_inhibition` (each grid point gets its own copy).
        target: the zero-gradient fraction to reach, in [0, 1].
        grid: the eps values (>= 0) to try; None uses DEFAULT_GRIDS[variant].
        batch_size: examples per forward/backward pass.
        stop_at_target: stop at the first grid point that meets the target: the same eps, and rows only
            up to it (for a caller that needs the strength, not the whole curve).

    Returns:
        (eps, rows): the chosen eps and one row per grid point, in increasing eps:
        {"eps", "zero_grad_fraction", "clean_acc", "median_margin", "meets_target", "chosen"}.
        If no eps reaches the target, the grid's best (highest fraction,
        then smallest eps) is chosen, every row has meets_target False, and a UserWarning says so.

    Example:
        >>> from hashrobust.defenses import choose_strength
        >>> model, test = load_pretrained("mnist", "mlp3"), load_dataset("mnist").subset(100)
        >>> eps, rows = choose_strength(model, test.images, test.labels, grid=[0, 1, 10])
        >>> eps, [row["zero_grad_fraction"] >= 0.9 for row in rows]
        (1, [False, True, True])

    Used in: notebooks/05_gradient_inhibition.ipynb.
    """
    check_choice(variant, "variant", VARIANTS)
    check_number(target, "target", "choose_strength", low=0, high=1)
    grid = sorted(check_number(eps, "grid", "choose_strength", low=0)
                  for eps in (DEFAULT_GRIDS[variant] if grid is None else grid))
    if not grid:
        raise ValueError("The 'grid' parameter of choose_strength must hold at least one eps. Got [] instead.")
    rows = []
    for eps in grid:
        defended = gradient_inhibition(model, eps, variant, layers, seed)
        report = _measure(defended, images, labels, batch_size, "choose_strength", own_prediction=True)
        rows.append({"eps": eps, "zero_grad_fraction": report["zero_grad_fraction"],
                     "clean_acc": report["clean_acc"], "median_margin": report["median_margin"],
                     "meets_target": report["zero_grad_fraction"] >= target, "chosen": False})
        if stop_at_target and rows[-1]["meets_target"]:
            break
    meeting = [row for row in rows if row["meets_target"]]
    if meeting:
        best = meeting[0]
    else:
        best = max(rows, key=lambda row: (row["zero_grad_fraction"], -row["eps"]))
        warnings.warn(f"No eps in {grid} zeroes {target:.0%} of the input gradients ({variant} GI); "
                      f"the best, eps={best['eps']:g}, zeroes {best['zero_grad_fraction']:.0%}.",
                      UserWarning, stacklevel=2)
    best["chosen"] = True
    return best["eps"], rows
