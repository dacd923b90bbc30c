"""The decode attention kernel (csrc/attention.h, hf_onebit/ops/cpu/attention.py): every ISA variant the machine runs
against a float64 attention on random shapes (grouped-query heads, odd head sizes, masks, strided caches, 1 and 2
threads), the calls it leaves to torch, and the C entry's refusal of bad arguments."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cpu_kernel_cases import isa, kernel_library, threads  # noqa: F401  (kernel_library: autouse)
from hf_onebit.ops import cpu
from hf_onebit.ops.cpu import attention

ISAS = [name for name in ("portable", "avx2", "avx512") if name in cpu.supported_isas()]


def exact_attention(q, k, v, mask, scale):
    """float64 attention of (B, H, 1, D) queries on (B, Hkv, L, D) keys/values, as (B, 1, H, D)."""
    rep = q.shape[1] // k.shape[1]
    kd, vd = (t.double().repeat_interleave(rep, dim=1) for t in (k, v))
    scores = (q.double() @ kd.transpose(-1, -2)) * scale
    if mask is not None:
        scores = scores.masked_fill(~mask, -math.inf)
    return (torch.softmax(scores, dim=-1) @ vd).transpose(1, 2)


def cache(B, Hkv, L, D, layout, dtype, gen):
    if layout == "padded":  # a cache with room for more positions and wider rows (as a sliced static cache)
        return torch.randn(B, Hkv, L + 5, D + 3, generator=gen).to(dtype)[:, :, :L, :D]
    if layout == "heads-inner":  # (B, L, Hkv, D) storage seen as (B, Hkv, L, D)
        return torch.randn(B, L, Hkv, D, generator=gen).to(dtype).transpose(1, 2)
    return torch.randn(B, Hkv, L, D, generator=gen).to(dtype)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(B=st.integers(1, 3), Hkv=st.integers(1, 4), rep=st.sampled_from((1, 2, 3)), L=st.integers(1, 300),
       D=st.one_of(st.integers(1, 40), st.sampled_from((64, 128))), masked=st.sampled_from((None, "shared", "rows")),
       dtype=st.sampled_from((torch.bfloat16, torch.float32)), layout=st.sampled_from(("contiguous", "padded",
       "heads-inner")), seed=st.integers(0, 2**16), nthreads=st.sampled_from((1, 2)), variant=st.sampled_from(ISAS))
def test_matches_the_exact_attention(B, Hkv, rep, L, D, masked, dtype, layout, seed, nthreads, variant):
    gen = torch.Generator().manual_seed(seed)
    H = Hkv * rep
    q = torch.randn(B, 1, H, D, generator=gen).to(dtype).transpose(1, 2)  # as the models make it: (B, 1, H, D) seen
    k, v = cache(B, Hkv, L, D, layout, dtype, gen), cache(B, Hkv, L, D, layout, dtype, gen)
    mask = None
    if masked:
        mask = torch.rand(B if masked == "rows" else 1, 1, 1, L, generator=gen) > 0.4
        mask[..., L // 2] = True
    scale = D**-0.5 * 1.3
    with isa(variant), threads(nthreads):
        out = attention.decode_attention(q, k, v, mask, scale)
    assert out is not None and out.dtype == dtype and out.shape == (B, 1, H, D)
    exact = exact_attention(q, k, v, mask.expand(B, 1, 1, L) if mask is not None else None, scale)
    # float32 scores and sums; bf16: the query, scaled, is rounded once more than torch's float32 reference would
    tol = 2e-5 if dtype == torch.float32 else 2 ** -7
    assert ((out.double() - exact).abs() <= tol * (1 + exact.abs())).all(), (out.double() - exact).abs().max()


@pytest.mark.parametrize("variant", ISAS)
def test_level_with_torch_sdpa_in_bf16(variant):
    """Against torch's own fused kernel on a 7B-shaped layer: no further from it than bf16's rounding of the output."""
    gen = torch.Generator().manual_seed(3)
    q = torch.randn(1, 32, 1, 128, generator=gen).bfloat16()
    k, v = torch.randn(2, 1, 32, 70, 128, generator=gen).bfloat16()
    with isa(variant):
        out = attention.decode_attention(q, k, v)
    ref = torch.nn.functional.scaled_dot_product_attention(q, k, v).transpose(1, 2)
    assert (out.float() - ref.float()).abs().max() <= 2 ** -7 * ref.float().abs().max()


def test_a_query_with_every_key_masked_gets_zeros_as_in_torch():
    q, k, v = torch.randn(2, 2, 1, 8), torch.randn(2, 2, 5, 8), torch.randn(2, 2, 5, 8)
    mask = torch.ones(2, 1, 1, 5, dtype=torch.bool)
    mask[1] = False
    out = attention.decode_attention(q, k, v, mask)
    ref = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask).transpose(1, 2)
    assert (ref[1] == 0).all() and (out[1] == 0).all()
    torch.testing.assert_close(out, ref)


def test_calls_left_to_torch(monkeypatch):
    q, k, v = torch.randn(1, 4, 1, 16), torch.randn(1, 2, 9, 16), torch.randn(1, 2, 9, 16)
    assert attention.decode_attention(q, k, v) is not None
    assert attention.decode_attention(torch.randn(1, 4, 2, 16), k, v) is None  # two query positions: prefill
    assert attention.decode_attention(q.half(), k.half(), v.half()) is None  # float16
    assert attention.decode_attention(q.bfloat16(), k, v) is None  # mixed dtypes
    assert attention.decode_attention(torch.randn(1, 3, 1, 16), k, v) is None  # heads not a multiple of kv heads
    assert attention.decode_attention(q, k, v, torch.zeros(1, 1, 1, 9)) is None  # an additive float mask
    assert attention.decode_attention(q, k, v, torch.ones(1, 4, 1, 9, dtype=torch.bool)) is None  # a mask per head
    assert attention.decode_attention(q, k.transpose(-1, -2).contiguous().transpose(-1, -2), v) is None  # dims strided
    assert attention.decode_attention(q.requires_grad_(), k, v) is None  # training
    with torch.no_grad():
        assert attention.decode_attention(q, k, v) is not None
    monkeypatch.setenv(attention.ATTENTION_ENV, "0")
    assert attention.decode_attention(q.detach(), k, v) is None


def test_the_c_entry_refuses_bad_arguments():
    lib = cpu.binding.library()
    q, k, v, out = torch.zeros(1, 4, 1, 8), torch.zeros(1, 2, 5, 8), torch.zeros(1, 2, 5, 8), torch.zeros(1, 1, 4, 8)
    best = cpu.binding.active_isa()

    def call(B=1, H=4, Hkv=2, L=5, D=8, ksl=8, vsl=8, scale=0.5, nthreads=1, isa_id=best, k_ptr=k.data_ptr()):
        return lib.onebit_decode_attention(isa_id, B, H, Hkv, L, D, q.data_ptr(), 32, 8, k_ptr, 80, 40, ksl,
                                           v.data_ptr(), 80, 40, vsl, None, 0, scale, 0, out.data_ptr(), 32, 8,
                                           nthreads)

    assert call() == 0
    for bad in (dict(B=0), dict(H=0), dict(Hkv=0), dict(H=3), dict(L=0), dict(D=0), dict(ksl=7), dict(vsl=7),
                dict(nthreads=0), dict(k_ptr=None), dict(scale=float("nan")), dict(scale=float("inf"))):
        assert call(**bad) == -1, bad
    assert call(isa_id=len(cpu.ISA_NAMES)) == -2
