"""HashedLinear / HashedConv2d against dense oracles, their gradients, checkpoints, cache and compress()."""
import copy
import inspect
import io

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from hashrobust.hashing import hash_positions
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


def test_the_sign_is_folded_into_the_index_and_the_hash_takes_16_bytes_per_virtual_weight():
    """V is read from [w; -w] at h + K (xi < 0); the buffers hold xi (float32) and that index in int64 and int32."""
    layer = HashedLinear(100, 50, ratio=8, seed=3)
    bucket, sign = hash_positions((50, 100), 8, 3)
    k = layer.weight.numel()
    assert torch.equal(layer.bucket, bucket) and torch.equal(layer.sign, sign)
    assert torch.equal(layer.signed_bucket, (bucket + k * (sign < 0)).flatten())
    assert torch.equal(layer.signed_bucket32.long(), layer.signed_bucket)
    assert torch.equal(layer.gather(layer.weight.detach()), _expanded(layer))
    assert sum(b.numel() * b.element_size() for b in layer.buffers()) == 16 * layer.num_virtual


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


# Small float64-friendly layers and an input shape for each: the gradient checks' cases.
SMALL_LAYERS = [
    (lambda: HashedLinear(6, 5, ratio=3, seed=1), (3, 6)),
    (lambda: HashedConv2d(2, 3, 3, ratio=2, seed=4, padding=1), (2, 2, 5, 5)),
]


@pytest.mark.parametrize("make, shape", SMALL_LAYERS)
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


# ----------------------------------------------------------------------------- torch.func, double backward, compile
def _hashed_net() -> nn.Sequential:
    """HashedConv2d + HashedLinear on 1 x 8 x 8 images, 5 classes."""
    torch.manual_seed(0)
    return nn.Sequential(HashedConv2d(1, 3, 3, ratio=4, seed=1), nn.ReLU(), nn.Flatten(),
                         HashedLinear(3 * 6 * 6, 5, ratio=8, seed=2))


def _batch(n: int = 6) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    return torch.rand(n, 1, 8, 8, generator=generator), torch.randint(0, 5, (n,), generator=generator)


def _close_f32(actual: torch.Tensor, expected: torch.Tensor, terms: int) -> None:
    """Two float32 sums of `terms` products in another order: each is within terms * eps * max|term| of the
    exact value (standard summation bound); max|expected| stands in for the largest partial sum."""
    eps = torch.finfo(torch.float32).eps
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=2 * terms * eps * expected.abs().max().item() + 1e-12)


def test_per_sample_gradients_by_vmap_equal_a_loop_of_single_example_backwards():
    model = _hashed_net()
    x, y = _batch()
    params = {k: v.detach() for k, v in model.named_parameters()}

    def loss_fn(params, image, label):
        return F.cross_entropy(torch.func.functional_call(model, params, (image[None],)), label[None])

    per_sample = torch.func.vmap(torch.func.grad(loss_fn), in_dims=(None, 0, 0))(params, x, y)
    for i in range(len(x)):
        model.zero_grad()
        F.cross_entropy(model(x[i:i + 1]), y[i:i + 1]).backward()
        for name, p in model.named_parameters():
            assert per_sample[name].shape == (len(x), *p.shape)
            _close_f32(per_sample[name][i], p.grad, terms=6 * 6 * 8)  # conv: 36 positions x <= 8 bucket members


def test_func_grad_and_jacrev_equal_autograd():
    model = _hashed_net()
    x, y = _batch(3)
    params = {k: v.detach() for k, v in model.named_parameters()}
    grads = torch.func.grad(lambda p: F.cross_entropy(torch.func.functional_call(model, p, (x,)), y))(params)
    jac = torch.func.jacrev(lambda p: torch.func.functional_call(model, p, (x,)))(params)
    model.zero_grad()
    F.cross_entropy(model(x), y).backward()
    for name, p in model.named_parameters():
        _close_f32(grads[name], p.grad, terms=3 * 36 * 8)
        expected = torch.autograd.functional.jacobian(
            lambda w: torch.func.functional_call(model, {**params, name: w}, (x,)), p.detach())
        assert jac[name].shape == (3, 5, *p.shape)
        _close_f32(jac[name], expected, terms=36 * 8)


def test_func_transforms_over_the_input_of_a_frozen_model_equal_autograd_and_leave_the_cache_sound():
    """What a Jacobian-based attack does (JSMA's saliency map, per-example input gradients): frozen weights."""
    model = _hashed_net().requires_grad_(False)
    x, y = _batch(3)
    with torch.no_grad():
        before = model(x)
    single = lambda image: model(image[None])[0]  # noqa: E731
    jac = torch.func.vmap(torch.func.jacrev(single))(x)
    for i in range(len(x)):
        _close_f32(jac[i], torch.autograd.functional.jacobian(single, x[i]), terms=36 * 8)
    per_example = torch.func.vmap(torch.func.grad(lambda image, label: F.cross_entropy(single(image)[None],
                                                                                      label[None])))(x, y)
    assert per_example.shape == x.shape
    with torch.no_grad():
        torch.testing.assert_close(model(x), before, rtol=0, atol=0)


def test_gather_function_passes_gradgradcheck_in_float64():
    from hashrobust.layers import _HashedGather

    layer = HashedConv2d(2, 3, 3, ratio=5, seed=3).double()
    w = layer.weight.detach().clone().requires_grad_()
    index32, index, shape = layer.signed_bucket32, layer.signed_bucket, layer.virtual_shape
    gather = lambda w: _HashedGather.apply(w, index32, index, shape)  # noqa: E731
    assert torch.autograd.gradcheck(gather, (w,))
    assert torch.autograd.gradgradcheck(gather, (w,))


@pytest.mark.parametrize("make, shape", SMALL_LAYERS)
def test_gradgradcheck_float64(make, shape):
    torch.manual_seed(0)
    layer = make().double()
    x = torch.randn(*shape, dtype=torch.float64, requires_grad=True)
    call = lambda x, w, b: torch.func.functional_call(layer, {"weight": w, "bias": b}, (x,))  # noqa: E731
    assert torch.autograd.gradgradcheck(call, (x, layer.weight, layer.bias))


@pytest.mark.parametrize("penalised", ["input", "weight"])
@pytest.mark.parametrize("make, shape", [
    (lambda: HashedLinear(12, 7, ratio=3, seed=1), (4, 12)),
    (lambda: HashedConv2d(2, 3, 3, ratio=2, seed=4, padding=1), (2, 2, 5, 5)),
])
def test_gradient_penalty_reaches_the_real_weights_as_through_the_dense_twin(make, shape, penalised):
    """||d loss / d x||^2 (input) or ||d loss / d w||^2 (weight) backpropagated to w: the hashed layer's own
    backward must be differentiable for the second; both must equal the dense layer of weight
    V = sign * w[bucket] built by autograd's (twice differentiable) indexing, i.e. the chain rule through V."""
    torch.manual_seed(0)
    layer = make()
    dense = decompress(layer)  # nn.Linear / nn.Conv2d of the same geometry; its weight is V, passed below
    x = torch.randn(*shape)

    def penalty(forward, w):
        inp = x.clone().requires_grad_()
        loss = forward(inp, w).tanh().pow(2).sum()
        (g,) = torch.autograd.grad(loss, inp if penalised == "input" else w, create_graph=True)
        return g.pow(2).sum()

    bias = layer.bias.detach()
    (ours,) = torch.autograd.grad(penalty(
        lambda inp, w: torch.func.functional_call(layer, {"weight": w, "bias": bias}, (inp,)), layer.weight),
        layer.weight)
    w_ref = layer.weight.detach().clone().requires_grad_()
    (expected,) = torch.autograd.grad(penalty(
        lambda inp, w: torch.func.functional_call(dense, {"weight": layer.sign * w[layer.bucket], "bias": bias},
                                                  (inp,)), w_ref), w_ref)
    assert ours is not None and expected.abs().max() > 0
    _close_f32(ours, expected, terms=4 * 25 * 8)


@pytest.fixture
def own_inductor_cache(tmp_path, monkeypatch):
    """A fresh inductor cache for each compile test. CI runs the suite twice, on the CPU's own kernels and again
    under ATEN_CPU_CAPABILITY=avx2; inductor's shared on-disk cache then served the first run's AVX-512 kernels to
    the second (NaN outputs, a crash): nothing here may depend on another run's compiled files."""
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def test_torch_compile_of_a_hashed_model_matches_eager_in_training_and_in_eval(own_inductor_cache):
    """Inductor (the default backend; gcc is on these machines), one graph: no break at the V cache."""
    torch._dynamo.reset()
    model = _hashed_net()
    x, y = _batch()
    compiled = torch.compile(model, fullgraph=True)
    F.cross_entropy(compiled(x), y).backward()
    grads = {k: p.grad.clone() for k, p in model.named_parameters()}
    model.zero_grad()
    F.cross_entropy(model(x), y).backward()
    for name, p in model.named_parameters():
        _close_f32(grads[name], p.grad, terms=6 * 36 * 8)
    model.eval().requires_grad_(False)  # the attack path: frozen weights
    with torch.no_grad():
        _close_f32(compiled(x), model(x), terms=3 * 36)
        for layer in (model[0], model[3]):  # the compiled graph must not have frozen V in as a constant
            layer.weight.mul_(-2)
        _close_f32(compiled(x), F.linear(F.relu(F.conv2d(x, _expanded(model[0]), model[0].bias)).flatten(1),
                                         _expanded(model[3]), model[3].bias), terms=3 * 36)


def test_torch_compile_of_the_shipped_mlp3_r8_matches_eager(own_inductor_cache):
    from hashrobust.zoo import load_pretrained

    torch._dynamo.reset()
    model = load_pretrained("mnist", "mlp3", 8)
    x, y = _batch(16)
    x = F.interpolate(x, size=(28, 28))
    compiled = torch.compile(model)
    with torch.no_grad():
        model.requires_grad_(False)
        _close_f32(compiled(x), model(x), terms=1000)
        model.requires_grad_(True)
    model.train()
    F.cross_entropy(compiled(x), y).backward()
    grads = {k: p.grad.clone() for k, p in model.named_parameters()}
    model.zero_grad()
    F.cross_entropy(model(x), y).backward()
    for name, p in model.named_parameters():
        _close_f32(grads[name], p.grad, terms=16 * 64)


def test_autocast_bf16_trains_and_attacks_a_hashed_model():
    from hashrobust.attacks import FGSM, PGD

    model = _hashed_net()
    x, y = _batch(8)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model(x)
        loss = F.cross_entropy(logits, y)
    assert logits.dtype == torch.bfloat16 and torch.isfinite(logits).all()
    loss.backward()
    for p in model.parameters():
        assert p.grad.dtype == p.dtype == torch.float32 and torch.isfinite(p.grad).all()
    opt.step()
    assert all(torch.isfinite(p).all() for p in model.parameters())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        for attack in (FGSM(model, eps=0.1), PGD(model, eps=0.1, alpha=0.04, steps=3)):
            adv = attack(x, y)
            assert adv.dtype == torch.float32 and torch.isfinite(adv).all()
            assert (adv - x).abs().max() <= 0.1 + 1e-6
    assert all(p.requires_grad for p in model.parameters())  # the attacks gave the flags back


# ----------------------------------------------------------------------------- the V cache is never stale
def _optimizer_cases() -> list:
    cases = []
    for name in sorted(torch.optim.__all__):
        cls = getattr(torch.optim, name)
        if not (isinstance(cls, type) and issubclass(cls, torch.optim.Optimizer)):
            continue
        parameters = inspect.signature(cls.__init__).parameters
        cases += [pytest.param(cls, flag, id=f"{name}-{flag}") for flag in ("fused", "foreach") if flag in parameters]
    return cases


@pytest.mark.parametrize("optimizer, flag", _optimizer_cases())
def test_fused_and_foreach_optimizer_steps_never_leave_a_stale_virtual_weight(optimizer, flag):
    torch.manual_seed(0)
    layer = HashedLinear(10, 4, ratio=2)
    x = torch.randn(8, 10)
    try:
        opt = optimizer(layer.parameters(), lr=0.1, **{flag: True})
        for _ in range(2):
            with torch.no_grad():
                layer(x)  # fills the cache
            opt.zero_grad()
            layer(x).pow(2).sum().backward()
            opt.step()
    except RuntimeError as error:  # e.g. fused=True on a device the kernel does not support
        if flag == "fused" and "fused" in str(error):
            pytest.skip(f"{optimizer.__name__}(fused=True) does not run on CPU: {error}")
        raise
    with torch.no_grad():
        torch.testing.assert_close(layer(x), F.linear(x, _expanded(layer), layer.bias), rtol=0, atol=1e-6)


def test_inference_mode_forward_does_not_poison_the_cache():
    from hashrobust.attacks import FGSM

    model = _hashed_net()
    x, y = _batch(4)
    with torch.inference_mode():
        expected = model(x)
    adv = FGSM(model, eps=0.1)(x, y)  # frozen weights: the cached V, inside autograd
    assert torch.isfinite(adv).all()
    model.requires_grad_(False)
    with torch.inference_mode():
        model(x)
    assert not model[3].virtual_weight().is_inference()
    model.requires_grad_(True)
    F.cross_entropy(model(x), y).backward()  # a training step after inference mode
    assert all(p.grad is not None for p in model.parameters())
    with torch.no_grad():
        torch.testing.assert_close(model(x), expected, rtol=0, atol=0)


def _module_bytes(module: nn.Module) -> int:
    buffer = io.BytesIO()
    torch.save(module, buffer)  # the whole module, pickled
    return buffer.tell()


def _assert_fresh(layer, x) -> None:
    with torch.no_grad():
        torch.testing.assert_close(layer(x), F.linear(x, _expanded(layer), layer.bias))


def test_data_swaps_never_leave_a_stale_virtual_weight():
    torch.manual_seed(0)
    layer = HashedLinear(100, 50, ratio=8)  # 625 real weights: the old (version, data_ptr) key was stale in 47 of 50
    x = torch.randn(3, 100)
    stale = 0
    for _ in range(50):
        with torch.no_grad():
            layer(x)
        layer.weight.data = torch.randn(layer.weight.shape)  # two swaps: the allocator may hand the first
        layer.weight.data = torch.randn(layer.weight.shape)  # address back to the second
        with torch.no_grad():
            stale += not torch.allclose(layer(x), F.linear(x, _expanded(layer), layer.bias), rtol=0, atol=1e-6)
    assert stale == 0, f"stale V in {stale} of 50 double swaps"


def _load_other(layer) -> None:
    layer.load_state_dict(HashedLinear(20, 10, ratio=4, seed=layer.seed).state_dict())


CHANGES = {  # what may change the real weights between two no_grad forwards
    "load_state_dict": _load_other,
    "data in place": lambda layer: layer.weight.data.mul_(-2),  # .data has its own version counter
    "in place under no_grad": lambda layer: layer.weight.mul_(3),
    "index assignment": lambda layer: layer.weight.__setitem__(slice(0, 5), 0.5),
    "init": lambda layer: nn.init.normal_(layer.weight),
    "to float64": lambda layer: layer.to(torch.float64),
    "double": lambda layer: layer.double(),
    "half then float": lambda layer: layer.half().float(),
    "to cpu": lambda layer: layer.to("cpu"),
    "copy_": lambda layer: layer.weight.copy_(torch.randn(layer.weight.shape)),
}


@pytest.mark.parametrize("change", CHANGES.values(), ids=CHANGES.keys())
def test_every_weight_change_invalidates_the_cache(change):
    torch.manual_seed(0)
    layer = HashedLinear(20, 10, ratio=4)
    with torch.no_grad():
        layer(torch.randn(3, 20))  # fills the cache
        change(layer)
    _assert_fresh(layer, torch.randn(3, 20, dtype=layer.weight.dtype))


def test_half_layer_uses_a_fresh_half_virtual_weight():
    torch.manual_seed(0)
    layer = HashedLinear(20, 10, ratio=4)
    with torch.no_grad():
        layer(torch.randn(3, 20))
    layer.half()
    with torch.no_grad():
        assert layer.virtual_weight().dtype == torch.float16
        assert torch.equal(layer.virtual_weight(), _expanded(layer))


def test_torch_save_of_a_whole_module_holds_the_real_weights_only():
    layer = HashedLinear(100, 50, ratio=8)
    before = _module_bytes(layer)
    with torch.no_grad():
        layer(torch.randn(2, 100))
    virtual_bytes = layer.num_virtual * 4
    assert _module_bytes(layer) <= before + 64  # no V
    assert before <= _saved_bytes(layer) + 2048 < virtual_bytes / 2  # the state_dict and the module's own attributes
    buffer = io.BytesIO()
    torch.save(layer, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False)
    _assert_fresh(loaded, torch.randn(2, 100))


def test_deepcopy_carries_no_cache_and_shares_none():
    torch.manual_seed(0)
    layer = HashedLinear(100, 50, ratio=8)
    x = torch.randn(2, 100)
    before = _module_bytes(layer)
    with torch.no_grad():
        layer(x)
    twin = copy.deepcopy(layer)
    assert _module_bytes(twin) <= before + 64
    with torch.no_grad():
        twin.weight.mul_(-1)
        layer(x), twin(x)
        layer.weight.add_(1)
    _assert_fresh(twin, x)
    _assert_fresh(layer, x)
