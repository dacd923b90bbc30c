"""The lut runtime layout of binary weights (csrc/lut.h, hf_onebit/ops/cpu/lut.py): the conversion against the
layout's definition, and the decode calls of the ``avx2`` variant that read the copy - bit for bit the bit-plane
kernel's results, built only for weights that stay, rebuilt when the weight changes, off with HF_ONEBIT_BINARY_LUT=0.
"""

from __future__ import annotations

import copy
import gc
import weakref

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import cpu_kernel_cases as cases
from cpu_kernel_cases import isa, kernel_library, threads  # noqa: F401  (kernel_library: autouse)
from hf_onebit.formats.packing import pack_signs
from hf_onebit.ops import binary_linear, cpu, state
from hf_onebit.ops.cpu import lut
from hf_onebit.ops.cpu.plan import plan_of

LUT_MAX_M = 8  # ONEBIT_LUT_MAX_M

needs_avx2 = pytest.mark.skipif(
    not cpu.is_available() or "avx2" not in cpu.supported_isas(),
    reason="the lut kernel is the avx2 variant's; this CPU or build has no AVX2",
)
pytestmark = needs_avx2


def library():
    return cpu.binding.library()


def expected_lut(weight: torch.Tensor) -> torch.Tensor:
    """The copy straight from lut.h: rows in blocks of 16 (zero rows past N), chunks of 32 bytes (16 inputs) with
    byte 16 h + r of chunk c = byte 2 c + h of row 16 b + r (zero past kbytes), in slabs of 32 chunks whose blocks
    lie one after another."""
    N, kbytes = weight.shape
    blocks, chunks = -(-N // 16), -(-kbytes // 2)
    padded = torch.zeros(blocks * 16, 2 * chunks, dtype=torch.uint8)
    padded[:N, :kbytes] = weight
    # (block, r, chunk, h) -> (block, chunk, h, r): 32 bytes per chunk
    per_chunk = padded.view(blocks, 16, chunks, 2).permute(0, 2, 3, 1).reshape(blocks, chunks, 32)
    return torch.cat([per_chunk[:, c0:c0 + 32].reshape(-1) for c0 in range(0, chunks, 32)])


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(K=st.one_of(st.integers(1, 70), st.integers(500, 1500)), N=st.integers(1, 70), seed=st.integers(0, 2**16),
       nthreads=st.sampled_from((1, 2)))
def test_conversion_follows_the_layout(K, N, seed, nthreads):
    weight = pack_signs(torch.randn(N, K, generator=torch.Generator().manual_seed(seed)))
    with threads(nthreads):
        got = lut.build_lut(library(), weight)
    assert got.dtype == torch.uint8 and got.numel() == library().onebit_binary_lut_bytes(*weight.shape)
    assert torch.equal(got, expected_lut(weight))


def decode_twice(x, layer, K):
    return cases.decode_twice(binary_linear, x, layer, K)


def portable(x, layer, K):
    return cases.portable_int8(binary_linear, x, layer, K)


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(K=st.one_of(st.integers(1, 70), st.integers(500, 1400)), N=st.integers(1, 150), M=st.integers(1, LUT_MAX_M + 1),
       dtype=st.sampled_from((torch.float32, torch.bfloat16)), bias=st.booleans(), nthreads=st.sampled_from((1, 2)),
       seed=st.integers(0, 2**16))
def test_decode_on_the_copy_is_bit_exact(K, N, M, dtype, bias, nthreads, seed):
    layer = cases.make_layer(K, N, bias, seed)
    x = torch.randn(M, K, generator=torch.Generator().manual_seed(seed + 1)).to(dtype)
    with isa("avx2"), threads(nthreads):
        got = decode_twice(x, layer, K)
        assert plan_of(layer[0]).lut is not None
        again = binary_linear(x, *layer, K, 8, backend="cpu")
    want = portable(x, layer, K)
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    torch.testing.assert_close(again, want, rtol=0, atol=0)


def test_extreme_activations_do_not_overflow():
    """Every table entry at +-508 (4 x 127) on a long row: the int16 sums stay exact between their flushes."""
    K, N = 8192, 32
    layer = cases.make_layer(K, N, False, 3)
    layer[0].fill_(0xFF)  # every weight +1: every lookup hits the largest entry
    for sign in (1.0, -1.0):
        x = torch.full((1, K), sign)
        with isa("avx2"):
            got = decode_twice(x, layer, K)
        torch.testing.assert_close(got, portable(x, layer, K), rtol=0, atol=0)


def test_copy_is_read_by_avx2_decode_calls_only():
    """Spoiling the copy changes the avx2 int8 calls of up to ONEBIT_LUT_MAX_M rows and no other call: they read it."""
    K, N = 1000, 64
    layer = cases.make_layer(K, N, False, 7)
    x = torch.randn(1, K)
    with isa("avx2"):
        good = decode_twice(x, layer, K)
        plan = plan_of(layer[0])
        cases.check_copy_is_read(binary_linear, plan.lut, layer, K, LUT_MAX_M)
    if "avx512" in cpu.supported_isas():  # another variant never reads it
        plan.lut.zero_()
        with isa("avx512"), torch.no_grad():
            torch.testing.assert_close(binary_linear(x, *layer, K, 8, backend="cpu"), good, rtol=0, atol=0)


def test_copy_follows_in_place_weight_updates():
    K, N = 700, 40
    layer = cases.make_layer(K, N, True, 8)
    x = torch.randn(1, K)
    with isa("avx2"):
        decode_twice(x, layer, K)
        old = plan_of(layer[0])
        assert old.lut is not None
        layer[0].copy_(pack_signs(torch.randn(N, K)))  # new values, same tensor and address
        for _ in range(3):  # a new plan (packed bits), then its second call (a new copy), then the copy
            torch.testing.assert_close(decode_twice(x, layer, K), portable(x, layer, K), rtol=0, atol=0)
    plan = plan_of(layer[0])
    assert plan is not old and torch.equal(plan.lut, expected_lut(layer[0]))


def test_no_copy_when_disabled_or_for_weights_made_per_call(monkeypatch):
    """HF_ONEBIT_BINARY_LUT=0 builds none; nor does a weight that is a new tensor at every call (disk offload)."""
    K, N = 640, 32
    layer = cases.make_layer(K, N, False, 10)
    built = []
    real = lut.build_lut
    monkeypatch.setattr(lut, "build_lut", lambda *a: built.append(a) or real(*a))
    x = torch.randn(1, K)
    with isa("avx2"):
        decode_twice(x, layer, K)
        assert len(built) == 1  # (sanity: two calls on one tensor do build)
        built.clear()
        for _ in range(4):
            with torch.no_grad():
                binary_linear(x, layer[0].clone(), *layer[1:], K, 8, backend="cpu")
        assert built == []
        monkeypatch.setenv(lut.LUT_ENV, "0")
        fresh = (layer[0].clone(), *layer[1:])
        decode_twice(x, fresh, K)
        decode_twice(x, fresh, K)
    assert built == [] and plan_of(fresh[0]).lut is None


def test_weight_with_a_copy_saves_and_deep_copies(tmp_path):
    K, N = 400, 16
    layer = cases.make_layer(K, N, False, 11)
    x = torch.randn(2, K)
    with isa("avx2"):
        want = decode_twice(x, layer, K)
        assert plan_of(layer[0]).lut is not None
        torch.save(layer[0], tmp_path / "w.pt")
        for other in (torch.load(tmp_path / "w.pt"), copy.deepcopy(layer[0])):  # torch.load: weights_only=True
            assert plan_of(other) is None  # plans (and copies) never travel
            torch.testing.assert_close(decode_twice(x, (other, *layer[1:]), K), want, rtol=0, atol=0)


def test_plan_and_copy_go_with_the_weight():
    """No table entry outlives its weight: the plan (and the lut copy it holds) is released with the weight."""
    K, N = 640, 48
    layer = cases.make_layer(K, N, False, 12)
    with isa("avx2"):
        decode_twice(torch.randn(1, K), layer, K)
    weight = layer[0]
    wid, copy_ref = id(weight), weakref.ref(plan_of(weight).lut)
    del layer, weight
    gc.collect()
    assert wid not in state._entries and copy_ref() is None


def test_no_memory_for_the_copy_warns_and_keeps_the_bits(monkeypatch):
    """A copy that cannot be allocated is skipped with a warning; the calls go on, on the packed bits."""
    K, N = 640, 16
    layer = cases.make_layer(K, N, False, 13)
    x = torch.randn(1, K)
    cases.fail_byte_allocations(monkeypatch, lut)
    with isa("avx2"), pytest.warns(RuntimeWarning, match="no memory for the lut copy"):
        got = decode_twice(x, layer, K)
    monkeypatch.undo()
    assert plan_of(layer[0]).lut is None
    torch.testing.assert_close(got, portable(x, layer, K), rtol=0, atol=0)
