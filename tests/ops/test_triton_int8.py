"""The int8-activation (``act_bits=8``) side of the Triton backend, beyond the shared kernel cases.

The per-case comparisons with the reference (interpreter on CPU, compiled on a GPU) live in tests/ops/triton_cases.py
(the ``a8-*`` ids of tests/ops/test_triton_kernels.py and tests/ops/test_triton_ternary.py). Here: path choice and config
checks, and an offline compile for sm_90 that shows the int8 matmul runs on the tensor cores (wgmma) and the pair
GEMV adds fp16 pairs, without a GPU.
"""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton", reason="triton is not installed (optional extra: hf_onebit[triton])")


def test_a8_path_choice_and_config_errors():
    from hf_onebit.ops.triton import launch
    from hf_onebit.ops.triton.launch_int8 import K_ALIGN, Int8Config, padded_k

    assert launch.choose_path(1, 4096, 4096, torch.bfloat16, 8) == "gemv"
    assert launch.choose_path(16, 4096, 4096, torch.bfloat16, 8) == "dot"
    assert launch.choose_path(2048, 4096, 4096, torch.float32, 8) == "dense"  # int8 operands: fp32 x is no obstacle
    assert padded_k(1) == K_ALIGN and padded_k(K_ALIGN) == K_ALIGN and padded_k(K_ALIGN + 1) == 2 * K_ALIGN
    with pytest.raises(ValueError, match="block_k: 48"):
        Int8Config(block_k=48)
    assert not launch.gemv_config(1, 4096, 4096, torch.device("cpu")).pairs  # the a8 GEMV's default: pairs opt-in
    with pytest.raises(ValueError, match="Int8Config does not fit path 'gemv' with act_bits=8; expected GemvConfig"):
        launch.check_config(Int8Config(), "gemv", 8)
    with pytest.raises(ValueError, match="expected Int8Config"):
        launch.check_config(launch.DotConfig(), "dot", 8)
    with pytest.raises(ValueError, match="expected DenseConfig"):
        launch.check_config(Int8Config(), "dense", 0)
    launch.check_config(None, "dot", 8)
    launch.check_config(Int8Config(), "dense", 8)
    cfg = launch.GemvConfig(kpt=32, pairs=True)
    with pytest.raises(ValueError, match="config.kpt: 32"):
        launch._gemv_pairs(None, None, None, None, None, 1, 8, 8, cfg, "binary", None)


def _nvidia_backend_available() -> bool:
    try:
        from triton.backends.nvidia.compiler import CUDABackend  # noqa: F401
    except Exception:  # noqa: BLE001
        return False
    return True


def _compile(fn, signature, constants, num_warps=4, num_stages=3):
    """Triton -> PTX -> cubin for sm_90; integer arguments and pointers are marked 16-divisible as the launcher's
    specialisation would (that is what lets the matmul pipeline its loads)."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    names = list(signature)
    aligned = {(i,): [["tt.divisibility", 16]] for i, name in enumerate(names) if name not in ("M", "N", "one")}
    signature = {**signature, **{name: "constexpr" for name in constants}}
    return triton.compile(ASTSource(fn=fn, signature=signature, constexprs=constants, attrs=aligned),
                          target=GPUTarget("cuda", 90, 32), options={"num_warps": num_warps, "num_stages": num_stages})


@pytest.mark.skipif(not _nvidia_backend_available(), reason="Triton's NVIDIA backend is not installed")
@pytest.mark.parametrize("ternary", [False, True], ids=["binary", "ternary"])
def test_int8_kernels_compile_for_sm90(ternary):
    from hf_onebit.ops.triton.gemv_pairs import gemv_pairs_kernel
    from hf_onebit.ops.triton.int8_matmul import int8_matmul_kernel
    from hf_onebit.ops.triton.packed_bytes import unpack_int8_kernel
    from hf_onebit.ops.triton.quant import quantize_rows_kernel

    ints = lambda *names: {name: "i32" for name in names}  # noqa: E731
    quant = _compile(quantize_rows_kernel, {"x_ptr": "*bf16", "g_ptr": "*fp16", "q_ptr": "*i8", "s_ptr": "*fp32",
                                            **ints("K", "K_PAD", "stride_xm", "stride_xk", "stride_qm")},
                     dict(BLOCK_K=1024))
    assert len(quant.asm["cubin"]) > 0
    unpack = _compile(unpack_int8_kernel, {"w_ptr": "*u8", "out_ptr": "*i8", **ints("N", "K", "stride_w", "stride_out")},
                      dict(BLOCK_N=64, BLOCK_K=128, TERNARY=ternary))
    assert len(unpack.asm["cubin"]) > 0
    for packed in (True, False):
        matmul = _compile(
            int8_matmul_kernel,
            {"q_ptr": "*i8", "s_ptr": "*fp32", "w_ptr": "*u8" if packed else "*i8", "h_ptr": "*bf16", "b_ptr": "*bf16",
             "y_ptr": "*bf16", **ints("M", "N", "K", "C", "stride_qm", "stride_w", "stride_ym")},
            dict(HAS_BIAS=True, BLOCK_M=128, BLOCK_N=128, BLOCK_K=128, GROUP_M=8, PACKED=packed, TERNARY=ternary),
            num_warps=8, num_stages=4)
        ptx = matmul.asm["ptx"]
        assert "wgmma.mma_async" in ptx and ".s8.s8" in ptx, "the int8 matmul must run on Hopper's int8 tensor cores"
        assert "cp.async" in ptx, "the operand loads must be pipelined"
    pairs = _compile(gemv_pairs_kernel, {"x_ptr": "*i8", "w_ptr": "*i32", "h_ptr": "*bf16", "b_ptr": "*bf16",
                                         "y_ptr": "*bf16", "s_ptr": "*fp32",
                                         **ints("M", "N", "K", "stride_xm", "stride_xk", "stride_w", "stride_ym", "one")},
                     dict(HAS_BIAS=False, BLOCK_M=1, THREADS=128, KPT=8, TERNARY=ternary, EMULATE=False))
    assert pairs.asm["ptx"].count("add.rn.f16x2") >= (8 if ternary else 16) * 7  # a step: KPT - 1 adds per pair lane
