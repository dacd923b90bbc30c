"""Decode-shaped calls (M = 1..8) of the CPU kernel on ONE thread, timed by the thread's CPU time.

    python benchmarks/gemv_cpu_time.py                       # 4096->11008 and 11008->4096, M in {1, 8}
    python benchmarks/gemv_cpu_time.py --shape 576x1536 --m 1 2 4

On a shared machine wall-clock times of multi-threaded calls mostly measure the other jobs. A single thread's CPU time
(time.thread_time) does not count the time the thread waits for a core, so it is a steadier view of the kernel itself
(other jobs still share the memory bandwidth and the L3, which this cannot remove). Every call reads its weights from
memory: the calls rotate through copies whose total exceeds the L3 (as benchmarks/kernels.py does). Columns: torch dense
bf16 F.linear, our kernel (a0 fp32 / a0 bf16 / a8 bf16 activations), and "stream", the CPU time of torch.sum reading the
same number of bytes as the 1-bit call (one thread, from memory): the single-thread memory bound.
"""

from __future__ import annotations

import argparse
import os
import time

import torch
import torch.nn.functional as F

from kernels import copies_for, random_packed_layers, time_rotating  # same folder: one rotation / timing method

ROUND_S = 0.2
ROUNDS = 7


def cpu_time_per_call(calls) -> float:
    """Median over rounds of thread CPU seconds per call, cycling through ``calls``."""
    return time_rotating(calls, rounds=ROUNDS, round_s=ROUND_S, clock=time.thread_time)


def columns(k: int, n: int, m: int):
    from hf_onebit.ops import binary_linear
    from hf_onebit.formats.packing import packed_columns

    kb = packed_columns(k)
    x32 = torch.randn(m, k)
    xbf = x32.bfloat16()

    def dense():
        w0 = torch.randn(n, k).bfloat16()
        ws = [w0] + [w0.clone() for _ in range(copies_for(n * k * 2) - 1)]
        return [lambda w=w: F.linear(xbf, w) for w in ws]

    def ours(x, act_bits):
        layers = random_packed_layers(k, n, copies_for(n * kb))
        return [lambda w=w, g=g, h=h: binary_linear(x, w, g, h, None, k, act_bits, "cpu") for w, g, h in layers]

    def stream():
        floats = n * kb // 4
        bufs = [torch.ones(floats) for _ in range(copies_for(n * kb))]
        return [lambda b=b: b.sum() for b in bufs]

    return {
        "dense bf16": dense,
        "ours a0 fp32": lambda: ours(x32, 0),
        "ours a0 bf16": lambda: ours(xbf, 0),
        "ours a8 bf16": lambda: ours(xbf, 8),
        "stream": stream,
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", nargs="*", default=["4096x11008", "11008x4096"], help="KxN (in x out features)")
    parser.add_argument("--m", nargs="*", type=int, default=[1, 8], help="activation rows per call")
    args = parser.parse_args(argv)
    from hf_onebit.ops import cpu

    if not cpu.is_available():
        raise SystemExit(f"CPU kernel unavailable: {cpu.load_error()}")
    torch.set_num_threads(1)
    print(f"load average at start: {os.getloadavg()[0]:.1f}; torch {torch.__version__}, 1 thread, "
          f"kernel ISA: {cpu.active_isa_name()}; thread CPU time per call in ms (median)")  # fmt: skip
    names = list(columns(1, 8, 1))
    header = ["K->N", "M", *names, "bf16 / a0 bf16", "bf16 / a8", "a0 bf16 / stream", "a8 / stream"]
    print("\n| " + " | ".join(header) + " |\n|" + "---|" * len(header))
    for shape in args.shape:
        k, n = (int(v) for v in shape.lower().split("x"))
        for m in args.m:
            t = {}
            for name, build in columns(k, n, m).items():
                calls = build()
                t[name] = cpu_time_per_call(calls)
                del calls
            row = [f"{k}->{n}", str(m), *(f"{t[c] * 1e3:.3f}" for c in names)]
            row += [f"{t['dense bf16'] / t['ours a0 bf16']:.1f}x", f"{t['dense bf16'] / t['ours a8 bf16']:.1f}x"]
            row += [f"{t['ours a0 bf16'] / t['stream']:.2f}x", f"{t['ours a8 bf16'] / t['stream']:.2f}x"]
            print("| " + " | ".join(row) + " |")
    print(f"\nload average at end: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
