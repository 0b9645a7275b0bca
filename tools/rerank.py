"""Rerankers: reorder retrieved passages and give each a 0..1 relevance.

Every strategy scores on 0..1 so that one relevance threshold (the gate, 0.5 by default) means
the same thing whichever strategy a profile picks: the lexical score is calibrated so that its
gate lands on 0.5 (see `LEXICAL_GATE`); cosine similarity and Qwen3-Reranker's P(yes) are
used as they come. The Ollama-based ones (embedding cosine, Qwen3-Reranker) fall back to the
lexical ordering when Ollama fails, so a reranker never sinks a turn.
"""

from __future__ import annotations

import asyncio
import logging
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from functools import cache, lru_cache
from typing import Protocol

import jieba
import numpy as np
import ollama

from tools.base import Passage, TermCounts, TermStatistics, term_counts
from tools.embeddings import OLLAMA_ERRORS, Embedder, EmbeddingError, LoopLocal, passage_text
from tools.text import content_tokens, refers_by_word, split_sentences, tokenize

log = logging.getLogger(__name__)

QWEN3_RERANK_PREFIX = (
    "<|im_start|>system\nJudge whether the Document meets the requirements based on the Query "
    'and the Instruct provided. Note that the answer can only be "yes" or "no".<|im_end|>\n'
    "<|im_start|>user\n"
)
QWEN3_RERANK_SUFFIX = "<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
QWEN3_DEFAULT_INSTRUCTION = (
    "Given a web search query, retrieve relevant passages that answer the query"
)
MAX_RERANK_QUERY_CHARS = 500
MAX_RERANK_DOCUMENT_CHARS = 2000
"""Keeps a prompt within a 2048-token context (Qwen3's tokenizer packs more than one CJK
character into a token on average), so Ollama never cuts the template's head off; a passage's
opening carries its topic anyway."""
TOP_LOGPROBS = 5
LEXICAL_GATE = 0.51
"""The weighted coverage at which a passage starts to count as evidence, terms weighed by the
searched base's own statistics: calibrated on the CMRC 2018 development half by
`python -m evals.calibrate` (the highest gate refusing at most 3% of answerable questions).
Lexical scores are mapped so that it reads 0.5, the default gate."""
GENERAL_IDF_GATE = 0.54
"""The same, terms weighed by jieba's general-Chinese IDF (a backend without statistics)."""
TITLE_SHARE = 0.2
PRIOR_PASSAGES = 100
SENTENCE_WINDOW = 3
"""Consecutive sentences a passage may cover the question with: terms scattered over a long
passage are not an answer."""


class Reranker(Protocol):
    name: str

    async def rerank(
        self, query: str, passages: list[Passage], stats: TermStatistics | None = None
    ) -> list[Passage]:
        """All `passages` with 0..1 scores, in the strategy's order of preference; `stats`
        (the searched backend) tells how rare each query term is, where the strategy cares."""
        ...


def _retrieval_scale(passages: list[Passage]) -> float:
    top = max((p["score"] for p in passages), default=0.0)
    return top if top > 0 else 1.0


_INTERROGATIVE = re.compile(
    r"(?:哪几?|几)[个种次批位天年月日号点岁名部条座所家国只张本件项层届场支队首球分秒周期代任章集]"
    r"|多[少大久长高远]|什么\w*|怎么\w*|怎样|为何|如何|何时|谁"
)
"""A question word jieba glued to its measure word or noun ("几月", "哪几个", "多大"): the
whole token must match, so 哪吒、几何、茶几、多重 stay topic words."""
_WORD = re.compile(r"[^\W_]")
"""A token with a letter or digit: jieba keeps "_" of QQRAG_RELEVANCE_THRESHOLD as a word."""
_QUESTION_FRAME = frozenset(
    """叫 叫做 名字 时候 称为 称作 问 想问 顺便 另外 还有 知道 告诉 了解 介绍 讲讲 说说 里 上""".split()
)
"""Words that frame a question rather than name its subject ("叫什么名字", "什么时候",
"顺便问", "告诉我", "我想了解一下", "群聊里")."""


def query_terms(query: str) -> list[str]:
    """Distinct topic words of a question (precise mode: a compound counts once), or all its
    words when it has only function words.

    jieba glues interrogatives to their neighbours ("几月", "哪几个", "多大"): such words never
    occur in a passage, so the base's statistics would call them its rarest terms and no
    answer could cover them. They are dropped, like the words that frame a question.
    """
    terms = [t for t in content_tokens(query, search=False) if _WORD.search(t)]
    topical = [t for t in terms if not _INTERROGATIVE.fullmatch(t) and t not in _QUESTION_FRAME]
    return list(dict.fromkeys(topical or terms or tokenize(query, search=False)))


def term_weights(terms: Sequence[str], counts: TermCounts | None) -> dict[str, float]:
    """Squared BM25 IDF of each term in the searched base; without its statistics (MaxKB),
    general-Chinese IDF from jieba's table.

    A term the base lacks weighs as much as its rarest ones, not more: it may be a synonym of
    the passage's word (钱 for 售价) as well as a subject the base never mentions.
    `PRIOR_PASSAGES` passages holding none of the terms are counted in, so a base too small to
    tell which words are rare weighs them almost alike.
    """
    if counts is None:
        idf, rarest, median = _general_idf()
        # The table holds no Latin words or numbers at all: they weigh as a typical word, not
        # as the rarest (QQ, 3.14); an unknown Chinese word is rare indeed.
        return {t: idf.get(t, median if t.isascii() else rarest) ** 2 for t in terms}
    total = counts.passages + PRIOR_PASSAGES
    return {
        t: math.log(1 + (total - df + 0.5) / (df + 0.5)) ** 2
        for t in terms
        for df in [max(min(counts.containing.get(t, 0), counts.passages), 1)]
    }


@cache
def _general_idf() -> tuple[Mapping[str, float], float, float]:
    """jieba's IDF table, its largest and its median value."""
    # jieba.analyse loads its 270k-word IDF table (about a second) on import: only when asked,
    # and off the event loop (`LexicalReranker.rerank`).
    from jieba import analyse

    tfidf = analyse.default_tfidf
    table: dict[str, float] = tfidf.idf_freq
    return table, max(table.values()), float(tfidf.median_idf)


@lru_cache(maxsize=2048)
def _windows(title: str, text: str) -> tuple[tuple[str, frozenset[str]], ...]:
    """The title with each run of `SENTENCE_WINDOW` consecutive sentences: lower-cased text
    and jieba tokens. Each sentence is tokenized once, in its own case (jieba segments "AT&T"
    and "at&t" differently), and not through `tokenize`'s cache, which cite_check relies on;
    the windows are cached instead (the same passages come back query after query)."""
    sentences = split_sentences(text) or [""]
    tokens = [frozenset(_jieba(s)) for s in sentences]
    heading = frozenset(_jieba(title))
    return tuple(
        (
            f"{title} {''.join(sentences[i : i + SENTENCE_WINDOW])}".lower(),
            heading.union(*tokens[i : i + SENTENCE_WINDOW]),
        )
        for i in range(max(len(sentences) - SENTENCE_WINDOW + 1, 1))
    )


def _jieba(text: str) -> list[str]:
    return [t.lower() for t in jieba.lcut_for_search(text) if _WORD.search(t)]


def _covered(term: str, window: str, tokens: frozenset[str]) -> float:
    """How much of `term` the window holds: 1 when it occurs; a Chinese term jieba segmented
    differently in the question ("蝮是" for 蝮 + 是) gets the share of its character pairs
    that occur. A Latin word must occur as a word ("port" is not in "support")."""
    if term.isascii():
        return float(term in tokens)
    if term in window:
        return 1.0
    if len(term) < 3:
        return 0.0
    pairs = [term[i : i + 2] for i in range(len(term) - 1)]
    return sum(pair in window for pair in pairs) / len(pairs)


def weighted_coverage(weights: Mapping[str, float], title: str, text: str) -> float:
    """Share of the question's term weight that the title and the best `SENTENCE_WINDOW`
    consecutive sentences of the passage contain, 0..1, `TITLE_SHARE` of it from what the
    title alone covers: of two passages that both mention every term, the one whose heading
    names them is about them."""
    total = sum(weights.values())
    if total <= 0:
        return 0.0

    def covered(window: str, tokens: frozenset[str]) -> float:
        return sum(weight * _covered(term, window, tokens) for term, weight in weights.items())

    best = max(covered(window, tokens) for window, tokens in _windows(title, text))
    named = covered(title.lower(), frozenset(_jieba(title)))
    return ((1 - TITLE_SHARE) * best + TITLE_SHARE * named) / total


def calibrated(share: float, gate: float = LEXICAL_GATE) -> float:
    """`share` mapped piecewise linearly onto 0..1 with `gate` landing on 0.5."""
    if share < gate:
        return 0.5 * share / gate
    return 0.5 + 0.5 * (share - gate) / (1 - gate)


class Ranking(list[Passage]):
    """Ranked passages that also say which part of the question each answers best (`aspects`,
    an index per passage): the evidence ratio weighs a passage against the best one of its
    own part, so that the half of "星尘打印机保修多久？顺便问滤网多久换" that is covered less
    fully keeps its passage."""

    def __init__(self, passages: Iterable[Passage], aspects: Sequence[int]) -> None:
        super().__init__(passages)
        self.aspects = list(aspects)


class LexicalReranker:
    """Keeps the retrieval order and scores each passage by the rare-term-weighted share of the
    question it covers (`weighted_coverage`), calibrated (`calibrated`).

    Weighing terms by rarity is what lets the score refuse: a question about something the base
    does not hold still shares its common words with many passages, but not its rare ones.
    Reordering by the score loses to BM25's own ranking, so the order stays as retrieved.
    """

    name = "lexical"

    async def rerank(
        self, query: str, passages: list[Passage], stats: TermStatistics | None = None
    ) -> list[Passage]:
        if not passages:
            return []
        shares, aspects, gate = await lexical_shares(query, passages, stats)
        return Ranking(
            [
                Passage(**{**p, "score": round(calibrated(share, gate), 4)})
                for p, share in zip(passages, shares, strict=True)
            ],
            aspects,
        )


async def lexical_shares(
    query: str, passages: Sequence[Passage], stats: TermStatistics | None
) -> tuple[list[float], list[int], float]:
    """Each passage's weighted coverage of the question, which sentence of the question it
    covers best (its aspect, see `Ranking`), and the gate that applies (`LEXICAL_GATE` with
    the base's statistics, `GENERAL_IDF_GATE` without).

    A question of several sentences ("星尘打印机保修多久？顺便问滤网多久换") is weighed
    sentence by sentence, a passage by the one it covers best: no passage answers both
    halves, and each half has its passage (`question_clauses`).
    """
    clauses = question_clauses(query)
    counts = await term_counts(stats, [t for terms in clauses for t in terms])
    if counts is None:
        await asyncio.to_thread(_general_idf)
    weighed = [term_weights(terms, counts) for terms in clauses]
    by_clause = [
        [weighted_coverage(weights, p["title"], p["text"]) for weights in weighed] for p in passages
    ]
    aspects = [max(range(len(shares)), key=shares.__getitem__) for shares in by_clause]
    shares = [clause_shares[a] for clause_shares, a in zip(by_clause, aspects, strict=True)]
    return shares, aspects, GENERAL_IDF_GATE if counts is None else LEXICAL_GATE


def question_clauses(query: str) -> list[list[str]]:
    """The question's terms, sentence by sentence; a sentence that refers back ("那它支持哪些
    耗材？") or has fewer than two topic words ("那它怎么改？") leans on its neighbour and is
    weighed with it: alone, any passage that says 改 would answer it."""
    groups: list[list[str]] = []
    for sentence in split_sentences(query):
        terms = query_terms(sentence)
        if groups and (len(terms) < 2 or refers_by_word(sentence)):
            groups[-1] += terms
        elif terms:
            groups.append(terms)
    if len(groups) > 1 and len(groups[0]) < 2:
        first = groups.pop(0)
        groups[0] = first + groups[0]
    return groups or [query_terms(query)]


class NoReranker:
    """Keeps retrieval order; scores are the retrieval scores scaled to the best hit."""

    name = "none"

    async def rerank(
        self, query: str, passages: list[Passage], stats: TermStatistics | None = None
    ) -> list[Passage]:
        scale = _retrieval_scale(passages)
        return [Passage(**{**p, "score": round(max(p["score"], 0.0) / scale, 4)}) for p in passages]


class EmbeddingReranker:
    """Cosine similarity of Ollama embeddings, clamped to 0..1.

    The query and the passages go in one embed call, the query first (more than one only when
    they outnumber the embedder's batch size).
    """

    name = "embedding"

    def __init__(self, embedder: Embedder) -> None:
        self._embedder = embedder
        self._fallback = LexicalReranker()

    async def rerank(
        self, query: str, passages: list[Passage], stats: TermStatistics | None = None
    ) -> list[Passage]:
        if not passages:
            return []
        texts = [query, *(passage_text(p["title"], p["text"]) for p in passages)]
        try:
            vectors = await self._embedder.embed(texts)
        except EmbeddingError as exc:
            log.warning("embedding reranker failed, using lexical order: %s", exc)
            return await self._fallback.rerank(query, passages, stats)
        scores = np.clip(vectors[1:] @ vectors[0], 0.0, 1.0)
        scored = [
            Passage(**{**p, "score": round(float(score), 4)})
            for p, score in zip(passages, scores, strict=True)
        ]
        return sorted(scored, key=lambda p: p["score"], reverse=True)


class RerankError(RuntimeError):
    """Ollama answered, but not with what a reranker can read."""


_QWEN3_FAILURES = (*OLLAMA_ERRORS, RerankError)


def qwen3_rerank_prompt(instruction: str, query: str, document: str) -> str:
    """The raw Qwen3-Reranker prompt for one (query, document) pair, both truncated."""
    return (
        f"{QWEN3_RERANK_PREFIX}<Instruct>: {instruction}\n"
        f"<Query>: {query[:MAX_RERANK_QUERY_CHARS]}\n"
        f"<Document>: {document[:MAX_RERANK_DOCUMENT_CHARS]}{QWEN3_RERANK_SUFFIX}"
    )


def yes_probability(response: ollama.GenerateResponse) -> float:
    """P(yes) / (P(yes) + P(no)) for the first generated token, from its top logprobs.

    A label missing from the top logprobs counts as probability 0; neither present means the
    model said something else, read as "no".
    """
    if not response.logprobs:
        raise RerankError("Ollama 没有返回 logprobs：Qwen3-Reranker 需要 Ollama 0.12.11 或更新版本")
    first = response.logprobs[0]
    candidates = [*(first.top_logprobs or []), first]

    def logprob(label: str) -> float:
        found = [c.logprob for c in candidates if c.token.strip().lower() == label]
        return max(found, default=-math.inf)

    yes, no = logprob("yes"), logprob("no")
    if yes == -math.inf:
        return 0.0
    return 1.0 / (1.0 + math.exp(no - yes))


class Qwen3Reranker:
    """P(yes) of a Qwen3-Reranker model on Ollama: one raw `/api/generate` per passage, at most
    `concurrency` in flight (per event loop)."""

    name = "qwen3-reranker"

    def __init__(
        self,
        url: str,
        model: str,
        *,
        concurrency: int = 4,
        timeout: float = 60.0,
        instruction: str = QWEN3_DEFAULT_INSTRUCTION,
    ) -> None:
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        self.url = url
        self.model = model
        self.instruction = instruction
        self._clients = LoopLocal(
            lambda: (ollama.AsyncClient(host=url, timeout=timeout), asyncio.Semaphore(concurrency))
        )
        self._fallback = LexicalReranker()

    async def rerank(
        self, query: str, passages: list[Passage], stats: TermStatistics | None = None
    ) -> list[Passage]:
        if not passages:
            return []
        client, semaphore = self._clients.get()
        try:
            async with asyncio.TaskGroup() as group:
                tasks = [
                    group.create_task(self._score(client, semaphore, query, p)) for p in passages
                ]
        except ExceptionGroup as failure:
            if failure.split(_QWEN3_FAILURES)[1] is not None:
                raise
            log.warning(
                "qwen3-reranker (%s at %s) failed, using lexical order: %s",
                self.model,
                self.url,
                _describe(failure.exceptions[0], self.model),
            )
            return await self._fallback.rerank(query, passages, stats)
        scored = [
            Passage(**{**p, "score": round(task.result(), 4)})
            for p, task in zip(passages, tasks, strict=True)
        ]
        return sorted(scored, key=lambda p: p["score"], reverse=True)

    async def _score(
        self,
        client: ollama.AsyncClient,
        semaphore: asyncio.Semaphore,
        query: str,
        passage: Passage,
    ) -> float:
        prompt = qwen3_rerank_prompt(
            self.instruction, query, passage_text(passage["title"], passage["text"])
        )
        async with semaphore:
            response = await client.generate(
                model=self.model,
                prompt=prompt,
                raw=True,
                stream=False,
                logprobs=True,
                top_logprobs=TOP_LOGPROBS,
                options={"num_predict": 1, "temperature": 0},
            )
        return yes_probability(response)


def _describe(exc: BaseException, model: str) -> str:
    if isinstance(exc, ollama.ResponseError) and exc.status_code == 404:
        return f"没有模型 {model}：先运行 ollama pull {model}"
    return str(exc) or type(exc).__name__


def select_evidence(
    ranked: list[Passage], top_n: int, threshold: float, ratio: float = 0.0
) -> list[Passage]:
    """At most `top_n` passages, in ranked order, that reach the relevance threshold and
    `ratio` of the best score: when one passage clearly answers, the weaker ones are
    distractors that cost the model prefill time and mislead it."""
    aspects = ranked.aspects if isinstance(ranked, Ranking) else [0] * len(ranked)
    best: dict[int, float] = {}
    for passage, aspect in zip(ranked, aspects, strict=True):
        best[aspect] = max(best.get(aspect, 0.0), passage["score"])
    return [
        p
        for p, aspect in zip(ranked, aspects, strict=True)
        if p["score"] >= max(threshold, ratio * best[aspect])
    ][:top_n]
