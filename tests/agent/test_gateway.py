"""The gateway's wiring from settings, the health of the state it shares between replicas, and
the order of its gates."""

from __future__ import annotations

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from agent.gateway import Gateway, Refusal, Speaker
from agent.policy.admission import LocalAdmission
from agent.policy.metrics import Metrics
from agent.policy.profiles import GrayRelease
from agent.policy.quota import QuotaLimits, SqliteQuotaStore
from agent.policy.redis_store import RedisQuotaStore
from agent.policy.safety import SafetyFilter
from agent.policy.tenants import OPEN_PRINCIPAL, TenantStore
from agent.services import Services
from agent.settings import Settings
from agent.threads import KeyedLocks
from agent.turns import QAGraph
from evals.harness import free_port
from tests.conftest import ScriptedModels


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
