"""Human-written English text without the Hub: Wikipedia articles and news stories from a PyPI package.

The wheel of ``gensim`` (pinned below) carries, as test data, a shortened Wikipedia XML dump (101 articles, from
"Anarchism" to "Azerbaijan": ~435k words of prose once the markup is stripped) and the Lee corpus (300 Australian news
stories, ~60k words). :func:`real_text_files` downloads that wheel once with pip (``--no-deps``; gensim is never
installed or imported), converts both to UTF-8 text files in the cache and returns their paths. Later calls return
the cached files at once. The text is never committed to the repository. Wikipedia text is CC BY-SA.

    python -m hf_onebit.real_text          # prints the two paths (downloads ~28 MB once)
"""

from __future__ import annotations

import bz2
import io
import os
import zipfile

from .real_model import cache_root, file_lock, pip_wheel

PACKAGE = "gensim==4.4.0"
_DATA = "gensim/test/test_data/"
WIKI_MEMBER = _DATA + "enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"
NEWS_MEMBER = _DATA + "lee_background.cor"
#: The files written: the Wikipedia articles' plain text, the news stories (one per line, as shipped).
FILES = ("enwiki-sample.txt", "lee-news.txt")


def _write(path: str, text: str) -> None:
    with open(path + ".tmp", "w", encoding="utf-8") as fh:
        fh.write(text)
    os.replace(path + ".tmp", path)


def convert_wheel(wheel: str, folder: str) -> list[str]:
    """Write the two text files of :data:`FILES` into ``folder`` from a gensim wheel; return their paths."""
    from .training.wikitext import dump_articles

    os.makedirs(folder, exist_ok=True)
    wiki, news = (os.path.join(folder, name) for name in FILES)
    with zipfile.ZipFile(wheel) as zf:
        xml = io.BytesIO(bz2.decompress(zf.read(WIKI_MEMBER)))  # ~6 MB: parsed in memory
        stories = zf.read(NEWS_MEMBER).decode("utf-8")
    articles = [f"{title}\n\n{text}" for title, text in dump_articles(xml)]
    _write(wiki, "\n\n".join(articles) + "\n")
    _write(news, stories)
    return [wiki, news]


def real_text_files(cache_dir: str | None = None) -> list[str]:
    """Paths of the cached Wikipedia and news text files (built once, see the module docstring)."""
    root = cache_dir or cache_root()
    folder = os.path.join(root, "text")
    paths = [os.path.join(folder, name) for name in FILES]
    if all(os.path.exists(p) for p in paths):
        return paths
    with file_lock(os.path.join(root, ".text.lock")):
        if not all(os.path.exists(p) for p in paths):
            wheel = pip_wheel(PACKAGE, "gensim-4.4.0-*.whl", os.path.join(root, "downloads"),
                              "its test data: Wikipedia articles, news; ~28 MB", "--only-binary=:all:")
            convert_wheel(wheel, folder)
    return paths


def main() -> None:
    print("\n".join(real_text_files()))


if __name__ == "__main__":
    main()
