"""Tiny random causal LMs with a byte-level tokenizer, built offline in a second.

Examples (``--tiny``), tests and the docs use them to exercise the whole stack - quantize, fine-tune, save, reload,
push - without the Hub or a download. Their weights are random: the text they generate is noise.
"""

from __future__ import annotations

import os

import torch

#: 256 byte tokens + <s> + </s> + <pad>
TINY_VOCAB_SIZE = 259


def byte_tokenizer():
    """A ``PreTrainedTokenizerFast`` over single bytes (GPT-2 byte alphabet, no merges) with BOS/EOS/PAD."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {ch: i for i, ch in enumerate(sorted(alphabet))}
    for special in ("<s>", "</s>", "<pad>"):
        vocab[special] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>", model_max_length=256
    )


def tiny_llama_config(hidden: int = 64, intermediate: int = 96, layers: int = 2, vocab_size: int = TINY_VOCAB_SIZE,
                      head_dim: int = 16):
    from transformers import LlamaConfig

    return LlamaConfig(
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=head_dim,
        vocab_size=vocab_size,
        max_position_embeddings=256,
        bos_token_id=256,
        eos_token_id=257,
        pad_token_id=258,
        tie_word_embeddings=False,
    )


def tiny_llama(seed: int = 0, **config_kwargs):
    """A random tiny ``LlamaForCausalLM`` (float32, eval mode)."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_llama_config(**config_kwargs))
    return model.eval()


def save_tiny_llama(path: str, seed: int = 0, **config_kwargs) -> str:
    """Save a random tiny float Llama plus the byte tokenizer to ``path`` (a normal HF checkpoint); return ``path``."""
    os.makedirs(path, exist_ok=True)
    tiny_llama(seed, **config_kwargs).save_pretrained(path)
    byte_tokenizer().save_pretrained(path)
    return path
