"""OneBitConfig(tie_input_scales=True): the g vectors llama.cpp can fold stay equal from quantization through
distillation and reload, so the GGUF export is exact (hf_onebit/integration/tying.py)."""

import pytest
import torch
from torch import nn
from transformers import AutoModelForCausalLM, Trainer

import hf_onebit  # noqa: F401
from distill_utils import load_pair, tiny_teacher_dir, token_data, train_args
from hf_onebit import OneBitConfig
from hf_onebit.interop.gguf.fold import fold_llama, folded_model
from hf_onebit.training import OneBitDistillationCallback, onebit_optimizer
from hf_onebit.integration.tying import scale_groups, tie_input_scales_


def _all_tied(model):
    groups = scale_groups(model)
    assert len(groups) == 3 * model.config.num_hidden_layers  # q/k/v, o_proj heads, gate/up per layer
    return all(all(torch.equal(g[0], x) for x in g[1:]) for g in (grp.vectors() for grp in groups))


def test_quantizing_with_tied_scales_ties_them_and_exports_exactly(tmp_path):
    path = tiny_teacher_dir(str(tmp_path))
    untied = AutoModelForCausalLM.from_pretrained(path, quantization_config=OneBitConfig(act_bits=0))
    tied = AutoModelForCausalLM.from_pretrained(path, quantization_config=OneBitConfig(tie_input_scales=True, act_bits=0))
    assert _all_tied(tied) and not _all_tied(untied)
    ids = torch.randint(tied.config.vocab_size, (1, 24), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        a, b = untied(ids).logits, tied(ids).logits
    assert 0 < (a - b).abs().max() < a.abs().max()  # a different, close approximation of the same teacher
    tensors = fold_llama(tied, 128)  # approximate=False: raises unless every fold is exact
    assert tensors.report.exact
    with torch.no_grad():
        assert (folded_model(tensors, round_scales=False)(ids).logits - b).abs().max() <= 1e-4 * b.abs().max()
    tied.save_pretrained(tmp_path / "saved")
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "saved")
    assert reloaded.config.quantization_config.tie_input_scales is True and _all_tied(reloaded)


def test_distillation_keeps_the_scales_tied(tmp_path):
    path = tiny_teacher_dir(str(tmp_path))
    student, teacher = load_pair(path, tie_input_scales=True)
    before = [v.clone() for grp in scale_groups(student) for v in grp.vectors()]
    trainer = Trainer(model=student, args=train_args(str(tmp_path / "run"), max_steps=6),
                      train_dataset=token_data(vocab=student.config.vocab_size),
                      callbacks=[OneBitDistillationCallback(teacher, recipe="progressive", init_steps=2, phases=2)],
                      optimizers=(onebit_optimizer(student, lr=1e-2), None))
    trainer.train()
    after = [v for grp in scale_groups(student) for v in grp.vectors()]
    assert any(not torch.equal(x, y) for x, y in zip(before, after))  # the scales trained ...
    assert _all_tied(student)  # ... and stayed tied
    student.save_pretrained(tmp_path / "out")
    packed = AutoModelForCausalLM.from_pretrained(tmp_path / "out")
    assert fold_llama(packed, 128).report.exact


def test_tie_refuses_models_without_decoder_layers_and_bad_values():
    with pytest.raises(ValueError, match="tie_input_scales: Sequential has no LLaMA-type decoder layer"):
        hf_onebit.quantize_(nn.Sequential(nn.Linear(8, 8)), OneBitConfig(tie_input_scales=True))
    with pytest.raises(ValueError, match="tie_input_scales: got 'yes'; allowed: True or False"):
        OneBitConfig(tie_input_scales="yes")


def test_tying_an_untied_model_reports_each_layers_change():
    from hf_onebit.fixtures.tiny_model import tiny_llama

    model = hf_onebit.quantize_(tiny_llama(seed=0), OneBitConfig())
    errors = tie_input_scales_(model)
    assert len(errors) == 2 * (3 + 1 + 2) and all(0 < e < 1 for e in errors.values())
    assert _all_tied(model) and tie_input_scales_(model) == {}  # tied: nothing left to change
