"""``hf-onebit info`` and ``hf-onebit push`` (dry run, and a real push with the upload mocked)."""

import json
import os
from unittest import mock

import pytest
from huggingface_hub import HfApi

from hf_onebit.cli import build_parser, main
from hf_onebit.fixtures.tiny_model import byte_tokenizer

from ecosystem_helpers import onebit_checkpoint


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    float_dir, onebit_dir = onebit_checkpoint(str(tmp_path_factory.mktemp("cli")))
    byte_tokenizer().save_pretrained(onebit_dir)
    return float_dir, onebit_dir


def test_help_lists_info_and_push():
    text = build_parser().format_help()
    assert "info" in text and "push" in text


def test_info_prints_layers_bits_version_and_kernels(dirs, capsys):
    assert main(["info", dirs[1]]) == 0
    out = capsys.readouterr().out
    assert "format version: config 1, weights 1" in out
    rows = {line.split("|")[1].strip(): line for line in out.splitlines() if line.startswith("| ")}
    # tiny llama: q/o 64x64, k/v 32x64 (2 kv heads x 16), mlp 96x64 / 64x96, two layers each
    assert "| 2 " in rows["q_proj"] and "64 x 64" in rows["q_proj"] and "32 x 64" in rows["k_proj"]
    assert "| 14 " in rows["all 1-bit layers"]
    # q_proj: 64*64 bits + 2 fp16 vectors of 64 -> (4096 + 2048) / 4096 = 1.5 bits/weight
    assert rows["q_proj"].rstrip(" |").endswith("1.5")
    assert "kernels: cpu:" in out and "reference" in out
    assert main(["info", dirs[1], "--layers"]) == 0
    assert "model.layers.1.mlp.down_proj" in capsys.readouterr().out


def test_info_on_a_float_checkpoint_says_so(dirs, capsys):
    assert main(["info", dirs[0]]) == 1
    assert "not a 1-bit checkpoint" in capsys.readouterr().out


def test_push_dry_run_writes_the_upload_with_card_facts(dirs, tmp_path, capsys):
    out = tmp_path / "upload"
    assert main(["push", dirs[1], "me/tiny-1bit", "--dry-run", "--out", str(out),
                 "--card", "perplexity=51.5", "--card", "recipe=OneBit KD"]) == 0
    assert "nothing uploaded" in capsys.readouterr().out
    assert {"README.md", "config.json", "model.safetensors", "tokenizer.json"} <= set(os.listdir(out))
    card = (out / "README.md").read_text()
    assert 'from_pretrained("me/tiny-1bit")' in card and "| perplexity | 51.5 |" in card
    assert json.loads((out / "config.json").read_text())["onebit_card"]["recipe"] == "OneBit KD"


def test_push_uploads_with_the_hub_api(dirs):
    uploaded = {}

    def upload_folder(api, *, repo_id, folder_path, **kwargs):
        uploaded.update(repo_id=repo_id, files=sorted(os.listdir(folder_path)), **kwargs)
        return mock.Mock(commit_url="https://example/commit/1")

    with mock.patch.multiple(HfApi, create_repo=lambda api, repo_id, **kw: mock.Mock(repo_id=repo_id),
                             upload_folder=upload_folder):
        assert main(["push", dirs[1], "me/tiny-1bit", "--commit-message", "hello"]) == 0
    assert uploaded["repo_id"] == "me/tiny-1bit" and uploaded["commit_message"] == "hello"
    assert "README.md" in uploaded["files"] and "tokenizer.json" in uploaded["files"]


def test_push_refuses_a_float_checkpoint_and_bad_card_items(dirs, tmp_path):
    with pytest.raises(SystemExit, match="not a 1-bit checkpoint"):
        main(["push", dirs[0], "me/x", "--dry-run", "--out", str(tmp_path / "x")])
    with pytest.raises(SystemExit, match="KEY=VALUE"):
        main(["push", dirs[1], "me/x", "--dry-run", "--card", "novalue"])
