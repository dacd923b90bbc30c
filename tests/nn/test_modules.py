import pytest
import torch
import torch.nn as nn

from hf_onebit import OneBitConfig, OneBitLinear, ops
from hf_onebit.ops import reference
from hf_onebit.formats.packing import pack_signs

TOL = {torch.float32: 1e-5, torch.bfloat16: 2e-2, torch.float16: 2e-3}


def make_layer(inp=100, out=72, bias=True, **cfg):
    torch.manual_seed(inp * 7 + out)
    lin = nn.Linear(inp, out, bias=bias)
    # exact float activations unless a test asks for int8: these tests compare the layer with float arithmetic
    return lin, OneBitLinear.from_linear(lin, OneBitConfig(**{"act_bits": 0, **cfg}))


@pytest.mark.parametrize("inp,out", [(100, 72), (1, 3), (9, 17), (64, 64), (257, 33)])
@pytest.mark.parametrize("bias", [True, False])
def test_from_linear_is_svid_of_the_weight(inp, out, bias):
    lin, layer = make_layer(inp, out, bias, scale_dtype="float32")
    assert layer.weight.dtype == torch.uint8 and not layer.weight.requires_grad
    assert torch.equal(layer.weight, pack_signs(lin.weight.detach()))
    x = torch.randn(5, inp)
    dense = layer.dequantize_weight()
    expected = x @ dense.T + (lin.bias if bias else 0)
    torch.testing.assert_close(layer(x), expected, rtol=1e-5, atol=1e-5)
    # dense = sign(W) * a b^T
    assert torch.equal(torch.sign(dense), torch.where(lin.weight >= 0, 1.0, -1.0) * torch.sign(dense.abs()))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_reference_op_dtypes(dtype):
    lin, layer = make_layer(scale_dtype="float32")
    x = torch.randn(3, 4, 100)
    y = layer.to(dtype)(x.to(dtype))
    assert y.dtype == dtype and y.shape == (3, 4, 72)
    exact = x @ layer.dequantize_weight().T + layer.bias.float()
    assert (y.float() - exact).abs().max() <= TOL[dtype] * exact.abs().max() * 4


def test_int8_activation_mode_error_is_small():
    lin, layer = make_layer(inp=512, out=256, scale_dtype="float32")
    x = torch.randn(8, 512)
    exact = layer(x)
    layer.act_bits = 8
    approx = layer(x)
    rel = (approx - exact).norm() / exact.norm()
    assert 0 < rel < 1e-2


def test_latent_form_equals_packed_and_pack_is_exact():
    lin, packed = make_layer(scale_dtype="float32")
    latent = OneBitLinear.from_linear(lin, OneBitConfig(scale_dtype="float32", training=True, act_bits=0))
    assert latent.is_latent and latent.weight.dtype == torch.float32 and latent.weight.requires_grad
    x = torch.randn(4, 100)
    torch.testing.assert_close(latent(x), packed(x))
    latent.weight.data += 0.01 * torch.randn_like(latent.weight)  # training moves latent weights
    before = latent(x).detach()
    latent.pack_()
    assert not latent.is_latent
    torch.testing.assert_close(latent(x), before)


def test_to_latent_keeps_function():
    lin, layer = make_layer()
    x = torch.randn(2, 100)
    y = layer(x)
    layer.to_latent_()
    assert layer.is_latent
    torch.testing.assert_close(layer(x), y, rtol=1e-3, atol=1e-3)


def test_post_layernorm_normalises_rows():
    lin, layer = make_layer(post_layernorm=True, bias=False)
    y = layer(torch.randn(6, 100))
    torch.testing.assert_close(y.mean(-1), torch.zeros(6), atol=1e-4, rtol=0)
    torch.testing.assert_close(y.std(-1, unbiased=False), torch.ones(6), atol=1e-3, rtol=0)


def test_gradients_of_packed_layer_match_reference():
    lin, layer = make_layer(scale_dtype="float32")
    x = torch.randn(3, 100, requires_grad=True)
    layer(x).square().sum().backward()
    grads = [x.grad.clone(), layer.scale_in.grad.clone(), layer.scale_out.grad.clone(), layer.bias.grad.clone()]
    # autograd through the dense reference formula
    x2 = x.detach().clone().requires_grad_()
    g = layer.scale_in.detach().clone().requires_grad_()
    h = layer.scale_out.detach().clone().requires_grad_()
    b = layer.bias.detach().clone().requires_grad_()
    s = torch.where(lin.weight >= 0, 1.0, -1.0)
    (((x2 * g) @ s.T * h + b).square().sum()).backward()
    for got, want in zip(grads, [x2.grad, g.grad, h.grad, b.grad]):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


def test_compile_and_opcheck():
    lin, layer = make_layer(scale_dtype="float32")
    x = torch.randn(2, 5, 100)
    torch.testing.assert_close(torch.compile(layer)(x), layer(x))
    torch.library.opcheck(
        torch.ops.hf_onebit.binary_linear, (x, layer.weight, layer.scale_in, layer.scale_out, layer.bias, 100, 0)
    )


def test_backend_choice():
    lin, layer = make_layer()
    x = torch.randn(2, 100)
    assert "reference" in ops.available_backends()
    layer.backend = "reference"
    y_ref = layer(x)
    torch.testing.assert_close(y_ref, reference.binary_linear(x, layer.weight, layer.scale_in, layer.scale_out, layer.bias, 100))
    with pytest.raises(ValueError, match="backend: 'nope'"):
        ops.binary_linear(x, layer.weight, layer.scale_in, layer.scale_out, None, 100, backend="nope")
    with pytest.raises(ValueError, match="act_bits"):
        ops.binary_linear(x, layer.weight, layer.scale_in, layer.scale_out, None, 100, act_bits=3)


def test_from_linear_rejects_meta():
    with torch.device("meta"):
        lin = nn.Linear(4, 4)
    with pytest.raises(ValueError, match="meta"):
        OneBitLinear.from_linear(lin)
