"""Shared helpers of the distillation tests: a tiny LLaMA teacher saved as a checkpoint, token data, Trainer args."""

from __future__ import annotations

import os

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM, TrainerCallback, TrainingArguments

import hf_onebit  # noqa: F401  (registers the quantizer)
from hf_onebit import OneBitConfig
from hf_onebit.training import TokenBlocks


def dim_scaled_hidden_reference(student_states, teacher_states, mask: torch.Tensor) -> torch.Tensor:
    """The dim-scaled hidden-state term written out: per layer after the embeddings, the rows ``mask`` scores, every
    dimension divided by the teacher's median ``|h|`` over them, the squared distance of the L2-normalised states
    summed, and the mean over layers."""
    total = 0.0
    for a, b in zip(student_states[1:], teacher_states[1:]):
        a, b = a[:, :-1][mask], b[:, :-1][mask]
        scale = b.abs().median(dim=0).values
        total = total + (F.normalize(a / scale, dim=-1) - F.normalize(b / scale, dim=-1)).pow(2).sum()
    return total / (len(student_states) - 1)


def tiny_teacher_dir(root: str, seed: int = 0, hidden: int = 48, layers: int = 2, vocab: int = 97) -> str:
    """Save a tiny random LLaMA (a few sizes not multiples of 8) and return its folder."""
    path = os.path.join(root, f"teacher-{seed}-{hidden}-{layers}")
    if os.path.exists(os.path.join(path, "config.json")):
        return path
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=2 * hidden + 4, num_hidden_layers=layers,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                         tie_word_embeddings=True, initializer_range=0.15)
    model = LlamaForCausalLM(config)
    model.save_pretrained(path)
    return path


def load_pair(path: str, **config_kwargs):
    # exact activations unless asked: the tests compare the packed student with its latent form
    config = OneBitConfig(training=True, **{"act_bits": 0, **config_kwargs})
    student = AutoModelForCausalLM.from_pretrained(path, quantization_config=config)
    teacher = AutoModelForCausalLM.from_pretrained(path)
    return student, teacher


def token_data(n: int = 32, seq_len: int = 16, vocab: int = 97, seed: int = 0) -> TokenBlocks:
    g = torch.Generator().manual_seed(seed)
    return TokenBlocks(torch.randint(vocab, (n, seq_len), generator=g))


def train_args(out: str, max_steps: int, **kwargs) -> TrainingArguments:
    base = dict(output_dir=out, max_steps=max_steps, per_device_train_batch_size=4, learning_rate=1e-3,
                lr_scheduler_type="constant", logging_steps=1, save_strategy="no", report_to=[], disable_tqdm=True,
                seed=0, data_seed=0, use_cpu=True, dataloader_num_workers=0)
    base.update(kwargs)
    return TrainingArguments(**base)


class StopAt(TrainerCallback):
    """Stops a Trainer run after optimizer step ``step`` (an interrupted run, to resume from its checkpoint)."""

    def __init__(self, step):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            control.should_training_stop = True


def assert_resumed_like_uninterrupted(full, full_student, resumed, resumed_student, last_losses: int) -> None:
    """The resumed run logged the uninterrupted run's last ``last_losses`` losses and ends with the same model."""
    loss_full = [h["loss"] for h in full.state.log_history if "loss" in h]
    loss_res = [h["loss"] for h in resumed.state.log_history if "loss" in h]
    assert loss_res[-last_losses:] == pytest.approx(loss_full[-last_losses:], rel=1e-3)
    x = token_data(4, 16, seed=9).blocks
    with torch.no_grad():
        torch.testing.assert_close(resumed_student(x).logits, full_student(x).logits, rtol=1e-3, atol=1e-3)
