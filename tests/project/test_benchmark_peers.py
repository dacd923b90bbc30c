"""benchmarks/llama_cpp_ops.py, the llama.cpp column of benchmarks/kernels.py: its ctypes calls into ggml compute
``x @ W.T`` for every type it times (a wrong struct layout or type id would give garbage or crash), on weights each
type holds exactly, so that what remains is llama.cpp's 8-bit rounding of the activations (Q8_0 / Q8_K) or, for F16,
their float16 rounding."""

import os
import sys

import numpy as np
import pytest

pytest.importorskip("llama_cpp")  # in the test extra (scripts/setup.sh builds it once and pip caches the wheel)
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "benchmarks"))
import llama_cpp_ops  # noqa: E402

K, N = 512, 24


def _exact_weights(qtype: str, rng) -> np.ndarray:
    """Weights the type stores without error: one magnitude per block (signs; or ternary codes with zeros); for Q4_0
    (16 levels per block of 32) values on the grid of a block scale of 0.004, fixed by each block's largest
    magnitude."""
    if qtype == "Q4_0":
        w = (rng.integers(-8, 8, size=(N, K)) * 0.004).astype(np.float32)
        w[:, ::32] = -8 * 0.004
        return w
    block = 256 if qtype.startswith("TQ") else 128
    scale = np.repeat(rng.uniform(0.01, 0.05, size=(N, K // block)), block, axis=1).astype(np.float16).astype(np.float32)
    if qtype.startswith("TQ"):
        return rng.integers(-1, 2, size=(N, K)) * scale
    return np.where(rng.random((N, K)) < 0.5, -1.0, 1.0) * scale


@pytest.mark.parametrize("m", [1, 3])
@pytest.mark.parametrize("qtype", list(llama_cpp_ops.GGML_TYPES))
def test_ggml_linear_computes_x_times_w(qtype, m):
    rng = np.random.default_rng(1)
    w = _exact_weights(qtype, rng).astype(np.float32)
    layer = llama_cpp_ops.GgmlLinear(qtype, K, N, m, copies=2, threads=2, weights=w)
    try:
        for call in layer.calls():
            call()
        ref = layer.x.astype(np.float64) @ w.T.astype(np.float64)
        for i in range(2):
            got = layer.output(i)
            assert got.shape == (m, N)
            err = np.abs(got - ref).max() / np.abs(ref).max()
            assert err < (2e-3 if qtype == "F16" else 2.5e-2), (qtype, err)
    finally:
        layer.close()


def test_ggml_linear_refuses_a_shape_its_type_cannot_hold():
    with pytest.raises(ValueError, match="K=576 is not a multiple of its block of 256"):
        llama_cpp_ops.GgmlLinear("TQ2_0", 576, 8, 1, copies=1, threads=1)
    with pytest.raises(ValueError, match=r"weights: got shape \(8, 256\); allowed: \(N, K\) = \(4, 256\)"):
        llama_cpp_ops.GgmlLinear("Q1_0", 256, 4, 1, copies=1, threads=1, weights=np.zeros((8, 256), np.float32))
