"""Triton kernels against the reference ``binary_linear``.

Without a GPU the kernels run under Triton's interpreter (``TRITON_INTERPRET=1``) on CPU tensors. The interpreter
must be switched on before Triton is imported, and other tests in this process may import Triton normally, so all
interpreter cases run in ONE child process (this file with ``--interpret-worker``); each case is then checked here.
With a CUDA device the same cases also run compiled, directly and through ``torch.ops.hf_onebit.binary_linear``.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

pytest.importorskip("triton", reason="triton is not installed (optional extra: hf_onebit[triton])")

from hf_onebit.ops import reference  # noqa: E402
from hf_onebit.packing import pack_signs  # noqa: E402

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
SHAPES = [(70, 45), (33, 100), (129, 257), (8, 31)]  # (out_features N, in_features K): none a multiple of 32/64
M_VALUES = [1, 2, 3, 5, 17, 64]


def _cases():
    cases = []
    i = 0
    for path in ("gemv", "dot", "dense", "auto"):
        for dtype in DTYPES:
            for m in M_VALUES:
                if path == "auto" and m not in (1, 17):
                    continue
                n, k = SHAPES[i % len(SHAPES)]
                case = dict(id=f"{path}-{dtype}-M{m}-{n}x{k}-{i}", path=path, dtype=dtype, m=m, n=n, k=k,
                            bias=i % 2 == 0, strided=i % 3 == 0, seed=i)
                if path == "gemv":  # the split of a word's outputs over programs, and both shift flavours
                    case["gemv"] = dict(bits=(32, 16, 8)[i % 3], shift_by_mul=i % 2 == 1, prefetch=i % 4 < 2)
                if path == "dense":  # slices of N (32 wide here so the small shapes split), overlapped or not
                    case["dense"] = dict(chunks=(1, 2, 3)[i % 3], overlap=i % 2 == 0, align=32)
                cases.append(case)
                i += 1
    return cases


CASES = _cases()


def run_case(case, x, weight, g, h, bias):
    from hf_onebit.ops.triton.launch import DenseConfig, GemvConfig, binary_linear_triton

    config = None
    if "gemv" in case:
        config = GemvConfig(kpt=2, num_warps=1 if x.device.type == "cpu" else 2, **case["gemv"])
    if "dense" in case:
        config = DenseConfig(**case["dense"])
    return binary_linear_triton(x, weight, g, h, bias, case["k"], path=case["path"], config=config)


def make_inputs(case, device="cpu"):
    """Deterministic inputs of one case; ``strided`` makes ``x`` a non-contiguous view (a column slice)."""
    gen = torch.Generator().manual_seed(case["seed"])
    n, k, m = case["n"], case["k"], case["m"]
    dtype = DTYPES[case["dtype"]]
    weight = pack_signs(torch.randn(n, k, generator=gen))
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
    """``y`` must match the float64 reference within the rounding the spec itself allows in ``x.dtype``.

    The reference rounds ``x * g`` and the output to ``x.dtype``; kernels may round differently (fp32 product,
    folded dense weight), so the bound is a few ``eps`` of ``|h| * sum|x g| + |y|`` (plus fp32 accumulation).
    """
    dtype = x.dtype
    assert y.dtype == dtype and y.shape == (x.shape[0], weight.shape[0])
    x64, g64, h64 = x.double().cpu(), scale_in.double().cpu(), scale_out.double().cpu()
    b64 = None if bias is None else bias.double().cpu()
    exact = reference.binary_linear(x64, weight.cpu(), g64, h64, b64, x.shape[1])
    eps = torch.finfo(dtype).eps
    magnitude = h64.abs() * ((x64 * g64).abs().sum(-1, keepdim=True)) + exact.abs()
    bound = 2 * eps * magnitude + 1e-6 * (1 + magnitude)
    err = (y.double().cpu() - exact).abs()
    worst = (err / bound).max().item()
    assert worst <= 1.0, f"{case['id']}: error {err.max().item():.3g} exceeds the rounding bound (ratio {worst:.2f})"


# ---------------------------------------------------------------- interpreter (CPU)
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


_OLD_INTERPRETER = 3


@pytest.fixture(scope="module")
def interpreted(tmp_path_factory):
    out = tmp_path_factory.mktemp("triton_interp") / "results.pt"
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
def test_sign_words_layout_and_cache():
    from hf_onebit.ops.triton.repack import build_sign_words, sign_words

    dense = torch.randn(70, 45)
    packed = pack_signs(dense)
    words = build_sign_words(packed, 45)
    assert words.dtype == torch.int32 and words.shape == (3, 48)  # ceil(70/32) words, K padded to 16
    n, k = torch.meshgrid(torch.arange(70), torch.arange(45), indexing="ij")
    bits = (words[n // 32, k] >> (n % 32)) & 1
    assert torch.equal(bits.bool(), dense >= 0)
    assert (words[:, 45:] == 0).all() and ((words[2] >> 6) == 0).all()  # padding stays clear
    first = sign_words(packed, 45)
    assert sign_words(packed, 45) is first  # cached per weight tensor
    packed.bitwise_not_()  # in-place change bumps the version: rebuilt
    rebuilt = sign_words(packed, 45)
    assert rebuilt is not first and torch.equal(rebuilt, build_sign_words(packed, 45))
    assert torch.equal(rebuilt[:2, :45], ~first[:2, :45])  # full words: every sign flipped


def test_path_choice_and_argument_errors():
    from hf_onebit.ops.triton import launch

    assert launch.choose_path(1, 4096, 4096, torch.bfloat16) == "gemv"
    assert launch.choose_path(4, 4096, 4096, torch.float16) == "gemv"
    assert launch.choose_path(16, 4096, 4096, torch.bfloat16) == "dot"
    assert launch.choose_path(16, 4096, 4096, torch.float32) == "dense"
    assert launch.choose_path(4096, 4096, 4096, torch.bfloat16) == "dense"
    case = dict(n=8, k=31, m=2, dtype="fp32", bias=False, strided=False, seed=0)
    x, weight, g, h, _ = make_inputs(case)
    with pytest.raises(ValueError, match="act_bits"):
        launch.binary_linear_triton(x, weight, g, h, None, 31, act_bits=8)
    with pytest.raises(ValueError, match="path"):
        launch.binary_linear_triton(x, weight, g, h, None, 31, path="fast")
    with pytest.raises(ValueError, match="scale_out"):
        launch.binary_linear_triton(x, weight, g, h[:-1], None, 31)
    if not launch.interpreting():
        with pytest.raises(ValueError, match="CUDA"):
            launch.binary_linear_triton(x, weight, g, h, None, 31)


def test_dense_slices_cover_n_and_configs_are_checked():
    from hf_onebit.ops.triton.dense import DenseConfig, slices

    assert slices(11008, 4, 256) == [(0, 2816), (2816, 5632), (5632, 8448), (8448, 11008)]
    assert slices(257, 3, 32) == [(0, 96), (96, 192), (192, 257)]
    assert slices(100, 4, 256) == [(0, 100)]
    with pytest.raises(ValueError, match="chunks"):
        DenseConfig(chunks=0)
    with pytest.raises(ValueError, match="align"):
        DenseConfig(align=48)


def test_registered_for_cuda_only_and_declines_int8_activations():
    from hf_onebit import ops
    from hf_onebit.ops import triton as backend

    names = [k.name for k in ops.kernels_for("cuda")]
    assert "triton" in names and "triton" not in [k.name for k in ops.kernels_for("cpu")]
    x = torch.zeros(1, 8)
    weight = torch.zeros(4, 1, dtype=torch.uint8)
    assert not backend._supports(x, weight, 8)
    assert not backend._supports(x.to(torch.float64), weight, 0)


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

    case = dict(id=f"op-M{m}", n=129, k=257, m=m, dtype="bf16", bias=True, strided=False, seed=m)
    x, weight, g, h, bias = make_inputs(case, "cuda")
    assert ops.select_kernel(x, weight, 0).name == "triton"
    assert ops.select_kernel(x, weight, 8) is None or ops.select_kernel(x, weight, 8).name != "triton"
    y = torch.ops.hf_onebit.binary_linear(x.view(1, m, -1), weight, g, h, bias, 257, 0, "triton")
    check_close(case, y.view(m, -1), x, weight, g, h, bias)


@cuda
def test_gpu_cuda_graph_and_compile():
    from hf_onebit import OneBitLinear

    torch.manual_seed(0)
    layer = OneBitLinear(257, 129, bias=True).cuda()
    layer.weight.data = torch.randint(0, 256, layer.weight.shape, dtype=torch.uint8, device="cuda")
    x = torch.randn(2, 257, device="cuda", dtype=torch.bfloat16)
    expected = layer(x)  # warm-up: builds the cached sign words outside the capture
    static_x = x.clone()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_y = layer(static_x)
    static_x.copy_(x * 2)
    graph.replay()
    torch.testing.assert_close(static_y, layer(x * 2))
    compiled = torch.compile(layer, fullgraph=True)
    torch.testing.assert_close(compiled(x), expected)


@cuda
def test_gpu_overlapped_dense_path_in_cuda_graph():
    """The side-stream pipeline of the prefill path forks from and joins back into a capturing stream."""
    from hf_onebit.ops.triton.launch import DenseConfig, binary_linear_triton

    case = dict(id="dense-graph", n=1000, k=257, m=300, dtype="bf16", bias=True, strided=False, seed=7)
    x, weight, g, h, bias = make_inputs(case, "cuda")
    cfg = DenseConfig(chunks=3, overlap=True, align=128)
    run = lambda inp: binary_linear_triton(inp, weight, g, h, bias, 257, path="dense", config=cfg)  # noqa: E731
    check_close(case, run(x), x, weight, g, h, bias)  # eager, and the warm-up before capture
    static_x = x.clone()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_y = run(static_x)
    static_x.copy_(x * 2)
    graph.replay()
    check_close(case, static_y, x * 2, weight, g, h, bias)


if __name__ == "__main__" and sys.argv[1:2] == ["--interpret-worker"]:
    _run_worker(sys.argv[2])
