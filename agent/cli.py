"""The `qqrag` command: run the service, talk to the graph, manage the knowledge base."""

from __future__ import annotations

import asyncio
import difflib
import errno
import getpass
import json
import os
import re
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from importlib.metadata import version
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from pydantic import ValidationError
from rich.cells import cell_len
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text
from typer._click.exceptions import BadParameter, MissingParameter, NoSuchOption, UsageError
from typer.core import TyperGroup

from agent import configuration
from agent.configuration import ConfigError, Shown
from agent.links import PLACEHOLDER
from agent.policy.tenants import OPEN_TENANT, Principal
from agent.settings import Settings, get_settings
from agent.validation import explain

EXIT_FAILED = 1
"""A check found errors (qqrag doctor), or a command could not do what it was asked."""
EXIT_CONFIG = 2
"""A setting or a command-line argument is wrong: nothing was started."""
EXIT_CANNOT_LISTEN = 3
"""qqrag serve: the port is taken, or the address cannot be listened on."""
EXIT_STARTUP_FAILED = 4
"""qqrag serve: the service failed while starting (a dependency, see the log above)."""


class _Commands(TyperGroup):
    """The `qqrag` command group: settings that cannot be used end whichever command read
    them with one Chinese line each and EXIT_CONFIG, instead of a traceback; so does a
    mistake on the command line (click's messages are English)."""

    def invoke(self, ctx: Any) -> Any:  # typer's own copy of click.Context
        try:
            return super().invoke(ctx)
        except UsageError as exc:
            typer.echo(_usage_problem(exc), err=True)
            raise typer.Exit(EXIT_CONFIG) from None
        except ValidationError as exc:
            if exc.title != Settings.__name__:
                raise
            problem = configuration.service_problems(exc, os.environ)
        except ConfigError as exc:
            problem = exc
        for line in problem.lines:
            typer.echo(line, err=True)
        raise typer.Exit(EXIT_CONFIG)


def _usage_problem(exc: UsageError) -> str:
    """A mistake on the command line, in one Chinese line that says how to get help."""
    ctx = exc.ctx
    command = ctx.command_path if ctx is not None else "qqrag"
    help_hint = f"用 {command} --help 查看用法。"
    if isinstance(exc, NoSuchOption):
        # click lists the close ones, the closest first.
        close = f"，是不是 {exc.possibilities[0]}？" if exc.possibilities else "。"
        return f"命令行参数有误：{command} 没有选项 {exc.option_name}{close}{help_hint}"
    if isinstance(exc, BadParameter):
        hint = exc.param_hint or (exc.param.get_error_hint() if exc.param else "")
        name = " / ".join(hint) if isinstance(hint, list | tuple) else str(hint).strip("'")
        if isinstance(exc, MissingParameter):
            return f"命令行参数有误：缺少 {name}。{help_hint}"
        # typer checks values with pydantic and keeps its error as the cause.
        if isinstance(exc.__cause__, ValidationError):
            return f"命令行参数有误：{explain(exc.__cause__.errors()[0], name)}。{help_hint}"
        return f"命令行参数有误：{name} 的值不对（{exc.message}）。{help_hint}"
    unknown = re.match(r"No such command '(.+?)'\.", exc.message)
    if unknown and ctx is not None and isinstance(ctx.command, TyperGroup):
        commands = ctx.command.list_commands(ctx)
        nearest = difflib.get_close_matches(unknown.group(1), commands, n=1)
        guess = f"，是不是 {nearest[0]}？" if nearest else "。"
        return f"命令行参数有误：{command} 没有 {unknown.group(1)} 这个命令{guess}{help_hint}"
    return f"命令行参数有误（{exc.format_message()}）。{help_hint}"


if TYPE_CHECKING:
    from tools.kb import IngestPlan, IngestReport

app = typer.Typer(
    cls=_Commands, help="QQ 知识库问答智能体", no_args_is_help=True, add_completion=False
)
kb_app = typer.Typer(help="管理嵌入式知识库", no_args_is_help=True)
tenant_app = typer.Typer(help="管理租户", no_args_is_help=True)
key_app = typer.Typer(help="管理 API 密钥", no_args_is_help=True)


def _show_version(wanted: bool) -> None:
    if wanted:
        console.print(f"qqrag {version('qqrag')}")
        raise typer.Exit()


@app.callback()
def main(
    show_version: Annotated[
        bool,
        typer.Option("--version", callback=_show_version, is_eager=True, help="显示版本号后退出"),
    ] = False,
) -> None:
    """QQ 知识库问答智能体"""
    for line in _unknown_settings():
        typer.echo(line, err=True)


def _unknown_settings() -> list[str]:
    """A warning for each QQRAG_* name in the environment or a settings file that neither
    the service nor the bot reads."""
    from bot.config import Config, read_files

    known = [name for names in configuration.SERVICE_NAMES.values() for name in names]
    known += [field.upper() for field in Config.model_fields]
    known += configuration.DEVELOPMENT_NAMES
    files = dict([*configuration.service_files(), *read_files()])
    found = [(configuration.ENVIRONMENT, os.environ), *files.items()]
    return configuration.unknown(found, known)


app.add_typer(kb_app, name="kb")
app.add_typer(tenant_app, name="tenant")
app.add_typer(key_app, name="key")
console = Console()


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="监听地址，默认 QQRAG_HOST")] = None,
    port: Annotated[int | None, typer.Option(help="端口，默认 QQRAG_PORT")] = None,
) -> None:
    """启动 HTTP 服务。退出码：0 正常结束，2 配置有误，3 端口被占用或地址不能监听，4 启动时出错。"""
    import uvicorn
    from uvicorn.config import STARTUP_FAILURE

    from agent.policy.metrics import share_between_processes

    settings = get_settings()
    host, port = host or settings.host, port or settings.port
    # Before the start-up, which takes seconds (the knowledge base, the checkpoints), to say
    # at once which setting to change.
    if (problem := _cannot_listen(host, port)) is not None:
        typer.echo(problem, err=True)
        raise typer.Exit(EXIT_CANNOT_LISTEN)
    if settings.workers > 1:
        share_between_processes(settings.data_dir / "metrics")
    try:
        uvicorn.run(
            "server:app",
            host=host,
            port=port,
            log_config=_log_config(),
            log_level="info",
            proxy_headers=True,
            workers=settings.workers,
        )
    except SystemExit as exc:
        if exc.code != STARTUP_FAILURE:
            raise
        typer.echo("qqrag 服务启动时出错，没有启动：原因见上面的日志。", err=True)
        raise typer.Exit(EXIT_STARTUP_FAILED) from None


def _cannot_listen(host: str, port: int) -> str | None:
    """Why `qqrag serve` could not listen on host:port, in Chinese, naming the setting to
    change; None when it can. Binds the way uvicorn does, then lets go."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            failure = exc
        else:
            return None
    if failure.errno == errno.EADDRINUSE:
        other = port + 1 if port < 65535 else 8000
        return (
            f"端口 {port} 已被占用（{host}:{port}），服务没有启动：停掉占用它的程序，"
            f"或把 QQRAG_PORT（或 qqrag serve --port）改成别的端口，如 {other}。"
        )
    if failure.errno == errno.EACCES:
        return (
            f"没有权限监听端口 {port}（1024 以下的端口要 root 权限），服务没有启动："
            "把 QQRAG_PORT（或 qqrag serve --port）改成 1024 以上的端口，如 8000。"
        )
    if isinstance(failure, socket.gaierror) or failure.errno == errno.EADDRNOTAVAIL:
        return (
            f"本机没有地址 {host}，服务没有启动：把 QQRAG_HOST（或 qqrag serve --host）改成"
            "本机的地址，如 127.0.0.1（只许本机访问）或 0.0.0.0（所有网卡）。"
        )
    return (
        f"不能监听 {host}:{port}（{failure.strerror}），服务没有启动："
        "检查 QQRAG_HOST 与 QQRAG_PORT（或 qqrag serve --host、--port）。"
    )


def _log_config() -> dict[str, Any]:
    """uvicorn's logging, and the service's own loggers at INFO through the same handler:
    otherwise Python shows only their warnings, and the first start would import the user
    guide without saying so."""
    from copy import deepcopy

    from uvicorn.config import LOGGING_CONFIG

    config = deepcopy(LOGGING_CONFIG)
    for name in ("agent", "tools", "qqrag"):
        config["loggers"][name] = {"handlers": ["default"], "level": "INFO", "propagate": False}
    return config


def _open_kb(name: str | None) -> Any:
    from agent.backends import embedder
    from tools.kb import EmbeddedKB

    settings = get_settings()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    return EmbeddedKB(settings.kb_path, name or settings.kb_name, embedder(settings))


@kb_app.command("add")
def kb_add(
    paths: Annotated[list[Path], typer.Argument(help="文件或文件夹，可写多个", exists=True)],
    kb: Annotated[str | None, typer.Option(help="知识库名，默认 QQRAG_KB_NAME")] = None,
    yes: Annotated[
        bool, typer.Option("--yes", "-y", help="不询问，直接替换只能按同名认定是同一文件的文档")
    ] = False,
) -> None:
    """导入文档：Markdown（.md、.markdown）、纯文本（.txt）、JSONL（.jsonl，每行一个 {"id","title","text"}）、PDF（.pdf）和 Word（.docx）。

    同一个文件再次导入时，没改动的跳过，改动过的替换它原来的段落；别的文件夹里的同名文件是另一个文档，
    存成更长的名字，不会顶替已有的文档。要替换的文档在导入前先列出来。读不了的文件逐个列出原因，
    其余照常导入；有文件没导入时退出码为 1。
    """
    base = _open_kb(kb)
    try:
        plan = base.plan(paths)
        _announce(plan)
        guesses = len(plan.guesses)
        if guesses and not _confirm(
            f"上面 {guesses} 个文档只能按同名认定是同一个文件，替换吗？", yes
        ):
            raise typer.Exit(1)
        report = base.ingest(plan, progress=True)
    finally:
        base.close()
    _show_report(base.name, report)
    if report.failed:
        console.print(
            f"[red]{len(report.failed)} 个文件没有导入，知识库里它们原有的内容（如果有）保持不变；"
            "改好后重新运行 qqrag kb add[/]"
        )
        raise typer.Exit(1)


def _announce(plan: IngestPlan) -> None:
    """Before anything changes: which documents get replaced, which files take a longer name
    because theirs is taken, which documents were found at a new place."""
    for item in plan.files:
        file, source = escape(str(item.file)), escape(item.source)
        stored = item.stored
        if item.action == "replace" and stored is not None:
            if not item.guessed:
                why = "文件改过"
            elif stored.origin is None:
                why = "它是升级前导入的，没有记下原文件，只能按同名认定是这个文件"
            else:
                why = f"它原来的文件 {escape(stored.origin)} 已经不在了，只能按同名认定是这个文件"
            console.print(
                f"[yellow]将替换[/] {source}（{file}）：{why}；原来的 {stored.passages} 段删除，"
                "换成新内容",
                soft_wrap=True,
            )
        elif item.action == "add" and item.wanted:
            console.print(
                f"{file}：名字 {escape(item.wanted)} 已属于另一个文件"
                f"（{escape(_origin_text(item.clash_origin))}），这个文件存为 {source}，"
                "那个文档保持不动",
                soft_wrap=True,
            )
        elif item.moved_from is not None:
            console.print(
                f"{source} 的文件从 {escape(item.moved_from)} 换到了 {file}，内容相同，只记下新位置",
                soft_wrap=True,
            )


def _show_report(name: str, report: IngestReport) -> None:
    console.print(
        f"知识库 {name}：新增 {report.added_files} 个文件，替换 {report.replaced_files} 个，"
        f"未改动 {report.unchanged_files} 个，跳过 {len(report.unsupported)} 个，"
        f"没有导入 {len(report.failed)} 个；写入 {report.passages_added} 段，"
        f"删除 {report.passages_removed} 段，生成向量 {report.vectors_added} 个，"
        f"用时 {report.seconds:.2f} 秒",
        soft_wrap=True,
    )
    for file in report.unsupported:
        console.print(f"  跳过 {escape(file)}：不是能导入的格式", soft_wrap=True)
    for failure in report.failed:
        console.print(
            f"  [red]没有导入 {escape(failure.file)}：{escape(failure.reason)}[/]", soft_wrap=True
        )
    if report.vectors_error is not None:
        console.print(
            f"[yellow]没有生成向量：{escape(report.vectors_error)}。段落已保存，可以按关键词检索；"
            "Ollama 恢复后运行 qqrag kb reindex 补齐[/]",
            soft_wrap=True,
        )


def _origin_text(origin: str | None) -> str:
    from tools.kb import UPLOAD_PREFIX

    if origin is None:
        return "升级前导入，没有记下原文件"
    if origin.startswith(UPLOAD_PREFIX):
        return f"经 HTTP 上传的 {origin.removeprefix(UPLOAD_PREFIX)}"
    return origin


def _confirm(question: str, yes: bool) -> bool:
    """`--yes`, or the operator's answer; without a terminal to answer from, no."""
    if yes:
        return True
    try:
        if typer.confirm(question, default=False):
            return True
    except typer.Abort:
        console.print()
    console.print("已取消，什么也没有改动（在脚本里运行时加 --yes）")
    return False


def _record(action: str, target: str, *, kb: str | None = None, detail: dict[str, Any]) -> None:
    """An administrator's action in the audit log, done by whoever runs the command."""
    from agent.audit import AuditLog

    log = AuditLog(get_settings().audit_path)
    try:
        log.record_action(
            via="cli",
            actor=_system_user(),
            actor_tenant=None,
            action=action,
            target=target,
            kb=kb,
            detail=detail,
        )
    finally:
        log.close()


def _system_user() -> str:
    try:
        return getpass.getuser()
    except (OSError, KeyError):
        # A container's user may have neither a name in the environment nor a passwd entry.
        return "unknown"


@kb_app.command("reindex")
def kb_reindex(
    rebuild: Annotated[bool, typer.Option(help="重算所有向量（换了同名模型时用）")] = False,
    kb: Annotated[str | None, typer.Option(help="知识库名")] = None,
) -> None:
    """为缺少向量的段落生成向量（需要配置 QQRAG_EMBED_MODEL）。"""
    from tools.embeddings import EmbeddingError

    base = _open_kb(kb)
    try:
        if base.embedder is None:
            console.print(
                "[red]没有配置向量模型：先设置 QQRAG_EMBED_MODEL，例如 qwen3-embedding:0.6b[/]"
            )
            raise typer.Exit(1)
        try:
            count = base.reindex_vectors(rebuild=rebuild, progress=True)
        except EmbeddingError as exc:
            console.print(f"[red]{exc}[/]")
            raise typer.Exit(1) from exc
        console.print(f"知识库 {base.name}：生成向量 {count} 个")
    finally:
        base.close()


@kb_app.command("list")
def kb_list(kb: Annotated[str | None, typer.Option(help="知识库名")] = None) -> None:
    """列出已导入的文档：文档 ID、来源、段落数、导入时间和原文件。"""
    base = _open_kb(kb)
    try:
        table = Table("文档 ID", "来源", "段落数", "导入时间", "原文件")
        for source in base.sources():
            table.add_row(
                source.document_id,
                escape(source.source),
                str(source.passages),
                source.ingested_at,
                escape(_origin_text(source.origin)),
            )
        console.print(table)
        console.print(f"知识库 {base.name}：共 {base.count()} 段")
    finally:
        base.close()


@kb_app.command("search")
def kb_search(
    query: Annotated[str, typer.Argument(help="检索语句")],
    k: Annotated[int, typer.Option("-k", help="返回条数")] = 5,
    kb: Annotated[
        str | None, typer.Option(help="内置知识库名；不写时检索服务所用的知识库（可能是 MaxKB）")
    ] = None,
) -> None:
    """只做检索，查看会命中哪些段落（显示整段原文）。"""
    settings = get_settings()
    base = _open_kb(kb)
    try:
        if kb is None and settings.knowledge_backend == "maxkb":
            hits = asyncio.run(_search_as_the_service(settings, base, query, k))
        else:
            console.print(f"检索内置知识库 {escape(base.name)}")
            hits = base.search_sync(query, k)
    finally:
        base.close()
    width = max(console.width - 4, 20)
    for i, p in enumerate(hits, start=1):
        console.print(
            f"[bold]{i}.[/] 得分 {p['score']:.3f}  {escape(p['title'])} · {escape(p['source'])}"
        )
        for line in _wrap(p["text"], width):
            # Wrapped already, and never inside a number: rich must not wrap it again.
            console.print(f"   {escape(line)}", soft_wrap=True)
    if not hits:
        console.print("没有找到任何段落")


async def _search_as_the_service(settings: Settings, embedded: Any, query: str, k: int) -> Any:
    """The search a turn makes: MaxKB (its hit test or application, as configured), with the
    embedded base standing in while it is out when the settings allow."""
    import httpx

    from agent.backends import knowledge
    from tools.base import KnowledgeUnavailable, stand_in

    console.print(f"检索 MaxKB（{settings.maxkb_url}，{settings.maxkb_mode}）")
    async with httpx.AsyncClient() as client:
        try:
            hits = await knowledge(settings, embedded, lambda _: None, client=client).search(
                query, k
            )
        except KnowledgeUnavailable as exc:
            console.print(f"[red]{escape(str(exc))}[/]")
            raise typer.Exit(1) from exc
    if reason := stand_in(hits):
        console.print(
            f"[yellow]MaxKB 不可用，以下来自内置知识库 {escape(embedded.name)}：{escape(reason)}[/]"
        )
    return hits


_UNBROKEN = re.compile(r"(?:[!-~]+|\S)[，。、；：？！）」』”’》]*|\s+")
"""What a line is not broken inside: a run of ASCII (a number, a word, a URL) or any other
character alone (CJK), each with the closing punctuation after it, which never starts a line;
whitespace."""


def _wrap(text: str, width: int) -> list[str]:
    """Lines of `text` at most `width` cells wide, broken between CJK characters or at spaces.

    Rich breaks only at spaces: a Chinese sentence is one long word to it, cut wherever the
    line ends, in the middle of a number as readily as anywhere.
    """
    lines = []
    for paragraph in text.splitlines() or [""]:
        line = ""
        for piece in _UNBROKEN.findall(paragraph):
            if line and cell_len(line + piece.rstrip()) > width:
                lines.append(line.rstrip())
                line = "" if piece.isspace() else piece
            else:
                line += piece
            while cell_len(line) > width:  # longer than a line on its own: fold it
                lines.append(line[:width])
                line = line[width:]
        lines.append(line.rstrip())
    return lines


@kb_app.command("remove")
def kb_remove(
    documents: Annotated[
        list[str], typer.Argument(help="来源名或文档 ID（见 qqrag kb list），可写多个")
    ],
    kb: Annotated[str | None, typer.Option(help="知识库名")] = None,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="不询问，直接删除")] = False,
) -> None:
    """删除文档和它的全部段落、向量，立即生效。删除前列出要删的文档并确认；每次删除记入审计日志。"""
    base = _open_kb(kb)
    try:
        found = {}
        for ref in documents:
            info = base.document(ref)
            if info is None:
                console.print(
                    f"[red]知识库 {base.name} 里没有文档 {escape(ref)}（qqrag kb list 列出来源名和"
                    "文档 ID），什么也没有删除[/]",
                    soft_wrap=True,
                )
                raise typer.Exit(1)
            found[info.source] = info
        console.print(f"将从知识库 {base.name} 删除：", soft_wrap=True)
        for info in found.values():
            console.print(
                f"  {info.document_id}  {escape(info.source)}（{info.passages} 段，"
                f"{escape(_origin_text(info.origin))}）",
                soft_wrap=True,
            )
        if not _confirm(f"删除这 {len(found)} 个文档吗？", yes):
            raise typer.Exit(1)
        for info in found.values():
            removed = base.remove_source(info.source)
            detail = {"document_id": info.document_id, "passages": removed, "origin": info.origin}
            _record("document.remove", info.source, kb=base.name, detail=detail)
            console.print(f"已删除 {escape(info.source)}（{removed} 段）", soft_wrap=True)
    finally:
        base.close()


@app.command("chat")
def chat_command(
    user: Annotated[str, typer.Option(help="以哪个用户提问；同一用户的对话可跨次继续")] = "me",
    tenant: Annotated[
        str, typer.Option(help="以哪个租户提问（它的知识库、配额与审计）")
    ] = OPEN_TENANT,
    variant: Annotated[str | None, typer.Option(help="提示词变体")] = None,
    thinking: Annotated[bool, typer.Option(help="让模型先思考")] = False,
    model: Annotated[str | None, typer.Option(help="回答模型")] = None,
    trace: Annotated[
        bool,
        typer.Option(
            "--trace",
            help="逐个节点详细显示：发给模型的提示词、模型原始输出、草稿、引用检查、tokens 与用时",
        ),
    ] = False,
    json_lines: Annotated[
        bool,
        typer.Option("--json", help="每个节点一行 JSON（内容同 --trace），每轮最后一行是结果"),
    ] = False,
    full: Annotated[
        bool, typer.Option("--full", help="详细显示，系统提示词和段落正文不截短")
    ] = False,
    passages: Annotated[
        bool, typer.Option("--passages", help="详细显示，并给出检索到的段落全文")
    ] = False,
) -> None:
    """在终端里与问答图对话，逐个显示节点做了什么（给提示词工程师）。"""
    from agent.chat import View, run_chat
    from agent.context import Context
    from graphs.qa import build

    context = Context(thinking=thinking)
    if variant:
        context.prompt_variant = variant
    if model:
        context.chat_model = model
    principal = Principal(tenant=tenant, role="admin", key_id="cli")
    view = View(trace=trace, json=json_lines, full=full, passages=passages)
    asyncio.run(run_chat(build, principal, user, context, console, view))


@app.command()
def bot() -> None:
    """启动 QQ 机器人（NoneBot2：官方 QQ 机器人 API 与 OneBot v11，见 bot/README.md）。退出码 2：配置有误。"""
    from bot.config import read
    from bot.run import main

    read(os.environ)  # a bad setting: one line each (ConfigError), not NoneBot's traceback
    main()


@app.command(
    "eval",
    context_settings={
        "allow_extra_args": True,
        "ignore_unknown_options": True,
        "help_option_names": [],
    },
)
def eval_command(ctx: typer.Context) -> None:
    """回归评测：qqrag eval SUITE [--profile P] [--baseline FILE] [--update-baseline]（见 evals/README.md）。"""
    from evals.__main__ import main

    raise typer.Exit(main(ctx.args, prog="qqrag eval"))


@app.command(
    "bench",
    context_settings={
        "allow_extra_args": True,
        "ignore_unknown_options": True,
        "help_option_names": [],
    },
)
def bench_command(ctx: typer.Context) -> None:
    """压测：模拟 QQ 用户对 HTTP 服务多轮提问（参数同 python -m evals.bench）。"""
    from evals.bench import main

    main(ctx.args)


@app.command()
def doctor() -> None:
    """检查 Ollama、模型、数据目录和知识库，逐条给出修复方法；退出码：0 没有错误，1 有错误，2 配置有误。"""
    from agent.doctor import LABELS, report, run_checks

    findings = asyncio.run(run_checks(get_settings()))
    styles = {"ok": "green", "warn": "yellow", "error": "red"}
    # Lines wrapped here, at word and character boundaries, and printed as they are: a table
    # cell would fold a URL or a command in two.
    for status, line in report(findings, console.width):
        text = Text(line)
        if status is not None:
            text.stylize(styles[status], 0, len(LABELS[status]))
        console.print(text, soft_wrap=True)
    errors = sum(f.status == "error" for f in findings)
    if errors:
        console.print(f"[red]发现 {errors} 个错误[/]")
        raise typer.Exit(EXIT_FAILED)
    console.print("[green]一切正常[/]")


def _tenants() -> Any:
    from agent.policy.tenants import TenantStore

    settings = get_settings()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    return TenantStore(settings.tenants_path)


@contextmanager
def _tenant_store() -> Iterator[Any]:
    """The tenant store for one command, closed after it; what the store refuses (a
    ValueError, its message Chinese) ends the command with that message and exit code 1."""
    store = _tenants()
    try:
        yield store
    except ValueError as exc:
        console.print(f"[red]{exc}[/]")
        raise typer.Exit(1) from exc
    finally:
        store.close()


@tenant_app.command("add")
def tenant_add(
    name: Annotated[str, typer.Argument(help="租户名：字母、数字、_ . -")],
    kb: Annotated[
        list[str] | None, typer.Option(help="可检索的知识库，可重复；默认 default")
    ] = None,
    link_domain: Annotated[
        list[str] | None,
        typer.Option(help="回答里可以保留链接的域名（含子域名），可重复；默认不保留任何链接"),
    ] = None,
) -> None:
    """新建租户，并指定它能检索哪些知识库、回答里保留哪些域名的链接。"""
    with _tenant_store() as store:
        tenant = store.create_tenant(name, kb or [get_settings().kb_name], link_domain or ())
    console.print(f"已创建租户 {tenant.name}，知识库：{', '.join(tenant.knowledge_bases)}")
    _warn_empty_knowledge_bases(tenant.knowledge_bases)
    _show_link_domains(tenant.name, tenant.link_domains)


def _warn_empty_knowledge_bases(names: tuple[str, ...]) -> None:
    """A tenant may be set up before its documents are imported, but a misspelt name would
    leave it finding nothing, silently."""
    from tools.kb import knowledge_base_names

    settings = get_settings()
    existing = knowledge_base_names(settings.kb_path)
    # QQRAG_KB_NAME needs no import: the service fills it with the user guide, or it is MaxKB.
    for name in [n for n in names if n not in existing and n != settings.kb_name]:
        console.print(
            f"[yellow]注意：知识库 {escape(name)} 里还没有任何文档（名字写错了？），这个租户从它检索不到"
            f"内容。现有的知识库：{escape(', '.join(existing)) or '无'}；"
            f"导入文档：qqrag kb add PATH --kb {escape(name)}[/]"
        )


def _show_link_domains(name: str, domains: tuple[str, ...]) -> None:
    service = get_settings().link_allowlist
    own = f"保留这些域名的链接：{', '.join(domains)}" if domains else "自己没有设置保留链接的域名"
    rest = f"；另有 QQRAG_LINK_ALLOWLIST 的 {', '.join(service)}" if service else ""
    console.print(f"租户 {name} {own}{rest}，其他链接显示为“{PLACEHOLDER}”")


@tenant_app.command("links")
def tenant_links(
    name: Annotated[str, typer.Argument(help="租户名")],
    link_domain: Annotated[
        list[str] | None,
        typer.Option(help="回答里可以保留链接的域名（含子域名），可重复；替换原来的设置"),
    ] = None,
    clear: Annotated[bool, typer.Option("--clear", help="清空，不再保留任何链接")] = False,
) -> None:
    """查看或设置租户回答里保留哪些域名的链接；不带选项时只查看。"""
    if clear and link_domain:
        console.print("[red]--clear 和 --link-domain 只能选一个[/]")
        raise typer.Exit(1)
    with _tenant_store() as store:
        changing = clear or link_domain
        try:
            tenant = (
                store.set_link_domains(name, link_domain or ()) if changing else store.tenant(name)
            )
        except KeyError:
            tenant = None
    if tenant is None:
        console.print(f"[red]没有租户 {name}[/]")
        raise typer.Exit(1)
    _show_link_domains(tenant.name, tenant.link_domains)


@tenant_app.command("list")
def tenant_list() -> None:
    """列出租户。"""
    store = _tenants()
    try:
        table = Table("租户", "知识库", "保留链接的域名", "创建时间")
        for tenant in store.list_tenants():
            table.add_row(
                tenant.name,
                ", ".join(tenant.knowledge_bases),
                ", ".join(tenant.link_domains),
                tenant.created_at,
            )
        console.print(table)
    finally:
        store.close()


@tenant_app.command("remove")
def tenant_remove(
    name: Annotated[str, typer.Argument(help="租户名")],
    yes: Annotated[bool, typer.Option("--yes", "-y", help="不询问，直接删除")] = False,
) -> None:
    """删除租户并吊销它的全部密钥，立即生效；知识库、对话和审计记录都保留。删除前先确认，删除记入审计日志。"""
    store = _tenants()
    try:
        tenant = store.tenant(name)
        if tenant is None:
            console.print(f"[red]没有租户 {escape(name)}[/]")
            raise typer.Exit(1)
        active = [key.key_id for key in store.list_keys(name) if key.active]
        keys = (
            f"它的 {len(active)} 个有效密钥（{', '.join(active)}）"
            if active
            else "（它没有有效密钥）"
        )
        console.print(
            f"将删除租户 {escape(name)}（知识库：{escape(', '.join(tenant.knowledge_bases))}），"
            f"并吊销{keys}；知识库里的文档、对话记录和审计记录不受影响"
        )
        if not _confirm("删除这个租户吗？", yes):
            raise typer.Exit(1)
        revoked = store.remove_tenant(name)
    finally:
        store.close()
    detail = {
        "knowledge_bases": list(tenant.knowledge_bases),
        "revoked_keys": [key.key_id for key in revoked],
    }
    _record("tenant.remove", name, detail=detail)
    console.print(f"已删除租户 {escape(name)}，吊销密钥 {len(revoked)} 个")


@key_app.command("issue")
def key_issue(
    tenant: Annotated[str, typer.Argument(help="租户名；不存在时自动创建")],
    admin: Annotated[bool, typer.Option(help="管理员密钥（可读所有租户的审计与知识缺口）")] = False,
    label: Annotated[str, typer.Option(help="备注，如“官方机器人”")] = "",
) -> None:
    """签发 API 密钥。密钥只显示这一次，请立即保存；签发第一个密钥后服务开始要求鉴权。"""
    with _tenant_store() as store:
        if store.tenant(tenant) is None:
            store.create_tenant(tenant, [get_settings().kb_name])
            console.print(f"已创建租户 {tenant}")
        key = store.issue_key(tenant, "admin" if admin else "client", label)
    console.print("新密钥（只显示这一次）：")
    print(key)


@key_app.command("list")
def key_list(tenant: Annotated[str | None, typer.Option(help="只看这个租户")] = None) -> None:
    """列出密钥（只显示密钥 ID，不显示密钥本身）。"""
    store = _tenants()
    try:
        table = Table("密钥 ID", "租户", "角色", "备注", "创建时间", "状态")
        for key in store.list_keys(tenant):
            state = "有效" if key.active else f"已吊销 {key.revoked_at}"
            table.add_row(key.key_id, key.tenant, key.role, key.label, key.created_at, state)
        console.print(table)
    finally:
        store.close()


@key_app.command("revoke")
def key_revoke(
    key: Annotated[str, typer.Argument(help="密钥本身，或密钥 ID 的前 6 位以上")],
) -> None:
    """吊销密钥，立即生效。"""
    with _tenant_store() as store:
        revoked = store.revoke_key(key)
    if revoked is None:
        console.print("[red]没有找到这个有效密钥[/]")
        raise typer.Exit(1)
    _record("key.revoke", revoked.key_id, detail={"tenant": revoked.tenant})
    console.print(f"已吊销密钥 {revoked.key_id}（租户 {revoked.tenant}）")


@key_app.command("rotate")
def key_rotate(
    key: Annotated[str, typer.Argument(help="要换掉的密钥本身，或密钥 ID 的前 6 位以上")],
) -> None:
    """换新密钥：为同一租户签发角色、备注相同的新密钥，同时吊销旧密钥（立即失效）。新密钥只显示这一次。"""
    with _tenant_store() as store:
        rotation = store.rotate_key(key)
    if rotation is None:
        console.print("[red]没有找到这个有效密钥[/]")
        raise typer.Exit(1)
    old, new = rotation.old, rotation.new
    _record("key.rotate", old.key_id, detail={"tenant": old.tenant, "new_key_id": new.key_id})
    console.print(
        f"已吊销旧密钥 {old.key_id}，它立即失效；租户 {old.tenant} 的新密钥 {new.key_id}"
        "（只显示这一次，请换到用旧密钥的地方）："
    )
    print(rotation.secret)


@app.command()
def gaps(
    days: Annotated[int, typer.Option(help="最近几天")] = 7,
    tenant: Annotated[str | None, typer.Option(help="只看这个租户")] = None,
) -> None:
    """列出知识库答不上来的问题（回答为“没有找到”的），按次数排序。"""
    from agent.audit import AuditLog

    settings = get_settings()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    log = AuditLog(settings.audit_path)
    try:
        rows = log.gaps(tenant, days=days)
    finally:
        log.close()
    table = Table("次数", "问题", "检索的问题（与问题不同时）", "最近一次")
    for row in rows:
        searched = "" if row["query"] == row["question"] else row["query"]
        table.add_row(str(row["times"]), row["question"], searched, row["last_asked"])
    console.print(table)
    console.print(f"最近 {days} 天共 {len(rows)} 个知识缺口")


@app.command("config")
def show_config(
    as_json: Annotated[bool, typer.Option("--json", help="以 JSON 输出，供脚本读取")] = False,
) -> None:
    """显示服务与机器人当前生效的每一项配置及其来源（环境变量、.env 或默认值）；密钥与地址里的密码以 *** 显示。"""
    from bot import config as bot_config

    service = configuration.shown(
        get_settings(),
        configuration.SERVICE_NAMES,
        os.environ,
        configuration.service_files(),
    )
    groups = {"service": service, "bot": bot_config.read(os.environ)}
    if as_json:
        listed = {
            group: {s.name: {"value": s.value, "source": _source_code(s)} for s in shown}
            for group, shown in groups.items()
        }
        console.print_json(json.dumps(listed, ensure_ascii=False))
        return
    titles = {"service": "qqrag 服务（qqrag serve）", "bot": "QQ 机器人（qqrag bot）"}
    for group, shown in groups.items():
        console.print(f"# {titles[group]}", markup=False, highlight=False)
        for setting in shown:
            line = f"{setting.name}={_as_text(setting.value)}  # {setting.source}"
            console.print(line, markup=False, highlight=False, soft_wrap=True)


def _as_text(value: Any) -> str:
    """A value the way `.env` writes it: lists of words comma-separated, structures as JSON."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, list) and all(isinstance(item, str | int | float) for item in value):
        return ",".join(map(str, value))
    if isinstance(value, list | dict):
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    return str(value)


def _source_code(setting: Shown) -> dict[str, str]:
    """Where a value came from, for programs: environment, default, or a file's name."""
    where = setting.source.where
    codes = {configuration.ENVIRONMENT: "environment", configuration.DEFAULT: "default"}
    return {"from": codes.get(where, where), "variable": setting.source.name}


if __name__ == "__main__":
    app()
