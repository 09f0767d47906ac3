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


def finetune_hashed(dense, ratio: float, train, test, epochs: int = 1, lr: float = 0.05) -> tuple[float, float]:
    """Exercise 3: compress `dense` at `ratio`, fine-tune the hashed model on `train`; test accuracy before and after.

    Args:
        dense: a trained dense model (e.g. the zoo's mlp3 at ratio 1); it is not modified.
        ratio: the compression ratio r of `hr.compress`.
        train: the ImageDataset to fine-tune on (e.g. the first 10,000 training images).
        test: the ImageDataset to measure accuracy on.
        epochs, lr: the fine-tuning recipe (`hr.TrainRecipe`, seed 0).

    Returns:
        (accuracy before fine-tuning, accuracy after), fractions in [0, 1].

    Example:
        >>> import hashrobust as hr
        >>> dense = hr.load_pretrained("mnist", "mlp3", ratio=1)
        >>> train, test = hr.load_dataset("mnist", "train").subset(10_000), hr.load_dataset("mnist", "test").subset(1000)
        >>> before, after = finetune_hashed(dense, 8, train, test)  # about 0.289 and 0.91 (1 epoch, 79 steps)
        >>> before < 0.5, after > 0.88, after < hr.evaluate(hr.load_pretrained("mnist", "mlp3", ratio=8), test)
        (True, True, True)
    """
    import hashrobust as hr

    model = hr.compress(dense, ratio=ratio)
    before = hr.evaluate(model, test)
    hr.train(model, train, hr.TrainRecipe(epochs=epochs, lr=lr), progress=False)
    return before, hr.evaluate(model, test)


def inference_cost(model: torch.nn.Module, batch: Tensor, repeats: int = 20) -> dict[str, float]:
    """Exercise 4: what one forward pass of `model` on `batch` costs, and what the model holds in memory.

    Args:
        model: a model whose fully connected layers are nn.Linear or hr.HashedLinear (e.g. the zoo's mlp3).
        batch: input images, (N, C, H, W).
        repeats: timed forwards (after one warm-up forward, which also builds a hashed layer's V cache).

    Returns:
        {"macs": multiply-accumulates of the fully connected layers for the batch, N x sum of O x I over
        the (virtual) weight shapes; "stored": real parameters (what a checkpoint holds); "resident_bytes":
        bytes of all parameters and buffers in memory (the hash buffers included, the V cache not);
        "seconds": the fastest of `repeats` forwards under torch.no_grad()}.

    Example:
        >>> import hashrobust as hr
        >>> batch = hr.load_dataset("mnist", "test").images[:256]
        >>> costs = {r: inference_cost(hr.load_pretrained("mnist", "mlp3", ratio=r), batch) for r in (1, 8, 64)}
        >>> [(costs[r]["macs"], costs[r]["stored"]) for r in (1, 8, 64)]
        [(203264000, 795010), (203264000, 100260), (203264000, 13417)]
        >>> [round(costs[r]["resident_bytes"] / 2**20, 1) for r in (1, 8, 64)]  # MiB: the hash buffers are O(virtual)
        [3.0, 12.5, 12.2]
        >>> costs[8]["seconds"] / costs[1]["seconds"] > 0.5  # not faster (about 1.0-1.1x the dense time)
        True
    """
    import time

    import hashrobust as hr

    fc = [m for m in model.modules() if isinstance(m, (torch.nn.Linear, hr.HashedLinear))]
    macs = len(batch) * sum(m.in_features * m.out_features for m in fc)
    resident = sum(t.numel() * t.element_size() for t in (*model.parameters(), *model.buffers()))
    times = []
    with torch.no_grad():
        model(batch)  # warm-up
        for _ in range(repeats):
            start = time.perf_counter()
            model(batch)
            times.append(time.perf_counter() - start)
    return {"macs": macs, "stored": hr.count_parameters(model)[0], "resident_bytes": resident, "seconds": min(times)}
