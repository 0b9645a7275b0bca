import os
import subprocess
import sys
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from agent.policy.metrics import Metrics, forget_dead_processes


def samples(metrics: Metrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    body, content_type = metrics.render()
    assert content_type.startswith("text/plain")
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(body.decode())
        for sample in family.samples
    }


def test_render_parses_and_holds_every_series():
    metrics = Metrics()
    metrics.count_turn(intent="question", profile="default", outcome="answered", seconds=1.5)
    metrics.count_turn(intent="question", profile="default", outcome="answered", seconds=3.0)
    metrics.count_turn(intent="chitchat", profile="canary", outcome="blocked", seconds=0.2)
    metrics.node_seconds.labels(node="retrieve").observe(0.03)
    metrics.count_tokens(profile="default", prompt=120, completion=30)
    metrics.quota_rejections.labels(scope="user_rpm").inc()
    metrics.busy_rejections.inc()
    metrics.count_safety_hits("question", ["politics", "politics", "ads"])
    metrics.dependency_errors.labels(dependency="ollama").inc()
    with metrics.inflight_turns.track_inprogress():
        inflight = samples(metrics)[("qqrag_inflight_turns", ())]

    found = samples(metrics)

    assert inflight == 1
    assert found[("qqrag_inflight_turns", ())] == 0
    answered = (("intent", "question"), ("outcome", "answered"), ("profile", "default"))
    assert found[("qqrag_turns_total", answered)] == 2
    blocked = (("intent", "chitchat"), ("outcome", "blocked"), ("profile", "canary"))
    assert found[("qqrag_turns_total", blocked)] == 1
    assert found[("qqrag_turn_seconds_count", ())] == 3
    assert found[("qqrag_turn_seconds_sum", ())] == 4.7
    assert found[("qqrag_turn_seconds_bucket", (("le", "2.0"),))] == 2
    assert found[("qqrag_node_seconds_count", (("node", "retrieve"),))] == 1
    assert found[("qqrag_tokens_total", (("kind", "prompt"), ("profile", "default")))] == 120
    assert found[("qqrag_tokens_total", (("kind", "completion"), ("profile", "default")))] == 30
    assert found[("qqrag_quota_rejections_total", (("scope", "user_rpm"),))] == 1
    assert found[("qqrag_busy_rejections_total", ())] == 1
    assert found[("qqrag_safety_hits_total", (("category", "politics"), ("side", "question")))] == 2
    assert found[("qqrag_safety_hits_total", (("category", "ads"), ("side", "question")))] == 1
    assert found[("qqrag_dependency_errors_total", (("dependency", "ollama"),))] == 1


def test_each_instance_has_its_own_registry():
    first, second = Metrics(), Metrics()
    first.busy_rejections.inc()
    assert samples(first)[("qqrag_busy_rejections_total", ())] == 1
    assert samples(second)[("qqrag_busy_rejections_total", ())] == 0


def test_the_live_gauges_of_dead_processes_are_dropped_and_nothing_else(tmp_path: Path):
    gone = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        check=True,
        capture_output=True,
        text=True,
    )
    dead, alive = int(gone.stdout), os.getpid()
    names = [
        f"gauge_livesum_{dead}.db",
        f"gauge_liveall_{dead}.db",
        f"counter_{dead}.db",
        f"histogram_{dead}.db",
        f"gauge_livesum_{alive}.db",
    ]
    for name in names:
        (tmp_path / name).write_bytes(b"")

    assert forget_dead_processes(tmp_path) == [dead]

    # Counts of the dead worker still add up; only its in-flight gauge goes.
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [f"counter_{dead}.db", f"histogram_{dead}.db", f"gauge_livesum_{alive}.db"]
    )
    assert forget_dead_processes(tmp_path) == []
