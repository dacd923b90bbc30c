"""``hf-onebit push MODEL REPO_ID``: upload a 1-bit checkpoint with its model card (``--dry-run``: write a folder)."""

from __future__ import annotations

import json


def add_parser(sub) -> None:
    p = sub.add_parser("push", help="upload a 1-bit checkpoint and its model card to the Hugging Face Hub",
                       description="Load the 1-bit checkpoint MODEL, write its model card (method, bits/weight, size, "
                       "teacher, distillation budget, perplexity) and upload everything to REPO_ID. With --dry-run "
                       "nothing is uploaded: the files that would be are written to --out.")
    p.add_argument("model", help="1-bit checkpoint folder (saved by hf_onebit) or Hub id")
    p.add_argument("repo_id", help="target repository, e.g. me/smollm2-135m-1bit")
    p.add_argument("--dry-run", action="store_true", help="write the upload into --out instead of pushing")
    p.add_argument("--out", default=None, help="folder for --dry-run (default: ./<repo name>-dry-run)")
    p.add_argument("--overwrite", action="store_true", help="with --dry-run: replace --out if it is not empty")
    p.add_argument("--private", action="store_true", help="create the repository as private")
    p.add_argument("--commit-message", default=None)
    p.add_argument("--card", action="append", default=[], metavar="KEY=VALUE",
                   help="model card fact, e.g. teacher=HuggingFaceTB/SmolLM2-135M-Instruct or perplexity=48.3 "
                   "(VALUE is parsed as JSON when it can be; repeatable)")
    p.set_defaults(run=run)


def parse_card_items(items: list[str]) -> dict:
    info = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SystemExit(f"--card: {item!r} is not KEY=VALUE")
        try:
            info[key] = json.loads(value)
        except ValueError:
            info[key] = value
    return info


def run(args) -> int:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ..interop import hub
    from ..files.output import OutputFolder, check_output
    from .quantize import load_model, resolve_model_path

    info = parse_card_items(args.card)
    path = resolve_model_path(args.model)
    out = (args.out or f"{args.repo_id.split('/')[-1]}-dry-run") if args.dry_run else None
    if out is not None:
        check_output(out, sources=[path], overwrite=args.overwrite)  # before the model is loaded
    model = load_model(AutoModelForCausalLM, path, "MODEL")
    quant = getattr(getattr(model, "hf_quantizer", None), "quantization_config", None)
    if getattr(quant, "quant_method", None) != "onebit":
        raise SystemExit(f"MODEL: {args.model!r} is not a 1-bit checkpoint; make one with `hf-onebit quantize` first")
    if info:
        hub.set_card_info(model, **info)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
    except Exception as err:  # a checkpoint without a tokenizer can still be pushed
        print(f"note: no tokenizer found ({type(err).__name__}); pushing the model only")
        tokenizer = None
    if args.dry_run:
        with OutputFolder(out, sources=[path], overwrite=args.overwrite) as staging:
            files = hub.save_for_hub(model, staging, repo_id=args.repo_id, tokenizer=tokenizer)
        print(f"dry run: nothing uploaded; {args.repo_id} would receive {len(files)} files, written to {out}:")
        print("  " + "\n  ".join(files))
        return 0
    commit = hub.push_to_hub(model, args.repo_id, private=args.private or None, commit_message=args.commit_message,
                             tokenizer=tokenizer)
    print(f"pushed to {args.repo_id}: {getattr(commit, 'commit_url', commit)}")
    return 0
