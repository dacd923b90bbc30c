"""Quantize a causal LM to 1-bit weights, save it, reload it and generate.

    python examples/quantize_and_generate.py            # SmolLM2-135M-Instruct (untrained 1-bit: gibberish)
    python examples/quantize_and_generate.py --tiny     # a random tiny model, a few seconds

A 1-bit model straight after quantization (SVID initialisation) is not usable - distill it first (`hf-onebit distill`,
see docs/distillation.md). This example shows the mechanics: sizes, save/reload, generate.
"""

from __future__ import annotations

import os
import time

import torch
from _common import base_parser, float_model_path, workdir
from transformers import AutoModelForCausalLM, AutoTokenizer

import hf_onebit  # registers the "onebit" quantization method with transformers
from hf_onebit.eval import format_table, size_on_disk, size_report


def main(argv=None) -> int:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--prompt", default="The three primary colours are")
    parser.add_argument("--max-new-tokens", type=int, default=20)
    args = parser.parse_args(argv)
    root = workdir(args)
    src = float_model_path(args, root)
    out = os.path.join(root, "onebit")

    start = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(src, quantization_config=hf_onebit.OneBitConfig(), dtype=torch.float32)
    print(f"quantized in {time.perf_counter() - start:.1f} s")
    hf_onebit.save_pretrained(model, out)  # packed sign bits + scale vectors + a model card (README.md)
    tokenizer = AutoTokenizer.from_pretrained(src)
    tokenizer.save_pretrained(out)

    reloaded = AutoModelForCausalLM.from_pretrained(out)
    report = size_report(reloaded)
    print(format_table(["", "value"], [
        ["1-bit weights", f"{report.quantized_weights:,}"],
        ["bits/weight (1-bit layers)", report.bits_per_quantized_weight],
        ["bits/parameter (whole model)", report.bits_per_weight_overall],
        ["weights on disk (MB)", size_on_disk(out) / 1e6],
    ]))
    inputs = tokenizer(args.prompt, return_tensors="pt")
    with torch.no_grad():
        ids = reloaded.generate(**inputs, max_new_tokens=args.max_new_tokens, do_sample=False)
        same = torch.equal(model(**inputs).logits, reloaded(**inputs).logits)
    print(f"reloaded logits identical to the quantized model: {same}")
    print("generated:", repr(tokenizer.decode(ids[0][inputs.input_ids.shape[1]:], skip_special_tokens=True)))
    print(f"checkpoint: {out}")
    return 0 if same else 1


if __name__ == "__main__":
    raise SystemExit(main())
