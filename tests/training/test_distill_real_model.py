"""A handful of distillation steps on the real SmolLM2-135M-Instruct (cached checkpoint; marked real_model)."""

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, Trainer

from distill_utils import train_args
from hf_onebit import OneBitConfig
from hf_onebit.training import OneBitDistillationCallback, TokenBlocks, generate_self_data, onebit_optimizer

pytestmark = pytest.mark.real_model


def test_progressive_steps_on_smollm2_pack_and_reload(tmp_path):
    from hf_onebit.fixtures.real_model import smollm2_checkpoint

    path = smollm2_checkpoint()
    tok = AutoTokenizer.from_pretrained(path)
    teacher = AutoModelForCausalLM.from_pretrained(path)
    student = AutoModelForCausalLM.from_pretrained(path, quantization_config=OneBitConfig(training=True, act_bits=0))
    data = TokenBlocks(generate_self_data(teacher, tok, 4, 24, batch_size=4, progress=False))
    cb = OneBitDistillationCallback(teacher, recipe="progressive", init_steps=1, phases=2)
    trainer = Trainer(model=student, args=train_args(str(tmp_path / "out"), 3, per_device_train_batch_size=2),
                      train_dataset=data, callbacks=[cb], optimizers=(onebit_optimizer(student), None))
    trainer.train()
    logs = [h for h in trainer.state.log_history if "loss" in h]
    assert len(logs) == 3 and all(torch.isfinite(torch.tensor(h["loss"])) for h in logs)
    assert logs[-1]["t"] == pytest.approx(cb.recipe.schedule.temperature(2)) and logs[-1]["distill_kl"] > 0
    x = data.blocks[:2]
    with torch.no_grad():
        expected = student(x).logits
    student.save_pretrained(tmp_path / "packed")
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "packed")
    with torch.no_grad():
        got = reloaded(x).logits
    # float16 scale storage: the packed model equals the trained one up to fp16 rounding of g and h
    assert torch.nn.functional.cosine_similarity(got.flatten(), expected.flatten(), dim=0) > 0.999
    assert (got.argmax(-1) == expected.argmax(-1)).float().mean() > 0.95
