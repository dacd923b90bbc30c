"""Training data for distillation: teacher self-generated text (the offline default), a text file, or a dataset.

Every source ends as a :class:`TokenBlocks` dataset of equal-length token blocks with ``input_ids``,
``attention_mask`` and ``labels`` (the Trainer's default collator stacks them).

Self-generated text comes in two styles. ``"random-start"`` follows LLM-QAT: a uniformly random first token (special
tokens excluded), a few greedy tokens, then sampling from the teacher's distribution. ``"essays"`` keeps the teacher's
answers to writing prompts (:mod:`hf_onebit.training.prompts`): an instruction-tuned teacher started from a random
token mostly writes chat transcripts, lists and code, while its answers are ordinary prose. Either is cached on disk
under ``<cache_root>/selfgen/`` keyed by the teacher's identity and every generation setting, so repeated runs (and
every process of a multi-process run) reuse it.
"""

from __future__ import annotations

import hashlib
import json
import os

import torch

from ..integration.compat import cache_kwargs, output_cache
from ..files.registry import cache_root, file_lock


class TokenBlocks(torch.utils.data.Dataset):
    """Equal-length token blocks ``(n, seq_len)`` served as ``{"input_ids", "attention_mask", "labels"}``."""

    def __init__(self, blocks: torch.Tensor):
        if blocks.dim() != 2 or blocks.shape[1] < 2 or blocks.shape[0] < 1:
            raise ValueError(f"TokenBlocks: expected token ids of shape (n >= 1, seq_len >= 2), got {tuple(blocks.shape)}")
        self.blocks = blocks.long()

    def __len__(self) -> int:
        return self.blocks.shape[0]

    def __getitem__(self, i):
        ids = self.blocks[i]
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()}

    @property
    def num_tokens(self) -> int:
        return self.blocks.numel()


def chunk_ids(ids: torch.Tensor, seq_len: int) -> TokenBlocks:
    """Cut a 1-D token stream into ``seq_len`` blocks (the remainder is dropped)."""
    n = ids.numel() // seq_len
    if n < 1:
        raise ValueError(f"the text has {ids.numel()} tokens, fewer than one block of seq_len={seq_len}")
    return TokenBlocks(ids[: n * seq_len].view(n, seq_len))


def text_file_dataset(path: str, tokenizer, seq_len: int = 256) -> TokenBlocks:
    """Token blocks from a UTF-8 text file."""
    if not os.path.isfile(path):
        raise ValueError(f"data: {path!r} is not a file; allowed: 'self', a text file or a saved datasets folder")
    with open(path, encoding="utf-8") as fh:
        text = fh.read()
    return chunk_ids(tokenizer(text, return_tensors="pt").input_ids[0], seq_len)


def hf_dataset(dataset, tokenizer, seq_len: int = 256, text_column: str = "text") -> TokenBlocks:
    """Token blocks from a ``datasets.Dataset`` (or a folder saved with ``save_to_disk``): its text column, joined."""
    if isinstance(dataset, str):
        try:
            from datasets import load_from_disk
        except ImportError:
            raise ImportError("loading a saved dataset folder needs the `datasets` package: pip install datasets") from None
        dataset = load_from_disk(dataset)
    if "input_ids" in getattr(dataset, "column_names", []):
        ids = torch.cat([torch.as_tensor(x) for x in dataset["input_ids"]])
        return chunk_ids(ids, seq_len)
    if text_column not in getattr(dataset, "column_names", []):
        raise ValueError(f"text_column: {text_column!r} is not a column of the dataset {getattr(dataset, 'column_names', None)}")
    eos = tokenizer.eos_token or ""
    text = eos.join(dataset[text_column])
    return chunk_ids(tokenizer(text, return_tensors="pt").input_ids[0], seq_len)


# ---------------------------------------------------------------------------------------------- self-generated text
def model_fingerprint(teacher) -> str:
    """Identity of the teacher: its config plus a checksum of a few weights (a different checkpoint -> new cache)."""
    h = hashlib.sha256(json.dumps(teacher.config.to_dict(), sort_keys=True, default=str).encode())
    params = list(teacher.parameters())
    for p in (params[0], params[len(params) // 2], params[-1]):
        flat = p.detach().float().flatten()
        h.update(repr((tuple(p.shape), flat[:4096].sum().item(), flat.abs().sum().item())).encode())
    return h.hexdigest()[:16]


def _first_token_pool(tokenizer, vocab_size: int) -> torch.Tensor:
    special = set(getattr(tokenizer, "all_special_ids", []) or [])
    return torch.tensor([i for i in range(vocab_size) if i not in special], dtype=torch.long)


@torch.no_grad()
def generate_self_data(teacher, tokenizer, num_sequences: int, seq_len: int = 256, greedy_tokens: int = 3,
                       temperature: float = 1.0, top_p: float = 0.95, batch_size: int = 16, seed: int = 0,
                       top_k: int = 0, dtype: str | None = None, progress: bool = True) -> torch.Tensor:
    """``(num_sequences, seq_len)`` token ids sampled from ``teacher`` (LLM-QAT style, see the module docstring).

    ``top_k > 0`` samples among the ``top_k`` most likely tokens (after ``top_p``). ``dtype="bfloat16"`` generates
    with a bfloat16 copy of the teacher (much faster on CPUs with AMX / AVX512-BF16). Decoding reads every weight
    once per token step: large batches amortise that.
    """
    if num_sequences < 1 or seq_len < 2:
        raise ValueError(f"num_sequences={num_sequences}, seq_len={seq_len}; allowed: num_sequences >= 1, seq_len >= 2")
    _check_sampling(temperature, top_p)
    gen = torch.Generator().manual_seed(seed)
    pool = _first_token_pool(tokenizer, teacher.config.vocab_size)
    out = []
    with _generating(teacher, dtype) as model, _bar(num_sequences * seq_len, progress) as bar:
        device = next(model.parameters()).device
        for start in range(0, num_sequences, batch_size):
            b = min(batch_size, num_sequences - start)
            ids = pool[torch.randint(len(pool), (b, 1), generator=gen)].to(device)
            result = model(input_ids=ids, use_cache=True)
            tokens = [ids]
            for i in range(seq_len - 1):
                logits = result.logits[:, -1].float()
                if i < greedy_tokens:
                    nxt = logits.argmax(-1, keepdim=True)
                else:
                    nxt = _sample(logits / temperature, top_p, top_k, gen).to(device)
                tokens.append(nxt)
                result = model(input_ids=nxt, use_cache=True, **cache_kwargs(model, output_cache(result)))
                bar.update(b)
            out.append(torch.cat(tokens, dim=1).cpu())
            bar.update(b)  # the first token of each row
    return torch.cat(out)


@torch.no_grad()
def generate_prompted_data(teacher, tokenizer, num_sequences: int, seq_len: int = 256, prompts=None,
                           max_new_tokens: int = 512, temperature: float = 1.0, top_p: float = 0.95, top_k: int = 0,
                           batch_size: int = 16, seed: int = 0, dtype: str | None = None,
                           progress: bool = True) -> torch.Tensor:
    """``(num_sequences, seq_len)`` token ids of the teacher's answers to writing prompts (the ``"essays"`` style).

    Each prompt (default: :func:`~hf_onebit.training.prompts.essay_prompts`) goes through the tokenizer's chat
    template (a tokenizer without one gets the bare prompt and a blank line); the teacher samples up to
    ``max_new_tokens`` tokens of answer. Only the answers are kept: they are joined with the EOS token into one stream
    that is cut into ``seq_len`` blocks, as a text file would be. Prompts are used in order, batch by batch, until the
    stream is long enough; sampling is seeded per batch (``seed``), so the result is reproducible.
    """
    from .prompts import essay_prompts

    if num_sequences < 1 or seq_len < 2 or max_new_tokens < 1:
        raise ValueError(f"num_sequences={num_sequences}, seq_len={seq_len}, max_new_tokens={max_new_tokens}; "
                         "allowed: num_sequences >= 1, seq_len >= 2, max_new_tokens >= 1")
    _check_sampling(temperature, top_p)
    eos = tokenizer.eos_token_id
    if eos is None:
        raise ValueError("prompted self-generation needs a tokenizer with an eos_token (it separates the answers)")
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    need = num_sequences * seq_len
    stream: list[int] = []
    batch_no = 0
    cycle = prompts is None
    pool = essay_prompts(seed=seed) if cycle else list(prompts)
    with _generating(teacher, dtype) as model, _bar(need, progress) as bar:
        while len(stream) < need:
            start = batch_no * batch_size
            batch = ([pool[(start + i) % len(pool)] for i in range(batch_size)] if cycle
                     else pool[start:start + batch_size])
            if not batch:
                raise ValueError(f"prompts: {len(prompts)} prompts gave {len(stream)} tokens, fewer than the "
                                 f"{need} needed for {num_sequences} x {seq_len}; pass more prompts")
            gen = torch.Generator().manual_seed(seed * 1_000_003 + batch_no)
            answers = _sample_answers(  # the last batch stops once the stream's end can no longer change
                model, [_prompt_ids(tokenizer, p) for p in batch], pad, eos, max_new_tokens, temperature, top_p, top_k,
                gen, on_step=bar.update,
                settled=lambda answers, done, kept=len(stream): settled_length(kept, answers, done) >= need)
            for answer in answers:
                stream.extend(answer + [eos])
            bar.set(min(len(stream), need))  # the per-step counts above, corrected to what the stream kept
            batch_no += 1
        bar.finish(need)
    return torch.tensor(stream[:need], dtype=torch.long).view(num_sequences, seq_len)


def settled_length(kept: int, answers: list[list[int]], done: torch.Tensor) -> int:
    """How many leading tokens of ``stream + answer_0 + [eos] + answer_1 + [eos] + ...`` (``kept`` tokens already in
    the stream) can no longer change while the answers still being sampled (``done`` False) grow: every answer up to
    and including the first unfinished one - of which only what it has so far counts."""
    total = kept
    for answer, finished in zip(answers, done.tolist()):
        total += len(answer)
        if not finished:
            return total
        total += 1  # its EOS
    return total


def _sample_answers(model, prompts: list[list[int]], pad: int, eos: int, max_new_tokens: int, temperature: float,
                    top_p: float, top_k: int, gen: torch.Generator, on_step=None, settled=None) -> list[list[int]]:
    """Sample an answer to each (tokenized) prompt, batched with left padding; each answer stops before its EOS.
    ``on_step(n)`` is called after every token step with the number of answers that received a token (or their EOS).
    ``settled(answers, done)``, when given, is asked after every token step and stops the sampling when it returns
    True (the caller has the tokens it keeps; the answers then hold what they had so far).

    A plain KV-cache loop with :func:`_sample`, which applies top-k before top-p so that nothing sorts the whole
    vocabulary (``generate`` with ``top_k=50, top_p=0.95`` spent half of its time sampling at batch 64 on a 2-core CPU).
    """
    device = next(model.parameters()).device
    ids, mask = _left_padded(prompts, pad)
    ids, mask = ids.to(device), mask.to(device)
    position = (mask.cumsum(-1) - 1).clamp_min(0)
    result = model(input_ids=ids, attention_mask=mask, position_ids=position, use_cache=True)
    position = position[:, -1:]
    answers: list[list[int]] = [[] for _ in prompts]
    done = torch.zeros(len(prompts), dtype=torch.bool)
    for step in range(max_new_tokens):
        nxt = _sample(result.logits[:, -1].float() / temperature, top_p, top_k, gen)
        active = int((~done).sum())
        for i in (~done).nonzero().flatten().tolist():
            token = int(nxt[i])
            if token == eos:
                done[i] = True
            else:
                answers[i].append(token)
        if on_step is not None:
            on_step(active)
        if bool(done.all()) or step == max_new_tokens - 1 or (settled is not None and settled(answers, done)):
            break
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
        position = position + 1
        result = model(input_ids=nxt.to(device), attention_mask=mask, position_ids=position, use_cache=True,
                       **cache_kwargs(model, output_cache(result)))
    return answers


def _prompt_ids(tokenizer, prompt: str) -> list[int]:
    if getattr(tokenizer, "chat_template", None):
        ids = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                            tokenize=True)
        return list(ids["input_ids"] if hasattr(ids, "keys") else ids)  # transformers 5 returns a BatchEncoding
    return tokenizer(prompt + "\n\n").input_ids


def _left_padded(rows: list[list[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, width - len(r):] = torch.tensor(r, dtype=torch.long)
        mask[i, width - len(r):] = 1
    return ids, mask


def _check_sampling(temperature: float, top_p: float) -> None:
    if not 0 < top_p <= 1 or temperature <= 0:
        raise ValueError(f"top_p={top_p}, temperature={temperature}; allowed: 0 < top_p <= 1, temperature > 0")


class _generating:
    """The teacher in eval mode (a ``dtype`` copy when asked), its training flag restored afterwards."""

    def __init__(self, teacher, dtype: str | None):
        if dtype not in (None, "bfloat16", "float16", "float32"):
            raise ValueError(f"dtype: got {dtype!r}; allowed: None, 'bfloat16', 'float16', 'float32'")
        self.teacher, self.dtype = teacher, dtype

    def __enter__(self):
        self.was_training = self.teacher.training
        if self.dtype is None:
            return self.teacher.eval()
        import copy

        return copy.deepcopy(self.teacher).to(getattr(torch, self.dtype)).eval()

    def __exit__(self, *exc):
        self.teacher.train(self.was_training)
        return False


class _bar:
    """A tqdm token bar (or a silent stand-in) as a context manager; it moves at every token step. Its ``total`` is
    the tokens needed; the answers sampled beside the ones that fill the stream count too, so the count can pass it:
    the total then grows with the count, and the bar keeps moving until the last batch stops."""

    def __init__(self, total: int, progress: bool):
        self.bar = None
        self.n = 0
        if progress:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, desc="hf_onebit: teacher self-generating", unit="tok", unit_scale=True,
                            mininterval=1.0)

    def update(self, n: int) -> None:
        self.set(self.n + n)

    def set(self, n: int) -> None:
        """Move to ``n`` tokens (past ``total``: the total grows to ``n``)."""
        if self.bar is not None and n != self.n:
            if n > self.bar.total:
                self.bar.total = n
            self.bar.update(n - self.n)
        self.n = n

    def finish(self, n: int) -> None:
        """End at ``n`` of ``n`` tokens (the answers sampled past the stream's end no longer count)."""
        if self.bar is not None:
            self.bar.total = n
            self.bar.update(n - self.n)
        self.n = n

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self.bar is not None:
            self.bar.close()
        return False


def _sample(logits: torch.Tensor, top_p: float, top_k: int, gen: torch.Generator) -> torch.Tensor:
    logits = logits.cpu()
    if top_k > 0:
        values, order = logits.topk(min(top_k, logits.shape[-1]), dim=-1)
        return order.gather(-1, _sample(values, top_p, 0, gen))
    probs = torch.softmax(logits, dim=-1)
    if top_p < 1:
        sorted_p, order = probs.sort(dim=-1, descending=True)
        keep = sorted_p.cumsum(-1) - sorted_p < top_p
        sorted_p = sorted_p * keep
        choice = torch.multinomial(sorted_p / sorted_p.sum(-1, keepdim=True), 1, generator=gen)
        return order.gather(-1, choice)
    return torch.multinomial(probs, 1, generator=gen)


#: Self-generation styles: LLM-QAT's random first token, or the teacher's answers to writing prompts.
STYLES = ("random-start", "essays")


def self_generated_dataset(teacher, tokenizer, num_sequences: int = 256, seq_len: int = 256, *,
                           style: str = "essays", cache_dir: str | None = None, progress: bool = True,
                           **settings) -> TokenBlocks:
    """Teacher self-generated :class:`TokenBlocks`, cached on disk.

    ``style="random-start"`` samples from a random first token (:func:`generate_self_data`); ``"essays"`` keeps the
    teacher's answers to writing prompts (:func:`generate_prompted_data`), ordinary English prose. ``settings`` are
    the keyword arguments of that function. A cache written for more sequences with the same settings is reused (its
    first ``num_sequences`` rows).
    """
    if style not in STYLES:
        raise ValueError(f"style: got {style!r}; allowed: {', '.join(map(repr, STYLES))}")
    common = {"temperature": 1.0, "top_p": 0.95, "top_k": 0, "batch_size": 16, "seed": 0, "dtype": None}
    if style == "random-start":
        generate, settings = generate_self_data, {"greedy_tokens": 3, **common, **settings}
        keyed = settings  # the key that caches written before styles existed were stored under
    else:
        if "prompts" in settings:
            raise ValueError("prompts: the cached 'essays' style uses the built-in prompts; call "
                             "generate_prompted_data(..., prompts=...) and wrap the result in TokenBlocks instead")
        generate, settings = generate_prompted_data, {"max_new_tokens": 512, **common, **settings}
        keyed = {"style": style, **settings}
    key = hashlib.sha256(json.dumps({"teacher": model_fingerprint(teacher), "seq_len": seq_len, **keyed},
                                    sort_keys=True).encode()).hexdigest()[:20]
    folder = os.path.join(cache_dir or cache_root(), "selfgen")
    os.makedirs(folder, exist_ok=True)
    with file_lock(os.path.join(folder, f".{key}.lock")):
        best = _cached(folder, key, num_sequences)
        if best is None:
            blocks = generate(teacher, tokenizer, num_sequences, seq_len, progress=progress, **settings)
            path = os.path.join(folder, f"{key}-{num_sequences}.pt")
            torch.save(blocks, path + ".tmp")
            os.replace(path + ".tmp", path)
        else:
            blocks = torch.load(best, weights_only=True)[:num_sequences]
    return TokenBlocks(blocks)


def _cached(folder: str, key: str, num_sequences: int) -> str | None:
    sizes = []
    for name in os.listdir(folder):
        if name.startswith(key + "-") and name.endswith(".pt"):
            n = int(name[len(key) + 1 : -3])
            if n >= num_sequences:
                sizes.append((n, os.path.join(folder, name)))
    return min(sizes)[1] if sizes else None

