"""Chinese text helpers shared by retrieval, reranking and citation checking."""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from functools import lru_cache
from typing import NamedTuple

import jieba

# jieba announces its dictionary loading on stderr; operators do not need that.
jieba.setLogLevel(logging.WARNING)

# Function words and interrogatives: they carry no topic, and in a question they would
# otherwise dominate lexical scores ("什么", "哪", "是" appear in almost every passage).
STOPWORDS: frozenset[str] = frozenset(
    """
    的 了 着 过 地 得 之 所 也 又 还 就 都 而 且 并 及 与 和 或 跟 同 对 向 从 在 于 以 为 被 把 让 给
    是 有 没 没有 不 无 非 会 能 可 可以 要 想 应 应该 需要 该 其 此 这 那 这个 那个 这些 那些 这样 那样
    它 它们 他 他们 她 她们 我 我们 你 你们 您 咱们 自己 人家
    吗 呢 吧 啊 呀 嘛 哦 哈 呗 么 啦 哇
    什么 什么样 啥 哪 哪个 哪些 哪里 哪儿 哪年 哪位 哪种 谁 几 几个 多少 多 怎么 怎么样 怎样 如何
    为什么 为何 是否 能否 可否 有没有 是不是 请问 请 一下 一个 一些 一种 个 些 种 等 等等 则 即 如 若
    如果 因为 所以 但 但是 然后 还是 或者 以及
    a an the of to in on at for is are be and or what which who how why
    """.split()
)

_TOKEN_RE = re.compile(r"\w", re.UNICODE)
# A Western full stop ends a sentence only before whitespace, so "3.14" and "127.0.0.1" survive.
_SENTENCE_RE = re.compile(r"(?:[^。！？!?；;.\n]|\.(?!\s))+(?:[。！？!?；;]+|\.(?=\s|$))*|\n")
_CITATION_RE = re.compile(r"\[(\d{1,3})\]")
_NUMBER_RE = re.compile(r"\d+(?:\.\d+)?")
# A str holds a surrogate code point only when it arrived unpaired ("\ud800" is valid JSON):
# such text cannot be encoded, so it could be neither stored nor sent.
_SURROGATE_RE = re.compile("[\ud800-\udfff]")


def tokenize(text: str, *, search: bool = True) -> list[str]:
    """jieba tokens, lower-cased, punctuation and spaces dropped.

    Search mode (the default) also yields the sub-words of long compounds, which suits an
    index; precise mode yields each word once, which suits a query against that index.
    """
    return list(_tokens(text, search))


@lru_cache(maxsize=16384)
def _tokens(text: str, search: bool) -> tuple[str, ...]:
    # A turn tokenizes the same passages in rerank, cite_check and the snippets, and the same
    # passages come back turn after turn: jieba's millisecond per passage adds up.
    words = jieba.lcut_for_search(text) if search else jieba.lcut(text)
    return tuple(t.lower() for t in words if _TOKEN_RE.search(t))


def index_text(title: str, text: str) -> tuple[str, str]:
    """A passage as the full-text index holds it: search-mode tokens joined by spaces.

    Uncached, unlike `tokenize`: an ingest sees each passage once, and would only evict the
    passages that searches keep coming back to.
    """
    return " ".join(_index_words(title)), " ".join(_index_words(text))


def _index_words(text: str) -> Iterable[str]:
    return (t.lower() for t in jieba.cut_for_search(text) if _TOKEN_RE.search(t))


def content_tokens(text: str, *, search: bool = True) -> list[str]:
    """Tokens that carry topic: `tokenize` minus stopwords and interrogatives."""
    return [t for t in tokenize(text, search=search) if t not in STOPWORDS]


_REFERRING_WORDS = frozenset("他 其 此 该 这 那 上述 上面 前面 刚才 刚刚 同样 还有 另外".split())
_REFERRING_HEADS = ("这", "那", "该", "此", "他", "其")
"""A word starting with one of these points back too: 这个、那里、该校、此案、他们、其余."""
_PRONOUNS = re.compile("[它她]")
"""Characters that are pronouns wherever they stand, even where jieba glues them to the next
or the previous character (它花、首它)."""


def refers_by_word(text: str) -> bool:
    """Whether the question has a referring word (它、这个、该校、上面、还有…): whole words,
    so that 应该、因此、尤其 do not count."""
    if _PRONOUNS.search(text):
        return True
    return any(
        word in _REFERRING_WORDS or (len(word) > 1 and word.startswith(_REFERRING_HEADS))
        for word in tokenize(text, search=False)
    )


def char_ngrams(text: str, n: int = 2) -> set[str]:
    """Character n-grams over word characters only; robust where jieba segments differently."""
    chars = "".join(c for c in text.lower() if _TOKEN_RE.match(c))
    if len(chars) < n:
        return {chars} if chars else set()
    return {chars[i : i + n] for i in range(len(chars) - n + 1)}


def coverage(needle: Iterable[str], haystack: Iterable[str]) -> float:
    """Share of the distinct items of `needle` that also occur in `haystack` (0 when empty)."""
    wanted = set(needle)
    if not wanted:
        return 0.0
    found = haystack if isinstance(haystack, (set, frozenset)) else set(haystack)
    return len(wanted & found) / len(wanted)


class _Evidence(NamedTuple):
    numbers: frozenset[str]
    tokens: frozenset[str]
    bigrams: frozenset[str]


@lru_cache(maxsize=4096)
def _evidence(text: str) -> _Evidence:
    # Every sentence of an answer is weighed against the same few passages, and the same
    # passages come back turn after turn: their numbers, tokens and bigrams are computed once.
    return _Evidence(
        frozenset(_NUMBER_RE.findall(text)), frozenset(tokenize(text)), frozenset(char_ngrams(text))
    )


def support_score(claim: str, evidence: str, given: str = "") -> float:
    """How much of `claim` is backed by `evidence`, 0..1.

    The larger of token coverage and character-bigram coverage: tokens reward the same words,
    bigrams forgive jieba segmenting a paraphrase differently. Terms the claim shares with
    `given` (the question) prove nothing, so the claim's new terms must be covered too; and a
    number the evidence does not contain makes the claim unsupported outright.
    """
    found = _evidence(evidence)
    if any(n not in found.numbers for n in _NUMBER_RE.findall(claim)):
        return 0.0
    claim_tokens = content_tokens(claim)
    score = max(coverage(claim_tokens, found.tokens), coverage(char_ngrams(claim), found.bigrams))
    known = set(tokenize(given))
    novel = [t for t in claim_tokens if t not in known]
    if given and novel:
        score = min(score, coverage(novel, found.tokens))
    return score


def split_sentences(text: str) -> list[str]:
    """Split on Chinese and Western sentence ends, keeping the punctuation with its sentence."""
    return [s for s in (m.group(0).strip() for m in _SENTENCE_RE.finditer(text)) if s]


def citation_numbers(text: str) -> list[int]:
    """The `[n]` markers of a text, in order of appearance."""
    return [int(n) for n in _CITATION_RE.findall(text)]


def strip_citations(text: str) -> str:
    """The text without its `[n]` markers."""
    return _CITATION_RE.sub("", text)


def has_lone_surrogate(text: str) -> bool:
    return _SURROGATE_RE.search(text) is not None


def encodable(text: str) -> str:
    """`text` with every unpaired UTF-16 surrogate replaced by U+FFFD, so it can be stored and
    sent as UTF-8; any other text comes back as it is."""
    return _SURROGATE_RE.sub("\ufffd", text)
