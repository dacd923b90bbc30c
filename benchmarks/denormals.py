"""The optimizer step on denormal moments: no flushing, torch's flushing (the calling thread), every thread flushed.

Late in a progressive run many latent weights' gradients vanish and AdamW's moments decay into the float32 denormal
range, where x86 arithmetic takes a slow path. This script builds that state (``--values`` parameters whose moments and
gradients are denormal, the rest normal: ``--denormal-share``) and times AdamW's step, the three settings in turn
round by round in one process (the CPU is shared: only ratios taken side by side mean anything):

* ``off``: denormals computed (the float default);
* ``calling thread``: ``torch.set_flush_denormal(True)``, which sets the control register of the calling thread only;
* ``every thread``: :func:`hf_onebit.ops.cpu.fpenv.set_flush_denormal`, the calling thread and every thread of torch's
  pool (what :class:`~hf_onebit.training.OneBitDistillationCallback` does for a run on the CPU).

    python benchmarks/denormals.py [--values 50000000] [--denormal-share 0.5] [--rounds 7]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from quality import machine  # noqa: E402

from hf_onebit.ops.cpu.fpenv import set_flush_denormal  # noqa: E402

DENORMAL = 1e-40  # a float32 denormal (the smallest normal float32 is ~1.18e-38)


def build(values: int, share: float):
    """One parameter of ``values`` floats with AdamW state; a random ``share`` of its entries (spread over the array,
    so over every thread's part of it) get denormal gradients and moments."""
    param = torch.nn.Parameter(torch.randn(values))
    optimizer = torch.optim.AdamW([param], lr=1e-3, betas=(0.9, 0.98), weight_decay=0.0)
    param.grad = torch.randn(values) * 1e-3
    optimizer.step()  # creates the moments
    return param, optimizer, torch.rand(values, generator=torch.Generator().manual_seed(0)) < share


def set_denormal_state(param, optimizer, mask: torch.Tensor) -> None:
    """The masked entries of the gradient and both moments set to a denormal value (a flushed step zeroes them)."""
    state = optimizer.state[param]
    for tensor in (param.grad, state["exp_avg"], state["exp_avg_sq"]):
        tensor.masked_fill_(mask, DENORMAL)


def time_step(optimizer) -> float:
    start = time.perf_counter()
    optimizer.step()
    return time.perf_counter() - start


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--values", type=int, default=50_000_000)
    p.add_argument("--denormal-share", type=float, default=0.5)
    p.add_argument("--rounds", type=int, default=7)
    args = p.parse_args(argv)
    if not 0 <= args.denormal_share <= 1:
        raise SystemExit(f"--denormal-share: got {args.denormal_share}; allowed: a number from 0 to 1")

    settings = {
        "off": lambda: set_flush_denormal(False),
        "calling thread (torch.set_flush_denormal)": lambda: set_flush_denormal(True, every_thread=False),
        "every thread (hf_onebit)": lambda: set_flush_denormal(True),
    }
    param, optimizer, mask = build(args.values, args.denormal_share)
    times = {name: [] for name in settings}
    for _ in range(args.rounds):
        for name, apply in settings.items():
            set_flush_denormal(False)  # (written while flushing, the denormal constant would become 0)
            set_denormal_state(param, optimizer, mask)  # the same state before every timed step
            apply()
            times[name].append(time_step(optimizer))
    set_flush_denormal(False)

    info = machine()
    print(f"machine: {info['cpu']}, {info['isa']}, {info['threads']} threads; AdamW step over {args.values:,} values, "
          f"{args.denormal_share:.0%} of them denormal; median of {args.rounds} rounds")
    base = statistics.median(times["off"])
    print("| flushing | AdamW step (s) | vs off |")
    print("|---|---|---|")
    for name, samples in times.items():
        median = statistics.median(samples)
        print(f"| {name} | {median:.3f} | {base / median:.2f}x |")


if __name__ == "__main__":
    main()
