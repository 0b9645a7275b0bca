from pathlib import Path

import agent.services as services_module
from agent.gateway import Speaker
from agent.policy.tenants import OPEN_PRINCIPAL
from agent.runtime import open_runtime
from agent.services import get_services
from agent.settings import Settings
from graphs.qa import build

FIXTURES = Path(__file__).parents[1] / "fixtures"


async def test_the_runtime_answers_through_its_gateway_and_closes(tmp_path: Path) -> None:
    settings = Settings(
        data_dir=tmp_path / "data",
        default_docs=FIXTURES / "kb",
        ollama_url="http://127.0.0.1:9",  # nothing listens: degraded answers
        ollama_timeout=1.0,
    )
    async with open_runtime(settings, build) as runtime:
        assert await get_services() is runtime.services
        assert runtime.services.embedded[settings.kb_name].count() > 0
        speaker = Speaker(platform="qq", scene="private", user_id="u1")
        turn = await runtime.gateway.admit(OPEN_PRINCIPAL, speaker, "月光扫地机器人售价多少？")
        answer = await runtime.gateway.answer(turn)
        assert answer.degraded and answer.citations
        assert answer.result.query == "月光扫地机器人售价多少？"
        state = await runtime.gateway.graph.aget_state(
            {"configurable": {"thread_id": answer.thread_id}}
        )
        assert len(state.values["messages"]) == 2
        [row] = runtime.services.audit.turns(None, limit=5) if runtime.services.audit else []
        assert row["trace_id"] == answer.trace_id
    # Closed on exit: the knowledge base is shut and the process holds no services any more.
    assert runtime.services.embedded[settings.kb_name]._closed
    assert services_module._current is None
