"""The position hash: pinned golden values, uniformity, independence of sign and bucket, portability."""
import math
import subprocess
import sys

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from hashrobust.hashing import hash_positions, num_buckets

# Changing these values changes every bucket and so invalidates every shipped checkpoint.
GOLDEN_BUCKET_3x4_R2_S0 = [[4, 0, 1, 2], [5, 1, 4, 5], [0, 2, 1, 1]]
GOLDEN_SIGN_3x4_R2_S0 = [[-1, 1, 1, -1], [-1, -1, 1, 1], [1, 1, -1, 1]]
GOLDEN_BUCKET_CONV_R3_S7 = [5, 4, 5, 0, 7, 4, 2, 2, 0, 4, 0, 7, 2, 3, 1, 2, 1, 3, 4, 0, 6, 3, 1, 3]
GOLDEN_SIGN_CONV_R3_S7 = [-1, -1, 1, -1, -1, 1, 1, 1, -1, -1, 1, 1, -1, 1, -1, 1, -1, -1, 1, -1, -1, -1, 1, -1]


def test_golden_values_are_pinned():
    bucket, sign = hash_positions((3, 4), ratio=2, seed=0)
    assert bucket.tolist() == GOLDEN_BUCKET_3x4_R2_S0
    assert sign.int().tolist() == GOLDEN_SIGN_3x4_R2_S0
    bucket, sign = hash_positions((2, 3, 2, 2), ratio=3, seed=7)
    assert bucket.flatten().tolist() == GOLDEN_BUCKET_CONV_R3_S7
    assert sign.int().flatten().tolist() == GOLDEN_SIGN_CONV_R3_S7


def test_same_output_in_a_fresh_process():
    code = ("from hashrobust.hashing import hash_positions; b, s = hash_positions((1000, 784), 8, 5); "
            "print(int((b * 31 + 7).sum()), int(s.sum()))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={"PYTHONHASHSEED": "12345", "PATH": ""}).stdout.split()
    bucket, sign = hash_positions((1000, 784), 8, 5)
    assert out == [str(int((bucket * 31 + 7).sum())), str(int(sign.sum()))]


def test_types_shapes_and_range():
    bucket, sign = hash_positions((1000, 784), ratio=64, seed=1)
    assert bucket.dtype == torch.int64 and sign.dtype == torch.float32
    assert bucket.shape == sign.shape == (1000, 784)
    assert int(bucket.min()) == 0 and int(bucket.max()) == num_buckets(784_000, 64) - 1
    assert set(sign.unique().tolist()) == {-1.0, 1.0}


def test_num_buckets_is_ceil_of_virtual_over_ratio():
    assert num_buckets(784_000, 64) == 12_250
    assert num_buckets(10_000, 64) == 157  # ceil(156.25)
    assert num_buckets(10, 1) == 10
    assert num_buckets(10, 1000) == 1


def test_bucket_occupancy_is_uniform_chi_square():
    bucket, _ = hash_positions((1000, 784), ratio=64, seed=0)
    k = num_buckets(784_000, 64)
    counts = torch.bincount(bucket.flatten(), minlength=k).double()
    expected = 784_000 / k
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    # chi-square with k-1 dof: mean k-1, sd sqrt(2(k-1)); a 5-sigma band fails only for a biased hash
    assert abs(chi2 - (k - 1)) < 5 * math.sqrt(2 * (k - 1))


def test_signs_are_balanced_and_independent_of_buckets():
    bucket, sign = hash_positions((1000, 784), ratio=8, seed=3)
    n = sign.numel()
    assert abs(float(sign.mean())) < 4 / math.sqrt(n)  # 4 sigma of a fair coin
    # sign must not be a function of the bucket: within buckets, both signs occur about equally
    parity = (bucket.flatten() % 2).double()
    corr = np.corrcoef(parity.numpy(), sign.flatten().double().numpy())[0, 1]
    assert abs(corr) < 4 / math.sqrt(n)
    signs_per_bucket = torch.zeros(int(bucket.max()) + 1).index_add_(0, bucket.flatten(), sign.flatten())
    sizes = torch.bincount(bucket.flatten()).float()
    assert float((signs_per_bucket.abs() == sizes).float().mean()) < 0.05  # few all-same-sign buckets (~2^-7)


def test_seeds_give_different_hashes():
    b0, s0 = hash_positions((100, 100), 4, seed=0)
    b1, s1 = hash_positions((100, 100), 4, seed=1)
    assert float((b0 == b1).float().mean()) < 0.01
    assert abs(float((s0 == s1).float().mean()) - 0.5) < 0.05


@settings(max_examples=20, deadline=None)
@given(shape=st.lists(st.integers(1, 12), min_size=1, max_size=4), ratio=st.floats(1, 50), seed=st.integers(0, 2**40))
def test_deterministic_and_in_range_for_any_shape(shape, ratio, seed):
    b1, s1 = hash_positions(shape, ratio, seed)
    b2, s2 = hash_positions(shape, ratio, seed)
    assert torch.equal(b1, b2) and torch.equal(s1, s2)
    assert list(b1.shape) == shape
    assert 0 <= int(b1.min()) and int(b1.max()) < num_buckets(math.prod(shape), ratio)


@pytest.mark.parametrize("ratio", [0.5, 0, -3, float("nan"), float("inf"), "8", None, True])
def test_bad_ratio_is_rejected_with_the_allowed_range(ratio):
    with pytest.raises(ValueError, match=r"'ratio' parameter of num_buckets must be a number >= 1\. Got"):
        hash_positions((3, 4), ratio, 0)


@pytest.mark.parametrize("seed", [-1, 1.5, "0"])
def test_bad_seed_is_rejected(seed):
    with pytest.raises(ValueError, match="'seed' parameter of hash_positions must be an integer >= 0"):
        hash_positions((3, 4), 2, seed)
