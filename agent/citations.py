"""The deterministic citation check: every `[n]` must name a passage that supports its sentence."""

from __future__ import annotations

import re
from dataclasses import dataclass

from agent.state import Citation, RemovedSentence, SentenceCheck, Verdict
from tools.base import Passage
from tools.text import citation_numbers, content_tokens, split_sentences, strip_citations
from tools.text import support_score as _support

REFUSAL_MARKERS = (
    "没有找到",
    "未找到",
    "找不到",
    "没有相关",
    "无法回答",
    "没有提到",
    "未提及",
    "没有提及",
)
"""Phrases of an honest "the knowledge base does not say"; such sentences need no citation."""

CONNECTIVE_MAX_TERMS = 3
"""An uncited sentence with at most this many topic terms ("步骤如下：") is connective text,
not a claim; longer uncited sentences must be supported by some passage."""

SNIPPET_CHARS = 120


def is_refusal(sentence: str) -> bool:
    return any(marker in sentence for marker in REFUSAL_MARKERS)


@dataclass
class CitationCheck:
    verdict: Verdict
    text: str
    """The draft with unsupported sentences removed and markers corrected (original numbers)."""
    problems: list[str]
    """What was wrong, in words the regeneration prompt can show the model."""

    @property
    def needs_retry(self) -> bool:
        return bool(self.problems)


def _with_markers(sentence: str, numbers: list[int]) -> str:
    """`sentence` with its markers replaced by `numbers`, placed before the closing punctuation."""
    plain = strip_citations(sentence).rstrip()
    match = re.search(r"[。！？!?；;.]+$", plain)
    end = match.group(0) if match else ""
    body = plain[: len(plain) - len(end)] if end else plain
    return body + "".join(f"[{n}]" for n in numbers) + end


def check_citations(
    draft: str, evidence: list[Passage], threshold: float, question: str = ""
) -> CitationCheck:
    """Check every sentence of `draft` against the passages it cites (see `support_score`)."""
    texts = [f"{p['title']} {p['text']}" for p in evidence]
    checks: list[SentenceCheck] = []
    kept: list[str] = []
    removed: list[RemovedSentence] = []
    invalid: list[int] = []
    problems: list[str] = []

    for sentence in split_sentences(draft):
        numbers = citation_numbers(sentence)
        plain = strip_citations(sentence).strip()
        bad = [n for n in numbers if not 1 <= n <= len(evidence)]
        invalid.extend(bad)
        valid = list(dict.fromkeys(n for n in numbers if n not in bad))
        scores = {n: _support(plain, texts[n - 1], question) for n in valid}
        supporting = [n for n in valid if scores[n] >= threshold]
        terms = content_tokens(plain)

        if supporting:
            kept.append(_with_markers(sentence, supporting))
            score = max(scores[n] for n in supporting)
            checks.append(
                SentenceCheck(text=plain, cited=supporting, status="supported", score=score)
            )
            continue
        if not terms or is_refusal(plain) or (not valid and len(terms) <= CONNECTIVE_MAX_TERMS):
            kept.append(_with_markers(sentence, []))
            checks.append(SentenceCheck(text=plain, cited=[], status="uncited", score=0.0))
            continue
        # Cited wrongly or not at all: credit the passage that does support it, if one does.
        all_scores = [_support(plain, t, question) for t in texts]
        best_score = max(all_scores, default=0.0)
        if best_score >= threshold:
            best = all_scores.index(best_score) + 1
            kept.append(_with_markers(sentence, [best]))
            checks.append(
                SentenceCheck(text=plain, cited=[best], status="repaired", score=best_score)
            )
            continue
        removed.append(
            RemovedSentence(
                text=plain, reason=_why_removed(valid, scores, bad, best_score, threshold)
            )
        )
        checks.append(
            SentenceCheck(text=plain, cited=valid, status="unsupported", score=best_score)
        )
        where = f"标注了 {''.join(f'[{n}]' for n in valid)}，但" if valid else ""
        problems.append(f"“{plain}”{where}资料中找不到依据。")

    if bad_refs := sorted(set(invalid)):
        problems.append(f"引用了不存在的编号：{'、'.join(f'[{n}]' for n in bad_refs)}。")
    claims = [c for c in checks if c["status"] != "uncited"]
    cited = [c for c in claims if c["status"] in ("supported", "repaired")]
    refusal = not cited and any(is_refusal(c["text"]) for c in checks)
    if evidence and not cited and not refusal and not problems:
        problems.append("回答没有标注任何出处。")

    verdict = Verdict(
        supported_ratio=round(len(cited) / len(claims), 4) if claims else None,
        removed=removed,
        invalid_refs=sorted(set(invalid)),
        sentences=checks,
        refusal=refusal,
    )
    return CitationCheck(verdict=verdict, text=_join(kept), problems=problems)


def _why_removed(
    cited: list[int], scores: dict[int, float], bad: list[int], best: float, threshold: float
) -> str:
    """Why a sentence was dropped: what it cited, and how far the best passage fell short."""
    short = f"最高支持度 {best:.2f}，要求 {threshold:g}"
    if cited:
        marks = "".join(f"[{n}]" for n in cited)
        return f"所引 {marks} 的支持度 {max(scores.values()):.2f}，其他资料也不支持（{short}）"
    if bad:
        marks = "".join(f"[{n}]" for n in bad)
        return f"引用了不存在的编号 {marks}，也没有资料支持它（{short}）"
    return f"没有标注出处，也没有资料支持它（{short}）"


def _join(sentences: list[str]) -> str:
    text = ""
    for sentence in sentences:
        # Chinese sentences run on without spaces; Western ones need one.
        sep = " " if text and text[-1] in ".!?" else ""
        text += sep + sentence
    return text.strip()


def renumber(text: str, evidence: list[Passage]) -> tuple[str, list[Citation]]:
    """Renumber markers 1..m in order of first appearance and list the cited passages."""
    order: dict[int, int] = {}
    for number in citation_numbers(text):
        if 1 <= number <= len(evidence):
            order.setdefault(number, len(order) + 1)
    renumbered = re.sub(r"\[(\d{1,3})\]", lambda m: f"[{order.get(int(m.group(1)), 0)}]", text)
    citations = []
    for old, new in order.items():
        passage = evidence[old - 1]
        citations.append(
            Citation(
                index=new,
                title=passage["title"],
                source=passage["source"],
                passage_id=passage["id"],
                snippet=_snippet(passage, text, old),
            )
        )
    return renumbered, citations


def _snippet(passage: Passage, answer: str, number: int) -> str:
    """The passage sentence that best supports the answer sentences citing it."""
    citing = " ".join(s for s in split_sentences(answer) if number in citation_numbers(s))
    candidates = split_sentences(passage["text"]) or [passage["text"]]
    best = max(candidates, key=lambda s: _support(strip_citations(citing), s))
    return best if len(best) <= SNIPPET_CHARS else best[: SNIPPET_CHARS - 1] + "…"
