"""Solutions to the exercises of notebooks/08_compression_and_robustness.ipynb (compression and robustness).

Exercise 1: a straight-through rounding: rounds forward, passes the gradient unchanged backward (BPDA's trick).
Exercise 2: the storage ratio of a pruned layer once its CSR indices are counted.
Exercise 3: the margin at which a softmax in a float format rounds the top class's probability to exactly 1.

The doctests run in `make test` (pytest --doctest-modules); HASHROBUST_DATA must point at the data.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor


# ----------------------------------------------------------------------------- exercise 1
def ste_round(x: Tensor) -> Tensor:
    """torch.round(x) in the forward pass; the identity's gradient (1 everywhere) in the backward pass.

    The straight-through estimator (Bengio, Leonard, Courville 2013): the value is exactly the rounded one,
    and `x - x.detach()` (which is 0) carries x's gradient through. BPDA (Athalye et al. 2018) attacks a
    quantised model with it; `shootout.QuantizedLinear` rounds its inputs the same way when
    `straight_through` is True.

    >>> x = torch.tensor([0.4, 1.6, -2.5, 3.0], requires_grad=True)
    >>> y = ste_round(x)
    >>> y.detach()  # round half to even, as torch.round
    tensor([ 0.,  2., -2.,  3.])
    >>> (3 * y).sum().backward()
    >>> x.grad  # d(3 * round(x)) / dx through the straight-through estimator: 3, not 0
    tensor([3., 3., 3., 3.])
    >>> z = torch.tensor([0.4, 1.6], requires_grad=True)
    >>> torch.round(z).sum().backward(); z.grad  # the true derivative of rounding: 0 almost everywhere
    tensor([0., 0.])
    """
    return x + (torch.round(x) - x).detach()


# ----------------------------------------------------------------------------- exercise 2
def pruned_storage_ratio(out_features: int, in_features: int, ratio: float) -> float:
    """32 N / (bits a pruned (out, in) layer stores), keeping ceil(N / ratio) of its N weights, in CSR.

    Each kept weight costs its 32-bit value and a column index of ceil(log2 in_features) bits; each row a
    32-bit pointer (out_features + 1 of them). `shootout.storage` counts the same ("ratio_all").

    >>> round(pruned_storage_ratio(1000, 784, 8), 3)  # mlp3's first layer: 10-bit column indices
    6.048
    >>> round(pruned_storage_ratio(1000, 784, 64), 2)
    45.9
    >>> from torch import nn
    >>> from hashrobust.shootout import prune, storage
    >>> layer = nn.Sequential(nn.Linear(784, 1000))
    >>> round(storage(prune(layer, 64), 784 * 1000)["ratio_all"], 2)
    45.9
    """
    weights = out_features * in_features
    kept = math.ceil(weights / ratio)
    bits = kept * (32 + math.ceil(math.log2(in_features))) + 32 * (out_features + 1)
    return 32 * weights / bits


# ----------------------------------------------------------------------------- exercise 3
def saturation_margin(dtype: torch.dtype) -> float:
    """-ln(eps / 2): the top-1 logit margin beyond which a softmax in `dtype` gives p_y exactly 1 (one rival).

    p_y = 1 / (1 + e^-m) rounds to 1 once e^-m is below half the spacing of the format's numbers just
    below 1, eps / 2 (eps = torch.finfo(dtype).eps). `precision.softmax_thresholds` gives the same.

    >>> [round(saturation_margin(d), 2) for d in (torch.float64, torch.float32, torch.bfloat16, torch.float16)]
    [36.74, 16.64, 5.55, 7.62]
    >>> from hashrobust.precision import softmax_thresholds
    >>> saturation_margin(torch.float16) == softmax_thresholds(torch.float16)["saturation"]
    True
    >>> [torch.softmax(torch.tensor([m, 0.0]), 0)[0].item() == 1 for m in (16.0, 17.0)]  # float32: 16.64
    [False, True]
    """
    return -math.log(torch.finfo(dtype).eps / 2)
