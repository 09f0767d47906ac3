"""HashedLinear / HashedConv2d against dense oracles, their gradients, checkpoints, cache and compress()."""
import copy
import io

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from hashrobust.layers import HashedConv2d, HashedLinear, compress, count_parameters, decompress


def _saved_bytes(module: nn.Module) -> int:
    buffer = io.BytesIO()
    torch.save(module.state_dict(), buffer)
    return buffer.tell()


def _expanded(layer) -> torch.Tensor:
    return layer.sign * layer.weight.detach()[layer.bucket]  # the definition, by plain indexing


def test_virtual_weight_is_sign_times_gathered_real_weight():
    layer = HashedLinear(7, 5, ratio=4, seed=2)
    assert layer.weight.shape == (9,)  # ceil(35 / 4)
    assert torch.equal(layer.virtual_weight().detach(), _expanded(layer))  # exact: a gather times +-1


def test_linear_matches_dense_oracle():
    torch.manual_seed(0)
    layer = HashedLinear(20, 6, ratio=3, seed=1)
    x = torch.randn(4, 20)
    assert torch.allclose(layer(x), F.linear(x, _expanded(layer), layer.bias), atol=1e-6)


def test_conv_matches_dense_oracle():
    torch.manual_seed(0)
    conv = HashedConv2d(3, 4, 3, ratio=5, seed=9, stride=2, padding=1)
    x = torch.randn(2, 3, 9, 9)
    expected = F.conv2d(x, _expanded(conv), conv.bias, stride=2, padding=1)
    assert conv(x).shape == (2, 4, 5, 5)
    assert torch.allclose(conv(x), expected, atol=1e-6)


@pytest.mark.parametrize("make, shape", [
    (lambda: HashedLinear(6, 5, ratio=3, seed=1), (3, 6)),
    (lambda: HashedConv2d(2, 3, 3, ratio=2, seed=4, padding=1), (2, 2, 5, 5)),
])
def test_gradcheck_float64(make, shape):
    torch.manual_seed(0)
    layer = make().double()
    x = torch.randn(*shape, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, w, b: torch.func.functional_call(layer, {"weight": w, "bias": b}, (x,)),
                                     (x, layer.weight, layer.bias))


def test_real_weight_gradient_is_the_signed_bucket_sum():
    torch.manual_seed(0)
    layer = HashedLinear(30, 20, ratio=8, seed=0)
    x = torch.randn(5, 30)
    layer(x).pow(2).sum().backward()
    ours = layer.weight.grad.clone()
    w = layer.weight.detach().clone().requires_grad_()
    F.linear(x, layer.sign * w[layer.bucket], layer.bias.detach()).pow(2).sum().backward()  # autograd's index backward
    assert torch.allclose(ours, w.grad, atol=1e-5)


def test_state_dict_holds_only_real_weights_bias_and_hash_seed():
    layer = HashedLinear(784, 1000, ratio=64, seed=11)
    state = layer.state_dict()
    assert set(state) == {"weight", "bias", "_extra_state"}
    assert state["_extra_state"] == {"hash_seed": 11, "ratio": 64.0}
    assert state["weight"].shape == (12_250,)


def test_checkpoint_round_trip_rebuilds_the_hash_from_the_stored_seed():
    layer = HashedConv2d(3, 8, 3, ratio=4, seed=5)
    buffer = io.BytesIO()
    torch.save(layer.state_dict(), buffer)
    buffer.seek(0)
    other = HashedConv2d(3, 8, 3, ratio=4, seed=0)  # another seed: the checkpoint's must win
    other.load_state_dict(torch.load(buffer, weights_only=True))
    assert other.seed == 5
    assert torch.equal(other.bucket, layer.bucket) and torch.equal(other.sign, layer.sign)
    x = torch.rand(2, 3, 6, 6)
    assert torch.equal(other(x), layer(x))  # exact: bit-identical weights, the same conv on the same batch


@pytest.mark.parametrize("bias, low, high", [(False, 60, 64.01), (True, 55, 60)])
def test_ratio_64_checkpoint_is_about_a_64th_of_the_dense_one(bias, low, high):
    dense = _saved_bytes(nn.Linear(784, 1000, bias=bias))
    hashed = _saved_bytes(HashedLinear(784, 1000, ratio=64, bias=bias))
    # with bias: (784000 + 1000) / (12250 + 1000) = 59.2 parameters; file headers shave a little off
    assert low <= dense / hashed <= high


def test_cached_virtual_weight_is_reused_and_invalidated_on_change():
    layer = HashedLinear(50, 40, ratio=8)
    with torch.no_grad():
        first = layer.virtual_weight()
        assert layer.virtual_weight() is first
        layer.weight.mul_(2)  # in-place edit bumps the version counter
        second = layer.virtual_weight()
    assert second is not first
    assert torch.allclose(second, 2 * first)


def test_frozen_weights_use_the_cache_and_give_the_same_input_gradient():
    torch.manual_seed(0)
    layer = HashedLinear(30, 10, ratio=4)
    x = torch.randn(3, 30, requires_grad=True)
    (g_live,) = torch.autograd.grad(layer(x).sum(), x)
    layer.requires_grad_(False)
    v = layer.virtual_weight()
    assert layer.virtual_weight() is v and not v.requires_grad
    (g_cached,) = torch.autograd.grad(layer(x).sum(), x)
    assert torch.allclose(g_live, g_cached)


def test_training_updates_invalidate_the_cache():
    torch.manual_seed(0)
    layer = HashedLinear(10, 4, ratio=2)
    opt = torch.optim.SGD(layer.parameters(), lr=0.1)
    x = torch.randn(8, 10)
    with torch.no_grad():
        before = layer(x)
    layer(x).sum().backward()
    opt.step()
    with torch.no_grad():
        after = layer(x)
        assert torch.allclose(after, F.linear(x, _expanded(layer), layer.bias), atol=1e-6)
    assert not torch.allclose(before, after)


def test_dtype_conversion_keeps_the_layer_consistent():
    layer = HashedLinear(10, 4, ratio=2).double()
    assert layer.sign.dtype == torch.float64 and layer.bucket.dtype == torch.int64
    assert layer(torch.randn(2, 10, dtype=torch.float64)).dtype == torch.float64


def test_extra_repr_names_ratio_and_sizes():
    text = repr(HashedLinear(784, 1000, ratio=64))
    assert "ratio=64" in text and "virtual=784000" in text and "real=12250" in text and "in_features=784" in text


@pytest.mark.parametrize("ratio", [0.99, 0, -1, float("nan"), float("inf"), "2", None])
def test_bad_ratio_raises_with_allowed_range(ratio):
    with pytest.raises(ValueError, match=r"'ratio' parameter of HashedLinear must be a number >= 1\. Got"):
        HashedLinear(4, 4, ratio=ratio)
    with pytest.raises(ValueError, match=r"'ratio' parameter of compress must be a number >= 1"):
        compress(nn.Linear(4, 4), ratio)


def _small_net() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 16), nn.ReLU(),
                         nn.Linear(16, 10))


def test_compress_returns_a_new_model_and_leaves_the_original_alone():
    dense = _small_net()
    before = {k: v.clone() for k, v in dense.state_dict().items()}
    hashed = compress(dense, ratio=4)
    assert hashed is not dense
    assert all(torch.equal(before[k], v) for k, v in dense.state_dict().items())
    assert isinstance(hashed[3], HashedLinear) and isinstance(hashed[5], HashedLinear)
    assert isinstance(hashed[0], nn.Conv2d) and not isinstance(hashed[0], HashedConv2d)
    assert (hashed[3].seed, hashed[5].seed) == (0, 1)  # one hash pattern per layer
    assert torch.equal(hashed[3].bias, dense[3].bias)


def test_compress_all_hashes_convolutions_too():
    hashed = compress(_small_net(), ratio=2, layers="all", seed=10)
    assert isinstance(hashed[0], HashedConv2d)
    assert [hashed[i].seed for i in (0, 3, 5)] == [10, 11, 12]
    assert hashed(torch.rand(2, 1, 8, 8)).shape == (2, 10)


def test_compress_ratio_one_is_the_dense_model():
    dense = _small_net()
    same = compress(dense, 1)
    x = torch.rand(2, 1, 8, 8)
    assert torch.equal(same(x), dense(x))
    assert count_parameters(same)[0] == count_parameters(same)[1]


def test_compress_uses_the_least_squares_bucket_means():
    torch.manual_seed(0)
    dense = nn.Linear(40, 30)
    layer = compress(nn.Sequential(dense), ratio=6)[0]
    target = dense.weight.detach()
    for k in [0, 7, 100]:
        members = layer.bucket == k
        assert torch.allclose(layer.weight[k], (layer.sign[members] * target[members]).mean(), atol=1e-6)
    # least squares: the gradient of ||V(w) - W||^2 with respect to w vanishes at the projection
    w = layer.weight.detach().clone().requires_grad_()
    ((layer.sign * w[layer.bucket] - target) ** 2).sum().backward()
    assert w.grad.abs().max() < 1e-5


def test_compress_rejects_unknown_layer_kinds():
    with pytest.raises(ValueError, match="Unknown layers 'conv'; choose one of: all, fc"):
        compress(_small_net(), 2, layers="conv")


def test_count_parameters_real_and_virtual():
    assert count_parameters(HashedLinear(784, 1000, ratio=64)) == (13_250, 785_000)
    model = compress(nn.Sequential(nn.Flatten(), nn.Linear(784, 1000), nn.ReLU(), nn.Linear(1000, 10)), 8)
    assert count_parameters(model) == (98_000 + 1_000 + 1_250 + 10, 795_010)


def test_decompress_computes_the_same_function_with_dense_layers_and_leaves_the_input_alone():
    torch.manual_seed(0)
    dense = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 8 * 8, 10))
    hashed = compress(dense, ratio=8, layers="all").eval()
    before = copy.deepcopy(hashed.state_dict())
    twin = decompress(hashed)
    assert not any(isinstance(m, (HashedLinear, HashedConv2d)) for m in twin.modules())
    virtual = count_parameters(hashed)[1]
    assert count_parameters(twin) == (virtual, virtual)
    assert not twin.training
    x = torch.rand(5, 1, 8, 8, requires_grad=True)
    torch.testing.assert_close(twin(x), hashed(x), rtol=0, atol=1e-6)
    torch.testing.assert_close(twin[3].weight, hashed[3].virtual_weight())
    assert all(torch.equal(before[k], v) for k, v in hashed.state_dict().items() if k in before and torch.is_tensor(v))
    assert type(decompress(HashedLinear(6, 2, ratio=2))) is nn.Linear


# ----------------------------------------------------------------------------- failed loads, unrepresentable layers
def _layer_snapshot(layer) -> dict:
    """Everything a failed load must leave alone: parameters, ratio, seed, hash buffers and the next output."""
    x = torch.rand(2, 3, 6, 6) if isinstance(layer, HashedConv2d) else torch.rand(2, 40)
    with torch.no_grad():
        output = layer(x)
    return {"params": {k: v.detach().clone() for k, v in layer.named_parameters()}, "ratio": layer.ratio,
            "seed": layer.seed, "buffers": {k: v.clone() for k, v in layer.named_buffers()}, "x": x, "output": output}


def _assert_unchanged(layer, before: dict) -> None:
    assert (layer.ratio, layer.seed) == (before["ratio"], before["seed"])
    assert before["params"].keys() == dict(layer.named_parameters()).keys()
    assert all(torch.equal(p, before["params"][k]) for k, p in layer.named_parameters())
    assert all(torch.equal(b, before["buffers"][k]) for k, b in layer.named_buffers())
    with torch.no_grad():
        assert torch.equal(layer(before["x"]), before["output"])  # through the (cached or rebuilt) V


def _without(state: dict, key: str) -> dict:
    return {k: v for k, v in state.items() if k != key}


def _linear(ratio: float = 8, out: int = 30, seed: int = 0) -> HashedLinear:
    return HashedLinear(40, out, ratio=ratio, seed=seed)


def _conv(ratio: float = 4, out: int = 8, seed: int = 0) -> HashedConv2d:
    return HashedConv2d(3, out, 3, ratio=ratio, seed=seed)


BAD_CHECKPOINTS = [  # (make, checkpoint of another layer, what the error says)
    (_linear, lambda: _linear(ratio=64, seed=3).state_dict(), r"checkpoint has ratio 64, this layer ratio 8"),
    (_conv, lambda: _conv(ratio=2, seed=3).state_dict(), r"checkpoint has ratio 2, this layer ratio 4"),
    (_linear, lambda: _linear(out=20, seed=3).state_dict(), r"size mismatch for weight"),
    (_conv, lambda: _conv(out=6, seed=3).state_dict(), r"size mismatch for weight"),
    (_linear, lambda: _without(_linear(seed=3).state_dict(), "bias"), r"Missing key\(s\).*\"bias\""),
    (_conv, lambda: _without(_conv(seed=3).state_dict(), "_extra_state"), r"Missing key\(s\).*\"_extra_state\""),
    (_linear, lambda: {**_linear(seed=3).state_dict(), "scale": torch.ones(1)}, r"Unexpected key\(s\).*\"scale\""),
    (_linear, lambda: {**_linear(seed=3).state_dict(), "_extra_state": {"hash_seed": -1, "ratio": 8.0}},
     r"_extra_state.*'hash_seed'.*>= 0"),
]


@pytest.mark.parametrize("make, checkpoint, message", BAD_CHECKPOINTS, ids=range(len(BAD_CHECKPOINTS)))
def test_failed_load_leaves_the_layer_exactly_as_it_was(make, checkpoint, message):
    torch.manual_seed(0)
    layer = make()
    before = _layer_snapshot(layer)  # its forward under no_grad leaves a cached V, as an attack does
    with pytest.raises(RuntimeError, match=message):
        layer.load_state_dict(checkpoint())
    _assert_unchanged(layer, before)
    layer.load_state_dict(make(seed=3).state_dict())  # a good checkpoint still loads, its seed included
    assert layer.seed == 3


def test_non_strict_load_skips_an_incomplete_hashed_layer_instead_of_half_loading_it():
    torch.manual_seed(0)
    layer = _linear()
    before = _layer_snapshot(layer)
    result = layer.load_state_dict(_without(_linear(seed=3).state_dict(), "_extra_state"), strict=False)
    assert result.missing_keys == ["_extra_state"]  # weights without their seed would compute garbage
    _assert_unchanged(layer, before)


def test_set_extra_state_refuses_another_ratio_and_keeps_the_layer():
    layer = HashedLinear(40, 30, ratio=8, seed=1)
    before = _layer_snapshot(layer)
    with pytest.raises(ValueError, match=r"checkpoint has ratio 64, this layer ratio 8"):
        layer.set_extra_state({"hash_seed": 5, "ratio": 64.0})
    _assert_unchanged(layer, before)


def test_failed_load_through_a_model_leaves_every_hashed_layer_alone():
    from hashrobust.models import build_model

    torch.manual_seed(0)
    model = build_model("mlp3", ratio=64, seed=10)
    x = torch.rand(3, 1, 28, 28)
    with torch.no_grad():
        output = model(x)
    state = copy.deepcopy(model.state_dict())
    with pytest.raises(RuntimeError, match=r"2\._extra_state.*checkpoint has ratio 8, this layer ratio 64"):
        model.load_state_dict(build_model("mlp3", ratio=8).state_dict(), strict=True)
    assert all(torch.equal(v, state[k]) if torch.is_tensor(v) else v == state[k]
               for k, v in model.state_dict().items())
    with torch.no_grad():
        assert torch.equal(model(x), output)
    # one bad layer in a Sequential: that layer is untouched, the message names it
    net = nn.Sequential(HashedLinear(40, 30, ratio=8), nn.ReLU(), HashedLinear(30, 10, ratio=4, seed=1))
    before = _layer_snapshot(net[0])
    checkpoint = _without(nn.Sequential(HashedLinear(40, 30, ratio=8, seed=7), nn.ReLU(),
                                        HashedLinear(30, 10, ratio=4, seed=2)).state_dict(), "0.bias")
    with pytest.raises(RuntimeError, match=r'Missing key\(s\) in state_dict: "0\.bias"'):
        net.load_state_dict(checkpoint, strict=True)
    _assert_unchanged(net[0], before)


def test_compress_rejects_padding_modes_it_cannot_represent():
    net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1, padding_mode="reflect"), nn.Flatten(), nn.Linear(64, 10))
    with pytest.raises(ValueError, match=r"padding_mode='reflect'.*only padding_mode='zeros'"):
        compress(net, 4, layers="all")
    assert isinstance(compress(net, 4, layers="fc")[0], nn.Conv2d)  # "fc" leaves convolutions dense


def test_hash_layers_changes_nothing_when_one_layer_cannot_be_hashed():
    from hashrobust.layers import hash_layers_

    net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.Conv2d(4, 4, 3, padding="same"))
    with pytest.raises(ValueError, match=r"padding='same'"):
        hash_layers_(net, 4, layers="all")
    assert [type(m) for m in net] == [nn.Conv2d, nn.Conv2d]


@pytest.mark.parametrize("groups, dilation", [(2, 1), (1, 2), (4, (2, 1))])
def test_hashed_conv_with_groups_and_dilation_equals_the_dense_conv_of_its_virtual_weight(groups, dilation):
    torch.manual_seed(0)
    dense = nn.Conv2d(4, 8, 3, stride=2, padding=2, dilation=dilation, groups=groups)
    hashed = compress(dense, ratio=3, layers="all")
    assert isinstance(hashed, HashedConv2d) and hashed.virtual_shape == (8, 4 // groups, 3, 3)
    oracle = nn.Conv2d(4, 8, 3, stride=2, padding=2, dilation=dilation, groups=groups)
    with torch.no_grad():
        oracle.weight.copy_(hashed.virtual_weight())
        oracle.bias.copy_(hashed.bias)
    x = torch.rand(2, 4, 11, 11)
    torch.testing.assert_close(hashed(x), oracle(x), rtol=0, atol=1e-6)
    twin = decompress(hashed)
    assert (twin.groups, twin.dilation) == (groups, oracle.dilation)
    torch.testing.assert_close(twin(x), oracle(x), rtol=0, atol=1e-6)


def test_compress_and_decompress_accept_a_bare_layer():
    torch.manual_seed(0)
    linear, conv = nn.Linear(20, 6), nn.Conv2d(2, 3, 3, padding=1)
    hashed = compress(linear, 4)
    assert type(hashed) is HashedLinear and torch.equal(hashed.bias, linear.bias)
    assert type(compress(linear, 4, layers="all")) is HashedLinear
    dense_conv = compress(conv, 4)  # "fc": a convolution stays dense (a copy)
    assert type(dense_conv) is nn.Conv2d and dense_conv is not conv
    hashed_conv = compress(conv, 4, layers="all")
    assert type(hashed_conv) is HashedConv2d
    for layer, x in [(hashed, torch.rand(5, 20)), (hashed_conv, torch.rand(2, 2, 6, 6))]:
        twin = decompress(layer)
        assert type(twin) in (nn.Linear, nn.Conv2d)
        torch.testing.assert_close(twin(x), layer(x), rtol=0, atol=1e-6)
        assert torch.equal(twin.weight, layer.virtual_weight().detach())
