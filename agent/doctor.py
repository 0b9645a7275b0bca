"""`qqrag doctor`: check every configured dependency the way operators trip over them."""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

import httpx
from dotenv import dotenv_values
from rich.cells import cell_len

from agent.health import ollama_health, probe_ollama, serving_models
from agent.settings import Settings
from agent.storage import check_storage
from tools.health import Health

Status = Literal["ok", "warn", "error"]
_LOCAL_HOSTS = {"localhost", "127.0.0.1", "::1", "0.0.0.0"}


@dataclass
class Finding:
    check: str
    status: Status
    detail: str
    fix: str = ""


def of_health(check: str, health: Health) -> Finding:
    """A dependency's Health as the service reports it; anything short of ok is an error here,
    since doctor is run to find what to fix."""
    return Finding(check, "ok" if health.ok else "error", health.message, health.fix)


CONTAINER_FILES = (Path("/.dockerenv"), Path("/run/.containerenv"))
"""The marker files Docker and Podman leave at the root of every container."""


def in_container(environ: Mapping[str, str] = os.environ) -> bool:
    """Docker's and Podman's marker files; the `container` variable that Podman, systemd-nspawn
    and LXC set; Kubernetes' service variables, in every pod whatever the runtime."""
    markers = ("container", "KUBERNETES_SERVICE_HOST")
    return any(path.exists() for path in CONTAINER_FILES) or any(environ.get(m) for m in markers)


def _raw_ollama_url() -> str:
    return os.environ.get("QQRAG_OLLAMA_URL") or os.environ.get("OLLAMA_HOST") or ""


def check_ollama_url(settings: Settings, containerised: bool, reachable: bool) -> list[Finding]:
    """What is wrong with the address itself. A local address inside a container is a likely
    mistake, yet not when the live check reached Ollama there (host networking, Ollama in the
    same container): the live check has the last word."""
    findings = []
    raw = _raw_ollama_url().rstrip("/")
    if raw.endswith("/v1"):
        findings.append(
            Finding(
                "Ollama 地址",
                "warn",
                f"地址 {raw} 带了 /v1（OpenAI 兼容前缀），qqrag 用的是 Ollama 原生接口",
                f"把 QQRAG_OLLAMA_URL 改成 {settings.ollama_url}（已自动去掉 /v1）",
            )
        )
    host = urlsplit(settings.ollama_url).hostname or ""
    if containerised and host in _LOCAL_HOSTS and not reachable:
        findings.append(
            Finding(
                "Ollama 地址",
                "error",
                f"在容器里运行，Ollama 地址是 {settings.ollama_url}，连不上：容器里的 localhost 指容器自己",
                "改成 compose 服务名（如 http://ollama:11434）或宿主机地址（如 http://host.docker.internal:11434）",
            )
        )
    return findings


async def check_ollama(settings: Settings, client: httpx.AsyncClient) -> list[Finding]:
    """The probe /readyz makes, then what only an operator at the console needs: is it really
    Ollama, and can each configured model do its job."""
    url = settings.ollama_url
    probe = await probe_ollama(client, url)
    if probe.error:
        return [of_health("Ollama 连接", ollama_health(probe, serving_models(settings)))]
    try:
        root = (await client.get(f"{url}/")).text
    except httpx.HTTPError:
        root = ""
    findings = []
    if "Ollama is running" not in root:
        findings.append(
            Finding(
                "Ollama 连接",
                "error",
                f"{url} 有响应，但不是 Ollama（首页没有“Ollama is running”）",
                "确认地址和端口（默认 11434）指向 Ollama",
            )
        )
    else:
        findings.append(Finding("Ollama 连接", "ok", f"{url}：Ollama is running"))
    wanted = {
        settings.chat_model: ("回答模型", "tools"),
        settings.effective_classify_model: ("分类与改写模型", "completion"),
    }
    if settings.embed_model:
        wanted[settings.embed_model] = ("向量模型", "embedding")
    if settings.rerank_model:
        wanted[settings.rerank_model] = ("重排模型", "completion")
    for model, (role, capability) in wanted.items():
        if not probe.has(model):
            findings.append(
                Finding(f"模型 {model}", "error", f"{role}还没下载", f"运行 ollama pull {model}")
            )
            continue
        show = await client.post(f"{url}/api/show", json={"model": model})
        capabilities = show.json().get("capabilities", []) if show.is_success else []
        if capabilities and capability not in capabilities:
            findings.append(
                Finding(
                    f"模型 {model}",
                    "error",
                    f"{role}不支持 {capability}（能力：{', '.join(capabilities)}）",
                    "换一个支持该能力的模型，例如回答用 qwen3:8b，向量用 qwen3-embedding:0.6b",
                )
            )
        elif settings.thinking and model == settings.chat_model and "thinking" not in capabilities:
            findings.append(
                Finding(
                    f"模型 {model}",
                    "warn",
                    "开启了 QQRAG_THINKING，但模型不支持思考",
                    "关闭 QQRAG_THINKING，或换用 qwen3 系列",
                )
            )
        else:
            findings.append(Finding(f"模型 {model}", "ok", f"{role}已就绪"))
    return findings


def check_data_dir(settings: Settings) -> list[Finding]:
    """The storage check /readyz makes, once the folder the service would create exists."""
    folder = settings.data_dir.resolve()
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        return [
            Finding(
                "数据目录",
                "error",
                f"{folder} 无法创建：{exc.strerror}",
                "用 QQRAG_DATA_DIR 指向可写目录，或修改目录权限",
            )
        ]
    findings = [of_health("数据目录", check_storage(folder, settings.min_free_mb))]
    if settings.checkpoint_path.exists():
        try:
            with sqlite3.connect(settings.checkpoint_path) as conn:
                conn.execute("PRAGMA quick_check").fetchone()
        except sqlite3.DatabaseError as exc:
            findings.append(
                Finding(
                    "对话检查点",
                    "error",
                    f"{settings.checkpoint_path} 损坏：{exc}",
                    "停止服务后把该文件移走（会丢失对话记录），再重启",
                )
            )
    return findings


def check_workers(settings: Settings, cores: int | None = None) -> list[Finding]:
    """More worker processes than cores only add memory and switching: they share the cores."""
    cores = cores or len(os.sched_getaffinity(0))
    if settings.workers > cores:
        return [
            Finding(
                "工作进程",
                "warn",
                f"QQRAG_WORKERS={settings.workers}，但本机只有 {cores} 个 CPU 核",
                f"把 QQRAG_WORKERS 设为不超过 {cores}",
            )
        ]
    return [Finding("工作进程", "ok", f"{settings.workers} 个（本机 {cores} 核）")]


def check_knowledge(settings: Settings) -> list[Finding]:
    from tools.kb import EmbeddedKB

    kb = EmbeddedKB(settings.kb_path, settings.kb_name)
    try:
        count = kb.count()
    finally:
        kb.close()
    if count:
        return [Finding("嵌入式知识库", "ok", f"知识库 {settings.kb_name} 有 {count} 段")]
    docs = settings.default_docs
    if docs.is_dir():
        return [
            Finding(
                "嵌入式知识库",
                "warn",
                f"知识库 {settings.kb_name} 为空，首次启动会自动导入 {docs}",
                "也可以先运行 qqrag kb add PATH 导入自己的文档",
            )
        ]
    return [
        Finding(
            "嵌入式知识库",
            "error",
            f"知识库 {settings.kb_name} 为空，也找不到默认文档 {docs}",
            "运行 qqrag kb add PATH 导入文档",
        )
    ]


async def check_maxkb(settings: Settings) -> list[Finding]:
    """The knowledge backend the service builds, and its Health as /readyz reports it: a
    fallback is named only where the service would use it (an outage, and an embedded base
    that can answer), and the daily access limit the service last met shows too."""
    if settings.knowledge_backend != "maxkb":
        return []
    from agent.backends import knowledge
    from tools.kb import EmbeddedKB
    from tools.maxkb import MaxKBError

    embedded = EmbeddedKB(settings.kb_path, settings.kb_name)
    try:
        async with httpx.AsyncClient() as client:
            try:
                backend = knowledge(settings, embedded, lambda _: None, client=client)
            except MaxKBError as exc:
                return [Finding("MaxKB", "error", str(exc), "按提示修改 QQRAG_MAXKB_* 设置")]
            health = await backend.health()
    finally:
        embedded.close()
    finding = of_health("MaxKB", health)
    if not health.ok:
        finding.fix = finding.fix or "按提示修改 QQRAG_MAXKB_* 设置"
    return [finding]


def is_bot_variable(name: str) -> bool:
    return name.startswith("QQRAG_BOT_") or name in {"ONEBOT_ACCESS_TOKEN", "QQ_BOTS"}


def check_bot(
    environ: Mapping[str, str | None], containerised: bool, service_reachable: bool = False
) -> list[Finding]:
    """The bot's settings as NoneBot will read them (environment first, then `.env`). A local
    service URL inside a container is an error unless it answered from here."""
    if containerised and not any(is_bot_variable(name) for name in environ):
        # Compose hands the bot's settings to the bot container alone (its tokens included):
        # judging the defaults here would report a bot that this container does not run.
        return [Finding("QQ 机器人", "ok", "机器人不在这个容器里运行（这里没有它的设置），不检查")]
    adapters = {a.strip() for a in (environ.get("QQRAG_BOT_ADAPTERS") or "onebot,qq").split(",")}
    findings = []
    if "onebot" in adapters and not environ.get("ONEBOT_ACCESS_TOKEN"):
        findings.append(
            Finding(
                "QQ 机器人 · OneBot",
                "warn",
                "没有设置 ONEBOT_ACCESS_TOKEN：任何能连上机器人端口的程序都能冒充协议端",
                "在 .env 里设置 ONEBOT_ACCESS_TOKEN，并在 NapCat 等协议端填同样的令牌",
            )
        )
    if "qq" in adapters:
        raw = environ.get("QQ_BOTS") or ""
        try:
            bots = json.loads(raw) if raw else []
            valid = isinstance(bots, list) and all(
                isinstance(b, dict) and b.get("id") and b.get("secret") for b in bots
            )
        except json.JSONDecodeError:
            valid = False
        if not valid:
            findings.append(
                Finding(
                    "QQ 机器人 · 官方 API",
                    "error",
                    "QQ_BOTS 不是合法的 JSON 列表，或缺少 id / secret",
                    '写成一行：QQ_BOTS=[{"id":"AppID","token":"","secret":"AppSecret","intent":{"c2c_group_at_messages":true}}]',
                )
            )
        elif not bots:
            findings.append(
                Finding(
                    "QQ 机器人 · 官方 API",
                    "warn",
                    "启用了 qq 适配器但没有配置 QQ_BOTS：官方 API 路线收不到消息",
                    "配置 QQ_BOTS，或把 QQRAG_BOT_ADAPTERS 改成 onebot",
                )
            )
    service = bot_service_url(environ)
    if containerised and is_local(service) and not service_reachable:
        findings.append(
            Finding(
                "QQ 机器人 · 服务地址",
                "error",
                f"在容器里运行，QQRAG_BOT_SERVICE_URL 是 {service}，连不上",
                "改成 compose 服务名，如 http://service:8000",
            )
        )
    if not findings:
        findings.append(Finding("QQ 机器人", "ok", f"适配器：{', '.join(sorted(adapters))}"))
    return findings


def bot_environment() -> dict[str, str | None]:
    return {**dotenv_values(".env"), **os.environ}


def bot_service_url(environ: Mapping[str, str | None]) -> str:
    return environ.get("QQRAG_BOT_SERVICE_URL") or "http://127.0.0.1:8000"


def is_local(url: str) -> bool:
    return (urlsplit(url).hostname or "") in _LOCAL_HOSTS


async def answers(client: httpx.AsyncClient, url: str) -> bool:
    """Whether anything answers HTTP at `url`."""
    try:
        await client.get(url)
    except httpx.HTTPError:
        return False
    return True


async def run_checks(
    settings: Settings,
    *,
    containerised: bool | None = None,
    environ: dict[str, str | None] | None = None,
) -> list[Finding]:
    containerised = in_container() if containerised is None else containerised
    environ = bot_environment() if environ is None else environ
    async with httpx.AsyncClient(timeout=5.0) as client:
        live = await check_ollama(settings, client)
        service = bot_service_url(environ)
        # Only asked where the answer changes the verdict: a local URL inside a container.
        service_reachable = containerised and is_local(service) and await answers(client, service)
    reachable = any(f.check == "Ollama 连接" and f.status == "ok" for f in live)
    findings = check_ollama_url(settings, containerised, reachable) + live
    findings += await check_maxkb(settings)
    findings += check_bot(environ, containerised, service_reachable)
    findings += check_workers(settings)
    data = check_data_dir(settings)
    findings += data
    if data[0].status == "ok":
        findings += check_knowledge(settings)
    return findings


LABELS: dict[Status, str] = {"ok": "正常", "warn": "注意", "error": "错误"}
_INDENT = 6  # a label (two wide characters) and two spaces
_CLOSING = frozenset("，。、；：）」』”’！？》,.;:)]}")
_OPENING = frozenset("（「『“‘《")


def _tokens(text: str) -> list[str]:
    """The pieces a line may break between: a run of narrow characters (a word, a URL, a
    command, a line of JSON) stays whole, a wide (CJK) character stands alone, punctuation
    keeps to the piece it belongs to; " " is a space."""
    tokens: list[str] = []
    glued = False
    for char in text:
        if char.isspace():
            if tokens and tokens[-1] != " ":
                tokens.append(" ")
            glued = False
            continue
        last = tokens[-1] if tokens and tokens[-1] != " " else ""
        narrow_run = bool(last) and cell_len(char) == 1 and cell_len(last[-1]) == 1
        if last and (glued or char in _CLOSING or narrow_run):
            tokens[-1] += char
        else:
            tokens.append(char)
        glued = char in _OPENING
    return tokens


def wrap(text: str, width: int, lead: str, indent: int) -> list[str]:
    """`text` after `lead` in lines of at most `width` cells, the ones after the first
    indented by `indent`; a piece longer than a line gets a line of its own rather than
    being cut."""
    lines: list[str] = []
    line, start = lead, len(lead)
    for token in _tokens(text):
        if token == " ":
            if len(line) > start:
                line += " "
            continue
        if len(line) > start and cell_len(line.rstrip() + token) > width:
            lines.append(line.rstrip())
            line, start = " " * indent, indent
        line += token
    lines.append(line.rstrip())
    return lines


def report(findings: list[Finding], width: int) -> list[tuple[Status | None, str]]:
    """The findings as lines to print, each with the status it opens (None for the lines
    that go on): the label, the check and what was found, then how to fix it."""
    lines: list[tuple[Status | None, str]] = []
    for finding in findings:
        lead = f"{LABELS[finding.status]}  "
        head = wrap(f"{finding.check}：{finding.detail}", width, lead, _INDENT)
        lines.append((finding.status, head[0]))
        lines += [(None, line) for line in head[1:]]
        if finding.fix:
            fix = wrap(f"怎么修：{finding.fix}", width, " " * _INDENT, _INDENT)
            lines += [(None, line) for line in fix]
    return lines
