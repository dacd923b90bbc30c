"""Wikitext -> plain text, and the offline human-written text files built from a (here: synthetic) gensim wheel."""

import bz2
import zipfile

import pytest

from hf_onebit import real_model, real_text
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


def _fake_wheel(path):
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr(real_text.WIKI_MEMBER, bz2.compress(DUMP.encode("utf-8")))
        zf.writestr(real_text.NEWS_MEMBER, "First story.\nSecond story.\n")


def test_real_text_files_built_once_from_the_wheel(tmp_path, monkeypatch):
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    _fake_wheel(downloads / "gensim-4.4.0-cp311-cp311-manylinux_2_28_x86_64.whl")
    wiki, news = real_text.real_text_files(str(tmp_path))
    with open(wiki, encoding="utf-8") as fh:
        assert fh.read() == "Alpha\n\nAlpha is the first letter.\n\nDelta\n\nDelta is a river.\n"
    with open(news, encoding="utf-8") as fh:
        assert fh.read() == "First story.\nSecond story.\n"
    assert not list((tmp_path / "text").glob("*.xml"))  # the decompressed dump is not kept

    def no_download(*a, **k):
        raise AssertionError("the cached files must be reused")

    monkeypatch.setattr(real_text, "convert_wheel", no_download)
    assert real_text.real_text_files(str(tmp_path)) == [wiki, news]


def test_real_text_download_failure_names_the_package(tmp_path, monkeypatch):
    class Failed:
        returncode, stderr = 1, "ERROR: No matching distribution found for gensim==4.4.0"

    monkeypatch.setattr(real_model.subprocess, "run", lambda *a, **k: Failed())
    with pytest.raises(RuntimeError, match=r"could not download gensim==4\.4\.0 with pip \(exit 1\).*No matching"):
        real_text.real_text_files(str(tmp_path))
