"""Pure text functions: cleaning questions, building and cutting replies."""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from pathlib import PurePosixPath

from tools.text import encodable

from .client import Citation

TRUNCATED = "…（内容过长，已截断）"

# CQ codes that reached the text (string-format OneBot events, copied messages) and the
# official API's inline tags (<@!id>, <@id>, <#channel>, <emoji:id>, <faceType=...>).
_MARKUP_RE = re.compile(r"\[CQ:[^\]]*\]|<(?:@!?\w+|#\d+|emoji:\d+|faceType=[^>]*)>")
_SPACES_RE = re.compile(r"[ \t\u3000\xa0]+")
_BLANK_LINES_RE = re.compile(r"\n\s*\n+")
_NICKNAME_SEPARATORS = " \t\n,，:：、"

_SCHEME_RE = re.compile(r"\b(?:https?|ftp)://", re.IGNORECASE)
# Anything shaped like a host name or file name (word.word); the official API refuses
# messages it takes for links, and refusing costs the whole answer.
_DOMAIN_RE = re.compile(
    r"(?<![A-Za-z0-9-])(?:[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?\.)+[A-Za-z]{2,24}(?![A-Za-z0-9-])"
)
_IPV4_RE = re.compile(r"(?<![\d.])(?:\d{1,3}\.){3}\d{1,3}(?![\d.])")

_SENTENCE_END_RE = re.compile(r"(?<=[。！？!?；;…\n])|(?<=[.])(?=\s)")


def clean_text(text: str) -> str:
    """The question as the service should see it: markup removed, whitespace tidied, and
    nothing that cannot be encoded (an unpaired surrogate would make the request unsendable)."""
    text = _MARKUP_RE.sub(" ", encodable(text))
    lines = (_SPACES_RE.sub(" ", line).strip() for line in text.splitlines())
    return _BLANK_LINES_RE.sub("\n\n", "\n".join(lines)).strip()


def strip_nickname(text: str, nicknames: Iterable[str]) -> str | None:
    """The text after a leading nickname (`小知，保修多久` -> `保修多久`); None without one."""
    for name in sorted((n for n in nicknames if n), key=len, reverse=True):
        if text[: len(name)].casefold() != name.casefold():
            continue
        rest = text[len(name) :]
        # "bot" must not answer to "bottle"; Chinese has no spaces to rely on.
        if _is_ascii_word_char(name[-1]) and _is_ascii_word_char(rest[:1]):
            continue
        return rest.lstrip(_NICKNAME_SEPARATORS).strip()
    return None


def _is_ascii_word_char(char: str) -> bool:
    return char.isascii() and char.isalnum()


def mask_links(text: str) -> str:
    """`https://docs.example.com/a` -> `docs[.]example[.]com/a`: no link survives."""
    text = _SCHEME_RE.sub("", text)
    text = _DOMAIN_RE.sub(lambda m: m.group().replace(".", "[.]"), text)
    return _IPV4_RE.sub(lambda m: m.group().replace(".", "[.]"), text)


def citation_label(citation: Citation) -> str:
    """`文档名 · 标题`: the file name of the source (`kb/stardust.md` -> `stardust.md`)."""
    name = PurePosixPath(citation.source.replace("\\", "/")).name
    return " · ".join(part for part in (name, citation.title.strip()) if part)


def citation_lines(citations: Sequence[Citation]) -> list[str]:
    """`[1] 文档名 · 标题` per document section; the same section cited twice is one line."""
    indices: dict[str, list[int]] = {}
    for citation in citations:
        numbers = indices.setdefault(citation_label(citation), [])
        if citation.index not in numbers:
            numbers.append(citation.index)
    return [
        "".join(f"[{n}]" for n in numbers) + f" {label}"
        for label, numbers in indices.items()
        if label
    ]


def compose_reply(answer: str, citations: Sequence[Citation]) -> str:
    """The answer, then its citation list after a blank line."""
    lines = citation_lines(citations)
    return "\n\n".join(part for part in (answer.strip(), "\n".join(lines)) if part)


def split_text(text: str, limit: int) -> list[str]:
    """Cut `text` into messages of at most `limit` characters, at sentence ends if possible."""
    parts: list[str] = []
    current = ""
    for sentence in _SENTENCE_END_RE.split(text):
        if len(current) + len(sentence) <= limit:
            current += sentence
            continue
        parts.append(current)
        current = sentence
        while len(current) > limit:
            parts.append(current[:limit])
            current = current[limit:]
    parts.append(current)
    return [part.strip() for part in parts if part.strip()]


def fit_parts(parts: Sequence[str], max_parts: int, limit: int) -> list[str]:
    """At most `max_parts` messages; when more were needed, the last one is cut short and says so."""
    if max_parts < 1:
        return []
    if len(parts) <= max_parts:
        return list(parts)
    last = split_text(parts[max_parts - 1], limit - len(TRUNCATED))[0]
    return [*parts[: max_parts - 1], last + TRUNCATED]
