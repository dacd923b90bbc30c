"""Self-generated distillation data in the "essays" style: prompts, batched answers, the stream and its cache."""

import pytest
import torch

from hf_onebit.fixtures.tiny_model import byte_tokenizer, tiny_llama
from hf_onebit.training import data as data_mod
from hf_onebit.training.data import _prompt_ids, _sample_answers, generate_prompted_data, self_generated_dataset
from hf_onebit.training.prompts import FORMS, SUBJECTS, essay_prompts

PROMPTS = ["x", "yy", "zzz", "w", "v", "u", "t", "s", "r", "q", "p", "o"]  # 12 answers of <= 7 tokens + EOS
GREEDY = {"temperature": 1.0, "top_p": 1.0, "top_k": 1}


def _chat_tokenizer():
    tok = byte_tokenizer()
    tok.chat_template = "{% for m in messages %}<s>user: {{ m['content'] }}\n{% endfor %}assistant: "
    return tok


def test_essay_prompts_are_distinct_seeded_and_cycle():
    pairs = len(FORMS) * len(SUBJECTS)
    first = essay_prompts(pairs)
    assert essay_prompts() == first  # the default: one prompt per pair
    assert len(set(first)) == pairs and all(p.endswith(".") for p in first)
    assert essay_prompts(10) == first[:10] and essay_prompts(10, seed=1) != first[:10]
    assert essay_prompts(pairs + 3)[pairs:] == first[:3]
    assert not any("drinking water" in p for p in first)
    with pytest.raises(ValueError, match="n: got 0"):
        essay_prompts(0)


def test_left_padded_batch_answers_equal_one_prompt_at_a_time():
    model, tok = tiny_llama(seed=3), _chat_tokenizer()
    prompts = [_prompt_ids(tok, p) for p in ("a", "a much longer prompt than the first", "mid length")]
    assert len({len(p) for p in prompts}) == 3 and prompts[0][0] == tok.bos_token_id  # the chat template was used
    never = -1  # an EOS id no sampler returns: every answer runs to max_new_tokens
    batched = _sample_answers(model, prompts, tok.pad_token_id, never, 6, gen=torch.Generator(), **GREEDY)
    alone = [_sample_answers(model, [p], tok.pad_token_id, never, 6, gen=torch.Generator(), **GREEDY)[0]
             for p in prompts]
    assert batched == alone and all(len(a) == 6 for a in batched)
    # the answer stops before the first EOS it samples
    eos = alone[1][3]
    cut = _sample_answers(model, prompts[1:2], tok.pad_token_id, eos, 6, gen=torch.Generator(), **GREEDY)[0]
    assert cut == alone[1][: alone[1].index(eos)]


def test_prompted_stream_is_answers_joined_by_eos_and_reproducible():
    model, tok = tiny_llama(seed=1), _chat_tokenizer()
    blocks = generate_prompted_data(model, tok, 5, 16, prompts=PROMPTS,
                                    max_new_tokens=7, batch_size=4, seed=2, progress=False, **GREEDY)
    assert blocks.shape == (5, 16) and blocks.dtype == torch.long
    stream = blocks.flatten().tolist()
    gaps = [i for i, t in enumerate(stream) if t == tok.eos_token_id]
    assert gaps and all(b - a - 1 <= 7 for a, b in zip([-1] + gaps, gaps))  # answers of at most 7 tokens
    again = generate_prompted_data(model, tok, 5, 16, prompts=PROMPTS,
                                   max_new_tokens=7, batch_size=4, seed=2, progress=False, **GREEDY)
    assert torch.equal(blocks, again)
    with pytest.raises(ValueError, match="pass more prompts"):
        generate_prompted_data(model, tok, 5, 16, prompts=["x"], max_new_tokens=7, progress=False)


def test_prompted_generation_without_a_chat_template_uses_the_bare_prompt():
    tok = byte_tokenizer()
    assert _prompt_ids(tok, "ab") == tok("ab\n\n").input_ids
    blocks = generate_prompted_data(tiny_llama(), tok, 2, 8, max_new_tokens=5, batch_size=3, progress=False)
    assert blocks.shape == (2, 8)


def test_self_generated_styles_have_their_own_cache(tmp_path, monkeypatch):
    model, tok = tiny_llama(), _chat_tokenizer()
    with pytest.raises(ValueError, match="style: got 'prose'; allowed: 'random-start', 'essays'"):
        self_generated_dataset(model, tok, 2, 8, style="prose", cache_dir=str(tmp_path))
    essays = self_generated_dataset(model, tok, 3, 8, style="essays", cache_dir=str(tmp_path), max_new_tokens=4,
                                    progress=False)
    plain = self_generated_dataset(model, tok, 3, 8, style="random-start", cache_dir=str(tmp_path), progress=False)
    assert len(list((tmp_path / "selfgen").glob("*.pt"))) == 2
    assert not torch.equal(essays.blocks, plain.blocks)

    def no_generation(*args, **kwargs):
        raise AssertionError("the cache should have answered")

    monkeypatch.setattr(data_mod, "generate_prompted_data", no_generation)
    again = self_generated_dataset(model, tok, 2, 8, cache_dir=str(tmp_path), max_new_tokens=4, progress=False)
    assert torch.equal(again.blocks, essays.blocks[:2])
    with pytest.raises(ValueError, match="prompts: the cached 'essays' style"):
        self_generated_dataset(model, tok, 2, 8, style="essays", cache_dir=str(tmp_path), prompts=["a"])


def test_the_last_batch_stops_once_the_stream_is_settled_with_the_same_tokens():
    """The answers past the stream's end are not sampled to their end: the stream is the one the full answers give,
    from fewer model calls."""
    model, tok = tiny_llama(seed=1), _chat_tokenizer()
    calls = []
    model.register_forward_hook(lambda *args: calls.append(1))
    settings = {"temperature": 1.0, "top_p": 1.0, "top_k": 0}
    blocks = generate_prompted_data(model, tok, 2, 18, prompts=PROMPTS, max_new_tokens=7, batch_size=4, seed=5,
                                    progress=False, **settings)
    early = len(calls)
    calls.clear()
    stream = []
    for b in range(3):  # the same batches, each answer sampled to its end (EOS or max_new_tokens)
        gen = torch.Generator().manual_seed(5 * 1_000_003 + b)
        prompts = [_prompt_ids(tok, p) for p in PROMPTS[4 * b:4 * b + 4]]
        for answer in _sample_answers(model, prompts, tok.pad_token_id, tok.eos_token_id, 7, gen=gen, **settings):
            stream.extend(answer + [tok.eos_token_id])
        if len(stream) >= 36:
            break
    assert blocks.flatten().tolist() == stream[:36]
    assert early < len(calls)


def test_settled_length_counts_finished_answers_and_the_first_open_one():
    done = torch.tensor([True, False, True])
    assert data_mod.settled_length(10, [[1, 2], [3], [4, 5, 6]], done) == 10 + 3 + 1
    assert data_mod.settled_length(0, [[1], [2]], torch.tensor([True, True])) == 4
