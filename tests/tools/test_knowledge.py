"""The knowledge interface over every implementation, and the wrappers built on backends."""

import asyncio
import logging
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import get_type_hints

import pytest

from evals.fakes.maxkb import FIXTURE_KNOWLEDGE_ID, FakeMaxKB, Fault, load_fixture_knowledge
from tests.conftest import FIXTURES
from tools.base import KnowledgeBackend, Passage, TermCounts, stand_in, statistics
from tools.health import Health, Status
from tools.kb import EmbeddedKB
from tools.knowledge import FallbackKnowledge, MergedKnowledge, find_evidence
from tools.maxkb import MaxKBConfig, MaxKBConfigError, MaxKBKnowledge
from tools.rerank import NoReranker

MAXKB_QUESTION = "广三铁路在哪年建成？"
MAXKB_GOLD = "01a20f1e-20d1-7df1-ae8e-2e09a4a69f7f"
LOCAL_QUESTION = "星尘打印机保修多久？"


@dataclass
class Subject:
    knowledge: KnowledgeBackend
    query: str
    """Finds at least three passages while everything is up."""
    take_down: Callable[[], None]
    """What breaks: the (primary) server goes away or its database closes."""
    when_down: Status
    fallback: tuple[str, str] | None = None
    """For a wrapper: a query the fallback answers, and the fallback's name."""


def embedded(tmp_path: Path, name: str) -> EmbeddedKB:
    base = EmbeddedKB(tmp_path / f"{name}.sqlite", name)
    base.add_path(FIXTURES / "kb")
    return base


def maxkb_backend(fake: FakeMaxKB) -> MaxKBKnowledge:
    config = MaxKBConfig(
        url=fake.url, token=fake.user_token, knowledge_ids=(FIXTURE_KNOWLEDGE_ID,), retries=0
    )
    return MaxKBKnowledge(config)


@pytest.fixture
def maxkb_server() -> Iterator[FakeMaxKB]:
    fake = FakeMaxKB(knowledge=[load_fixture_knowledge(FIXTURES / "maxkb")]).start()
    yield fake
    fake.stop()


IMPLEMENTATIONS = ["embedded", "maxkb", "fallback-embedded", "fallback-maxkb", "merged"]


@pytest.fixture(params=IMPLEMENTATIONS)
async def subject(
    request: pytest.FixtureRequest, tmp_path: Path, maxkb_server: FakeMaxKB
) -> AsyncIterator[Subject]:
    kind = request.param
    maxkb = maxkb_backend(maxkb_server)
    main, spare = embedded(tmp_path, "主库"), embedded(tmp_path, "备用")
    if kind == "embedded":
        yield Subject(main, LOCAL_QUESTION, main.close, "down")
    elif kind == "maxkb":
        yield Subject(maxkb, MAXKB_QUESTION, maxkb_server.stop, "down")
    elif kind == "fallback-embedded":
        wrapper = FallbackKnowledge(main, spare)
        yield Subject(wrapper, LOCAL_QUESTION, main.close, "degraded", (LOCAL_QUESTION, "备用"))
    elif kind == "fallback-maxkb":
        wrapper = FallbackKnowledge(maxkb, spare)
        fallback = (LOCAL_QUESTION, "备用")
        yield Subject(wrapper, MAXKB_QUESTION, maxkb_server.stop, "degraded", fallback)
    else:
        yield Subject(MergedKnowledge([main, maxkb]), LOCAL_QUESTION, maxkb_server.stop, "down")
    await maxkb.aclose()
    main.close()
    spare.close()


async def test_search_returns_passages_best_first_and_at_most_k(subject: Subject) -> None:
    keys = set(get_type_hints(Passage))
    for k in (1, 3):
        passages = await subject.knowledge.search(subject.query, k)
        assert 1 <= len(passages) <= k
        assert all(set(passage) == keys for passage in passages)
        scores = [passage["score"] for passage in passages]
        assert scores == sorted(scores, reverse=True)


async def test_health_is_up_then_says_what_broke(subject: Subject) -> None:
    assert (await subject.knowledge.health()).status == "ok"
    subject.take_down()
    health = await subject.knowledge.health()
    assert health.status == subject.when_down
    assert health.message


@pytest.mark.parametrize("subject", ["fallback-embedded", "fallback-maxkb"], indirect=True)
async def test_a_wrapper_searches_its_fallback_while_the_primary_is_down(subject: Subject) -> None:
    assert subject.fallback is not None
    query, name = subject.fallback
    subject.take_down()
    passages = await subject.knowledge.search(query, 3)
    assert passages and {passage["kb"] for passage in passages} == {name}


async def test_a_wrapper_is_down_when_its_fallback_is_too(tmp_path: Path) -> None:
    main, spare = embedded(tmp_path, "主库"), embedded(tmp_path, "备用")
    wrapper = FallbackKnowledge(main, spare)
    main.close()
    spare.close()
    health = await wrapper.health()
    assert health.status == "down"
    assert "主库" in health.message and "备用" in health.message


class Static:
    """A tiny backend standing in for the embedded knowledge base."""

    name = "embedded"

    def __init__(self) -> None:
        self.queries: list[str] = []

    async def search(self, query: str, k: int) -> list[Passage]:
        self.queries.append(query)
        passage = Passage(
            id="local-1", title="本地", source="guide.md", text="本地资料", score=1.0, kb="default"
        )
        return [passage][:k]

    async def health(self) -> Health:
        return Health.up()


async def test_fallback_serves_while_maxkb_is_down_and_warns_once(
    maxkb_server: FakeMaxKB, caplog: pytest.LogCaptureFixture
) -> None:
    primary, local = maxkb_backend(maxkb_server), Static()
    knowledge = FallbackKnowledge(primary, local)
    try:
        assert knowledge.name == "maxkb"
        assert (await knowledge.search(MAXKB_QUESTION, 3))[0]["id"] == MAXKB_GOLD
        maxkb_server.stop()

        with caplog.at_level(logging.WARNING, logger="tools.knowledge"):
            first = await knowledge.search(MAXKB_QUESTION, 3)
            second = await knowledge.search("铁路", 3)
            health = await knowledge.health()
        assert [first[0]["id"], second[0]["id"]] == ["local-1", "local-1"]
        assert local.queries == [MAXKB_QUESTION, "铁路"]
        assert health.status == "degraded" and "无法连接 MaxKB" in health.message
        assert sum("不可用，改用" in record.message for record in caplog.records) == 1

        maxkb_server.start()
        assert (await knowledge.search(MAXKB_QUESTION, 3))[0]["id"] == MAXKB_GOLD
        assert (await knowledge.health()).ok
        assert "恢复了" in caplog.text
    finally:
        await primary.aclose()


async def test_breaker_skips_maxkb_during_an_outage_and_tries_again_later(
    maxkb_server: FakeMaxKB,
) -> None:
    primary = maxkb_backend(maxkb_server)
    knowledge = FallbackKnowledge(primary, Static(), failures=2, reset_after=0.3)
    try:
        maxkb_server.reset()
        maxkb_server.fail_next(Fault.HTTP_500, times=5)
        for _ in range(4):
            assert (await knowledge.search(MAXKB_QUESTION, 3))[0]["id"] == "local-1"
        # Two failures opened the breaker: the next two searches never reached MaxKB.
        assert len(maxkb_server.requests) == 2
        await asyncio.sleep(0.35)
        maxkb_server.reset()
        assert (await knowledge.search(MAXKB_QUESTION, 3))[0]["id"] == MAXKB_GOLD
        assert len(maxkb_server.requests) == 1
    finally:
        await primary.aclose()


async def test_searches_the_open_circuit_skips_are_told_as_outages(
    maxkb_server: FakeMaxKB,
) -> None:
    primary = maxkb_backend(maxkb_server)
    told: list[str] = []
    primary.on_outage = told.append
    knowledge = FallbackKnowledge(primary, Static(), failures=2, reset_after=60)
    knowledge.on_outage = told.append
    try:
        maxkb_server.stop()
        for _ in range(4):
            found = await knowledge.search(MAXKB_QUESTION, 3)
            assert stand_in(found)
        assert told == ["maxkb"] * 4
    finally:
        await primary.aclose()


async def test_what_the_fallback_finds_is_marked_as_a_stand_in(maxkb_server: FakeMaxKB) -> None:
    primary = maxkb_backend(maxkb_server)
    knowledge = FallbackKnowledge(primary, Static())
    try:
        assert stand_in(await knowledge.search(MAXKB_QUESTION, 3)) == ""
        maxkb_server.stop()
        found = await knowledge.search(MAXKB_QUESTION, 3)
        assert "无法连接 MaxKB" in stand_in(found)
        evidence = await find_evidence(
            knowledge, NoReranker(), MAXKB_QUESTION, top_k=3, top_n=3, threshold=0.0
        )
        assert [p["id"] for p in evidence] == ["local-1"] and stand_in(evidence)
    finally:
        await primary.aclose()


async def test_fallback_also_covers_failing_answers_and_rejected_credentials(
    maxkb_server: FakeMaxKB,
) -> None:
    primary = MaxKBKnowledge(
        MaxKBConfig(
            url=maxkb_server.url,
            token=maxkb_server.user_token,
            knowledge_ids=(FIXTURE_KNOWLEDGE_ID,),
        )
    )
    knowledge = FallbackKnowledge(primary, Static())
    try:
        maxkb_server.fail_next(Fault.CODE_500_IN_200)
        assert (await knowledge.search(MAXKB_QUESTION, 3))[0]["id"] == "local-1"
        maxkb_server.fail_next(Fault.AUTH_401)
        health = await knowledge.health()
        assert health.status == "degraded" and "QQRAG_MAXKB_TOKEN" in health.message
    finally:
        await primary.aclose()


async def test_fallback_does_not_hide_configuration_errors(maxkb_server: FakeMaxKB) -> None:
    maxkb_server.show_source = False
    primary = MaxKBKnowledge(
        MaxKBConfig(url=maxkb_server.url, mode="app_chat_v2", api_key=maxkb_server.api_key)
    )
    knowledge = FallbackKnowledge(primary, Static())
    try:
        with pytest.raises(MaxKBConfigError, match="显示知识来源"):
            await knowledge.search(MAXKB_QUESTION, 3)
        health = await knowledge.health()
        assert health.status == "down" and health.misconfigured
    finally:
        await primary.aclose()


async def test_merged_health_is_its_worst_base(tmp_path: Path) -> None:
    first, second = embedded(tmp_path, "甲"), EmbeddedKB(tmp_path / "乙.sqlite", "乙")
    try:
        merged = MergedKnowledge([first, second])
        health = await merged.health()
        assert health == Health.down("知识库 乙 为空", "先运行 qqrag kb add PATH")
    finally:
        first.close()
        second.close()


async def test_term_counts_come_from_the_index_and_follow_every_write(tmp_path: Path) -> None:
    base = embedded(tmp_path, "counts")
    total = base.count()
    counts = await base.term_counts(["星尘", "打印机", "火星"])
    assert counts is not None and counts.passages == total
    assert counts.containing["火星"] == 0
    assert 0 < counts.containing["星尘"] < total
    # Another connection (another worker) removes a document: the counts follow.
    other = EmbeddedKB(tmp_path / "counts.sqlite", "counts")
    removed = other.remove_source(other.sources()[0].source)
    after = await base.term_counts(["星尘"])
    assert after is not None and after.passages == total - removed
    assert await base.term_counts([]) == TermCounts(total - removed, {}, after.scope)
    # This same instance writing after a read: its own changes count too.
    base.add_path(FIXTURES / "kb")
    again = await base.term_counts(["星尘"])
    assert again is not None and again.passages == total
    # Terms FTS5 split when it indexed them are looked up by their parts.
    parts = await base.term_counts(["127.0.0.1", "c++"])
    assert parts is not None and set(parts.containing) == {"127.0.0.1", "c++"}
    other.close()
    # Closed, it has no statistics to give rather than an error.
    base.close()
    assert await base.term_counts(["星尘"]) is None


async def test_wrappers_pass_on_the_statistics_they_can_stand_for(
    tmp_path: Path, maxkb_server: FakeMaxKB
) -> None:
    one, two = embedded(tmp_path, "one"), embedded(tmp_path, "two")
    merged = await MergedKnowledge([one, two]).term_counts(["星尘"])
    single = await one.term_counts(["星尘"])
    assert merged is not None and single is not None
    assert merged.passages == 2 * single.passages
    assert merged.containing["星尘"] == 2 * single.containing["星尘"]
    # Two bases in one file report the same, whole-file counts: counted once, not twice.
    same_file = EmbeddedKB(tmp_path / "one.sqlite", "other")
    shared = await MergedKnowledge([one, same_file]).term_counts(["星尘"])
    assert shared == single
    same_file.close()
    maxkb = maxkb_backend(maxkb_server)
    # MaxKB tells none, so a base merged with it or standing in for it tells none either:
    # the embedded base's counts would weigh MaxKB's passages by other documents.
    assert statistics(maxkb) is None
    assert await MergedKnowledge([one, maxkb]).term_counts(["星尘"]) is None
    assert await FallbackKnowledge(maxkb, one).term_counts(["星尘"]) is None
    primary = await FallbackKnowledge(two, one).term_counts(["星尘"])
    assert primary == await two.term_counts(["星尘"])
