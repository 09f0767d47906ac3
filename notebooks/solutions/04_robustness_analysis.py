"""Solutions to the exercises of notebooks/04_robustness_analysis.ipynb.

Paper: Liu et al. (ASP-DAC 2018), abstract, the multi-factor analysis (compression ratio x eps), on the rows
of the committed results/<dataset>/analysis.csv (`hashrobust.reports.read_results(dataset, "analysis")`),
made with the reconstructed protocol of docs/protocol.md §7.
"""
from __future__ import annotations

import statistics
from collections.abc import Sequence


def eps_over_half(rows: Sequence[dict], arch: str, attack: str = "FGSM") -> dict[float, float | None]:
    """Exercise 1: per ratio, the smallest eps at which white-box success of `attack` exceeds 50% (else None).

    Example:
        >>> from hashrobust.reports import read_results
        >>> rows = read_results("mnist", "analysis")
        >>> eps_over_half(rows, "mlp3")
        {1.0: 0.1, 2.0: 0.1, 4.0: 0.1, 8.0: 0.1, 16.0: 0.1, 32.0: 0.05, 64.0: 0.05}
        >>> eps_over_half(rows, "lenet")
        {1.0: 0.25, 8.0: 0.2, 64.0: 0.15}
    """
    cells = [r for r in rows if r["arch"] == arch and r["mode"] == "white-box" and r["attack"] == attack]
    return {ratio: min((r["eps"] for r in cells if r["ratio"] == ratio and r["success"] > 0.5), default=None)
            for ratio in sorted({r["ratio"] for r in cells})}


def hashed_minus_dense(rows: Sequence[dict], arch: str) -> dict[str, float]:
    """Exercise 2: per attack, the mean over hashed ratios (r != 1) and eps of white-box success(r, eps)
    minus success(1, eps), as a fraction (0.05 = 5 points more success on the hashed models).

    Example:
        >>> from hashrobust.reports import read_results
        >>> rows = read_results("mnist", "analysis")
        >>> {attack: round(gap, 3) for attack, gap in hashed_minus_dense(rows, "mlp3").items()}
        {'FGSM': 0.085, 'BIM': 0.056, 'PGD': 0.056}
    """
    white = [r for r in rows if r["arch"] == arch and r["mode"] == "white-box"]
    result = {}
    for attack in dict.fromkeys(r["attack"] for r in white):
        dense = {r["eps"]: r["success"] for r in white if r["attack"] == attack and r["ratio"] == 1}
        result[attack] = statistics.fmean(r["success"] - dense[r["eps"]] for r in white
                                          if r["attack"] == attack and r["ratio"] != 1)
    return result


def transfer_asymmetry(rows: Sequence[dict], arch: str, attack: str, eps: float) -> dict[float, float]:
    """Exercise 3: per hashed ratio r, the success of examples crafted on the dense model and scored on the
    ratio-r model, minus the success of examples crafted on the ratio-r model and scored on the dense one.

    Example:
        >>> from hashrobust.reports import read_results
        >>> rows = read_results("mnist", "analysis")
        >>> {r: round(gap, 3) for r, gap in transfer_asymmetry(rows, "mlp3", "FGSM", 0.1).items()}
        {2.0: 0.016, 4.0: 0.032, 8.0: 0.073, 16.0: 0.156, 32.0: 0.273, 64.0: 0.328}
    """
    cells = [r for r in rows if r["arch"] == arch and r["mode"] == "transfer" and r["attack"] == attack
             and r["eps"] == eps]
    to_hashed = {r["ratio"]: r["success"] for r in cells if r["source_ratio"] == 1}
    to_dense = {r["source_ratio"]: r["success"] for r in cells if r["source_ratio"] != 1}
    return {ratio: to_hashed[ratio] - to_dense[ratio] for ratio in sorted(to_hashed)}


def margin_by_ratio(arch: str, ratios: Sequence[float], images, labels) -> dict[float, tuple[float, float, float]]:
    """Exercise 4: per zoo model `hr.load_pretrained("mnist", arch, r)`, the median over the images of the top-1
    logit margin m = Z_y - max_{i != y} Z_i, of the L1 norm of its input gradient, and of their ratio.

    m / ||grad_x m||_1 is the first-order L-inf distance to the decision boundary: a step of size eps along
    sign(grad) changes m by about eps ||grad_x m||_1, so FGSM flips the image once eps passes that ratio.

    Args:
        arch: a zoo architecture on MNIST ("mlp3", "lenet").
        ratios: the zoo ratios to load.
        images, labels: (N, 1, 28, 28) images and (N,) labels.

    Returns:
        {ratio: (median m, median ||grad_x m||_1, median m / ||grad_x m||_1)}.

    Example:
        >>> import hashrobust as hr
        >>> test = hr.load_dataset("mnist", "test").subset(1000)
        >>> stats = margin_by_ratio("mlp3", (1, 2, 8, 64), test.images, test.labels)
        >>> {r: (round(m, 1), round(g), round(d, 3)) for r, (m, g, d) in stats.items()}
        {1: (11.5, 253, 0.046), 2: (6.8, 152, 0.044), 8: (6.7, 176, 0.038), 64: (7.9, 428, 0.018)}
    """
    import torch

    import hashrobust as hr
    from hashrobust.attacks import logit_margin, loss_gradient

    result = {}
    for ratio in ratios:
        model = hr.load_pretrained("mnist", arch, ratio, device=images.device)
        with torch.no_grad():
            margin = -logit_margin(model(images), labels)  # (N,): > 0 where the model is right
        grad_l1 = loss_gradient(model, images, labels, loss="margin").flatten(1).abs().sum(1)  # (N,)
        result[ratio] = (margin.median().item(), grad_l1.median().item(), (margin / grad_l1).median().item())
    return result
