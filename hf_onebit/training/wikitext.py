"""Plain text from MediaWiki markup: articles of a Wikipedia XML dump as prose a tokenizer can train on.

Only what distillation text needs: templates, tables, references, comments, math and media are dropped; internal
links keep their label, external links their caption; headings become their own lines; list markers go. The result is
not a faithful rendering (a template that produced words, e.g. a unit conversion, leaves a gap) but every sentence of
the article body is kept. Sections after the body ("See also", "References", ...) are cut.
"""

from __future__ import annotations

import html
import re
import xml.etree.ElementTree as ET
from typing import IO, Iterator

#: Headings after which an article has no more body text.
TRAILING_SECTIONS = ("see also", "references", "external links", "further reading", "notes", "bibliography",
                     "sources", "citations", "footnotes", "notes and references")
_MEDIA_LINK = re.compile(r"\[\[(?:File|Image|Category|Media|[a-z]{2,3}(?:-[a-z]+)?):", re.IGNORECASE)
_BLOCK_TAGS = re.compile(r"<(math|gallery|timeline|table|imagemap|score|syntaxhighlight|source|pre)\b[^>]*>.*?</\1>",
                         re.DOTALL | re.IGNORECASE)
_HEADING = re.compile(r"^(=+)\s*(.*?)\s*\1$")


def _drop_balanced(text: str, opener: str, closer: str) -> str:
    """``text`` without every (possibly nested) ``opener ... closer`` span; an unclosed span runs to the end."""
    out, depth, i, n = [], 0, 0, len(text)
    start = 0
    while i < n:
        if text.startswith(opener, i):
            if depth == 0:
                out.append(text[start:i])
            depth, i = depth + 1, i + len(opener)
        elif depth and text.startswith(closer, i):
            depth, i = depth - 1, i + len(closer)
            start = i
        else:
            i += 1
    if depth == 0:
        out.append(text[start:])
    return "".join(out)


def _drop_media_links(text: str) -> str:
    """Remove ``[[File:...]]``, ``[[Category:...]]`` and interlanguage links, including links nested in captions."""
    out, i = [], 0
    while (m := _MEDIA_LINK.search(text, i)) is not None:
        out.append(text[i : m.start()])
        depth, j = 0, m.start()
        while j < len(text):
            if text.startswith("[[", j):
                depth, j = depth + 1, j + 2
            elif text.startswith("]]", j):
                depth, j = depth - 1, j + 2
                if depth == 0:
                    break
            else:
                j += 1
        i = j
    out.append(text[i:])
    return "".join(out)


def _links_to_text(text: str) -> str:
    text = re.sub(r"\[\[[^\]|]*\|([^\]]*)\]\]", r"\1", text)  # [[target|label]] -> label
    text = re.sub(r"\[\[([^\]]*)\]\]", r"\1", text)  # [[target]] -> target
    text = re.sub(r"\[(?:https?:)?//[^\s\]]+ ([^\]]*)\]", r"\1", text)  # [url caption] -> caption
    return re.sub(r"\[(?:https?:)?//[^\]]*\]", "", text)  # bare [url]


def plain_text(wikitext: str) -> str:
    """The prose of one article's wikitext (see the module docstring for what is kept)."""
    t = re.sub(r"<!--.*?-->", "", wikitext, flags=re.DOTALL)
    t = re.sub(r"<ref[^>]*/>", "", t)
    t = re.sub(r"<ref[^>]*>.*?</ref>", "", t, flags=re.DOTALL)
    t = _BLOCK_TAGS.sub("", t)
    t = _drop_balanced(t, "{{", "}}")
    t = _drop_balanced(t, "{|", "|}")
    t = _links_to_text(_drop_media_links(t))
    t = re.sub(r"<[^>]+>", "", t)
    t = html.unescape(t).replace("'''", "").replace("''", "")
    lines = []
    for line in t.split("\n"):
        s = line.strip()
        heading = _HEADING.match(s)
        if heading:
            if heading.group(2).lower() in TRAILING_SECTIONS:
                break
            lines += ["", heading.group(2)]
        elif not s.startswith(("|", "!", "{", "}", "__")):
            lines.append(re.sub(r"^[*#:;]+\s*", "", s))
    t = re.sub(r"[ \t]+", " ", "\n".join(lines))
    t = re.sub(r" ([,.;:])", r"\1", t)
    t = re.sub(r"\(\s*[,;]?\s*\)", "", t)  # brackets whose content was a template
    return re.sub(r"\n{3,}", "\n\n", t).strip()


def dump_articles(source: str | IO[bytes]) -> Iterator[tuple[str, str]]:
    """``(title, plain text)`` of every article (namespace 0, no redirect, no disambiguation page) of an XML dump
    (a path or a binary file object)."""
    root = ET.parse(source).getroot()
    ns = root.tag.split("}")[0] + "}" if root.tag.startswith("{") else ""
    for page in root.iter(f"{ns}page"):
        title = page.findtext(f"{ns}title") or ""
        body = page.findtext(f"{ns}revision/{ns}text") or ""
        if (page.findtext(f"{ns}ns") != "0" or page.find(f"{ns}redirect") is not None
                or body.lstrip().lower().startswith("#redirect") or "(disambiguation)" in title):
            continue
        text = plain_text(body)
        if text:
            yield title, text
