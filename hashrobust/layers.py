"""Hashed (HashedNets) linear and convolution layers, and `compress` for dense models.

Paper: HashedNets (Chen et al., ICML 2015), Sec. 4, eq. 4-6; Liu et al.
(ASP-DAC 2018), abstract (model reshaping by hash compression). A hashed layer
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
    """V = sign * w[bucket] (HashedNets eq. 4); backward: the signed bucket sum (HashedNets eq. 6).

    The sign is folded into the index: V is gathered from [w; -w] at `signed` = bucket + K * (sign < 0),
    and the backward scatters dL/dV into 2K sums whose halves give eq. 6 as (first - second). So neither
    pass multiplies by the sign over all virtual weights.

    A new-style Function (PyTorch docs, "Extending torch.func with autograd.Function": `forward`
    without ctx plus `setup_context`), so torch.func.grad, jacrev and vmap accept it. Forward and
    backward are plain torch ops that vmap can batch, hence `generate_vmap_rule = True`. The backward
    is an out-of-place scatter_add, itself differentiable (its derivative with respect to the incoming
    gradient is this gather again), so double backward works: gradient penalties,
    torch.autograd.gradgradcheck. scatter_add is faster on CPU than autograd's own backward of
    `w[bucket]` (an index_put with accumulate).

    Inputs: weight (K,), signed32 (numel,) int32 for the gather, signed (numel,) int64 for the scatter,
    the virtual shape; output (virtual shape).
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(weight: Tensor, signed32: Tensor, signed: Tensor, shape: tuple[int, ...]) -> Tensor:
        return torch.cat([weight, -weight]).index_select(0, signed32).view(shape)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Tensor, Tensor, Tensor, tuple[int, ...]], output: Tensor) -> None:
        weight, _, signed, _ = inputs
        ctx.save_for_backward(signed)
        ctx.num_real = weight.shape[0]

    @staticmethod
    def backward(ctx: Any, grad_virtual: Tensor) -> tuple[Tensor | None, None, None, None]:
        (signed,) = ctx.saved_tensors
        k = ctx.num_real
        zeros = torch.zeros(2 * k, dtype=grad_virtual.dtype, device=grad_virtual.device)
        both = torch.scatter_add(zeros, 0, signed, grad_virtual.reshape(-1))  # sums of +V's and of -V's gradients
        return both[:k] - both[k:], None, None, None


_INT_OF_SIZE = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


def _bits(t: Tensor) -> Tensor:
    """`t`'s bits as integers, for an exact comparison: 64-bit words where they fit (a contiguous tensor of a
    whole number of aligned words), else integers of its element size. Bits, not values: NaN equals NaN, and -0.0
    differs from 0.0 (V's zeros keep their signs)."""
    t = t.detach()
    if not t.is_floating_point():
        return t
    size = t.element_size()
    if t.is_contiguous() and (t.numel() * size) % 8 == 0 and (t.storage_offset() * size) % 8 == 0:
        return t.reshape(-1).view(torch.int64)
    return t.view(_INT_OF_SIZE[size])


class _VCache:
    """A virtual weight V and what it was built from: the bits of a copy of w, and the index buffer itself."""

    __slots__ = ("weight", "bits", "index", "index_version", "virtual")

    def __init__(self, weight: Tensor, index: Tensor, virtual: Tensor) -> None:
        self.weight = weight.detach().clone()
        self.bits = _bits(self.weight)
        self.index = index  # held, so a new buffer cannot come back at a freed one's address
        self.index_version = index._version
        self.virtual = virtual

    def valid_for(self, w: Tensor, index: Tensor) -> bool:
        """Whether V is still sign * w[bucket]: the same index buffer, unmodified, and w bit for bit as it was."""
        saved = self.weight
        return (index is self.index and self.index_version == index._version
                and w.dtype == saved.dtype and w.device == saved.device and w.shape == saved.shape
                and self._same_bits(w))

    def _same_bits(self, w: Tensor) -> bool:
        bits = _bits(w)
        if bits.dtype != self.bits.dtype:  # w is not word-aligned (a `.data` swap to a slice): element by element
            return torch.equal(bits, self.weight.view(bits.dtype))
        return torch.equal(bits, self.bits)  # no temporaries: cheaper inside an attack step than NumPy's compare


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
        # The hash (HashedNets eq. 4): xi as `sign` (virtual shape, +-1), and h with the sign folded in as the
        # index of V's entries in [w; -w], `signed_bucket` = h + K * (xi < 0), flat, in int64 and int32.
        self.register_buffer("sign", torch.empty(0, **factory), persistent=False)
        self.register_buffer("signed_bucket", torch.empty(0, dtype=torch.int64), persistent=False)
        self.register_buffer("signed_bucket32", torch.empty(0, dtype=torch.int32), persistent=False)
        self._rebuild_hash()
        self._cache: _VCache | None = None
        self.reset_parameters()

    def _rebuild_hash(self) -> None:
        bucket, sign = hash_positions(self.virtual_shape, self.ratio, self.seed)
        device, dtype = self.weight.device, self.weight.dtype
        signed = bucket.reshape(-1) + self.weight.shape[0] * (sign.reshape(-1) < 0)
        self.sign = sign.to(device=device, dtype=dtype)
        self.signed_bucket = signed.to(device)
        self.signed_bucket32 = signed.to(device=device, dtype=torch.int32)
        self._cache = None

    @property
    def bucket(self) -> Tensor:
        """h: the real weight each virtual weight reads, int64 of the virtual shape (HashedNets eq. 4)."""
        return (self.signed_bucket % self.weight.shape[0]).view(self.virtual_shape)

    def gather(self, weight: Tensor) -> Tensor:
        """V for real weights `weight` (K,): sign * weight[bucket] (HashedNets eq. 4), read from [weight; -weight]."""
        return torch.cat([weight, -weight]).index_select(0, self.signed_bucket32).view(self.virtual_shape)

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

        While w needs a gradient (training), V comes from `_HashedGather`, whose backward is eq. 6.
        Otherwise (frozen weights, as `Attack` sets them, or torch.no_grad() / torch.inference_mode()),
        V is cached, and it is never stale: it is reused only while w is bit for bit the copy of w
        taken when V was built (torch.equal of the bits, O(K) for K real weights) and the hash buffers
        are the same tensors, unmodified. So no change of w goes unseen, however it was made: an
        optimizer step (fused kernels bump no version counter), `.data` (an assignment, or an
        in-place edit of `.data`, which has its own version counter), load_state_dict, `.to()` /
        `.half()`, an edit under no_grad, a new tensor at a freed tensor's address. Version counters
        and data pointers are never trusted. The check reads 8 bytes per real weight, a fraction of
        the gather it saves (O(virtual) = ratio x O(K)): in an attack step on mlp3 at ratio 8 and
        batch 64 a few per cent, at batch 256 or ratio 64 about 1% (benchmarks/hashed_layer.py, (b)).

        No cache under torch.compile (the compiled graph holds the gather, so it sees every weight
        change) or inside a torch.func transform (grad, jacrev, vmap). A V built under
        torch.inference_mode() is built with inference mode off: a normal tensor, usable by autograd
        afterwards (an attack after an inference-mode evaluation). Neither a pickle
        (torch.save(module)) nor a deep copy carries the cache.
        """
        w, index = self.weight, self.signed_bucket32
        if not self._may_cache(w):
            return _HashedGather.apply(w, index, self.signed_bucket, self.virtual_shape)
        cache = self._cache
        if cache is not None and cache.valid_for(w, index):
            return cache.virtual
        with torch.inference_mode(False), torch.no_grad():
            virtual = self.gather(w)
            self._cache = _VCache(w, index, virtual)
        return virtual

    @staticmethod
    def _may_cache(w: Tensor) -> bool:
        if torch.compiler.is_compiling() or (w.requires_grad and torch.is_grad_enabled()):
            return False
        # Inside a torch.func transform even a plain w's detach() is wrapped (no storage to compare), and a V built
        # there must not outlive it: no cache then.
        return (type(w) in (Tensor, nn.Parameter) and w.device.type != "meta"
                and not torch._C._are_functorch_transforms_active())

    # Pickling (torch.save(module)) stores neither V nor the hash buffers, which are O(virtual) and rebuilt from
    # the seed on load; a deep copy copies the buffers (cheaper than rebuilding) but not V.
    _HASH_BUFFERS = ("sign", "signed_bucket", "signed_bucket32")

    def __getstate__(self) -> dict[str, Any]:
        """nn.Module's state without V or the hash buffers: torch.save(module) holds the real weights only."""
        state = super().__getstate__()
        state["_cache"] = None
        state["_buffers"] = {name: (None if name in self._HASH_BUFFERS else buffer)
                             for name, buffer in state["_buffers"].items()}
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__({**state, "_cache": None})  # a module pickled by an older version may carry a V
        if any(self._buffers.get(name) is None for name in self._HASH_BUFFERS):
            self._rebuild_hash()

    def __deepcopy__(self, memo: dict[int, Any]) -> _HashedLayer:
        """What copy.deepcopy does for an nn.Module, less V: each copy builds its own."""
        new = type(self).__new__(type(self))
        memo[id(self)] = new
        state = nn.Module.__getstate__(self)
        state["_cache"] = None
        new.__setstate__(copy.deepcopy(state, memo))
        return new

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

    def _extra_state_problem(self, state: object) -> str | None:
        """Why `state` cannot be this layer's extra state, or None: it needs a valid seed and this layer's ratio.

        The ratio cannot change on load: it fixes the number of real weights (the size of `weight`).
        """
        owner = type(self).__name__
        if not (isinstance(state, dict) and {"hash_seed", "ratio"} <= state.keys()):
            return (f"{owner}'s extra state must be a dict {{'hash_seed': integer >= 0, 'ratio': number >= 1}}, "
                    f"as {owner}.get_extra_state writes it. Got {state!r} instead.")
        try:
            check_number(state["hash_seed"], "hash_seed", f"{owner}'s extra state", low=0, high=2**63 - 1,
                         integer=True)
            check_number(state["ratio"], "ratio", f"{owner}'s extra state", low=1)
        except ValueError as error:
            return str(error)
        if float(state["ratio"]) != self.ratio:
            return (f"the checkpoint has ratio {state['ratio']:g}, this layer ratio {self.ratio:g}; a hashed layer "
                    f"loads only a checkpoint of its own ratio (the ratio fixes its number of real weights): "
                    f"build it with ratio={state['ratio']:g} to load this checkpoint.")
        return None

    def set_extra_state(self, state: dict[str, float | int]) -> None:
        """Take the seed of a checkpoint of this layer's ratio and rebuild the hash; anything else raises ValueError."""
        problem = self._extra_state_problem(state)
        if problem is not None:
            raise ValueError(f"{type(self).__name__}.set_extra_state: {problem}")
        self.seed = int(state["hash_seed"])
        self._rebuild_hash()

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, local_metadata: dict,
                              strict: bool, missing_keys: list[str], unexpected_keys: list[str],
                              error_msgs: list[str]) -> None:
        """nn.Module's loader made all or nothing for this layer: if any entry of it fails, nothing changes.

        torch copies each parameter as it goes and reports the failures at the end, which would leave a
        hashed layer half loaded (new weights under the old hash, or a new seed for old weights: either
        computes garbage). So the extra state is checked first, and if this layer's entries bring an
        error, a missing key or an unexpected key, its parameters, seed, hash buffers and V cache are
        put back. torch passes strict=True to every module, so a layer cannot tell a strict load from
        a non-strict one: with strict=False too, a hashed layer whose entries are incomplete is skipped
        (its keys still reported by load_state_dict), never half loaded. Other modules load as torch does.
        """
        key = prefix + "_extra_state"
        if key in state_dict:
            problem = self._extra_state_problem(state_dict[key])
            if problem is not None:
                error_msgs.append(f"bad extra state for {key}: {problem}")
                return
        counts = (len(missing_keys), len(unexpected_keys), len(error_msgs))
        saved = self._snapshot()
        try:
            super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                          unexpected_keys, error_msgs)
        except BaseException:
            self._restore(saved)
            raise
        if (len(missing_keys), len(unexpected_keys), len(error_msgs)) != counts:
            self._restore(saved)

    def _snapshot(self) -> dict[str, Any]:
        """What a load may change: each parameter (object, version, values), the seed, ratio, hash and V cache."""
        params = {name: (p, p._version, p.data_ptr(), p.detach().clone())
                  for name, p in self._parameters.items() if p is not None}
        return {"params": params, "seed": self.seed, "ratio": self.ratio, "cache": self._cache,
                **{name: getattr(self, name) for name in self._HASH_BUFFERS}}

    def _restore(self, saved: dict[str, Any]) -> None:
        for name, (param, version, pointer, values) in saved["params"].items():
            self._parameters[name] = param  # the same object (assign=True replaces it), so optimizers still hold it
            if param._version != version or param.data_ptr() != pointer:
                with torch.no_grad():
                    param.copy_(values)
        self.seed, self.ratio = saved["seed"], saved["ratio"]
        for name in self._HASH_BUFFERS:
            setattr(self, name, saved[name])
        self._cache = saved["cache"]  # checked against w and the buffers before any reuse, like every cache

    def extra_repr(self) -> str:
        return (f"ratio={self.ratio:g}, virtual={self.num_virtual}, real={self.weight.numel()}, "
                f"seed={self.seed}, bias={self.bias is not None}")


class HashedLinear(_HashedLayer):
    """A fully connected layer whose O x I virtual weights share K = ceil(O*I/ratio) real ones.

    Paper: HashedNets eq. 4-6; Liu et al., abstract (hash-based compression).

    Args:
        in_features, out_features: as nn.Linear.
        ratio: compression ratio r >= 1 (virtual / real weights).
        seed: hash seed (stored in the checkpoint).
        bias: whether to add a (not hashed) bias.

    Shape: (N, I) -> (N, O).

    Mixed precision: under torch.autocast, V is built in the weight's dtype (float32 for a float32 layer;
    the gather is not an autocast op) and cached in it when the weights are frozen;
    F.linear casts V to the autocast dtype (e.g. bfloat16) at each call, as it casts a dense layer's
    weight. The gradient comes back through that cast in float32, so the bucket sums of eq. 6 are
    float32 sums and `weight.grad` has the weight's dtype.

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

    Paper: HashedNets Sec. 4 (conv kernels are hashed the same way); Liu et al., abstract.

    Args:
        in_channels, out_channels, kernel_size, stride, padding, dilation, groups: as nn.Conv2d
            (zero padding only); the virtual kernel is (O, C / groups, kh, kw), as nn.Conv2d's weight.
        ratio: compression ratio r >= 1 (virtual / real weights).
        seed: hash seed (stored in the checkpoint).
        bias: whether to add a (not hashed) bias.

    Shape: (N, C, H, W) -> (N, O, H', W'), as nn.Conv2d with padding_mode="zeros".

    Mixed precision: under torch.autocast, V is built in the weight's dtype (float32 for a float32 layer;
    the gather is not an autocast op) and cached in it when the weights are frozen;
    F.conv2d casts V to the autocast dtype (e.g. bfloat16) at each call, as it casts a dense layer's
    weight. The gradient comes back through that cast in float32, so the bucket sums of eq. 6 are
    float32 sums and `weight.grad` has the weight's dtype.

    Example:
        >>> conv = HashedConv2d(1, 20, 5, ratio=8)
        >>> conv(torch.rand(2, 1, 28, 28)).shape
        torch.Size([2, 20, 24, 24])
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int | tuple[int, int], ratio: float,
                 seed: int = 0, stride: int | tuple[int, int] = 1, padding: int | tuple[int, int] = 0,
                 bias: bool = True, device: torch.device | str | None = None,
                 dtype: torch.dtype | None = None, *, dilation: int | tuple[int, int] = 1, groups: int = 1) -> None:
        check_number(in_channels, "in_channels", "HashedConv2d", low=1, integer=True)
        check_number(out_channels, "out_channels", "HashedConv2d", low=1, integer=True)
        check_number(groups, "groups", "HashedConv2d", low=1, integer=True)
        if in_channels % groups or out_channels % groups:
            raise ValueError(f"The 'groups' parameter of HashedConv2d must divide in_channels ({in_channels}) and "
                             f"out_channels ({out_channels}). Got {groups} instead.")
        dilation = (dilation, dilation) if isinstance(dilation, int) else tuple(dilation)
        for d in dilation:
            check_number(d, "dilation", "HashedConv2d", low=1, integer=True)
        kh, kw = (kernel_size, kernel_size) if isinstance(kernel_size, int) else tuple(kernel_size)
        self.in_channels, self.out_channels, self.kernel_size = in_channels, out_channels, (kh, kw)
        self.stride, self.padding, self.dilation, self.groups = stride, padding, dilation, groups
        super().__init__((out_channels, in_channels // groups, kh, kw), ratio, seed, bias, device, dtype)

    def forward(self, x: Tensor) -> Tensor:
        return F.conv2d(x, self.virtual_weight(), self.bias, self.stride, self.padding, self.dilation, self.groups)

    def extra_repr(self) -> str:
        plain = self.dilation == (1, 1) and self.groups == 1
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"padding={self.padding}, " + ("" if plain else f"dilation={self.dilation}, groups={self.groups}, ")
                + super().extra_repr())


def _hashed_twin(layer: nn.Module, ratio: float, seed: int, name: str) -> _HashedLayer:
    """An untrained hashed layer with the shape, bias, device, dtype and mode of a dense layer.

    Raises ValueError for a convolution HashedConv2d cannot compute exactly: one that pads other than with
    zeros, or with padding "same"/"valid" given as a string.
    """
    factory = {"device": layer.weight.device, "dtype": layer.weight.dtype}
    bias = layer.bias is not None
    if isinstance(layer, nn.Linear):
        return HashedLinear(layer.in_features, layer.out_features, ratio, seed, bias, **factory).train(layer.training)
    where = f"layer {name!r}" if name else "the model itself"
    if layer.padding_mode != "zeros":
        raise ValueError(f"compress cannot hash {where}, {layer}: it has padding_mode={layer.padding_mode!r}, and "
                         f"HashedConv2d supports only padding_mode='zeros'. Keep it dense (layers='fc') or "
                         f"use padding_mode='zeros'.")
    if not isinstance(layer.padding, tuple):
        raise ValueError(f"compress cannot hash {where}, {layer}: it has padding={layer.padding!r}, and "
                         f"HashedConv2d takes numeric padding only (an int or a pair, e.g. padding=1 for a 3x3 "
                         f"'same' convolution). Keep it dense (layers='fc') or give the padding in pixels.")
    return HashedConv2d(layer.in_channels, layer.out_channels, layer.kernel_size, ratio, seed, layer.stride,
                        layer.padding, bias, dilation=layer.dilation, groups=layer.groups,
                        **factory).train(layer.training)


def hash_layers_(model: nn.Module, ratio: float, layers: str = "fc", seed: int = 0,
                 project: bool = True) -> nn.Module:
    """Replace, in place, each dense layer of the kind `layers` names by a hashed twin; return the model.

    Layer i (in `named_modules` order) gets hash seed `seed + i`, so layers do
    not share a hash pattern. With `project`, w is the least-squares fit of the
    dense weight and the bias is copied; otherwise both are freshly initialised.
    Every layer is checked before any is replaced, so a ValueError (a convolution
    HashedConv2d cannot represent) leaves the model as it was. A bare nn.Linear
    (or nn.Conv2d with layers="all") cannot replace itself: its twin is returned.
    """
    check_number(ratio, "ratio", "compress", low=1)
    kinds = HASHABLE_LAYERS[check_choice(layers, "layers", HASHABLE_LAYERS)]
    targets = [(name, m) for name, m in model.named_modules() if type(m) in kinds]
    twins = [_hashed_twin(dense, ratio, seed + i, name) for i, (name, dense) in enumerate(targets)]
    for (name, dense), hashed in zip(targets, twins):
        if project:
            hashed.project_(dense.weight)
            if dense.bias is not None:
                with torch.no_grad():
                    hashed.bias.copy_(dense.bias)
        if not name:  # the model is the layer
            return hashed
        parent_name, _, attr = name.rpartition(".")
        setattr(model.get_submodule(parent_name), attr, hashed)
    return model


def compress(model: nn.Module, ratio: float, layers: str = "fc", seed: int = 0) -> nn.Module:
    """A new model whose dense layers are hashed at `ratio`, initialised from the dense weights.

    Paper: Liu et al., abstract (hash compression); compressing a trained model, then
    "hash retraining" (fine-tuning), is the reconstructed protocol, docs/protocol.md §7; HashedNets Sec. 4.

    Args:
        model: a dense model, or a single nn.Linear / nn.Conv2d; it is not modified.
        ratio: compression ratio r >= 1; r = 1 returns an unchanged copy (dense).
        layers: "fc" hashes nn.Linear layers, "all" also nn.Conv2d (any stride,
            zero padding, dilation and groups; another padding_mode raises ValueError).
        seed: hash seed of the first hashed layer; layer i uses seed + i.

    Returns:
        A deep copy with HashedLinear/HashedConv2d in place of the dense layers
        (a bare layer of the kind `layers` names comes back as its hashed twin),
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
                          layer.dilation, layer.groups, bias=bias, **factory)
    with torch.no_grad():
        dense.weight.copy_(layer.virtual_weight())
        if bias:
            dense.bias.copy_(layer.bias)
    return dense.train(layer.training)


def decompress(model: nn.Module) -> nn.Module:
    """A new dense model computing the same function: every hashed layer becomes its dense twin with weight V.

    Paper: Liu et al., abstract (attacks on compressed models); reconstructed protocol, docs/protocol.md §3:
    a HashedNet computes the dense function of V, so attacking it is attacking this twin
    (notebooks/03_attacking_compressed_models.ipynb checks that numerically). The inverse of `compress`
    up to the projection error.

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
