"""Triton kernels on ternary weights (2-bit codes) against the reference ``ternary_linear``.

Without a GPU the kernels run under Triton's interpreter (``TRITON_INTERPRET=1``) on CPU tensors, all cases in ONE
child process (this file with ``--interpret-worker``; the interpreter must be chosen before Triton is imported and
other tests in this process may import Triton normally); each result is checked here. The kernels are also compiled
for sm_90 offline (no GPU needed), which the interpreter does not do. With a CUDA device the same cases run compiled,
directly and through ``torch.ops.hf_onebit.ternary_linear``.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

pytest.importorskip("triton", reason="triton is not installed (optional extra: hf_onebit[triton])")

from hf_onebit.ops import reference  # noqa: E402
from hf_onebit.packing import pack_ternary  # noqa: E402

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
# (out_features N, in_features K): K not a multiple of 4 (a padded last byte) or of 16, N not of 16 or 32; 48x36 has
# whole code words (N = 3 x 16) but half a sign-word width
SHAPES = [(70, 45), (33, 101), (48, 36), (97, 130)]
M_VALUES = [1, 3, 17, 70]


def _cases():
    cases = []
    i = 0
    for path in ("gemv", "dot", "dense", "auto"):
        for dtype in DTYPES:
            for m in M_VALUES:
                if path == "auto" and m not in (1, 70):
                    continue
                n, k = SHAPES[(i + i // len(M_VALUES)) % len(SHAPES)]  # each M meets several shapes
                case = dict(id=f"{path}-{dtype}-M{m}-{n}x{k}-{i}", path=path, dtype=dtype, m=m, n=n, k=k,
                            bias=i % 2 == 0, strided=i % 3 == 0, seed=100 + i)
                if path == "gemv":  # whole or half code words per program, both shift flavours, prefetch on/off
                    case["gemv"] = dict(bits=(16, 8)[i % 2], shift_by_mul=i % 3 != 1, prefetch=i % 4 < 2)
                if path == "dense":  # slices of N (32 wide so the small shapes split), overlapped or not
                    case["dense"] = dict(chunks=(1, 2, 3)[i % 3], overlap=i % 2 == 0, align=32)
                cases.append(case)
                i += 1
    return cases


CASES = _cases()


def run_case(case, x, weight, g, h, bias):
    from hf_onebit.ops.triton.launch import DenseConfig, GemvConfig, ternary_linear_triton

    config = None
    if "gemv" in case:
        config = GemvConfig(kpt=2, num_warps=1 if x.device.type == "cpu" else 2, **case["gemv"])
    if "dense" in case:
        config = DenseConfig(**case["dense"])
    return ternary_linear_triton(x, weight, g, h, bias, case["k"], path=case["path"], config=config)


def make_inputs(case, device="cpu"):
    """Deterministic inputs; about a third of the weights are 0; ``strided`` makes ``x`` a column-slice view."""
    gen = torch.Generator().manual_seed(case["seed"])
    n, k, m = case["n"], case["k"], case["m"]
    dtype = DTYPES[case["dtype"]]
    weight = pack_ternary(torch.randint(-1, 2, (n, k), generator=gen))
    scale_in = (torch.rand(k, generator=gen) + 0.5).to(torch.float16)
    scale_out = (torch.rand(n, generator=gen) * 0.1 + 0.01).to(torch.float16)
    bias = torch.randn(n, generator=gen) if case["bias"] else None
    if case["strided"]:
        base = torch.randn(m, 2 * k + 3, generator=gen).to(device=device, dtype=dtype)
        x = base[:, 3 : 3 + 2 * k : 2]
    else:
        x = torch.randn(m, k, generator=gen).to(device=device, dtype=dtype)
    move = lambda t: None if t is None else t.to(device)  # noqa: E731
    assert x.is_contiguous() != case["strided"]
    return x, move(weight), move(scale_in), move(scale_out), move(bias)


def check_close(case, y, x, weight, scale_in, scale_out, bias):
    """``y`` must match the float64 reference within a few ``eps(x.dtype)`` of ``|h| * sum|x g| + |y|``.

    The reference rounds ``x * g`` and the output to ``x.dtype``; the kernels round differently (fp32 products, the
    folded dense weight of the prefill path), hence a bound rather than equality.
    """
    dtype = x.dtype
    assert y.dtype == dtype and y.shape == (x.shape[0], weight.shape[0])
    x64, g64, h64 = x.double().cpu(), scale_in.double().cpu(), scale_out.double().cpu()
    b64 = None if bias is None else bias.double().cpu()
    exact = reference.ternary_linear(x64, weight.cpu(), g64, h64, b64, x.shape[1])
    eps = torch.finfo(dtype).eps
    magnitude = h64.abs() * ((x64 * g64).abs().sum(-1, keepdim=True)) + exact.abs()
    bound = 2 * eps * magnitude + 1e-6 * (1 + magnitude)
    err = (y.double().cpu() - exact).abs()
    worst = (err / bound).max().item()
    assert worst <= 1.0, f"{case['id']}: error {err.max().item():.3g} exceeds the rounding bound (ratio {worst:.2f})"


# ---------------------------------------------------------------- interpreter (CPU)
_OLD_INTERPRETER = 3


def _run_worker(out_path):
    """Child process: run every case under the interpreter and save the outputs."""
    os.environ["TRITON_INTERPRET"] = "1"
    import numpy
    import triton

    results = {}
    for case in CASES:
        x, weight, g, h, bias = make_inputs(case)
        try:
            results[case["id"]] = run_case(case, x, weight, g, h, bias)
        except triton.runtime.errors.InterpreterError as err:
            if "only 0-dimensional arrays" not in str(err):
                raise
            # older Triton interpreters turn a runtime loop bound into a 1-element array, which numpy 2.x refuses
            print(f"Triton {triton.__version__}'s interpreter cannot run loops with a runtime bound under numpy "
                  f"{numpy.__version__} (fixed in newer Triton)", file=sys.stderr)
            sys.exit(_OLD_INTERPRETER)
    torch.save(results, out_path)


@pytest.fixture(scope="module")
def interpreted(tmp_path_factory):
    out = tmp_path_factory.mktemp("triton_ternary_interp") / "results.pt"
    env = dict(os.environ, TRITON_INTERPRET="1")
    proc = subprocess.run(
        [sys.executable, __file__, "--interpret-worker", str(out)], env=env, capture_output=True, text=True, timeout=600
    )
    if proc.returncode == _OLD_INTERPRETER:
        pytest.skip(proc.stderr.strip().splitlines()[-1])
    assert proc.returncode == 0, f"interpreter worker failed:\n{proc.stdout}\n{proc.stderr}"
    return torch.load(out)


@pytest.mark.parametrize("case", CASES, ids=[c["id"] for c in CASES])
def test_interpreter_matches_reference(interpreted, case):
    x, weight, g, h, bias = make_inputs(case)
    check_close(case, interpreted[case["id"]], x, weight, g, h, bias)


# ---------------------------------------------------------------- pure-Python parts (no kernel launch)
def test_code_words_layout_and_cache():
    from hf_onebit.ops.triton.repack import build_code_words, weight_words

    values = torch.randint(-1, 2, (70, 45), generator=torch.Generator().manual_seed(0))
    packed = pack_ternary(values)
    words = build_code_words(packed, 45)
    assert words.dtype == torch.int32 and words.shape == (5, 48)  # ceil(70/16) words, K padded to 16
    n, k = torch.meshgrid(torch.arange(70), torch.arange(45), indexing="ij")
    codes = (words[n // 16, k] >> (2 * (n % 16))) & 3
    assert torch.equal(codes - 1, values)
    # padding: inputs past K and outputs past N (70 = 4 x 16 + 6) hold code 1, i.e. value 0
    assert (words[:, 45:] == 0x55555555).all() and ((words[4] >> 12) == 0x55555).all()
    first = weight_words(packed, 45, "ternary")
    assert weight_words(packed, 45, "ternary") is first  # cached per weight tensor
    packed.copy_(pack_ternary(-values))  # in-place change bumps the version: rebuilt
    rebuilt = weight_words(packed, 45, "ternary")
    assert rebuilt is not first and torch.equal(rebuilt, build_code_words(packed, 45))
    assert torch.equal(((rebuilt[n // 16, k] >> (2 * (n % 16))) & 3) - 1, -values)


def test_configs_and_argument_errors():
    from hf_onebit.ops.triton import launch

    cpu = torch.device("cpu")
    for m in (1, 2, 4):
        assert launch.gemv_config(m, 4096, 4096, cpu, "ternary").bits <= 16  # a code word has 16 outputs
    case = dict(n=8, k=31, m=2, dtype="fp32", bias=False, strided=False, seed=0)
    x, weight, g, h, _ = make_inputs(case)
    with pytest.raises(ValueError, match="act_bits"):
        launch.ternary_linear_triton(x, weight, g, h, None, 31, act_bits=8)
    with pytest.raises(ValueError, match="path"):
        launch.ternary_linear_triton(x, weight, g, h, None, 31, path="fast")
    with pytest.raises(ValueError, match="weight: packed ternary codes have shape"):
        launch.ternary_linear_triton(x, weight[:, :2], g, h, None, 31)  # a binary-sized row (ceil(31/8) bytes)
    with pytest.raises(ValueError, match="weight_format"):
        launch.packed_linear_triton(x, weight, g, h, None, 31, weight_format="int4")
    with pytest.raises(ValueError, match="config.bits: 32 is not allowed for ternary"):
        launch.check_gemv_config(launch.GemvConfig(bits=32), "ternary")
    assert launch.check_gemv_config(launch.GemvConfig(bits=32), "binary").bits == 32
    if not launch.interpreting():
        with pytest.raises(ValueError, match="CUDA"):
            launch.ternary_linear_triton(x, weight, g, h, None, 31)


def test_registered_for_cuda_ternary_and_declines_int8_activations():
    from hf_onebit import ops
    from hf_onebit.ops import triton as backend

    assert "triton" in [k.name for k in ops.kernels_for("cuda", "ternary")]
    assert "triton" not in [k.name for k in ops.kernels_for("cpu", "ternary")]
    x = torch.zeros(1, 8)
    weight = torch.zeros(4, 2, dtype=torch.uint8)
    assert not backend._supports(x, weight, 8)  # int8 activations: the reference path runs them
    assert not backend._supports(x.to(torch.float64), weight, 0)


def _nvidia_backend_available() -> bool:
    try:
        from triton.backends.nvidia.compiler import CUDABackend  # noqa: F401
    except Exception:  # noqa: BLE001
        return False
    return True


@pytest.mark.skipif(not _nvidia_backend_available(), reason="Triton's NVIDIA backend is not installed")
def test_ternary_kernels_compile_for_sm90():
    """The real compiler (not the interpreter) accepts the ternary variants: Triton -> PTX -> cubin for sm_90."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from hf_onebit.ops.triton.dequant import dequant_kernel
    from hf_onebit.ops.triton.gemv import gemv_kernel
    from hf_onebit.ops.triton.matmul import matmul_kernel

    ptrs = {"x_ptr": "*bf16", "g_ptr": "*fp16", "w_ptr": "*i32", "h_ptr": "*fp16", "b_ptr": "*fp16", "y_ptr": "*bf16"}
    ints = {name: "i32" for name in ("M", "N", "K", "stride_xm", "stride_xk", "stride_w", "stride_ym")}
    gemv = dict(HAS_BIAS=True, BLOCK_M=1, BITS=16, THREADS=128, KPT=4, SHIFT_BY_MUL=True, PREFETCH=True, TERNARY=True)
    dot = dict(HAS_BIAS=True, BLOCK_M=16, BLOCK_N=64, BLOCK_K=128, GROUP_M=8, DOT_FP32=False, TERNARY=True)
    dequant = dict(BLOCK_K=64, BLOCK_N=128, TERNARY=True)
    plans = [
        (gemv_kernel, {**ptrs, **ints, "one": "i32"}, gemv),
        (matmul_kernel, {**ptrs, **ints}, dot),
        (dequant_kernel, {"w_ptr": "*i32", "g_ptr": "*fp16", "h_ptr": "*fp16", "out_ptr": "*bf16", "N": "i32",
                          "K": "i32", "stride_w": "i32", "stride_out": "i32"}, dequant),
    ]
    for fn, signature, constants in plans:
        signature = {**signature, **{name: "constexpr" for name in constants}}
        compiled = triton.compile(ASTSource(fn=fn, signature=signature, constexprs=constants),
                                  target=GPUTarget("cuda", 90, 32), options={"num_warps": 4})
        assert len(compiled.asm["cubin"]) > 0, fn.__name__


# ---------------------------------------------------------------- real GPU
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")


@cuda
@pytest.mark.parametrize("case", CASES, ids=[c["id"] for c in CASES])
def test_gpu_matches_reference(case):
    x, weight, g, h, bias = make_inputs(case, "cuda")
    y = run_case(case, x, weight, g, h, bias)
    check_close(case, y, x, weight, g, h, bias)


@cuda
@pytest.mark.parametrize("m", [1, 3, 17, 300])
def test_gpu_public_op_uses_triton(m):
    from hf_onebit import ops

    case = dict(id=f"op-M{m}", n=129, k=258, m=m, dtype="bf16", bias=True, strided=False, seed=m)
    x, weight, g, h, bias = make_inputs(case, "cuda")
    assert ops.select_kernel(x, weight, 0, weight_format="ternary").name == "triton"
    int8 = ops.select_kernel(x, weight, 8, weight_format="ternary")
    assert int8 is None or int8.name != "triton"
    y = torch.ops.hf_onebit.ternary_linear(x.view(1, m, -1), weight, g, h, bias, 258, 0, "triton")
    check_close(case, y.view(m, -1), x, weight, g, h, bias)


@cuda
def test_gpu_cuda_graph_and_compile():
    from hf_onebit import ops

    case = dict(id="graph", n=129, k=258, m=2, dtype="bf16", bias=True, strided=False, seed=5)
    x, weight, g, h, bias = make_inputs(case, "cuda")
    run = lambda inp: ops.ternary_linear(inp, weight, g, h, bias, 258)  # noqa: E731
    expected = run(x)  # warm-up: compiles the kernel and builds the cached code words outside the capture
    static_x = x.clone()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_y = run(static_x)
    static_x.copy_(x * 2)
    graph.replay()
    check_close(case, static_y, x * 2, weight, g, h, bias)
    compiled = torch.compile(run, fullgraph=True)
    torch.testing.assert_close(compiled(x), expected)


if __name__ == "__main__" and sys.argv[1:2] == ["--interpret-worker"]:
    _run_worker(sys.argv[2])
