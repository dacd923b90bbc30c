"""Human-written English training text without the Hub: Wikipedia articles from a pinned PyPI file.

The ``gensim`` 4.4.0 wheel (:data:`hf_onebit.registry.GENSIM_WHEEL`) carries, as test data, a shortened Wikipedia XML
dump (101 articles, from "Anarchism" to "Azerbaijan"). :func:`real_text_files` fetches that wheel once (hash-checked;
gensim is never installed or imported), converts the articles that are **not** held out for evaluation
(:func:`hf_onebit.eval.corpora.is_heldout_article`: every 8th one is) to a UTF-8 text file in the cache and returns
its path. The wheel's news stories are held out entirely (the ``news`` evaluation domain). Later calls return the
cached file at once. The text is never committed to the repository. Wikipedia text is CC BY-SA.

    python -m hf_onebit.real_text          # prints the path (fetches ~28 MB once)
"""

from __future__ import annotations

import os

from .registry import cache_root, file_lock

#: The file written: the training articles' plain text (held-out articles excluded).
FILES = ("enwiki-train-v1.txt",)


def _write(path: str, text: str) -> None:
    with open(path + ".tmp", "w", encoding="utf-8") as fh:
        fh.write(text)
    os.replace(path + ".tmp", path)


def training_articles(cache_dir: str | None = None) -> list[str]:
    """The Wikipedia articles that may be trained on (``"title\\n\\ntext"``), in dump order."""
    from .eval.corpora import is_heldout_article, wiki_articles

    return [f"{title}\n\n{text}" for i, (title, text) in enumerate(wiki_articles(cache_dir)) if not is_heldout_article(i)]


def real_text_files(cache_dir: str | None = None) -> list[str]:
    """Paths of the cached training text files (built once, see the module docstring)."""
    root = cache_dir or cache_root()
    folder = os.path.join(root, "text")
    paths = [os.path.join(folder, name) for name in FILES]
    if all(os.path.exists(p) for p in paths):
        return paths
    with file_lock(os.path.join(root, ".text.lock")):
        if not all(os.path.exists(p) for p in paths):
            os.makedirs(folder, exist_ok=True)
            _write(paths[0], "\n\n".join(training_articles(cache_dir)) + "\n")
    return paths


def main() -> None:
    print("\n".join(real_text_files()))


if __name__ == "__main__":
    main()
