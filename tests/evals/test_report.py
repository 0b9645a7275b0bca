"""The reports: HTML that parses, is self-contained and shows every case; JSON that matches it."""

from __future__ import annotations

import json
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from evals.outcome import EvalOptions, EvalOutcome
from evals.report import render_html, report_json, verdict, write_reports
from evals.runner import BASELINES_DIR, evaluate
from evals.suite import load_suite


class Page(HTMLParser):
    """What the tests look at in a page: tags, case blocks, ids, links, visible text."""

    def __init__(self, html: str) -> None:
        super().__init__()
        self.tags: dict[str, int] = {}
        self.cases: list[str] = []
        self.ids: list[str] = []
        self.links: list[str] = []
        self.sources: list[str] = []
        self.text: list[str] = []
        self.feed(html)
        self.close()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags[tag] = self.tags.get(tag, 0) + 1
        found = {name: value or "" for name, value in attrs}
        if tag == "details":
            self.cases.append(found["data-case"])
        if "id" in found:
            self.ids.append(found["id"])
        if "href" in found:
            self.links.append(found["href"])
        if "src" in found:
            self.sources.append(found["src"])

    def handle_data(self, data: str) -> None:
        self.text.append(data)

    @property
    def all_text(self) -> str:
        return "".join(self.text)


def strict_run(tmp_path: Path, **extra: Any) -> EvalOutcome:
    profiles = tmp_path / "profiles.yaml"
    profiles.write_text("profiles:\n  strict:\n    relevance_threshold: 0.99\n", "utf-8")
    values: dict[str, Any] = {
        "suite": "smoke",
        "profile": "strict",
        "profiles_path": profiles,
        "baseline": BASELINES_DIR / "smoke.default.json",
        "progress": False,
    }
    return evaluate(EvalOptions(**(values | extra)))


@pytest.fixture
def outcome(tmp_path: Path) -> EvalOutcome:
    return strict_run(tmp_path)


def test_the_page_parses_is_self_contained_and_shows_every_case(outcome: EvalOutcome):
    html = render_html(report_json(outcome))
    page = Page(html)
    suite = load_suite("smoke")
    assert sorted(page.cases) == sorted(suite.case_ids())
    assert len(page.ids) == len(set(page.ids))
    # Nothing from the network: no scripts, styles or images to fetch, links stay on the page.
    for tag in ("script", "link", "img", "iframe"):
        assert tag not in page.tags
    assert page.sources == []
    assert page.links and all(link.startswith("#") and link[1:] in page.ids for link in page.links)
    assert page.tags["svg"] >= 19  # a bar chart per metric
    text = page.all_text
    assert "评测报告：smoke（版本 3）" in text
    for heading in ("各节点指标", "有变化的用例", "用例明细：档案 strict", "耗时"):
        assert heading in text
    for case in suite.cases:
        for turn in case.turns:
            assert turn.text in text
    assert "发现回归" in text
    # Drill-down: rewritten query, passage scores, the verdict and the blocked question.
    for detail in ("检索的问题", "重排分", "引用核对", "敏感词拦截", "代开发票", "金标段落"):
        assert detail in text


def test_the_json_report_holds_what_the_page_shows(outcome: EvalOutcome, tmp_path: Path):
    paths = write_reports(outcome, tmp_path / "out")
    assert [path.name for path in paths] == ["smoke.strict.json", "smoke.strict.html"]
    data = json.loads(paths[0].read_text(encoding="utf-8"))
    assert data == json.loads(json.dumps(report_json(outcome)))
    assert paths[1].read_text(encoding="utf-8") == render_html(data)
    assert data["exit_code"] == 1 and data["comparison"]["regressed"]
    run = data["runs"][0]
    assert run["context"]["relevance_threshold"] == 0.99
    assert run["context"]["knowledge_bases"] == ["smoke"]
    turn = next(case for case in run["cases"] if case["id"] == "port-follow-up")["turns"][1]
    assert turn["query"] != turn["text"]  # the follow-up was rewritten
    assert turn["candidates"] and all("score" in p and "gold" in p for p in turn["candidates"])
    assert any(p["gold"] for p in turn["ranked"])
    assert {"checks", "obs", "node_seconds", "verdict", "citations"} <= set(turn)
    blocked = next(case for case in run["cases"] if case["id"] == "sensitive-question")
    assert blocked["turns"][0]["blocked"] and blocked["turns"][0]["safety_hits"] == ["代开发票"]


def test_compared_profiles_get_one_drill_down_each(tmp_path: Path):
    profiles = tmp_path / "profiles.yaml"
    profiles.write_text("profiles:\n  strict:\n    relevance_threshold: 0.99\n", "utf-8")
    options = EvalOptions(
        suite="smoke",
        compare=("default", "strict"),
        profiles_path=profiles,
        progress=False,
        sample=4,
    )
    report = report_json(evaluate(options))
    page = Page(render_html(report))
    assert len(page.cases) == 8 and len(set(page.cases)) == 4
    # Moved cases link to the later profile's drill-down.
    assert {link[1:] for link in page.links} <= {
        i for i in page.ids if i.startswith("case-strict-")
    }
    assert "档案 default" in page.all_text and "档案 strict" in page.all_text
    assert verdict(report)[1] == "bad"


def test_without_a_baseline_the_page_shows_plain_figures(tmp_path: Path):
    # No baseline is shipped for the strict profile.
    # Failing cases would fail a run without a baseline (tests/evals/test_runner.py): allowed
    # here, the page shows the figures alone.
    alone = report_json(strict_run(tmp_path, baseline=None, sample=3, allow_failing=True))
    assert alone["comparison"] is None
    text, kind = verdict(alone)
    assert text.startswith("没有可比较的基线：只给出本次数字") and kind == "info"
    assert any("--update-baseline" in note for note in alone["notes"])
    page = Page(render_html(alone))
    assert "样本数" in page.all_text and "3（抽样 3 / 16）" in page.all_text
    written = tmp_path / "strict.json"
    stored = report_json(strict_run(tmp_path, baseline=written, update_baseline=True, sample=3))
    assert verdict(stored) == (f"已写入基线 {written}", "info")
