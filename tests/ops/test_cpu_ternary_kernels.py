"""The CPU kernels for ternary weights (hf_onebit/ops/cpu, csrc/ternary_*.c) against the reference
``ternary_linear``, per ISA variant, with opcheck on ``torch.ops.hf_onebit.ternary_linear``."""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import cpu_kernel_cases as cases
from cpu_kernel_cases import DTYPES, isa, kernel_library, make_x, threads  # noqa: F401  (kernel_library: autouse)
from hf_onebit.ops import cpu, select_kernel, ternary_linear
from hf_onebit.formats.packing import packed_columns


def make_layer(K: int, N: int, bias: bool, seed: int, scale_dtype=torch.float16, zeros: float = 0.35):
    """A packed ternary layer with about ``zeros`` of its weights 0 and the rest +-1."""
    return cases.make_layer(K, N, bias, seed, scale_dtype, "ternary", zeros)


def check_against_reference(x, layer, K, act_bits):
    """Also asserts that the CPU kernel is the one selected for ``x``."""
    return cases.check_against_reference(x, layer, K, act_bits, "ternary")


@pytest.mark.parametrize("name", [pytest.param(name, id=name) for name in cpu.ISA_NAMES])
@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    # K across block (256 inputs / 64 bytes), 16-byte and 8-byte steps, with tails of every size; from 1024 inputs the
    # AVX2 int8 kernel widens its int16 sums inside a row (every 8 half blocks)
    K=st.one_of(st.integers(1, 80), st.integers(81, 700), st.integers(1000, 2200)),
    N=st.integers(1, 200),
    M=st.one_of(st.integers(1, 9), st.integers(10, 600)),  # row kernels for every mr; AMX from 4 / 16 rows
    dtype=st.sampled_from(DTYPES),
    bias=st.booleans(),
    act_bits=st.sampled_from((0, 8)),
    layout=st.sampled_from(("contiguous", "transposed", "sliced", "3d")),
    nthreads=st.sampled_from((1, 2)),
    seed=st.integers(0, 2**16),
)
def test_matches_reference_per_isa(name, K, N, M, dtype, bias, act_bits, layout, nthreads, seed):
    """Every compiled ISA variant, forced, agrees with the reference; on the int8 path bit for bit with the portable
    variant (the int8 grid is the reference's and the integer dot products are exact)."""
    if name not in cpu.supported_isas():
        pytest.skip(f"ISA variant {name!r} not supported here (CPU/compiler offers {cpu.supported_isas()})")
    layer = make_layer(K, N, bias, seed)
    x = make_x(M, K, dtype, layout, seed + 1)
    with threads(nthreads), isa(name):
        got = check_against_reference(x, layer, K, act_bits)
        if act_bits == 8 and name != "portable":
            with isa("portable"):
                portable = ternary_linear(x, *layer, K, 8, backend="cpu")
            torch.testing.assert_close(got, portable, rtol=0, atol=0)


@pytest.mark.parametrize("M", [1, 7, 64])
def test_real_layer_width_and_scale_dtypes(M):
    # A real layer's K (whole 256-input blocks plus a tail) with bf16 / fp32 scale vectors, on the best ISA, 2 threads.
    K, N = 1100, 300
    with threads(2):
        for scale_dtype in (torch.bfloat16, torch.float32):
            layer = make_layer(K, N, True, 3, scale_dtype)
            for dtype in DTYPES:
                x = torch.randn(M, K).to(dtype)
                for act_bits in (0, 8):
                    check_against_reference(x, layer, K, act_bits)


def test_padding_codes_are_ignored():
    # formats/packing.py writes padding code 1, but a kernel running over whole bytes must not depend on it.
    K, N = 130, 9  # 2 padding codes per row
    weight, scale_in, scale_out, bias = make_layer(K, N, True, 4)
    garbage = weight.clone()
    garbage[:, -1] = (garbage[:, -1] & 0x0F) | 0xA0  # codes 2 (+1) in the two padding slots
    x = torch.randn(20, K)
    for name in cpu.supported_isas():
        with isa(name):
            for act_bits in (0, 8):
                clean = ternary_linear(x, weight, scale_in, scale_out, bias, K, act_bits, backend="cpu")
                dirty = ternary_linear(x, garbage, scale_in, scale_out, bias, K, act_bits, backend="cpu")
                torch.testing.assert_close(dirty, clean, rtol=0, atol=0)


def test_int8_error_vs_exact_path():
    """The cost of act_bits=8 (docs/kernels-cpu.md): per-token absmax int8 has a step of absmax/127, so on Gaussian
    activations the output's relative error is about absmax / rms / (127 sqrt 12): measured ~0.8% with g = 1 and ~1.0%
    with g spread over [0.5, 1.5] (K = 2048, a third of the weights 0)."""
    K, N, M = 2048, 512, 16
    weight, scale_in, scale_out, _ = make_layer(K, N, False, 5)
    x = torch.randn(M, K, generator=torch.Generator().manual_seed(6))
    for g in (torch.ones(K), scale_in):
        exact = ternary_linear(x, weight, g, scale_out, None, K, 0, backend="reference")
        int8 = ternary_linear(x, weight, g, scale_out, None, K, 8, backend="cpu")
        rel = ((int8 - exact).norm() / exact.norm()).item()
        assert 0.002 < rel < 1e-2, rel
        exact_cpu = ternary_linear(x, weight, g, scale_out, None, K, 0, backend="cpu")
        assert ((exact_cpu - exact).norm() / exact.norm()).item() < 1e-6


def test_all_zero_rows_and_empty_batch():
    cases.check_zero_rows_and_empty_batch("ternary")


def test_exact_prefill_without_avx512_takes_torch_gemm(monkeypatch):
    cases.check_dense_prefill("ternary", monkeypatch)


def test_bad_shapes_name_the_argument():
    K, N = 16, 8
    weight, scale_in, scale_out, bias = make_layer(K, N, True, 0)
    x = torch.randn(2, K)
    assert weight.shape == (N, packed_columns(K, "ternary"))
    with pytest.raises(ValueError, match="weight.*ternary"):  # a binary-shaped weight
        cpu.cpu_ternary_linear(x, weight[:, : packed_columns(K, "binary")], scale_in, scale_out, bias, K, 0)
    with pytest.raises(ValueError, match="scale_out"):
        cpu.cpu_ternary_linear(x, weight, scale_in, scale_out[:-1], bias, K, 0)
    with pytest.raises(ValueError, match="in_features"):
        cpu.cpu_ternary_linear(x, weight, scale_in, scale_out, bias, K + 1, 0)


def test_opcheck_with_cpu_kernel():
    K, N = 300, 19
    weight, scale_in, scale_out, bias = make_layer(K, N, True, 9)
    g32 = scale_in.float().requires_grad_()
    samples = [
        (torch.randn(4, K), weight, scale_in, scale_out, bias, K, 0),
        (torch.randn(2, 3, K).bfloat16(), weight, scale_in, scale_out, None, K, 8),
        (torch.randn(5, K, requires_grad=True), weight, g32, scale_out, bias, K, 0),
    ]
    for args in samples:
        assert select_kernel(args[0], weight, args[6], weight_format="ternary").name == "cpu"
        torch.library.opcheck(torch.ops.hf_onebit.ternary_linear.default, args)


def test_int8_sums_at_their_bound_do_not_overflow():
    cases.check_int8_extremes("ternary", cpu.ISA_NAMES)
