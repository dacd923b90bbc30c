"""The held-out English texts: four kinds of writing, each split into a validation part and a test part.

| domain | source (pinned file, see :mod:`hf_onebit.files.registry`) | documents |
|---|---|---|
| ``wiki`` | English Wikipedia articles in the ``gensim`` 4.4.0 wheel's test data (CC BY-SA): every 8th article | articles |
| ``news`` | the Lee corpus of Australian news stories in the same wheel (never used for training) | stories |
| ``fiction`` | *Botchan* by Natsume Soseki, English translation (Project Gutenberg), in the ``sentencepiece`` 0.2.3 sdist | chapters |
| ``technical`` | the reStructuredText documentation of ``docutils`` 0.23 (public domain) | files |

Each domain's documents are dealt in order to the two splits, a document to ``test`` while it holds at most twice the
characters of ``val``: about a third of the text is *validation* (choose settings on it) and two thirds *test* (report
on it, never tune on it). No document is in both, and none is in any training text hf_onebit builds
(:mod:`hf_onebit.fixtures.real_text` leaves the held-out articles out). The sets are built once, offline after the first
fetch, into ``<cache>/heldout/`` (:data:`VERSION` is part of the file name: results name the version they used).
"""

from __future__ import annotations

import bz2
import io
import json
import os
import re

from ..files.registry import DOCUTILS_SDIST, GENSIM_WHEEL, SENTENCEPIECE_SDIST, cache_root, fetch, file_lock, read_member

#: Version of the held-out sets (change it whenever a source, a selection or the split rule changes).
VERSION = 1
DOMAINS = ("wiki", "news", "fiction", "technical")
SPLITS = ("val", "test")

WIKI_MEMBER = "gensim/test/test_data/enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"
NEWS_MEMBERS = ("gensim/test/test_data/lee_background.cor", "gensim/test/test_data/lee.cor")
FICTION_MEMBER = "sentencepiece-0.2.3/test/botchan.txt"
#: docutils documents used (prose-heavy ones; reference tables and changelogs left out).
TECHNICAL_MEMBERS = tuple(f"docutils-0.23/docs/{name}.rst" for name in (
    "howto/security", "howto/i18n", "howto/rst-roles", "howto/rst-directives", "user/rst/quickstart", "user/links",
    "user/smartquotes", "user/tools", "user/html", "user/latex", "user/slide-shows", "dev/policies", "dev/testing",
    "dev/hacking", "peps/pep-0256", "peps/pep-0257", "peps/pep-0258", "peps/pep-0287",
))
#: Wikipedia articles at these positions of the dump (0-based) are held out; the rest may be used for training.
WIKI_HELDOUT_EVERY, WIKI_HELDOUT_OFFSET = 8, 5


def is_heldout_article(index: int) -> bool:
    """Whether the ``index``-th article of the gensim Wikipedia sample belongs to the held-out sets."""
    return index % WIKI_HELDOUT_EVERY == WIKI_HELDOUT_OFFSET


def wiki_articles(cache_dir: str | None = None) -> list[tuple[str, str]]:
    """``(title, plain text)`` of every article of the gensim Wikipedia sample, in dump order."""
    from ..training.wikitext import dump_articles

    xml = io.BytesIO(bz2.decompress(read_member(fetch(GENSIM_WHEEL, cache_dir), WIKI_MEMBER)))  # ~6 MB, parsed in memory
    return list(dump_articles(xml))


def _wiki(cache_dir) -> list[str]:
    return [f"{title}\n\n{text}" for i, (title, text) in enumerate(wiki_articles(cache_dir)) if is_heldout_article(i)]


def _news(cache_dir) -> list[str]:
    wheel = fetch(GENSIM_WHEEL, cache_dir)
    stories = []
    for member in NEWS_MEMBERS:
        raw = read_member(wheel, member)
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:  # lee.cor is Latin-1 (a pound sign)
            text = raw.decode("latin-1")
        stories += [line.strip() for line in text.splitlines() if line.strip()]
    return stories


def _fiction(cache_dir) -> list[str]:
    text = read_member(fetch(SENTENCEPIECE_SDIST, cache_dir), FICTION_MEMBER).decode("utf-8-sig").replace("\r\n", "\n")
    body = text[text.index("CHAPTER I\n"):text.index("*** END OF THIS PROJECT GUTENBERG")]
    chapters = re.split(r"\n(?=CHAPTER [IVXL]+\.?\n)", body)
    return [chapter.strip() for chapter in chapters if chapter.strip()]


def _technical(cache_dir) -> list[str]:
    sdist = fetch(DOCUTILS_SDIST, cache_dir)
    return [read_member(sdist, member).decode("utf-8").strip() for member in TECHNICAL_MEMBERS]


_BUILDERS = {"wiki": _wiki, "news": _news, "fiction": _fiction, "technical": _technical}


def split_documents(documents: list[str]) -> dict[str, list[str]]:
    """Deal ``documents`` in order: to ``test`` while it holds at most twice the characters of ``val``, else ``val``."""
    out: dict[str, list[str]] = {"val": [], "test": []}
    size = {"val": 0, "test": 0}
    for doc in documents:
        split = "test" if size["test"] <= 2 * size["val"] else "val"
        out[split].append(doc)
        size[split] += len(doc)
    return out


def heldout_path(cache_dir: str | None = None) -> str:
    return os.path.join(cache_dir or cache_root(), "heldout", f"heldout-v{VERSION}.json")


def heldout_documents(cache_dir: str | None = None) -> dict[str, dict[str, list[str]]]:
    """``{domain: {"val": [documents], "test": [documents]}}``, built once and cached (see the module docstring)."""
    path = heldout_path(cache_dir)
    if not os.path.exists(path):
        with file_lock(path + ".lock"):
            if not os.path.exists(path):
                # a document that occurs twice (the Lee corpus repeats some stories) is kept once
                sets = {domain: split_documents(list(dict.fromkeys(build(cache_dir))))
                        for domain, build in _BUILDERS.items()}
                with open(path + ".tmp", "w", encoding="utf-8") as fh:
                    json.dump({"version": VERSION, "domains": sets}, fh)
                os.replace(path + ".tmp", path)
    with open(path, encoding="utf-8") as fh:
        data = json.load(fh)
    if data.get("version") != VERSION or set(data.get("domains", {})) != set(DOMAINS):
        raise ValueError(f"{path}: not a version-{VERSION} held-out set; delete it to rebuild")
    return data["domains"]


def heldout_text(domain: str, split: str, cache_dir: str | None = None) -> str:
    """One domain's split as one text (documents separated by a blank line)."""
    if domain not in DOMAINS:
        raise ValueError(f"domain: got {domain!r}; allowed: one of {DOMAINS}")
    if split not in SPLITS:
        raise ValueError(f"split: got {split!r}; allowed: one of {SPLITS}")
    return "\n\n".join(heldout_documents(cache_dir)[domain][split])
