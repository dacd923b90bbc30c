"""hf_onebit.formats: one WeightFormat object per format, consistent with the layouts and the layer."""

import pytest
import torch

from hf_onebit import OneBitConfig
from hf_onebit.formats import BINARY, FORMATS, TERNARY, get_format
from hf_onebit.nn.linear import OneBitLinear
from hf_onebit.formats.packing import packed_columns, unpack_weight


@pytest.mark.parametrize("fmt", [BINARY, TERNARY], ids=lambda f: f.name)
def test_quantize_is_pack_of_codes_and_unpacks_to_the_codes(fmt):
    torch.manual_seed(0)
    latent = torch.randn(13, 37)
    codes = fmt.codes(latent)
    assert codes.dtype == torch.int8
    allowed = {-1, 1} if fmt is BINARY else {-1, 0, 1}
    assert set(codes.unique().tolist()) <= allowed
    packed = fmt.quantize(latent)
    assert packed.dtype == torch.uint8 and packed.shape == (13, fmt.packed_columns(37))
    assert fmt.packed_columns(37) == packed_columns(37, fmt.name)
    assert torch.equal(packed, fmt.pack(codes))
    assert torch.equal(fmt.unpack(packed, 37), codes.float())
    assert torch.equal(unpack_weight(packed, 37, torch.float32, fmt.name), codes.float())
    # the hard quantizer used in training computes the same values, with a gradient
    w = latent.clone().requires_grad_(True)
    hard = fmt.hard(w)
    assert torch.equal(hard.detach(), codes.float())
    hard.sum().backward()
    assert w.grad is not None and torch.isfinite(w.grad).all()


@pytest.mark.parametrize("fmt", [BINARY, TERNARY], ids=lambda f: f.name)
def test_fit_approximates_the_weight_better_than_its_codes_alone(fmt):
    torch.manual_seed(1)
    weight = torch.randn(32, 48) * torch.linspace(0.1, 2.0, 48)  # uneven columns: g has something to fit
    values, g, h = fmt.fit(weight, "svid", 30)
    approx = h[:, None] * values.float() * g[None, :]
    plain = values.float() * weight.abs().mean()
    assert (weight - approx).norm() < 0.9 * (weight - plain).norm()


@pytest.mark.parametrize("name", ["binary", "ternary"])
def test_the_layer_packs_with_its_format(name):
    torch.manual_seed(2)
    linear = torch.nn.Linear(24, 10)
    latent = OneBitLinear.from_linear(linear, OneBitConfig(weight_format=name, training=True))
    assert latent.format is FORMATS[name]
    expected = latent.format.quantize(latent.weight)
    assert torch.equal(latent.packed_state()["weight"], expected)
    latent.pack_()
    assert torch.equal(latent.weight.data, expected)


def test_get_format_names_the_field_value_and_what_is_allowed():
    assert get_format("ternary") is TERNARY and get_format(BINARY) is BINARY
    with pytest.raises(ValueError, match=r"weight_format: got 'int4'; allowed: one of \('binary', 'ternary'\)"):
        get_format("int4")
    with pytest.raises(ValueError, match="OneBitLinear.weight_format: got 'int4'"):
        OneBitLinear(8, 8, weight_format="int4")
