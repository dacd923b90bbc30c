"""GPU benchmark of the Triton backend against cuBLAS bf16, the reference path and transformers' BitNet BitLinear.

    python benchmarks/kernels_cuda.py                 # main table (also: python benchmarks/kernels.py --device cuda)
    python benchmarks/kernels_cuda.py --sweep         # + GEMV launch-config sweep and the path crossover over M
    python benchmarks/kernels_cuda.py --gemv-m1 --dense   # only: wider M=1 GEMV sweep; prefill path (slices, overlap)
    python benchmarks/kernels_cuda.py --weights both  # main table with binary AND ternary (2-bit) columns
    python benchmarks/kernels_cuda.py --weights ternary --sweep   # ternary table, GEMV sweep and paths over M
    python benchmarks/kernels_cuda.py --weights both --a8      # + int8-activation (act_bits=8) columns per format
    python benchmarks/kernels_cuda.py --int8                   # only: int8-activation paths and tile configs
    python benchmarks/kernels_cuda.py --gemv-a8                # only: small-M GEMV with int8 activations

``--weights`` picks the packed format of "ours" (and of the reference column): ``binary`` (default, 1 bit per weight),
``ternary`` (2-bit codes, ``ternary_linear``) or ``both``. ``--gemv-m1`` and ``--dense`` sweep binary weights only.

Times are GPU times: each measurement captures a CUDA graph of many calls (so Python/launch overhead is excluded) that
rotate through enough weight copies to exceed the L2 cache, replays it, and reads CUDA events. Columns that cannot be
captured fall back to eager timing with events (marked ``*``). Ratios are measured side by side in one run.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from typing import Callable

import torch

SHAPES = [(4096, 4096), (4096, 11008), (11008, 4096), (8192, 28672)]  # (in_features K, out_features N)
M_VALUES = [1, 16, 512, 2048]
L2_BYTES = 50 * 2**20
ROTATE_BYTES = 3 * L2_BYTES  # weight memory cycled through per measurement
NOMINAL_BANDWIDTH = {"H100 80GB HBM3": 3.35e12, "H100 PCIe": 2.0e12, "H200": 4.8e12, "A100-SXM4-80GB": 2.04e12}


def copies_for(bytes_per_copy: int) -> int:
    return max(2, math.ceil(ROTATE_BYTES / max(bytes_per_copy, 1)))


def measured_bandwidth(device="cuda") -> float:
    """Device-to-device copy bandwidth (read + write bytes per second) of a 1 GiB buffer."""
    src = torch.empty(2**30, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    for _ in range(3):
        dst.copy_(src)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(10):
        dst.copy_(src)
    end.record()
    torch.cuda.synchronize()
    seconds = start.elapsed_time(end) / 1e3 / 10
    del src, dst
    return 2 * 2**30 / seconds


def nominal_bandwidth() -> float | None:
    name = torch.cuda.get_device_name()
    for key, value in NOMINAL_BANDWIDTH.items():
        if key in name:
            return value
    return None


def time_calls(calls: list[Callable[[], object]], target_s: float = 0.02, graph: bool = True) -> tuple[float, bool]:
    """Seconds per call (calls cycle through ``calls``); returns ``(seconds, used_graph)``."""
    for call in calls:  # warm-up: compiles kernels, builds cached sign words, cuBLAS heuristics
        call()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    calls[0]()
    torch.cuda.synchronize()
    estimate = max(time.perf_counter() - t0, 1e-6)
    reps = int(min(max(target_s / estimate, len(calls)), 400))
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    if graph:
        try:
            g = torch.cuda.CUDAGraph()
            stream = torch.cuda.Stream()
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream):
                for i in range(len(calls)):
                    calls[i]()
            torch.cuda.current_stream().wait_stream(stream)
            with torch.cuda.graph(g):
                for i in range(reps):
                    calls[i % len(calls)]()
            g.replay()
            torch.cuda.synchronize()
            best = float("inf")
            for _ in range(3):
                start.record()
                g.replay()
                end.record()
                torch.cuda.synchronize()
                best = min(best, start.elapsed_time(end) / 1e3 / reps)
            del g
            return best, True
        except Exception as err:  # noqa: BLE001 - report and fall back to eager timing
            print(f"  (graph capture failed: {type(err).__name__}: {str(err)[:120]}; eager timing)", file=sys.stderr)
            torch.cuda.synchronize()
    best = float("inf")
    for _ in range(3):
        start.record()
        for i in range(reps):
            calls[i % len(calls)]()
        end.record()
        torch.cuda.synchronize()
        best = min(best, start.elapsed_time(end) / 1e3 / reps)
    return best, False


FORMATS = ("binary", "ternary")
BITS_PER_WEIGHT = {"binary": 1, "ternary": 2}


def packed_bytes(k: int, n: int, weight_format: str = "binary") -> int:
    return n * k * BITS_PER_WEIGHT[weight_format] // 8


def random_layer(k: int, n: int, weight_format: str = "binary", device="cuda"):
    """Random packed weights (ternary: codes 0, 1, 2 uniformly) and scales of a ``k -> n`` layer."""
    from hf_onebit.formats.packing import packed_columns

    cols = packed_columns(k, weight_format)
    if weight_format == "ternary":
        codes = torch.randint(0, 3, (n, cols, 4), dtype=torch.uint8, device=device)
        shifts = torch.arange(0, 8, 2, dtype=torch.uint8, device=device)
        weight = codes.bitwise_left_shift(shifts).sum(-1, dtype=torch.uint8)
    else:
        weight = torch.randint(0, 256, (n, cols), dtype=torch.uint8, device=device)
    scale_in = (torch.rand(k, device=device) + 0.5).to(torch.bfloat16)
    scale_out = (torch.rand(n, device=device) * 0.02).to(torch.bfloat16)
    return weight, scale_in, scale_out


def random_binary_layer(k: int, n: int, device="cuda"):
    return random_layer(k, n, "binary", device)


def rotating_weights(k: int, n: int, weight_format: str = "binary", device="cuda"):
    """Copies of a ``k -> n`` layer to rotate through (more than the L2 holds): packed layers in ``weight_format``
    and dense bf16 weights."""
    layers = [random_layer(k, n, weight_format, device) for _ in range(copies_for(packed_bytes(k, n, weight_format)))]
    dense = [torch.randn(n, k, device=device, dtype=torch.bfloat16) for _ in range(copies_for(n * k * 2))]
    return layers, dense


def ours_column(weight_format: str, act_bits: int = 0) -> str:
    name = "ours" if weight_format == "binary" else "ours ternary"
    return f"{name}{' a8' if act_bits else ''} (triton)"


def bitnet_layer(k: int, n: int, device="cuda"):
    """transformers' BitNet ``BitLinear`` with random packed ternary weights (4 values per byte along out_features)."""
    from transformers.integrations.bitnet import VALUES_PER_ITEM, BitLinear

    layer = BitLinear(k, n, bias=False, device=device, dtype=torch.bfloat16)
    layer.weight.copy_(torch.randint(0, 255, (n // VALUES_PER_ITEM, k), dtype=torch.uint8, device=device))
    return layer


def columns_for(k: int, n: int, m: int, dtype=torch.bfloat16, formats=("binary",), device="cuda", act_bits=(0,)):
    """``{name: (calls, weight_bytes_per_call)}`` for one shape; each call uses its own weight copy.

    One "ours" column per format in ``formats`` and activation precision in ``act_bits``; the reference column uses
    the first format."""
    from hf_onebit.ops import packed_linear, reference

    x = torch.randn(m, k, device=device, dtype=dtype)
    dense_bytes = n * k * 2
    dense = [torch.randn(n, k, device=device, dtype=dtype) * 0.02 for _ in range(copies_for(dense_bytes))]
    cols = {"cuBLAS bf16": ([lambda w=w: torch.nn.functional.linear(x, w) for w in dense], dense_bytes)}
    for fmt in formats:
        size = packed_bytes(k, n, fmt)
        layers = [random_layer(k, n, fmt, device) for _ in range(copies_for(size))]
        if "reference" not in cols:
            cols["reference"] = (
                [lambda p=p, f=fmt: reference.packed_linear(x, p[0], p[1], p[2], None, k, 0, f) for p in layers[:2]],
                size,
            )
        for a in act_bits:
            cols[ours_column(fmt, a)] = (
                [lambda p=p, f=fmt, a=a: packed_linear(x, p[0], p[1], p[2], None, k, a, "triton", f) for p in layers],
                size)
    try:
        layers = [bitnet_layer(k, n, device) for _ in range(copies_for(n * k // 4))]

        def bitnet(layer):
            # its two @torch.compile helpers are run eagerly here (inductor compile time is not what we measure)
            with torch.compiler.set_stance("force_eager"):
                return layer(x)

        cols["BitNet BitLinear"] = ([lambda lay=lay: bitnet(lay) for lay in layers], n * k // 4)
    except Exception as err:  # noqa: BLE001
        print(f"  BitLinear unavailable: {type(err).__name__}: {err}", file=sys.stderr)
    return x, cols


def main_table(shapes=SHAPES, ms=M_VALUES, out=print, formats=("binary",), act_bits=(0,)):
    name = torch.cuda.get_device_name()
    bw = measured_bandwidth()
    nominal = nominal_bandwidth()
    out(f"device: {name}; copy bandwidth {bw / 1e9:.0f} GB/s"
        + (f"; nominal {nominal / 1e9:.0f} GB/s" if nominal else ""))
    out(f"torch {torch.__version__}, triton {__import__('triton').__version__}, CUDA {torch.version.cuda}")
    pairs = [(f, a) for f in formats for a in act_bits]
    ours = [ours_column(f, a) for f, a in pairs]
    order = ["cuBLAS bf16", "reference", "BitNet BitLinear"] + ours
    tag = {ours_column(f, a): ("" if len(pairs) == 1 else f" {f}{' a8' if a else ''}") for f, a in pairs}
    out("")
    out(f"reference column: {formats[0]} weights")
    out("| K->N | M | " + " | ".join(f"{c} us" for c in order) + " | "
        + " | ".join(f"ours{tag[c]} vs cuBLAS | ours{tag[c]} GB/s (% of copy bw)" for c in ours) + " |")
    out("|---|---|" + "---|" * len(order) + "---|---|" * len(ours))
    rows = []
    for k, n in shapes:
        for m in ms:
            x, cols = columns_for(k, n, m, formats=formats, act_bits=act_bits)
            times = {}
            for col in order:
                if col not in cols:
                    times[col] = None
                    continue
                calls, _ = cols[col]
                try:
                    seconds, graphed = time_calls(calls)
                    times[col] = (seconds, graphed)
                except Exception as err:  # noqa: BLE001
                    print(f"  {col} failed at {k}->{n} M={m}: {type(err).__name__}: {err}", file=sys.stderr)
                    times[col] = None
            cells = []
            for col in order:
                t = times[col]
                cells.append("n/a" if t is None else f"{t[0] * 1e6:.1f}{'' if t[1] else '*'}")
            for col in ours:
                if times[col] is None or times["cuBLAS bf16"] is None:
                    cells += ["n/a", "n/a"]
                    continue
                seconds = times[col][0]
                moved = cols[col][1] + 2 * (m * k + m * n) + 2 * (k + n)
                cells += [f"{times['cuBLAS bf16'][0] / seconds:.2f}x",
                          f"{moved / seconds / 1e9:.0f} ({100 * moved / seconds / bw:.0f}%)"]
            out(f"| {k}->{n} | {m} | " + " | ".join(cells) + " |")
            rows.append(dict(k=k, n=n, m=m, times=times))
            del x, cols
            torch.cuda.empty_cache()
    out("(* = eager timing with CUDA events: the column could not be captured in a CUDA graph)")
    return rows


def sweep_gemv(shapes=SHAPES, out=print, weight_format="binary"):
    """Time GEMV launch configs at M=1 on every shape and at M=2, 4 on one (the dispatcher's table comes from this)."""
    from hf_onebit.ops.triton.launch import GemvConfig, gemv_config, packed_linear_triton

    out(f"\nGEMV configs, {weight_format} weights")
    out("| K->N | M | bits | kpt | warps | prefetch | us |")
    out("|---|---|---|---|---|---|---|")
    plans = [(k, n, 1) for k, n in shapes] + [(4096, 11008, 2), (4096, 11008, 4)]
    all_bits = (32, 16, 8) if weight_format == "binary" else (16, 8)  # a ternary code word holds 16 outputs
    for k, n, m in plans:
        layers = [random_layer(k, n, weight_format) for _ in range(copies_for(packed_bytes(k, n, weight_format)))]
        x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
        if m == 1:
            grid = [(b, kpt, w, pf) for b in all_bits for kpt, w in ((4, 4), (4, 8), (2, 4)) for pf in (False, True)]
        else:
            grid = [(b, kpt, 4, False) for b in all_bits for kpt in (1, 2)]
        results = []
        for bits, kpt, warps, pf in grid:
            cfg = GemvConfig(bits=bits, kpt=kpt, num_warps=warps, prefetch=pf)
            calls = [lambda p=p, c=cfg: packed_linear_triton(x, p[0], p[1], p[2], None, k, path="gemv", config=c,
                                                             weight_format=weight_format)
                     for p in layers]
            seconds, _ = time_calls(calls, target_s=0.01)
            results.append((seconds, cfg))
            out(f"| {k}->{n} | {m} | {bits} | {kpt} | {warps} | {pf} | {seconds * 1e6:.1f} |")
        best = min(results, key=lambda r: r[0])
        out(f"best for {k}->{n} M={m}: {best[1]} {best[0] * 1e6:.1f} us; "
            f"heuristic picks {gemv_config(m, n, k, x.device, weight_format)}")


GEMV_M1_CONFIGS = [(32, 4, 4, True), (32, 4, 8, True), (32, 8, 4, True), (32, 8, 8, True), (32, 4, 16, True),
                   (32, 2, 8, True), (32, 2, 16, True), (16, 8, 4, True), (16, 4, 16, True)]


def sweep_gemv_m1(shapes=SHAPES, configs=GEMV_M1_CONFIGS, out=print):
    """M=1 GEMV: more (bits, kpt, warps, prefetch) configs than ``sweep_gemv``, next to cuBLAS bf16 in the same run."""
    from hf_onebit.ops.triton.launch import GemvConfig, binary_linear_triton, gemv_config

    out("\nM=1 GEMV configs (us; bits, kpt, warps, prefetch)")
    out("| K->N | cuBLAS bf16 | heuristic | " + " | ".join(",".join(str(int(v)) for v in c) for c in configs) + " |")
    out("|---|---|---|" + "---|" * len(configs))
    for k, n in shapes:
        layers, dense = rotating_weights(k, n)
        x = torch.randn(1, k, device="cuda", dtype=torch.bfloat16)

        def t(cfg):
            return time_calls([lambda p=p: binary_linear_triton(x, p[0], p[1], p[2], None, k, path="gemv", config=cfg)
                               for p in layers], target_s=0.01)[0]

        cublas = time_calls([lambda w=w: torch.nn.functional.linear(x, w) for w in dense], target_s=0.01)[0]
        heur = t(gemv_config(1, n, k, x.device))
        cells = [t(GemvConfig(bits=b, kpt=kpt, num_warps=w, prefetch=pf)) for b, kpt, w, pf in configs]
        out(f"| {k}->{n} | {cublas * 1e6:.1f} | {heur * 1e6:.1f} ({cublas / heur:.2f}x) | "
            + " | ".join(f"{c * 1e6:.1f}" for c in cells) + f" | best {cublas / min(cells + [heur]):.2f}x")
        del layers, dense
        torch.cuda.empty_cache()


DENSE_CONFIGS = [(1, False), (2, False), (4, False), (2, True), (3, True), (4, True), (6, True)]


def sweep_dense(shapes=SHAPES, ms=(512, 2048), configs=DENSE_CONFIGS, out=print):
    """Prefill path: expansion alone, cuBLAS on the expanded weight alone, and the path with N slices (overlapped on
    a side stream or not), all next to cuBLAS bf16 in the same run."""
    from hf_onebit.ops.triton.dense import DenseConfig, dense_weight
    from hf_onebit.ops.triton.launch import binary_linear_triton, dense_config
    from hf_onebit.ops.triton.repack import sign_words

    out("\nprefill path (us; `c` = N slices, `o` = overlapped on a side stream; ratio = cuBLAS bf16 / time)")
    out("| K->N | M | cuBLAS bf16 | expand only | matmul only | " + " | ".join(
        f"c{c}{'o' if o else ''}" for c, o in configs) + " | best (ratio) | default (ratio) |")
    out("|---|---|---|---|---|" + "---|" * len(configs) + "---|---|")
    for k, n in shapes:
        layers, dense = rotating_weights(k, n)
        expanded = [dense_weight(sign_words(p[0], k), p[1], p[2], n, k, torch.bfloat16) for p in layers[:2]]
        for m in ms:
            x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)

            def t(calls):
                return time_calls(calls, target_s=0.01)[0]

            cublas = t([lambda w=w: torch.nn.functional.linear(x, w) for w in dense])
            expand = t([lambda p=p: dense_weight(sign_words(p[0], k), p[1], p[2], n, k, torch.bfloat16)
                        for p in layers])
            mm = t([lambda w=w: torch.matmul(x, w) for w in expanded])
            cells = []
            for c, o in configs:
                cfg = DenseConfig(chunks=c, overlap=o)
                cells.append(t([lambda p=p: binary_linear_triton(x, p[0], p[1], p[2], None, k, path="dense", config=cfg)
                                for p in layers]))
            best = min(range(len(cells)), key=lambda i: cells[i])
            default = t([lambda p=p: binary_linear_triton(x, p[0], p[1], p[2], None, k, path="dense") for p in layers])
            c, o = configs[best]
            out(f"| {k}->{n} | {m} | {cublas * 1e6:.1f} | {expand * 1e6:.1f} | {mm * 1e6:.1f} | "
                + " | ".join(f"{v * 1e6:.1f}" for v in cells)
                + f" | c{c}{'o' if o else ''} ({cublas / cells[best]:.2f}x) | {dense_config(m, n, k)} "
                f"{default * 1e6:.1f} ({cublas / default:.2f}x) |")
            del x
        del layers, dense, expanded
        torch.cuda.empty_cache()


def sweep_paths(k=4096, n=11008, ms=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048), out=print,
                weight_format="binary"):
    """Time the three paths over M at one shape: where the dispatcher should switch."""
    from hf_onebit.ops.triton.launch import DotConfig, choose_path, packed_linear_triton

    layers, dense = rotating_weights(k, n, weight_format)
    dot_cfgs = [DotConfig(16, 64, 128, 4, 4), DotConfig(32, 64, 128, 4, 4), DotConfig(64, 64, 64, 4, 4),
                DotConfig(64, 128, 64, 4, 3), DotConfig(128, 128, 64, 8, 3), DotConfig(128, 256, 64, 8, 3)]
    out(f"\npaths at {k}->{n}, {weight_format} weights (us; dot = best of {len(dot_cfgs)} configs)")
    out("| M | cuBLAS bf16 | gemv | dot (best cfg) | dense | auto picks |")
    out("|---|---|---|---|---|---|")
    for m in ms:
        x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)

        def t(path, cfg=None):
            calls = [lambda p=p: packed_linear_triton(x, p[0], p[1], p[2], None, k, path=path, config=cfg,
                                                      weight_format=weight_format) for p in layers]
            return time_calls(calls, target_s=0.01)[0]

        cublas = time_calls([lambda w=w: torch.nn.functional.linear(x, w) for w in dense], target_s=0.01)[0]
        gemv = t("gemv") if m <= 16 else None
        dots = [(t("dot", c), c) for c in dot_cfgs if c.block_m <= max(16, 2 * m)]
        dot = min(dots, key=lambda d: d[0])
        dense_t = t("dense")
        out(f"| {m} | {cublas * 1e6:.1f} | {'-' if gemv is None else f'{gemv * 1e6:.1f}'} | {dot[0] * 1e6:.1f} "
            f"({dot[1].block_m}x{dot[1].block_n}x{dot[1].block_k}) | {dense_t * 1e6:.1f} | {choose_path(m, n, k, x.dtype)} |")


def time_or_nan(calls, where: str) -> float:
    """Seconds per call, or NaN (with a note on stderr) when a config fails to compile or run."""
    try:
        return time_calls(calls, target_s=0.01)[0]
    except Exception as err:  # noqa: BLE001 - a config the compiler or the GPU refuses
        print(f"  failed at {where}: {type(err).__name__}: {str(err)[:160]}", file=sys.stderr)
        return float("nan")


INT8_CONFIGS = [(64, 64, 128, 4, 4), (64, 128, 128, 4, 4), (128, 128, 128, 8, 4), (128, 256, 128, 8, 3),
                (256, 128, 128, 8, 3)]


def sweep_int8(shapes=SHAPES, ms=(16, 512, 2048), configs=INT8_CONFIGS, out=print, formats=FORMATS):
    """``act_bits=8`` beyond the GEMV: quantisation alone, int8 expansion alone, cuBLAS int8 (``torch._int_mm`` on
    expanded weights, no scales) and our two paths over tile configs, next to cuBLAS bf16 in the same run."""
    from hf_onebit.ops.triton.launch import choose_path, packed_linear_triton
    from hf_onebit.ops.triton.launch_int8 import Int8Config, expand_int8, int8_config, quantize_rows

    names = ["x".join(str(v) for v in c[:3]) + f"w{c[3]}s{c[4]}" for c in configs]
    for fmt in formats:
        out(f"\nint8 activations, {fmt} weights (us; dot = tiles expanded in registers, dense = int8 weight "
            "expanded per call; each tile config, then the default)")
        out("| K->N | M | cuBLAS bf16 | quantise | expand int8 | cuBLAS int8 (_int_mm) | "
            + " | ".join(f"dot {c}" for c in names) + " | " + " | ".join(f"dense {c}" for c in names)
            + " | default (path) | default vs bf16 |")
        out("|---|---|---|---|---|---|" + "---|" * (2 * len(configs)) + "---|---|")
        for k, n in shapes:
            layers, dense = rotating_weights(k, n, fmt)
            ints = [expand_int8(p[0], k, fmt == "ternary") for p in layers[:copies_for(n * k)]]
            for m in ms:
                x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)

                def t(calls):
                    return time_or_nan(calls, f"{k}->{n} M={m}")

                def ours(path, cfg=None):
                    return t([lambda p=p: packed_linear_triton(x, p[0], p[1], p[2], None, k, 8, path, cfg, fmt)
                              for p in layers])

                cublas = t([lambda w=w: torch.nn.functional.linear(x, w) for w in dense])
                quant = t([lambda: quantize_rows(x, layers[0][1], k)])
                expand = t([lambda p=p: expand_int8(p[0], k, fmt == "ternary") for p in layers])
                q = quantize_rows(x, layers[0][1], k)[0]
                int_mm = t([lambda w=w: torch._int_mm(q, w.t()) for w in ints]) if m > 16 else float("nan")
                dots = [ours("dot", Int8Config(*c)) for c in configs]
                denses = [ours("dense", Int8Config(*c)) for c in configs]
                default = ours("auto")
                path = choose_path(m, n, k, x.dtype, 8)
                out(f"| {k}->{n} | {m} | {cublas * 1e6:.1f} | {quant * 1e6:.1f} | {expand * 1e6:.1f} | "
                    f"{int_mm * 1e6:.1f} | " + " | ".join(f"{v * 1e6:.1f}" for v in dots + denses)
                    + f" | {default * 1e6:.1f} ({path}, {int8_config(m, n, k, path == 'dot')}) | "
                    f"{cublas / default:.2f}x |")
            del layers, dense, ints
            torch.cuda.empty_cache()


GEMV_A8_CONFIGS = [(False, 4), (True, 4), (True, 8), (True, 16)]  # (pairs, kpt)


def sweep_gemv_a8(shapes=SHAPES, ms=(1, 4), configs=GEMV_A8_CONFIGS, out=print, formats=FORMATS):
    """Small-M int8 activations: the float GEMV next to the int8 one (fp32 sums or fp16 pair sums, by ``kpt``), with
    and without the quantisation kernel in front ("kernel only" runs on pre-quantised activations)."""
    from dataclasses import replace

    from hf_onebit.ops.triton import launch
    from hf_onebit.ops.triton.launch_int8 import quantize_rows
    from hf_onebit.ops.triton.repack import weight_words

    names = [f"{'pairs' if p else 'fp32'} kpt{kpt}" for p, kpt in configs]
    for fmt in formats:
        out(f"\nsmall-M GEMV with int8 activations, {fmt} weights (us)")
        out("| K->N | M | cuBLAS bf16 | float GEMV (act_bits=0) | quantise only | "
            + " | ".join(f"a8 {c}" for c in names) + " | " + " | ".join(f"kernel only {c}" for c in names)
            + " | a8 default |")
        out("|---|---|---|---|---|" + "---|" * (2 * len(configs)) + "---|")
        for k, n in shapes:
            layers, dense = rotating_weights(k, n, fmt)
            for m in ms:
                x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)

                def t(calls):
                    return time_or_nan(calls, f"{k}->{n} M={m}")

                base = launch.gemv_config(m, n, k, x.device, fmt)
                cublas = t([lambda w=w: torch.nn.functional.linear(x, w) for w in dense])
                exact = t([lambda p=p: launch.packed_linear_triton(x, p[0], p[1], p[2], None, k, 0, "gemv", None, fmt)
                           for p in layers])
                quant = t([lambda: quantize_rows(x, layers[0][1], k)])
                q, sc = quantize_rows(x, layers[0][1], k)
                full, alone = [], []
                for pairs, kpt in configs:
                    cfg = replace(base, pairs=pairs, kpt=kpt, prefetch=True)
                    full.append(t([lambda p=p, c=cfg: launch.packed_linear_triton(x, p[0], p[1], p[2], None, k, 8,
                                                                                   "gemv", c, fmt) for p in layers]))
                    y = torch.empty(m, n, device="cuda", dtype=x.dtype)

                    def kernel_only(p, c=cfg):
                        words = weight_words(p[0], k, fmt)
                        if c.pairs:
                            launch._gemv_pairs(q, words, p[2], None, y, m, n, k, c, fmt, sc)
                        else:
                            launch._gemv(q, words, p[1], p[2], None, y, m, n, k, c, fmt, row_scale=sc)

                    alone.append(t([lambda p=p: kernel_only(p) for p in layers]))
                default = t([lambda p=p: launch.packed_linear_triton(x, p[0], p[1], p[2], None, k, 8, "gemv", None,
                                                                      fmt) for p in layers])
                out(f"| {k}->{n} | {m} | {cublas * 1e6:.1f} | {exact * 1e6:.1f} ({cublas / exact:.2f}x) | "
                    f"{quant * 1e6:.1f} | " + " | ".join(f"{v * 1e6:.1f}" for v in full + alone)
                    + f" | {default * 1e6:.1f} ({cublas / default:.2f}x) |")
            del layers, dense
            torch.cuda.empty_cache()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sweep", action="store_true", help="also sweep GEMV configs (and the paths over M)")
    parser.add_argument("--no-paths", action="store_true", help="with --sweep: skip the paths-over-M sweep")
    parser.add_argument("--gemv-m1", action="store_true", help="only: the wider M=1 GEMV config sweep")
    parser.add_argument("--dense", action="store_true", help="only: the prefill-path sweep (expansion, slices)")
    parser.add_argument("--quick", action="store_true", help="two shapes, M in {1, 2048}")
    parser.add_argument("--m", type=int, nargs="*", help="M values of the main table (default 1 16 512 2048)")
    parser.add_argument("--weights", choices=FORMATS + ("both",), default="binary",
                        help="packed format of 'ours': binary (1 bit), ternary (2-bit codes) or both")
    parser.add_argument("--a8", action="store_true", help="main table: also 'ours' with int8 activations")
    parser.add_argument("--int8", action="store_true", help="only: the int8-activation paths and tile configs")
    parser.add_argument("--gemv-a8", action="store_true", help="only: small-M GEMV with int8 activations")
    args = parser.parse_args(argv)
    formats = FORMATS if args.weights == "both" else (args.weights,)
    if not torch.cuda.is_available():
        sys.exit("benchmarks/kernels_cuda.py: no CUDA device")
    import hf_onebit  # noqa: F401  (registers the Triton kernel)

    shapes = SHAPES[:2] if args.quick else SHAPES
    if args.int8 or args.gemv_a8:
        if args.gemv_a8:
            sweep_gemv_a8(shapes, formats=formats)
        if args.int8:
            sweep_int8(shapes, formats=formats)
        return
    if args.gemv_m1 or args.dense:
        if args.gemv_m1:
            sweep_gemv_m1(shapes)
        if args.dense:
            sweep_dense(shapes)
        return
    ms = args.m or ([1, 2048] if args.quick else M_VALUES)
    if args.sweep:
        for fmt in formats:
            sweep_gemv(shapes, weight_format=fmt)
            if not args.no_paths:
                sweep_paths(weight_format=fmt)
    main_table(shapes, ms, formats=formats, act_bits=(0, 8) if args.a8 else (0,))


if __name__ == "__main__":
    main()
