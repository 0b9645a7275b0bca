"""The gateway's wiring from settings, the health of the state it shares between replicas, and
the order of its gates."""

from __future__ import annotations

import asyncio

import pytest
import redis
from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.base import BaseCheckpointSaver, CheckpointTuple
from redis.backoff import NoBackoff
from redis.retry import Retry

from agent.audit import AuditLog
from agent.checkpoints import LoopSqliteSaver
from agent.gateway import TIMEOUT_MESSAGE, Gateway, Refusal, Said, Speaker
from agent.policy.admission import LocalAdmission
from agent.policy.metrics import Metrics
from agent.policy.profiles import GrayRelease
from agent.policy.quota import QuotaLimits, SqliteQuotaStore
from agent.policy.redis_store import RedisQuotaStore
from agent.policy.safety import SafetyFilter
from agent.policy.tenants import OPEN_PRINCIPAL, Principal, TenantStore
from agent.services import Services
from agent.settings import Settings
from agent.threads import KeyedLocks
from agent.turns import QAGraph, turn_config
from evals.harness import free_port
from tests.conftest import ScriptedModels
from tools.base import Passage
from tools.health import Health
from tools.kb import EmbeddedKB


async def test_local_state_has_nothing_shared_to_report(
    settings: Settings, services: Services, graph: QAGraph
):
    gateway = Gateway.from_settings(settings, services, graph)
    try:
        assert await gateway.shared_state_health() is None
    finally:
        gateway.close()


async def test_a_shared_store_reports_its_health(
    settings: Settings, services: Services, graph: QAGraph
):
    gateway = Gateway.from_settings(settings, services, graph)
    gateway.quota.close()
    gone = redis.Redis(port=free_port(), socket_connect_timeout=0.2, retry=Retry(NoBackoff(), 0))
    gateway.quota = RedisQuotaStore(gone, QuotaLimits())
    try:
        health = await gateway.shared_state_health()
        # Turns go on with per-process fallbacks: degraded, not down.
        assert health is not None and health.status == "degraded"
    finally:
        gateway.close()


def local_gateway(
    settings: Settings, services: Services, graph: QAGraph, limits: QuotaLimits
) -> Gateway:
    """One process's gateway with one turn in flight at a time and the given quota."""
    return Gateway(
        settings,
        services,
        graph,
        tenants=TenantStore(settings.tenants_path),
        quota=SqliteQuotaStore(settings.quota_path, limits),
        admission=LocalAdmission(1),
        safety=SafetyFilter(settings.data_dir / "no-words"),
        gray=GrayRelease(settings.data_dir / "no-profiles.yaml"),
        metrics=Metrics(),
        locks=KeyedLocks(),
    )


async def test_a_busy_refusal_costs_no_quota(
    settings: Settings, services: Services, graph: QAGraph, models: ScriptedModels
):
    """Under overload a user gets "busy", then an answer once a slot frees: the refused
    attempts must not use up the per-minute quota before any answer came."""
    gateway = local_gateway(settings, services, graph, QuotaLimits(user_rpm=1))
    speaker = Speaker(platform="qq", scene="private", user_id="u1")
    try:
        assert gateway.admission.try_enter()  # another turn holds the only slot
        for _ in range(3):
            turn = await gateway.admit(OPEN_PRINCIPAL, speaker, "星尘打印机售价多少？")
            with pytest.raises(Refusal) as busy:
                await gateway.answer(turn)
            assert busy.value.code == "busy"
        gateway.admission.leave()

        models.say("星尘打印机售价 2999 元[1]。")
        turn = await gateway.admit(OPEN_PRINCIPAL, speaker, "星尘打印机售价多少？")
        assert (await gateway.answer(turn)).citations
        # The quota still counts what was served: the next one in the minute is refused.
        turn = await gateway.admit(OPEN_PRINCIPAL, speaker, "星尘打印机保修多久？")
        with pytest.raises(Refusal) as limited:
            await gateway.answer(turn)
        assert limited.value.code == "quota_exceeded"
        assert gateway.admission.in_flight == 0
    finally:
        gateway.close()


async def test_a_retried_message_gets_its_stored_answer_not_a_second_turn(
    settings: Settings, services: Services, graph: QAGraph, models: ScriptedModels
):
    """QQ resends a webhook, a client retries after a timeout: the same message id from the
    same speaker is answered from the conversation, with no model call, quota or new turn."""
    gateway = local_gateway(settings, services, graph, QuotaLimits(user_rpm=2))
    first = Speaker(platform="qq", scene="private", user_id="u1", message_id="m1")
    try:
        models.say("星尘打印机售价 2999 元[1]。")
        turn = await gateway.admit(OPEN_PRINCIPAL, first, "星尘打印机售价多少？")
        answered = await gateway.answer(turn)
        calls = len(models.calls)
        for _ in range(3):
            retry = await gateway.admit(OPEN_PRINCIPAL, first, "星尘打印机售价多少？")
            again = await gateway.answer(retry)
            assert (again.answer, again.citations) == (answered.answer, answered.citations)
        assert len(models.calls) == calls
        state = await graph.aget_state({"configurable": {"thread_id": answered.thread_id}})
        assert len(state.values["messages"]) == 2
        # Another message is a new turn, and the retries left the quota for it.
        models.say("星尘打印机整机保修两年[1]。")
        other = Speaker(platform="qq", scene="private", user_id="u1", message_id="m2")
        turn = await gateway.admit(OPEN_PRINCIPAL, other, "星尘打印机保修多久？")
        assert "保修" in (await gateway.answer(turn)).answer
    finally:
        gateway.close()


def speaker(user: str = "u1") -> Speaker:
    return Speaker(platform="qq", scene="private", user_id=user)


async def test_past_one_waiting_message_a_conversation_answers_please_wait(
    settings: Settings, services: Services, graph: QAGraph, models: ScriptedModels
):
    """With a hanging model, messages of one conversation used to queue without bound on its
    lock: now one waits, the next ones get a quick reply, and the waiting one is answered."""
    gateway = local_gateway(settings, services, graph, QuotaLimits())
    gateway.admission = LocalAdmission(8)
    try:
        gate = models.hang()
        models.say("星尘打印机售价 2999 元[1]。", "星尘打印机整机保修两年[1]。")
        first = asyncio.create_task(
            gateway.answer(await gateway.admit(OPEN_PRINCIPAL, speaker(), "星尘打印机售价多少？"))
        )
        await asyncio.wait_for(models.model.hanging.wait(), 5)
        second = asyncio.create_task(
            gateway.answer(await gateway.admit(OPEN_PRINCIPAL, speaker(), "星尘打印机保修多久？"))
        )
        await asyncio.sleep(0.05)  # the second one is waiting for the conversation
        for _ in range(3):
            late = await gateway.admit(OPEN_PRINCIPAL, speaker(), "星尘打印机有几种颜色？")
            with pytest.raises(Refusal) as refused:
                async with asyncio.timeout(5):
                    await gateway.answer(late)
            assert refused.value.code == "conversation_busy"
            assert "上一个问题还在回答" in refused.value.message
        gate.set()
        assert "2999" in (await asyncio.wait_for(first, 5)).answer
        assert "两年" in (await asyncio.wait_for(second, 5)).answer
        assert gateway.admission.in_flight == 0
        state = await graph.aget_state(turn_config(gateway.thread_of(OPEN_PRINCIPAL, speaker())))
        assert len(state.values["messages"]) == 4
    finally:
        gateway.close()


async def test_a_hanging_model_still_gets_the_user_a_degraded_answer_in_time(
    settings: Settings, services: Services, graph: QAGraph, models: ScriptedModels
):
    """The model never answers and its own timeout is a minute: the turn's deadline cuts the
    call short and the user gets the quoted evidence, without Ollama being blamed for it."""
    gateway = local_gateway(
        settings.model_copy(update={"turn_deadline": 1.5}), services, graph, QuotaLimits()
    )
    try:
        models.hang()
        models.say("never sent")
        turn = await gateway.admit(OPEN_PRINCIPAL, speaker(), "星尘打印机售价多少？")
        # The test's guard against a hang, far past the deadline.
        answer = await asyncio.wait_for(gateway.answer(turn), 10)
        assert answer.degraded and answer.citations
        assert not services.breaker.opened
        assert gateway.metrics.dependency_errors.labels("ollama")._value.get() == 0
    finally:
        gateway.close()


class HangingKnowledge:
    """A knowledge base whose searches never come back."""

    name = "hanging"

    async def search(self, query: str, k: int) -> list[Passage]:
        await asyncio.Event().wait()
        return []

    async def health(self) -> Health:
        return Health.up()


async def test_gaps_show_the_users_own_question_after_a_topic_switch(
    settings: Settings, services: Services, graph: QAGraph, models: ScriptedModels
):
    gateway = local_gateway(settings, services, graph, QuotaLimits())
    services.audit = AuditLog(settings.data_dir / "audit.sqlite")
    models.say("星尘打印机整机保修两年[1]。", "星尘打印机标准版售价 1999 元[1]。")
    try:
        for text in ("星尘打印机保修多久？", "那它售价多少？", "火星的首都是哪里？"):
            await gateway.answer(await gateway.admit(OPEN_PRINCIPAL, speaker(), text))
        assert [(g["question"], g["query"], g["times"]) for g in services.audit.gaps()] == [
            ("火星的首都是哪里？", "火星的首都是哪里？", 1)
        ]
    finally:
        gateway.close()


async def test_whatever_hangs_the_turn_ends_at_its_deadline_and_keeps_nothing(
    settings: Settings, services: Services, graph: QAGraph, models: ScriptedModels
):
    gateway = local_gateway(settings, services, graph, QuotaLimits())
    services.audit = AuditLog(settings.data_dir / "audit.sqlite")
    models.say("星尘打印机售价 2999 元[1]。")
    thread = gateway.thread_of(OPEN_PRINCIPAL, speaker())
    try:
        await gateway.answer(await gateway.admit(OPEN_PRINCIPAL, speaker(), "星尘打印机售价多少？"))
        services.knowledge = HangingKnowledge()  # type: ignore[assignment]
        gateway.settings = settings.model_copy(update={"turn_deadline": 0.5})
        turn = await gateway.admit(OPEN_PRINCIPAL, speaker(), "星尘打印机保修多久？")
        with pytest.raises(Refusal) as refused:
            await asyncio.wait_for(gateway.answer(turn), 10)
        assert refused.value.code == "timeout" and refused.value.status == 503
        assert gateway.metrics.turn_timeouts._value.get() == 1
        latest = services.audit.turns(thread_id=thread, limit=1)[0]
        assert (latest["trace_id"], latest["outcome"], latest["answer"]) == (
            turn.trace_id,
            "timeout",
            "",
        )
        assert gateway.admission.in_flight == 0
        # The abandoned turn is not in the conversation: no question without its answer.
        # (Its task keeps the conversation until it has taken back what it stored.)
        async with asyncio.timeout(10), gateway.locks.hold(thread):
            state = await graph.aget_state(turn_config(thread))
        assert [m.content for m in state.values["messages"]] == [
            "星尘打印机售价多少？",
            "星尘打印机售价 2999 元[1]。",
        ]
    finally:
        gateway.close()


async def test_a_turn_that_fails_stores_nothing(
    settings: Settings, services: Services, graph: QAGraph, models: ScriptedModels
):
    """A failure inside a turn (here a bug-like error from the model call, which no node
    catches) used to leave the question stored without its answer: a half turn that the next
    turn read as history."""
    gateway = local_gateway(settings, services, graph, QuotaLimits())
    services.audit = AuditLog(settings.data_dir / "audit.sqlite")
    thread = gateway.thread_of(OPEN_PRINCIPAL, speaker())
    try:
        models.say("星尘打印机售价 2999 元[1]。", ValueError("boom"))
        await gateway.answer(await gateway.admit(OPEN_PRINCIPAL, speaker(), "星尘打印机售价多少？"))
        with pytest.raises(ValueError, match="boom"):
            await gateway.answer(
                await gateway.admit(OPEN_PRINCIPAL, speaker(), "星尘打印机保修多久？")
            )
        state = await graph.aget_state(turn_config(thread))
        assert len(state.values["messages"]) == 2
        # The operator still sees the failed question.
        failed = services.audit.turns(thread_id=thread, limit=1)[0]
        assert (failed["question"], failed["outcome"]) == ("星尘打印机保修多久？", "error")
        # A first turn that fails leaves no conversation at all.
        models.say(ValueError("boom"))
        with pytest.raises(ValueError, match="boom"):
            await gateway.answer(
                await gateway.admit(OPEN_PRINCIPAL, speaker("u2"), "星尘打印机保修多久？")
            )
        fresh = await graph.aget_state(
            turn_config(gateway.thread_of(OPEN_PRINCIPAL, speaker("u2")))
        )
        assert not fresh.values.get("messages")
    finally:
        gateway.close()


async def test_links_are_hidden_unless_the_service_or_the_tenant_allows_them(
    settings: Settings, services: Services, graph: QAGraph, models: ScriptedModels, kb: EmbeddedKB
):
    """Answer, snippets, titles and sources alike, and a retried message's stored answer."""
    (folder := settings.data_dir / "planted").mkdir()
    (folder / "driver.md").write_text(
        "# 星尘打印机驱动 https://evil.example/t\n\n"
        "星尘打印机驱动的下载地址是 https://evil.example/d 和 https://docs.example.com/d 。\n",
        encoding="utf-8",
    )
    kb.add_path(folder)
    reply = "星尘打印机驱动的下载地址是 https://evil.example/d 和 https://docs.example.com/d[1]。"
    service = settings.model_copy(update={"link_allowlist": ["example.com"]})
    gateway = local_gateway(service, services, graph, QuotaLimits(user_rpm=0))
    gateway.tenants.create_tenant("plain", ["test"])
    gateway.tenants.create_tenant("trusting", ["test"], link_domains=["evil.example"])
    try:
        answers = {}
        for tenant in ("plain", "trusting"):
            models.say(reply)
            principal = Principal(tenant=tenant, role="client", key_id="k")
            speaker = Speaker(platform="qq", scene="private", user_id="u1", message_id="m1")
            turn = await gateway.admit(principal, speaker, "星尘打印机驱动在哪里下载？")
            answers[tenant] = await gateway.answer(turn)
            # A retried message is answered from the conversation, masked the same way.
            replayed = await gateway.answer(await gateway.admit(principal, speaker, "重发"))
            assert replayed.answer == answers[tenant].answer
        plain, trusting = answers["plain"], answers["trusting"]
        assert plain.answer == (
            "星尘打印机驱动的下载地址是 [链接已隐藏] 和 https://docs.example.com/d[1]。"
        )
        assert plain.result.answer == plain.answer
        (cited,) = plain.citations
        assert "evil" not in cited["snippet"] + cited["title"]
        assert "https://docs.example.com/d" in cited["snippet"]
        assert plain.result.citations == plain.citations
        assert trusting.answer == reply
        assert "https://evil.example/t" in trusting.citations[0]["title"]
        assert gateway.mask("见 https://evil.example/d", "plain") == "见 [链接已隐藏]"
        assert gateway.mask("见 https://evil.example/d", "trusting") == "见 https://evil.example/d"
    finally:
        gateway.close()


async def test_a_turn_that_carries_its_conversation_stores_nothing_however_it_ends(
    settings: Settings, services: Services, graph: QAGraph, models: ScriptedModels
):
    """The OpenAI convention: the conversation comes with the request. The turn reads it as
    history; answered, failed or cut at its deadline, it leaves no thread behind."""
    (words := settings.data_dir / "words").mkdir()
    (words / "banned.txt").write_text("违禁品\n", encoding="utf-8")
    gateway = local_gateway(settings, services, graph, QuotaLimits())
    gateway.safety = SafetyFilter(words)
    history: list[Said] = [
        ("user", "哪里能买到违禁品？"),
        ("assistant", "抱歉，这个请求我不能处理。"),
        ("user", "星尘打印机保修多久？"),
        ("assistant", "星尘打印机整机保修两年[1]。"),
    ]
    saver = graph.checkpointer
    assert isinstance(saver, BaseCheckpointSaver)

    async def stored() -> list[object]:
        return [checkpoint async for checkpoint in saver.alist(None)]

    try:
        models.say("星尘打印机标准版售价 1999 元[1]。")
        turn = await gateway.admit(OPEN_PRINCIPAL, speaker(), "那它售价多少？", history=history)
        assert turn.thread != gateway.thread_of(OPEN_PRINCIPAL, speaker())
        answer = await gateway.answer(turn)
        assert answer.result.query == "星尘打印机保修多久？ 那它售价多少？"
        # As a stored thread would hold it: the refused question and its reply never joined.
        assert [m.content for m in models.calls[-1][1:3]] == [
            "星尘打印机保修多久？",
            "星尘打印机整机保修两年[1]。",
        ]
        assert await stored() == []

        models.say(ValueError("boom"))
        with pytest.raises(ValueError, match="boom"):
            await gateway.answer(
                await gateway.admit(OPEN_PRINCIPAL, speaker(), "那它售价多少？", history=history)
            )
        assert await stored() == []

        services.knowledge = HangingKnowledge()  # type: ignore[assignment]
        gateway.settings = settings.model_copy(update={"turn_deadline": 0.5})
        turn = await gateway.admit(OPEN_PRINCIPAL, speaker(), "那它售价多少？", history=history)
        with pytest.raises(Refusal, match=TIMEOUT_MESSAGE):
            await asyncio.wait_for(gateway.answer(turn), 10)
        # The abandoned turn's task deletes its thread once it has ended.
        async with asyncio.timeout(10), gateway.locks.hold(turn.thread):
            assert await stored() == []
    finally:
        gateway.close()


async def test_a_turn_reads_its_conversation_once(
    settings: Settings, services: Services, graph: QAGraph, models: ScriptedModels
):
    """The replay check's checkpoint read is the turn's own: one database read per turn."""
    saver = graph.checkpointer
    assert isinstance(saver, LoopSqliteSaver)
    reads = 0
    read = saver.get_tuple

    def counted(config: RunnableConfig) -> CheckpointTuple | None:
        nonlocal reads
        reads += 1
        return read(config)

    gateway = local_gateway(settings, services, graph, QuotaLimits(user_rpm=0))
    try:
        asked = {
            "星尘打印机售价多少？": "星尘打印机售价 2999 元[1]。",
            "星尘打印机保修多久？": "星尘打印机整机保修两年[1]。",
        }
        for n, (text, reply) in enumerate(asked.items()):
            models.say(reply)
            speaker = Speaker(platform="qq", scene="private", user_id="u1", message_id=f"m{n}")
            saver.get_tuple = counted  # type: ignore[method-assign]
            reads = 0
            answered = await gateway.answer(await gateway.admit(OPEN_PRINCIPAL, speaker, text))
            saver.get_tuple = read  # type: ignore[method-assign]
            assert reads == 1
            assert answered.answer == reply
        state = await graph.aget_state(turn_config(answered.thread_id))
        assert len(state.values["messages"]) == 4
    finally:
        gateway.close()
