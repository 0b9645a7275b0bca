"""Overload and fault figures of the HTTP service: `python -m evals.overload`.

The real `qqrag serve` runs in a child process over the bundled guide (`docs/`) with the fake
Ollama of this process; each scenario starts a fresh service and data folder:

- burst: 200 users ask at once against the default 8 turns in flight, the model taking
  `--model-seconds` per call: how many are answered, how many told "busy", and how long a
  refusal takes (p50/p99), measured at the client;
- retry: 64 users who retry a busy reply after 50 ms until each has 3 answers: answered
  turns/s and the share of replies that were "busy";
- conversation: 10 messages of one conversation at once while its model hangs: one answered
  in time, one waiting and answered, the rest told at once that the last one is still going;
- kill: conversations asked without pause while the service is SIGKILLed again and again on
  one data folder: acknowledged turns lost, and questions stored without their answer;
- postgres: turns while the checkpoint database stops answering (a TCP proxy in front of the
  PostgreSQL at `--postgres`, frozen: nothing gets through, nothing is closed): how long until
  each gets its reply, and which. Skipped when that PostgreSQL cannot be reached.

Nothing here asserts: the figures go to the terminal (and `--json`), for README's reliability
section and for comparing two versions on one machine.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import socket
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import psycopg
from rich.console import Console
from rich.table import Table

from evals.bench import docs_dir, service_env
from evals.fakes.ollama import FakeOllama, Fault, LatencyModel
from evals.harness import FreezableProxy, ServiceProcess, free_port

BURST = 200
SLOTS = 8
RETRY_USERS = 64
RETRY_ANSWERS = 3
CONVERSATION_BURST = 10
DEADLINE_S = 10.0
QUESTION = "qqrag 默认监听哪个端口？"
SCENARIOS = ("burst", "retry", "conversation", "postgres", "kill")


@dataclass
class Reply:
    status: int
    code: str
    seconds: float


def percentiles_ms(seconds: Sequence[float]) -> dict[str, float]:
    if not seconds:
        return {}
    p50, p99 = np.percentile(np.asarray(seconds) * 1000, [50, 99])
    return {"p50": round(float(p50), 1), "p99": round(float(p99), 1), "n": len(seconds)}


class Connections:
    """Keep-alive HTTP/1.1 connections to the service, opened up front, one request at a time
    each: a load generator light enough not to be what is measured. httpx spends about 20 ms
    of this process's CPU per request with 200 connections open (its pool is scanned on every
    request), which made a burst of 200 look like 3 s of service time."""

    def __init__(self, url: str, count: int) -> None:
        host, _, port = url.removeprefix("http://").partition(":")
        self._address = (host, int(port))
        self._count = count
        self._idle: asyncio.Queue[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = (
            asyncio.Queue()
        )
        self._all: list[asyncio.StreamWriter] = []

    async def __aenter__(self) -> Connections:
        for _ in range(self._count):
            reader, writer = await asyncio.open_connection(*self._address)
            self._all.append(writer)
            self._idle.put_nowait((reader, writer))
        return self

    async def __aexit__(self, *exc: object) -> None:
        for writer in self._all:
            writer.close()

    async def post(self, path: str, body: dict[str, Any]) -> tuple[int, Any]:
        """(status, parsed JSON body)."""
        reader, writer = await self._idle.get()
        try:
            data = json.dumps(body, ensure_ascii=False).encode()
            writer.write(
                f"POST {path} HTTP/1.1\r\nHost: qqrag\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(data)}\r\n\r\n".encode()
                + data
            )
            status = int((await reader.readline()).split()[1])
            length = 0
            while (line := await reader.readline()) not in (b"\r\n", b""):
                name, _, value = line.decode("latin-1").partition(":")
                if name.lower() == "content-length":
                    length = int(value)
            return status, json.loads(await reader.readexactly(length))
        finally:
            self._idle.put_nowait((reader, writer))


async def ask(connections: Connections, user: str, text: str = QUESTION) -> Reply:
    started = time.perf_counter()
    status, body = await connections.post(
        "/v1/chat", {"scene": "private", "user_id": user, "text": text}
    )
    seconds = time.perf_counter() - started
    return Reply(status, "" if status == 200 else body["error"]["code"], seconds)


@contextlib.contextmanager
def service(ollama: FakeOllama, **settings: str) -> Iterator[ServiceProcess]:
    with tempfile.TemporaryDirectory(prefix="qqrag-overload-") as tmp:
        root = Path(tmp)
        env = service_env(root / "data", ollama.url, docs_dir(), 1) | {
            "QQRAG_MAX_INFLIGHT_TURNS": str(SLOTS),
            "QQRAG_TURN_DEADLINE": str(DEADLINE_S),
        }
        with ServiceProcess(env | settings, cwd=root) as process:
            asyncio.run(warm_up(process.url))
            yield process


async def warm_up(url: str) -> None:
    async with Connections(url, 1) as http:
        await ask(http, "warm-up")


def summary(replies: Sequence[Reply], wall: float) -> dict[str, Any]:
    answered = [r.seconds for r in replies if r.status == 200]
    refused = [r.seconds for r in replies if r.status != 200]
    return {
        "replies": dict(Counter(r.code or "answered" for r in replies).most_common()),
        "answered_ms": percentiles_ms(answered),
        "refused_ms": percentiles_ms(refused),
        "slowest_s": round(max(r.seconds for r in replies), 2),
        "wall_s": round(wall, 2),
    }


def burst(model_seconds: float) -> dict[str, Any]:
    """Two bursts on one service: the first meets code paths no request has run yet (a
    service just started), the second a service that has served them."""
    with (
        FakeOllama(latency=LatencyModel(fixed_s=model_seconds)) as ollama,
        service(ollama) as process,
    ):

        async def run() -> tuple[list[Reply], float]:
            # Connections opened beforehand: the burst measures the service, not 200 TCP
            # handshakes in this process.
            async with Connections(process.url, BURST) as http:
                started = time.perf_counter()
                replies = await asyncio.gather(*(ask(http, f"b{i}") for i in range(BURST)))
                return list(replies), time.perf_counter() - started

        first = summary(*asyncio.run(run()))
        second = summary(*asyncio.run(run()))
    return {**second, "first_burst": first}


def retry(model_seconds: float) -> dict[str, Any]:
    with (
        FakeOllama(latency=LatencyModel(fixed_s=model_seconds)) as ollama,
        service(ollama) as process,
    ):

        async def user(http: Connections, name: str) -> list[Reply]:
            replies: list[Reply] = []
            while sum(r.status == 200 for r in replies) < RETRY_ANSWERS:
                reply = await ask(http, name)
                replies.append(reply)
                if reply.status != 200:
                    await asyncio.sleep(0.05)
            return replies

        async def run() -> tuple[list[Reply], float]:
            async with Connections(process.url, RETRY_USERS) as http:
                started = time.perf_counter()
                parts = await asyncio.gather(*(user(http, f"r{i}") for i in range(RETRY_USERS)))
                return [r for part in parts for r in part], time.perf_counter() - started

        replies, wall = asyncio.run(run())
    report = summary(replies, wall)
    answered = sum(r.status == 200 for r in replies)
    report["answered_per_s"] = round(answered / wall, 1)
    report["busy_share"] = round(sum(r.code == "busy" for r in replies) / len(replies), 3)
    return report


def conversation() -> dict[str, Any]:
    with FakeOllama() as ollama, service(ollama, QQRAG_OLLAMA_TIMEOUT="600") as process:

        async def run() -> tuple[list[Reply], float]:
            async with Connections(process.url, CONVERSATION_BURST) as http:
                await ask(http, "same")
                ollama.fail_next(Fault.HANG)
                asked = len(ollama.requests)
                started = time.perf_counter()
                holder = asyncio.create_task(ask(http, "same"))
                await asyncio.to_thread(until_requested, ollama, asked)
                others = [ask(http, "same", f"{QUESTION}（{i}）") for i in range(1, 10)]
                replies = [*await asyncio.gather(*others), await holder]
                return replies, time.perf_counter() - started

        replies, wall = asyncio.run(run())
    report = summary(replies, wall)
    report["deadline_s"] = DEADLINE_S
    return report


def until_requested(ollama: FakeOllama, seen: int, timeout: float = 30.0) -> None:
    """Until the fake has received more than `seen` requests."""
    give_up = time.monotonic() + timeout
    while len(ollama.requests) <= seen:
        if time.monotonic() > give_up:
            raise RuntimeError("the service never called the model")
        time.sleep(0.01)


def postgres(url: str, turns: int = 5) -> dict[str, Any] | None:
    params = psycopg.conninfo.conninfo_to_dict(url)
    target = (str(params.get("host") or "127.0.0.1"), int(params.get("port") or 5432))
    try:
        socket.create_connection(target, timeout=2).close()
    except OSError:
        return None
    with FreezableProxy(target) as proxy:
        proxied = psycopg.conninfo.make_conninfo(url, host="127.0.0.1", port=proxy.port)
        settings = {
            "QQRAG_CHECKPOINTER": "postgres",
            "QQRAG_POSTGRES_URL": proxied,
            "QQRAG_OLLAMA_TIMEOUT": "600",
        }
        with FakeOllama() as ollama, service(ollama, **settings) as process:

            async def run() -> tuple[list[Reply], float]:
                async with Connections(process.url, turns) as http:
                    proxy.freeze()
                    started = time.perf_counter()
                    replies = await asyncio.gather(*(ask(http, f"p{i}") for i in range(turns)))
                    wall = time.perf_counter() - started
                    proxy.thaw()
                    return list(replies), wall

            replies, wall = asyncio.run(run())
    report = summary(replies, wall)
    report["deadline_s"] = DEADLINE_S
    return report


def kill_loop(cycles: int = 10, users: int = 8, seconds: float = 1.5) -> dict[str, Any]:
    """`users` conversations asked without pause while the service is SIGKILLed every
    `seconds`, `cycles` times, on one data folder; then every conversation is read back: an
    answered (acknowledged) turn must be there, and no question without its answer."""
    acknowledged: dict[str, list[str]] = {f"k{i}": [] for i in range(users)}
    threads: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="qqrag-overload-") as tmp, FakeOllama() as ollama:
        root = Path(tmp)
        env = service_env(root / "data", ollama.url, docs_dir(), 1)
        port = free_port()

        async def load(url: str, stop_at: float) -> None:
            # httpx here: 8 connections are few, and it reports a killed service plainly.
            async with httpx.AsyncClient(base_url=url, timeout=60) as http:

                async def user(name: str) -> None:
                    n = 0
                    while time.monotonic() < stop_at:
                        text = f"{QUESTION}（{name}-{len(acknowledged[name])}-{n}）"
                        n += 1
                        try:
                            response = await http.post(
                                "/v1/chat", json={"scene": "private", "user_id": name, "text": text}
                            )
                        except httpx.HTTPError:
                            return  # killed mid-turn: not acknowledged
                        if response.status_code == 200:
                            acknowledged[name].append(text)
                            threads[name] = response.json()["thread_id"]

                await asyncio.gather(*(user(name) for name in acknowledged))

        for _ in range(cycles):
            process = ServiceProcess(env, cwd=root, port=port).start()
            worker = threading.Thread(
                target=asyncio.run, args=(load(process.url, time.monotonic() + seconds * 2),)
            )
            worker.start()
            time.sleep(seconds)
            process.stop(kill=True)
            worker.join()
        with ServiceProcess(env, cwd=root, port=port) as process:
            lost = half = stored = 0
            for name, texts in acknowledged.items():
                if name not in threads:
                    continue
                history = httpx.get(f"{process.url}/v1/threads/{threads[name]}", timeout=30)
                messages = history.json()["messages"]
                asked = [m["content"] for m in messages if m["role"] == "user"]
                # A conversation keeps its latest turns only: every turn acknowledged since the
                # oldest one kept must be there.
                kept = set(asked)
                since = next((i for i, text in enumerate(texts) if text in kept), len(texts))
                lost += sum(text not in kept for text in texts[since:])
                lost += since == len(texts) and bool(texts)
                stored += len(asked)
                half += sum(
                    1
                    for i, m in enumerate(messages)
                    if m["role"] == "user"
                    and (i + 1 == len(messages) or messages[i + 1]["role"] != "assistant")
                )
    return {
        "kills": cycles,
        "acknowledged": sum(len(t) for t in acknowledged.values()),
        "stored_questions": stored,
        "acknowledged_lost": lost,
        "half_turns": half,
    }


def print_report(report: dict[str, Any], console: Console) -> None:
    table = Table(title="过载与故障（客户端测得）")
    for column in ("场景", "回复", "回答 p50/p99 ms", "拒绝 p50/p99 ms", "最慢 s", "其他"):
        table.add_column(column)
    for name, run in report["scenarios"].items():
        if name == "kill":
            console.print(
                f"kill：SIGKILL {run['kills']} 次；确认过的回答 {run['acknowledged']} 轮，"
                f"丢失 {run['acknowledged_lost']}；对话里的问题 {run['stored_questions']} 个，"
                f"没有回答的半轮 {run['half_turns']}"
            )
            continue
        if run is None:
            table.add_row(name, "跳过（连不上 PostgreSQL）", "", "", "", "")
            continue
        answered, refused = run["answered_ms"], run["refused_ms"]
        extra = {k: v for k, v in run.items() if k in ("answered_per_s", "busy_share")}
        table.add_row(
            name,
            ", ".join(f"{code} {n}" for code, n in run["replies"].items()),
            f"{answered.get('p50', '-')}/{answered.get('p99', '-')}",
            f"{refused.get('p50', '-')}/{refused.get('p99', '-')}",
            str(run["slowest_s"]),
            ", ".join(f"{k} {v}" for k, v in extra.items()),
        )
    console.print(table)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(
        prog="python -m evals.overload", description="服务在过载与故障下的表现（不做断言，只报数）"
    )
    parser.add_argument("--model-seconds", type=float, default=0.5, help="假模型每次调用的耗时")
    parser.add_argument(
        "--postgres",
        default=os.environ.get(
            "QQRAG_BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"
        ),
        help="postgres 场景用的 PostgreSQL（经本进程的代理连过去）",
    )
    parser.add_argument("--only", choices=SCENARIOS, action="append", help="只跑这些场景（可重复）")
    parser.add_argument("--json", type=Path, metavar="PATH", help="把报告写成 JSON")
    args = parser.parse_args(argv)
    console = Console()
    wanted = args.only or list(SCENARIOS)
    scenarios: dict[str, Any] = {}
    for name in wanted:
        console.print(f"[bold]{name}[/]…")
        if name == "burst":
            scenarios[name] = burst(args.model_seconds)
        elif name == "retry":
            scenarios[name] = retry(args.model_seconds)
        elif name == "conversation":
            scenarios[name] = conversation()
        elif name == "kill":
            scenarios[name] = kill_loop()
        else:
            scenarios[name] = postgres(args.postgres)
    report = {"slots": SLOTS, "deadline_s": DEADLINE_S, "scenarios": scenarios}
    print_report(report, console)
    if args.json:
        args.json.write_text(json.dumps(report, ensure_ascii=False, indent=2), encoding="utf-8")
    return report


if __name__ == "__main__":
    main()
