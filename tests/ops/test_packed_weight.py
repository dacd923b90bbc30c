"""PackedWeight (the value every kernel reads) and ops.prepare (a backend's runtime layout built before the first
call)."""

from __future__ import annotations

import pytest
import torch

from hf_onebit import OneBitConfig, ops
from hf_onebit.formats.packing import pack_signs, pack_ternary
from hf_onebit.nn import OneBitLinear
from hf_onebit.ops import PackedWeight, cpu
from hf_onebit.ops.cpu import t5
from hf_onebit.ops.cpu.binding import active_isa, library
from hf_onebit.ops.cpu.pages import HUGE_PAGE
from hf_onebit.ops.cpu.plan import plan_of

needs_cpu_kernels = pytest.mark.skipif(not cpu.is_available(), reason="the CPU kernel library cannot be built here")


def _packed(fmt: str, N: int = 24, K: int = 40, seed: int = 0) -> PackedWeight:
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(N, K, generator=gen)
    data = pack_signs(w) if fmt == "binary" else pack_ternary(torch.randint(-1, 2, (N, K), generator=gen).float())
    return PackedWeight(data, torch.rand(K, generator=gen) + 0.5, torch.rand(N, generator=gen) + 0.5,
                        torch.randn(N, generator=gen), K, fmt)


@pytest.mark.parametrize("fmt", ["binary", "ternary"])
def test_check_names_the_field_that_disagrees(fmt):
    p = _packed(fmt)
    p.check(40)
    with pytest.raises(ValueError, match="x: last dimension 41 does not match in_features=40"):
        p.check(41)
    bad = {
        "scale_in": PackedWeight(p.data, torch.ones(39), p.scale_out, p.bias, 40, fmt),
        "scale_out": PackedWeight(p.data, p.scale_in, torch.ones(23), p.bias, 40, fmt),
        "bias": PackedWeight(p.data, p.scale_in, p.scale_out, torch.ones(25), 40, fmt),
        "weight: packed shape": PackedWeight(p.data[:, :-1], p.scale_in, p.scale_out, p.bias, 40, fmt),
    }
    for field, packed in bad.items():
        with pytest.raises(ValueError, match=field):
            packed.check()
    assert p.out_features == 24


@pytest.mark.parametrize("fmt", ["binary", "ternary"])
@pytest.mark.parametrize("act_bits", [0, 8])
def test_linear_on_a_packed_weight_is_the_reference(fmt, act_bits):
    p = _packed(fmt)
    x = torch.randn(5, 40)
    ref = ops.reference.packed_linear(x, p.data, p.scale_in, p.scale_out, p.bias, 40, act_bits, fmt)
    torch.testing.assert_close(ops.linear(x, p, act_bits), ref, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(ops.linear(x, p, act_bits, backend="reference"), ref)
    loose = ops.packed_linear(x, p.data, p.scale_in, p.scale_out, p.bias, 40, act_bits, weight_format=fmt)
    torch.testing.assert_close(loose, ref, atol=1e-4, rtol=1e-4)


def test_prepare_rejects_bad_settings_and_the_reference_has_nothing_to_prepare():
    p = _packed("binary")
    with pytest.raises(ValueError, match="act_bits: 4 is not supported"):
        ops.prepare(p, act_bits=4)
    with pytest.raises(ValueError, match="weight_format"):
        ops.prepare(PackedWeight(p.data, p.scale_in, p.scale_out, None, 40, "int3"))
    assert ops.prepare(p, backend="reference") is False
    assert plan_of(p.data) is None


@needs_cpu_kernels
@pytest.mark.parametrize("fmt", ["binary", "ternary"])
def test_prepare_builds_the_plan_the_first_call_then_uses(fmt):
    p = _packed(fmt)
    assert plan_of(p.data) is None
    assert ops.prepare(p, act_bits=0, dtype=torch.float32) is True
    plan = plan_of(p.data)
    assert plan is not None and plan.K == 40 and plan.N == 24 and not plan.pending
    x = torch.randn(2, 40)
    with torch.no_grad():
        y = ops.linear(x, p)
    assert plan_of(p.data) is plan  # the eager call found the prepared plan
    torch.testing.assert_close(y, ops.linear(x, p, backend="reference"), atol=1e-4, rtol=1e-4)


@needs_cpu_kernels
def test_prepare_does_the_second_call_work_of_a_weight_that_stays():
    """A large ternary weight with int8 activations: huge pages and (where the CPU has the kernel) the t5 copy are
    built by prepare, not left pending for the second call."""
    K = 256
    N = HUGE_PAGE // (K // 4) + 8  # just over one huge page of 2-bit codes
    p = _packed("ternary", N=N, K=K)
    assert ops.prepare(p, act_bits=8) is True
    plan = plan_of(p.data)
    assert not plan.pending and not plan.pages_pending and not plan.copy_pending
    assert (plan.t5 is not None) == (t5.enabled() and t5.supported(library(), active_isa()))
    x = torch.randn(1, K)
    with torch.no_grad():
        torch.testing.assert_close(ops.linear(x, p, 8), ops.linear(x, p, 8, backend="reference"), atol=1e-3,
                                   rtol=1e-3)


@needs_cpu_kernels
def test_module_prepare_and_packed_weight():
    layer = OneBitLinear.from_linear(torch.nn.Linear(40, 24), OneBitConfig()).eval()
    packed = layer.packed_weight(layer.bias)
    assert packed.data is layer.weight and packed.scale_in is layer.scale_in and packed.in_features == 40
    assert layer.prepare() is True
    assert plan_of(layer.weight) is not None
    latent = OneBitLinear.from_linear(torch.nn.Linear(40, 24), OneBitConfig(training=True))
    with pytest.raises(ValueError, match="latent form"):
        latent.packed_weight()


@pytest.mark.parametrize("fmt", ["binary", "ternary"])
def test_triton_prepare_builds_the_repacked_words(fmt):
    """The Triton backend's prepare hook builds the words its GEMV reads and keeps them beside the packed bytes (on
    CPU tensors here: the repacking is plain torch)."""
    pytest.importorskip("triton")
    from hf_onebit.ops import state
    from hf_onebit.ops import triton as triton_backend
    from hf_onebit.ops.triton import repack

    p = _packed(fmt)
    assert triton_backend._prepare(p, 0, torch.float16) is True
    key, words = state.get(p.data, repack.SLOT)
    assert torch.equal(words, repack.FORMATS[fmt].build(p.data, 40))
    assert repack.weight_words(p.data, 40, fmt) is words  # the call path finds the prepared words
