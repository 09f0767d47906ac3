"""The protocol's networks: shapes, parameter counts, hashing and checkpoint compatibility."""
import pytest
import torch

from hashrobust.layers import HashedConv2d, HashedLinear, compress, count_parameters
from hashrobust.models import ARCHS, Normalize, build_model

INPUTS = {"mlp3": (1, 28, 28), "mlp5": (1, 28, 28), "lenet": (1, 28, 28), "cifar_cnn": (3, 32, 32)}
DENSE_PARAMETERS = {
    "mlp3": 784 * 1000 + 1000 + 1000 * 10 + 10,
    "mlp5": 784 * 1000 + 1000 + 2 * (1000 * 1000 + 1000) + 1000 * 10 + 10,
    "lenet": (20 * 25 + 20) + (50 * 20 * 25 + 50) + (800 * 500 + 500) + (500 * 10 + 10),
}


@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_output_shape_and_normalisation_layer(arch):
    model = build_model(arch).eval()
    assert isinstance(model[0], Normalize)
    assert model(torch.rand(3, *INPUTS[arch])).shape == (3, 10)


@pytest.mark.parametrize("arch", sorted(DENSE_PARAMETERS))
def test_dense_parameter_counts(arch):
    real, virtual = count_parameters(build_model(arch))
    assert real == virtual == DENSE_PARAMETERS[arch]


@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_hashed_fc_layers_compress_by_the_ratio(arch):
    model = build_model(arch, ratio=8)
    hashed = [m for m in model.modules() if isinstance(m, HashedLinear)]
    assert hashed and not any(isinstance(m, torch.nn.Linear) for m in model.modules())
    assert all(m.weight.numel() == -(-m.num_virtual // 8) for m in hashed)
    assert not any(isinstance(m, HashedConv2d) for m in model.modules())
    real, virtual = count_parameters(model)
    assert virtual == count_parameters(build_model(arch))[1] and real < virtual


def test_hashed_all_also_hashes_convolutions():
    model = build_model("lenet", ratio=4, hashed="all")
    assert sum(isinstance(m, HashedConv2d) for m in model.modules()) == 2


@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_built_and_compressed_models_share_checkpoint_keys(arch):
    built = build_model(arch, ratio=16)
    compressed = compress(build_model(arch), ratio=16)
    assert built.state_dict().keys() == compressed.state_dict().keys()
    built.load_state_dict(compressed.state_dict())
    x = torch.rand(2, *INPUTS[arch])
    assert torch.equal(built.eval()(x), compressed.eval()(x))  # exact: the same weights, ops and batch


def test_fresh_hashed_init_has_dense_init_scale():
    torch.manual_seed(0)
    dense_std = build_model("mlp3")[2].weight.detach().std()
    hashed_std = build_model("mlp3", ratio=8)[2].virtual_weight().detach().std()
    assert abs(float(hashed_std / dense_std) - 1) < 0.05


def test_unknown_arch_lists_the_valid_ones():
    with pytest.raises(ValueError, match="Unknown arch 'lenet4'; choose one of: cifar_cnn, lenet, mlp3, mlp5."):
        build_model("lenet4")


def test_bad_ratio_and_hashed():
    with pytest.raises(ValueError, match="'ratio' parameter of build_model must be a number >= 1. Got 0.5"):
        build_model("mlp3", ratio=0.5)
    with pytest.raises(ValueError, match="Unknown hashed 'conv'"):
        build_model("mlp3", ratio=2, hashed="conv")
