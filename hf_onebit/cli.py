"""The ``hf-onebit`` command line: one subcommand per module in :mod:`hf_onebit.commands`."""

from __future__ import annotations

import argparse
import importlib
import sys

#: subcommand name -> module defining ``add_parser(subparsers)`` and ``run(args) -> int``
COMMANDS = {
    "quantize": "hf_onebit.commands.quantize",
    "eval": "hf_onebit.commands.evaluate",
    "distill": "hf_onebit.commands.distill",
    "push": "hf_onebit.commands.push",
    "info": "hf_onebit.commands.info",
    "export": "hf_onebit.commands.export",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hf-onebit",
        description="Quantize Hugging Face causal LMs to 1-bit weights, distill them, evaluate and publish them.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for module_name in COMMANDS.values():
        importlib.import_module(module_name).add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from .integration.checkpoint import CheckpointError
    from .files.output import OutputError
    from .files.registry import FetchError

    try:
        return int(args.run(args) or 0)
    except (CheckpointError, OutputError, FetchError) as err:  # bad input the user can fix: one line, no traceback
        print(f"hf-onebit {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
