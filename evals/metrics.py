"""What the runner measures, per node, and how two runs of a suite compare.

Every turn yields an *observation*: one value per measure (None where the measure does not
apply, e.g. recall without gold passages), and *checks*: the turn's expectations, passed or
failed. Suite metrics are means over the turns where a value exists, so an empty denominator
gives None, never a misleading 0 or 1. Observations are what a baseline stores: aggregates
can be recomputed over any subset of cases, e.g. the sample a CI run picked.
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from agent.turns import TurnResult
from tools.base import Passage
from tools.text import citation_numbers, split_sentences, strip_citations, support_score

EPSILON = 1e-9
"""Float noise: differences below it are no change."""
DIGITS = 4


@dataclass(frozen=True)
class Tolerance:
    """How much worse a metric may get before it counts as a regression."""

    absolute: float = 0.0
    relative: float = 0.0
    """A share of the earlier value: 0.1 allows 10% worse."""

    @classmethod
    def parse(cls, value: object) -> Tolerance:
        """A number is absolute; "10%" is relative."""
        if isinstance(value, str) and value.strip().endswith("%"):
            share = float(value.strip()[:-1]) / 100
            if share < 0:
                raise ValueError("容差不能为负")
            return cls(relative=share)
        if isinstance(value, bool) or not isinstance(value, int | float | str):
            raise ValueError(f"应为数字或百分比，实际 {value!r}")
        try:
            amount = float(value)
        except ValueError:
            raise ValueError(f"应为数字或百分比，实际 {value!r}") from None
        if amount < 0 or math.isnan(amount):
            raise ValueError("容差不能为负")
        return cls(absolute=amount)

    def allowed(self, before: float) -> float:
        return max(self.absolute, self.relative * abs(before))

    def __str__(self) -> str:
        if self.relative:
            return f"{self.relative * 100:g}%"
        return f"{self.absolute:g}"


@dataclass(frozen=True)
class Metric:
    key: str
    node: str
    label: str
    higher_is_better: bool = True
    tolerance: Tolerance = Tolerance()
    ratio: bool = True
    """A 0..1 share (shown as such, charted on a 0..1 scale); otherwise a count per turn."""


_COST = Tolerance(relative=0.1)
_METRICS = (
    Metric("classify.intent_accuracy", "classify", "意图准确率"),
    Metric("classify.rewrite_accuracy", "classify", "追问改写命中率"),
    Metric("retrieve.recall@1", "retrieve", "召回率@1"),
    Metric("retrieve.recall@5", "retrieve", "召回率@5"),
    Metric("retrieve.mrr", "retrieve", "MRR"),
    Metric("rerank.ndcg", "rerank", "nDCG（全部候选）"),
    Metric("rerank.evidence_recall", "rerank", "证据召回率（过阈值的段落）"),
    Metric("rerank.evidence_precision", "rerank", "证据精确率（交给模型的段落含答案）"),
    Metric("answer.citation_precision", "cite_check", "引用精确率"),
    Metric("answer.citation_recall", "cite_check", "引用召回率"),
    Metric("answer.supported_ratio", "cite_check", "有据句子占比"),
    Metric("answer.refusal_precision", "answer", "拒答精确率"),
    Metric("answer.refusal_recall", "answer", "拒答召回率"),
    Metric("answer.false_refusal", "answer", "误拒率（答得了却拒答）", False),
    Metric("answer.match", "answer", "答案命中率（规范化包含）"),
    Metric("answer.f1", "answer", "答案字符 F1"),
    Metric("judge.faithfulness", "judge", "忠实度（评审模型）"),
    Metric("judge.relevance", "judge", "相关性（评审模型）"),
    Metric("cost.model_calls", "cost", "每轮模型调用", False, _COST, ratio=False),
    Metric("cost.tokens", "cost", "每轮 tokens", False, _COST, ratio=False),
    Metric("cases.pass_rate", "cases", "用例通过率"),
)
METRICS: dict[str, Metric] = {metric.key: metric for metric in _METRICS}
NODES = {
    "classify": "classify：意图与改写",
    "retrieve": "retrieve：检索",
    "rerank": "rerank：重排",
    "answer": "answer：回答",
    "cite_check": "cite_check：引用核对",
    "judge": "评审模型",
    "cost": "成本",
    "cases": "用例",
}

_MEANS = {
    "classify.intent_accuracy": "intent_ok",
    "classify.rewrite_accuracy": "rewrite_ok",
    "retrieve.recall@1": "recall@1",
    "retrieve.recall@5": "recall@5",
    "retrieve.mrr": "rr",
    "rerank.ndcg": "ndcg",
    "rerank.evidence_recall": "evidence_recall",
    "rerank.evidence_precision": "evidence_precision",
    "answer.citation_precision": "citation_precision",
    "answer.citation_recall": "citation_recall",
    "answer.supported_ratio": "supported_ratio",
    "answer.false_refusal": "false_refusal",
    "answer.match": "match",
    "answer.f1": "f1",
    "judge.faithfulness": "faithfulness",
    "judge.relevance": "relevance",
    "cost.model_calls": "model_calls",
    "cost.tokens": "tokens",
}
"""Metrics that are the mean of one observation over the turns that have it."""
OBSERVATIONS = {obs: METRICS[key] for key, obs in _MEANS.items()}


# —— text ——

_CJK = "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
_ANSWER_TOKEN = re.compile(rf"[{_CJK}]|[^\W{_CJK}_]+")
_CITATION = re.compile(r"\[\d{1,3}\]")


def normalize(text: str) -> str:
    """For "contains": compatibility forms folded, case folded, `[n]`, spaces and punctuation
    dropped, so "1903 年" matches "1903年" and "ＰＩＰ install" matches "pip install"."""
    folded = unicodedata.normalize("NFKC", _CITATION.sub("", text)).casefold()
    return "".join(
        ch for ch in folded if not ch.isspace() and not unicodedata.category(ch).startswith("P")
    )


def answer_tokens(text: str) -> list[str]:
    """CJK characters one by one, other words whole (as CMRC 2018's evaluation splits)."""
    folded = unicodedata.normalize("NFKC", _CITATION.sub("", text)).casefold()
    return _ANSWER_TOKEN.findall(folded)


def char_f1(prediction: str, reference: str) -> float:
    """Token-overlap F1 of `answer_tokens`; 0 when either side has none."""
    predicted, wanted = Counter(answer_tokens(prediction)), Counter(answer_tokens(reference))
    common = sum((predicted & wanted).values())
    if common == 0:
        return 0.0
    precision = common / sum(predicted.values())
    recall = common / sum(wanted.values())
    return 2 * precision * recall / (precision + recall)


# —— one turn ——


def is_gold(passage: Passage | Mapping[str, Any], ref: str) -> bool:
    """A gold reference names a passage by id (`id#2` counts as `id`) or by title."""
    passage_id = str(passage["id"])
    return ref in (passage_id, passage_id.split("#", 1)[0], passage["title"])


def gold_ranks(passages: Sequence[Passage], gold: Sequence[str]) -> list[int | None]:
    """1-based rank of the first passage matching each gold reference, None when absent."""
    return [
        next((rank for rank, p in enumerate(passages, start=1) if is_gold(p, ref)), None)
        for ref in gold
    ]


def ndcg(passages: Sequence[Passage], gold: Sequence[str]) -> float:
    """Binary-relevance nDCG over the whole list: each gold reference counts once, at the
    first passage that matches it, so a section split into chunks cannot exceed 1."""
    if not passages:
        return 0.0
    found = {rank for rank in gold_ranks(passages, gold) if rank is not None}
    dcg = sum(1 / math.log2(rank + 1) for rank in found)
    ideal = sum(1 / math.log2(rank + 1) for rank in range(1, min(len(gold), len(passages)) + 1))
    return dcg / ideal


@dataclass(frozen=True)
class Expect:
    """What one turn should do; an empty field expects nothing."""

    intent: str | None = None
    gold: tuple[str, ...] = ()
    """Passages that answer the turn: ids or titles. Feed the retrieval and citation metrics."""
    answers: tuple[str, ...] = ()
    """Reference answers: the answer must contain one of them (normalised); also scored by F1."""
    contains: tuple[str, ...] = ()
    """The answer must contain every one of these (normalised)."""
    not_contains: tuple[str, ...] = ()
    refuse: bool | None = None
    """True: blocked or "not found"; False: a real answer."""
    cite: bool | None = None
    """True: the answer cites at least one passage; False: it cites none."""
    max_model_calls: int | None = None
    query_contains: tuple[str, ...] = ()
    """The classify node's rewritten question must contain these: the follow-up resolved."""
    query_not_contains: tuple[str, ...] = ()
    """The search string must contain none of these: a new topic is not glued to the old one."""


@dataclass(frozen=True)
class Check:
    name: str
    """Which expectation: intent, answers, contains, not_contains, refuse, cite, …"""
    ok: bool
    message: str
    """Chinese, for people: what went wrong (shown when the check fails)."""
    expected: str = ""
    """Chinese, for people: what the case expects, shown whether the check passed or not."""


@dataclass
class TurnRecord:
    """One turn as the runner saw it: the graph's result and what the user was shown."""

    text: str
    result: TurnResult
    answer: str
    """The answer as delivered: masked by the sensitive-word filter."""
    blocked: bool = False
    """The sensitive-word filter stopped the question before the graph."""
    safety_hits: list[str] = field(default_factory=list)
    seconds: float = 0.0
    error: str | None = None
    judge: dict[str, Any] | None = None
    """Faithfulness and relevance (0..1) and the judge's reason, when a judge ran."""

    @property
    def refused(self) -> bool:
        """Blocked, or a knowledge turn answered without a single citation ("not found"),
        as the service's metrics classify outcomes."""
        result = self.result
        return (
            self.blocked
            or result.intent == "blocked"
            or (result.intent == "knowledge" and not result.citations)
        )


def observe(
    expect: Expect, record: TurnRecord, *, support_threshold: float
) -> tuple[dict[str, Any], list[Check]]:
    """The turn's observation (see the module docstring) and its checks."""
    result, answer = record.result, record.answer
    gold = list(expect.gold)
    obs: dict[str, Any] = dict.fromkeys(_MEANS.values())
    obs |= {
        "model_calls": result.model_calls,
        "tokens": result.tokens,
        "refused": record.refused,
        "refuse_expected": expect.refuse is True,
    }
    if expect.refuse is False:
        obs["false_refusal"] = record.refused
    if expect.answers and result.evidence:
        # What the model was shown, by the only measure that needs no gold list: does the
        # passage contain a reference answer?
        references = [normalize(ref) for ref in expect.answers]
        obs["evidence_precision"] = _share(
            any(ref in normalize(f"{p['title']} {p['text']}") for ref in references)
            for p in result.evidence
        )
    if record.judge is not None:
        obs["faithfulness"] = record.judge["faithfulness"]
        obs["relevance"] = record.judge["relevance"]
    if result.verdict is not None:
        obs["supported_ratio"] = result.verdict["supported_ratio"]
    obs["citation_precision"] = _citation_precision(
        answer, result, gold, support_threshold=support_threshold
    )
    if gold:
        ranks = gold_ranks(result.candidates, gold)
        obs["recall@1"] = _share(r is not None and r <= 1 for r in ranks)
        obs["recall@5"] = _share(r is not None and r <= 5 for r in ranks)
        obs["rr"] = 1 / min((r for r in ranks if r is not None), default=math.inf)
        obs["ndcg"] = ndcg(result.ranked, gold)
        obs["evidence_recall"] = _share(r is not None for r in gold_ranks(result.evidence, gold))
        cited = [{"id": c["passage_id"], "title": c["title"]} for c in result.citations]
        obs["citation_recall"] = _share(any(is_gold(c, ref) for c in cited) for ref in gold)

    checks: list[Check] = []
    if record.error is not None:
        checks.append(Check("error", False, f"运行出错：{record.error}", "运行不出错"))
    if expect.intent is not None:
        obs["intent_ok"] = result.intent == expect.intent
        checks.append(
            Check(
                "intent",
                obs["intent_ok"],
                f"意图应为 {expect.intent}，实际 {result.intent}",
                f"意图为 {expect.intent}",
            )
        )
    if expect.query_contains or expect.query_not_contains:
        query = normalize(result.query)
        missing = [t for t in expect.query_contains if normalize(t) not in query]
        glued = [t for t in expect.query_not_contains if normalize(t) in query]
        obs["rewrite_ok"] = not missing and not glued
    if expect.query_contains:
        checks.append(
            Check(
                "query_contains",
                not missing,
                f"检索的问题缺少 {'、'.join(missing)}（实际：{result.query}）",
                f"检索的问题包含 {'、'.join(expect.query_contains)}",
            )
        )
    if expect.query_not_contains:
        checks.append(
            Check(
                "query_not_contains",
                not glued,
                f"检索的问题不该包含 {'、'.join(glued)}（实际：{result.query}）",
                f"检索的问题不含 {'、'.join(expect.query_not_contains)}",
            )
        )
    if expect.answers:
        shown = normalize(answer)
        obs["match"] = any(normalize(ref) in shown for ref in expect.answers)
        obs["f1"] = max(char_f1(answer, ref) for ref in expect.answers)
        checks.append(
            Check(
                "answers",
                obs["match"],
                f"回答没有包含参考答案：{' / '.join(expect.answers)}",
                f"回答包含参考答案之一：{' / '.join(expect.answers)}",
            )
        )
    if expect.contains:
        missing = [t for t in expect.contains if normalize(t) not in normalize(answer)]
        checks.append(
            Check(
                "contains",
                not missing,
                f"回答缺少 {'、'.join(missing)}",
                f"回答包含 {'、'.join(expect.contains)}",
            )
        )
    if expect.not_contains:
        present = [t for t in expect.not_contains if normalize(t) in normalize(answer)]
        checks.append(
            Check(
                "not_contains",
                not present,
                f"回答不应包含 {'、'.join(present)}",
                f"回答不包含 {'、'.join(expect.not_contains)}",
            )
        )
    if expect.refuse is not None:
        wanted = "应拒答或回答没有找到" if expect.refuse else "不应拒答"
        checks.append(Check("refuse", record.refused == expect.refuse, wanted, wanted))
    if expect.cite is not None:
        wanted = "回答应带引用" if expect.cite else "回答不应带引用"
        checks.append(Check("cite", bool(result.citations) == expect.cite, wanted, wanted))
    if expect.max_model_calls is not None:
        checks.append(
            Check(
                "max_model_calls",
                result.model_calls <= expect.max_model_calls,
                f"模型调用 {result.model_calls} 次，超过上限 {expect.max_model_calls}",
                f"模型调用不超过 {expect.max_model_calls} 次",
            )
        )
    return {key: _rounded(value) for key, value in obs.items()}, checks


def _citation_precision(
    answer: str, result: TurnResult, gold: Sequence[str], *, support_threshold: float
) -> float | None:
    """Share of (sentence, cited passage) pairs where the passage is gold or supports the
    sentence as the citation check measures support; None without citations."""
    by_index = {c["index"]: c["passage_id"] for c in result.citations}
    passages = {p["id"]: p for p in result.evidence}
    good = total = 0
    for sentence in split_sentences(answer):
        claim = strip_citations(sentence).strip()
        for number in citation_numbers(sentence):
            total += 1
            passage = passages.get(by_index.get(number, ""))
            if passage is None:
                continue
            text = f"{passage['title']} {passage['text']}"
            if any(is_gold(passage, ref) for ref in gold) or (
                # Weighed as the citation check weighs it: against the question the model was
                # asked, not the search string (which may carry earlier questions along).
                support_score(claim, text, result.question or result.query) >= support_threshold
            ):
                good += 1
    return good / total if total else None


def _share(flags: Iterable[bool]) -> float:
    values = list(flags)
    return sum(values) / len(values)


def _rounded(value: Any) -> Any:
    return round(value, DIGITS) if isinstance(value, float) else value


# —— turns and cases as compared ——


@dataclass
class TurnOutcome:
    """What a baseline keeps of a turn: enough to recompute metrics and to show a change."""

    text: str
    query: str
    intent: str
    answer: str
    obs: dict[str, Any]
    failures: list[Check] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        return {
            "text": self.text,
            "query": self.query,
            "intent": self.intent,
            "answer": self.answer,
            "obs": {key: value for key, value in self.obs.items() if value is not None},
            "failures": [[check.name, check.message] for check in self.failures],
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> TurnOutcome:
        return cls(
            text=data["text"],
            query=data["query"],
            intent=data["intent"],
            answer=data["answer"],
            obs=dict(data["obs"]),
            failures=[Check(name, False, message) for name, message in data["failures"]],
        )


@dataclass
class CaseOutcome:
    id: str
    turns: list[TurnOutcome]

    @property
    def passed(self) -> bool:
        return not any(turn.failures for turn in self.turns)

    def as_json(self) -> dict[str, Any]:
        return {"passed": self.passed, "turns": [turn.as_json() for turn in self.turns]}

    @classmethod
    def from_json(cls, case_id: str, data: Mapping[str, Any]) -> CaseOutcome:
        return cls(case_id, [TurnOutcome.from_json(turn) for turn in data["turns"]])


@dataclass(frozen=True)
class MetricValue:
    value: float | None
    n: int
    """How many turns (or cases) the value is over."""


def aggregate(cases: Sequence[CaseOutcome]) -> dict[str, MetricValue]:
    """Every metric over these cases (see the module docstring)."""
    turns = [turn.obs for case in cases for turn in case.turns]
    values: dict[str, MetricValue] = {}
    for key, name in _MEANS.items():
        present = [float(obs[name]) for obs in turns if obs.get(name) is not None]
        values[key] = MetricValue(_mean(present), len(present))
    refused = [obs for obs in turns if obs["refused"]]
    expected = [obs for obs in turns if obs["refuse_expected"]]
    hits = sum(1 for obs in refused if obs["refuse_expected"])
    values["answer.refusal_precision"] = MetricValue(
        _rounded(hits / len(refused)) if refused else None, len(refused)
    )
    values["answer.refusal_recall"] = MetricValue(
        _rounded(hits / len(expected)) if expected else None, len(expected)
    )
    passed = [case.passed for case in cases]
    values["cases.pass_rate"] = MetricValue(_mean([float(p) for p in passed]), len(passed))
    return {key: values[key] for key in METRICS}


def _mean(values: Sequence[float]) -> float | None:
    return round(sum(values) / len(values), DIGITS) if values else None


# —— comparing two runs ——

ChangeStatus = Literal["regressed", "within", "same", "improved", "n/a"]
CaseStatus = Literal["regressed", "improved", "changed"]


@dataclass(frozen=True)
class MetricChange:
    metric: Metric
    before: float | None
    after: float | None
    tolerance: Tolerance
    status: ChangeStatus
    """regressed: worse beyond the tolerance; within: worse, but within it."""

    @property
    def delta(self) -> float | None:
        if self.before is None or self.after is None:
            return None
        return round(self.after - self.before, DIGITS)


@dataclass(frozen=True)
class MovedCase:
    id: str
    status: CaseStatus
    changes: list[str]
    """Chinese lines: what moved, turn by turn."""
    before: CaseOutcome
    after: CaseOutcome


@dataclass
class Comparison:
    before_label: str
    after_label: str
    metrics: list[MetricChange]
    moved: list[MovedCase]
    compared: int
    """Cases present on both sides: the metrics are over these."""
    added: list[str] = field(default_factory=list)
    """Cases only the later run has (new in the suite)."""
    missing: list[str] = field(default_factory=list)
    """Cases only the earlier run has (not run this time)."""

    @property
    def regressions(self) -> list[MetricChange]:
        return [change for change in self.metrics if change.status == "regressed"]

    @property
    def regressed(self) -> bool:
        return bool(self.regressions)


def compare(
    before: Mapping[str, CaseOutcome],
    after: Mapping[str, CaseOutcome],
    *,
    tolerances: Mapping[str, Tolerance],
    before_label: str,
    after_label: str,
) -> Comparison:
    """Metrics over the cases both runs have, each judged against its tolerance (the suite's,
    else the metric's default), and every case whose outcome moved."""
    common = [case_id for case_id in after if case_id in before]
    old = aggregate([before[case_id] for case_id in common])
    new = aggregate([after[case_id] for case_id in common])
    changes = []
    for key, metric in METRICS.items():
        tolerance = tolerances.get(key, metric.tolerance)
        status = _status(metric, old[key].value, new[key].value, tolerance)
        changes.append(MetricChange(metric, old[key].value, new[key].value, tolerance, status))
    moved = [
        moved_case
        for case_id in common
        if (moved_case := _moved(before[case_id], after[case_id])) is not None
    ]
    return Comparison(
        before_label=before_label,
        after_label=after_label,
        metrics=changes,
        moved=moved,
        compared=len(common),
        added=[case_id for case_id in after if case_id not in before],
        missing=[case_id for case_id in before if case_id not in after],
    )


def _status(
    metric: Metric, before: float | None, after: float | None, tolerance: Tolerance
) -> ChangeStatus:
    if before is None or after is None:
        return "n/a"
    worse = (before - after) if metric.higher_is_better else (after - before)
    if worse > tolerance.allowed(before) + EPSILON:
        return "regressed"
    if worse > EPSILON:
        return "within"
    return "improved" if worse < -EPSILON else "same"


def _moved(before: CaseOutcome, after: CaseOutcome) -> MovedCase | None:
    lines: list[str] = []
    better = worse = False
    if before.passed and not after.passed:
        worse = True
        lines.append("新失败")
    elif not before.passed and after.passed:
        better = True
        lines.append("已修复")
    for number, (old, new) in enumerate(zip(before.turns, after.turns, strict=False), start=1):
        where = f"第 {number} 轮"
        old_failed = {check.name for check in old.failures}
        for check in new.failures:
            if check.name not in old_failed:
                worse = True
                lines.append(f"{where} 未通过：{check.message}")
        new_failed = {check.name for check in new.failures}
        for check in old.failures:
            if check.name not in new_failed:
                better = True
                lines.append(f"{where} 已通过：{check.message}")
        for name, metric in OBSERVATIONS.items():
            was, now = old.obs.get(name), new.obs.get(name)
            if was == now:
                continue
            lines.append(f"{where} {metric.label}：{_shown(was)} → {_shown(now)}")
            if was is not None and now is not None:
                improved = (now > was) == metric.higher_is_better
                better, worse = better or improved, worse or not improved
        if old.obs["refused"] != new.obs["refused"]:
            verb = "变为拒答" if new.obs["refused"] else "不再拒答"
            lines.append(f"{where} {verb}")
            right = new.obs["refused"] == new.obs["refuse_expected"]
            better, worse = better or right, worse or not right
        if old.intent != new.intent:
            lines.append(f"{where} 意图：{old.intent} → {new.intent}")
        if old.query != new.query:
            lines.append(f"{where} 改写：{old.query} → {new.query}")
        if old.answer != new.answer:
            lines.append(f"{where} 回答有变化")
    if len(before.turns) != len(after.turns):
        lines.append(f"轮数：{len(before.turns)} → {len(after.turns)}")
    if not lines:
        return None
    status: CaseStatus = (
        "regressed" if worse and not better else "improved" if better and not worse else "changed"
    )
    if before.passed != after.passed:
        status = "regressed" if before.passed else "improved"
    return MovedCase(after.id, status, lines, before, after)


def _shown(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "是" if value else "否"
    return f"{value:g}" if isinstance(value, float) else str(value)
