"""The float kernels at decode sizes (csrc/gemv.h, hf_onebit/ops/cpu/gemv.py), bf16 and int8 weights: every ISA
variant the machine runs against a float64 product on random shapes, strided and 3-D inputs, bias, 1 and 2 threads;
the int8 quantizer; the calls left to torch; and the C entries' refusal of bad arguments."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cpu_kernel_cases import isa, kernel_library, threads  # noqa: F401  (kernel_library: autouse)
from hf_onebit.ops import cpu
from hf_onebit.ops.cpu import gemv

ISAS = [name for name in ("portable", "avx2", "avx512") if name in cpu.supported_isas()]


def bf16_input(M: int, K: int, layout: str, gen: torch.Generator) -> torch.Tensor:
    if layout == "sliced":  # rows further apart than K
        return torch.randn(M, K + 3, generator=gen).bfloat16()[:, 1:K + 1]
    if layout == "transposed":  # inputs not contiguous: the op copies them
        return torch.randn(K, M, generator=gen).bfloat16().T
    if layout == "3d":
        return torch.randn(1, M, K, generator=gen).bfloat16()
    return torch.randn(M, K, generator=gen).bfloat16()


def assert_close_to_exact(y, x, weight, bias):
    """|y - x W^T - b| within float32 sums of K terms (relative to sum |x w|) plus one rounding to bf16."""
    xd, wd = x.double(), weight.double()
    exact = F.linear(xd, wd, None if bias is None else bias.double())
    magnitude = F.linear(xd.abs(), wd.abs()) + (0 if bias is None else bias.double().abs())
    bound = (x.shape[-1] + 2) * 2.0**-23 * magnitude + 2.0**-8 * exact.abs() + 1e-30
    assert y.dtype == torch.bfloat16 and y.shape == exact.shape
    assert ((y.double() - exact).abs() <= bound).all(), (y.double() - exact).abs().max()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(M=st.integers(1, gemv.MAX_ROWS), K=st.one_of(st.integers(1, 70), st.integers(500, 1100)),
       N=st.integers(1, 150), bias=st.booleans(), seed=st.integers(0, 2**16), nthreads=st.sampled_from((1, 2)),
       layout=st.sampled_from(("contiguous", "sliced", "transposed", "3d")), variant=st.sampled_from(ISAS))
def test_matches_the_exact_product(M, K, N, bias, seed, nthreads, layout, variant):
    gen = torch.Generator().manual_seed(seed)
    x = bf16_input(M, K, layout, gen)
    weight = torch.randn(N, K, generator=gen).bfloat16()
    b = torch.randn(N, generator=gen).bfloat16() if bias else None
    with isa(variant), threads(nthreads):
        y = gemv.bf16_linear(x, weight, b)
    assert y is not None
    assert_close_to_exact(y, x, weight, b)


@pytest.mark.parametrize("variant", ISAS)
def test_a_weight_with_strided_rows(variant):
    gen = torch.Generator().manual_seed(1)
    weight = torch.randn(40, 300, generator=gen).bfloat16()[:, 7:263]  # rows 300 elements apart
    x = torch.randn(2, 256, generator=gen).bfloat16()
    with isa(variant):
        y = gemv.bf16_linear(x, weight)
    assert_close_to_exact(y, x, weight, None)


def test_calls_left_to_torch(monkeypatch):
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(1, 64, generator=gen).bfloat16()
    weight = torch.randn(32, 64, generator=gen).bfloat16()
    assert gemv.bf16_linear(x, weight) is not None
    assert gemv.bf16_linear(x.float(), weight.float()) is None  # float32: torch's own GEMV
    assert gemv.bf16_linear(torch.randn(gemv.MAX_ROWS + 1, 64).bfloat16(), weight) is None  # prefill: torch's GEMM
    assert gemv.bf16_linear(x, torch.randn(64, 32).bfloat16().T) is None  # a weight whose rows are not contiguous
    assert gemv.bf16_linear(x, weight.requires_grad_()) is None  # training
    with torch.no_grad():
        assert gemv.bf16_linear(x, weight) is not None
    weight.requires_grad_(False)
    assert gemv.bf16_linear(torch.randn(1, 63).bfloat16(), weight) is None  # shapes that do not fit: torch raises
    monkeypatch.setenv(gemv.GEMV_ENV, "0")
    assert gemv.bf16_linear(x, weight) is None


def test_the_c_entry_refuses_bad_arguments():
    lib = cpu.binding.library()
    x, w, y = torch.zeros(9, 8).bfloat16(), torch.zeros(4, 8).bfloat16(), torch.zeros(9, 4).bfloat16()
    best = cpu.binding.active_isa()

    def call(M=1, K=8, N=4, ldx=8, ldw=8, ldy=4, nthreads=1, isa_id=best, w_ptr=w.data_ptr()):
        return lib.onebit_bf16_gemv(isa_id, M, K, N, x.data_ptr(), 1, ldx, w_ptr, ldw, None, y.data_ptr(), 1, ldy,
                                    nthreads)

    assert call() == 0
    for bad in (dict(M=0), dict(M=9), dict(K=0), dict(N=0), dict(ldx=7), dict(ldw=7), dict(ldy=3), dict(nthreads=0),
                dict(w_ptr=None)):
        assert call(**bad) == -1, bad
    assert call(isa_id=len(cpu.ISA_NAMES)) == -2


def assert_int8_close(y, x, q, scale, bias):
    """|y - (x q^T) scale - b| within float32 sums of K terms plus one rounding to x's dtype."""
    xd = x.double()
    exact = F.linear(xd, q.double()) * scale.double() + (0 if bias is None else bias.double())
    magnitude = F.linear(xd.abs(), q.double().abs()) * scale.double() + (0 if bias is None else bias.double().abs())
    eps = 2.0**-8 if x.dtype == torch.bfloat16 else 2.0**-23
    bound = (x.shape[-1] + 3) * 2.0**-23 * magnitude + eps * exact.abs() + 1e-30
    assert y.dtype == x.dtype and y.shape == exact.shape
    assert ((y.double() - exact).abs() <= bound).all(), (y.double() - exact).abs().max()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(M=st.integers(1, gemv.MAX_ROWS), K=st.one_of(st.integers(1, 70), st.integers(500, 1100)),
       N=st.integers(1, 150), bias=st.booleans(), seed=st.integers(0, 2**16), nthreads=st.sampled_from((1, 2)),
       layout=st.sampled_from(("contiguous", "sliced", "transposed", "3d")), variant=st.sampled_from(ISAS),
       dtype=st.sampled_from((torch.bfloat16, torch.float32)))
def test_int8_weights_match_the_exact_product(M, K, N, bias, seed, nthreads, layout, variant, dtype):
    gen = torch.Generator().manual_seed(seed)
    x = bf16_input(M, K, layout, gen).to(dtype)
    q, scale = gemv.quantize_rows_int8(torch.randn(N, K, generator=gen))
    b = torch.randn(N, generator=gen) if bias else None
    with isa(variant), threads(nthreads):
        y = gemv.int8_linear(x, q, scale, b)
    assert y is not None
    assert_int8_close(y, x, q, scale, b)
    reference = gemv.int8_linear_reference(x, q, scale, b)
    assert reference.dtype == y.dtype and reference.shape == y.shape


def test_int8_quantizer_rounds_each_row_to_its_absmax():
    w = torch.tensor([[0.5, -1.0, 0.25, 0.0], [0.0, 0.0, 0.0, 0.0], [3.0, 1.5, -0.01, 2.0]])
    q, scale = gemv.quantize_rows_int8(w.bfloat16())
    assert q.dtype == torch.int8 and scale.dtype == torch.float32
    assert torch.equal(scale, torch.tensor([1 / 127, 1.0, 3 / 127]))  # a row of zeros: scale 1, as the reference
    assert q.tolist() == [[64, -127, 32, 0], [0, 0, 0, 0], [127, 64, 0, 85]]
    gen = torch.Generator().manual_seed(4)
    w = torch.randn(5000, 33, generator=gen)  # more rows than a chunk
    q, scale = gemv.quantize_rows_int8(w)
    assert (q.abs().amax(dim=1) == 127).all()
    assert ((q.float() * scale[:, None] - w).abs() <= scale[:, None] / 2 + 1e-6).all()
    with pytest.raises(ValueError, match="quantize_rows_int8: weight: got 1 dimensions"):
        gemv.quantize_rows_int8(torch.zeros(4))


def test_int8_calls_left_to_torch_and_bad_operands(monkeypatch):
    gen = torch.Generator().manual_seed(5)
    q, scale = gemv.quantize_rows_int8(torch.randn(32, 64, generator=gen))
    x = torch.randn(1, 64, generator=gen)
    assert gemv.int8_linear(x, q, scale) is not None
    assert gemv.int8_linear(x.half(), q, scale) is None  # float16: the caller's float weights
    assert gemv.int8_linear(torch.randn(gemv.MAX_ROWS + 1, 64), q, scale) is None  # prefill
    assert gemv.int8_linear(x.requires_grad_(), q, scale) is None  # training
    assert gemv.int8_linear(torch.randn(1, 63), q, scale) is None  # shapes that do not fit
    with pytest.raises(ValueError, match="int8_linear: q: got torch.float32"):
        gemv.int8_linear(x, q.float(), scale)
    with pytest.raises(ValueError, match=r"int8_linear: scale: got torch.float32 \(31,\); allowed"):
        gemv.int8_linear(x, q, scale[:31])
    monkeypatch.setenv(gemv.GEMV_ENV, "0")
    assert gemv.int8_linear(x.detach(), q, scale) is None


def test_the_int8_c_entry_refuses_bad_arguments():
    lib = cpu.binding.library()
    x, y = torch.zeros(9, 8).bfloat16(), torch.zeros(9, 4).bfloat16()
    w, scale = torch.zeros(4, 8, dtype=torch.int8), torch.ones(4)
    best = cpu.binding.active_isa()

    def call(M=1, K=8, N=4, ldx=8, ldw=8, ldy=4, nthreads=1, isa_id=best, w_ptr=w.data_ptr(),
             scale_ptr=scale.data_ptr()):
        return lib.onebit_int8_gemv(isa_id, M, K, N, x.data_ptr(), 1, ldx, w_ptr, ldw, scale_ptr, None,
                                    y.data_ptr(), 1, ldy, nthreads)

    assert call() == 0
    for bad in (dict(M=0), dict(M=9), dict(K=0), dict(N=0), dict(ldx=7), dict(ldw=7), dict(ldy=3), dict(nthreads=0),
                dict(w_ptr=None), dict(scale_ptr=None)):
        assert call(**bad) == -1, bad
    assert call(isa_id=len(cpu.ISA_NAMES)) == -2
