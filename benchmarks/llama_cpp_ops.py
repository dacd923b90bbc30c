"""llama.cpp's own matrix-vector kernels as a column of ``benchmarks/kernels.py``: one ``ggml_mul_mat`` per call.

llama-cpp-python ships the ggml libraries its llama.cpp was built with (``llama_cpp/lib``: ``libggml-base``,
``libggml-cpu``; ``scripts/setup.sh`` builds them for the AVX2 baseline, ``CMAKE_ARGS="-DGGML_NATIVE=ON"`` for this
CPU's own instructions). :class:`GgmlLinear` calls them through ctypes,
the way llama.cpp runs a linear layer while decoding: the weight is a ggml tensor of a quantized type (filled by
ggml's own quantizer, ``ggml_quantize_chunk``, from random float weights), the activations are float32 (llama.cpp's
activations; the kernel quantizes them to its dot-product type, e.g. Q8_0 / Q8_K, inside the call), and each call
computes a one-node graph ``ggml_mul_mat(W, x)`` on a thread pool made once (its workers poll between calls, as they
do between the nodes of a model's graph). Many copies of the weight rotate as in every kernels.py column, so each call
reads its weight from memory.

    python benchmarks/llama_cpp_ops.py          # a smoke check: Q1_0 4096 -> 11008 at M = 1 against float32 math
"""

from __future__ import annotations

import ctypes
import os
from importlib.util import find_spec

import numpy as np

#: ggml type ids (ggml.h ``enum ggml_type``) of the llama.cpp types the CPU benchmarks compare (kernels.py, decode.py):
#: those of at most 2 bits per weight, then Q4_0 and F16
GGML_TYPES = {"Q1_0": 41, "TQ1_0": 34, "TQ2_0": 35, "Q4_0": 2, "F16": 1}
#: the types of at most 2 bits per weight: the peers the targets name
LOW_BIT = ("Q1_0", "TQ1_0", "TQ2_0")
F32 = 0
_MAX_THREADS = 512  # GGML_MAX_N_THREADS: the length of ggml_threadpool_params.cpumask


class _CPlan(ctypes.Structure):  # ggml-cpu.h struct ggml_cplan
    _fields_ = [("work_size", ctypes.c_size_t), ("work_data", ctypes.c_void_p), ("n_threads", ctypes.c_int),
                ("threadpool", ctypes.c_void_p), ("abort_callback", ctypes.c_void_p),
                ("abort_callback_data", ctypes.c_void_p), ("use_ref", ctypes.c_bool)]


class _InitParams(ctypes.Structure):  # ggml.h struct ggml_init_params
    _fields_ = [("mem_size", ctypes.c_size_t), ("mem_buffer", ctypes.c_void_p), ("no_alloc", ctypes.c_bool)]


def _signatures(base, cpu) -> None:
    p, i64, sz = ctypes.c_void_p, ctypes.c_int64, ctypes.c_size_t
    table = [
        (base.ggml_init, p, [_InitParams]), (base.ggml_free, None, [p]),
        (base.ggml_new_tensor_2d, p, [p, ctypes.c_int, i64, i64]), (base.ggml_get_data, p, [p]),
        (base.ggml_nbytes, sz, [p]), (base.ggml_row_size, sz, [ctypes.c_int, i64]),
        (base.ggml_blck_size, i64, [ctypes.c_int]), (base.ggml_tensor_overhead, sz, []),
        (base.ggml_graph_overhead_custom, sz, [sz, ctypes.c_bool]),
        (base.ggml_new_graph_custom, p, [p, sz, ctypes.c_bool]), (base.ggml_mul_mat, p, [p, p, p]),
        (base.ggml_build_forward_expand, None, [p, p]),
        (base.ggml_quantize_chunk, sz, [ctypes.c_int, p, p, i64, i64, i64, p]),
        (base.ggml_quantize_requires_imatrix, ctypes.c_bool, [ctypes.c_int]),
        (base.ggml_threadpool_params_init, None, [p, ctypes.c_int]),
        (cpu.ggml_cpu_init, None, []), (cpu.ggml_threadpool_new, p, [p]), (cpu.ggml_threadpool_free, None, [p]),
        (cpu.ggml_graph_plan, _CPlan, [p, ctypes.c_int, p]), (cpu.ggml_graph_compute, ctypes.c_int, [p, p]),
    ]
    for fn, restype, argtypes in table:
        fn.restype, fn.argtypes = restype, argtypes


_LIBS = None


def libraries():
    """``(libggml-base, libggml-cpu)`` of the installed llama-cpp-python, loaded once; raises when it is missing."""
    global _LIBS
    if _LIBS is None:
        spec = find_spec("llama_cpp")
        if spec is None or not spec.submodule_search_locations:
            raise RuntimeError("llama-cpp-python is not installed (`bash scripts/setup.sh` builds it)")
        lib = os.path.join(list(spec.submodule_search_locations)[0], "lib")
        base = ctypes.CDLL(os.path.join(lib, "libggml-base.so"), mode=ctypes.RTLD_GLOBAL)
        cpu = ctypes.CDLL(os.path.join(lib, "libggml-cpu.so"), mode=ctypes.RTLD_GLOBAL)
        _signatures(base, cpu)
        cpu.ggml_cpu_init()
        _LIBS = (base, cpu)
    return _LIBS


def weight_bytes(qtype: str, k: int, n: int) -> int:
    """Bytes of an ``N x K`` weight of ggml type ``qtype`` (its blocks with their scales)."""
    return libraries()[0].ggml_row_size(GGML_TYPES[qtype], k) * n


class GgmlLinear:
    """``copies`` copies of one ``N x K`` weight of ggml type ``qtype`` and a random float32 activation of ``M`` rows;
    ``calls()`` returns one callable per copy computing ``W @ x`` with llama.cpp's CPU kernels on ``threads`` threads.

    The weight is ``weights`` (float32 ``(N, K)``) quantized by ggml, or uniform random values in +-0.03 (decode.py's
    range) when None. Raises ``ValueError`` where ggml cannot hold the shape in the type (K not a multiple of the
    type's block) or ``weights`` has another shape."""

    def __init__(self, qtype: str, k: int, n: int, m: int, copies: int, threads: int, seed: int = 0,
                 weights: np.ndarray | None = None):
        self._ctx = self._pool = None  # what close() frees, set as they are made
        if weights is not None and tuple(weights.shape) != (n, k):
            raise ValueError(f"weights: got shape {tuple(weights.shape)}; allowed: (N, K) = ({n}, {k})")
        base, cpu = libraries()
        self._base, self._cpu = base, cpu
        t = GGML_TYPES[qtype]
        block = base.ggml_blck_size(t)
        if k % block:
            raise ValueError(f"{qtype}: K={k} is not a multiple of its block of {block} values")
        self.weight_bytes = weight_bytes(qtype, k, n)
        overhead = base.ggml_tensor_overhead()
        graph = base.ggml_graph_overhead_custom(4, False)
        size = copies * (self.weight_bytes + n * m * 4 + 2 * overhead + graph + 256) + k * m * 4 + overhead + (1 << 20)
        self._ctx = base.ggml_init(_InitParams(size, None, False))
        if not self._ctx:
            raise MemoryError(f"ggml_init: {size} bytes")
        try:
            self._build(t, k, n, m, copies, threads, seed, weights)
        except BaseException:
            self.close()
            raise

    def _build(self, t, k, n, m, copies, threads, seed, weights):
        base, cpu = self._base, self._cpu
        rng = np.random.default_rng(seed)
        if weights is None:
            src = rng.uniform(-0.03, 0.03, size=(n, k)).astype(np.float32)
        else:
            src = np.ascontiguousarray(weights, dtype=np.float32)
        self.weight_values = src
        imatrix = np.ones(k, dtype=np.float32) if base.ggml_quantize_requires_imatrix(t) else None
        x = base.ggml_new_tensor_2d(self._ctx, F32, k, m)
        self.x = rng.standard_normal((m, k)).astype(np.float32)
        ctypes.memmove(base.ggml_get_data(x), self.x.ctypes.data, self.x.nbytes)
        params = ctypes.create_string_buffer(_MAX_THREADS + 64)  # struct ggml_threadpool_params, filled by ggml
        base.ggml_threadpool_params_init(params, threads)
        self._pool = cpu.ggml_threadpool_new(params)
        self._graphs, self._outputs = [], []
        first = None
        work = 0
        plans = []
        for i in range(copies):
            w = base.ggml_new_tensor_2d(self._ctx, t, k, n)
            data = base.ggml_get_data(w)
            if first is None:
                written = base.ggml_quantize_chunk(t, src.ctypes.data, data, 0, n, k,
                                                   None if imatrix is None else imatrix.ctypes.data)
                if written != self.weight_bytes:
                    raise RuntimeError(f"ggml_quantize_chunk wrote {written} bytes, expected {self.weight_bytes}")
                first = data
            else:
                ctypes.memmove(data, first, self.weight_bytes)
            y = base.ggml_mul_mat(self._ctx, w, x)
            g = base.ggml_new_graph_custom(self._ctx, 4, False)
            base.ggml_build_forward_expand(g, y)
            plan = cpu.ggml_graph_plan(g, threads, self._pool)
            work = max(work, plan.work_size)
            plans.append(plan)
            self._graphs.append(g)
            self._outputs.append(y)
        self._work = ctypes.create_string_buffer(max(work, 1))
        for plan in plans:
            plan.work_data = ctypes.cast(self._work, ctypes.c_void_p)
        self._plans = plans

    def calls(self):
        compute = self._cpu.ggml_graph_compute

        def call(i):
            status = compute(self._graphs[i], ctypes.byref(self._plans[i]))
            if status != 0:
                raise RuntimeError(f"ggml_graph_compute: status {status}")

        return [lambda i=i: call(i) for i in range(len(self._graphs))]

    def output(self, i: int = 0) -> np.ndarray:
        """Copy ``i``'s last result, ``(M, N)`` float32."""
        y = self._outputs[i]
        out = np.empty(self._base.ggml_nbytes(y) // 4, dtype=np.float32)
        ctypes.memmove(out.ctypes.data, self._base.ggml_get_data(y), out.nbytes)
        return out.reshape(self.x.shape[0], -1)

    def close(self) -> None:
        if self._pool:
            self._cpu.ggml_threadpool_free(self._pool)
            self._pool = None
        if self._ctx:
            self._base.ggml_free(self._ctx)
            self._ctx = None

    def __del__(self):
        self.close()


def main() -> None:
    layer = GgmlLinear("Q1_0", 4096, 11008, 1, copies=2, threads=1)
    layer.calls()[0]()
    ref = layer.x @ np.sign(layer.weight_values).T
    got = layer.output(0)
    print(f"Q1_0 4096 -> 11008, M = 1: {layer.weight_bytes / 1e6:.2f} MB per copy; correlation with x @ sign(W).T: "
          f"{np.corrcoef(ref.ravel(), got.ravel())[0, 1]:.4f}")
    layer.close()


if __name__ == "__main__":
    main()
