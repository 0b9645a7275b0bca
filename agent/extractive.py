"""The answer when no model is available: whole sentences quoted from the relevant passages.

QQ users read this whenever Ollama is down, so a quote must read on its own: a sentence is
never cut inside quotation marks or brackets, a sentence that introduces a code block, list or
table ("依次执行以下命令：") brings the whole of it along, and Markdown markup (fences, list
markers, table pipes, backticks) is dropped, since QQ shows it as literal characters.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from agent import prompts
from tools.base import Passage
from tools.rerank import question_clauses
from tools.text import support_score

MAX_QUOTES = 3
MIN_QUOTE_COVERAGE = 0.3
"""Share of the question's terms a quote (with its heading) must contain: the evidence has
passed the relevance gate, but a passage's best sentence may still miss the point."""
RELATIVE_RELEVANCE = 0.9
"""A quote must cover the question's terms about as well as the best quote does: a passage
that only shares some of them (a neighbouring section that mentions the subject in passing) is
left out rather than quoted with a citation, as a model would leave it out."""
LEADING_PASSAGE = 0.9
"""Quotes come from passages whose relevance (the reranker's score) is at least this share of
the best passage's."""

_FENCE = re.compile(r"^\s*(`{3,}|~{3,})")
_TABLE_RULE = re.compile(r"^\s*\|?\s*:?-{3,}:?\s*(\|\s*:?-{3,}:?\s*)*\|?\s*$")
_LIST_MARK = re.compile(r"^\s*([-*+]|\d{1,3}[.)、])\s+")
_RULE = re.compile(r"^\s*([-*_])(\s*\1){2,}\s*$")
_BULLET = "· "
_LINE_MARKS = re.compile(r"^\s*(?:#{1,6}\s+|>\s?)")
_LINK = re.compile(r"!?\[([^\]\n]*)\]\([^)\n]*\)")
_BOLD = re.compile(r"(\*\*|__)([^*_\n]+)\1")
_CODE_SPAN = re.compile(r"`+([^`\n]*?)`+")
_ENDS = frozenset("。！？!?")
_OPENERS = {
    "“": "”",
    "‘": "’",
    "（": "）",
    "(": ")",
    "「": "」",
    "『": "』",
    "《": "》",
    "【": "】",
}
_CLOSERS = frozenset(_OPENERS.values())
_TRAILING_END = re.compile(r"[。！？!?.]+$")
_LEAD_IN = re.compile(r"[：:]$")


@dataclass(frozen=True)
class _Quote:
    sentence: str
    """A whole sentence, markup dropped."""
    body: tuple[str, ...] = ()
    """The lines it introduces (a code block as it is, list items, table rows), if any."""

    @property
    def text(self) -> str:
        return "\n".join((self.sentence, *self.body)).strip()

    def cited(self, number: int) -> str:
        """The quote with its `[n]` before the closing punctuation (the colon of a lead-in),
        never inside a code line."""
        end_match = (_LEAD_IN if self.body else _TRAILING_END).search(self.sentence)
        end = end_match.group(0) if end_match else ("：" if self.body else "。")
        head = self.sentence[: end_match.start()] if end_match else self.sentence
        return "\n".join((f"{head}[{number}]{end}", *self.body))


def _inline_text(text: str) -> str:
    """`text` without inline Markdown: links keep their words, code spans and bold their
    content."""
    text = _LINK.sub(r"\1", text)
    text = _CODE_SPAN.sub(r"\1", text)
    return _BOLD.sub(r"\2", text)


def whole_sentences(text: str) -> list[str]:
    """Sentences ending at 。！？ (or a Western full stop before a space), never inside
    quotation marks or brackets: "把 A 设为“是。”后重启。" is one sentence."""
    sentences: list[str] = []
    start, expected, straight = 0, [], False
    for i, char in enumerate(text):
        if char == '"':
            straight = not straight
        elif char in _OPENERS:
            expected.append(_OPENERS[char])
        elif char in _CLOSERS and expected and char == expected[-1]:
            expected.pop()
        if expected or straight:
            continue
        following = text[i + 1 : i + 2]
        ends = char in _ENDS and following not in _ENDS and following not in _CLOSERS
        if ends or (char == "." and (following == "" or following.isspace())):
            sentences.append(text[start : i + 1])
            start = i + 1
    sentences.append(text[start:])
    return [s.strip() for s in sentences if s.strip()]


def _table_row(cells: list[str], header: list[str] | None) -> str:
    """A table row as a sentence: "QQRAG_PORT：默认值 8000" under a header "配置项 | 默认值"."""
    if header is None or len(header) != len(cells) or len(cells) < 2:
        return "，".join(cells)
    return f"{cells[0]}：" + "，".join(
        f"{h} {c}" for h, c in zip(header[1:], cells[1:], strict=True)
    )


def _blocks(text: str) -> list[tuple[str, list[str]]]:
    """The passage as ("prose" | "code" | "list" | "table", lines), in order; prose lines of
    one paragraph are joined, markup is dropped except inside code."""
    blocks: list[tuple[str, list[str]]] = []
    fence: str | None = None
    header: list[str] | None = None
    for line in text.splitlines():
        if fence is not None:
            if line.strip().startswith(fence):
                fence = None
            else:
                blocks[-1][1].append(line.rstrip())
            continue
        if opened := _FENCE.match(line):
            fence = opened.group(1)
            blocks.append(("code", []))
            continue
        stripped = line.strip()
        if not stripped or _RULE.match(stripped):
            blocks.append(("blank", []))
            continue
        if stripped.startswith("|"):
            cells = [_inline_text(c).strip() for c in stripped.strip("|").split("|")]
            if _TABLE_RULE.match(stripped):
                continue
            if not blocks or blocks[-1][0] != "table":
                blocks.append(("table", []))
                header = cells
                continue
            blocks[-1][1].append(_table_row(cells, header))
            continue
        if item := _LIST_MARK.match(line):
            if not blocks or blocks[-1][0] != "list":
                blocks.append(("list", []))
            # Bullets become a dot a QQ user reads as one; step numbers are content and stay.
            marker = _BULLET if item.group(1) in "-*+" else f"{item.group(1)} "
            blocks[-1][1].append(marker + _inline_text(line[item.end() :]).strip())
            continue
        prose = _inline_text(_LINE_MARKS.sub("", line)).strip()
        if blocks and blocks[-1][0] == "prose":
            previous = blocks[-1][1][-1]
            # A soft-wrapped paragraph: Chinese joins without a space, other text with one.
            glue = "" if not (previous[-1:].isascii() or prose[:1].isascii()) else " "
            blocks[-1][1][-1] = previous + glue + prose
        else:
            blocks.append(("prose", [prose]))
    return [(kind, lines) for kind, lines in blocks if kind != "blank" and any(lines)]


def _quotes(passage: Passage) -> list[_Quote]:
    """Every quotable unit of a passage: whole sentences; a sentence ending in a colon right
    before a code block, list or table carries it whole; a block nothing introduces is quoted
    under the passage's own heading; list items and table rows stand alone otherwise."""
    units: list[_Quote] = []
    heading = passage["title"].rsplit("›", 1)[-1].strip()
    pending: str | None = None
    for kind, lines in _blocks(passage["text"]):
        if kind == "prose":
            sentences = [s for line in lines for s in whole_sentences(line)]
            *complete, last = sentences
            units += [_Quote(s) for s in complete]
            if _LEAD_IN.search(last):
                pending = last
            else:
                units.append(_Quote(last))
                pending = None
            continue
        if pending is not None:
            units.append(_Quote(pending, tuple(lines)))
        elif kind == "code":
            units.append(_Quote(f"{heading}：", tuple(lines)))
        else:
            items = (line.removeprefix(_BULLET) for line in lines)
            units += [_Quote(s) for item in items for s in whole_sentences(item)]
        pending = None
    # A lead-in left pending (its block went to the next passage, or prose follows it)
    # promises what it cannot show: it is no quote.
    return units


def extractive_answer(
    query: str,
    evidence: list[Passage],
    variant: str = "default",
    *,
    question: str = "",
    threshold: float = MIN_QUOTE_COVERAGE,
) -> str:
    """The best quote of each leading passage, each ending with its `[n]`; the not-found reply
    when no quote reaches `threshold` of coverage of the query's terms (the evidence has
    passed the relevance gate already; this asks the same of the sentence quoted)."""
    best: list[tuple[int, _Quote, float]] = []
    # Quotes come from the passages the reranker rated close to the best: a sentence of a
    # weaker passage can repeat the question's words ("安装…执行…命令") about something else.
    # A question of several parts has a best passage for each (`question_clauses`).
    single = len(question_clauses(query)) == 1
    leading = max((p["score"] for p in evidence), default=0.0) if single else 0.0
    for number, passage in enumerate(evidence, start=1):
        units = _quotes(passage)
        if not units or passage["score"] < LEADING_PASSAGE * leading:
            continue
        # Relevance is weighed on the heading and the sentence: the heading names the subject
        # its sentences leave implicit, while code and list lines name many things in passing.
        # Ties go to what the body adds, then to the first unit, which usually states the
        # section's subject.
        scored = [
            (support_score(query, f"{passage['title']} {q.sentence}"), support_score(query, q.text))
            for q in units
        ]
        top_unit = max(range(len(units)), key=lambda i: scored[i])
        best.append((number, units[top_unit], scored[top_unit][0]))
    top = max((score for _, _, score in best), default=0.0)
    kept = [
        (number, quote)
        for number, quote, score in best
        if score > 0 and score >= threshold and score >= RELATIVE_RELEVANCE * top
    ][:MAX_QUOTES]
    if not kept:
        return prompts.render("not_found", variant, question=question or query)
    lines = [prompts.render("degraded", variant)]
    lines += [quote.cited(number) for number, quote in kept]
    return "\n".join(lines)
