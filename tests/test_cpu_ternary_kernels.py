"""The CPU kernels for ternary weights (hf_onebit/ops/cpu, csrc/ternary_*.c) against the reference
``ternary_linear``, per ISA variant, with opcheck on ``torch.ops.hf_onebit.ternary_linear``."""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hf_onebit.ops import cpu, reference, select_kernel, ternary_linear
from hf_onebit.packing import pack_ternary, packed_columns
from test_cpu_kernels import DTYPES, EPS, isa, threads


@pytest.fixture(scope="module", autouse=True)
def kernel_library():
    # The kernels are the subject here: a build failure is a test failure, not a skip.
    assert cpu.is_available(), f"CPU kernel library did not build/load: {cpu.load_error()}"


def make_layer(K: int, N: int, bias: bool, seed: int, scale_dtype=torch.float16, zeros: float = 0.35):
    """A packed ternary layer with about ``zeros`` of its weights 0 and the rest +-1."""
    gen = torch.Generator().manual_seed(seed)
    values = torch.sign(torch.randn(N, K, generator=gen)) * (torch.rand(N, K, generator=gen) >= zeros)
    weight = pack_ternary(values)
    scale_in = (torch.rand(K, generator=gen) + 0.5).to(scale_dtype)
    scale_out = (torch.rand(N, generator=gen) * 0.1 + 0.01).to(scale_dtype)
    b = torch.randn(N, generator=gen) if bias else None
    return weight, scale_in, scale_out, b


def tolerance(x, weight, scale_in, scale_out, bias, K, act_bits):
    """Per-element bound on |kernel - reference|: float rounding of a K-term dot product (relative to sum |x g|; the
    kernel's c x - sum x has terms up to 2 |x g|), plus, for 16-bit outputs, up to four roundings to that dtype (the
    reference's product, * h and + bias, and the kernel's one final rounding), each at most eps * |value|."""
    dtype = x.dtype
    xs = (x * scale_in.to(dtype)).double()
    if act_bits == 8:
        q, s = reference.quantize_activations_int8(x * scale_in.to(dtype))
        xs = (q * s).double()
    h = scale_out.double().abs()
    b = bias.double().abs() if bias is not None else torch.zeros_like(h)
    y0 = xs @ reference.unpack_ternary(weight, K, torch.float64).T
    dot = xs.abs().sum(-1, keepdim=True) * h * 4e-6 * max(1.0, K**0.5 / 8)
    if dtype == torch.float32:
        return dot + 1e-6 * b
    eps = EPS[dtype]
    # int8 with 16-bit x: the reference rounds q * scale to the dtype before the matmul (each term within eps).
    grid = xs.abs().sum(-1, keepdim=True) * h * eps if act_bits == 8 else 0.0
    return dot + grid + 5 * eps * (y0.abs() * h + b) + 1e-6


def check_against_reference(x, layer, K, act_bits):
    weight, scale_in, scale_out, bias = layer
    assert select_kernel(x, weight, act_bits, weight_format="ternary").name == "cpu"
    expected = ternary_linear(x, weight, scale_in, scale_out, bias, K, act_bits, backend="reference")
    got = ternary_linear(x, weight, scale_in, scale_out, bias, K, act_bits, backend="cpu")
    assert got.dtype == x.dtype and got.shape == expected.shape
    bound = tolerance(x.reshape(-1, K), weight, scale_in, scale_out, bias, K, act_bits).reshape(expected.shape)
    err = (got.double() - expected.double()).abs()
    worst = (err - bound).max().item() if err.numel() else 0.0
    assert worst <= 0, f"max excess error {worst:.3g} (max err {err.max().item():.3g}) for x {tuple(x.shape)} {x.dtype}"
    return got


def make_x(M: int, K: int, dtype, layout: str, seed: int):
    gen = torch.Generator().manual_seed(seed)
    if layout == "transposed":  # a non-contiguous (M, K) view
        return torch.randn(K, M, generator=gen).to(dtype).T
    if layout == "sliced":  # rows with a stride larger than K
        return torch.randn(M, K + 5, generator=gen).to(dtype)[:, 2 : K + 2]
    if layout == "3d":
        return torch.randn(1, M, K, generator=gen).to(dtype)
    return torch.randn(M, K, generator=gen).to(dtype)


@pytest.mark.parametrize("name", [pytest.param(name, id=name) for name in cpu.ISA_NAMES])
@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    # K across block (256 inputs / 64 bytes), 16-byte and 8-byte steps, with tails of every size
    K=st.one_of(st.integers(1, 80), st.integers(81, 700)),
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
    # packing.py writes padding code 1, but a kernel running over whole bytes must not depend on it.
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
    K, N = 40, 24
    layer = make_layer(K, N, True, 2)
    x = torch.zeros(3, K)
    for act_bits in (0, 8):
        y = ternary_linear(x, *layer, K, act_bits, backend="cpu")
        torch.testing.assert_close(y, layer[3].expand(3, N))
        assert ternary_linear(torch.zeros(0, K), *layer, K, act_bits, backend="cpu").shape == (0, N)


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
        (torch.randn(4, K), weight, scale_in, scale_out, bias, K, 0, "auto"),
        (torch.randn(2, 3, K).bfloat16(), weight, scale_in, scale_out, None, K, 8, "cpu"),
        (torch.randn(5, K, requires_grad=True), weight, g32, scale_out, bias, K, 0, "cpu"),
    ]
    for args in samples:
        assert select_kernel(args[0], weight, args[6], weight_format="ternary").name == "cpu"
        torch.library.opcheck(torch.ops.hf_onebit.ternary_linear.default, args)
