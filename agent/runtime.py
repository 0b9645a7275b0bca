"""The service's parts assembled from settings, in one place: `qqrag serve` and `qqrag chat`
open the same runtime, so a turn from either meets the same gates, stores and graph."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass

from agent.checkpoints import Checkpointer, open_checkpointer
from agent.gateway import Gateway
from agent.services import Services, ensure_default_knowledge, services_from_settings, set_services
from agent.settings import Settings
from agent.threads import one_process_at_a_time
from agent.turns import QAGraph

GraphBuilder = Callable[[Checkpointer], QAGraph]
"""`graphs.qa.build`: passed in by the caller, since agent/ sits below graphs/."""


@dataclass
class Runtime:
    settings: Settings
    services: Services
    saver: Checkpointer
    gateway: Gateway


@asynccontextmanager
async def open_runtime(settings: Settings, build: GraphBuilder) -> AsyncIterator[Runtime]:
    """Services, the default knowledge base, the checkpointer and the gateway; closed on exit."""
    async with AsyncExitStack() as stack:
        # Worker processes (QQRAG_WORKERS) start together: creating the tables and filling the
        # default knowledge base go one process at a time, the later ones find them done.
        async with one_process_at_a_time(settings.data_dir / "startup.lock"):
            services = services_from_settings(settings)
            stack.callback(services.close)
            kb = services.embedded[settings.kb_name]
            await asyncio.to_thread(ensure_default_knowledge, kb, settings)
            saver = await stack.enter_async_context(open_checkpointer(settings))
            gateway = Gateway.from_settings(settings, services, build(saver))
            stack.callback(gateway.close)
        set_services(services)
        stack.callback(set_services, None)
        services.on_outage = gateway.count_outage
        yield Runtime(settings, services, saver, gateway)
