"""Hashed (HashedNets) linear and convolution layers, and `compress` for dense models.

Paper: HashedNets (Chen et al., ICML 2015), Sec. 4, eq. 4-6; Liu et al.
(ASP-DAC 2018), Sec. 3 ("hardware-oriented model reshaping"). A hashed layer
stores K real weights w and computes with the virtual weight

    V[p] = xi(p) * w[h(p)]                                            (HashedNets eq. 4)

so its output is exactly that of a dense layer with weight V. The gradient
of a real weight is the signed sum over its bucket (HashedNets eq. 6):

    dL/dw[k] = sum_{p : h(p) = k} xi(p) * dL/dV[p]

Only w (and the bias) are parameters; (h, xi) are buffers rebuilt from the
stored seed and ratio, so a checkpoint holds what hardware would store.

Shapes: N batch, O/I out/in features (or channels), K real weights.
"""
from __future__ import annotations

import copy
import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._validation import check_choice, check_number
from .hashing import hash_positions, num_buckets

__all__ = ["HashedLinear", "HashedConv2d", "compress", "decompress", "count_parameters", "HASHABLE_LAYERS"]

HASHABLE_LAYERS = {"fc": (nn.Linear,), "all": (nn.Linear, nn.Conv2d)}


class _HashedGather(torch.autograd.Function):
    """V = sign * w[bucket] with a scatter-add backward (faster on CPU than autograd's index backward)."""

    @staticmethod
    def forward(ctx: Any, weight: Tensor, bucket32: Tensor, bucket: Tensor, sign: Tensor) -> Tensor:
        ctx.save_for_backward(bucket, sign)
        ctx.num_real = weight.numel()
        return weight.index_select(0, bucket32).view_as(sign).mul_(sign)  # (O, I) or (O, C, kh, kw); fresh, so in place

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, grad_virtual: Tensor) -> tuple[Tensor | None, None, None, None]:
        bucket, sign = ctx.saved_tensors
        signed = (grad_virtual * sign).reshape(-1)
        grad_weight = signed.new_zeros(ctx.num_real).scatter_add_(0, bucket.reshape(-1), signed)
        return grad_weight, None, None, None


class _HashedLayer(nn.Module):
    """What HashedLinear and HashedConv2d share: real weights, the hash buffers, the V cache."""

    def __init__(self, virtual_shape: tuple[int, ...], ratio: float, seed: int, bias: bool,
                 device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> None:
        super().__init__()
        owner = type(self).__name__
        self.ratio = float(check_number(ratio, "ratio", owner, low=1))
        self.seed = int(check_number(seed, "seed", owner, low=0, integer=True))
        self.virtual_shape = virtual_shape
        factory = {"device": device, "dtype": dtype}
        self.weight = nn.Parameter(torch.empty(num_buckets(math.prod(virtual_shape), self.ratio), **factory))
        self.bias = nn.Parameter(torch.empty(virtual_shape[0], **factory)) if bias else None
        self.register_buffer("bucket", torch.empty(0, dtype=torch.int64), persistent=False)
        self.register_buffer("bucket32", torch.empty(0, dtype=torch.int32), persistent=False)
        self.register_buffer("sign", torch.empty(0, **factory), persistent=False)
        self._rebuild_hash()
        self._cache: tuple[tuple, Tensor] | None = None
        self.reset_parameters()

    def _rebuild_hash(self) -> None:
        bucket, sign = hash_positions(self.virtual_shape, self.ratio, self.seed)
        device, dtype = self.weight.device, self.weight.dtype
        self.bucket = bucket.to(device)
        self.bucket32 = bucket.reshape(-1).to(device=device, dtype=torch.int32)
        self.sign = sign.to(device=device, dtype=dtype)
        self._cache = None

    def reset_parameters(self) -> None:
        """U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for w and bias: V then has nn.Linear's init distribution."""
        bound = 1.0 / math.sqrt(math.prod(self.virtual_shape[1:]))
        nn.init.uniform_(self.weight, -bound, bound)
        if self.bias is not None:
            nn.init.uniform_(self.bias, -bound, bound)

    @property
    def num_virtual(self) -> int:
        return math.prod(self.virtual_shape)

    def virtual_weight(self) -> Tensor:
        """V = sign * w[bucket] (HashedNets eq. 4), of the dense layer's weight shape.

        When w needs no gradient (frozen weights in an attack, or under
        torch.no_grad()), V is cached and reused until w changes (its version
        counter, storage, device or dtype); edit weights in place under
        torch.no_grad(), not through `.data`, so the cache sees the change.
        """
        w = self.weight
        if w.requires_grad and torch.is_grad_enabled():
            return _HashedGather.apply(w, self.bucket32, self.bucket, self.sign)
        key = (w._version, w.data_ptr(), w.device, w.dtype, self.sign.data_ptr())
        if self._cache is None or self._cache[0] != key:
            with torch.no_grad():
                self._cache = (key, w.index_select(0, self.bucket32).view_as(self.sign).mul_(self.sign))
        return self._cache[1]

    def project_(self, dense_weight: Tensor) -> _HashedLayer:
        """Set w to the least-squares fit of a dense weight: w[k] = mean over bucket k of sign * W.

        The sign-corrected bucket mean minimises ||V(w) - W||^2; empty buckets get 0.
        """
        if tuple(dense_weight.shape) != self.virtual_shape:
            raise ValueError(f"The 'dense_weight' of {type(self).__name__}.project_ must have shape "
                             f"{self.virtual_shape}. Got {tuple(dense_weight.shape)} instead.")
        with torch.no_grad():
            flat = self.bucket.reshape(-1)
            signed = (dense_weight.to(self.sign) * self.sign).reshape(-1)
            sums = signed.new_zeros(self.weight.numel()).scatter_add_(0, flat, signed)
            counts = torch.bincount(flat, minlength=self.weight.numel()).to(sums)
            self.weight.copy_(sums / counts.clamp(min=1))
        return self

    # The hash seed and ratio travel in the state_dict as "_extra_state"; buffers are rebuilt on load.
    def get_extra_state(self) -> dict[str, float | int]:
        return {"hash_seed": self.seed, "ratio": self.ratio}

    def set_extra_state(self, state: dict[str, float | int]) -> None:
        self.seed, self.ratio = int(state["hash_seed"]), float(state["ratio"])
        self._rebuild_hash()

    def extra_repr(self) -> str:
        return (f"ratio={self.ratio:g}, virtual={self.num_virtual}, real={self.weight.numel()}, "
                f"seed={self.seed}, bias={self.bias is not None}")


class HashedLinear(_HashedLayer):
    """A fully connected layer whose O x I virtual weights share K = ceil(O*I/ratio) real ones.

    Paper: HashedNets eq. 4-6; Liu et al. Sec. 3.

    Args:
        in_features, out_features: as nn.Linear.
        ratio: compression ratio r >= 1 (virtual / real weights).
        seed: hash seed (stored in the checkpoint).
        bias: whether to add a (not hashed) bias.

    Shape: (N, I) -> (N, O).

    Example:
        >>> layer = HashedLinear(784, 1000, ratio=64)
        >>> layer(torch.rand(2, 784)).shape, layer.weight.numel()
        (torch.Size([2, 1000]), 12250)

    Used in: notebooks/01_hashednets.ipynb.
    """

    def __init__(self, in_features: int, out_features: int, ratio: float, seed: int = 0, bias: bool = True,
                 device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> None:
        check_number(in_features, "in_features", "HashedLinear", low=1, integer=True)
        check_number(out_features, "out_features", "HashedLinear", low=1, integer=True)
        self.in_features, self.out_features = in_features, out_features
        super().__init__((out_features, in_features), ratio, seed, bias, device, dtype)

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.virtual_weight(), self.bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, " + super().extra_repr()


class HashedConv2d(_HashedLayer):
    """A 2-D convolution whose (O, C, kh, kw) virtual kernel shares K = ceil(numel/ratio) real weights.

    Paper: HashedNets Sec. 4 (conv kernels are hashed the same way); Liu et al. Sec. 3.

    Shape: (N, C, H, W) -> (N, O, H', W'), as nn.Conv2d with groups=1, dilation=1.

    Example:
        >>> conv = HashedConv2d(1, 20, 5, ratio=8)
        >>> conv(torch.rand(2, 1, 28, 28)).shape
        torch.Size([2, 20, 24, 24])
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int | tuple[int, int], ratio: float,
                 seed: int = 0, stride: int | tuple[int, int] = 1, padding: int | tuple[int, int] = 0,
                 bias: bool = True, device: torch.device | str | None = None,
                 dtype: torch.dtype | None = None) -> None:
        check_number(in_channels, "in_channels", "HashedConv2d", low=1, integer=True)
        check_number(out_channels, "out_channels", "HashedConv2d", low=1, integer=True)
        kh, kw = (kernel_size, kernel_size) if isinstance(kernel_size, int) else tuple(kernel_size)
        self.in_channels, self.out_channels, self.kernel_size = in_channels, out_channels, (kh, kw)
        self.stride, self.padding = stride, padding
        super().__init__((out_channels, in_channels, kh, kw), ratio, seed, bias, device, dtype)

    def forward(self, x: Tensor) -> Tensor:
        return F.conv2d(x, self.virtual_weight(), self.bias, self.stride, self.padding)

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"stride={self.stride}, padding={self.padding}, " + super().extra_repr())


def _hashed_twin(layer: nn.Module, ratio: float, seed: int) -> _HashedLayer:
    """An untrained hashed layer with the shape, bias, device and dtype of a dense layer."""
    factory = {"device": layer.weight.device, "dtype": layer.weight.dtype}
    bias = layer.bias is not None
    if isinstance(layer, nn.Linear):
        return HashedLinear(layer.in_features, layer.out_features, ratio, seed, bias, **factory)
    if layer.groups != 1 or layer.dilation != (1, 1) or not isinstance(layer.padding, tuple):
        raise ValueError(f"Only plain convolutions (groups=1, dilation=1, numeric padding) can be hashed. "
                         f"Got {layer} instead.")
    return HashedConv2d(layer.in_channels, layer.out_channels, layer.kernel_size, ratio, seed,
                        layer.stride, layer.padding, bias, **factory)


def hash_layers_(model: nn.Module, ratio: float, layers: str = "fc", seed: int = 0,
                 project: bool = True) -> nn.Module:
    """Replace, in place, each dense layer of the kind `layers` names by a hashed twin.

    Layer i (in `named_modules` order) gets hash seed `seed + i`, so layers do
    not share a hash pattern. With `project`, w is the least-squares fit of the
    dense weight and the bias is copied; otherwise both are freshly initialised.
    """
    check_number(ratio, "ratio", "compress", low=1)
    kinds = HASHABLE_LAYERS[check_choice(layers, "layers", HASHABLE_LAYERS)]
    targets = [name for name, m in model.named_modules() if type(m) in kinds]
    for i, name in enumerate(targets):
        parent_name, _, attr = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        dense = getattr(parent, attr)
        hashed = _hashed_twin(dense, ratio, seed + i)
        if project:
            hashed.project_(dense.weight)
            if dense.bias is not None:
                with torch.no_grad():
                    hashed.bias.copy_(dense.bias)
        setattr(parent, attr, hashed)
    return model


def compress(model: nn.Module, ratio: float, layers: str = "fc", seed: int = 0) -> nn.Module:
    """A new model whose dense layers are hashed at `ratio`, initialised from the dense weights.

    Paper: Liu et al. Sec. 3 (hash compression of a trained model, followed by
    the authors' "hash retraining", i.e. fine-tuning); HashedNets Sec. 4.

    Args:
        model: a dense model; it is not modified.
        ratio: compression ratio r >= 1; r = 1 returns an unchanged copy (dense).
        layers: "fc" hashes nn.Linear layers, "all" also nn.Conv2d.
        seed: hash seed of the first hashed layer; layer i uses seed + i.

    Returns:
        A deep copy with HashedLinear/HashedConv2d in place of the dense layers,
        each real weight the sign-corrected mean of its bucket (the
        least-squares projection of the dense weights), ready for fine-tuning.

    Example:
        >>> small = compress(nn.Sequential(nn.Flatten(), nn.Linear(784, 10)), ratio=8)
        >>> count_parameters(small)
        (990, 7850)
    """
    check_number(ratio, "ratio", "compress", low=1)
    check_choice(layers, "layers", HASHABLE_LAYERS)
    new = copy.deepcopy(model)
    return new if ratio == 1 else hash_layers_(new, ratio, layers, seed, project=True)


def _dense_twin(layer: _HashedLayer) -> nn.Module:
    """nn.Linear / nn.Conv2d with weight V and the same bias, device, dtype and mode as `layer`."""
    factory, bias = {"device": layer.weight.device, "dtype": layer.weight.dtype}, layer.bias is not None
    if isinstance(layer, HashedLinear):
        dense = nn.Linear(layer.in_features, layer.out_features, bias, **factory)
    else:
        dense = nn.Conv2d(layer.in_channels, layer.out_channels, layer.kernel_size, layer.stride, layer.padding,
                          bias=bias, **factory)
    with torch.no_grad():
        dense.weight.copy_(layer.virtual_weight())
        if bias:
            dense.bias.copy_(layer.bias)
    return dense.train(layer.training)


def decompress(model: nn.Module) -> nn.Module:
    """A new dense model computing the same function: every hashed layer becomes its dense twin with weight V.

    Paper: Liu et al. Sec. 4: a HashedNet computes the dense function of V, so
    attacking it is attacking this twin (notebooks/03_attacking_compressed_models.ipynb
    checks that numerically). The inverse of `compress` up to the projection error.

    Example:
        >>> hashed = compress(nn.Sequential(nn.Flatten(), nn.Linear(784, 10)), ratio=8)
        >>> count_parameters(decompress(hashed))
        (7850, 7850)
    """
    new = copy.deepcopy(model)
    if isinstance(new, _HashedLayer):
        return _dense_twin(new)
    for name, layer in list(new.named_modules()):
        if isinstance(layer, _HashedLayer):
            parent_name, _, attr = name.rpartition(".")
            setattr(new.get_submodule(parent_name), attr, _dense_twin(layer))
    return new


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(real, virtual) parameter counts: what is stored vs the dense model it computes.

    Example:
        >>> count_parameters(HashedLinear(784, 1000, ratio=64))
        (13250, 785000)
    """
    real = sum(p.numel() for p in model.parameters())
    virtual = real + sum(m.num_virtual - m.weight.numel() for m in model.modules() if isinstance(m, _HashedLayer))
    return real, virtual
