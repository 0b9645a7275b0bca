"""The gateway's wiring from settings and the health of the state it shares between replicas."""

from __future__ import annotations

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from agent.gateway import Gateway
from agent.policy.quota import QuotaLimits
from agent.policy.redis_store import RedisQuotaStore
from agent.services import Services
from agent.settings import Settings
from agent.turns import QAGraph
from evals.harness import free_port


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
