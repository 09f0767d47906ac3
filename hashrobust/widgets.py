"""Interactive explorers for the notebooks (ipywidgets 8, JupyterLab 4): sliders in, a static figure out.

Static first: a notebook run
headless (nbconvert, nbval) stores what `display` shows, never what a widget
callback draws, and GitHub, nbviewer and Jupyter Book run no widget code. So
`show()` first displays a PNG of the default setting with
`display(image, display_id=True)`, then the controls, and every slider move
replaces that PNG through `handle.update(image)`. Figures are
`matplotlib.figure.Figure` objects (never pyplot: nothing leaks or
auto-displays), drawn by pure functions (`ratio_figure`, ...). Setting a
slider's value in Python fires the observers a user's drag fires, so
`explorer.set(eps=0.2)` drives an explorer in tests, and `.state` keeps the
last numbers. What a slider selects is computed once and cached: a move costs
well under 1 s on a 2-core CPU (benchmarks/widgets.py). Importing this module
loads no model or data; the explorers load the zoo when built.

    from hashrobust.widgets import CompressionAttackExplorer
    CompressionAttackExplorer().show()

Shapes: N batch, C/H/W image, K classes.
"""
from __future__ import annotations

import io
import re
import warnings
from collections.abc import Callable, Mapping, Sequence

import ipywidgets as widgets
import numpy as np
import torch
import matplotlib.colors
from matplotlib.figure import Figure
from torch import Tensor, nn

from ._validation import check_choice, check_number
from .attacks import BIM, FGSM, PGD, Attack
from .data import ImageDataset, load_dataset
from .defenses import (DEFAULT_GRIDS, SATURATION_MARGIN, UNDERFLOW_MARGIN, GradientMaskingWarning, gradient_inhibition,
                       inhibition_report)
from .evaluation import success_rate, transfer
from .hashing import hash_positions, num_buckets
from .reports import OKABE_ITO as PALETTE
from .zoo import load_pretrained, standard_entries

__all__ = ["RATIOS", "ATTACKS", "example_hash", "RatioExplorer", "AdversarialExplorer", "CompressionAttackExplorer",
           "InhibitionExplorer", "ratio_figure", "adversarial_figure", "compression_attack_figure",
           "inhibition_figure", "RobustnessCurveExplorer", "ShootoutExplorer", "shootout_figure"]

RATIOS = (1, 2, 4, 8, 16, 32, 64)  # the zoo's compression ratios, a log2 scale
ATTACKS: dict[str, Callable[[nn.Module, float], Attack]] = {  # 20 steps of eps/8 reach any corner of the ball
    "FGSM": lambda model, eps: FGSM(model, eps=eps),
    "BIM": lambda model, eps: BIM(model, eps=eps, alpha=max(eps, 0.01) / 8, steps=20),
    "PGD": lambda model, eps: PGD(model, eps=eps, alpha=max(eps, 0.01) / 8, steps=20, seed=0),
}
OKABE_ITO = tuple(PALETTE.values())  # one colour per real weight in the bucket grid (at most 8)
BLUE, ORANGE = PALETTE["blue"], PALETTE["orange"]
MINUS = "\u2212"  # a typographic minus: "+w3" / "\u2212w3" read as a sign times real weight 3
_WIDE = {"style": {"description_width": "initial"}, "layout": widgets.Layout(width="460px")}


# ----------------------------------------------------------------------------- controls and helpers
def _ratio_slider(value: float = 8, ratios: Sequence[float] = RATIOS) -> widgets.SelectionSlider:
    """Compression ratio r on a log2 scale: only the zoo's ratios 1, 2, 4, ..., 64 can be chosen."""
    return widgets.SelectionSlider(options=[(f"{r:g}x", r) for r in ratios], value=value, continuous_update=False,
                                   description="compression ratio r (virtual / real weights)", **_WIDE)


def _eps_slider(value: float = 0.1, high: float = 0.3) -> widgets.FloatSlider:
    """Attack radius eps, L-inf, in pixel units (MNIST: 0..0.3, step 0.01)."""
    return widgets.FloatSlider(value=value, min=0, max=high, step=0.01, readout_format=".2f",
                               continuous_update=False, description="eps, L-inf radius (pixel units, 0-1)", **_WIDE)


def _probs(model: nn.Module, images: Tensor) -> Tensor:
    """Softmax probabilities (N, K) in float32, in eval mode; the model's mode is restored."""
    was_training = model.training
    try:
        with torch.no_grad():
            return model.eval()(images).softmax(1)
    finally:
        model.train(was_training)


def _pct(value: float) -> str:
    return f"{100 * value:.1f}%"


class _Explorer:
    """What every explorer shares: `sliders`, `controls`, `readout`, `state`, `set`, `figure()`, `show()`.

    A subclass builds its sliders and calls `_wire`; it defines `_compute(**slider values) -> state`
    (cached where costly), `_describe() -> readout HTML` and `_draw() -> Figure`.
    """

    def _wire(self, **sliders: widgets.ValueWidget) -> None:
        self.sliders = sliders
        self.readout = widgets.HTML()  # the numbers as text, beside the figure (accessibility, browser tests)
        self.controls = widgets.VBox([*sliders.values(), self.readout])
        self._handle = None
        for slider in sliders.values():
            slider.observe(self._update, names="value")
        self._update()

    def set(self, **values: object) -> None:
        """Move controls as a user would (each assignment fires the observers), e.g. set(ratio=8, eps=0.05)."""
        owner = f"{type(self).__name__}.set"
        for name, value in values.items():
            slider = self.sliders[check_choice(name, "control", self.sliders)]
            if isinstance(slider, widgets.FloatSlider):
                check_number(value, name, owner, low=slider.min, high=slider.max)
            else:
                allowed = [o[1] if isinstance(o, tuple) else o for o in slider.options]
                if value not in allowed:
                    raise ValueError(f"The '{name}' parameter of {owner} must be one of "
                                     f"{', '.join(map(str, allowed))}. Got {value!r} instead.")
            slider.value = value

    def _update(self, change: dict | None = None) -> None:
        self.state = self._compute(**{name: slider.value for name, slider in self.sliders.items()})
        self._figure: Figure | None = None
        self.readout.value = self._describe()
        if self._handle is not None:
            self._handle.update(self._image())

    def figure(self) -> Figure:
        """The figure of the current setting (drawn once per setting)."""
        if self._figure is None:
            self._figure = self._draw()
        return self._figure

    def _image(self):
        from IPython.display import Image

        buffer = io.BytesIO()
        self.figure().savefig(buffer, format="png", dpi=80)
        return Image(data=buffer.getvalue(), format="png", alt=re.sub("<[^>]+>", " ", self.readout.value))

    def show(self) -> None:
        """In a notebook: display a PNG of the current setting (what a saved notebook keeps), then the controls."""
        from IPython import display as ipython_display

        self._handle = ipython_display.display(self._image(), display_id=True)
        ipython_display.display(self.controls)


# ----------------------------------------------------------------------------- 01: ratio, accuracy, size, hash
def example_hash(ratio: float, seed: int = 0) -> tuple[Tensor, Tensor]:
    """(bucket, sign), each (8, 8), of an 8x8 layer at `ratio`; ratio 1 is the dense layer (no hash, as `compress`).

    A hash at ratio 1 would still collide (64 buckets, random positions); the zoo's ratio-1 models are dense.
    """
    if ratio == 1:
        return torch.arange(64).view(8, 8), torch.ones(8, 8)
    return hash_positions((8, 8), ratio, seed)


def ratio_figure(rows: Sequence[dict], ratio: float, seed: int = 0, title: str = "") -> Figure:
    """Clean accuracy and checkpoint size vs ratio (selected ratio circled), and an 8x8 layer's buckets and signs.

    Args:
        rows: one dict per ratio with "ratio", "clean_acc" in [0, 1] and "bytes" (as `RatioExplorer.rows`).
        ratio: the selected compression ratio; seed: the hash seed of the 8x8 example layer.
    """
    fig = Figure(figsize=(12, 3.8), layout="constrained")
    acc_ax, size_ax, hash_ax = fig.subplots(1, 3, width_ratios=(1, 1, 1.25))
    ratios = [row["ratio"] for row in rows]
    for ax, key, scale, label in ((acc_ax, "clean_acc", 100, "clean test accuracy (%)"),
                                  (size_ax, "bytes", 1 / 1024, "checkpoint size (KiB, log scale)")):
        ax.plot(ratios, [row[key] * scale for row in rows], "o-", color=BLUE)
        for row in rows:
            if row["ratio"] == ratio:
                ax.plot([ratio], [row[key] * scale], "o", ms=13, mfc="none", mec=ORANGE, mew=2.5, label="selected")
        ax.set_xscale("log", base=2)
        ax.set_xticks(RATIOS, [f"{r:g}" for r in RATIOS])
        ax.set(xlabel="compression ratio r", ylabel=label)
    size_ax.set_yscale("log")
    # a fixed 90-100% range: the zoo's 1-point spread must not look like a cliff
    acc_ax.set_ylim(90, 100)
    acc_ax.set_title(title, fontsize=9)
    bucket, sign = example_hash(ratio, seed)  # (8, 8) each
    k = num_buckets(64, ratio)
    if k <= len(OKABE_ITO):  # one colour per real weight, where a colour-blind-safe palette has enough of them
        colours = np.array([matplotlib.colors.to_rgb(c) for c in OKABE_ITO])[bucket.numpy()]
        hash_ax.imshow(0.45 * colours + 0.55, interpolation="nearest")  # pale, so the labels stay legible
    else:
        hash_ax.imshow(np.ones((8, 8, 3)), interpolation="nearest")
    for (i, j), b in np.ndenumerate(bucket.numpy()):
        hash_ax.text(j, i, f"{'+' if sign[i, j] > 0 else MINUS}w{b}", ha="center", va="center", fontsize=8)
    hash_ax.set_xticks(np.arange(-0.5, 8, 1), minor=True)
    hash_ax.set_yticks(np.arange(-0.5, 8, 1), minor=True)
    hash_ax.grid(which="minor", color="white", lw=1.5)
    hash_ax.tick_params(which="both", length=0, labelbottom=False, labelleft=False)
    how = (f"cell: sign and real weight ({MINUS}w3 = minus real weight 3)"
           + ("\ncolour: which real weight" if k <= len(OKABE_ITO) else ""))
    hash_ax.set_title(f"8x8 virtual weights stored as {k} real ones (ratio {ratio:g}, seed {seed})\n{how}"
                      if ratio != 1 else "ratio 1: dense,\neach virtual weight is its own real weight", fontsize=8)
    return fig


class RatioExplorer(_Explorer):
    """Notebook 01: pick a ratio; see the zoo's accuracy and checkpoint size, and how 64 weights share buckets.

    Args:
        dataset, arch: which zoo models (manifest entries) to plot.
        ratio: the initial ratio; seed: hash seed of the 8x8 example layer.
        manifest: a manifest dict (as `read_manifest()`); None reads the shipped one.

    Example:
        >>> RatioExplorer(ratio=8).state["clean_acc"]
        0.9783

    Used in: notebooks/01_hashednets.ipynb.
    """

    def __init__(self, dataset: str = "mnist", arch: str = "mlp3", ratio: float = 8, seed: int = 0,
                 manifest: Mapping[str, dict] | None = None) -> None:
        self.dataset, self.arch, self.seed = dataset, arch, seed
        entries = standard_entries(manifest).values()
        self.rows = sorted(({"ratio": e["ratio"], "clean_acc": e["clean_test_accuracy"], "bytes": e["bytes"],
                             "real": e["real_parameters"], "virtual": e["virtual_parameters"]}
                            for e in entries if e["dataset"] == dataset and e["arch"] == arch), key=lambda r: r["ratio"])
        if not self.rows:
            raise ValueError(f"The manifest has no {dataset} {arch} checkpoints; run `hashrobust zoo` first.")
        self._wire(ratio=_ratio_slider(ratio))

    def _compute(self, ratio: float) -> dict:
        row = next((row for row in self.rows if row["ratio"] == ratio), {})
        dense = next((row for row in self.rows if row["ratio"] == 1), {})
        bucket, sign = example_hash(ratio, self.seed)  # (8, 8) each
        return {"clean_acc": None, **row, "ratio": ratio, "dense_bytes": dense.get("bytes"),
                "bucket": bucket, "sign": sign}

    def _describe(self) -> str:
        s = self.state
        if s["clean_acc"] is None:
            return f"ratio {s['ratio']:g}: no {self.dataset} {self.arch} checkpoint in the zoo"
        size = f"checkpoint {s['bytes'] / 1024:,.0f} KiB"
        if s["dense_bytes"]:
            size += f" ({s['dense_bytes'] / s['bytes']:.1f}x smaller than dense)"
        return (f"ratio {s['ratio']:g}: {s['real']:,} real of {s['virtual']:,} virtual weights; "
                f"clean test accuracy {100 * s['clean_acc']:.2f}%; {size}")

    def _draw(self) -> Figure:
        return ratio_figure(self.rows, self.state["ratio"], self.seed, f"{self.dataset} {self.arch}: zoo checkpoints")


# ----------------------------------------------------------------------------- 02: one attack on a few images
def adversarial_figure(images: Tensor, adv_images: Tensor, clean_probs: Tensor, adv_probs: Tensor,
                       eps: float, attack: str = "FGSM") -> Figure:
    """One row per image: clean image, perturbation (colour map centred at 0, +-eps), adversarial image.

    Titles give the predicted label and its softmax confidence. Colour images show the channel mean of
    the perturbation.

    Shape: images, adv_images (N, C, H, W) in [0, 1]; clean_probs, adv_probs (N, K).
    """
    n = len(images)
    fig = Figure(figsize=(6.6, 2.1 * n), layout="constrained")
    axes = fig.subplots(n, 3, squeeze=False)
    limit = max(eps, 1e-3)
    for i, row in enumerate(axes):
        delta = (adv_images[i] - images[i]).mean(0)  # (H, W)
        for ax, image, probs, name in ((row[0], images[i], clean_probs[i], "clean"),
                                       (row[2], adv_images[i], adv_probs[i], f"{attack} eps {eps:.2f}")):
            shown = image[0] if len(image) == 1 else image.permute(1, 2, 0)  # (H, W) or (H, W, C)
            ax.imshow(shown.numpy(), cmap="gray", vmin=0, vmax=1)
            ax.set_title(f"{name}: {int(probs.argmax())} ({_pct(probs.max().item())})", fontsize=9)
        row[1].imshow(delta.numpy(), cmap="PuOr", vmin=-limit, vmax=limit)
        row[1].set_title(f"perturbation (+-{eps:.2f})", fontsize=9)
        for ax in row:
            ax.set_axis_off()
    return fig


class AdversarialExplorer(_Explorer):
    """Notebook 02: pick an attack and eps; see the clean image, the perturbation and the adversarial image.

    Args:
        model: the classifier (images in [0, 1]); None loads the zoo's mnist mlp3 (dense).
        data: the images and labels; None loads the MNIST test split. The first n are shown.
        attack: "FGSM", "BIM" or "PGD" (see ATTACKS); eps: initial L-inf radius in pixel units.

    Example:
        >>> explorer = AdversarialExplorer(n=2)
        >>> explorer.set(eps=0); bool((explorer.state["adv_images"] == explorer.images).all())
        True

    Used in: notebooks/02_adversarial_examples.ipynb.
    """

    def __init__(self, model: nn.Module | None = None, data: ImageDataset | None = None, n: int = 3,
                 attack: str = "FGSM", eps: float = 0.1) -> None:
        self.model = load_pretrained("mnist", "mlp3", 1) if model is None else model
        data = (load_dataset("mnist", "test") if data is None else data).subset(n)
        self.images, self.labels = data.images, data.labels  # (N, C, H, W), (N,)
        self.clean_probs = _probs(self.model, self.images)  # (N, K)
        self.cache: dict[tuple[str, float], tuple[Tensor, Tensor]] = {}
        attacks = widgets.Dropdown(options=list(ATTACKS), value=check_choice(attack, "attack", ATTACKS),
                                   description="attack", **_WIDE)
        self._wire(attack=attacks, eps=_eps_slider(eps))

    def _compute(self, attack: str, eps: float) -> dict:
        key = (attack, round(eps, 6))
        if key not in self.cache:
            adv_images = ATTACKS[attack](self.model, eps)(self.images)  # (N, C, H, W)
            self.cache[key] = adv_images, _probs(self.model, adv_images)
        adv_images, adv_probs = self.cache[key]
        return {"attack": attack, "eps": eps, "adv_images": adv_images, "adv_probs": adv_probs,
                "clean_pred": self.clean_probs.argmax(1), "clean_conf": self.clean_probs.amax(1),
                "adv_pred": adv_probs.argmax(1), "adv_conf": adv_probs.amax(1),
                "linf": (adv_images - self.images).flatten(1).abs().amax(1)}

    def _describe(self) -> str:
        s = self.state
        return "<br>".join(f"image {i} (label {int(self.labels[i])}): clean {int(s['clean_pred'][i])} "
                           f"({_pct(s['clean_conf'][i].item())}), {s['attack']} eps {s['eps']:.2f}: "
                           f"{int(s['adv_pred'][i])} ({_pct(s['adv_conf'][i].item())})" for i in range(len(self.images)))

    def _draw(self) -> Figure:
        s = self.state
        return adversarial_figure(self.images, s["adv_images"], self.clean_probs, s["adv_probs"], s["eps"], s["attack"])


# ----------------------------------------------------------------------------- 03: ratio x eps, white-box and transfer
def compression_attack_figure(rows: Sequence[dict], ratio: float, eps: float, n: int) -> Figure:
    """FGSM success vs ratio at one eps: white-box on each hashed model, and transferred from the dense one.

    Args:
        rows: one dict per ratio with "ratio", "white_box" and "transfer" success in [0, 1].
        ratio: the selected ratio (circled, its numbers printed); eps: the radius; n: images attacked.
    """
    fig = Figure(figsize=(6.0, 4.0), layout="constrained")
    ax = fig.subplots()
    ratios = [row["ratio"] for row in rows]
    for key, label, colour, marker in (("white_box", "white-box FGSM on the hashed model", BLUE, "o"),
                                       ("transfer", "transfer: FGSM crafted on the dense model", ORANGE, "s")):
        ax.plot(ratios, [100 * row[key] for row in rows], marker=marker, color=colour, label=label)
        for row in rows:
            if row["ratio"] == ratio:
                ax.plot([ratio], [100 * row[key]], marker, ms=13, mfc="none", mec="black", mew=2)
                ax.annotate(_pct(row[key]), (ratio, 100 * row[key]), xytext=(-10, 8), textcoords="offset points",
                            ha="right", fontsize=9)
    ax.set_xscale("log", base=2)
    ax.set_xticks(RATIOS, [f"{r:g}" for r in RATIOS])
    ax.set(xlabel="compression ratio r", ylabel="success rate (%)", ylim=(0, 105),
           title=f"FGSM eps {eps:.2f} on {n} MNIST test images (selected: r = {ratio:g})")
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.2))  # below the axes: never over a point
    return fig


class CompressionAttackExplorer(_Explorer):
    """Notebook 03: pick a ratio and eps; FGSM success white-box and transferred dense -> hashed.

    Each (ratio, eps) is computed once with `success_rate` and `transfer` and cached; a new eps
    computes every ratio's cell (one FGSM per model, milliseconds each) so the whole curve is drawn.

    Args:
        models: {ratio: model}, including ratio 1 (the transfer source); None loads the zoo's
            mnist mlp3 at ratios 1..64 (on first use).
        data: images and true labels; None loads the MNIST test split. The first n are attacked.
        ratio, eps: the initial setting.

    Used in: notebooks/03_attacking_compressed_models.ipynb.
    """

    def __init__(self, models: Mapping[float, nn.Module] | None = None, data: ImageDataset | None = None,
                 n: int = 200, ratio: float = 8, eps: float = 0.1) -> None:
        self.models = dict(models or {})
        self.ratios = sorted(self.models) if models else RATIOS
        if 1 not in self.ratios:
            raise ValueError(f"The 'models' of CompressionAttackExplorer must include ratio 1 (the dense source "
                             f"of the transfer attack). Got ratios {self.ratios} instead.")
        data = (load_dataset("mnist", "test") if data is None else data).subset(n)
        self.images, self.labels = data.images, data.labels
        self.cache: dict[tuple[float, float], dict] = {}
        self._wire(ratio=_ratio_slider(ratio, self.ratios), eps=_eps_slider(eps))

    def model(self, ratio: float) -> nn.Module:
        """The model at `ratio`, loaded from the zoo on first use."""
        if ratio not in self.models:
            self.models[ratio] = load_pretrained("mnist", "mlp3", ratio)
        return self.models[ratio]

    def _cell(self, ratio: float, eps: float) -> dict:
        key = (ratio, round(eps, 6))
        if key not in self.cache:
            model, dense = self.model(ratio), self.model(1)
            self.cache[key] = {
                "ratio": ratio, "eps": eps,
                "white_box": success_rate(model, FGSM(model, eps=eps), self.images, self.labels)["success"],
                "transfer": transfer(dense, model, FGSM(dense, eps=eps), self.images, self.labels)["success"]}
        return self.cache[key]

    def _compute(self, ratio: float, eps: float) -> dict:
        rows = [self._cell(r, eps) for r in self.ratios]
        return {**self._cell(ratio, eps), "rows": rows}

    def _describe(self) -> str:
        s = self.state
        return (f"ratio {s['ratio']:g}, FGSM eps {s['eps']:.2f}, {len(self.images)} images: "
                f"white-box success {_pct(s['white_box'])}; transfer dense -> hashed success {_pct(s['transfer'])}")

    def _draw(self) -> Figure:
        return compression_attack_figure(self.state["rows"], self.state["ratio"], self.state["eps"], len(self.images))


# ----------------------------------------------------------------------------- 05: gradient inhibition
def inhibition_figure(before: dict, after: dict, strength: float, eps: float) -> Figure:
    """Logit-margin histograms before/after GI, and the masking numbers side by side.

    Args:
        before, after: `InhibitionExplorer` statistics: "margin" (N,), "saturated" (fraction of
            softmax maxima exactly 1.0 in float32), "zero_grad_fraction", "clean_acc", "success".
        strength: the GI strength; eps: the FGSM radius of "success".
    """
    fig = Figure(figsize=(10.0, 3.4), layout="constrained")
    hist_ax, bar_ax = fig.subplots(1, 2)
    top = max(1e3, float(after["margin"].max()), float(before["margin"].max()))
    bins = np.geomspace(1e-2, top * 1.5, 40)
    for stats, label, colour in ((before, "before GI", BLUE), (after, f"after GI, strength {strength:g}", ORANGE)):
        hist_ax.hist(stats["margin"].clamp(min=1e-2).numpy(), bins=bins, histtype="step", lw=2, color=colour,
                     label=label)
    hist_ax.axvline(SATURATION_MARGIN, color="black", ls="--",
                    label=f"float32: p_y rounds to 1 (24 ln 2 = {SATURATION_MARGIN:.1f})")
    hist_ax.axvline(UNDERFLOW_MARGIN, color="black", ls=":", label="float32: other p_i underflow, gradient 0")
    hist_ax.set(xscale="log", xlabel="top-1 minus top-2 logit (log scale)", ylabel="images",
                title="logit margins")
    hist_ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncols=2)  # below: not over the data
    names = ("softmax max\n= 1.0 exactly", "zero input\ngradient", "clean\naccuracy", f"FGSM eps {eps:.2f}\nsuccess")
    keys = ("saturated", "zero_grad_fraction", "clean_acc", "success")
    x = np.arange(len(keys))
    for offset, stats, label, colour in ((-0.2, before, "before", BLUE), (0.2, after, "after", ORANGE)):
        values = [100 * stats[k] for k in keys]
        bars = bar_ax.bar(x + offset, values, width=0.4, color=colour, label=label)
        bar_ax.bar_label(bars, fmt="%.1f", fontsize=8)
    bar_ax.set_xticks(x, names, fontsize=8)
    bar_ax.set(ylabel="% of images", ylim=(0, 125), title="what GI changes (float32)")
    bar_ax.legend(fontsize=8, loc="upper right", ncols=2)
    return fig


class InhibitionExplorer(_Explorer):
    """Notebook 05: pick a GI strength; see the margins grow until float32 saturates and gradients vanish.

    Args:
        model: the undefended model; None loads the zoo's mnist mlp3 (dense). It is not modified.
        data: images and true labels; None loads the MNIST test split. The first n are used.
        strength: initial GI strength, one of DEFAULT_GRIDS[variant]; variant: as in `gradient_inhibition`.
        eps: L-inf radius (pixel units) of the FGSM whose success is reported.

    Used in: notebooks/05_gradient_inhibition.ipynb.
    """

    def __init__(self, model: nn.Module | None = None, data: ImageDataset | None = None, n: int = 200,
                 strength: float = 0.1, variant: str = "constant", eps: float = 0.1) -> None:
        self.model = load_pretrained("mnist", "mlp3", 1) if model is None else model
        self.variant, self.eps = check_choice(variant, "variant", DEFAULT_GRIDS), eps
        data = (load_dataset("mnist", "test") if data is None else data).subset(n)
        self.images, self.labels = data.images, data.labels
        self.before = self.stats(self.model)
        self.cache: dict[float, dict] = {}
        slider = widgets.SelectionSlider(options=[(f"{v:g}", v) for v in DEFAULT_GRIDS[variant]], value=strength,
                                         continuous_update=False, description=f"GI strength ({variant} variant)",
                                         **_WIDE)
        self._wire(strength=slider)

    def stats(self, model: nn.Module) -> dict:
        """Margins, saturated softmax, zero-gradient fraction, clean accuracy and FGSM success of `model`."""
        with warnings.catch_warnings():  # the readout states the masking instead of a warning per slider move
            warnings.simplefilter("ignore", GradientMaskingWarning)
            report = inhibition_report(model, self.images, self.labels)
        saturated = (_probs(model, self.images).amax(1) == 1).float().mean().item()
        success = success_rate(model, FGSM(model, eps=self.eps), self.images, self.labels)["success"]
        return {**report, "saturated": saturated, "success": success}

    def _compute(self, strength: float) -> dict:
        if strength not in self.cache:
            self.cache[strength] = self.stats(gradient_inhibition(self.model, strength, self.variant, seed=0))
        return {"strength": strength, "before": self.before, "after": self.cache[strength]}

    def _describe(self) -> str:
        b, a = self.before, self.state["after"]
        return (f"GI strength {self.state['strength']:g} ({self.variant}), before -> after: zero input gradients "
                f"{_pct(b['zero_grad_fraction'])} -> {_pct(a['zero_grad_fraction'])}; median logit margin "
                f"{b['median_margin']:.1f} -> {a['median_margin']:.1f}; clean accuracy {_pct(b['clean_acc'])} -> "
                f"{_pct(a['clean_acc'])}; FGSM eps {self.eps:.2f} success {_pct(b['success'])} -> {_pct(a['success'])}")

    def _draw(self) -> Figure:
        return inhibition_figure(self.before, self.state["after"], self.state["strength"], self.eps)


# ----------------------------------------------------------------------------- 07: robust accuracy against eps
class RobustnessCurveExplorer(_Explorer):
    """Notebook 07: pick eps; see every model's robust accuracy there, on the precomputed curves.

    Args:
        curves: rows of `adversarial_study.eps_curves` (results/<dataset>/at_eps_curves.csv); the slider
            offers their eps values.
        eps: the initial radius, one of them (None: the one the zoo was trained for, else the largest).

    Used in: notebooks/07_adversarial_training.ipynb.
    """

    def __init__(self, curves: Sequence[dict], eps: float | None = None) -> None:
        from .adversarial_study import EPS, _label, eps_curve_figure

        if not curves:
            raise ValueError("The 'curves' of RobustnessCurveExplorer must be a non-empty list of eps_curves rows. "
                             "Got an empty one instead.")
        self.curves, self._figure_of, self._label = list(curves), eps_curve_figure, _label
        values = sorted({r["eps"] for r in self.curves})
        trained = EPS[self.curves[0]["dataset"]]
        default = next((v for v in values if abs(v - trained) < 1e-9), values[-1])
        scale = 255 if self.curves[0]["dataset"] == "cifar10" else 1
        slider = widgets.SelectionSlider(options=[(f"{v * scale:.3g}" + ("/255" if scale == 255 else ""), v)
                                                  for v in values], value=default if eps is None else eps,
                                         continuous_update=False, description="eps, L-inf radius", **_WIDE)
        self._wire(eps=slider)

    def _compute(self, eps: float) -> dict:
        return {"eps": eps, "rows": [r for r in self.curves if r["eps"] == eps]}

    def _describe(self) -> str:
        parts = [f"{self._label(r['ratio'], r['training'])} {_pct(r['robust_acc'])}" for r in self.state["rows"]]
        return f"eps {self.state['eps']:.4g}, robust accuracy: " + "; ".join(parts)

    def _draw(self) -> Figure:
        return self._figure_of(self.curves, self.state["eps"])


# ----------------------------------------------------------------------------- 08: the shoot-out
SHOOTOUT_ORDER = ("dense", "hashed", "pruned", "quantized", "small dense")  # shootout.METHODS, after the reference
# (label, attack: the start of the rows' "attack" ("clean": any row of the model), key): the bars of each method
SHOOTOUT_METRICS = (("clean accuracy", "clean", "clean_acc"), ("PGD-40 white-box success", "PGD-40", "success"),
                    ("PGD-40 transfer from dense", "transfer: PGD-40 from the dense model", "success"),
                    ("ensemble robust accuracy", "ensemble", "robust_acc"))
_HATCHES = ("", "//", "..", "xx")  # one per metric: the bars differ by pattern as well as by colour


def _shootout_row(rows: Sequence[dict], method: str, ratio: float, attack: str = "clean") -> dict:
    """The first row of `method` at target ratio `ratio` whose attack starts with `attack` ("clean": any)."""
    for row in rows:
        if row["method"] == method and row["ratio_target"] == ratio and (attack == "clean" or
                                                                          row["attack"].startswith(attack)):
            return row
    raise ValueError(f"The shoot-out rows have no {method!r} row at ratio {ratio:g}"
                     + ("" if attack == "clean" else f" for attack {attack!r}")
                     + "; pass the rows of one `hashrobust shootout` run (results/mnist/shootout-*.csv).")


def _shootout_value(rows: Sequence[dict], method: str, ratio: float, attack: str, key: str) -> dict:
    """{"value", "low", "high"} (95% Wilson interval) of `key` for `method` at `ratio` under `attack`."""
    row = _shootout_row(rows, method, ratio, attack)
    return {"value": row[key], "low": row[key + "_low"], "high": row[key + "_high"]}


def _shootout_methods(rows: Sequence[dict]) -> list[str]:
    return [m for m in SHOOTOUT_ORDER if any(r["method"] == m for r in rows)]


def _check_shootout_ratio(rows: Sequence[dict], ratio: float, owner: str) -> list[float]:
    """The rows' storage ratios other than the dense 1; ValueError naming them unless `ratio` is one."""
    ratios = sorted({r["ratio_target"] for r in rows if r["ratio_target"] != 1})
    if ratio not in ratios:
        raise ValueError(f"The 'ratio' of {owner} must be one of {', '.join(f'{r:g}' for r in ratios)} (the rows' "
                         f"storage ratios). Got {ratio!r} instead.")
    return ratios


def shootout_figure(rows: Sequence[dict], ratio: float, method: str) -> Figure:
    """One bar group per method at storage ratio `ratio` (the dense model beside them): its clean accuracy,
    PGD-40 white-box and transferred success and ensemble robust accuracy, with 95% intervals.

    The selected `method`'s group is drawn solid and numbered, the others pale; each tick names the storage
    ratio a method reached on its values and with its index and codebook bits.

    Args:
        rows: rows of `shootout.run_shootout` (one arch and training).
        ratio: one of the rows' "ratio_target" other than 1; method: one of the rows' methods.
    """
    methods = _shootout_methods(rows)
    check_choice(method, "method", methods)
    _check_shootout_ratio(rows, ratio, "shootout_figure")
    fig = Figure(figsize=(10.0, 4.0), layout="constrained")
    ax = fig.add_subplot()
    width = 0.8 / len(SHOOTOUT_METRICS)
    x = np.arange(len(methods))
    ticks = []
    for name in methods:
        reached = _shootout_row(rows, name, 1 if name == "dense" else ratio)
        ticks.append(f"{name}\n{reached['ratio']:.1f}x on values, {reached['ratio_all']:.1f}x all")
    for j, (label, attack, key) in enumerate(SHOOTOUT_METRICS):
        cells = [_shootout_value(rows, name, 1 if name == "dense" else ratio, attack, key) for name in methods]
        values = np.array([100 * c["value"] for c in cells])
        errors = np.array([values - [100 * c["low"] for c in cells], [100 * c["high"] for c in cells] - values])
        bars = ax.bar(x + (j - (len(SHOOTOUT_METRICS) - 1) / 2) * width, values, width, yerr=errors, capsize=2,
                      color=OKABE_ITO[j], hatch=_HATCHES[j], edgecolor="white", label=label,
                      error_kw={"elinewidth": 0.8, "ecolor": "black"})
        for bar, name in zip(bars, methods):
            bar.set_alpha(1.0 if name in (method, "dense") else 0.35)
        ax.bar_label(bars, labels=[f"{v:.1f}" if name == method else "" for v, name in zip(values, methods)],
                     fontsize=7, padding=2)
    first = rows[0]
    ax.set_xticks(x, ticks, fontsize=8)
    ax.set(ylabel="% of test images", ylim=(0, 118),
           title=f"MNIST {first['arch']} ({first['training']} training) at storage ratio {ratio:g}: L-inf eps "
                 f"{first['eps']:g}, first {first['n']} test images (selected: {method})")
    ax.title.set_fontsize(9)
    ax.legend(fontsize=8, ncols=len(SHOOTOUT_METRICS), loc="upper center")
    return fig


class ShootoutExplorer(_Explorer):
    """Notebook 08: pick a storage budget and a method; compare it with the others at the same storage.

    Nothing is computed: the rows are a committed shoot-out (`hashrobust shootout`), so a move only redraws.

    Args:
        rows: rows of `shootout.run_shootout` for one arch and training
            (results/mnist/shootout-<arch>-<training>.csv, read with `reports.read_results`).
        ratio: the initial storage ratio, one of the rows' "ratio_target" (the slider offers those but 1).
        method: the initial method, one of the rows' methods ("hashed", "pruned", "quantized", "small dense").

    Example:
        >>> from hashrobust.reports import read_results
        >>> explorer = ShootoutExplorer(read_results("mnist", "shootout-mlp3-standard"), ratio=64)
        >>> explorer.set(method="pruned"); explorer.state["ratio"], explorer.state["method"]
        (64, 'pruned')

    Used in: notebooks/08_compression_and_robustness.ipynb.
    """

    def __init__(self, rows: Sequence[dict], ratio: float = 8, method: str = "hashed") -> None:
        self.rows = list(rows)
        runs = {(r["arch"], r["training"]) for r in self.rows}
        if len(runs) != 1:
            raise ValueError(f"The 'rows' of ShootoutExplorer must come from one shoot-out run (one arch and "
                             f"training). Got {sorted(runs) or 'no rows'} instead.")
        self.ratios = _check_shootout_ratio(self.rows, ratio, "ShootoutExplorer")
        self.methods = [m for m in _shootout_methods(self.rows) if m != "dense"]
        check_choice(method, "method", self.methods)
        budget = widgets.SelectionSlider(options=[(f"1/{r:g} of the dense FC weights' bits", r) for r in self.ratios],
                                         value=ratio, continuous_update=False, description="storage budget", **_WIDE)
        dropdown = widgets.Dropdown(options=self.methods, value=method, description="method", **_WIDE)
        self._wire(ratio=budget, method=dropdown)

    def _compute(self, ratio: float, method: str) -> dict:
        values = {label: _shootout_value(self.rows, method, ratio, attack, key)
                  for label, attack, key in SHOOTOUT_METRICS}
        reached = _shootout_row(self.rows, method, ratio)
        return {"ratio": ratio, "method": method, "values": values, "storage_ratio": reached["ratio"],
                "ratio_all": reached["ratio_all"]}

    def _describe(self) -> str:
        s = self.state
        parts = [f"{label} {_pct(v['value'])}" for label, v in s["values"].items()]
        return (f"{s['method']} at storage ratio {s['ratio']:g} ({s['storage_ratio']:.1f} on values, "
                f"{s['ratio_all']:.1f} counting indices and codebooks): " + "; ".join(parts))

    def _draw(self) -> Figure:
        return shootout_figure(self.rows, self.state["ratio"], self.state["method"])
