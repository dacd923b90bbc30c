"""Model cards written by hf_onebit.save_pretrained / push_to_hub (upload mocked), card facts, checkpoint compatibility."""

import json
import os
from unittest import mock

import pytest
import torch
from huggingface_hub import HfApi
from transformers import AutoModelForCausalLM

import hf_onebit
from hf_onebit.interop import hub
from hf_onebit.formats.packing import METADATA_KEY

from ecosystem_helpers import onebit_checkpoint


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    return onebit_checkpoint(str(tmp_path_factory.mktemp("hub")))


def front_matter(card: str) -> str:
    assert card.startswith("---\n")
    return card.split("---\n")[1]


def test_save_pretrained_writes_a_model_card(dirs, tmp_path):
    model = AutoModelForCausalLM.from_pretrained(dirs[0], quantization_config=hf_onebit.OneBitConfig())
    # recorded while quantizing, without the local directory layout (config.json is uploaded by push)
    assert hub.get_card_info(model)["teacher"] == f"{os.path.basename(dirs[0])} (local checkpoint)"
    hub.set_card_info(model, teacher="HuggingFaceTB/SmolLM2-135M-Instruct", recipe="OneBit KD",
                      distillation={"tokens": 2_000_000, "steps": 500, "time_s": 1830},
                      perplexity={"value": 48.25, "teacher_value": 12.9}, run="nightly-3")
    hf_onebit.save_pretrained(model, tmp_path / "out")
    card = (tmp_path / "out" / "README.md").read_text()
    meta = front_matter(card)
    assert "- onebit" in meta and "library_name: transformers" in meta
    assert "base_model: HuggingFaceTB/SmolLM2-135M-Instruct" in meta
    assert "import hf_onebit" in card
    assert "bits/weight" in card and "weights on disk" in card
    assert "2,000,000 tokens, 500 steps, 1,830 seconds" in card
    assert "48.25 (teacher: 12.9)" in card and "| run | nightly-3 |" in card
    assert "svid" in card and "layout v1" in card
    # the card's bits/weight is the measured one
    bits = hf_onebit.eval.size_report(model).bits_per_quantized_weight
    assert f"{bits:.4f} bits/weight" in card


def test_card_facts_survive_reload_and_local_teachers_are_not_base_models(dirs, tmp_path):
    model = AutoModelForCausalLM.from_pretrained(dirs[1])
    hub.set_card_info(model, teacher="/some/private/path/my-teacher", perplexity=61.0)
    hf_onebit.save_pretrained(model, tmp_path / "a")
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "a")
    assert hub.get_card_info(reloaded) == {"teacher": "/some/private/path/my-teacher", "perplexity": 61.0}
    hf_onebit.save_pretrained(reloaded, tmp_path / "b")
    card = (tmp_path / "b" / "README.md").read_text()
    assert "base_model" not in front_matter(card)
    assert "my-teacher (local checkpoint)" in card and "/some/private" not in card
    assert "| perplexity | 61 |" in card
    hub.set_card_info(reloaded, perplexity=None)
    assert "perplexity" not in hub.get_card_info(reloaded)
    with pytest.raises(TypeError, match="JSON"):
        hub.set_card_info(reloaded, bad=torch.zeros(1))


def test_a_checkpoint_without_facts_says_it_is_not_distilled(dirs, tmp_path):
    model = AutoModelForCausalLM.from_pretrained(dirs[1])
    hf_onebit.save_pretrained(model, tmp_path / "c")
    card = (tmp_path / "c" / "README.md").read_text()
    assert "No perplexity was recorded" in card and "| recipe | none recorded |" in card
    # the teacher recorded while quantizing came back from config.json
    assert "| teacher | onebit-float (local checkpoint) |" in card


def test_a_user_written_readme_is_kept(dirs, tmp_path):
    model = AutoModelForCausalLM.from_pretrained(dirs[1])
    os.makedirs(tmp_path / "d")
    (tmp_path / "d" / "README.md").write_text("# my own card\n")
    hf_onebit.save_pretrained(model, tmp_path / "d")
    assert (tmp_path / "d" / "README.md").read_text() == "# my own card\n"
    hf_onebit.save_pretrained(model, tmp_path / "e")
    hf_onebit.save_pretrained(model, tmp_path / "e")  # our own card is refreshed
    assert hub.CARD_MARKER in (tmp_path / "e" / "README.md").read_text()


def test_the_model_class_and_instance_keep_transformers_methods(dirs, tmp_path):
    """No method is replaced: the model's own save_pretrained saves weights and config without a card; quantized
    models carry the onebit tags for transformers' own push_to_hub."""
    model = AutoModelForCausalLM.from_pretrained(dirs[0], quantization_config=hf_onebit.OneBitConfig())
    assert "save_pretrained" not in vars(model) and "push_to_hub" not in vars(model)
    assert set(hub.CARD_TAGS) <= set(model.model_tags)
    model.save_pretrained(tmp_path / "plain")
    assert "README.md" not in os.listdir(tmp_path / "plain")
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "plain")
    assert hub.get_card_info(reloaded)["teacher"] == f"{os.path.basename(dirs[0])} (local checkpoint)"
    hf_onebit.save_pretrained(reloaded, tmp_path / "plain")  # the card can be added later
    assert hub.CARD_MARKER in (tmp_path / "plain" / "README.md").read_text()


class FakeHub:
    """Stands in for the Hub: records the folder that would be uploaded."""

    def __init__(self):
        self.uploads = []

    def create_repo(self, api, repo_id, **kwargs):
        return mock.Mock(repo_id=repo_id)

    def upload_folder(self, api, *, repo_id, folder_path, **kwargs):
        files = {f: open(os.path.join(folder_path, f), "rb").read() for f in os.listdir(folder_path)}
        self.uploads.append({"repo_id": repo_id, "files": files, **kwargs})
        return f"commit-{len(self.uploads)}"

    def patch(self):
        return mock.patch.multiple(HfApi, create_repo=lambda api, repo_id, **kw: self.create_repo(api, repo_id, **kw),
                                   upload_folder=lambda api, **kw: self.upload_folder(api, **kw))


def test_push_to_hub_uploads_weights_config_and_card(dirs):
    from hf_onebit.fixtures.tiny_model import byte_tokenizer

    model = AutoModelForCausalLM.from_pretrained(dirs[1])
    fake = FakeHub()
    with fake.patch():
        assert hf_onebit.push_to_hub(model, "me/tiny-1bit", tags=["demo"], tokenizer=byte_tokenizer(),
                                     commit_message="first") == "commit-1"
    upload = fake.uploads[0]
    assert upload["repo_id"] == "me/tiny-1bit" and upload["commit_message"] == "first"
    assert {"README.md", "config.json", "model.safetensors", "tokenizer.json"} <= set(upload["files"])
    card = upload["files"]["README.md"].decode()
    assert 'from_pretrained("me/tiny-1bit")' in card and "- onebit" in card and "- demo" in card
    config = json.loads(upload["files"]["config.json"])
    assert config["quantization_config"]["quant_method"] == "onebit"


def test_save_pretrained_with_push_to_hub_uploads_the_card(dirs, tmp_path):
    model = AutoModelForCausalLM.from_pretrained(dirs[1])
    fake = FakeHub()
    with fake.patch():
        hf_onebit.save_pretrained(model, tmp_path / "f", push_to_hub=True, repo_id="me/other")
    assert fake.uploads[0]["repo_id"] == "me/other"
    assert hub.CARD_MARKER in fake.uploads[0]["files"]["README.md"].decode()


def test_checkpoint_without_format_version_loads_as_version_1(dirs, tmp_path):
    """A checkpoint written before the format version was recorded (no config field, no file metadata) is v1."""
    from safetensors.torch import load_file, save_file

    old = tmp_path / "old"
    model = AutoModelForCausalLM.from_pretrained(dirs[1])
    model.save_pretrained(old)
    config = json.loads((old / "config.json").read_text())
    del config["quantization_config"]["format_version"]
    (old / "config.json").write_text(json.dumps(config))
    tensors = load_file(old / "model.safetensors")
    save_file(tensors, old / "model.safetensors", metadata={"format": "pt"})
    reloaded = AutoModelForCausalLM.from_pretrained(old)
    assert reloaded.config.quantization_config.format_version == 1
    ids = torch.randint(0, 256, (1, 5))
    assert torch.equal(reloaded(ids).logits, model(ids).logits)
    reloaded.save_pretrained(tmp_path / "new")  # re-saving writes the current version
    from safetensors import safe_open

    with safe_open(tmp_path / "new" / "model.safetensors", "pt") as fh:
        assert fh.metadata()[METADATA_KEY] == "1"


def test_a_ternary_model_card_names_its_format(dirs, tmp_path):
    model = AutoModelForCausalLM.from_pretrained(dirs[0], quantization_config=hf_onebit.OneBitConfig(weight_format="ternary"))
    hf_onebit.save_pretrained(model, tmp_path / "ternary")
    card = (tmp_path / "ternary" / "README.md").read_text()
    assert "ternary (1.58-bit) quantized causal language model" in card
    assert "ternary layers" in card and "2-bit codes" in card and "BitNet b1.58 codes" in card
    bits = hf_onebit.eval.size_report(model).bits_per_quantized_weight
    assert bits > 2.0 and f"{bits:.4f} bits/weight" in card
    assert "1-bit layers" not in card
