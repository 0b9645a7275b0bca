"""`qqrag chat`: a terminal conversation with the graph, showing what every node did."""

from __future__ import annotations

import asyncio
from typing import Any

from rich.console import Console
from rich.markup import escape

from agent.checkpoints import open_checkpointer
from agent.context import Context
from agent.services import ensure_default_knowledge, services_from_settings, set_services
from agent.settings import get_settings
from agent.turns import TurnResult, stream_turn
from graphs.qa import build


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


def _show_result(console: Console, result: TurnResult) -> None:
    tag = " [yellow](降级)[/]" if result.degraded else ""
    console.print(f"[bold cyan]机器人>[/]{tag} {escape(result.answer)}")
    for c in result.citations:
        console.print(f"  [dim][{c['index']}] {escape(c['title'])} · {escape(c['source'])}[/]")
    console.print(f"  [dim]模型调用 {result.model_calls} 次，{result.tokens} tokens[/]")


async def run_chat(thread: str, context: Context, console: Console) -> None:
    settings = get_settings()
    services = services_from_settings(settings)
    ensure_default_knowledge(services.embedded[settings.kb_name], settings)
    set_services(services)
    console.print(
        f"对话 {thread}，模型 {context.chat_model}，Ollama {settings.ollama_url}。"
        "输入 /reset 清空对话，/quit 退出。"
    )
    async with open_checkpointer(settings) as saver:
        graph = build(saver)
        while True:
            try:
                text = (await asyncio.to_thread(console.input, "[bold green]你>[/] ")).strip()
            except (EOFError, KeyboardInterrupt):
                break
            if text in ("/quit", "/exit"):
                break
            if text == "/reset":
                await saver.adelete_thread(thread)
                console.print("[dim]对话已清空[/]")
                continue
            if not text:
                continue
            async for kind, payload in stream_turn(graph, thread, text, context, tokens=False):
                if kind == "node":
                    _show_node(console, payload)
                elif kind == "result":
                    _show_result(console, payload)
    set_services(None)
    services.close()
