"""`qqrag chat`: a terminal conversation through the service's own turn path, showing what
every node did."""

from __future__ import annotations

import asyncio
from typing import Any

from rich.console import Console
from rich.markup import escape

from agent.context import Context
from agent.gateway import Answer, Pin, Refusal, Speaker
from agent.policy.tenants import Principal
from agent.runtime import GraphBuilder, open_runtime
from agent.settings import get_settings


def _show_node(console: Console, summary: dict[str, Any]) -> None:
    node = summary.pop("node")
    parts = []
    for key, value in summary.items():
        if key in ("candidates", "ranked", "evidence"):
            shown = ", ".join(f"{p['id']}({p['score']:.2f}) {p['title'][:20]}" for p in value[:5])
            parts.append(f"{key}=[{shown}]")
        elif key not in ("draft", "answer"):
            parts.append(f"{key}={value}")
    console.print(f"  [dim]· {node}[/] " + escape("  ".join(parts)))


def _show_answer(console: Console, answer: Answer) -> None:
    tag = " [yellow](降级)[/]" if answer.degraded else ""
    console.print(f"[bold cyan]机器人>[/]{tag} {escape(answer.answer)}")
    for c in answer.citations:
        console.print(f"  [dim][{c['index']}] {escape(c['title'])} · {escape(c['source'])}[/]")
    result = answer.result
    console.print(f"  [dim]模型调用 {result.model_calls} 次，{result.tokens} tokens[/]")


async def run_chat(
    build: GraphBuilder, principal: Principal, user: str, context: Context, console: Console
) -> None:
    """Each line a turn through the gateway (quota, safety, audit, metrics as over HTTP), as
    `user` of `principal`'s tenant, with `context` pinned; commands such as /重置 included."""
    settings = get_settings()
    speaker = Speaker(platform="cli", scene="private", user_id=user)
    async with open_runtime(settings, build) as runtime:
        gateway = runtime.gateway
        console.print(
            f"对话 {gateway.thread_of(principal, speaker)}，模型 {context.chat_model}，"
            f"Ollama {settings.ollama_url}。输入 /重置 清空对话，/quit 退出。"
        )
        while True:
            try:
                text = (await asyncio.to_thread(console.input, "[bold green]你>[/] ")).strip()
            except (EOFError, KeyboardInterrupt):
                break
            if text in ("/quit", "/exit"):
                break
            if not text:
                continue
            try:
                turn = await gateway.admit(principal, speaker, text, pin=Pin("cli", context))
                async for kind, payload in gateway.run(turn):
                    if kind == "node":
                        _show_node(console, payload)
                    elif kind == "answer":
                        _show_answer(console, payload)
            except Refusal as refusal:
                console.print(f"[yellow]{escape(refusal.message)}[/]")
