"""packed_linear skips the custom-op dispatcher only where it adds nothing (eager, no gradient needed)."""

import pytest
import torch

from hf_onebit import ops
from hf_onebit.formats.packing import pack_signs, pack_ternary


class _Called(Exception):
    pass


@pytest.fixture
def op_spy(monkeypatch):
    calls = []

    def spy(fmt):
        real = ops._OPS[fmt]

        def wrapped(*args):
            calls.append(fmt)
            return real(*args)

        return wrapped

    monkeypatch.setattr(ops, "_OPS", {fmt: spy(fmt) for fmt in ops._OPS})
    return calls


@pytest.mark.parametrize("fmt", ["binary", "ternary"])
def test_eager_inference_bypasses_the_dispatcher_with_the_same_result(op_spy, fmt):
    torch.manual_seed(0)
    w = torch.randn(9, 21)
    packed = pack_signs(w) if fmt == "binary" else pack_ternary(w.sign())
    x, g, h = torch.randn(3, 21), torch.rand(21) + 0.5, torch.rand(9) + 0.5
    expected = ops.reference.packed_linear(x, packed, g, h, None, 21, 0, fmt)
    y = ops.packed_linear(x, packed, g, h, None, 21, weight_format=fmt)
    assert op_spy == [] and torch.allclose(y, expected, atol=1e-5)
    # A gradient is needed: the custom op (with its autograd formula) runs, and the gradient is right.
    xg = x.clone().requires_grad_()
    y2 = ops.packed_linear(xg, packed, g, h, None, 21, weight_format=fmt)
    assert op_spy == [fmt]
    y2.sum().backward()
    xr = x.clone().requires_grad_()
    ops.reference.packed_linear(xr, packed, g, h, None, 21, 0, fmt).sum().backward()
    torch.testing.assert_close(xg.grad, xr.grad, rtol=1e-5, atol=1e-5)
    # Under no_grad even trainable inputs take the direct path.
    with torch.no_grad():
        ops.packed_linear(xg, packed, g, h, None, 21, weight_format=fmt)
    assert op_spy == [fmt]


@pytest.mark.parametrize("fmt", ["binary", "ternary"])
def test_generation_through_a_module_takes_the_direct_path(op_spy, fmt):
    """The layer's g and h are nn.Parameters: still the direct path under no_grad (what generate() runs)."""
    from hf_onebit.nn.linear import OneBitLinear

    layer = OneBitLinear(21, 9, bias=True, weight_format=fmt)
    assert isinstance(layer.scale_in, torch.nn.Parameter) and layer.scale_in.requires_grad
    x = torch.randn(2, 21)
    with torch.no_grad():
        y = layer(x)
    assert op_spy == []
    torch.testing.assert_close(y, ops.reference.packed_linear(x, layer.weight, layer.scale_in, layer.scale_out,
                                                              layer.bias, 21, 0, fmt))
    layer(x).sum().backward()  # gradients wanted for g and h: the custom op and its autograd formula
    assert op_spy == [fmt] and layer.scale_in.grad is not None


def test_compiled_graphs_keep_the_custom_op():
    torch.manual_seed(0)
    packed = pack_signs(torch.randn(5, 16))
    g, h = torch.ones(16), torch.ones(5)
    fn = torch.compile(lambda x: ops.binary_linear(x, packed, g, h, None, 16), fullgraph=True, backend="eager")
    x = torch.randn(2, 16)
    torch.testing.assert_close(fn(x), ops.reference.binary_linear(x, packed, g, h, None, 16))


@pytest.mark.parametrize("fmt", ["binary", "ternary"])
def test_each_op_is_declared_once_and_the_cpu_backend_registers_with_torch(fmt):
    """The op's schema holds the layer's tensors and sizes only (the backend is the caller's setting); the CPU backend
    is the op's CPU implementation through torch's own registry, and calls it does not support get the reference."""
    op = getattr(torch.ops.hf_onebit, f"{fmt}_linear").default
    names = [a.name for a in op._schema.arguments]
    assert names == ["x", "weight", "scale_in", "scale_out", "bias", "in_features", "act_bits"]
    assert torch._C._dispatch_has_kernel_for_dispatch_key(op.name(), "CPU")
    assert ("cpu", fmt) in ops._DEVICE_ENTRIES
    torch.manual_seed(1)
    w = torch.randn(7, 19)
    packed = pack_signs(w) if fmt == "binary" else pack_ternary(w.sign())
    x = torch.randn(3, 19, dtype=torch.float64)  # no CPU kernel takes float64: the device entry answers by reference
    assert ops.select_kernel(x, packed, 0, weight_format=fmt) is None
    g, h = torch.rand(19, dtype=torch.float64) + 0.5, torch.rand(7, dtype=torch.float64) + 0.5
    torch.testing.assert_close(op(x, packed, g, h, None, 19, 0), ops.reference.packed_linear(x, packed, g, h, None, 19, 0, fmt))
    with pytest.raises(ValueError, match="backend: 'cpu' cannot run this call"):
        ops.packed_linear(x.requires_grad_(), packed, g, h, None, 19, backend="cpu", weight_format=fmt)
