"""Triton kernels against the reference ``binary_linear``.

The cases, inputs, checks and the interpreter child process are shared with the ternary kernels' tests
(tests/ops/triton_cases.py). Without a GPU the kernels run under Triton's interpreter (all cases in one child process);
with a CUDA device the same cases also run compiled, directly and through ``torch.ops.hf_onebit.binary_linear``.
"""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton", reason="triton is not installed (optional extra: hf_onebit[triton])")

from hf_onebit.formats.packing import pack_signs  # noqa: E402
from triton_cases import (  # noqa: E402
    check_argument_errors, check_close, check_public_op_uses_triton, cuda, gpu_case_test, interpreter_tests, make_inputs,
    replay_doubled,
)

FORMAT = "binary"

# ---------------------------------------------------------------- interpreter (CPU, all cases in one child process)
interpreted, test_interpreter_matches_reference = interpreter_tests(FORMAT)


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
    x, weight, g, h = check_argument_errors(FORMAT)  # act_bits, path, device
    with pytest.raises(ValueError, match="scale_out"):
        launch.binary_linear_triton(x, weight, g, h[:-1], None, 31)


def test_dense_slices_cover_n_and_configs_are_checked():
    from hf_onebit.ops.triton.dense import DenseConfig, slices

    assert slices(11008, 4, 256) == [(0, 2816), (2816, 5632), (5632, 8448), (8448, 11008)]
    assert slices(257, 3, 32) == [(0, 96), (96, 192), (192, 257)]
    assert slices(100, 4, 256) == [(0, 100)]
    with pytest.raises(ValueError, match="chunks"):
        DenseConfig(chunks=0)
    with pytest.raises(ValueError, match="align"):
        DenseConfig(align=48)


def test_registered_for_cuda_only_and_takes_both_activation_precisions():
    from hf_onebit import ops
    from hf_onebit.ops import triton as backend

    names = [k.name for k in ops.kernels_for("cuda")]
    assert "triton" in names and "triton" not in [k.name for k in ops.kernels_for("cpu")]
    x = torch.zeros(1, 8)
    weight = torch.zeros(4, 1, dtype=torch.uint8)
    assert backend._supports(x, weight, 8) and not backend._supports(x, weight, 4)
    assert not backend._supports(x.to(torch.float64), weight, 0)


# ---------------------------------------------------------------- real GPU
test_gpu_matches_reference = gpu_case_test(FORMAT)


@cuda
@pytest.mark.parametrize("m", [1, 3, 17, 300])
def test_gpu_public_op_uses_triton(m):
    check_public_op_uses_triton(FORMAT, m, 257)


@cuda
def test_gpu_cuda_graph_and_compile():
    from hf_onebit import OneBitLinear

    torch.manual_seed(0)
    layer = OneBitLinear(257, 129, bias=True).cuda()
    layer.weight.data = torch.randint(0, 256, layer.weight.shape, dtype=torch.uint8, device="cuda")
    x = torch.randn(2, 257, device="cuda", dtype=torch.bfloat16)
    expected = layer(x)  # warm-up: builds the cached sign words outside the capture
    torch.testing.assert_close(replay_doubled(layer, x), layer(x * 2))
    compiled = torch.compile(layer, fullgraph=True)
    torch.testing.assert_close(compiled(x), expected)


@cuda
def test_gpu_overlapped_dense_path_in_cuda_graph():
    """The side-stream pipeline of the prefill path forks from and joins back into a capturing stream."""
    from hf_onebit.ops.triton.launch import DenseConfig, binary_linear_triton

    case = dict(id="dense-graph", n=1000, k=257, m=300, dtype="bf16", bias=True, strided=False, seed=7)
    x, weight, g, h, bias = make_inputs(case, FORMAT, "cuda")
    cfg = DenseConfig(chunks=3, overlap=True, align=128)
    run = lambda inp: binary_linear_triton(inp, weight, g, h, bias, 257, path="dense", config=cfg)  # noqa: E731
    check_close(case, FORMAT, run(x), x, weight, g, h, bias)  # eager, and the warm-up before capture
    check_close(case, FORMAT, replay_doubled(run, x), x * 2, weight, g, h, bias)

