"""tools: run the answer model's follow-up searches and number what they find."""

from __future__ import annotations

from typing import Any

from langchain_core.messages import AIMessage, ToolMessage
from langgraph.runtime import Runtime
from pydantic import ValidationError

from agent.context import Context
from agent.evidence import format_evidence
from agent.services import get_services
from agent.state import State
from tools.base import KnowledgeUnavailable, Passage, stand_in
from tools.knowledge import SEARCH_TOOL_NAME

NOTHING_NEW = "没有找到更多相关资料。"
SEARCH_FAILED = "知识库暂时无法检索，请只根据已有资料回答。"


async def call_tools(state: State, runtime: Runtime[Context]) -> dict[str, Any]:
    ctx = runtime.context
    tool = await (await get_services()).search_tool(ctx)
    request = state.scratch[-1]
    assert isinstance(request, AIMessage), "tools runs only after a tool-calling answer"
    evidence = list(state.evidence)
    numbers = {p["id"]: i for i, p in enumerate(evidence, start=1)}
    results: list[ToolMessage] = []
    stood_in = ""
    for call in request.tool_calls:
        call_id = call.get("id") or ""
        if call["name"] != SEARCH_TOOL_NAME:
            results.append(
                ToolMessage(
                    f"没有名为 {call['name']} 的工具。", tool_call_id=call_id, status="error"
                )
            )
            continue
        try:
            found: list[Passage] = await tool.ainvoke(call["args"])
        except ValidationError as exc:
            results.append(
                ToolMessage(
                    f"参数有误：{exc.errors()[0]['msg']}", tool_call_id=call_id, status="error"
                )
            )
            continue
        except KnowledgeUnavailable:
            results.append(ToolMessage(SEARCH_FAILED, tool_call_id=call_id, status="error"))
            continue
        stood_in = stand_in(found) or stood_in
        for passage in found:
            if passage["id"] not in numbers:
                evidence.append(passage)
                numbers[passage["id"]] = len(evidence)
        numbered = [(numbers[p["id"]], evidence[numbers[p["id"]] - 1]) for p in found]
        content = format_evidence(numbered) if numbered else NOTHING_NEW
        results.append(ToolMessage(content, tool_call_id=call_id, name=SEARCH_TOOL_NAME))
    update: dict[str, Any] = {
        "scratch": [*state.scratch, *results],
        "evidence": evidence,
        "tool_rounds": state.tool_rounds + 1,
    }
    if stood_in:
        update |= {"degraded": True, "knowledge_error": stood_in}
    return update
