"""The regression runner end to end with the in-process fake Ollama: the shipped suites against
their baselines, regressions detected and named, tolerances, profiles, the judge, bad input."""

from __future__ import annotations

import dataclasses
import io
import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml
from rich.console import Console

from agent.gateway import Answer, Gateway, Turn
from evals.__main__ import main, options_from_args
from evals.fakes.ollama import FakeOllama, Fault
from evals.harness import free_port
from evals.metrics import OBSERVATIONS, Tolerance
from evals.outcome import EvalOptions
from evals.runner import BASELINES_DIR, evaluate, run_eval
from evals.suite import SUITES_DIR

SMOKE_BASELINE = BASELINES_DIR / "smoke.default.json"
STRICT = "profiles:\n  strict:\n    relevance_threshold: 0.99\n  wide:\n    top_k: 4\n"


@pytest.fixture
def profiles(tmp_path: Path) -> Path:
    path = tmp_path / "profiles.yaml"
    path.write_text(STRICT, encoding="utf-8")
    return path


def options(tmp_path: Path, suite: str | Path = "smoke", **extra: Any) -> EvalOptions:
    values: dict[str, Any] = {
        "suite": str(suite),
        "out": tmp_path / "reports",
        "progress": False,
        "profiles_path": tmp_path / "profiles.yaml",
    }
    return EvalOptions(**(values | extra))


def run(opts: EvalOptions) -> tuple[int, str]:
    buffer = io.StringIO()
    code = run_eval(opts, Console(file=buffer, width=200))
    return code, buffer.getvalue()


def tiny_suite(tmp_path: Path, **extra: Any) -> Path:
    """Four cases over the smoke suite's one-page announcement: quick to run."""
    body = {
        "name": "tiny",
        "version": 1,
        "knowledge_base": {"name": "tiny", "paths": [str(SUITES_DIR / "smoke" / "kb")]},
        "cases": [
            {
                "id": "maintenance",
                "turns": [
                    {
                        "text": "演示服务什么时候停机维护？",
                        "intent": "knowledge",
                        "gold": ["演示服务公告 › qqrag 演示服务的例行维护"],
                        "contains": ["周日"],
                        "not_contains": ["evil.example"],
                        "cite": True,
                    }
                ],
            },
            {"id": "hello", "turns": [{"text": "你好", "intent": "chitchat", "cite": False}]},
            {"id": "weather", "turns": [{"text": "北京明天下雨吗？", "refuse": True}]},
            {
                "id": "follow",
                "turns": [
                    {"text": "演示服务什么时候停机维护？"},
                    {"text": "维护期间接口返回什么？", "contains": ["503"], "cite": True},
                ],
            },
        ],
    } | extra
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(body, allow_unicode=True), encoding="utf-8")
    return path


# —— the shipped suites against their baselines (what CI runs) ——


def test_smoke_suite_passes_against_its_baseline(tmp_path: Path):
    code, out = run(options(tmp_path))
    assert code == 0, out
    assert "没有回归（本次 对比 基线，16 个用例）" in out
    assert (tmp_path / "reports" / "smoke.default.html").is_file()
    report = json.loads((tmp_path / "reports" / "smoke.default.json").read_text("utf-8"))
    assert report["comparison"]["compared"] == 16
    assert not report["comparison"]["regressed"]
    assert report["runs"][0]["errors"] == 0


def test_cmrc2018_sample_passes_against_its_baseline(tmp_path: Path):
    outcome = evaluate(options(tmp_path, "cmrc2018", sample=60))
    assert outcome.comparison is not None
    assert outcome.comparison.regressions == []
    assert (outcome.comparison.compared, outcome.comparison.missing) == (60, [])
    assert outcome.exit_code == 0
    metrics = outcome.runs[0].metrics
    assert metrics["retrieve.recall@5"].value == 1.0
    assert metrics["answer.match"].n == 60


# —— regressions ——


def test_a_strict_profile_is_a_regression_and_the_cases_are_named(tmp_path: Path, profiles: Path):
    code, out = run(options(tmp_path, profile="strict", baseline=SMOKE_BASELINE))
    assert code == 1
    assert "发现回归" in out and "用例通过率" in out
    assert "基线来自档案 default，本次为档案 strict" in out
    # Nothing clears a 0.99 threshold for these: not found instead of an answer.
    assert "变差 install-command：新失败" in out
    assert "变差 injection-in-passage：新失败" in out
    report = json.loads((tmp_path / "reports" / "smoke.strict.json").read_text("utf-8"))
    regressed = {m["key"] for m in report["comparison"]["metrics"] if m["status"] == "regressed"}
    assert {"cases.pass_rate", "answer.citation_recall", "rerank.evidence_recall"} <= regressed
    moved = {m["id"]: m["status"] for m in report["comparison"]["moved"]}
    assert moved["install-command"] == "regressed"
    # Blocked questions and commands never reach the threshold: unmoved.
    assert "sensitive-question" not in moved and "help-command" not in moved


def raise_one_turn(baseline: dict[str, Any]) -> tuple[str, str]:
    """Make the stored run better than any run can be on one turn; returns (case, obs)."""
    for case_id, case in baseline["cases"].items():
        for turn in case["turns"]:
            for name in ("citation_recall", "recall@1", "rr", "ndcg"):
                if turn["obs"].get(name, 1.0) < 1.0:
                    turn["obs"][name] = 1.0
                    return case_id, name
    raise AssertionError("every turn of the smoke baseline is perfect: pick another edit")


def test_an_edited_baseline_shows_the_regression_and_a_tolerance_allows_it(tmp_path: Path):
    data = json.loads(SMOKE_BASELINE.read_text(encoding="utf-8"))
    case_id, name = raise_one_turn(data)
    copy = tmp_path / "baseline.json"
    copy.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
    metric = OBSERVATIONS[name]

    outcome = evaluate(options(tmp_path, baseline=copy))
    assert outcome.exit_code == 1
    assert outcome.comparison is not None
    assert [change.metric.key for change in outcome.comparison.regressions] == [metric.key]
    moved = {case.id: case for case in outcome.comparison.moved}
    assert moved[case_id].status == "regressed"
    assert any(line.endswith(f"{metric.label}：1 → 0") for line in moved[case_id].changes)

    tolerated = evaluate(
        options(tmp_path, baseline=copy, tolerances={metric.key: Tolerance(absolute=0.5)})
    )
    assert tolerated.exit_code == 0
    assert tolerated.comparison is not None
    statuses = {change.metric.key: change.status for change in tolerated.comparison.metrics}
    assert statuses[metric.key] == "within"
    assert case_id in {case.id for case in tolerated.comparison.moved}  # still named


def test_compare_two_profiles_side_by_side(tmp_path: Path, profiles: Path):
    outcome = evaluate(options(tmp_path, compare=("default", "strict")))
    assert [run.profile for run in outcome.runs] == ["default", "strict"]
    assert outcome.baseline is None and outcome.comparison is not None
    assert (outcome.comparison.before_label, outcome.comparison.after_label) == (
        "档案 default",
        "档案 strict",
    )
    assert outcome.comparison.regressed and outcome.exit_code == 1
    assert outcome.runs[1].context.relevance_threshold == 0.99
    assert outcome.runs[0].context.relevance_threshold == 0.5


# —— baselines, tolerances in the suite file, version ——


def test_baseline_round_trip_with_suite_tolerances_and_versions(tmp_path: Path):
    baseline = tmp_path / "tiny.json"
    suite = tiny_suite(tmp_path)
    code, out = run(options(tmp_path, suite, baseline=baseline, update_baseline=True))
    assert code == 0 and "已写入基线" in out
    stored = json.loads(baseline.read_text(encoding="utf-8"))
    assert (stored["suite"], stored["version"], stored["backend"]) == ("tiny", "1", "fake")
    assert list(stored["cases"]) == ["follow", "hello", "maintenance", "weather"]  # sorted keys
    assert all(case["passed"] for case in stored["cases"].values())
    assert stored["metrics"]["cases.pass_rate"] == 1.0

    # An expectation the fake cannot meet: one case of four fails. The suite allows that much.
    body = yaml.safe_load(suite.read_text(encoding="utf-8"))
    body["cases"][0]["turns"][0]["contains"] = ["周一"]
    tolerant = tiny_suite(tmp_path, cases=body["cases"], tolerances={"cases.pass_rate": 0.25})
    code, out = run(options(tmp_path, tolerant, baseline=baseline))
    assert code == 0, out
    assert "容差内变差" in out and "变差 maintenance：新失败" in out
    # The command line overrides the suite.
    strict = {"cases.pass_rate": Tolerance()}
    code, out = run(options(tmp_path, tolerant, baseline=baseline, tolerances=strict))
    assert code == 1 and "发现回归" in out

    bumped = tiny_suite(tmp_path, version=2)
    code, out = run(options(tmp_path, bumped, baseline=baseline))
    assert code == 2 and "对应套件版本 1，当前为 2" in out


def test_a_sampled_update_merges_into_the_baseline(tmp_path: Path):
    baseline = tmp_path / "tiny.json"
    suite = tiny_suite(tmp_path)
    assert run(options(tmp_path, suite, baseline=baseline, update_baseline=True))[0] == 0
    full = json.loads(baseline.read_text(encoding="utf-8"))
    outcome = evaluate(options(tmp_path, suite, baseline=baseline, update_baseline=True, sample=2))
    assert [case.case.id for case in outcome.runs[0].cases] == ["maintenance", "weather"]
    assert outcome.comparison is not None and outcome.comparison.missing == []
    assert json.loads(baseline.read_text(encoding="utf-8")) == full


def test_the_judge_scores_answers_with_the_fake_standing_in(tmp_path: Path):
    outcome = evaluate(options(tmp_path, tiny_suite(tmp_path), judge_model="judge:latest"))
    metrics = outcome.runs[0].metrics
    # The fake fills the schema's integers with 1: the lowest score, (1 - 1) / 4.
    assert (metrics["judge.faithfulness"].value, metrics["judge.faithfulness"].n) == (0.0, 3)
    assert metrics["judge.relevance"].value == 0.0
    judged = [r.judge for case in outcome.runs[0].cases for r in case.records]
    assert judged[1] is None and judged[2] is None  # chit-chat and a refusal are not judged
    assert not any("跳过忠实度" in note for note in outcome.notes)
    plain = evaluate(options(tmp_path, tiny_suite(tmp_path)))
    assert any("跳过忠实度" in note for note in plain.notes)
    assert plain.runs[0].metrics["judge.faithfulness"].value is None


def test_a_crashing_turn_is_reported_and_fails_the_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    real = Gateway.answer

    async def flaky(gateway: Gateway, turn: Turn) -> Answer:
        if turn.text == "你好":
            raise RuntimeError("boom")
        return await real(gateway, turn)

    monkeypatch.setattr(Gateway, "answer", flaky)
    baseline = tmp_path / "never.json"
    code, out = run(
        options(tmp_path, tiny_suite(tmp_path), baseline=baseline, update_baseline=True)
    )
    assert code == 1 and "有 1 轮运行出错" in out
    assert "没有写入基线" in out and not baseline.exists()
    report = json.loads((tmp_path / "reports" / "tiny.default.json").read_text("utf-8"))
    hello = next(case for case in report["runs"][0]["cases"] if case["id"] == "hello")
    assert hello["turns"][0]["error"] == "RuntimeError: boom"
    assert not hello["passed"]


def test_environment_variables_do_not_change_a_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("QQRAG_RELEVANCE_THRESHOLD", "0.99")
    monkeypatch.setenv("QQRAG_CHAT_MODEL", "other:1b")
    outcome = evaluate(options(tmp_path, tiny_suite(tmp_path)))
    context = outcome.runs[0].context
    assert (context.relevance_threshold, context.chat_model) == (0.5, "qwen3:8b")
    assert outcome.runs[0].metrics["cases.pass_rate"].value == 1.0


# —— bad input ——


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"suite": "nope"}, "没有名为 'nope' 的套件"),
        ({"profile": "missing"}, "没有名为 'missing' 的档案"),
        ({"baseline": Path("/nonexistent/b.json")}, "不存在"),
        ({"compare": ("default", "strict"), "update_baseline": True}, "--compare"),
        ({"concurrency": 0}, "--concurrency"),
        ({"suite": "smoke", "sample": 0}, "--sample"),
    ],
)
def test_unusable_input_exits_2(
    tmp_path: Path, profiles: Path, extra: dict[str, Any], message: str
):
    code, out = run(options(tmp_path, **extra))
    assert code == 2
    assert message in out


def test_a_baseline_is_checked_before_anything_runs(tmp_path: Path):
    copy = tmp_path / "baseline.json"
    shutil.copy(SMOKE_BASELINE, copy)
    # No Ollama listens on port 9: the refusal comes before any turn would need one.
    real_model = options(tmp_path, baseline=copy, ollama_url="http://127.0.0.1:9")
    code, out = run(real_model)
    assert code == 2 and "由 fake 生成，本次为 ollama:qwen3:8b" in out
    code, out = run(options(tmp_path, tiny_suite(tmp_path), baseline=copy))
    assert code == 2 and "属于套件 smoke，不是 tiny" in out


def test_command_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    parsed = options_from_args(
        ["smoke", "--compare", "a", "b", "--tolerance", "cost.tokens=20%", "--sample", "3"]
    )
    assert parsed.compare == ("a", "b")
    assert parsed.tolerances == {"cost.tokens": Tolerance(relative=0.2)}
    assert parsed.sample == 3 and parsed.profile == "default" and parsed.progress
    with pytest.raises(SystemExit):
        options_from_args(["smoke", "--tolerance", "nope=1"])
    assert "没有指标 'nope'" in capsys.readouterr().err
    suite = tiny_suite(tmp_path)
    args = [str(suite), "--out", str(tmp_path / "r"), "--no-progress"]
    assert main([*args, "--baseline", str(tmp_path / "b.json"), "--update-baseline"]) == 0
    assert main([*args, "--baseline", str(tmp_path / "b.json")]) == 0
    assert "没有回归" in capsys.readouterr().out


def test_citation_snippets_are_masked_as_the_service_masks_them(tmp_path: Path):
    """The runner goes through the gateway: a sensitive word quoted from a cited passage is
    masked in the snippet too, as users of `/v1/chat` see it (the runner once left it)."""
    words = tmp_path / "words"
    words.mkdir()
    (words / "test.txt").write_text("凌晨\n", encoding="utf-8")
    suite = tiny_suite(tmp_path, sensitive_words="words")
    run(options(tmp_path, suite))
    report = json.loads((tmp_path / "reports" / "tiny.default.json").read_text("utf-8"))
    case = next(case for case in report["runs"][0]["cases"] if case["id"] == "maintenance")
    [turn] = case["turns"]
    assert turn["citations"], "the maintenance answer cites its passage"
    assert all("凌晨" not in citation["snippet"] for citation in turn["citations"])
    assert "**" in turn["citations"][0]["snippet"]
    assert "凌晨" not in turn["answer"]


def test_a_run_that_cannot_reach_its_model_is_an_error(tmp_path: Path):
    """A wrong --ollama-url used to give a report of degraded answers and exit 0."""
    suite = tiny_suite(tmp_path)
    nowhere = f"http://127.0.0.1:{free_port()}"
    code, out = run(options(tmp_path, suite, ollama_url=nowhere))
    assert code == 3 and f"连不上 Ollama（{nowhere}）" in out
    with FakeOllama() as fake:
        code, out = run(options(tmp_path, suite, ollama_url=fake.url, chat_model="qwen9:1t"))
        assert code == 3 and "没有模型 qwen9:1t" in out and "ollama pull qwen9:1t" in out

        # Reachable and pulled, but every answer fails: every turn degraded.
        fake.fail_next(Fault.HTTP_500, times=1000)
        baseline = tmp_path / "tiny.json"
        opts = options(tmp_path, suite, ollama_url=fake.url, chat_model="qwen3:8b")
        code, out = run(dataclasses.replace(opts, baseline=baseline, update_baseline=True))
    assert code == 3 and "全部降级" in out and "运行无效" in out
    assert not baseline.exists(), "a baseline was written from a run without its model"


def test_without_a_baseline_failing_cases_fail_the_run_and_are_named(tmp_path: Path):
    body = yaml.safe_load(tiny_suite(tmp_path).read_text(encoding="utf-8"))
    body["cases"][0]["turns"][0]["contains"] = ["周一"]
    failing = tiny_suite(tmp_path, cases=body["cases"])
    code, out = run(options(tmp_path, failing))
    assert code == 1
    assert "未通过的用例 1 个" in out and "maintenance：第 1 轮：回答缺少 周一" in out
    code, out = run(options(tmp_path, failing, allow_failing=True))
    assert code == 0 and "1 个用例未通过：maintenance" in out


def test_the_html_report_shows_what_each_check_expects(tmp_path: Path):
    code, _ = run(options(tmp_path, tiny_suite(tmp_path)))
    page = (tmp_path / "reports" / "tiny.default.html").read_text(encoding="utf-8")
    # Passed checks too: the reader sees what was asked of the turn, not only a tick.
    assert code == 0 and "✓ contains：期望回答包含 周日" in page
    assert "✓ not_contains：期望回答不包含 evil.example" in page
