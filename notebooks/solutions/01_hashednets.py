"""Solutions to the exercises of notebooks/01_hashednets.ipynb (HashedNets: virtual and real weights).

Each function has the name of its exercise stub; the doctests check the values the notebook asks for
(run by `make test` through pytest's --doctest-modules).
"""
from __future__ import annotations

import torch
from torch import Tensor


def virtual_matrix(weight: Tensor, bucket: Tensor, sign: Tensor) -> Tensor:
    """Exercise 1: V[i, j] = sign[i, j] * weight[bucket[i, j]] (HashedNets eq. 4), of the shape of `bucket`.

    Args:
        weight: the K real weights, shape (K,).
        bucket: int64 bucket of every virtual weight, values in [0, K), e.g. (O, I).
        sign: +1/-1 of every virtual weight, same shape as bucket.

    Example:
        >>> import hashrobust as hr
        >>> layer = hr.HashedLinear(in_features=6, out_features=4, ratio=4, seed=0)
        >>> V = virtual_matrix(layer.weight, layer.bucket, layer.sign)
        >>> tuple(V.shape), torch.equal(V, layer.virtual_weight())
        ((4, 6), True)
        >>> virtual_matrix(torch.tensor([0.5, -2.0]), torch.tensor([[1, 0], [0, 1]]), torch.tensor([[1.0, -1.0], [1.0, 1.0]]))
        tensor([[-2.0000, -0.5000],
                [ 0.5000, -2.0000]])
    """
    return sign * weight[bucket]


def real_weight_grad(grad_virtual: Tensor, bucket: Tensor, sign: Tensor, num_real: int) -> Tensor:
    """Exercise 2: dL/dw[k] = sum over positions p with bucket[p] == k of sign[p] * dL/dV[p] (HashedNets eq. 6).

    Args:
        grad_virtual: dL/dV, the shape of bucket.
        bucket, sign: the layer's hash tensors.
        num_real: K, the number of real weights.

    Returns:
        dL/dw, shape (K,); 0 for a real weight whose bucket is empty.

    Example:
        >>> import hashrobust as hr
        >>> hr.set_seed(0)
        >>> layer, x = hr.HashedLinear(in_features=6, out_features=4, ratio=4, seed=0), torch.rand(5, 6)
        >>> V_leaf = layer.virtual_weight().detach().requires_grad_(True)  # a dense copy of V
        >>> (x @ V_leaf.T + layer.bias).square().sum().backward()  # dL/dV in V_leaf.grad
        >>> layer(x).square().sum().backward()  # the same loss through the hashed layer: autograd's dL/dw
        >>> torch.allclose(real_weight_grad(V_leaf.grad, layer.bucket, layer.sign, 6), layer.weight.grad)
        True
        >>> real_weight_grad(torch.ones(2, 2), torch.tensor([[1, 0], [0, 1]]), torch.tensor([[1.0, -1.0], [1.0, 1.0]]), 3)
        tensor([0., 2., 0.])
    """
    signed = (grad_virtual * sign).reshape(-1)
    return signed.new_zeros(num_real).scatter_add_(0, bucket.reshape(-1), signed)
