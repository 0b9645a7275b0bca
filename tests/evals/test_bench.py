"""The service benchmark on tiny runs: report structure and counts, no timing assertions."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rich.console import Console

from agent.settings import Settings
from evals.bench import (
    CALL_KINDS,
    CONVERSATIONS,
    DEFAULT_TURNS,
    MAXKB_NOTE,
    NODES,
    SOLO_ZERO_TURNS,
    call_kind,
    default_turns,
    main,
    make_users,
    median_run,
    run_benchmark,
    targets,
)

USERS = 2
TURNS = 2


def check_run(run: dict[str, Any], setting: str) -> None:
    assert run["setting"] == setting
    assert run["users"] == USERS and run["turns_per_user"] == TURNS
    assert run["turns"] == USERS * TURNS
    assert run["status"] == {"200": USERS * TURNS}
    assert run["wall_s"] > 0 and run["turns_per_s"] > 0
    latency = run["latency_ms"]
    assert set(latency) == {"mean", "p50", "p95", "p99", "max"}
    assert 0 < latency["p50"] <= latency["p95"] <= latency["p99"] <= latency["max"]
    # Every user's first question is a knowledge question: at least one answer call each.
    assert run["model_calls_per_turn"] > 0 and run["tokens_per_turn"] > 0
    assert set(run["calls_per_turn"]) == set(CALL_KINDS)
    assert run["calls_per_turn"]["answer"] > 0
    assert sum(run["outcomes"].values()) == USERS * TURNS
    split = run["time_split"]
    assert set(split["nodes_ms"]) == set(NODES)
    assert split["nodes_ms"]["classify"] > 0 and split["outside_turn_ms"] > 0
    service = run["service"]
    assert service["peak_rss_mib"] >= service["rss_mib"] > 0
    assert service["cpu_s"] > 0 and service["cpu_ms_per_turn"] > 0
    assert run["bench_cpu_s"] > 0


def test_zero_latency_run_on_two_workers_writes_the_report_as_json(tmp_path: Path) -> None:
    path = tmp_path / "out" / "bench.json"
    argv = ["--users", str(USERS), "--turns", str(TURNS), "--latency", "zero", "--workers", "2"]
    report = main([*argv, "--json", str(path)])
    assert json.loads(path.read_text(encoding="utf-8")) == report
    assert report["machine"]["nproc"] >= 1 and report["machine"]["python"]
    assert report["knowledge_base"]["passages"] > 0
    assert report["backend"] == "embedded"
    [run] = report["runs"]
    check_run(run, "zero")
    assert run["workers"] == 2
    assert run["latency_model"] is None and "naive" not in run
    assert [target["name"] for target in report["targets"]] == []
    assert report["notes"]


def test_latency_model_run_compares_with_the_naive_pipeline_through_maxkb() -> None:
    report = run_benchmark(
        settings=("model",),
        users=(USERS,),
        turns=TURNS,
        prefill=50_000,
        decode=5_000,
        backend="maxkb",
        console=Console(quiet=True),
    )
    assert report["backend"] == "maxkb"
    [run] = report["runs"]
    check_run(run, "model")
    assert run["maxkb_requests_per_turn"] > 0
    assert run["latency_model"] == {
        "fixed_s": 0.0,
        "prefill_tokens_per_s": 50_000,
        "decode_tokens_per_s": 5_000,
    }
    naive = run["naive"]
    assert naive["model_calls_per_turn"] == 1.0 and naive["tokens_per_turn"] > 0
    assert 0 < naive["completion_tokens_per_turn"] < naive["tokens_per_turn"]
    # The naive pipeline gets the service's passage budget, never more.
    assert 0 < naive["passages_per_turn"] <= Settings.model_fields["rerank_top_n"].default
    assert naive["latency_ms"]["p50"] > 0
    versus = run["vs_naive"]
    assert versus["ratio_p50"] > 0 and versus["ratio_p95"] > 0 and versus["ratio_mean"] > 0
    assert sum(group["turns"] for group in versus["by_model_calls"].values()) == USERS * TURNS
    [target] = report["targets"]
    assert target["value"] == versus["ratio_p50"] and isinstance(target["met"], bool)
    assert report["notes"][-1] == MAXKB_NOTE


def test_users_are_deterministic_mixed_and_start_with_a_conversation() -> None:
    users = make_users(8, 5)
    assert users == make_users(8, 5)
    assert {user.scene for user in users} == {"group", "private"}
    openings = {conversation[0] for conversation in CONVERSATIONS}
    for user in users:
        assert len(user.texts) == 5 and user.texts[0] in openings
        body = user.request(1)
        assert body["text"] == user.texts[1]
        assert ("group_id" in body) == (user.scene == "group")
    # More turns than the script holds: users start over instead of running dry.
    assert len(make_users(1, 100)[0].texts) == 100


def test_model_requests_are_told_apart_by_purpose() -> None:
    system = {"role": "system", "content": "…"}
    asked = {"role": "user", "content": "<context>\n[1] 资料\n</context>\n\n问题：端口？"}
    assert call_kind("/api/chat", {"format": {"type": "object"}, "messages": [system]}) == (
        "classify"
    )
    assert call_kind("/api/chat", {"messages": [system, {"role": "user", "content": "谢谢"}]}) == (
        "chitchat"
    )
    assert call_kind("/api/chat", {"messages": [system, asked]}) == "answer"
    tool = [{"role": "assistant", "content": ""}, {"role": "tool", "content": "[2] 更多"}]
    assert call_kind("/api/chat", {"messages": [system, asked, *tool]}) == "answer_after_tool"
    # The regeneration request mentions <context> too, but never closes the fence.
    again = [
        {"role": "assistant", "content": "草稿[1]。"},
        {"role": "user", "content": "请只依据 <context> 中的资料重新回答"},
    ]
    assert call_kind("/api/chat", {"messages": [system, asked, *again]}) == "answer_regenerate"
    assert call_kind("/api/embed", {"input": ["x"]}) == "embed"
    assert call_kind("/api/tags", None) is None


def test_repeats_report_the_median_run_and_every_figure() -> None:
    def run(p50: float) -> dict[str, Any]:
        return {"setting": "zero", "users": 1, "latency_ms": {"p50": p50}, "turns_per_s": 1.0}

    middle = median_run([run(13.0), run(8.0), run(9.5)])
    assert middle["latency_ms"]["p50"] == 9.5
    assert middle["repeats"] == {"count": 3, "latency_ms.p50": [13.0, 8.0, 9.5]}
    [target] = targets([middle])
    assert target["value"] == 9.5 and target["met"] is True
    assert target["repeats"] == [13.0, 8.0, 9.5]
    # Throughput: more is better, the median is still the middle one.
    fast = {**run(1.0), "users": 32}
    assert (
        median_run([fast | {"turns_per_s": t} for t in (90.0, 130.0, 110.0, 120.0)])["turns_per_s"]
        == 110.0
    )


def test_a_repeated_run_carries_its_repeats() -> None:
    report = run_benchmark(
        settings=("zero",), users=(1,), turns=2, repeat=2, console=Console(quiet=True)
    )
    [run] = report["runs"]
    assert report["repeat"] == 2 and run["repeats"]["count"] == 2
    assert run["latency_ms"]["p50"] == max(run["repeats"]["latency_ms.p50"])


def test_one_user_on_zero_latency_runs_more_turns_by_default() -> None:
    assert default_turns("zero", 1) == SOLO_ZERO_TURNS > DEFAULT_TURNS
    assert default_turns("zero", 32) == default_turns("model", 1) == DEFAULT_TURNS
