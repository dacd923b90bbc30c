"""Triton kernels on ternary weights (2-bit codes) against the reference ``ternary_linear``.

The cases, inputs, checks and the interpreter child process are shared with the binary kernels' tests
(tests/ops/triton_cases.py). Without a GPU the kernels run under Triton's interpreter (all cases in one child process);
the kernels are also compiled for sm_90 offline (no GPU needed), which the interpreter does not do. With a CUDA
device the same cases run compiled, directly and through ``torch.ops.hf_onebit.ternary_linear``.
"""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton", reason="triton is not installed (optional extra: hf_onebit[triton])")

from hf_onebit.formats.packing import pack_ternary  # noqa: E402
from triton_cases import (  # noqa: E402
    check_argument_errors, check_close, check_public_op_uses_triton, cuda, gpu_case_test, interpreter_tests, make_inputs,
    replay_doubled,
)

FORMAT = "ternary"

# ---------------------------------------------------------------- interpreter (CPU, all cases in one child process)
interpreted, test_interpreter_matches_reference = interpreter_tests(FORMAT)


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
    x, weight, g, h = check_argument_errors(FORMAT)  # act_bits, path, device
    with pytest.raises(ValueError, match="weight: packed ternary codes have shape"):
        launch.ternary_linear_triton(x, weight[:, :2], g, h, None, 31)  # a binary-sized row (ceil(31/8) bytes)
    with pytest.raises(ValueError, match="weight_format"):
        launch.packed_linear_triton(x, weight, g, h, None, 31, weight_format="int4")
    with pytest.raises(ValueError, match="config.bits: 32 is not allowed for ternary"):
        launch.check_gemv_config(launch.GemvConfig(bits=32), "ternary")
    assert launch.check_gemv_config(launch.GemvConfig(bits=32), "binary").bits == 32


def test_registered_for_cuda_ternary_and_takes_both_activation_precisions():
    from hf_onebit import ops
    from hf_onebit.ops import triton as backend

    assert "triton" in [k.name for k in ops.kernels_for("cuda", "ternary")]
    assert "triton" not in [k.name for k in ops.kernels_for("cpu", "ternary")]
    x = torch.zeros(1, 8)
    weight = torch.zeros(4, 2, dtype=torch.uint8)
    assert backend._supports(x, weight, 8) and not backend._supports(x, weight, 4)
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
    gemv = dict(HAS_BIAS=True, BLOCK_M=1, BITS=16, THREADS=128, KPT=4, SHIFT_BY_MUL=True, PREFETCH=True, TERNARY=True,
                ROW_SCALE=False)
    dot = dict(HAS_BIAS=True, BLOCK_M=16, BLOCK_N=64, BLOCK_K=128, GROUP_M=8, DOT_FP32=False, TERNARY=True)
    dequant = dict(BLOCK_K=64, BLOCK_N=128, TERNARY=True)
    plans = [
        (gemv_kernel, {**ptrs, "s_ptr": "*fp32", **ints, "one": "i32"}, gemv),
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
test_gpu_matches_reference = gpu_case_test(FORMAT)


@cuda
@pytest.mark.parametrize("m", [1, 3, 17, 300])
def test_gpu_public_op_uses_triton(m):
    check_public_op_uses_triton(FORMAT, m, 258)


@cuda
def test_gpu_cuda_graph_and_compile():
    from hf_onebit import ops

    case = dict(id="graph", n=129, k=258, m=2, dtype="bf16", bias=True, strided=False, seed=5)
    x, weight, g, h, bias = make_inputs(case, FORMAT, "cuda")
    run = lambda inp: ops.ternary_linear(inp, weight, g, h, bias, 258)  # noqa: E731
    expected = run(x)  # warm-up: compiles the kernel and builds the cached code words outside the capture
    check_close(case, FORMAT, replay_doubled(run, x), x * 2, weight, g, h, bias)
    compiled = torch.compile(run, fullgraph=True)
    torch.testing.assert_close(compiled(x), expected)

