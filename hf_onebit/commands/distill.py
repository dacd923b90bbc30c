"""``hf-onebit distill``: progressive (or OneBit) distillation of a float model into a packed 1-bit model."""

from __future__ import annotations


def add_parser(sub) -> None:
    from ..training.cli_distill import add_distill_parser, run_distill

    parser = add_distill_parser(sub)
    parser.set_defaults(run=lambda args: (run_distill(args), 0)[1])
