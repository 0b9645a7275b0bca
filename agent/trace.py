"""A turn's model calls as the nodes made them, for whoever watches closely (`qqrag chat
--trace`, the stream's trace): the messages sent, role and content, and the raw reply.

They travel in LangGraph's custom stream, never in the state: a rendered prompt is several KB,
and the checkpoint would store it with the conversation for nothing. `agent.turns` attaches
each call to its node's event.
"""

from __future__ import annotations

from typing import Any

from langchain_core.messages import AIMessage, BaseMessage
from langgraph.config import get_config
from langgraph.runtime import Runtime

from agent.context import Context

_ROLES = {"human": "user", "ai": "assistant"}


def record_call(
    runtime: Runtime[Context],
    model: str,
    messages: list[BaseMessage],
    reply: BaseMessage | None = None,
    error: BaseException | None = None,
) -> None:
    """One model call of the running node into the turn's trace; a no-op unless the turn asked
    for one (`Context.trace`), so the arguments must be what the node has built anyway."""
    if not runtime.context.trace:
        return
    call: dict[str, Any] = {"model": model, "messages": [_message(m) for m in messages]}
    if reply is not None:
        call |= _reply(reply)
    if error is not None:
        call["error"] = f"{type(error).__name__}: {error}"
    node = get_config()["metadata"]["langgraph_node"]
    runtime.stream_writer({"node": node, "call": call})


def _text(message: BaseMessage) -> str:
    content: Any = message.content
    if isinstance(content, list):
        return "".join(p if isinstance(p, str) else str(p.get("text", "")) for p in content)
    return str(content)


def _message(message: BaseMessage) -> dict[str, Any]:
    shown: dict[str, Any] = {"role": _ROLES.get(message.type, message.type)}
    shown["content"] = _text(message)
    if isinstance(message, AIMessage) and message.tool_calls:
        shown["tool_calls"] = [{"name": c["name"], "args": c["args"]} for c in message.tool_calls]
    return shown


def _reply(reply: BaseMessage) -> dict[str, Any]:
    """The reply as the model gave it: `<think>` left in place when a template inlines it, and
    the thinking Ollama returns apart (`reasoning_content`) alongside."""
    out: dict[str, Any] = {"output": _text(reply)}
    if thinking := reply.additional_kwargs.get("reasoning_content"):
        out["thinking"] = thinking
    if isinstance(reply, AIMessage):
        if reply.tool_calls:
            out["tool_calls"] = [{"name": c["name"], "args": c["args"]} for c in reply.tool_calls]
        usage = reply.usage_metadata
        out["tokens"] = {
            "prompt": usage["input_tokens"] if usage else 0,
            "completion": usage["output_tokens"] if usage else 0,
        }
    return out
