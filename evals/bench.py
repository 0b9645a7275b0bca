"""Load benchmark of the HTTP service: `python -m evals.bench` (also `qqrag bench`).

Simulated QQ users -- members of a few groups, and private chats -- hold scripted conversations
over the bundled user guide (`docs/`, the knowledge base of a fresh install): a first question,
then follow-ups, some leaning on the previous turn (它/那…), some standalone, the odd thanks or
command. Each user waits for an answer before asking again; users run concurrently. The service
is the real `qqrag serve` in a child process (uvicorn, SQLite checkpoints, audit, quotas); the
fake Ollama (and, with `--backend maxkb`, the fake MaxKB) run in this process. The bench sets
the data folder, the fakes' addresses, the knowledge base, SQLite checkpoints, and lifts quotas
and the in-flight bound; other QQRAG_* variables of the environment reach the service and the
naive pipeline alike (QQRAG_EMBED_MODEL=qwen3-embedding:0.6b measures hybrid retrieval).

Two settings:

- zero: the fakes answer at once, so the figures are the service's own overhead;
- model: the fake Ollama takes as long as qwen3:8b on one GPU would (prefill and decode tokens
  per second), and the same questions also go through the naive pipeline -- one retrieval, one
  chat call, no classify, rerank or citation check -- in this process, for a latency ratio.

Reported per run: turns/s, latency percentiles, model calls and tokens per turn, where the
time goes (graph nodes, the rest of the turn, HTTP and gateway), the service's CPU time and
peak memory (VmHWM, from /proc), as a table and as JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import platform
import random
import tempfile
import time
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import httpx
import numpy as np
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import HumanMessage, SystemMessage
from rich.console import Console
from rich.table import Table

from agent import backends, prompts
from agent.audit import AuditLog
from agent.context import Context
from agent.evidence import format_evidence
from agent.models import OllamaChatModels, usage_counts
from agent.settings import Settings
from evals import publish
from evals.fakes.maxkb import FakeMaxKB
from evals.fakes.ollama import FakeOllama, LatencyModel
from evals.harness import ServiceProcess
from tools.base import KnowledgeBackend
from tools.ingest import chunk_document
from tools.kb import EmbeddedKB
from tools.maxkb import MaxKBConfig, MaxKBKnowledge

Setting = Literal["zero", "model"]
Backend = Literal["embedded", "maxkb"]

SETTINGS: tuple[Setting, ...] = ("zero", "model")
DEFAULT_USERS = (1, 32)
DEFAULT_TURNS = 20
SOLO_ZERO_TURNS = 100
"""One user on zero-latency fakes runs in about a second: 20 turns would make its p50 the
median of 20 samples, which swings with a few slow ones; 100 steady it."""
DEFAULT_PREFILL_TPS = 2000.0
DEFAULT_DECODE_TPS = 50.0
SEED = 20251124
TURN_TIMEOUT_S = 300.0
GROUP_IDS = ("734295108", "618204733", "902117465")
PRIVATE_EVERY = 4
"""Every fourth user asks in a private chat; the others in one of the groups."""
MAXKB_KNOWLEDGE_ID = "0196b0c2-5d6e-7a31-9c4f-3b8e2d1a6f70"

TARGET_SOLO_P50_MS = 10.0
TARGET_CONCURRENT_USERS = 32
TARGET_CONCURRENT_TURNS_PER_S = 200.0
TARGET_NAIVE_RATIO = 1.0

CONVERSATIONS: tuple[tuple[str, ...], ...] = (
    (
        "qqrag 默认监听哪个端口？",
        "端口 8000 被占用了怎么办？",
        "那怎么检查服务是否正常？",
        "谢谢！",
    ),
    ("qqrag 默认用什么模型？", "它需要先用 ollama pull 下载吗？", "超时时间是多少？"),
    ("Ollama 连不上会怎样？", "那降级模式下回答从哪来？", "Ollama 地址末尾可以加 /v1 吗？"),
    ("JSONL 文件要写哪些字段？", "Markdown 文件按什么切分？", "那重新导入修改过的文档会怎样？"),
    ("群聊里每个人的对话是分开的吗？", "怎么让全群共用一段对话？", "私聊呢？"),
    ("提示词文件放在哪里？", "修改提示词后需要重启吗？", "怎么选择提示词变体？"),
    ("qqrag 回答里的 [1] 编号是什么意思？", "引用检查会删掉哪些句子？", "/原文 1"),
    ("QQRAG_TOP_K 是什么？", "相关度阈值默认是多少？", "调高它会怎样？"),
    ("qqrag 需要 Python 几？", "安装命令是什么？", "怎么运行测试？"),
    ("scene 字段可以填什么？", "thread_id 是什么格式？", "它怎么查看对话历史？"),
    ("qqrag chat 怎么用？", "它显示哪些节点信息？", "/帮助"),
    (
        "qqrag 怎么处理同一对话的多条消息？",
        "不同用户的消息呢？",
        "重启以后还能接着追问吗？",
        "好的",
    ),
)
"""What users ask, conversation by conversation, over the bundled user guide."""

NODES = ("classify", "retrieve", "rerank", "answer", "tools", "cite_check")
CALL_KINDS = (
    "classify",
    "answer",
    "answer_after_tool",
    "answer_regenerate",
    "chitchat",
    "generate",
    "embed",
)
"""Model requests by purpose; see `call_kind`."""

NOTES = (
    "假 Ollama（和假 MaxKB）与压测客户端在同一进程里，和服务进程共用这台机器的 CPU；"
    "这部分开销见 JSON 的 bench_cpu_s。other_cpu_s 是同一时段机器上其他进程用掉的 CPU 秒数，"
    "明显大于 0 时说明有别的负载，数字偏慢。",
    "延迟模型只按 token 数计时，不模拟 GPU 排队：多个用户并发时每个请求各自计时，"
    "反映的是服务自身的开销，不是一块 GPU 上真实的排队时间。",
    "调用次数和 tokens 来自假 Ollama 的规则模型：何时调用工具、何时重新生成由它的规则决定，"
    "换成真实的 qwen3:8b 比例会不同。",
    "压测时配额（QQRAG_QUOTA_*）和并发上限（QQRAG_MAX_INFLIGHT_TURNS）都设为 0（不限）。",
    "节点耗时从上一个节点结束算起：classify 含读取检查点，并发时还含等待事件循环的时间。",
)

MAXKB_NOTE = (
    "假 MaxKB 在本进程里给每次检索的全部段落打分（字符二元组），零延迟时它自己就要占不少 CPU"
    "（见 bench_cpu_s），所以 maxkb 后端的零延迟数字偏慢，不全是服务的开销。"
)


# --------------------------------------------------------------------------- simulated users


@dataclass(frozen=True)
class SimUser:
    """One simulated QQ user: where they talk, and what they will ask, in order."""

    user_id: str
    scene: Literal["group", "private"]
    group_id: str | None
    texts: tuple[str, ...]

    def request(self, turn: int) -> dict[str, str]:
        body = {
            "platform": "qq",
            "scene": self.scene,
            "user_id": self.user_id,
            "text": self.texts[turn],
            "message_id": f"{self.user_id}-{turn}",
        }
        if self.group_id is not None:
            body["group_id"] = self.group_id
        return body


WARMUP_TURNS = 6


def warmup_users(workers: int, titles: Sequence[str]) -> list[SimUser]:
    """Ask before the measured users, so first-use costs stay out of the run: imports, and the
    token caches of the guide's passages, which a running service has long filled. Two users
    per worker process, at once, so that every worker gets some; they ask about the guide's
    sections, never the measured questions, whose tokens a real service would not have seen."""
    users = 2 * workers
    return [
        SimUser(
            f"bench-warmup-{n}",
            "private",
            None,
            tuple(f"{title}？" for title in titles[n::users][:WARMUP_TURNS]),
        )
        for n in range(users)
    ]


def make_users(count: int, turns: int, seed: int = SEED) -> list[SimUser]:
    """`count` users with `turns` questions each: conversations in a per-user shuffled order,
    starting over when a user has been through all of them. The same arguments give the same
    users, so the service and the naive pipeline answer the same questions."""
    rng = random.Random(seed)
    users = []
    for index in range(count):
        order = rng.sample(CONVERSATIONS, len(CONVERSATIONS))
        texts = tuple(itertools.islice(itertools.cycle(itertools.chain(*order)), turns))
        user_id = str(rng.randrange(10**8, 10**10))
        if index % PRIVATE_EVERY == PRIVATE_EVERY - 1:
            users.append(SimUser(user_id, "private", None, texts))
        else:
            users.append(SimUser(user_id, "group", GROUP_IDS[index % len(GROUP_IDS)], texts))
    return users


# --------------------------------------------------------------------------- driving turns


@dataclass(frozen=True)
class TurnSample:
    user: int
    turn: int
    status: int
    seconds: float
    trace_id: str = ""
    tokens: int = 0
    """Model tokens, for naive turns (the service's own count is in its audit log)."""
    completion_tokens: int = 0
    """Of `tokens`, those the model decoded (naive turns)."""
    passages: int = 0
    """Passages the naive pipeline put in its prompt."""


async def drive(url: str, users: Sequence[SimUser]) -> tuple[list[TurnSample], float]:
    """Every user's conversation through POST /v1/chat; the samples and the wall seconds."""
    limits = httpx.Limits(max_connections=len(users), max_keepalive_connections=len(users))
    async with httpx.AsyncClient(base_url=url, timeout=TURN_TIMEOUT_S, limits=limits) as client:

        async def converse(index: int, user: SimUser) -> list[TurnSample]:
            samples = []
            for turn in range(len(user.texts)):
                started = time.perf_counter()
                response = await client.post("/v1/chat", json=user.request(turn))
                seconds = time.perf_counter() - started
                trace = response.json()["trace_id"] if response.status_code == 200 else ""
                samples.append(TurnSample(index, turn, response.status_code, seconds, trace))
            return samples

        started = time.perf_counter()
        parts = await asyncio.gather(*(converse(i, user) for i, user in enumerate(users)))
        wall = time.perf_counter() - started
    return [sample for part in parts for sample in part], wall


async def drive_naive(
    users: Sequence[SimUser], knowledge: KnowledgeBackend, model: BaseChatModel, passages: int
) -> tuple[list[TurnSample], float]:
    """The same conversations through the naive pipeline: retrieve `passages`, then one chat
    call with the answer prompt (passages and question); no history, rewrite or checks."""
    system = SystemMessage(content=prompts.render("answer"))

    async def converse(index: int, user: SimUser) -> list[TurnSample]:
        samples = []
        for turn, text in enumerate(user.texts):
            started = time.perf_counter()
            found = await knowledge.search(text, passages)
            evidence = format_evidence(enumerate(found, start=1))
            question = prompts.render("answer_user", evidence=evidence, question=text)
            reply = await model.ainvoke([system, HumanMessage(content=question)])
            seconds = time.perf_counter() - started
            prompt, completion = usage_counts(reply)
            samples.append(
                TurnSample(
                    index,
                    turn,
                    200,
                    seconds,
                    tokens=prompt + completion,
                    completion_tokens=completion,
                    passages=len(found),
                )
            )
        return samples

    started = time.perf_counter()
    parts = await asyncio.gather(*(converse(i, user) for i, user in enumerate(users)))
    wall = time.perf_counter() - started
    return [sample for part in parts for sample in part], wall


# --------------------------------------------------------------------------- the service


def _stat_fields(pid: int) -> list[str]:
    """/proc/PID/stat from field 3 (state) on: what follows the parenthesised command name,
    which may itself hold spaces and parentheses."""
    stat = Path(f"/proc/{pid}/stat").read_text(encoding="ascii")
    return stat.rsplit(")", 1)[1].split()


class MeasuredService(ServiceProcess):
    """`ServiceProcess` plus the CPU time and memory of its processes (with QQRAG_WORKERS > 1,
    uvicorn's supervisor and its workers), read from /proc."""

    @property
    def pid(self) -> int:
        if self._process is None:
            raise RuntimeError("the service is not running")
        return self._process.pid

    def processes(self) -> list[int]:
        """The service's process and its descendants."""
        children: dict[int, list[int]] = {}
        for stat in Path("/proc").glob("[0-9]*/stat"):
            with contextlib.suppress(OSError):
                pid = int(stat.parent.name)
                children.setdefault(int(_stat_fields(pid)[1]), []).append(pid)
        found, todo = [], [self.pid]
        while todo:
            pid = todo.pop()
            found.append(pid)
            todo += children.get(pid, [])
        return found

    def cpu_seconds(self) -> float:
        """User plus system CPU time of the service's processes, all their threads."""
        total = 0
        for pid in self.processes():
            with contextlib.suppress(OSError):
                # utime and stime are fields 14 and 15 of proc(5).
                fields = _stat_fields(pid)
                total += int(fields[11]) + int(fields[12])
        return total / os.sysconf("SC_CLK_TCK")

    def memory_mib(self) -> dict[str, float]:
        """Peak (VmHWM) and current (VmRSS) resident memory, summed over the processes: the
        sum of peaks bounds the peak of the sum from above."""
        wanted = {"VmHWM": "peak_rss_mib", "VmRSS": "rss_mib"}
        found = dict.fromkeys(wanted.values(), 0.0)
        for pid in self.processes():
            with contextlib.suppress(OSError):
                status = Path(f"/proc/{pid}/status").read_text(encoding="ascii")
                for line in status.splitlines():
                    key, _, value = line.partition(":")
                    if key in wanted:
                        found[wanted[key]] += int(value.split()[0]) / 1024
        return {key: round(value, 1) for key, value in found.items()}


def machine_busy_seconds() -> float:
    """CPU time the whole machine has spent busy since boot, all cores (from /proc/stat)."""
    fields = Path("/proc/stat").read_text(encoding="ascii").split("\n", 1)[0].split()
    user, nice, system, _idle, _iowait, irq, softirq, steal = map(int, fields[1:9])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def docs_dir() -> Path:
    """The bundled user guide, wherever this installation keeps it."""
    default: Path = Settings.model_fields["default_docs"].get_default(call_default_factory=True)
    return default


def doc_rows(docs: Path) -> list[dict[str, str]]:
    """The guide cut into passages the way `qqrag kb add` cuts it, as MaxKB paragraph rows."""
    rows = []
    for file in sorted(docs.glob("*.md")):
        source = f"{docs.name}/{file.name}"
        for chunk in chunk_document(file.read_text(encoding="utf-8"), source):
            rows.append({"title": chunk.title, "content": chunk.text, "document_name": source})
    return rows


def service_env(data_dir: Path, ollama_url: str, docs: Path, workers: int) -> dict[str, str]:
    return {
        "QQRAG_DATA_DIR": str(data_dir),
        "QQRAG_WORKERS": str(workers),
        "QQRAG_OLLAMA_URL": ollama_url,
        "QQRAG_DEFAULT_DOCS": str(docs),
        "QQRAG_QUOTA_USER_RPM": "0",
        "QQRAG_QUOTA_GROUP_RPM": "0",
        "QQRAG_QUOTA_USER_DAILY_TOKENS": "0",
        "QQRAG_QUOTA_GROUP_DAILY_TOKENS": "0",
        "QQRAG_MAX_INFLIGHT_TURNS": "0",
        "QQRAG_CHECKPOINTER": "sqlite",
        "QQRAG_SHARED_STATE": "local",
    }


def maxkb_env(maxkb: FakeMaxKB) -> dict[str, str]:
    return {
        "QQRAG_KNOWLEDGE_BACKEND": "maxkb",
        "QQRAG_MAXKB_URL": maxkb.url,
        "QQRAG_MAXKB_MODE": "knowledge_hit_test_v2",
        "QQRAG_MAXKB_TOKEN": maxkb.user_token,
        "QQRAG_MAXKB_KNOWLEDGE_IDS": MAXKB_KNOWLEDGE_ID,
    }


# --------------------------------------------------------------------------- measures


def latency_ms(seconds: Sequence[float]) -> dict[str, float]:
    values = np.asarray(seconds, dtype=float) * 1000
    p50, p95, p99 = np.percentile(values, [50, 95, 99])
    return {
        "mean": round(float(values.mean()), 2),
        "p50": round(float(p50), 2),
        "p95": round(float(p95), 2),
        "p99": round(float(p99), 2),
        "max": round(float(values.max()), 2),
    }


def call_kind(path: str, body: Any) -> str | None:
    """What a request to the fake Ollama was for; None when it was no model call.

    Chat calls: "classify" (structured output), "chitchat" (no evidence in the prompt), else an
    answer call: "answer_after_tool" when tool results are in the prompt, "answer_regenerate"
    when a regeneration request is (a user message after the one closing the evidence fence),
    else "answer".
    """
    if path in ("/api/generate", "/api/embed"):
        return path.removeprefix("/api/")
    if path != "/api/chat" or not isinstance(body, Mapping):
        return None
    if body.get("format"):
        return "classify"
    messages = body.get("messages") or []
    asked = [
        i
        for i, message in enumerate(messages)
        if message.get("role") == "user" and "</context>" in str(message.get("content"))
    ]
    if not asked:
        return "chitchat"
    later = {message.get("role") for message in messages[asked[-1] + 1 :]}
    if "tool" in later:
        return "answer_after_tool"
    return "answer_regenerate" if "user" in later else "answer"


def call_counts(requests: Sequence[Mapping[str, Any]]) -> Counter[str]:
    kinds = (call_kind(request["path"], request["json"]) for request in requests)
    return Counter(kind for kind in kinds if kind is not None)


def read_audit(path: Path, traces: set[str], limit: int) -> dict[str, dict[str, Any]]:
    """The service's audit rows of the given turns, by trace id."""
    audit = AuditLog(path)
    try:
        return {
            row["trace_id"]: row for row in audit.turns(limit=limit) if row["trace_id"] in traces
        }
    finally:
        audit.close()


def time_split(
    samples: Sequence[TurnSample], rows: Mapping[str, Mapping[str, Any]]
) -> dict[str, Any]:
    """Mean milliseconds per turn: in each graph node; in the turn outside the nodes (thread
    lock, graph machinery, the checkpoint write, token accounting); and outside the turn (HTTP,
    request validation, quota check, audit write, the client)."""
    joined = [(sample, rows[sample.trace_id]) for sample in samples]
    count = len(joined)
    nodes = {
        node: round(
            sum((row["node_seconds"] or {}).get(node, 0.0) for _, row in joined) / count * 1000, 2
        )
        for node in NODES
    }
    in_nodes = sum(sum((row["node_seconds"] or {}).values()) for _, row in joined)
    in_turn = sum(row["seconds"] for _, row in joined)
    total = sum(sample.seconds for sample, _ in joined)
    return {
        "nodes_ms": nodes,
        "turn_outside_nodes_ms": round((in_turn - in_nodes) / count * 1000, 2),
        "outside_turn_ms": round((total - in_turn) / count * 1000, 2),
    }


def versus_naive(
    samples: Sequence[TurnSample],
    naive: Sequence[TurnSample],
    rows: Mapping[str, Mapping[str, Any]],
) -> dict[str, Any]:
    """Latency ratios to the naive pipeline, overall and by the service's model calls per turn."""
    service = latency_ms([s.seconds for s in samples])
    baseline = latency_ms([s.seconds for s in naive])
    naive_by_turn = {(s.user, s.turn): s.seconds for s in naive}
    groups: dict[int, list[tuple[float, float]]] = {}
    for sample in samples:
        calls = int(rows[sample.trace_id]["model_calls"])
        groups.setdefault(calls, []).append(
            (sample.seconds, naive_by_turn[sample.user, sample.turn])
        )
    by_calls = {}
    for calls, pairs in sorted(groups.items()):
        ours = float(np.median([p[0] for p in pairs]))
        theirs = float(np.median([p[1] for p in pairs]))
        by_calls[str(calls)] = {
            "turns": len(pairs),
            "p50_ms": round(ours * 1000, 1),
            "naive_p50_ms": round(theirs * 1000, 1),
            "ratio": round(ours / theirs, 2),
        }
    return {
        "ratio_p50": round(service["p50"] / baseline["p50"], 2),
        "ratio_p95": round(service["p95"] / baseline["p95"], 2),
        "ratio_mean": round(service["mean"] / baseline["mean"], 2),
        "by_model_calls": by_calls,
    }


# --------------------------------------------------------------------------- one run


@dataclass(frozen=True)
class RunSpec:
    setting: Setting
    users: int
    turns: int
    backend: Backend
    latency: LatencyModel
    workers: int


def latency_model(setting: Setting, prefill: float, decode: float) -> LatencyModel:
    if setting == "zero":
        return LatencyModel()
    return LatencyModel(prefill_tokens_per_s=prefill, decode_tokens_per_s=decode)


@contextlib.contextmanager
def fake_maxkb(docs: Path) -> Iterator[FakeMaxKB]:
    with FakeMaxKB(knowledge=[]) as maxkb:
        maxkb.add_paragraphs(MAXKB_KNOWLEDGE_ID, doc_rows(docs), name="qqrag 用户指南")
        yield maxkb


def run_once(spec: RunSpec, console: Console) -> dict[str, Any]:
    """One setting at one number of users, on a fresh service with a fresh data folder."""
    users = make_users(spec.users, spec.turns)
    docs = docs_dir()
    with contextlib.ExitStack() as stack:
        root = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="qqrag-bench-")))
        ollama = stack.enter_context(FakeOllama(latency=spec.latency))
        env = service_env(root / "data", ollama.url, docs, spec.workers)
        maxkb = stack.enter_context(fake_maxkb(docs)) if spec.backend == "maxkb" else None
        if maxkb is not None:
            env |= maxkb_env(maxkb)
        service = MeasuredService(env, cwd=root)
        with service:
            service.wait_workers(spec.workers)
            titles = sorted({row["title"] for row in doc_rows(docs)})
            warmup = warmup_users(spec.workers, titles)
            asyncio.run(drive(service.url, warmup))
            first_request = len(ollama.requests)
            first_search = len(maxkb.requests) if maxkb is not None else 0
            cpu_before, bench_before = service.cpu_seconds(), time.process_time()
            busy_before = machine_busy_seconds()
            samples, wall = asyncio.run(drive(service.url, users))
            cpu = service.cpu_seconds() - cpu_before
            bench_cpu = time.process_time() - bench_before
            other_cpu = machine_busy_seconds() - busy_before - cpu - bench_cpu
            memory = service.memory_mib()
        requests = ollama.requests[first_request:]
        ok = [sample for sample in samples if sample.status == 200]
        if not ok:
            raise RuntimeError(f"no turn answered (HTTP {Counter(s.status for s in samples)})")
        limit = len(samples) + sum(len(user.texts) for user in warmup)
        rows = read_audit(root / "data" / "audit.sqlite", {s.trace_id for s in ok}, limit)
        calls = call_counts(requests)
        report: dict[str, Any] = {
            "setting": spec.setting,
            "backend": spec.backend,
            "latency_model": None if spec.setting == "zero" else asdict(spec.latency),
            "users": spec.users,
            "workers": spec.workers,
            "turns_per_user": spec.turns,
            "turns": len(samples),
            "status": {
                str(code): n for code, n in sorted(Counter(s.status for s in samples).items())
            },
            "wall_s": round(wall, 3),
            "turns_per_s": round(len(ok) / wall, 1),
            "latency_ms": latency_ms([s.seconds for s in ok]),
            "model_calls_per_turn": round(sum(calls.values()) / len(ok), 2),
            "tokens_per_turn": round(sum(row["tokens"] for row in rows.values()) / len(ok), 1),
            "calls_per_turn": {kind: round(calls[kind] / len(ok), 3) for kind in CALL_KINDS},
            "outcomes": dict(Counter(row["outcome"] for row in rows.values()).most_common()),
            "time_split": time_split(ok, rows),
            "service": {
                **memory,
                "cpu_s": round(cpu, 2),
                "cpu_ms_per_turn": round(cpu / len(ok) * 1000, 2),
                "cpu_cores_busy": round(cpu / wall, 2),
            },
            "bench_cpu_s": round(bench_cpu, 2),
            "other_cpu_s": round(other_cpu, 2),
        }
        if maxkb is not None:
            searches = len(maxkb.requests) - first_search
            report["maxkb_requests_per_turn"] = round(searches / len(ok), 2)
        if spec.setting == "model":
            console.print(f"  朴素流水线：{spec.users} 个用户 × {spec.turns} 轮…")
            naive, naive_wall = asyncio.run(run_naive(users, root / "data", ollama, maxkb))
            report["naive"] = {
                "wall_s": round(naive_wall, 3),
                "turns_per_s": round(len(naive) / naive_wall, 1),
                "latency_ms": latency_ms([s.seconds for s in naive]),
                "model_calls_per_turn": 1.0,
                "tokens_per_turn": round(sum(s.tokens for s in naive) / len(naive), 1),
                # What keeps the comparison fair: at most the service's passage budget
                # (rerank_top_n), and the same fake model deciding how much to decode.
                "completion_tokens_per_turn": round(
                    sum(s.completion_tokens for s in naive) / len(naive), 1
                ),
                "passages_per_turn": round(sum(s.passages for s in naive) / len(naive), 2),
            }
            report["vs_naive"] = versus_naive(ok, naive, rows)
    return report


async def run_naive(
    users: Sequence[SimUser], data_dir: Path, ollama: FakeOllama, maxkb: FakeMaxKB | None
) -> tuple[list[TurnSample], float]:
    """The naive pipeline over the service's own knowledge base (or the same fake MaxKB) and
    the same fake Ollama, with the service's chat model settings."""
    settings = Settings(data_dir=data_dir, ollama_url=ollama.url, _env_file=None)  # type: ignore[call-arg]
    model = OllamaChatModels(settings)(
        settings.chat_model, reasoning=settings.thinking, temperature=Context().temperature
    )
    if maxkb is None:
        embedder = backends.embedder(settings)
        with EmbeddedKB(settings.kb_path, settings.kb_name, embedder) as kb:
            return await drive_naive(users, kb, model, settings.rerank_top_n)
    remote = MaxKBKnowledge(
        MaxKBConfig(url=maxkb.url, token=maxkb.user_token, knowledge_ids=(MAXKB_KNOWLEDGE_ID,))
    )
    try:
        return await drive_naive(users, remote, model, settings.rerank_top_n)
    finally:
        await remote.aclose()


# --------------------------------------------------------------------------- the report


def machine() -> dict[str, Any]:
    cpu = next(
        (
            line.partition(":")[2].strip()
            for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    return {
        "nproc": len(os.sched_getaffinity(0)),
        "cpu": cpu,
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "python": platform.python_version(),
        "system": platform.platform(),
    }


def headline(run: Mapping[str, Any]) -> tuple[str, float, bool]:
    """The figure a run is judged by: its name, its value, and whether more is better."""
    if run["setting"] == "model":
        return "vs_naive.ratio_p50", run["vs_naive"]["ratio_p50"], False
    if run["users"] > 1:
        return "turns_per_s", run["turns_per_s"], True
    return "latency_ms.p50", run["latency_ms"]["p50"], False


def median_run(repeats: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The repeat whose headline figure is the median (of the two middle ones, the worse),
    carrying every repeat's figure: on a shared machine one run can be much slower than the
    next, and the median of several says more than any one of them."""

    def worse_last(run: Mapping[str, Any]) -> float:
        _, value, more_is_better = headline(run)
        return -value if more_is_better else value

    ordered = sorted(repeats, key=worse_last)
    middle = dict(ordered[len(ordered) // 2])
    name, _, _ = headline(middle)
    middle["repeats"] = {"count": len(repeats), name: [headline(run)[1] for run in repeats]}
    return middle


def targets(runs: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The issue's targets, for the runs that measure them (with repeats, the median run)."""
    found = []
    for run in runs:
        figure, value, _ = headline(run)
        if run["setting"] == "zero" and run["users"] == 1:
            name = "单用户 p50 延迟（ms，零延迟）"
            limit = f"< {TARGET_SOLO_P50_MS:g}"
            met = value < TARGET_SOLO_P50_MS
        elif run["setting"] == "zero" and run["users"] == TARGET_CONCURRENT_USERS:
            name = f"{TARGET_CONCURRENT_USERS} 用户吞吐（轮/秒，零延迟）"
            limit = f">= {TARGET_CONCURRENT_TURNS_PER_S:g}"
            met = value >= TARGET_CONCURRENT_TURNS_PER_S
        elif run["setting"] == "model":
            name = f"{run['users']} 用户 p50 延迟 / 朴素流水线（模型延迟）"
            limit = f"<= {TARGET_NAIVE_RATIO:g}"
            met = value <= TARGET_NAIVE_RATIO
        else:
            continue
        target = {"name": name, "value": value, "target": limit, "met": met}
        if repeats := run.get("repeats"):
            target["repeats"] = repeats[figure]
        found.append(target)
    return found


def default_turns(setting: Setting, users: int) -> int:
    return SOLO_ZERO_TURNS if setting == "zero" and users == 1 else DEFAULT_TURNS


def run_benchmark(
    *,
    settings: Sequence[Setting] = SETTINGS,
    users: Sequence[int] = DEFAULT_USERS,
    turns: int | None = None,
    prefill: float = DEFAULT_PREFILL_TPS,
    decode: float = DEFAULT_DECODE_TPS,
    backend: Backend = "embedded",
    workers: int = 1,
    repeat: int = 1,
    console: Console | None = None,
) -> dict[str, Any]:
    console = console or Console(stderr=True)
    runs = []
    for setting in settings:
        for count in users:
            label = (
                "零延迟" if setting == "zero" else f"模型延迟（{prefill:g}/{decode:g} tokens/秒）"
            )
            speeds = latency_model(setting, prefill, decode)
            per_user = turns or default_turns(setting, count)
            spec = RunSpec(setting, count, per_user, backend, speeds, workers)
            repeats = []
            for n in range(1, repeat + 1):
                times = f"（第 {n}/{repeat} 次）" if repeat > 1 else ""
                console.print(f"运行：{label}，{count} 个用户 × {per_user} 轮{times}…")
                repeats.append(run_once(spec, console))
            runs.append(median_run(repeats) if repeat > 1 else repeats[0])
    docs = docs_dir()
    return {
        "machine": machine(),
        "knowledge_base": {
            "path": str(docs),
            "passages": len(doc_rows(docs)),
            "conversations": len(CONVERSATIONS),
            "script_turns": sum(map(len, CONVERSATIONS)),
        },
        "backend": backend,
        "seed": SEED,
        "repeat": repeat,
        "runs": runs,
        "targets": targets(runs),
        "notes": [*NOTES, MAXKB_NOTE] if backend == "maxkb" else list(NOTES),
    }


CALL_LABELS = {
    "classify": "分类",
    "answer": "回答",
    "answer_after_tool": "工具后回答",
    "answer_regenerate": "重新生成",
    "chitchat": "闲聊",
}


def _run_label(run: Mapping[str, Any]) -> str:
    setting = "零延迟" if run["setting"] == "zero" else "模型延迟"
    return f"{setting} · {run['users']} 用户 · {run['workers']} 进程"


def _rows(run: Mapping[str, Any]) -> list[tuple[str, str]]:
    """One run's figures as (label, value) rows, in table order; "" labels a section break."""
    latency = run["latency_ms"]
    calls = run["calls_per_turn"]
    times = run["time_split"]
    rows = [
        ("轮次（HTTP 200）", f"{run['turns']}（{run['status'].get('200', 0)}）"),
        ("吞吐（轮/秒）", str(run["turns_per_s"])),
        ("延迟 p50 / p95 / p99（ms）", f"{latency['p50']} / {latency['p95']} / {latency['p99']}"),
        ("模型调用（次/轮）", str(run["model_calls_per_turn"])),
        (" · ".join(CALL_LABELS.values()), " · ".join(str(calls[kind]) for kind in CALL_LABELS)),
        ("tokens/轮", str(run["tokens_per_turn"])),
        ("服务 CPU（ms/轮）", str(run["service"]["cpu_ms_per_turn"])),
        ("服务峰值内存（MiB）", str(run["service"].get("peak_rss_mib", "-"))),
        ("其他进程 CPU（秒）", str(run["other_cpu_s"])),
        ("", ""),
        *((f"节点 {node}（ms/轮）", str(times["nodes_ms"][node])) for node in NODES),
        ("图内其他：检查点等（ms/轮）", str(times["turn_outside_nodes_ms"])),
        ("图外：HTTP、网关、审计（ms/轮）", str(times["outside_turn_ms"])),
    ]
    if naive := run.get("naive"):
        versus = run["vs_naive"]
        rows += [
            ("", ""),
            (
                "朴素流水线 p50 / p95（ms）",
                f"{naive['latency_ms']['p50']} / {naive['latency_ms']['p95']}",
            ),
            ("朴素流水线 tokens/轮", str(naive["tokens_per_turn"])),
            (
                "朴素流水线 段落/轮 · 解码 tokens/轮",
                f"{naive['passages_per_turn']} · {naive['completion_tokens_per_turn']}",
            ),
            ("延迟比 p50 / p95（对朴素流水线）", f"{versus['ratio_p50']} / {versus['ratio_p95']}"),
        ]
    return rows


def print_report(report: Mapping[str, Any], console: Console) -> None:
    """A table with one column per run, then the targets and the notes."""
    host = report["machine"]
    kb = report["knowledge_base"]
    table = Table(
        title=f"qqrag 服务压测：{host['nproc']} 核 {host['cpu']}，Python {host['python']}，"
        f"知识库 {kb['passages']} 段，检索后端 {report['backend']}"
    )
    table.add_column("指标")
    runs = report["runs"]
    for run in runs:
        table.add_column(_run_label(run), justify="right")
    columns = [dict(_rows(run)) for run in runs]
    # Runs with a naive comparison have every row the others have, and more.
    for label, _ in max((_rows(run) for run in runs), key=len):
        if not label:
            table.add_section()
        else:
            table.add_row(label, *(column.get(label, "-") for column in columns))
    console.print(table)
    for model in {json.dumps(run["latency_model"]) for run in runs if run["latency_model"]}:
        speeds = json.loads(model)
        console.print(
            f"模型延迟：预填充 {speeds['prefill_tokens_per_s']:g} tokens/秒，"
            f"解码 {speeds['decode_tokens_per_s']:g} tokens/秒"
        )
    for target in report["targets"]:
        verdict = "达标" if target["met"] else "未达标"
        spread = ""
        if values := target.get("repeats"):
            spread = f"，{len(values)} 次运行的中位数，各次 {' / '.join(map(str, values))}"
        console.print(
            f"目标 {target['name']}：{target['value']}（要求 {target['target']}{spread}）{verdict}"
        )
    for note in report["notes"]:
        console.print(f"注：{note}")


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(
        prog="python -m evals.bench",
        description="HTTP 服务压测：模拟 QQ 用户多轮对话，对接假 Ollama（和假 MaxKB）",
    )
    parser.add_argument("--users", type=int, help="并发用户数（默认 1 和 32 各跑一次）")
    parser.add_argument(
        "--turns",
        type=int,
        help=f"每个用户的提问轮数（默认 {DEFAULT_TURNS}；零延迟单用户 {SOLO_ZERO_TURNS}）",
    )
    parser.add_argument(
        "--latency",
        choices=SETTINGS,
        help="zero：假服务立即回答；model：按速度计时（默认两个都跑）",
    )
    parser.add_argument(
        "--prefill", type=float, default=DEFAULT_PREFILL_TPS, help="预填充速度（tokens/秒）"
    )
    parser.add_argument(
        "--decode", type=float, default=DEFAULT_DECODE_TPS, help="解码速度（tokens/秒）"
    )
    parser.add_argument(
        "--backend",
        choices=("embedded", "maxkb"),
        default="embedded",
        help="检索后端：embedded（内嵌 SQLite，默认）或 maxkb（假 MaxKB）",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=len(os.sched_getaffinity(0)),
        help="服务进程数 QQRAG_WORKERS（默认本机核数）",
    )
    parser.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="每种设置重复运行的次数，报告中位数的那次（共享机器上单次结果波动大）",
    )
    parser.add_argument("--json", type=Path, metavar="PATH", help="把报告写成 JSON")
    args = parser.parse_args(argv)
    if (
        any(value is not None and value < 1 for value in (args.users, args.turns))
        or min(args.workers, args.repeat) < 1
    ):
        parser.error("--users、--turns、--workers 和 --repeat 至少为 1")
    if args.prefill <= 0 or args.decode <= 0:
        parser.error("--prefill 和 --decode 必须大于 0")
    report = run_benchmark(
        settings=(args.latency,) if args.latency else SETTINGS,
        users=(args.users,) if args.users else DEFAULT_USERS,
        turns=args.turns,
        prefill=args.prefill,
        decode=args.decode,
        backend=args.backend,
        workers=args.workers,
        repeat=args.repeat,
    )
    publish(report, print_report, args.json)
    return report


if __name__ == "__main__":
    main()
