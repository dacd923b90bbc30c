"""Helpers shared by the CPU kernel tests of both weight formats: tests/ops/test_cpu_kernels.py (``"binary"``) and
tests/ops/test_cpu_ternary_kernels.py (``"ternary"``): random packed layers and activations, the error bound against
the reference path, thread-count and ISA overrides, and the fixture that requires the kernel library."""

from __future__ import annotations

from contextlib import contextmanager

import pytest
import torch

from hf_onebit.ops import binary_linear, cpu, reference, select_kernel, ternary_linear
from hf_onebit.formats.packing import pack_signs, pack_ternary

DTYPES = (torch.float32, torch.bfloat16, torch.float16)
EPS = {torch.float32: 2.0**-23, torch.bfloat16: 2.0**-8, torch.float16: 2.0**-11}
#: The public op of each weight format (``ops.binary_linear`` / ``ops.ternary_linear``).
LINEAR = {"binary": binary_linear, "ternary": ternary_linear}


@pytest.fixture(scope="module", autouse=True)
def kernel_library():
    # The kernels are the subject here: a build failure is a test failure, not a skip.
    assert cpu.is_available(), f"CPU kernel library did not build/load: {cpu.load_error()}"


@contextmanager
def threads(n: int):
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


@contextmanager
def isa(name):
    cpu.set_isa(name)
    try:
        yield
    finally:
        cpu.set_isa(None)


def make_layer(K: int, N: int, bias: bool, seed: int, scale_dtype=torch.float16, weight_format: str = "binary",
               zeros: float = 0.35):
    """A random packed layer ``(weight, scale_in, scale_out, bias)``: signs (``"binary"``), or ternary values with
    about ``zeros`` of them 0 and the rest +-1 (``"ternary"``)."""
    gen = torch.Generator().manual_seed(seed)
    if weight_format == "ternary":
        values = torch.sign(torch.randn(N, K, generator=gen)) * (torch.rand(N, K, generator=gen) >= zeros)
        weight = pack_ternary(values)
    else:
        weight = pack_signs(torch.randn(N, K, generator=gen))
    scale_in = (torch.rand(K, generator=gen) + 0.5).to(scale_dtype)
    scale_out = (torch.rand(N, generator=gen) * 0.1 + 0.01).to(scale_dtype)
    b = torch.randn(N, generator=gen) if bias else None
    return weight, scale_in, scale_out, b


def make_x(M: int, K: int, dtype, layout: str, seed: int):
    gen = torch.Generator().manual_seed(seed)
    if layout == "transposed":  # a non-contiguous (M, K) view
        return torch.randn(K, M, generator=gen).to(dtype).T
    if layout == "sliced":  # rows with a stride larger than K
        return torch.randn(M, K + 5, generator=gen).to(dtype)[:, 2 : K + 2]
    if layout == "3d":
        return torch.randn(1, M, K, generator=gen).to(dtype)
    return torch.randn(M, K, generator=gen).to(dtype)


def tolerance(x, weight, scale_in, scale_out, bias, K, act_bits, weight_format):
    """Per-element bound on |kernel - reference|: float rounding of a K-term dot product (relative to sum |x g|; the
    ternary kernel's c x - sum x has terms up to 2 |x g|), plus, for 16-bit outputs, up to four roundings to that
    dtype (the reference's product, * h and + bias, and the kernel's one final rounding), each at most eps * |value|."""
    dtype = x.dtype
    xs = (x * scale_in.to(dtype)).double()
    if act_bits == 8:
        q, s = reference.quantize_activations_int8(x * scale_in.to(dtype))
        xs = (q * s).double()
    h = scale_out.double().abs()
    b = bias.double().abs() if bias is not None else torch.zeros_like(h)
    y0 = xs @ reference.unpack_weight(weight, K, torch.float64, weight_format).T
    dot = xs.abs().sum(-1, keepdim=True) * h * 4e-6 * max(1.0, K**0.5 / 8)
    if dtype == torch.float32:
        return dot + 1e-6 * b
    eps = EPS[dtype]
    # int8 with 16-bit x: the reference rounds q * scale to the dtype before the matmul (each term within eps).
    grid = xs.abs().sum(-1, keepdim=True) * h * eps if act_bits == 8 else 0.0
    return dot + grid + 5 * eps * (y0.abs() * h + b) + 1e-6


def check_against_reference(x, layer, K, act_bits, weight_format):
    """The CPU kernel is the one selected for ``x`` and agrees with the reference path within :func:`tolerance`."""
    weight, scale_in, scale_out, bias = layer
    linear = LINEAR[weight_format]
    assert select_kernel(x, weight, act_bits, weight_format=weight_format).name == "cpu"
    expected = linear(x, weight, scale_in, scale_out, bias, K, act_bits, backend="reference")
    got = linear(x, weight, scale_in, scale_out, bias, K, act_bits, backend="cpu")
    assert got.dtype == x.dtype and got.shape == expected.shape
    bound = tolerance(x.reshape(-1, K), weight, scale_in, scale_out, bias, K, act_bits, weight_format)
    bound = bound.reshape(expected.shape)
    err = (got.double() - expected.double()).abs()
    worst = (err - bound).max().item() if err.numel() else 0.0
    assert worst <= 0, f"max excess error {worst:.3g} (max err {err.max().item():.3g}) for x {tuple(x.shape)} {x.dtype}"
    return got


def check_zero_rows_and_empty_batch(weight_format):
    """All-zero activations give exactly the bias; an empty batch gives an empty output (both activation paths); a
    layer of zero inputs gives the bias."""
    K, N = 40, 24
    layer = make_layer(K, N, True, 2, weight_format=weight_format)
    linear = LINEAR[weight_format]
    x = torch.zeros(3, K)
    for act_bits in (0, 8):
        y = linear(x, *layer, K, act_bits, backend="cpu")
        torch.testing.assert_close(y, layer[3].expand(3, N))
        assert linear(torch.zeros(0, K), *layer, K, act_bits, backend="cpu").shape == (0, N)
    # A layer of zero inputs: the C library refuses K = 0, so every entry path answers like the reference (the bias).
    weight = torch.zeros(N, 0, dtype=torch.uint8)
    scale_in, scale_out, bias = torch.ones(0), layer[2], layer[3]
    assert select_kernel(torch.zeros(3, 0), weight, 0, weight_format=weight_format) is None  # None: the reference
    for M in (3, 600):  # the kernel's rows and the dense prefill path's
        x = torch.zeros(M, 0)
        for act_bits in (0, 8):
            with torch.no_grad():  # the eager shortcut
                torch.testing.assert_close(linear(x, weight, scale_in, scale_out, bias, 0, act_bits), bias.expand(M, N))
            torch.testing.assert_close(linear(x.requires_grad_(), weight, scale_in, scale_out, bias, 0, act_bits),
                                       bias.expand(M, N))


def check_int8_extremes(weight_format: str, isa_names) -> None:
    """The int8 kernels' partial sums at their largest: every weight +1 and every activation at +-127 on the int8 grid
    (all equal, so the sums meet their bound), over a K of several 512-input blocks plus a tail and over every
    activation-row count a row kernel takes. Kernels that add int8 products in int16 before widening them (the AVX2
    bit-plane and ternary kernels) must not overflow: each output equals the reference's, +-K * h up to float
    rounding (an overflow would be off by 2^16 times the int8 step)."""
    K, N = 4 * 512 + 300, 40
    values = torch.ones(N, K)
    weight = pack_ternary(values) if weight_format == "ternary" else pack_signs(values)
    scale_in, scale_out = torch.ones(K), torch.full((N,), 0.5)
    op = ternary_linear if weight_format == "ternary" else binary_linear
    for name in isa_names:
        if name not in cpu.supported_isas():
            continue
        for M in (1, 2, 3, 5, 8, 9):
            x = torch.ones(M, K)
            x[1::2] = -1.0  # rows of -1: the other end of the grid
            with isa(name):
                got = op(x, weight, scale_in, scale_out, None, K, 8, backend="cpu")
            want = op(x, weight, scale_in, scale_out, None, K, 8, backend="reference")
            torch.testing.assert_close(want, (x[:, :1] * K * 0.5).expand(M, N))
            torch.testing.assert_close(got, want, msg=f"{weight_format} {name} M={M}")


def check_dense_prefill(weight_format: str, monkeypatch) -> None:
    """Exact float32 calls of at least ``$HF_ONEBIT_CPU_DENSE_ROWS`` rows on the portable and AVX2 variants take torch's
    GEMM on the expanded weight: bit for bit the reference's own arithmetic (one block), within the kernel bound when
    the weight is expanded in several blocks, 3-D inputs and the eager (no-grad module) path included; below the
    threshold, with 0 (never), with int8 activations and with 16-bit inputs the kernel runs (it rounds differently)."""
    K, N, M = 333, 150, 40
    layer = make_layer(K, N, True, 5, torch.float32, weight_format)
    weight, scale_in, scale_out, bias = layer
    linear = LINEAR[weight_format]
    x = torch.randn(2, M // 2, K)
    q = reference.unpack_weight(weight, K, torch.float32, weight_format)
    expected = torch.mm(x.reshape(M, K) * scale_in, q.t()).mul_(scale_out).add_(bias).view(2, M // 2, N)
    for name in ("portable", "avx2"):
        if name not in cpu.supported_isas():
            continue
        with isa(name):
            monkeypatch.setenv(cpu.DENSE_ENV, str(M))
            assert torch.equal(linear(x, *layer, K, 0, backend="cpu"), expected)
            with torch.no_grad():  # the eager path through a call plan
                assert torch.equal(linear(x, *layer, K, 0, backend="cpu"), expected)
            monkeypatch.setattr(cpu, "DENSE_BLOCK_BYTES", 4 * K * 16)  # 16 output rows a block: 10 blocks
            check_against_reference(x, layer, K, 0, weight_format)
            monkeypatch.setattr(cpu, "DENSE_BLOCK_BYTES", 32 << 20)
            for env, rows, act_bits, dtype in ((str(M + 1), M, 0, torch.float32), ("0", M, 0, torch.float32),
                                               (str(M), M, 8, torch.float32), (str(M), M, 0, torch.bfloat16)):
                monkeypatch.setenv(cpu.DENSE_ENV, env)
                xs = x.to(dtype)
                got = linear(xs, *layer, K, act_bits, backend="cpu")
                if act_bits == 0 and dtype == torch.float32:
                    assert not torch.equal(got, expected)  # the kernel's own rounding: another path ran
                check_against_reference(xs, layer, K, act_bits, weight_format)
    monkeypatch.setenv(cpu.DENSE_ENV, "-3")
    with pytest.raises(ValueError, match="HF_ONEBIT_CPU_DENSE_ROWS.*-3.*integer >= 0"):
        cpu.dense_min_rows()
    monkeypatch.setenv(cpu.DENSE_ENV, "many")
    with pytest.raises(ValueError, match="HF_ONEBIT_CPU_DENSE_ROWS.*'many'"):
        cpu.dense_min_rows()
    monkeypatch.delenv(cpu.DENSE_ENV)
    assert cpu.dense_min_rows() == cpu.DENSE_MIN_ROWS


def decode_twice(op, x, layer, K):
    """Two eager no-grad int8 calls of ``op`` (``binary_linear`` or ``ternary_linear``) on the CPU backend: the first
    makes the layer's call plan, the second is the weight's second call (when a runtime copy is built); returns the
    second result."""
    with torch.no_grad():
        op(x, *layer, K, 8, backend="cpu")
        return op(x, *layer, K, 8, backend="cpu")


def portable_int8(op, x, layer, K):
    """The int8 call of ``op`` on the portable kernel variant."""
    with isa("portable"):
        return op(x, *layer, K, 8, backend="cpu")


def check_copy_is_read(op, copy: torch.Tensor, layer, K: int, max_m: int) -> None:
    """Zeroing a weight's runtime ``copy`` (its plan's t5 or lut tensor) changes the int8 calls of ``op`` of up to
    ``max_m`` rows and no other call (more rows, the float path): exactly those read it. The copy is restored."""
    xs = {m: torch.randn(m, K) for m in sorted({1, 3, max_m, max_m + 1})}
    good = {m: op(x, *layer, K, 8, backend="cpu") for m, x in xs.items()}
    saved = copy.clone()
    copy.zero_()
    try:
        for m in xs:
            if m <= max_m:
                assert not torch.equal(op(xs[m], *layer, K, 8, backend="cpu"), good[m]), m
        more = op(xs[max_m + 1], *layer, K, 8, backend="cpu")
        torch.testing.assert_close(more, good[max_m + 1], rtol=0, atol=0)
        with torch.no_grad():  # the float path never reads it
            exact = op(xs[1], *layer, K, 0, backend="cpu")
        torch.testing.assert_close(exact, op(xs[1], *layer, K, 0, backend="reference"))
    finally:
        copy.copy_(saved)
    torch.testing.assert_close(op(xs[1], *layer, K, 8, backend="cpu"), good[1], rtol=0, atol=0)


def fail_byte_allocations(monkeypatch, module) -> None:
    """``module.torch.empty`` of uint8 raises torch's CPU out-of-memory error (other dtypes allocate as usual)."""
    real_empty = torch.empty

    def failing_empty(*args, **kwargs):
        if kwargs.get("dtype") == torch.uint8:
            raise RuntimeError("DefaultCPUAllocator: not enough memory")
        return real_empty(*args, **kwargs)

    monkeypatch.setattr(module.torch, "empty", failing_empty)
