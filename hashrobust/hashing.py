"""The HashedNets position hash: which real weight, and which sign, each virtual weight uses.

Paper: HashedNets (Chen, Wilson, Tyree, Weinberger, Chen; ICML 2015), Sec. 4,
as used by Liu et al. (ASP-DAC 2018), abstract (hash-based weight compression). A layer with a
virtual weight matrix V of `numel` entries keeps only K = ceil(numel / ratio)
real weights w and reads

    V[p] = xi(p) * w[h(p)],      h(p) in {0, .., K-1},  xi(p) in {-1, +1}      (HashedNets eq. 4)

for every flat (row-major) position p of V. h and xi are two *independent*
hashes of the position (HashedNets used xxh32 with separate seeds): the sign
is never derived from the bucket, or buckets would carry correlated signs.

The hash here is SplitMix64's finaliser (Steele, Lea, Flood 2014) over
position and a per-(seed, key) offset, in numpy uint64 arithmetic: pure
integer arithmetic, identical on every platform and in every process (never
Python's randomised `hash()`). Changing it changes every bucket and so
invalidates every checkpoint; tests/test_hashing.py pins golden values.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from ._validation import check_number

__all__ = ["num_buckets", "hash_positions", "mix64"]

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)  # 2^64 / golden ratio, SplitMix64's increment
_KEY_BUCKET = np.uint64(0x68A5_5D1E_0B01_C0DE)  # distinct keys make h and xi independent
_KEY_SIGN = np.uint64(0x51C9_A7E2_3F6D_8B41)


def mix64(x: np.ndarray) -> np.ndarray:
    """SplitMix64 finaliser: a bijection of uint64 with full avalanche (numpy uint64 in, out; wraps mod 2^64)."""
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def _hash64(numel: int, seed: int, key: np.uint64) -> np.ndarray:
    """64-bit hash of positions 0..numel-1 under (seed, key); a uint64 array of length numel."""
    with np.errstate(over="ignore"):
        offset = mix64(np.array([np.uint64(seed) ^ key], dtype=np.uint64))[0]
        positions = np.arange(numel, dtype=np.uint64)
        return mix64(positions * _GOLDEN + offset)


def num_buckets(numel: int, ratio: float) -> int:
    """K = ceil(numel / ratio): the number of real weights behind `numel` virtual ones.

    Example:
        >>> num_buckets(784 * 1000, 64)
        12250
    """
    check_number(ratio, "ratio", "num_buckets", low=1)
    check_number(numel, "numel", "num_buckets", low=1, integer=True)
    return max(1, math.ceil(numel / ratio))


def hash_positions(shape: Sequence[int], ratio: float, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Bucket and sign of every virtual weight of a weight tensor of `shape`.

    Paper: HashedNets eq. 4, h(i, j) and xi(i, j); Liu et al., abstract (hash-based compression).

    Args:
        shape: the virtual weight's shape, e.g. (out_features, in_features) or
            (out_channels, in_channels, kh, kw).
        ratio: compression ratio r >= 1 (virtual / real weights; HashedNets' factor is 1/r).
        seed: non-negative integer hash seed; a layer's checkpoint stores it.

    Returns:
        (bucket, sign): bucket is an int64 tensor of `shape` with values in
        [0, K), K = ceil(numel / ratio); sign is a float32 tensor of `shape`
        with values in {-1, +1}.

    Example:
        >>> bucket, sign = hash_positions((1000, 784), ratio=8, seed=0)
        >>> int(bucket.max()) < num_buckets(784_000, 8)
        True
    """
    check_number(seed, "seed", "hash_positions", low=0, high=2**63 - 1, integer=True)
    dims = [check_number(d, "shape", "hash_positions", low=1, integer=True) for d in shape]
    numel = math.prod(dims)
    k = num_buckets(numel, ratio)
    bucket = (_hash64(numel, seed, _KEY_BUCKET) % np.uint64(k)).astype(np.int64)
    top_bit = _hash64(numel, seed, _KEY_SIGN) >> np.uint64(63)
    sign = (1 - 2 * top_bit.astype(np.int8)).astype(np.float32)
    return torch.from_numpy(bucket).view(*dims), torch.from_numpy(sign).view(*dims)
