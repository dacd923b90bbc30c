"""The Triton kernel tests shared by tests/ops/test_triton_kernels.py (``"binary"``) and tests/ops/test_triton_ternary.py
(``"ternary"``): the case grid, deterministic inputs, one launch, the check against the reference, the interpreter
child process, and the per-case tests each of those modules binds (:func:`interpreter_tests`, :func:`gpu_case_test`).

Without a GPU the kernels run under Triton's interpreter (``TRITON_INTERPRET=1``) on CPU tensors. The interpreter
must be switched on before Triton is imported, and other tests in the pytest process may import Triton normally, so
all interpreter cases of one weight format run in ONE child process (this file with
``--interpret-worker FORMAT OUT``, started with ``TRITON_INTERPRET=1`` in its environment); each result is then
checked in the test process.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from hf_onebit.ops import reference
from hf_onebit.formats.packing import pack_signs, pack_ternary

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def _random_signs(n, k, gen):
    return pack_signs(torch.randn(n, k, generator=gen))


def _random_ternary(n, k, gen):  # about a third of the weights are 0
    return pack_ternary(torch.randint(-1, 2, (n, k), generator=gen))


#: Per weight format: the case grid (shapes are (out_features N, in_features K)), how a random packed weight is
#: drawn, the reference it is checked against, the name of the launcher in ``hf_onebit.ops.triton.launch`` and that of
#: the public op in ``torch.ops.hf_onebit``.
FORMATS = {
    "binary": dict(
        shapes=[(70, 45), (33, 100), (129, 257), (8, 31)],  # none a multiple of 32/64
        m_values=[1, 2, 3, 5, 17, 64],
        auto_m=(1, 17),
        a8_m=(1, 3, 40),
        seed0=0,
        shape_index=lambda i, m_count: i,
        # the split of a word's outputs over programs, and both shift flavours
        gemv=lambda i: dict(bits=(32, 16, 8)[i % 3], shift_by_mul=i % 2 == 1, prefetch=i % 4 < 2),
        random_weight=_random_signs,
        reference=reference.binary_linear,
        launcher="binary_linear_triton",
        op="binary_linear",
    ),
    "ternary": dict(
        # K not a multiple of 4 (a padded last byte) or of 16, N not of 16 or 32; 48x36 has whole code words
        # (N = 3 x 16) but half a sign-word width
        shapes=[(70, 45), (33, 101), (48, 36), (97, 130)],
        m_values=[1, 3, 17, 70],
        auto_m=(1, 70),
        a8_m=(2, 17),
        seed0=100,
        shape_index=lambda i, m_count: i + i // m_count,  # each M meets several shapes
        # whole or half code words per program, both shift flavours, prefetch on/off
        gemv=lambda i: dict(bits=(16, 8)[i % 2], shift_by_mul=i % 3 != 1, prefetch=i % 4 < 2),
        random_weight=_random_ternary,
        reference=reference.ternary_linear,
        launcher="ternary_linear_triton",
        op="ternary_linear",
    ),
}


def make_cases(weight_format):
    """Every (path, dtype, M) of the format's grid, each with its own shape, bias/stride flags, seed and config."""
    spec = FORMATS[weight_format]
    shapes, m_values = spec["shapes"], spec["m_values"]
    cases = []
    i = 0
    for path in ("gemv", "dot", "dense", "auto"):
        for dtype in DTYPES:
            for m in m_values:
                if path == "auto" and m not in spec["auto_m"]:
                    continue
                n, k = shapes[spec["shape_index"](i, len(m_values)) % len(shapes)]
                case = dict(id=f"{path}-{dtype}-M{m}-{n}x{k}-{i}", path=path, dtype=dtype, m=m, n=n, k=k,
                            bias=i % 2 == 0, strided=i % 3 == 0, seed=spec["seed0"] + i)
                if path == "gemv":
                    case["gemv"] = spec["gemv"](i)
                if path == "dense":  # slices of N (32 wide here so the small shapes split), overlapped or not
                    case["dense"] = dict(chunks=(1, 2, 3)[i % 3], overlap=i % 2 == 0, align=32)
                cases.append(case)
                i += 1
    # int8 activations (act_bits=8): every path, each dtype, a few M
    for path in ("gemv", "dot", "dense", "auto"):
        for dtype in DTYPES:
            for m in spec["a8_m"]:
                n, k = shapes[i % len(shapes)]
                case = dict(id=f"a8-{path}-{dtype}-M{m}-{n}x{k}-{i}", path=path, dtype=dtype, m=m, n=n, k=k,
                            bias=i % 2 == 0, strided=i % 3 == 0, seed=spec["seed0"] + i, act_bits=8)
                if path == "gemv":  # half of them add exact fp16 pairs (emulated under the interpreter)
                    case["gemv"] = dict(spec["gemv"](i), pairs=i % 2 == 0)
                cases.append(case)
                i += 1
    return cases


def case_params(cases):
    """``cases`` as pytest params, each with its case id."""
    return [pytest.param(case, id=case["id"]) for case in cases]


def launcher(weight_format):
    from hf_onebit.ops.triton import launch

    return getattr(launch, FORMATS[weight_format]["launcher"])


def run_case(case, weight_format, x, weight, g, h, bias):
    from hf_onebit.ops.triton.launch import DenseConfig, GemvConfig

    config = None
    if "gemv" in case:
        config = GemvConfig(kpt=2, num_warps=1 if x.device.type == "cpu" else 2, **case["gemv"])
    if "dense" in case:
        config = DenseConfig(**case["dense"])
    return launcher(weight_format)(x, weight, g, h, bias, case["k"], act_bits=case.get("act_bits", 0),
                                   path=case["path"], config=config)


def make_inputs(case, weight_format, device="cpu"):
    """Deterministic inputs of one case; ``strided`` makes ``x`` a non-contiguous view (a column slice)."""
    gen = torch.Generator().manual_seed(case["seed"])
    n, k, m = case["n"], case["k"], case["m"]
    dtype = DTYPES[case["dtype"]]
    weight = FORMATS[weight_format]["random_weight"](n, k, gen)
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


def check_close(case, weight_format, y, x, weight, scale_in, scale_out, bias):
    """``y`` must match the float64 reference within the rounding the spec itself allows in ``x.dtype``.

    The reference rounds ``x * g`` and the output to ``x.dtype``; kernels may round differently (fp32 products, the
    folded dense weight of the prefill path), so the bound is a few ``eps`` of ``|h| * sum|x g| + |y|`` (plus fp32
    accumulation) rather than equality. With ``act_bits=8`` the kernels must reproduce the reference's int8 grid
    (same integers, same scales): the float64 reference then runs on those quantised activations.
    """
    dtype = x.dtype
    assert y.dtype == dtype and y.shape == (x.shape[0], weight.shape[0])
    x64, g64, h64 = x.double().cpu(), scale_in.double().cpu(), scale_out.double().cpu()
    b64 = None if bias is None else bias.double().cpu()
    if case.get("act_bits", 0) == 8:
        q, scale = reference.quantize_activations_int8(x.cpu() * scale_in.cpu().to(dtype))  # the spec's own grid
        x64, g64 = q.double() * scale.double(), torch.ones_like(g64)
    exact = FORMATS[weight_format]["reference"](x64, weight.cpu(), g64, h64, b64, x.shape[1])
    eps = torch.finfo(dtype).eps
    magnitude = h64.abs() * ((x64 * g64).abs().sum(-1, keepdim=True)) + exact.abs()
    bound = 2 * eps * magnitude + 1e-6 * (1 + magnitude)
    err = (y.double().cpu() - exact).abs()
    worst = (err / bound).max().item()
    assert worst <= 1.0, f"{case['id']}: error {err.max().item():.3g} exceeds the rounding bound (ratio {worst:.2f})"


def check_argument_errors(weight_format):
    """The launcher refuses ``act_bits=4``, an unknown path and (compiled, not interpreted) CPU tensors, naming the
    argument; returns the small valid inputs ``(x, weight, g, h)`` (K = 31) for the caller's own checks."""
    from hf_onebit.ops.triton.interpreter import interpreting

    run = launcher(weight_format)
    case = dict(n=8, k=31, m=2, dtype="fp32", bias=False, strided=False, seed=0)
    x, weight, g, h, _ = make_inputs(case, weight_format)
    with pytest.raises(ValueError, match="act_bits"):
        run(x, weight, g, h, None, 31, act_bits=4)
    with pytest.raises(ValueError, match="path"):
        run(x, weight, g, h, None, 31, path="fast")
    if not interpreting():
        with pytest.raises(ValueError, match="CUDA"):
            run(x, weight, g, h, None, 31)
    return x, weight, g, h


# ---------------------------------------------------------------- real GPU
def check_public_op_uses_triton(weight_format, m, k):
    """On CUDA the public op selects the Triton kernel for float and int8 activations and agrees with the reference
    for ``m`` tokens of ``k`` inputs (129 outputs, bf16)."""
    from hf_onebit import ops

    case = dict(id=f"op-M{m}", n=129, k=k, m=m, dtype="bf16", bias=True, strided=False, seed=m)
    x, weight, g, h, bias = make_inputs(case, weight_format, "cuda")
    assert ops.select_kernel(x, weight, 0, weight_format=weight_format).name == "triton"
    assert ops.select_kernel(x, weight, 8, weight_format=weight_format).name == "triton"
    op = getattr(torch.ops.hf_onebit, FORMATS[weight_format]["op"])
    for act_bits in (0, 8):
        y = op(x.view(1, m, -1), weight, g, h, bias, k, act_bits)
        check_close(dict(case, act_bits=act_bits), weight_format, y.view(m, -1), x, weight, g, h, bias)


def replay_doubled(run, x):
    """``run(x * 2)`` computed by replaying a CUDA graph captured on ``run`` of a copy of ``x`` (``run`` must have
    been called once outside the capture, to compile and build its caches)."""
    static_x = x.clone()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_y = run(static_x)
    static_x.copy_(x * 2)
    graph.replay()
    return static_y


# ---------------------------------------------------------------- interpreter (CPU)
_OLD_INTERPRETER = 3


def _run_worker(weight_format, out_path):
    """Child process: run every case of ``weight_format`` under the interpreter and save the outputs."""
    os.environ["TRITON_INTERPRET"] = "1"
    import numpy
    import triton

    results = {}
    for case in make_cases(weight_format):
        x, weight, g, h, bias = make_inputs(case, weight_format)
        try:
            results[case["id"]] = run_case(case, weight_format, x, weight, g, h, bias)
        except triton.runtime.errors.InterpreterError as err:
            if "only 0-dimensional arrays" not in str(err):
                raise
            # older Triton interpreters turn a runtime loop bound into a 1-element array, which numpy 2.x refuses
            print(f"Triton {triton.__version__}'s interpreter cannot run loops with a runtime bound under numpy "
                  f"{numpy.__version__} (fixed in newer Triton)", file=sys.stderr)
            sys.exit(_OLD_INTERPRETER)
    torch.save(results, out_path)


def interpret_all(weight_format, out_path):
    """Run the child process for ``weight_format``; the outputs by case id (skips on an interpreter that is too old)."""
    env = dict(os.environ, TRITON_INTERPRET="1")
    proc = subprocess.run(
        [sys.executable, os.path.abspath(__file__), "--interpret-worker", weight_format, str(out_path)],
        env=env, capture_output=True, text=True, timeout=600,
    )
    if proc.returncode == _OLD_INTERPRETER:
        pytest.skip(proc.stderr.strip().splitlines()[-1])
    assert proc.returncode == 0, f"interpreter worker failed:\n{proc.stdout}\n{proc.stderr}"
    return torch.load(out_path)


def interpreter_tests(weight_format):
    """Every case of ``weight_format`` under the interpreter, for a test module to bind under these names:
    ``interpreted, test_interpreter_matches_reference = interpreter_tests(FORMAT)``."""
    cases = make_cases(weight_format)

    @pytest.fixture(scope="module")
    def interpreted(tmp_path_factory):
        return interpret_all(weight_format, tmp_path_factory.mktemp(f"triton_{weight_format}_interp") / "results.pt")

    @pytest.mark.parametrize("case", case_params(cases))
    def test_interpreter_matches_reference(interpreted, case):
        x, weight, g, h, bias = make_inputs(case, weight_format)
        check_close(case, weight_format, interpreted[case["id"]], x, weight, g, h, bias)

    return interpreted, test_interpreter_matches_reference


def gpu_case_test(weight_format):
    """Every case of ``weight_format`` compiled on a CUDA device (skipped without one), for a test module to bind:
    ``test_gpu_matches_reference = gpu_case_test(FORMAT)``."""
    cases = make_cases(weight_format)

    @cuda
    @pytest.mark.parametrize("case", case_params(cases))
    def test_gpu_matches_reference(case):
        x, weight, g, h, bias = make_inputs(case, weight_format, "cuda")
        y = run_case(case, weight_format, x, weight, g, h, bias)
        check_close(case, weight_format, y, x, weight, g, h, bias)

    return test_gpu_matches_reference


if __name__ == "__main__" and sys.argv[1:2] == ["--interpret-worker"]:
    _run_worker(sys.argv[2], sys.argv[3])
