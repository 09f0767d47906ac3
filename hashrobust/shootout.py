"""The compression shoot-out at equal storage: HashedNets against pruning, quantisation and a small dense network.

Hardware shrinks a network in more ways than hashing. At a storage ratio r (the dense fully connected
weights' bits over the bits of the values a method stores for them) this module builds, from a trained
dense model, each contender for its fully connected layers:

    hashed        HashedNets (Chen et al., ICML 2015): K = ceil(N / r) real weights shared through a
                  hash; nothing else stored but a seed (layers.compress).
    pruned        global magnitude pruning (Han, Pool, Tran, Dally, NeurIPS 2015) keeping N / r weights,
                  fine-tuned under its mask (torch.nn.utils.prune); stores the values and their indices.
    quantized     k-bit weights (r = 32 / k; below 1 bit per weight with pruning: keep a fraction f,
                  r = 32 / (k f)) with 8-bit activations, trained quantisation-aware with the
                  straight-through estimator (Bengio, Leonard, Courville 2013; Jacob et al., CVPR 2018).
                  1 bit: sign(w) * mean|w| (XNOR-Net, Rastegari et al. 2016); 2 bits: ternary with
                  threshold 0.7 mean|w| (TWN, Li, Zhang, Liu 2016); 3+ bits: uniform symmetric levels.
    small dense   the "equivalent-size" network of HashedNets' Table 1: the same architecture with its
                  hidden fully connected widths divided by r, so it has about N / r weights.

`storage` counts what each one stores: values, indices (pruning: a CSR column index per kept weight
and a row pointer per row) and codebooks (a quantisation scale per layer), beside the ratio on values.

Quantised inference is not differentiable: the rounding of the activations has derivative 0 almost
everywhere, so an attack that differentiates the quantised model gets no gradient (gradient masking,
Bernhard et al., "Impact of Low-bitwidth Quantization on the Adversarial Robustness for Embedded Neural
Networks", CW 2019). `bpda` returns the same model with the rounding's backward replaced by the identity
(BPDA with the straight-through approximation, Athalye, Carlini, Wagner, ICML 2018, Sec. 4.1): its
forward pass is unchanged, so the same predictions are attacked with a useful gradient.

The protocol: docs/protocol.md §10. Shapes: N batch, I/O in/out features.
"""
from __future__ import annotations

import copy
import math
import os
from dataclasses import replace
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils import prune as torch_prune

from ._validation import check_choice, check_number, evaluating
from .adversarial_training import AdversarialRecipe
from .attacks import FGSM, PGD
from .data import ImageDataset, load_dataset
from .evaluation import ensemble_attacks, robust_accuracy, success_rate, transfer
from .layers import _HashedLayer, compress
from .models import ARCHS, _lenet, _mlp
from .reports import rounded, with_interval, write_csv
from .train import RECIPES, train
from .zoo import checkpoint_name, load_pretrained, read_manifest

__all__ = ["QuantizedLinear", "prune", "quantize", "bpda", "equivalent_size", "storage", "build_contenders",
           "evaluate_contenders", "run_shootout", "shootout_markdown", "write_shootout", "quantization_for",
           "METHODS", "QUANTIZATION_AT"]

METHODS = ("hashed", "pruned", "quantized", "small dense")
# Which (bits, kept fraction) reaches each storage ratio on the weight values: 32 / (bits * kept).
QUANTIZATION_AT = {8: (4, 1.0), 64: (2, 0.25)}
ACTIVATION_BITS = 8
_RATES = ("n", "clean_acc", "clean_acc_low", "clean_acc_high", "robust_acc", "robust_acc_low", "robust_acc_high",
          "success", "success_low", "success_high")


def _fc_layers(model: nn.Module, owner: str) -> list[nn.Linear]:
    hashed = [name for name, m in model.named_modules() if isinstance(m, _HashedLayer)]
    if hashed:
        raise ValueError(f"{owner} needs a dense model; {', '.join(hashed)} are hashed layers. Start from the "
                         f"dense (ratio 1) model, e.g. load_pretrained(dataset, arch, 1).")
    layers = [m for m in model.modules() if type(m) is nn.Linear]
    if not layers:
        raise ValueError(f"{owner} found no nn.Linear layer in the model: it compresses fully connected layers.")
    return layers


def prune(model: nn.Module, ratio: float) -> nn.Module:
    """A copy of the dense `model` with its fully connected weights globally magnitude-pruned to 1 / ratio of them.

    The masks stay attached (torch.nn.utils.prune's reparametrisation) so fine-tuning keeps the pruned
    weights at 0; `storage` counts the kept ones. Biases are kept whole.

    Example:
        >>> pruned = prune(load_pretrained("mnist", "mlp3"), 8)
        >>> sum(int((m.weight != 0).sum()) for m in pruned.modules() if isinstance(m, nn.Linear))
        99250
    """
    check_number(ratio, "ratio", "prune", low=1)
    model = copy.deepcopy(model)
    layers = _fc_layers(model, "prune")
    total = sum(m.weight.numel() for m in layers)
    torch_prune.global_unstructured([(m, "weight") for m in layers], pruning_method=torch_prune.L1Unstructured,
                                    amount=total - math.ceil(total / ratio))
    return model


def quantization_for(ratio: float) -> tuple[int, float]:
    """(bits, kept fraction) whose stored values take 1 / ratio of the dense bits: QUANTIZATION_AT's choice, else
    round(32 / ratio) bits (1 to 8) unpruned, and below 1 bit per weight 1 bit keeping 32 / ratio of the weights.

    Example:
        >>> quantization_for(8), quantization_for(64), quantization_for(4), quantization_for(128)
        ((4, 1.0), (2, 0.25), (8, 1.0), (1, 0.25))
    """
    check_number(ratio, "ratio", "quantization_for", low=4)
    if ratio in QUANTIZATION_AT:
        return QUANTIZATION_AT[ratio]
    if ratio <= 32:
        return max(1, min(8, round(32 / ratio))), 1.0
    return 1, 32 / ratio


def _level_weights(w: Tensor, bits: int, mask: Tensor | None = None) -> Tensor:
    """w rounded to its k-bit codebook: 1 bit XNOR-Net, 2 bits TWN ternary, 3+ bits uniform symmetric.

    The 1- and 2-bit statistics (XNOR-Net's scale, TWN's threshold and alpha: means of |w|) are taken over
    the weights `mask` keeps: a pruned weight is not stored, so it must not pull the mean towards 0.
    """
    magnitude = w.abs()
    stored = magnitude if mask is None else magnitude[mask.bool()]
    if stored.numel() == 0:
        return torch.zeros_like(w)
    if bits == 1:
        return w.sign() * stored.mean()
    if bits == 2:
        threshold = 0.7 * stored.mean()
        kept = magnitude > threshold
        alpha = magnitude[kept].mean() if kept.any() else magnitude.new_zeros(())
        return torch.where(kept, w.sign() * alpha, torch.zeros_like(w))
    levels = 2 ** (bits - 1) - 1
    scale = magnitude.max().clamp(min=torch.finfo(w.dtype).tiny) / levels
    return (w / scale).round().clamp(-levels, levels) * scale


class QuantizedLinear(nn.Module):
    """A fully connected layer computing with k-bit weights and 8-bit activations, trained through the rounding.

    Forward: y = Q_a(x) Q_w(w * mask)^T + b. The weights' rounding always passes the gradient straight
    through (w gets the gradient of its rounded value, which is how quantisation-aware training learns).
    The activations' rounding (symmetric 8-bit over [-range, range], range calibrated by `quantize`)
    does so only while `straight_through` is True (training, and `bpda`); otherwise its derivative is
    the true one, 0, and so is every input gradient through it.

    Args:
        linear: the dense layer to start from (its weight and bias are copied).
        bits: weight bits, 1 to 8.
        mask: optional 0/1 tensor of the weight's shape: the kept weights (pruning before quantising).
    """

    def __init__(self, linear: nn.Linear, bits: int, mask: Tensor | None = None) -> None:
        super().__init__()
        self.bits = int(check_number(bits, "bits", "QuantizedLinear", low=1, high=8, integer=True))
        self.weight = nn.Parameter(linear.weight.detach().clone())
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach().clone())
        self.register_buffer("mask", torch.ones_like(self.weight) if mask is None else mask.to(self.weight))
        self.register_buffer("activation_range", torch.ones(()))
        self.straight_through = True

    def quantized_weight(self) -> Tensor:
        """The k-bit weight the layer computes with (what hardware stores, with the per-layer scale)."""
        w = self.weight * self.mask
        return _level_weights(w.detach(), self.bits, self.mask) * self.mask

    def forward(self, x: Tensor) -> Tensor:
        w = self.weight * self.mask
        w = w + (self.quantized_weight() - w).detach()  # straight-through for the weights
        levels = 2 ** (ACTIVATION_BITS - 1) - 1
        scale = self.activation_range / levels
        x_q = (x / scale).round().clamp(-levels, levels) * scale
        if self.straight_through:
            x_q = x_q.detach() + (x - x.detach())  # exactly x_q forward, the identity backward
        return F.linear(x_q, w, self.bias)

    def extra_repr(self) -> str:
        return (f"in_features={self.weight.shape[1]}, out_features={self.weight.shape[0]}, bits={self.bits}, "
                f"kept={self.mask.mean().item():.3g}, straight_through={self.straight_through}")


def quantize(model: nn.Module, bits: int, keep: float = 1.0, calibration: Tensor | None = None) -> nn.Module:
    """A copy of the dense `model` whose fully connected layers are `QuantizedLinear` (k-bit weights, 8-bit inputs).

    Args:
        model: a dense classifier; it is not modified.
        bits: weight bits, 1 to 8 (QUANTIZATION_AT: 4 bits for ratio 8; 2 bits keeping 1/4 for 64).
        keep: fraction of the fully connected weights kept by global magnitude pruning first, in (0, 1].
        calibration: images (N, C, H, W) whose activations set each layer's 8-bit input range (the
            largest absolute input seen, on `model`'s device); None keeps range 1 (set it before use).

    The copy is in training mode's straight-through setting for fine-tuning; call `bpda(model, False)`
    for the quantised model's own (zero) activation derivative, what a naive attacker differentiates.
    """
    check_number(keep, "keep", "quantize", low=0, high=1)
    if keep == 0:
        raise ValueError("The 'keep' of quantize must be in (0, 1]: the fraction of weights kept. Got 0 instead.")
    _fc_layers(model, "quantize")
    model = prune(model, 1 / keep) if keep < 1 else copy.deepcopy(model)
    layers = {name: m for name, m in model.named_modules() if type(m) is nn.Linear}
    for name, linear in layers.items():
        mask = getattr(linear, "weight_mask", None)
        if mask is not None:
            torch_prune.remove(linear, "weight")
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, child, QuantizedLinear(linear, bits, mask))
    if calibration is not None:
        _calibrate(model, calibration)
    return model


@torch.no_grad()
def _calibrate(model: nn.Module, images: Tensor, batch_size: int = 500) -> None:
    """Each QuantizedLinear's input range: the largest absolute input it sees on `images`, in eval mode."""
    layers = [m for m in model.modules() if isinstance(m, QuantizedLinear)]
    for layer in layers:
        layer.activation_range.zero_()

    def widen(layer: QuantizedLinear, args: tuple[Tensor, ...]) -> None:
        layer.activation_range.copy_(torch.maximum(layer.activation_range, args[0].abs().max()))

    hooks = [layer.register_forward_pre_hook(widen) for layer in layers]
    device = next(model.parameters()).device
    try:
        with evaluating(model):
            for i in range(0, len(images), batch_size):
                model(images[i:i + batch_size].to(device))
    finally:
        for hook in hooks:
            hook.remove()


def bpda(model: nn.Module, straight_through: bool = True) -> nn.Module:
    """A copy of a quantised model whose activation rounding back-propagates as the identity (BPDA), or as 0.

    The forward pass, hence every prediction, is unchanged; only what a gradient attack sees differs.
    Paper: Athalye, Carlini, Wagner, ICML 2018, Sec. 4.1 (BPDA, the straight-through special case).
    """
    model = copy.deepcopy(model)
    layers = [m for m in model.modules() if isinstance(m, QuantizedLinear)]
    if not layers:
        raise ValueError("bpda needs a quantised model (from `quantize`); this one has no QuantizedLinear layer.")
    for layer in layers:
        layer.straight_through = straight_through
    return model


def equivalent_size(arch: str, ratio: float) -> nn.Sequential:
    """HashedNets' "equivalent-size" dense network: `arch` with its hidden FC widths divided by `ratio`.

    mlp3 784-1000-10 becomes 784-h-10 and lenet's 800-500-10 head 800-h-10, h = round(width / ratio)
    (at least 1), so the FC layers hold about 1 / ratio of the weights. Freshly initialised.

    Example:
        >>> [m.out_features for m in equivalent_size("mlp3", 8) if isinstance(m, nn.Linear)]
        [125, 10]
    """
    check_choice(arch, "arch", [a for a in ARCHS if a in ("mlp3", "lenet")])
    check_number(ratio, "ratio", "equivalent_size", low=1)
    if arch == "mlp3":
        return _mlp([784, max(1, round(1000 / ratio)), 10])
    model = _lenet()
    hidden = max(1, round(500 / ratio))
    model[-3], model[-1] = nn.Linear(800, hidden), nn.Linear(hidden, 10)
    return model


def storage(model: nn.Module, dense_weights: int) -> dict:
    """What a compressed model stores for its fully connected weights, in bits, against the dense model's.

    Args:
        model: hashed, pruned (masks attached or removed), quantised, or a small dense network.
        dense_weights: the dense model's fully connected weight count N (the reference: N x 32 bits).

    Returns:
        {"values": stored weight values, "value_bits", "index_bits" (CSR: ceil(log2 I) bits per kept
        weight plus a 32-bit pointer per row, for pruned layers), "codebook_bits" (a 32-bit scale per
        quantised layer), "ratio": 32 N / value_bits, "ratio_all": 32 N / all bits}.

    Example:
        >>> dense = load_pretrained("mnist", "mlp3")
        >>> storage(compress(dense, 8), 794000)["ratio"] > 7.9
        True
    """
    values = value_bits = index_bits = codebook_bits = 0
    for m in model.modules():
        if isinstance(m, _HashedLayer):
            values += m.weight.numel()
            value_bits += 32 * m.weight.numel()
        elif isinstance(m, QuantizedLinear):
            kept = int(m.mask.sum())
            values += kept
            value_bits += m.bits * kept
            codebook_bits += 32
            if kept < m.mask.numel():
                index_bits += kept * math.ceil(math.log2(m.mask.shape[1])) + 32 * (m.mask.shape[0] + 1)
        elif type(m) is nn.Linear:  # dense, or pruned: non-zeros are what is stored (the mask's, while attached)
            kept, numel = int(torch.count_nonzero(getattr(m, "weight_mask", m.weight))), m.weight.numel()
            values += kept
            value_bits += 32 * kept
            if kept < numel:
                index_bits += kept * math.ceil(math.log2(m.weight.shape[1])) + 32 * (m.weight.shape[0] + 1)
    return {"values": values, "value_bits": value_bits, "index_bits": index_bits, "codebook_bits": codebook_bits,
            "ratio": 32 * dense_weights / value_bits,
            "ratio_all": 32 * dense_weights / (value_bits + index_bits + codebook_bits)}


# ----------------------------------------------------------------------------- the experiment
def build_contenders(dense: nn.Module, arch: str, ratio: float, train_set: ImageDataset, epochs: int = 3,
                     adversarial: AdversarialRecipe | None = None, calibration: Tensor | None = None,
                     device: torch.device | str = "cpu", seed: int = 0) -> dict[str, nn.Module]:
    """The four contenders at storage ratio `ratio`, each from `dense` with the same fine-tuning budget.

    hashed, pruned and quantized are compressed from `dense` and fine-tuned for `epochs` epochs at a
    fifth of the arch's learning rate (as `hashrobust train --from-dense`); "small dense" is trained
    from scratch with the arch's own recipe (HashedNets trains its equivalent-size network that way).
    With `adversarial`, every one of them is (fine-)tuned adversarially; start from an adversarially
    trained dense model then. The quantised model's 8-bit input ranges are calibrated on `calibration`
    (None: the first 1000 training images) before fine-tuning and again after it, and it comes back in
    its honest setting (`bpda(m, False)`). The models come back in eval mode on `device`.
    """
    check_choice(arch, "arch", ("mlp3", "lenet"))
    base = RECIPES[arch]
    tune = replace(base, epochs=epochs, lr=base.lr / 5, seed=seed, adversarial=adversarial, augment=False)
    bits, keep = quantization_for(ratio)
    if calibration is None:
        calibration = train_set.images[:1000]
    contenders = {"hashed": compress(dense, ratio), "pruned": prune(dense, ratio),
                  "quantized": quantize(dense, bits, keep, calibration=calibration)}
    torch.manual_seed(seed)
    contenders["small dense"] = equivalent_size(arch, ratio)
    for name, model in contenders.items():
        recipe = replace(base, seed=seed, adversarial=adversarial) if name == "small dense" else tune
        train(model, train_set, recipe, device=device, progress=False)
    _calibrate(contenders["quantized"], calibration)  # fine-tuning moved the activations
    contenders["quantized"] = bpda(contenders["quantized"], straight_through=False)
    return {name: model.to(device).eval() for name, model in contenders.items()}


def evaluate_contenders(contenders: dict[str, nn.Module], dense: nn.Module, images: Tensor, labels: Tensor,
                        eps: float, dense_weights: int, preset: str = "standard",
                        device: torch.device | str = "cpu") -> list[dict]:
    """Clean accuracy, white-box and transfer attacks and ensemble robust accuracy of each contender.

    White-box attacks differentiate the model itself, except for the quantised one, where they go
    through `bpda` (and one more row shows FGSM through the rounding, masked). Transfer crafts PGD-40 on
    `dense` (the uncompressed model an attacker may hold). The ensemble (evaluation.robust_accuracy,
    `preset`) is built on what the white-box attacks differentiate and always scored on the contender.
    Every rate carries its 95% Wilson interval. Models and images are moved to `device` (the models in place).
    """
    rows, pgd = [], {"eps": eps, "alpha": eps / 4, "steps": 40}
    images, labels, dense = images.to(device), labels.to(device), dense.to(device)
    for name, model in contenders.items():
        model = model.to(device)
        attacked = bpda(model) if name == "quantized" else model
        found = {"method": name, "eps": eps, **{k: v for k, v in storage(model, dense_weights).items()
                                                 if k in ("ratio", "ratio_all", "index_bits", "codebook_bits")}}
        results = {}
        if name == "quantized":
            results["FGSM through the rounding (masked)"] = success_rate(model, FGSM(model, eps=eps), images, labels)
        results["FGSM"] = transfer(attacked, model, FGSM(attacked, eps=eps), images, labels)
        results["PGD-40"] = transfer(attacked, model, PGD(attacked, **pgd), images, labels)
        results["transfer: PGD-40 from the dense model"] = transfer(dense, model, PGD(dense, **pgd), images, labels)
        ensemble = robust_accuracy(model, images, labels, eps, attacks=ensemble_attacks(attacked, eps, preset=preset))
        results[f"ensemble ({preset})"] = {**ensemble, "success": None, "success_low": None, "success_high": None}
        rows += [{**found, "attack": attack, **{k: result[k] for k in _RATES}} for attack, result in results.items()]
    return rows


def run_shootout(arch: str = "mlp3", ratios: tuple[float, ...] = (8, 64), n: int = 1000, eps: float = 0.1,
                 epochs: int = 3, training: str = "standard", preset: str = "standard",
                 device: torch.device | str = "cpu", train_subset: int | None = None) -> list[dict]:
    """The shoot-out on MNIST: every contender at every ratio, beside the dense model, on the first n test images.

    Args:
        arch: "mlp3" or "lenet" (its fully connected layers are compressed; the convolutions stay dense).
        ratios: storage ratios, each >= 4 (`quantization_for`: QUANTIZATION_AT reaches 8 and 64 exactly,
            other ratios the nearest bit width, and the report prints the storage each method reached).
        n: test images; eps: the attacks' L-inf radius.
        epochs: fine-tuning epochs of the compressed models (the small dense net takes the arch's recipe).
        training: "standard", or "fgsm-at" / "pgd-at": start from the zoo's adversarially trained dense
            model and fine-tune every contender adversarially (at that model's eps, from its manifest entry).
        train_subset: train on the first k training images only (tests; None: all 60000).

    Returns:
        evaluate_contenders' rows, with "dataset", "arch", "training" and "ratio_target", and the dense
        model's own rows (method "dense", ratio 1).
    """
    check_choice(training, "training", ("standard", "fgsm-at", "pgd-at"))
    for ratio in ratios:  # before any training or attack: a ratio quantisation cannot reach fails at once
        quantization_for(ratio)
    dense = load_pretrained("mnist", arch, 1, training=training, device=device)
    adversarial = None
    if training != "standard":
        recipe = read_manifest()[checkpoint_name("mnist", arch, 1, training)]["recipe"]["adversarial"]
        adversarial = AdversarialRecipe(**recipe)
    train_set, test = load_dataset("mnist", "train"), load_dataset("mnist", "test").subset(n)
    if train_subset is not None:
        train_set = train_set.subset(train_subset)
    dense_weights = sum(m.weight.numel() for m in _fc_layers(dense, "run_shootout"))
    rows = [{"ratio_target": 1, **row} for row in
            evaluate_contenders({"dense": dense}, dense, test.images, test.labels, eps, dense_weights, preset, device)]
    for ratio in ratios:
        contenders = build_contenders(dense, arch, ratio, train_set, epochs, adversarial, device=device)
        rows += [{"ratio_target": ratio, **row} for row in
                 evaluate_contenders(contenders, dense, test.images, test.labels, eps, dense_weights, preset, device)]
    return [{"dataset": "mnist", "arch": arch, "training": training, **row} for row in rows]


def shootout_markdown(rows: list[dict]) -> str:
    """The report: per ratio and method, storage and the rates with their 95% intervals."""
    def rate(row: dict, key: str) -> str:
        return "" if row[key] is None else with_interval(row, key)

    first = rows[0]
    lines = [f"# Compression shoot-out at equal storage: MNIST {first['arch']} ({first['training']} training)", "",
             f"L-inf eps = {first['eps']:g} on the first {first['n']} test images. Storage ratio: the dense FC "
             "weights' bits over the stored values' bits (\"all\": with index and codebook bits too). White-box "
             "attacks on the quantised model go through BPDA; the masked row shows them through the rounding. "
             "Success: the paper's rate (prediction changed); robust accuracy: correct clean and after the "
             "attack. Brackets: 95% Wilson intervals.", "",
             "| ratio | method | storage ratio (all) | clean acc. | attack | success | robust acc. |",
             "|---:|---|---:|---:|---|---:|---:|"]
    for row in rows:
        lines.append(f"| {row['ratio_target']:g} | {row['method']} | {row['ratio']:.1f} ({row['ratio_all']:.1f}) | "
                     f"{100 * row['clean_acc']:.1f} | {row['attack']} | {rate(row, 'success')} | "
                     f"{rate(row, 'robust_acc')} |")
    return "\n".join(lines) + "\n"


def write_shootout(rows: list[dict], out_dir: str | os.PathLike, command: str) -> list[Path]:
    """shootout-<arch>-<training>.csv and .md under out_dir; the .md starts with the command that made it."""
    out_dir = Path(out_dir)
    rows = rounded(rows)
    stem = f"shootout-{rows[0]['arch']}-{rows[0]['training']}"
    csv_path = write_csv(rows, out_dir / f"{stem}.csv")
    md_path = out_dir / f"{stem}.md"
    text = shootout_markdown(rows)
    md_path.write_text(text.replace("\n\n", f"\n\nMade by `{command}`.\n\n", 1))
    return [csv_path, md_path]
