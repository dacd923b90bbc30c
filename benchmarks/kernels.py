"""Kernel benchmark: one 1-bit linear layer against dense torch, the reference path and transformers' BitNet BitLinear.

    python benchmarks/kernels.py                  # CPU table (default device), ~5-8 minutes on 2 cores
    python benchmarks/kernels.py --quick          # two shapes, M in {1, 512}
    python benchmarks/kernels.py --format ternary # the same for ternary weights (weight_format="ternary")
    python benchmarks/kernels.py --format ternary --batch 1 --rounds 21   # decode rows only, tighter medians
    python benchmarks/kernels.py --device cuda    # the GPU table (benchmarks/kernels_cuda.py)

CPU method. Every column rotates through enough copies of its weights to exceed the last-level cache (ROTATE_BYTES,
well above a 480 MiB L3), so each call reads its weights from memory, as in a real model whose layers are each touched
once per token. Times are medians over rounds; each round cycles through the copies for at least ROUND_S. The memory
bound of a call is (bytes it must read and write) / (read bandwidth of a torch.sum over a >1 GB buffer), measured in
the same run; the columns of a row take turns round by round.
The CPU is shared: only ratios taken side by side in one run mean anything. Our packed weights and the
bandwidth buffer get the 2 MiB-page advice the CPU backend gives packed weights that stay (at build here)
(hf_onebit/ops/cpu/pages.py; a no-op where Linux refuses it); torch's dense bf16 is timed both in the pages it
allocates and advised the same way, and the ratios use the faster of the two.

``--format ternary`` times our ternary kernels against the same dense torch columns, with "ours binary a8" kept as a
column for comparison. Every packed layer is called twice before the timing, so the CPU backend's work for a weight
that stays (huge pages; the runtime copy of its codes) is done. Ternary: "ours a8 bf16" then reads the t5 layout (5
codes per byte, hf_onebit/ops/cpu/t5.py) where it applies (M <= 8, AVX-512 VBMI), "ours a8 2-bit" the 2-bit codes (t5
copies off), side by side. Binary: "ours a8 bf16" reads the lut copy (hf_onebit/ops/cpu/lut.py) where it applies
(M <= 8, the avx2 kernel variant), "ours a8 planes" the packed bits with the bit-plane kernel (lut copies off). The
bound is that of the bytes the a8 call reads. At M > 8 (compute-bound calls, each weight byte
used by every row) a packed column rotates through at most PACKED_COPIES_COMPUTE copies: two warm-up calls of each of
the ~6,000 copies a small layer needs to exceed the cache would take minutes per shape there.
"""

from __future__ import annotations

import os
import sys

# This machine is shared: with libgomp's default spin-waiting, short parallel calls (ours and torch's) lose most of
# their time to threads spinning while the cores are taken by other processes. Passive waiting is set for every
# column alike (torch and our kernel share the same libgomp); --omp-active measures the default instead.
if "--omp-active" not in sys.argv:
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import contextlib
import math
import statistics
import time
from typing import Callable

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import llama_cpp_ops  # noqa: E402

SHAPES = [(4096, 4096), (4096, 11008), (11008, 4096), (576, 1536)]  # (in_features K, out_features N)
M_VALUES = [1, 8, 512]
ROTATE_BYTES = 640 * 2**20  # > the 480 MiB L3 of the reference machine
ROUND_S = 0.25
ROUNDS = 5
T5_MAX_M = 8  # ONEBIT_T5_MAX_M (csrc/ternary.h): activation rows up to which a ternary int8 call reads the t5 copy
LUT_MAX_M = 8  # ONEBIT_LUT_MAX_M (csrc/lut.h): the same for a binary int8 call and the lut copy
PACKED_COPIES_COMPUTE = 16  # copies of a packed column at M > 8


# ---------------------------------------------------------------- shared helpers


def copies_for(bytes_per_copy: int) -> int:
    return max(2, math.ceil(ROTATE_BYTES / max(bytes_per_copy, 1)))


def _round(calls: list[Callable[[], object]], i: int, round_s: float, clock: Callable[[], float]) -> tuple:
    """One round: cycle through ``calls`` from index ``i`` for >= round_s; (seconds per call, next index)."""
    n, start = 0, clock()
    while True:
        calls[i % len(calls)]()
        i, n = i + 1, n + 1
        elapsed = clock() - start
        if elapsed >= round_s and n >= min(len(calls), 3):
            break
        if elapsed >= 4 * round_s:  # very slow columns: a few calls are enough
            break
    return elapsed / n, i


def time_rotating(calls: list[Callable[[], object]], rounds: int = ROUNDS, round_s: float = ROUND_S,
                  clock: Callable[[], float] = time.perf_counter) -> float:
    """Median seconds per call; each round cycles through ``calls`` (all different weights) for >= round_s.

    ``clock`` is wall time by default; ``time.thread_time`` gives the calling thread's CPU time instead.
    """
    return time_interleaved({"": calls}, rounds, round_s, clock)[""]


def time_interleaved(columns: dict[str, list[Callable[[], object]]], rounds: int = ROUNDS, round_s: float = ROUND_S,
                     clock: Callable[[], float] = time.perf_counter) -> dict[str, float]:
    """:func:`time_rotating` for several columns that take turns round by round, so that a drift over the run (clock
    speed, other processes) reaches every column alike rather than the ones measured last."""
    index = dict.fromkeys(columns, 0)
    for name, calls in columns.items():  # warm-up round: library build, torch.compile, allocator, page faults
        _, index[name] = _round(calls, 0, round_s, clock)
    per_call: dict[str, list[float]] = {name: [] for name in columns}
    for _ in range(rounds):
        for name, calls in columns.items():
            seconds, index[name] = _round(calls, index[name], round_s, clock)
            per_call[name].append(seconds)
    return {name: statistics.median(values) for name, values in per_call.items()}


def fmt_ms(seconds: float | None) -> str:
    if seconds is None:
        return "n/a"
    ms = seconds * 1e3
    return f"{ms:.3f}" if ms < 1 else (f"{ms:.2f}" if ms < 100 else f"{ms:.0f}")


def fmt_ratio(num: float | None, den: float | None) -> str:
    if not num or not den:
        return "n/a"
    return f"{num / den:.1f}x" if num / den >= 10 else f"{num / den:.2f}x"


# ---------------------------------------------------------------- CPU


def cpu_read_bandwidth(gib: float = 1.5) -> float:
    """Bytes per second that torch.sum reads from a buffer far larger than the caches (median of 5)."""
    from hf_onebit.ops.cpu.pages import advise_huge_pages

    buf = torch.ones(int(gib * 2**30) // 4, dtype=torch.float32)
    advise_huge_pages(buf)
    buf.sum()
    times = []
    for _ in range(5):
        start = time.perf_counter()
        buf.sum()
        times.append(time.perf_counter() - start)
    nbytes = buf.numel() * 4
    del buf
    return nbytes / statistics.median(times)


def random_packed_layers(k: int, n: int, count: int, weight_format: str = "binary"):
    """``count`` independent random packed layers (bits or ternary codes, fp16 g and h)."""
    from hf_onebit.formats.packing import pack_ternary, packed_columns

    if weight_format == "ternary":
        base = pack_ternary(torch.randint(-1, 2, (n, k), dtype=torch.int8))
    else:
        base = torch.randint(0, 256, (n, packed_columns(k)), dtype=torch.uint8)
    layers = []
    for i in range(count):
        w = base if i == 0 else torch.roll(base, shifts=i, dims=0).contiguous()
        layers.append((w, (torch.rand(k) + 0.5).half(), (torch.rand(n) * 0.02).half()))
    return layers


def bitnet_layers(k: int, n: int, count: int):
    """transformers' BitNet ``BitLinear`` (bf16, random packed ternary weights: 4 per byte along out_features)."""
    from transformers.integrations.bitnet import VALUES_PER_ITEM, BitLinear

    base = torch.randint(0, 256, (n // VALUES_PER_ITEM, k), dtype=torch.uint8)
    layers = []
    for i in range(count):
        layer = BitLinear(k, n, bias=False, dtype=torch.bfloat16)
        layer.weight.copy_(torch.roll(base, shifts=i, dims=0))
        layer.weight_scale.fill_(0.02)
        layers.append(layer)
    return layers


def llama_cpp_columns(k: int, n: int, m: int) -> dict:
    """"llama.cpp <type>" -> builder of (calls, bytes of weights one call reads): llama.cpp's own kernels on a
    ``ggml_mul_mat`` per call (benchmarks/llama_cpp_ops.py), for every type of llama_cpp_ops.GGML_TYPES; empty when
    llama-cpp-python is not installed."""
    from importlib.util import find_spec

    if find_spec("llama_cpp") is None:
        return {}
    threads = torch.get_num_threads()

    def build(qtype):
        nbytes = llama_cpp_ops.weight_bytes(qtype, k, n)
        count = copies_for(nbytes) if m <= T5_MAX_M else min(copies_for(nbytes), PACKED_COPIES_COMPUTE)
        layer = llama_cpp_ops.GgmlLinear(qtype, k, n, m, count, threads)
        return layer.calls(), layer.weight_bytes

    return {f"llama.cpp {q}": (lambda q=q: build(q)) for q in llama_cpp_ops.GGML_TYPES}


def cpu_columns(k: int, n: int, m: int, weight_format: str = "binary"):
    """name -> (calls rotating over copies, bytes of weights one call reads); built lazily to bound memory."""
    from hf_onebit.ops import packed_linear
    from hf_onebit.ops.cpu.pages import advise_huge_pages, advise_once
    from hf_onebit.formats.packing import packed_columns

    x32 = torch.randn(m, k)
    xbf = x32.bfloat16()

    def dense(dtype, x, huge_pages=False):
        copies = copies_for(n * k * x.element_size())
        w0 = torch.randn(n, k).to(dtype)
        ws = [w0] + [w0.clone() for _ in range(copies - 1)]
        if huge_pages:  # the huge-page advice our kernels give their weights (hf_onebit/ops/cpu/pages.py)
            for w in ws:
                advise_huge_pages(w)
        return [lambda w=w: F.linear(x, w) for w in ws], n * k * x.element_size()

    def packed(x, act_bits, backend, max_copies=None, fmt=weight_format, copies=True):
        nbytes = n * packed_columns(k, fmt)
        count = copies_for(nbytes) if m <= T5_MAX_M else min(copies_for(nbytes), PACKED_COPIES_COMPUTE)
        layers = random_packed_layers(k, n, count if max_copies is None else min(count, max_copies), fmt)
        calls = [
            lambda lay=lay: packed_linear(x, lay[0], lay[1], lay[2], None, k, act_bits, backend, fmt) for lay in layers
        ]
        for lay, call in zip(layers, calls):  # what the CPU backend does on a weight's second call, done before timing
            advise_once(lay[0])
            if backend == "cpu":
                with runtime_copies(copies), torch.no_grad():
                    call(), call()
        return calls, nbytes

    def kernel_only(built):
        """The calls of ``built`` with the exact float32 path kept on our kernel at every row count (the CPU backend
        otherwise takes torch's GEMM on the expanded weight from ``DENSE_MIN_ROWS`` rows on CPUs without AVX-512)."""
        from hf_onebit.ops.cpu import DENSE_ENV

        def run(call):
            with environment(DENSE_ENV, "0"):
                return call()

        calls, nbytes = built
        return [lambda call=call: run(call) for call in calls], nbytes

    def bitnet():
        nbytes = n * k // 4
        layers = bitnet_layers(k, n, copies_for(nbytes))
        return [lambda lay=lay: lay(xbf) for lay in layers], nbytes

    if weight_format == "ternary":
        return {
            "dense fp32": lambda: dense(torch.float32, x32),
            "dense bf16": lambda: dense(torch.bfloat16, xbf),
            "dense bf16 2M": lambda: dense(torch.bfloat16, xbf, huge_pages=True),
            "reference bf16": lambda: packed(xbf, 0, "reference", max_copies=4),
            "ours binary a8": lambda: packed(xbf, 8, "cpu", fmt="binary"),
            "ours a0 fp32": lambda: packed(x32, 0, "cpu"),
            "ours a0 fp32 kernel": lambda: kernel_only(packed(x32, 0, "cpu")),
            "ours a0 bf16": lambda: packed(xbf, 0, "cpu"),
            "ours a8 2-bit": lambda: packed(xbf, 8, "cpu", copies=False),
            "ours a8 bf16": lambda: packed(xbf, 8, "cpu"),
        }
    return {
        "dense fp32": lambda: dense(torch.float32, x32),
        "dense bf16": lambda: dense(torch.bfloat16, xbf),
        "dense bf16 2M": lambda: dense(torch.bfloat16, xbf, huge_pages=True),
        # the reference unpacks every call; it is so slow that cache effects do not matter: few copies
        "reference bf16": lambda: packed(xbf, 0, "reference", max_copies=4),
        "BitNet BitLinear": bitnet,
        "ours a0 fp32": lambda: packed(x32, 0, "cpu"),
        "ours a0 fp32 kernel": lambda: kernel_only(packed(x32, 0, "cpu")),
        "ours a0 bf16": lambda: packed(xbf, 0, "cpu"),
        "ours a8 planes": lambda: packed(xbf, 8, "cpu", copies=False),
        "ours a8 bf16": lambda: packed(xbf, 8, "cpu"),
    }


@contextlib.contextmanager
def environment(name: str, value: str):
    """``$name`` set to ``value`` inside the block, restored (or removed) after it."""
    old = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(name)
        else:
            os.environ[name] = old


@contextlib.contextmanager
def runtime_copies(on: bool):
    """The CPU backend's runtime copies (t5 of ternary, lut of binary weights) on or off while plans are made."""
    from hf_onebit.ops.cpu.lut import LUT_ENV
    from hf_onebit.ops.cpu.t5 import T5_ENV

    value = "1" if on else "0"
    with environment(T5_ENV, value), environment(LUT_ENV, value):
        yield


def a8_row_bytes(k: int, m: int, weight_format: str) -> int:
    """Weight bytes per output row that the "ours a8" column reads (the runtime copy's for decode, where used)."""
    from hf_onebit.ops import cpu
    from hf_onebit.ops.cpu import lut, t5
    from hf_onebit.formats.packing import packed_columns

    lib = cpu.binding.library()
    isa = cpu.binding.active_isa()
    if weight_format == "ternary" and m <= T5_MAX_M and t5.supported(lib, isa):
        return lib.onebit_ternary_t5_row_bytes(k)
    if weight_format == "binary" and m <= LUT_MAX_M and lut.supported(lib, isa):
        return 2 * -(-packed_columns(k, weight_format) // 2)  # lut.h: two bytes per chunk of 16 inputs
    return packed_columns(k, weight_format)


def cpu_table(shapes, ms, out=print, rounds=ROUNDS, weight_format="binary", llama_cpp=True):
    from hf_onebit.ops import cpu
    from hf_onebit.formats.packing import packed_columns

    if not cpu.is_available():
        out(f"CPU kernel unavailable: {cpu.load_error()}")
        return
    bandwidth = cpu_read_bandwidth()
    out(f"load average at start (other processes on this machine): {os.getloadavg()[0]:.1f}; "
        f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'default')}")
    out(f"torch {torch.__version__}, {torch.get_num_threads()} threads, kernel ISA: {cpu.active_isa_name()}, "
        f"read bandwidth (torch.sum over 1.5 GiB): {bandwidth / 1e9:.1f} GB/s")  # fmt: skip
    out(f"weight format: {weight_format}")
    peers = llama_cpp_columns(1, 4, 1) if llama_cpp else {}
    if llama_cpp and not peers:
        out("(llama.cpp columns skipped: llama-cpp-python is not installed; `bash scripts/setup.sh` builds it)")
    names = list(cpu_columns(1, 4, 1, weight_format)) + list(peers)
    header = ["K->N", "M", *names, "bound", "a0 fp32 kernel / a0 fp32", "bf16 / a0 bf16", "bf16 / a8", "dense / a8",
              "a8 / bound", "a0 bf16 / bound"]
    header.append("a8 2-bit / a8" if weight_format == "ternary" else "a8 planes / a8")
    if peers:
        header += ["llama.cpp <= 2 bits: fastest", "llama.cpp / a8", "llama.cpp / a0 bf16"]
    out("")
    out("| " + " | ".join(header) + " |")
    out("|" + "---|" * len(header))
    for k, n in shapes:
        for m in ms:
            times: dict[str, float | None] = {}
            columns = {}
            builders = {**cpu_columns(k, n, m, weight_format), **(llama_cpp_columns(k, n, m) if peers else {})}
            for name, build in builders.items():
                times[name] = None
                try:
                    columns[name], _ = build()
                    columns[name][0]()  # a peer that cannot run fails here, before the timing
                except Exception as err:  # a peer that cannot run says why, the table goes on
                    columns.pop(name, None)
                    print(f"  {name} K={k} N={n} M={m} unavailable: {type(err).__name__}: {err}", file=sys.stderr)
            times.update(time_interleaved(columns, rounds=rounds))  # the columns take turns, round by round
            del columns
            # bytes a packed call must move: packed bits / codes + g/h (fp16) + activations in and out (bf16)
            moved = n * a8_row_bytes(k, m, weight_format) + 2 * (k + n) + 2 * m * (k + n)
            bound = moved / bandwidth
            row = [f"{k}->{n}", str(m), *(fmt_ms(times[c]) for c in names), fmt_ms(bound)]
            # torch's faster bf16 time, with its default pages or with huge pages (neither wins everywhere)
            bf16 = min((t for t in (times["dense bf16"], times["dense bf16 2M"]) if t), default=None)
            # the faster of torch's float32 and bf16 (where bf16 is emulated, an AVX2-only CPU, float32 wins at M > 1)
            fastest_dense = min((t for t in (times["dense fp32"], bf16) if t), default=None)
            row += [
                fmt_ratio(times["ours a0 fp32 kernel"], times["ours a0 fp32"]),
                fmt_ratio(bf16, times["ours a0 bf16"]),
                fmt_ratio(bf16, times["ours a8 bf16"]),
                fmt_ratio(fastest_dense, times["ours a8 bf16"]),
                fmt_ratio(times["ours a8 bf16"], bound),
                fmt_ratio(times["ours a0 bf16"], bound),
            ]
            row.append(fmt_ratio(times["ours a8 2-bit" if weight_format == "ternary" else "ours a8 planes"],
                                 times["ours a8 bf16"]))
            if peers:  # llama.cpp's fastest type of at most 2 bits per weight that holds this shape
                low = [(times[f"llama.cpp {q}"], q) for q in llama_cpp_ops.LOW_BIT if times.get(f"llama.cpp {q}")]
                best, qtype = min(low) if low else (None, "n/a")
                row += [qtype, fmt_ratio(best, times["ours a8 bf16"]), fmt_ratio(best, times["ours a0 bf16"])]
            out("| " + " | ".join(row) + " |")
    out("")
    out(f"load average at end: {os.getloadavg()[0]:.1f}")
    bits = ("a8 (t5 layout at M <= 8, else 2-bit)" if weight_format == "ternary"
            else "a8 (lut layout at M <= 8 with the avx2 variant, else 1-bit)")
    out("Times in ms per call (median). 'bf16 / x' > 1 means ours is faster than torch dense bf16 (the faster of "
        "its two columns: 'dense bf16' in the pages torch allocates, 'dense bf16 2M' advised to 2 MiB pages); "
        "'dense / a8' against the fastest of torch's fp32 and bf16 columns; 'a0 fp32 kernel' keeps exact float32 "
        "calls on our kernel where the default takes torch's GEMM on the expanded weight (from DENSE_MIN_ROWS rows "
        "without AVX-512); "
        f"'x / bound' is time over the memory-bandwidth bound of the {bits} call (1.0 = at the bound).")  # fmt: skip
    if peers:
        out("'llama.cpp <type>': llama.cpp's own kernel for that GGML type (ggml_mul_mat on float32 activations, one "
            "node per call on a thread pool of the same thread count; benchmarks/llama_cpp_ops.py), n/a where K is not "
            "a multiple of the type's block; 'llama.cpp / x' > 1 means ours is faster than llama.cpp's fastest type "
            "of at most 2 bits per weight (Q1_0, TQ1_0, TQ2_0) on this shape.")


def run_cpu(args) -> None:
    shapes, ms, rounds = ([(4096, 11008), (576, 1536)], [1, 512], 3) if args.quick else (SHAPES, M_VALUES, ROUNDS)
    if args.batch:
        ms = args.batch
    cpu_table(shapes, ms, rounds=args.rounds or rounds, weight_format=args.format, llama_cpp=not args.no_llama_cpp)


# ---------------------------------------------------------------- CUDA


def run_cuda(args) -> None:
    import os

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import kernels_cuda

    kernels_cuda.main(["--quick"] if args.quick else [])


DEVICES = {"cpu": run_cpu, "cuda": run_cuda}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=sorted(DEVICES), default="cpu")
    parser.add_argument("--omp-active", action="store_true", help="keep libgomp's default (spinning) wait policy")
    parser.add_argument("--quick", action="store_true", help="fewer shapes and batch sizes")
    parser.add_argument("--format", choices=("binary", "ternary"), default="binary",
                        help="packed weight format of our columns (CPU table)")
    parser.add_argument("--batch", type=lambda v: [int(m) for m in v.split(",")], default=None,
                        help="activation rows M to time, comma-separated (CPU table; default 1,8,512, --quick 1,512)")
    parser.add_argument("--rounds", type=int, default=None,
                        help=f"timed rounds per column (CPU table; default {ROUNDS}, --quick 3); more: tighter medians")
    parser.add_argument("--no-llama-cpp", action="store_true",
                        help="leave out the llama.cpp columns (CPU table; they need llama-cpp-python)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch.set_num_threads for every column (CPU table; default: torch's own choice)")
    args = parser.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    DEVICES[args.device](args)


if __name__ == "__main__":
    main()
