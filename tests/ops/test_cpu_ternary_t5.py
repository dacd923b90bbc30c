"""The t5 runtime layout of ternary weights (csrc/ternary.h, hf_onebit/ops/cpu/t5.py): the conversion against the
layout's definition, and the decode calls that read the copy - bit for bit the 2-bit kernels' results, built only
for weights that stay, rebuilt when the weight changes, off with HF_ONEBIT_TERNARY_T5=0."""

from __future__ import annotations

import copy

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import cpu_kernel_cases as cases
from cpu_kernel_cases import isa, kernel_library, threads  # noqa: F401  (kernel_library: autouse)
from hf_onebit.ops import cpu, ternary_linear
from hf_onebit.ops.cpu import t5
from hf_onebit.ops.cpu.plan import plan_of
from hf_onebit.formats.packing import pack_ternary, unpack_ternary_codes

T5_MAX_M = 8  # ONEBIT_T5_MAX_M


def library():
    return cpu.binding.library()


def t5_runs() -> bool:
    return t5.supported(library(), cpu.binding.active_isa())


needs_t5_kernel = pytest.mark.skipif(
    not cpu.is_available() or not t5.supported(cpu.binding.library(), cpu.binding.active_isa()),
    reason="no t5 kernel for the active ISA (needs AVX-512 VBMI); the conversion tests still run",
)


def decode_t5(t5_bytes: torch.Tensor, K: int) -> torch.Tensor:
    """The codes (N, tb * 320) of a t5 copy, straight from the definition in ternary.h: byte 64 b + j holds the codes
    c_t of inputs 320 b + 64 t + j as v = sum_t c_t 3^t, stored as v (v <= 121) or 128 | (242 - v)."""
    N, nbytes = t5_bytes.shape
    b = t5_bytes.to(torch.int32)
    v = torch.where(b >= 128, 242 - (b - 128), b)
    assert bool((v <= 242).all()) and bool(((b < 128) | (b - 128 <= 120)).all())  # a folded byte never holds v >= 122
    digits = torch.stack([(v // 3**t) % 3 for t in range(5)])  # (5, N, nbytes): code t of every byte
    digits = digits.view(5, N, nbytes // 64, 64).permute(1, 2, 0, 3)  # (N, block, t, j): input 320 block + 64 t + j
    return digits.reshape(N, -1).to(torch.uint8)


def random_ternary(N, K, seed, zeros=0.35):
    gen = torch.Generator().manual_seed(seed)
    return torch.sign(torch.randn(N, K, generator=gen)) * (torch.rand(N, K, generator=gen) >= zeros)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(K=st.one_of(st.integers(1, 70), st.integers(300, 1000)), N=st.integers(1, 70), seed=st.integers(0, 2**16),
       zeros=st.sampled_from((0.0, 0.35, 1.0)), nthreads=st.sampled_from((1, 2)))
def test_conversion_follows_the_layout(K, N, seed, zeros, nthreads):
    """Every code lands where ternary.h says (all-zero and no-zero rows included), padding past K is code 1."""
    weight = pack_ternary(random_ternary(N, K, seed, zeros))
    with threads(nthreads):
        copy5 = t5.build_t5(library(), weight, K)
    tb = -(-K // 320)
    assert copy5.shape == (N, tb * 64) and copy5.dtype == torch.uint8
    codes = decode_t5(copy5, K)
    assert torch.equal(codes[:, :K], unpack_ternary_codes(weight, K))
    assert bool((codes[:, K:] == 1).all())


@pytest.mark.parametrize("K, at", [(40, 14), (700, 100), (700, 650)])  # code 3 in a last block / a full one
def test_conversion_refuses_code_three(K, at):
    """A code 3 (not ternary) below K gives no copy: the 2-bit kernels keep computing with it as they always did."""
    weight = pack_ternary(random_ternary(5, K, 1))
    weight[2, at // 4] |= 0b11 << (2 * (at % 4))
    assert t5.build_t5(library(), weight, K) is None


def test_conversion_ignores_padding_codes():
    K = 38  # the last byte of a row holds 2 padding codes
    weight = pack_ternary(random_ternary(4, K, 2))
    garbage = weight.clone()
    garbage[:, -1] |= 0b1111 << 4  # codes 3 in both padding slots
    clean, dirty = t5.build_t5(library(), weight, K), t5.build_t5(library(), garbage, K)
    assert dirty is not None and torch.equal(dirty, clean)


def decode_twice(x, layer, K):
    return cases.decode_twice(ternary_linear, x, layer, K)


def portable(x, layer, K):
    return cases.portable_int8(ternary_linear, x, layer, K)


@needs_t5_kernel
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(K=st.one_of(st.integers(1, 70), st.integers(300, 1400)), N=st.integers(1, 150), M=st.integers(1, T5_MAX_M + 1),
       dtype=st.sampled_from((torch.float32, torch.bfloat16)), bias=st.booleans(), nthreads=st.sampled_from((1, 2)),
       seed=st.integers(0, 2**16))
def test_decode_on_the_copy_is_bit_exact(K, N, M, dtype, bias, nthreads, seed):
    layer = cases.make_layer(K, N, bias, seed, weight_format="ternary")
    x = torch.randn(M, K, generator=torch.Generator().manual_seed(seed + 1)).to(dtype)
    with threads(nthreads):
        got = decode_twice(x, layer, K)
        assert plan_of(layer[0]).t5 is not None
        again = ternary_linear(x, *layer, K, 8, backend="cpu")
    want = portable(x, layer, K)
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    torch.testing.assert_close(again, want, rtol=0, atol=0)


@needs_t5_kernel
def test_copy_is_read_up_to_eight_rows_only():
    """Spoiling the copy changes decode calls of up to ONEBIT_T5_MAX_M rows and no other call: they read it."""
    K, N = 1000, 64
    layer = cases.make_layer(K, N, False, 7, weight_format="ternary")
    decode_twice(torch.randn(1, K), layer, K)
    cases.check_copy_is_read(ternary_linear, plan_of(layer[0]).t5, layer, K, T5_MAX_M)


@needs_t5_kernel
def test_copy_follows_in_place_weight_updates():
    K, N = 700, 40
    layer = cases.make_layer(K, N, True, 8, weight_format="ternary")
    x = torch.randn(1, K)
    decode_twice(x, layer, K)
    old = plan_of(layer[0])
    assert old.t5 is not None
    layer[0].copy_(pack_ternary(random_ternary(N, K, 9)))  # new values, same tensor and address
    for _ in range(3):  # a new plan (2-bit), then its second call (a new copy), then the copy
        torch.testing.assert_close(decode_twice(x, layer, K), portable(x, layer, K), rtol=0, atol=0)
    plan = plan_of(layer[0])
    assert plan is not old and plan.t5 is not None
    assert torch.equal(decode_t5(plan.t5, K)[:, :K], unpack_ternary_codes(layer[0], K))


@needs_t5_kernel
def test_no_copy_when_disabled_or_for_weights_made_per_call(monkeypatch):
    """HF_ONEBIT_TERNARY_T5=0 builds none; nor does a weight that is a new tensor at every call (disk offload)."""
    K, N = 640, 32
    layer = cases.make_layer(K, N, False, 10, weight_format="ternary")
    built = []
    real = t5.build_t5
    monkeypatch.setattr(t5, "build_t5", lambda *a: built.append(a) or real(*a))
    x = torch.randn(1, K)
    for _ in range(3):
        fresh = (layer[0].clone(), *layer[1:])
        decode_twice(x, fresh, K)  # each clone: a first and a second call, but never the same tensor again later
    assert len(built) == 3  # (sanity: two calls on one tensor do build)
    built.clear()
    for _ in range(4):
        with torch.no_grad():
            ternary_linear(x, layer[0].clone(), *layer[1:], K, 8, backend="cpu")
    assert built == []
    monkeypatch.setenv(t5.T5_ENV, "0")
    decode_twice(x, layer, K)
    decode_twice(x, layer, K)
    assert built == [] and plan_of(layer[0]).t5 is None


@needs_t5_kernel
def test_weight_with_a_copy_saves_and_deep_copies(tmp_path):
    K, N = 400, 16
    layer = cases.make_layer(K, N, False, 11, weight_format="ternary")
    x = torch.randn(2, K)
    want = decode_twice(x, layer, K)
    assert plan_of(layer[0]).t5 is not None
    torch.save(layer[0], tmp_path / "w.pt")
    for other in (torch.load(tmp_path / "w.pt"), copy.deepcopy(layer[0])):  # torch.load: weights_only=True
        assert plan_of(other) is None  # plans (and copies) never travel
        torch.testing.assert_close(decode_twice(x, (other, *layer[1:]), K), want, rtol=0, atol=0)


@needs_t5_kernel
def test_plan_and_copy_go_with_the_weight():
    """No table entry outlives its weight: the plan (and the t5 copy it holds) is released with the weight."""
    import gc

    from hf_onebit.ops import state

    K, N = 640, 48
    layer = cases.make_layer(K, N, False, 12, weight_format="ternary")
    decode_twice(torch.randn(1, K), layer, K)
    weight = layer[0]
    wid, copy_ref = id(weight), __import__("weakref").ref(plan_of(weight).t5)
    del layer, weight
    gc.collect()
    assert wid not in state._entries and copy_ref() is None


@needs_t5_kernel
def test_no_memory_for_the_copy_warns_and_keeps_the_codes(monkeypatch):
    """A copy that cannot be allocated is skipped with a warning; the calls go on, on the 2-bit codes."""
    K, N = 640, 16
    layer = cases.make_layer(K, N, False, 13, weight_format="ternary")
    x = torch.randn(1, K)
    cases.fail_byte_allocations(monkeypatch, t5)
    with pytest.warns(RuntimeWarning, match="no memory for the t5 copy"):
        got = decode_twice(x, layer, K)
    monkeypatch.undo()
    assert plan_of(layer[0]).t5 is None
    torch.testing.assert_close(got, portable(x, layer, K), rtol=0, atol=0)
