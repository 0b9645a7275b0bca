"""EmbeddedKB over a real SQLite file: ingestion, named knowledge bases, search and health."""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import json
import sqlite3
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tools.base import KnowledgeBackend, Passage
from tools.ingest import IngestError
from tools.kb import EmbeddedKB, IngestReport, SourceInfo, match_expression, query_tokens

FAQ = [
    (
        "refund",
        "退款政策",
        "购买后七天内可以申请全额退款，超过七天只能退还一半费用。退款三个工作日内原路返回。",
    ),
    (
        "shipping",
        "发货时间",
        "订单在付款后四十八小时内发货，偏远地区需要额外两天。发货后短信通知快递单号。",
    ),
    (
        "password",
        "重置密码",
        "忘记密码时，在登录页点击“忘记密码”，输入注册手机号和验证码，即可设置新密码。",
    ),
    (
        "invoice",
        "开具发票",
        "电子发票在订单完成后自动发送到邮箱。如需纸质发票，请联系客服并提供税号。",
    ),
    (
        "membership",
        "会员等级",
        "会员分为白银、黄金和钻石三个等级，"
        "累计消费满一千元升级为黄金会员，满五千元升级为钻石会员。",
    ),
    ("hours", "客服时间", "人工客服的工作时间是每天上午九点到晚上九点，节假日照常服务。"),
    (
        "points",
        "积分规则",
        "每消费一元获得一个积分，积分可以在下次购物时抵扣现金，一百积分抵扣一元。",
    ),
]

GUIDE = """# 安装

本工具支持 Linux 和 macOS。

## 用 pip 安装

运行 pip install qqrag 即可安装，需要 Python 3.11 以上版本。

## 从源码安装

克隆仓库后运行 make install，适合需要修改代码的开发者。
"""

QUESTIONS = [
    ("买了以后多久之内可以退款？", "refund"),
    ("付款后多长时间发货？", "shipping"),
    ("忘记密码了怎么办？", "password"),
    ("怎样才能拿到纸质发票？", "invoice"),
    ("消费多少钱可以升级为钻石会员？", "membership"),
    ("人工客服每天几点开始工作？", "hours"),
]


def faq_jsonl(rows: list[tuple[str, str, str]]) -> str:
    return "".join(
        json.dumps({"id": i, "title": t, "text": x}, ensure_ascii=False) + "\n" for i, t, x in rows
    )


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    root = tmp_path / "corpus"
    (root / "docs").mkdir(parents=True)
    (root / ".git").mkdir()
    (root / "faq.jsonl").write_text(faq_jsonl(FAQ), encoding="utf-8")
    (root / "docs" / "guide.md").write_text(GUIDE, encoding="utf-8")
    (root / "docs" / "notes.txt").write_text("第一段笔记。\n\n第二段笔记。\n", encoding="utf-8")
    (root / "docs" / "logo.png").write_bytes(b"\x89PNG")
    (root / ".git" / "HEAD.md").write_text("# 不该导入\n", encoding="utf-8")
    return root


@pytest.fixture
def empty_kb(tmp_path: Path) -> Iterator[EmbeddedKB]:
    with EmbeddedKB(tmp_path / "kb.sqlite") as kb:
        yield kb


@pytest.fixture
def kb(empty_kb: EmbeddedKB, corpus: Path) -> EmbeddedKB:
    empty_kb.add_path(corpus)
    return empty_kb


def ids(passages: list[Passage]) -> list[str]:
    return [p["id"] for p in passages]


def stored_ids(kb: EmbeddedKB) -> list[str]:
    with sqlite3.connect(kb.db_path) as conn:
        rows = conn.execute("SELECT id FROM passages WHERE kb = ? ORDER BY id", (kb.name,))
        return [row[0] for row in rows]


def test_add_directory_report_and_sources(empty_kb: EmbeddedKB, corpus: Path) -> None:
    kb = empty_kb
    report = kb.add_path(corpus)
    assert report == IngestReport(
        added_files=3,
        unchanged_files=0,
        replaced_files=0,
        skipped_files=1,
        passages_added=7 + 3 + 1,
        passages_removed=0,
        seconds=report.seconds,
    )
    assert report.seconds >= 0
    assert kb.count() == 11
    sources = kb.sources()
    assert [(s.source, s.passages) for s in sources] == [
        ("docs/guide.md", 3),
        ("docs/notes.txt", 1),
        ("faq.jsonl", 7),
    ]
    guide = (corpus / "docs" / "guide.md").read_bytes()
    assert sources[0].sha256 == hashlib.sha256(guide).hexdigest()
    assert sources[0].ingested_at.endswith("+00:00")


def test_get_returns_stored_passage(kb: EmbeddedKB) -> None:
    assert kb.get("refund") == {
        "id": "refund",
        "title": "退款政策",
        "source": "faq.jsonl",
        "text": FAQ[0][2],
        "score": 0.0,
        "kb": "default",
    }
    assert kb.get("missing") is None


def test_markdown_passages_carry_heading_path(kb: EmbeddedKB) -> None:
    hits = kb.search_sync("怎么用 pip 安装？", 3)
    assert hits[0]["title"] == "安装 › 用 pip 安装"
    assert hits[0]["source"] == "docs/guide.md"
    assert hits[0]["text"] == "运行 pip install qqrag 即可安装，需要 Python 3.11 以上版本。"


def test_reingest_unchanged_does_nothing(kb: EmbeddedKB, corpus: Path) -> None:
    before_ids, before_sources = stored_ids(kb), kb.sources()
    report = kb.add_path(corpus)
    assert (report.added_files, report.unchanged_files, report.replaced_files) == (0, 3, 0)
    assert (report.skipped_files, report.passages_added, report.passages_removed) == (1, 0, 0)
    assert stored_ids(kb) == before_ids
    assert len(before_ids) == 11
    assert kb.sources() == before_sources
    assert kb.count() == 11


def test_changed_file_replaces_its_passages(kb: EmbeddedKB, corpus: Path) -> None:
    new_rows = [
        ("refund-v2", "退款政策", "购买后十四天内可以无理由退款。"),
        ("shipping", "发货时间", "订单在付款后二十四小时内发货。"),
    ]
    (corpus / "faq.jsonl").write_text(faq_jsonl(new_rows), encoding="utf-8")
    report = kb.add_path(corpus)
    assert (report.added_files, report.unchanged_files, report.replaced_files) == (0, 2, 1)
    assert (report.passages_added, report.passages_removed) == (2, 7)
    assert kb.count() == 6
    assert kb.get("refund") is None
    assert kb.get("points") is None
    remaining = set(stored_ids(kb))
    assert len(remaining) == 6
    assert remaining & {i for i, _, _ in FAQ} == {"shipping"}
    assert "refund-v2" in remaining
    shipping = kb.get("shipping")
    assert shipping is not None
    assert shipping["text"] == "订单在付款后二十四小时内发货。"
    assert ids(kb.search_sync("退款", 5)) == ["refund-v2"]
    assert ids(kb.search_sync("积分", 5)) == []
    faq = next(s for s in kb.sources() if s.source == "faq.jsonl")
    assert faq.passages == 2
    assert faq.sha256 == hashlib.sha256((corpus / "faq.jsonl").read_bytes()).hexdigest()


def test_remove_source(kb: EmbeddedKB) -> None:
    assert kb.remove_source("faq.jsonl") == 7
    assert kb.remove_source("faq.jsonl") == 0
    assert kb.count() == 4
    assert [s.source for s in kb.sources()] == ["docs/guide.md", "docs/notes.txt"]
    assert kb.search_sync("退款", 5) == []


def test_single_file_and_explicit_root(empty_kb: EmbeddedKB, corpus: Path) -> None:
    kb = empty_kb
    kb.add_path(corpus / "docs" / "notes.txt")
    kb.add_path(corpus / "docs" / "guide.md", root=corpus)
    assert [s.source for s in kb.sources()] == ["docs/guide.md", "notes.txt"]
    with pytest.raises(ValueError, match="is not under the ingest root"):
        kb.add_path(corpus / "faq.jsonl", root=corpus / "docs")
    with pytest.raises(FileNotFoundError):
        kb.add_path(corpus / "nope")


def test_bad_files_raise_and_leave_nothing_behind(tmp_path: Path, empty_kb: EmbeddedKB) -> None:
    root, kb = tmp_path / "bad", empty_kb
    root.mkdir()
    (root / "a.jsonl").write_text('{"id": "x", "text": "甲。"}\n', encoding="utf-8")
    kb.add_path(root / "a.jsonl")
    (root / "b.jsonl").write_text(
        '{"id": "y", "text": "乙。"}\n{"id": "x", "text": "丙。"}\n', encoding="utf-8"
    )
    with pytest.raises(IngestError) as error:
        kb.add_path(root / "b.jsonl")
    assert str(error.value) == (
        "b.jsonl: passage id 'x' already exists in knowledge base default (from a.jsonl)"
    )
    assert kb.get("y") is None
    assert [s.source for s in kb.sources()] == ["a.jsonl"]
    (root / "c.jsonl").write_text('{"id": "z", "text": "丁。"}\nnot json\n', encoding="utf-8")
    with pytest.raises(IngestError, match=r"^c\.jsonl:2: invalid JSON"):
        kb.add_path(root / "c.jsonl")
    (root / "d.txt").write_bytes("中文".encode("gbk"))
    with pytest.raises(IngestError, match=r"^d\.txt: not UTF-8 text \(byte 0\)$"):
        kb.add_path(root / "d.txt")
    assert kb.count() == 1


def test_named_knowledge_bases_share_a_file_but_not_passages(
    empty_kb: EmbeddedKB, corpus: Path
) -> None:
    default = empty_kb
    with EmbeddedKB(default.db_path, "guide") as guide:
        default.add_path(corpus / "faq.jsonl")
        guide.add_path(corpus / "docs")
        guide.add_path(corpus / "faq.jsonl")  # the same ids in another knowledge base are fine
        assert guide.remove_source("faq.jsonl") == 7
        assert (default.count(), guide.count()) == (7, 4)
        assert ids(default.search_sync("pip 安装", 5)) == []
        assert ids(guide.search_sync("退款", 5)) == []
        assert {p["kb"] for p in guide.search_sync("pip 安装", 5)} == {"guide"}
        assert guide.get("refund") is None
        assert default.get("refund") is not None
        assert [s.source for s in default.sources()] == ["faq.jsonl"]
        assert [s.source for s in guide.sources()] == ["guide.md", "notes.txt"]


@pytest.mark.parametrize(("question", "expected"), QUESTIONS)
def test_search_ranks_the_right_passage_first(kb: EmbeddedKB, question: str, expected: str) -> None:
    hits = kb.search_sync(question, 3)
    assert hits[0]["id"] == expected
    assert all(a["score"] >= b["score"] > 0 for a, b in itertools.pairwise(hits))


def test_interrogative_heavy_query_still_finds_the_passage(kb: EmbeddedKB) -> None:
    question = "请问一下，你们的积分到底是怎么回事呢？是什么规则啊？"
    assert query_tokens(question) == ["积分", "到底", "怎么回事", "规则"]
    assert ids(kb.search_sync(question, 1)) == ["points"]


def test_only_stopwords_fall_back_to_all_tokens() -> None:
    assert query_tokens("是什么呢？") == ["是", "什么", "呢"]
    assert match_expression("是什么呢？") == '"是" OR "什么" OR "呢"'
    assert match_expression('say "hi"') == '"say" OR "hi"'


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("", []),
        ("   \n\t", []),
        ('"', []),
        ("*", []),
        ("NEAR(", []),
        ("'; DROP TABLE passages; --", []),
        ("😀🎉", []),
        ("()[]{}:^-+", []),
        ('退款"', ["refund"]),
        ("退款*", ["refund"]),
        ("title:退款", ["refund"]),
        ("NEAR(退款 发货)", ["refund", "shipping"]),
        ("退款 AND NOT 发货 OR", ["refund", "shipping"]),
        ("退款' OR 1=1 --", ["refund"]),
        ("退款" * 5000, ["refund"]),
        # Only the first MAX_QUERY_TOKENS distinct tokens count; these are rare characters.
        ("".join(chr(0x4E00 + i) for i in range(10_000)), []),
    ],
)
def test_hostile_queries_never_raise(kb: EmbeddedKB, query: str, expected: list[str]) -> None:
    hits = kb.search_sync(query, 2)
    assert sorted(ids(hits)) == expected
    assert kb.count() == 11


def test_k_zero_or_negative(kb: EmbeddedKB) -> None:
    assert kb.search_sync("退款", 0) == []
    assert kb.search_sync("退款", -1) == []


async def test_concurrent_searches_match_sequential(kb: EmbeddedKB) -> None:
    queries = [q for q, _ in QUESTIONS] * 10
    sequential = [kb.search_sync(q, 3) for q in queries]
    with ThreadPoolExecutor(max_workers=16) as pool:
        threaded = list(pool.map(lambda q: kb.search_sync(q, 3), queries))
    gathered = await asyncio.gather(*(kb.search(q, 3) for q in queries))
    assert threaded == sequential
    assert list(gathered) == sequential


async def test_searches_run_while_writing(kb: EmbeddedKB, corpus: Path) -> None:
    (corpus / "more.txt").write_text("另一份文件。\n", encoding="utf-8")
    writer = asyncio.create_task(asyncio.to_thread(kb.add_path, corpus))
    results = await asyncio.gather(*(kb.search("退款", 1) for _ in range(50)))
    assert (await writer).added_files == 1
    # Scores move with corpus statistics as the write commits; the ranking does not.
    assert {tuple(ids(r)) for r in results} == {("refund",)}


async def test_health_messages(empty_kb: EmbeddedKB, corpus: Path) -> None:
    backend: KnowledgeBackend = empty_kb
    with EmbeddedKB(empty_kb.db_path, "工作群") as other:
        assert await backend.health() == "知识库 default 为空：先运行 qqrag kb add PATH"
        empty_kb.add_path(corpus)
        assert await backend.health() is None
        assert await other.health() == "知识库 工作群 为空：先运行 qqrag kb add PATH"
        with sqlite3.connect(empty_kb.db_path) as conn:
            conn.execute("DROP TABLE passages")
        db = empty_kb.db_path
        assert await backend.health() == f"知识库 default 无法读取（{db}）：no such table: passages"
        assert await other.health() == f"知识库 工作群 无法读取（{db}）：no such table: passages"


async def test_closed_kb_reports_unhealthy(kb: EmbeddedKB) -> None:
    kb.close()
    message = await kb.health()
    assert message is not None
    assert message.startswith(f"知识库 default 无法读取（{kb.db_path}）：")
    with pytest.raises(sqlite3.ProgrammingError):
        kb.count()


def test_reopen_keeps_data_and_progress_bar_runs(
    tmp_path: Path, corpus: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = tmp_path / "nested" / "dir" / "kb.sqlite"
    with EmbeddedKB(db) as kb:
        kb.add_path(corpus, progress=True)
    assert "导入知识库 default" in capsys.readouterr().err
    with EmbeddedKB(db) as kb:
        assert kb.count() == 11
        assert kb.sources()[2] == SourceInfo(
            source="faq.jsonl",
            sha256=hashlib.sha256((corpus / "faq.jsonl").read_bytes()).hexdigest(),
            passages=7,
            ingested_at=kb.sources()[2].ingested_at,
        )
        assert ids(kb.search_sync("退款", 1)) == ["refund"]
