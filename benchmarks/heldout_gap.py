"""Where a distilled student loses against its teacher on the held-out text, token by token.

    python benchmarks/heldout_gap.py --student OUT/packed --train ~/.cache/hf_onebit/selfgen/KEY-2080.pt text.txt

Prints the per-token gap (student NLL - teacher NLL, nats) on the validation split of the held-out sets
(hf_onebit.eval: every domain, 512-token windows as benchmarks/quality.py measures them; the test split stays unread) split by the teacher's own confidence, by position in the window, by word-initial
vs word-continuation tokens, and by whether the (previous token, token) pair occurs in the training text given with
``--train`` (token-block caches ``*.pt`` of the self-generated data, or UTF-8 text files), plus the tokens with the
largest gaps. The mean gap is ln(student perplexity / teacher perplexity).
"""

from __future__ import annotations

import argparse

import torch



def token_nll(model, ids: torch.Tensor, window: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token NLL of ``ids`` in consecutive ``window``-token windows, and the index in ``ids`` of each token."""
    nll, where = [], []
    with torch.no_grad():
        for start in range(0, ids.numel() - 1, window):
            x = ids[start : start + window][None]
            if x.shape[1] < 2:
                continue
            logp = torch.log_softmax(model(x).logits.float()[0, :-1], dim=-1)
            nll.append(-logp.gather(1, x[0, 1:, None])[:, 0])
            where.append(torch.arange(start + 1, start + x.shape[1]))
    return torch.cat(nll), torch.cat(where)


def training_bigrams(paths: list[str], tokenizer, vocab: int) -> set[int]:
    pairs: set[int] = set()
    for path in paths:
        if path.endswith(".pt"):
            ids = torch.load(path, weights_only=True).reshape(-1)
        else:
            with open(path, encoding="utf-8") as fh:
                ids = tokenizer(fh.read(), return_tensors="pt").input_ids[0]
        pairs |= set((ids[:-1] * vocab + ids[1:]).tolist())
    return pairs


def share(gap: torch.Tensor, mask: torch.Tensor) -> str:
    return (f"{mask.float().mean().item() * 100:5.1f} % of tokens, mean gap {gap[mask].mean().item():5.2f}, "
            f"{gap[mask].sum().item() / gap.sum().item() * 100:5.1f} % of the gap")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--student", required=True, help="a saved (packed) student folder")
    p.add_argument("--teacher", default=None, help="teacher folder (default: the cached SmolLM2-135M-Instruct)")
    p.add_argument("--train", nargs="*", default=[],
                   help="the student's training text: *.pt token blocks or text files")
    p.add_argument("--window", type=int, default=512)
    p.add_argument("--top", type=int, default=15, help="largest-gap tokens to print")
    args = p.parse_args(argv)

    import hf_onebit  # noqa: F401
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from hf_onebit.eval import heldout_windows
    from hf_onebit.fixtures.real_model import smollm2_checkpoint

    teacher_dir = args.teacher or smollm2_checkpoint()
    tok = AutoTokenizer.from_pretrained(teacher_dir)
    ids = torch.cat([w.reshape(-1) for w in heldout_windows(tok, "val", args.window).values()])
    teacher = AutoModelForCausalLM.from_pretrained(teacher_dir, dtype=torch.float32)
    t_nll, where = token_nll(teacher, ids, args.window)
    s_nll, _ = token_nll(AutoModelForCausalLM.from_pretrained(args.student), ids, args.window)
    gap = s_nll - t_nll
    print(f"held-out tokens scored: {gap.numel()}; teacher ppl {t_nll.mean().exp().item():.2f}, student ppl "
          f"{s_nll.mean().exp().item():.2f}, mean gap {gap.mean().item():.3f} nats")
    print("by the teacher's NLL of the token:")
    for lo, hi in ((0, 0.1), (0.1, 0.5), (0.5, 1), (1, 2), (2, 4), (4, 8), (8, float("inf"))):
        print(f"  [{lo:g}, {hi:g}): {share(gap, (t_nll >= lo) & (t_nll < hi))}")
    pos = where % args.window  # windows start at multiples of the window length
    print("by position in the window:")
    for lo, hi in ((1, 16), (16, 64), (64, 256), (256, args.window)):
        print(f"  [{lo}, {hi}): {share(gap, (pos >= lo) & (pos < hi))}")
    pieces = tok.convert_ids_to_tokens(ids[where].tolist())
    # byte-level BPE marks a leading space with "\u0120", a newline with "\u010a"; a letter without them goes on a word
    cont = torch.tensor([p[:1].isalpha() and not p.startswith(("\u0120", "\u010a")) for p in pieces])
    print(f"word continuations: {share(gap, cont)}")
    print(f"word-initial / other: {share(gap, ~cont)}")
    if args.train:
        vocab = len(tok)
        pairs = training_bigrams(args.train, tok, vocab)
        seen = torch.tensor([(a * vocab + b) in pairs for a, b in zip(ids[where - 1].tolist(), ids[where].tolist())])
        print(f"(previous, this) token pair in the training text: {share(gap, seen)}")
        print(f"pair not in the training text:                    {share(gap, ~seen)}")
    print("largest gaps (gap, teacher NLL, context -> token):")
    for i in gap.argsort(descending=True)[: args.top].tolist():
        j = where[i].item()
        print(f"  {gap[i].item():5.2f} {t_nll[i].item():5.2f} ...{tok.decode(ids[max(0, j - 8) : j])!r} -> "
              f"{tok.decode(ids[j : j + 1])!r}")


if __name__ == "__main__":
    main()
