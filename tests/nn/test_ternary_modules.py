"""Ternary (BitNet b1.58) OneBitLinear: hard ternarizer, packed / latent forms, initialisation quality."""

import pytest
import torch
import torch.nn as nn

from hf_onebit import OneBitConfig, OneBitLinear
from hf_onebit.formats.init import absmean_ternary, svid_rank1, ternary_init
from hf_onebit.nn.linear import hard_ternary, quantize_weight
from hf_onebit.formats.packing import pack_ternary, packed_columns, unpack_ternary

TERNARY = dict(weight_format="ternary", scale_dtype="float32", act_bits=0)  # exact activations: compared with floats


def make_layer(inp=100, out=72, bias=True, **cfg):
    torch.manual_seed(inp * 7 + out)
    lin = nn.Linear(inp, out, bias=bias)
    return lin, OneBitLinear.from_linear(lin, OneBitConfig(**{**TERNARY, **cfg}))


def structured_matrix(out=192, inp=160, seed=0):
    """A pretrained-like weight: Gaussian entries times log-normal row and column scales (log-std 0.5 / 0.3; the
    SmolLM2-135M layers measure up to 0.48 over rows and ~0.15 over columns)."""
    gen = torch.Generator().manual_seed(seed)
    rows = torch.exp(0.5 * torch.randn(out, 1, generator=gen))
    cols = torch.exp(0.3 * torch.randn(1, inp, generator=gen))
    return 0.02 * rows * cols * torch.randn(out, inp, generator=gen)


def rel_error(w, approx):
    return float((w - approx).norm() / w.norm())


def test_hard_ternary_values_and_straight_through_gradient():
    w = torch.tensor([[0.9, -0.2, 0.05, -1.5], [0.0, 0.0, 0.0, 0.0], [2.0, 2.0, -2.0, 2.0]], requires_grad=True)
    t = hard_ternary(w)
    # row 0: mean |w| = 0.6625 -> 0.9/s = 1.36 -> 1, -0.2/s = -0.30 -> 0, 0.05 -> 0, -1.5/s -> -1
    assert t.tolist() == [[1, 0, 0, -1], [0, 0, 0, 0], [1, 1, -1, 1]]
    g = torch.randn(3, 4)
    t.backward(g)
    assert torch.equal(w.grad, g)


@pytest.mark.parametrize("inp,out", [(100, 72), (1, 3), (3, 5), (9, 17), (64, 64), (257, 33)])
@pytest.mark.parametrize("bias", [True, False])
def test_from_linear_packs_absmean_codes_and_forward_matches_dense(inp, out, bias):
    lin, layer = make_layer(inp, out, bias)
    assert layer.weight_format == "ternary" and layer.weight.dtype == torch.uint8
    assert tuple(layer.weight.shape) == (out, packed_columns(inp, "ternary")) == (out, (inp + 3) // 4)
    assert torch.equal(layer.weight, pack_ternary(absmean_ternary(lin.weight)))
    x = torch.randn(5, inp)
    dense = layer.dequantize_weight()
    expected = x @ dense.T + (lin.bias if bias else 0)
    torch.testing.assert_close(layer(x), expected, rtol=1e-5, atol=1e-5)
    layer.check_packed()
    assert "weight_format=ternary" in repr(layer)


def test_latent_forward_equals_packed_forward_and_pack_is_exact():
    lin, packed = make_layer()
    latent = OneBitLinear.from_linear(lin, OneBitConfig(**TERNARY, training=True))
    assert latent.is_latent and torch.equal(latent.weight, lin.weight)  # latent init is W itself
    assert latent.binarizer is hard_ternary
    x = torch.randn(4, 100)
    torch.testing.assert_close(latent(x), packed(x))
    latent.weight.data += 0.05 * torch.randn_like(latent.weight)  # training moves latent weights
    before = latent(x).detach()
    state = latent.packed_state()
    latent.pack_()
    assert latent.weight.dtype == torch.uint8 and latent.weight.shape == (72, 25)
    assert torch.equal(latent.weight, state["weight"])
    torch.testing.assert_close(latent(x), before, rtol=1e-5, atol=1e-5)


def test_latent_gradients_flow_to_weight_and_scales():
    lin, _ = make_layer()
    latent = OneBitLinear.from_linear(lin, OneBitConfig(**TERNARY, training=True))
    latent(torch.randn(3, 100)).pow(2).sum().backward()
    for p in (latent.weight, latent.scale_in, latent.scale_out):
        assert p.grad is not None and p.grad.abs().sum() > 0


def test_to_latent_reproduces_codes_including_zero_and_full_rows():
    lin, layer = make_layer(inp=9, out=6, bias=False)
    codes = torch.tensor([[1, 0, -1, 0, 0, 1, 0, 0, 0]] * 6, dtype=torch.float32)
    codes[1] = 0  # all-zero row: row absmean 0 -> clamped scale, stays 0
    codes[2] = torch.tensor([1, -1, 1, 1, -1, -1, 1, 1, -1.0])  # no zero: absmean 1
    codes[3, 4] = 1  # a single non-zero changes f
    codes[4] = 0
    codes[4, 8] = -1  # one non-zero in the padded last byte
    layer.weight.data = pack_ternary(codes)
    x = torch.randn(3, 9)
    before = layer(x)
    layer.to_latent_()
    assert layer.is_latent and torch.equal(layer.weight, codes)
    assert torch.equal(absmean_ternary(layer.weight), codes)
    torch.testing.assert_close(layer(x), before)
    layer.pack_()
    assert torch.equal(unpack_ternary(layer.weight, 9), codes)
    torch.testing.assert_close(layer(x), before)


def test_binary_default_is_unchanged_and_formats_are_checked():
    lin = nn.Linear(20, 8)
    binary = OneBitLinear.from_linear(lin, OneBitConfig())
    assert binary.weight_format == "binary" and binary.weight.shape == (8, 3) and "weight_format" not in repr(binary)
    with pytest.raises(ValueError, match=r"OneBitLinear\.weight_format: got 'int4'; allowed"):
        OneBitLinear(20, 8, weight_format="int4")
    with pytest.raises(ValueError, match=r"OneBitConfig\.weight_format: got 'int2'"):
        OneBitConfig(weight_format="int2")
    ternary = OneBitLinear.from_linear(lin, OneBitConfig(weight_format="ternary"))
    ternary.weight.data = binary.weight.data  # 3 bytes per row: a binary-shaped weight
    with pytest.raises(ValueError, match=r"layer\.weight: packed ternary codes have shape \(8, 3\), expected \(8, 5\)"):
        ternary.check_packed("layer.")


def test_config_serialises_weight_format():
    cfg = OneBitConfig(weight_format="ternary", act_bits=8)
    assert cfg.to_dict()["weight_format"] == "ternary" and cfg.to_diff_dict()["weight_format"] == "ternary"
    assert cfg.layer_kwargs()["weight_format"] == "ternary"
    assert OneBitConfig.from_dict(cfg.to_dict()).weight_format == "ternary"
    assert "weight_format" not in OneBitConfig().to_diff_dict()


def test_int8_activations_error_is_small():
    lin, layer = make_layer(inp=512, out=256)
    x = torch.randn(8, 512)
    with torch.no_grad():
        exact = layer(x)
    layer.act_bits = 8
    with torch.no_grad():
        rel = float((layer(x) - exact).norm() / exact.norm())
    assert 0 < rel < 1e-2


def test_ternary_init_beats_binary_svid_and_the_absmean_baseline():
    w = structured_matrix()
    values, h, g = ternary_init(w)
    ternary = rel_error(w, h[:, None] * values * g[None, :])
    a, b = svid_rank1(w)
    binary = rel_error(w, a[:, None] * torch.where(w >= 0, 1.0, -1.0) * b[None, :])
    # BitNet-style start: the same codes, g = 1, h = the row absmean
    absmean = rel_error(w, w.abs().mean(dim=1, keepdim=True) * values)
    assert torch.equal(values, absmean_ternary(w))
    assert ternary < 0.85 * binary, (ternary, binary)  # measured 0.472 vs 0.600
    assert ternary < 0.9 * absmean, (ternary, absmean)  # measured 0.472 vs 0.573
    # refinement steps never increase the error; g and h have balanced norms (fp16-safe)
    v0, h0, g0 = ternary_init(w, refine_steps=0)
    assert ternary <= rel_error(w, h0[:, None] * v0 * g0[None, :]) + 1e-6
    torch.testing.assert_close(h.norm(), g.norm())


def test_quantize_weight_packed_matches_latent_and_fp16_storage():
    w = structured_matrix(out=24, inp=37)
    cfg = OneBitConfig(weight_format="ternary")
    packed = quantize_weight(w, cfg)
    latent = quantize_weight(w, OneBitConfig(weight_format="ternary", training=True), latent=True)
    assert packed["weight"].shape == (24, 10) and packed["scale_in"].dtype == torch.float16
    assert torch.equal(packed["weight"], pack_ternary(absmean_ternary(latent["weight"])))
    torch.testing.assert_close(packed["scale_out"].float(), latent["scale_out"], rtol=1e-3, atol=0)
