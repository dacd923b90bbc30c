"""Publish a 1-bit model: the model card, and everything push_to_hub would upload - written to a folder instead.

    python examples/push_to_hub_dry_run.py --tiny
    python examples/push_to_hub_dry_run.py --repo-id me/smollm2-135m-1bit --out ./upload

A real push is ``hf_onebit.push_to_hub(model, "me/smollm2-135m-1bit", tokenizer=tokenizer)`` (after ``hf auth login``), or
``hf-onebit push CHECKPOINT me/smollm2-135m-1bit``.
"""

from __future__ import annotations

import os

from _common import base_parser, float_model_path, workdir
from transformers import AutoModelForCausalLM, AutoTokenizer

import hf_onebit
from hf_onebit.interop import hub


def main(argv=None) -> int:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--repo-id", default="my-name/smollm2-135m-1bit")
    parser.add_argument("--out", default=None, help="folder to write the upload into (default: <workdir>/upload)")
    args = parser.parse_args(argv)
    root = workdir(args)
    src = float_model_path(args, root)
    out = args.out or os.path.join(root, "upload")

    model = AutoModelForCausalLM.from_pretrained(src, quantization_config=hf_onebit.OneBitConfig())
    tokenizer = AutoTokenizer.from_pretrained(src)
    # What the code cannot measure at save time goes into the card through set_card_info (kept in config.json).
    # The teacher is recorded automatically when quantizing; record the distillation budget and perplexity the same way.
    hub.set_card_info(model, recipe="none (SVID initialisation only, not distilled)",
                      notes="Produced by examples/push_to_hub_dry_run.py to show the upload; not a usable model.")
    files = hub.save_for_hub(model, out, repo_id=args.repo_id, tokenizer=tokenizer)
    print(f"{args.repo_id} would receive: {', '.join(files)} (in {out})\n")
    with open(os.path.join(out, "README.md"), encoding="utf-8") as fh:
        card = fh.read()
    print(card)
    return 0 if "onebit" in card and "import hf_onebit" in card else 1


if __name__ == "__main__":
    raise SystemExit(main())
