"""EmbeddedKB over a real SQLite file: ingestion, named knowledge bases, search and health;
hybrid retrieval against the fake Ollama."""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import json
import logging
import sqlite3
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

import evals.retrieval
import tools.kb
from evals.fakes.ollama import DEFAULT_MODELS, EMBEDDING_DIM, FakeOllama, Fault, embed_text
from tools.base import KnowledgeBackend, Passage
from tools.embeddings import OllamaEmbedder
from tools.health import Health
from tools.ingest import IngestError
from tools.kb import (
    DocumentConflict,
    EmbeddedKB,
    FileFailure,
    IngestReport,
    SourceInfo,
    match_expression,
    query_tokens,
    reciprocal_rank_fusion,
)

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
        passages_added=7 + 3 + 1,
        passages_removed=0,
        seconds=report.seconds,
        unsupported=[str(corpus / "docs" / "logo.png")],
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


def fts_rows(kb: EmbeddedKB) -> list[tuple[str, str, str]]:
    with sqlite3.connect(kb.db_path) as conn:
        rows = conn.execute(
            "SELECT p.id, f.title, f.text FROM passages_fts AS f"
            " JOIN passages AS p ON p.pk = f.rowid ORDER BY p.id"
        )
        return [tuple(row) for row in rows]


def test_worker_processes_index_the_same_tokens(
    tmp_path: Path, corpus: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    with EmbeddedKB(tmp_path / "serial.sqlite") as serial:
        serial.add_path(corpus)
        expected = fts_rows(serial)
    # Every document goes through the process pool (real spawned processes).
    monkeypatch.setattr(tools.kb, "PARALLEL_TOKENIZE_MIN", 1)
    monkeypatch.setattr(tools.kb.os, "cpu_count", lambda: 2)
    with EmbeddedKB(tmp_path / "parallel.sqlite") as parallel:
        report = parallel.add_path(corpus)
        assert not report.failed
        assert fts_rows(parallel) == expected
        assert ids(parallel.search_sync("退款", 1)) == ["refund"]
    assert "worker processes failed" not in caplog.text


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
    assert (len(report.unsupported), report.passages_added, report.passages_removed) == (1, 0, 0)
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


def test_bad_files_are_reported_and_leave_nothing_behind(
    tmp_path: Path, empty_kb: EmbeddedKB
) -> None:
    root, kb = tmp_path / "bad", empty_kb
    root.mkdir()
    (root / "a.jsonl").write_text('{"id": "x", "text": "甲。"}\n', encoding="utf-8")
    kb.add_path(root / "a.jsonl")
    (root / "b.jsonl").write_text(
        '{"id": "y", "text": "乙。"}\n{"id": "x", "text": "丙。"}\n', encoding="utf-8"
    )
    report = kb.add_path(root / "b.jsonl")
    assert report.failed == [
        FileFailure(str(root / "b.jsonl"), "段落 id x 已被知识库 default 里的文档 a.jsonl 使用")
    ]
    assert kb.get("y") is None
    assert [s.source for s in kb.sources()] == ["a.jsonl"]
    (root / "c.jsonl").write_text('{"id": "z", "text": "丁。"}\nnot json\n', encoding="utf-8")
    assert kb.add_path(root / "c.jsonl").failed[0].reason.startswith("第 2 行：不是合法的 JSON")
    (root / "d.txt").write_bytes("中文".encode("gbk"))
    assert kb.add_path(root / "d.txt").failed == [
        FileFailure(str(root / "d.txt"), "不是 UTF-8 编码的文本（第 0 个字节）")
    ]
    assert kb.count() == 1


# ------------------------------------------------------------------------ document identity


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def test_a_same_named_file_of_another_folder_is_another_document(
    tmp_path: Path, empty_kb: EmbeddedKB
) -> None:
    kb = empty_kb
    write(tmp_path / "printers" / "guide.md", "# 打印机\n\n星尘打印机喷头保修六个月。\n")
    write(tmp_path / "robots" / "guide.md", "# 扫地机器人\n\n月光扫地机器人滤网三个月更换。\n")
    kb.add_path(tmp_path / "printers")
    plan = kb.plan([tmp_path / "robots"])
    assert [(item.action, item.source, item.wanted) for item in plan.files] == [
        ("add", "robots/guide.md", "guide.md")
    ]
    assert plan.files[0].clash_origin == str((tmp_path / "printers" / "guide.md").resolve())
    report = kb.add_path(tmp_path / "robots")
    assert (report.added_files, report.replaced_files, report.passages_removed) == (1, 0, 0)
    assert [s.source for s in kb.sources()] == ["guide.md", "robots/guide.md"]
    assert kb.search_sync("喷头保修", 1)[0]["source"] == "guide.md"
    assert kb.search_sync("滤网更换", 1)[0]["source"] == "robots/guide.md"
    # Each folder again: each its own document, nothing replaced.
    again = kb.plan([tmp_path / "printers", tmp_path / "robots"])
    assert [(i.action, i.source) for i in again.files] == [
        ("unchanged", "guide.md"),
        ("unchanged", "robots/guide.md"),
    ]


def test_two_same_named_files_in_one_import_stay_two_documents(
    tmp_path: Path, empty_kb: EmbeddedKB
) -> None:
    write(tmp_path / "a" / "faq.md", "# 甲\n\n甲的内容。\n")
    write(tmp_path / "b" / "faq.md", "# 乙\n\n乙的内容。\n")
    # b/faq.md is the relative name of a file of its own: it keeps it, the clash goes longer.
    write(tmp_path / "c" / "b" / "faq.md", "# 丙\n\n丙的内容。\n")
    report = empty_kb.ingest(empty_kb.plan([tmp_path / "a", tmp_path / "b", tmp_path / "c"]))
    assert report.added_files == 3 and report.failed == []
    sources = {s.source: s.origin for s in empty_kb.sources()}
    assert sources == {
        "faq.md": str((tmp_path / "a" / "faq.md").resolve()),
        "b/faq.md": str((tmp_path / "c" / "b" / "faq.md").resolve()),
        f"{tmp_path.name}/b/faq.md": str((tmp_path / "b" / "faq.md").resolve()),
    }


def test_reimport_from_another_working_directory_replaces_the_same_document(
    tmp_path: Path, empty_kb: EmbeddedKB, monkeypatch: pytest.MonkeyPatch
) -> None:
    kb = empty_kb
    guide = write(tmp_path / "site" / "docs" / "guide.md", "# 指南\n\n旧的说明。\n")
    monkeypatch.chdir(tmp_path / "site")
    kb.add_path("docs")
    write(guide, "# 指南\n\n新的说明。\n")
    monkeypatch.chdir(tmp_path)
    plan = kb.plan(["site/docs"])
    assert [(i.action, i.source, i.guessed) for i in plan.files] == [("replace", "guide.md", False)]
    report = kb.ingest(plan)
    assert (report.replaced_files, report.passages_removed, report.passages_added) == (1, 1, 1)
    assert [p["text"] for p in kb.search_sync("说明", 5)] == ["新的说明。"]
    # From another root the file keeps the name it was first stored under.
    assert [i.source for i in kb.plan([tmp_path / "site"]).files] == ["guide.md"]


def test_a_moved_file_keeps_its_document_and_a_changed_one_is_a_guess(
    tmp_path: Path, empty_kb: EmbeddedKB
) -> None:
    kb = empty_kb
    write(tmp_path / "old" / "guide.md", "# 指南\n\n说明。\n")
    kb.add_path(tmp_path / "old")
    (tmp_path / "old").rename(tmp_path / "new")
    moved = kb.plan([tmp_path / "new"]).files[0]
    assert (moved.action, moved.moved_from) == (
        "unchanged",
        str((tmp_path / "old" / "guide.md").resolve()),
    )
    kb.ingest(kb.plan([tmp_path / "new"]))
    assert kb.sources()[0].origin == str((tmp_path / "new" / "guide.md").resolve())
    (tmp_path / "new").rename(tmp_path / "newer")
    write(tmp_path / "newer" / "guide.md", "# 指南\n\n改过的说明。\n")
    changed = kb.plan([tmp_path / "newer"])
    assert [(i.action, i.source, i.guessed) for i in changed.files] == [
        ("replace", "guide.md", True)
    ]
    assert changed.guesses == changed.files


def test_documents_from_before_origins_are_adopted_by_name(tmp_path: Path, corpus: Path) -> None:
    db = tmp_path / "old.sqlite"
    with EmbeddedKB(db) as kb:
        kb.add_path(corpus)
    # The schema of before: no origin column.
    with sqlite3.connect(db) as conn:
        conn.execute("DROP INDEX idx_sources_kb_origin")
        conn.execute("ALTER TABLE sources DROP COLUMN origin")
    (corpus / "docs" / "notes.txt").write_text("改过的笔记。\n", encoding="utf-8")
    with EmbeddedKB(db) as kb:
        assert {s.origin for s in kb.sources()} == {None}
        plan = kb.plan([corpus])
        assert [(i.source, i.action, i.guessed) for i in plan.files if i.stored] == [
            ("docs/guide.md", "unchanged", False),
            ("docs/notes.txt", "replace", True),
            ("faq.jsonl", "unchanged", False),
        ]
        report = kb.ingest(plan)
        assert (report.unchanged_files, report.replaced_files, report.added_files) == (2, 1, 0)
        assert {s.source: s.origin for s in kb.sources()} == {
            name: str((corpus / name).resolve())
            for name in ("docs/guide.md", "docs/notes.txt", "faq.jsonl")
        }
        assert kb.count() == 11


def test_a_corrupt_pdf_is_left_out_and_the_rest_imported(
    tmp_path: Path, empty_kb: EmbeddedKB, corpus: Path
) -> None:
    from tests.tools.test_ingest import corrupt_pdf

    (corpus / "坏.pdf").write_bytes(corrupt_pdf())
    (corpus / "空.pdf").write_bytes(b"")
    report = empty_kb.add_path(corpus)
    assert report.added_files == 3 and empty_kb.count() == 11
    assert [(f.file, f.reason.split("（")[0]) for f in report.failed] == [
        (str(corpus / "坏.pdf"), "PDF 文件已损坏或不是 PDF，无法读取"),
        (str(corpus / "空.pdf"), "PDF 文件已损坏或不是 PDF，无法读取"),
    ]
    assert report.unsupported == [str(corpus / "docs" / "logo.png")]


def test_a_file_given_by_name_must_be_of_a_supported_type(
    empty_kb: EmbeddedKB, corpus: Path
) -> None:
    report = empty_kb.add_path(corpus / "docs" / "logo.png")
    assert report.failed == [
        FileFailure(str(corpus / "docs" / "logo.png"), "不支持的文件格式：.png")
    ]
    assert report.unsupported == []


def test_a_file_changed_after_the_plan_waits_for_the_next_import(
    tmp_path: Path, empty_kb: EmbeddedKB
) -> None:
    guide = write(tmp_path / "guide.md", "# 指南\n\n说明。\n")
    plan = empty_kb.plan([guide])
    write(guide, "# 指南\n\n没有宣布过的内容。\n")
    report = empty_kb.ingest(plan)
    assert report.failed[0].reason.startswith("导入过程中文件被改动了") and empty_kb.count() == 0


def test_documents_by_id_or_name(kb: EmbeddedKB) -> None:
    faq = kb.document("faq.jsonl")
    assert faq is not None and len(faq.document_id) == 12
    assert kb.document(faq.document_id) == faq
    assert kb.document("nothing.md") is None


def test_uploads_are_documents_by_their_file_name(empty_kb: EmbeddedKB, corpus: Path) -> None:
    kb = empty_kb
    stored, report = kb.add_upload("C:\\资料\\售后.md", "# 售后\n\n七天无理由退货。\n".encode())
    assert (stored.source, stored.origin, report.added_files) == ("售后.md", "upload:售后.md", 1)
    again, report = kb.add_upload("售后.md", "# 售后\n\n十五天无理由退货。\n".encode())
    assert (again.document_id, report.replaced_files, report.passages_removed) == (
        stored.document_id,
        1,
        1,
    )
    _, report = kb.add_upload("售后.md", "# 售后\n\n十五天无理由退货。\n".encode())
    assert report.unchanged_files == 1
    kb.add_path(corpus / "faq.jsonl")
    with pytest.raises(DocumentConflict) as conflict:
        kb.add_upload("faq.jsonl", '{"id": "other", "text": "别的内容。"}\n'.encode())
    assert conflict.value.existing.origin == str((corpus / "faq.jsonl").resolve())
    with pytest.raises(IngestError, match=r"^不支持的文件格式：\.png$"):
        kb.add_upload("logo.png", b"\x89PNG")
    # A local file of the uploaded name is another document too.
    write(corpus / "售后.md", "# 售后\n\n本地的版本。\n")
    assert kb.plan([corpus / "售后.md"]).files[0].source == f"{corpus.name}/售后.md"


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
    empty = Health.down("知识库 default 为空", "先运行 qqrag kb add PATH")
    with EmbeddedKB(empty_kb.db_path, "工作群") as other:
        assert await backend.health() == empty
        empty_kb.add_path(corpus)
        assert await backend.health() == Health.up()
        assert await other.health() == Health.down("知识库 工作群 为空", "先运行 qqrag kb add PATH")
        with sqlite3.connect(empty_kb.db_path) as conn:
            conn.execute("DROP TABLE passages")
        db = empty_kb.db_path
        broken = "无法读取（" + str(db) + "）：no such table: passages"
        assert await backend.health() == Health.down(f"知识库 default {broken}")
        assert await other.health() == Health.down(f"知识库 工作群 {broken}")


async def test_closed_kb_reports_unhealthy(kb: EmbeddedKB) -> None:
    kb.close()
    health = await kb.health()
    assert not health.serving
    assert health.message.startswith(f"知识库 default 无法读取（{kb.db_path}）：")
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
            origin=str((corpus / "faq.jsonl").resolve()),
        )
        assert ids(kb.search_sync("退款", 1)) == ["refund"]


# --------------------------------------------------------------------------- hybrid retrieval

EMBED_MODEL = "qwen3-embedding:0.6b"
OTHER_EMBED_MODEL = "nomic-embed-text"

# Lexical and dense rankings disagree on this corpus: BM25 sees the query's topic words
# (量子, 纠缠, 原理), the fake's hashed-bigram vectors mostly its interrogatives (是什么呢).
PHYSICS = [
    (
        "survey",
        "物理学综述",
        "经典力学、电磁学、热力学和相对论构成了近代物理的主体。二十世纪初，科学家发现了量子纠缠"
        "现象，其原理至今仍在研究。此外，凝聚态物理、粒子物理和天体物理也在快速发展，实验技术不断"
        "进步，计算方法日益成熟。",
    ),
    ("chatter", "闲谈", "是什么呢？这是什么呢？那又是什么原因呢？"),
    ("lever", "杠杆原理", "杠杆原理说明动力乘以动力臂等于阻力乘以阻力臂。"),
    ("weather", "天气", "今天天气晴朗，适合出门散步。"),
]
PHYSICS_QUERY = "量子纠缠的原理是什么呢？"


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeOllama]:
    with FakeOllama(models=[*DEFAULT_MODELS, OTHER_EMBED_MODEL]) as server:
        yield server


@pytest.fixture
def ollama(fake: FakeOllama) -> FakeOllama:
    fake.reset()
    return fake


def embedder(fake: FakeOllama, model: str = EMBED_MODEL, batch_size: int = 4) -> OllamaEmbedder:
    return OllamaEmbedder(fake.url, model, batch_size=batch_size, timeout=5.0)


@pytest.fixture
def hybrid_kb(tmp_path: Path, ollama: FakeOllama) -> Iterator[EmbeddedKB]:
    with EmbeddedKB(tmp_path / "kb.sqlite", embedder=embedder(ollama)) as kb:
        yield kb


def vector_rows(kb: EmbeddedKB) -> list[tuple[str, str, int, bytes]]:
    """(passage id, model, dim, blob) of every stored vector of the knowledge base, by id."""
    with sqlite3.connect(kb.db_path) as conn:
        rows = conn.execute(
            "SELECT p.id, v.model, v.dim, v.vector FROM vectors AS v"
            " JOIN passages AS p ON p.pk = v.pk WHERE p.kb = ? ORDER BY p.id, v.model",
            (kb.name,),
        )
        return list(rows)


def orphan_vectors(db_path: Path) -> int:
    with sqlite3.connect(db_path) as conn:
        query = "SELECT count(*) FROM vectors WHERE pk NOT IN (SELECT pk FROM passages)"
        return int(conn.execute(query).fetchone()[0])


def embedded_inputs(fake: FakeOllama) -> list[str]:
    return [text for call in fake.calls("/api/embed") for text in call["input"]]


def physics_file(root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    path = root / "physics.jsonl"
    path.write_text(faq_jsonl(PHYSICS), encoding="utf-8")
    return path


def test_hybrid_ingest_stores_one_vector_per_passage(
    hybrid_kb: EmbeddedKB, corpus: Path, ollama: FakeOllama
) -> None:
    report = hybrid_kb.add_path(corpus)
    assert (report.passages_added, report.vectors_added) == (11, 11)
    calls = ollama.calls("/api/embed")
    assert [len(call["input"]) for call in calls] == [4, 4, 3]
    assert {call["model"] for call in calls} == {EMBED_MODEL}
    assert "退款政策\n" + FAQ[0][2] in embedded_inputs(ollama)
    rows = vector_rows(hybrid_kb)
    assert [row[0] for row in rows] == stored_ids(hybrid_kb)
    assert {(model, dim, len(blob)) for _, model, dim, blob in rows} == {
        (EMBED_MODEL, EMBEDDING_DIM, EMBEDDING_DIM * 4)
    }
    refund = next(blob for passage_id, _, _, blob in rows if passage_id == "refund")
    expected = np.array(embed_text("退款政策\n" + FAQ[0][2]), dtype=np.float32)
    np.testing.assert_allclose(np.frombuffer(refund, dtype="<f4"), expected, atol=1e-6)


def test_hybrid_reingest_unchanged_makes_no_embed_call(
    hybrid_kb: EmbeddedKB, corpus: Path, ollama: FakeOllama
) -> None:
    hybrid_kb.add_path(corpus)
    before = vector_rows(hybrid_kb)
    ollama.reset()
    report = hybrid_kb.add_path(corpus)
    assert (report.unchanged_files, report.vectors_added) == (3, 0)
    assert ollama.calls("/api/embed") == []
    assert vector_rows(hybrid_kb) == before


def test_hybrid_changed_file_replaces_its_vectors(
    hybrid_kb: EmbeddedKB, corpus: Path, ollama: FakeOllama
) -> None:
    hybrid_kb.add_path(corpus)
    rows = [("refund-v2", "退款政策", "购买后十四天内可以无理由退款。"), FAQ[1]]
    (corpus / "faq.jsonl").write_text(faq_jsonl(rows), encoding="utf-8")
    ollama.reset()
    report = hybrid_kb.add_path(corpus)
    assert (report.passages_removed, report.passages_added, report.vectors_added) == (7, 2, 2)
    assert sorted(embedded_inputs(ollama)) == sorted(f"{t}\n{x}" for _, t, x in rows)
    assert [row[0] for row in vector_rows(hybrid_kb)] == stored_ids(hybrid_kb)
    assert len(stored_ids(hybrid_kb)) == 6
    assert orphan_vectors(hybrid_kb.db_path) == 0
    assert hybrid_kb.remove_source("faq.jsonl") == 2
    assert len(vector_rows(hybrid_kb)) == 4
    assert orphan_vectors(hybrid_kb.db_path) == 0


def test_passages_without_vectors_are_embedded_later(
    tmp_path: Path, corpus: Path, ollama: FakeOllama
) -> None:
    db = tmp_path / "kb.sqlite"
    with EmbeddedKB(db) as lexical:
        lexical.add_path(corpus)
    assert ollama.calls("/api/embed") == []
    with EmbeddedKB(db, embedder=embedder(ollama)) as kb:
        # Nothing changed on disk, yet the passages lacking vectors get them.
        report = kb.add_path(corpus)
        assert (report.unchanged_files, report.vectors_added) == (3, 11)
        assert kb.reindex_vectors() == 0
    with EmbeddedKB(db, embedder=embedder(ollama, OTHER_EMBED_MODEL)) as kb:
        ollama.reset()
        assert kb.reindex_vectors() == 11
        assert {call["model"] for call in ollama.calls("/api/embed")} == {OTHER_EMBED_MODEL}
        assert len(vector_rows(kb)) == 22  # both models' vectors are kept
        assert ids(kb.search_sync("退款", 1)) == ["refund"]
    with EmbeddedKB(db) as lexical, pytest.raises(ValueError, match="has no embedder"):
        lexical.reindex_vectors()


def test_embedding_failure_during_ingest_keeps_the_passages(
    hybrid_kb: EmbeddedKB, corpus: Path, ollama: FakeOllama
) -> None:
    ollama.fail_next(Fault.MODEL_NOT_FOUND)
    report = hybrid_kb.add_path(corpus)
    assert report.vectors_error is not None
    assert f"先运行 ollama pull {EMBED_MODEL}" in report.vectors_error
    assert (report.added_files, report.vectors_added) == (3, 0)
    assert hybrid_kb.count() == 11
    assert vector_rows(hybrid_kb) == []
    assert ids(hybrid_kb.search_sync("退款", 1)) == ["refund"]
    assert hybrid_kb.add_path(corpus).vectors_added == 11


def test_rrf_fuses_disagreeing_rankings(tmp_path: Path, ollama: FakeOllama) -> None:
    path = physics_file(tmp_path / "physics")
    with (
        EmbeddedKB(tmp_path / "kb.sqlite", embedder=embedder(ollama)) as hybrid,
        EmbeddedKB(tmp_path / "kb.sqlite") as lexical,
    ):
        hybrid.add_path(path)
        lexical_ranking = ids(lexical.search_sync(PHYSICS_QUERY, 10))
        query = np.array(embed_text(PHYSICS_QUERY))
        cosine = {i: float(query @ embed_text(f"{t}\n{x}")) for i, t, x in PHYSICS}
        dense_ranking = sorted(cosine, key=lambda i: -cosine[i])
        assert lexical_ranking == ["survey", "lever"]
        assert dense_ranking == ["chatter", "survey", "lever", "weather"]

        hits = hybrid.search_sync(PHYSICS_QUERY, 4)
        assert [(p["id"], p["score"]) for p in hits] == [
            ("survey", round(1 / 61 + 1 / 62, 6)),
            ("lever", round(1 / 62 + 1 / 63, 6)),
            ("chatter", round(1 / 61, 6)),
            ("weather", round(1 / 64, 6)),
        ]
        assert hits[2] == {
            "id": "chatter",
            "title": "闲谈",
            "source": "physics.jsonl",
            "text": PHYSICS[1][2],
            "score": round(1 / 61, 6),
            "kb": "default",
        }
        assert ids(hybrid.search_sync(PHYSICS_QUERY, 2)) == ["survey", "lever"]


def test_reciprocal_rank_fusion() -> None:
    assert reciprocal_rank_fusion([]) == []
    assert reciprocal_rank_fusion([[1, 2], [2, 3]], k=1) == [
        (2, 1 / 3 + 1 / 2),
        (1, 1 / 2),
        (3, 1 / 3),
    ]
    # Ties keep first-appearance order: the first ranking wins.
    assert [key for key, _ in reciprocal_rank_fusion([[1], [2]])] == [1, 2]


def test_hybrid_search_makes_one_query_embedding(
    hybrid_kb: EmbeddedKB, corpus: Path, ollama: FakeOllama
) -> None:
    hybrid_kb.add_path(corpus)
    ollama.reset()
    for question, expected in QUESTIONS:
        assert ids(hybrid_kb.search_sync(question, 3))[0] == expected
    assert [call["input"] for call in ollama.calls("/api/embed")] == [[q] for q, _ in QUESTIONS]
    ollama.reset()
    assert hybrid_kb.search_sync("😀🎉", 3) == []
    assert hybrid_kb.search_sync("退款", 0) == []
    assert ollama.calls("/api/embed") == []


def test_hybrid_interrogatives_do_not_dominate(hybrid_kb: EmbeddedKB, corpus: Path) -> None:
    hybrid_kb.add_path(corpus)
    question = "请问一下，你们的积分到底是怎么回事呢？是什么规则啊？"
    assert ids(hybrid_kb.search_sync(question, 1)) == ["points"]


def test_search_falls_back_to_lexical_when_ollama_stops(
    tmp_path: Path, corpus: Path, caplog: pytest.LogCaptureFixture
) -> None:
    db = tmp_path / "kb.sqlite"
    with FakeOllama() as own, EmbeddedKB(db, embedder=embedder(own)) as kb:
        kb.add_path(corpus)
        own.stop()
        with caplog.at_level(logging.WARNING, logger="tools.kb"):
            hits = kb.search_sync("付款后多长时间发货？", 3)
        with EmbeddedKB(db) as lexical:
            assert ids(hits) == ids(lexical.search_sync("付款后多长时间发货？", 3))
        assert [p["score"] for p in hits] == [round(1 / (61 + i), 6) for i in range(len(hits))]
        assert "dense retrieval unavailable" in caplog.text
        assert "连不上 Ollama" in caplog.text


async def test_failed_query_embedding_backs_off(
    hybrid_kb: EmbeddedKB, corpus: Path, ollama: FakeOllama, monkeypatch: pytest.MonkeyPatch
) -> None:
    hybrid_kb.add_path(corpus)
    ollama.reset()
    monkeypatch.setattr(tools.kb, "DENSE_RETRY_S", 0.0)
    ollama.fail_next(Fault.HTTP_500)
    assert ids(await hybrid_kb.search("退款", 1)) == ["refund"]
    assert ids(await hybrid_kb.search("积分", 1)) == ["points"]
    assert len(ollama.calls("/api/embed")) == 2  # no back-off: the second search tried again
    monkeypatch.setattr(tools.kb, "DENSE_RETRY_S", 30.0)
    ollama.fail_next(Fault.HTTP_500)
    assert ids(await hybrid_kb.search("退款", 1)) == ["refund"]
    assert ids(await hybrid_kb.search("发货", 1)) == ["shipping"]
    assert len(ollama.calls("/api/embed")) == 3  # backing off: the fourth search did not try


def test_vector_cache_follows_writes(tmp_path: Path, corpus: Path, ollama: FakeOllama) -> None:
    db = tmp_path / "kb.sqlite"
    with (
        EmbeddedKB(db, embedder=embedder(ollama)) as kb,
        EmbeddedKB(db, embedder=embedder(ollama)) as other,
    ):
        kb.add_path(corpus)
        assert "chatter" not in ids(kb.search_sync(PHYSICS_QUERY, 20))
        kb.add_path(physics_file(corpus / "more"), root=corpus)
        assert "chatter" in ids(kb.search_sync(PHYSICS_QUERY, 20))
        # Another instance (or process) writing to the same file is noticed too.
        other.remove_source("more/physics.jsonl")
        assert "chatter" not in ids(kb.search_sync(PHYSICS_QUERY, 20))


def test_embedding_progress_bar(
    tmp_path: Path, corpus: Path, ollama: FakeOllama, capsys: pytest.CaptureFixture[str]
) -> None:
    with EmbeddedKB(tmp_path / "kb.sqlite", embedder=embedder(ollama)) as kb:
        kb.add_path(corpus, progress=True)
    err = capsys.readouterr().err
    assert f"生成向量 default（{EMBED_MODEL}）" in err
    assert "11/11" in err


class HashEmbedder:
    """A local `Embedder`: the fake Ollama's hashed-bigram vectors, truncated to `dim`."""

    batch_size = 8

    def __init__(self, model: str, dim: int) -> None:
        self.model = model
        self.dim = dim

    def embed_sync(self, texts: Sequence[str]) -> np.ndarray:
        return np.array([embed_text(text, self.dim) for text in texts], dtype=np.float32)

    async def embed(self, texts: Sequence[str]) -> np.ndarray:
        return self.embed_sync(texts)


def test_model_that_changed_dimension_needs_a_rebuild(
    tmp_path: Path, corpus: Path, caplog: pytest.LogCaptureFixture
) -> None:
    db = tmp_path / "kb.sqlite"
    with EmbeddedKB(db, embedder=HashEmbedder("local", EMBEDDING_DIM)) as kb:
        assert kb.add_path(corpus).vectors_added == 11
    with EmbeddedKB(db, embedder=HashEmbedder("local", 64)) as kb, EmbeddedKB(db) as lexical:
        with caplog.at_level(logging.WARNING, logger="tools.kb"):
            hits = kb.search_sync("付款后多长时间发货？", 3)
        assert ids(hits) == ids(lexical.search_sync("付款后多长时间发货？", 3))
        assert "local now embeds in 64 dimensions, its stored vectors have 256" in caplog.text
        assert kb.reindex_vectors() == 0  # nothing is missing, the vectors are stale
        assert kb.reindex_vectors(rebuild=True) == 11
        assert {dim for _, _, dim, _ in vector_rows(kb)} == {64}
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="tools.kb"):
            # Dense retrieval is back: it finds something where BM25 finds nothing.
            assert lexical.search_sync(PHYSICS_QUERY, 1) == []
            assert len(kb.search_sync(PHYSICS_QUERY, 1)) == 1
            assert ids(kb.search_sync("付款后多长时间发货？", 1)) == ["shipping"]
        assert caplog.text == ""


def cmrc_sample(root: Path, count: int) -> Path:
    """The first `count` CMRC 2018 paragraphs, as a JSONL document."""
    lines = (Path(evals.retrieval.DATA_DIR) / "kb.jsonl").read_text("utf-8").splitlines()
    path = root / "cmrc.jsonl"
    path.write_text("\n".join(lines[:count]) + "\n", encoding="utf-8")
    return path


def test_graph_ranks_like_the_exact_scan(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    questions = [q.text for q in evals.retrieval.load_questions(limit=40)]
    db = tmp_path / "kb.sqlite"
    with EmbeddedKB(db, embedder=HashEmbedder("local", EMBEDDING_DIM)) as kb:
        kb.add_path(cmrc_sample(tmp_path, 300))
        exact = [ids(kb.search_sync(q, 5)) for q in questions]
        assert kb._dense is not None and kb._dense.graph is None
    monkeypatch.setattr(tools.kb, "EXACT_DENSE_MAX", 0)
    with EmbeddedKB(db, embedder=HashEmbedder("local", EMBEDDING_DIM)) as kb:
        # int8 candidates re-ranked in float32: on 300 passages nearly the same fused results.
        # The graph is built on every core, so its shape varies from run to run (34 to 40 of
        # the 40 top-5 lists were identical, 96–99% of their passages shared): approximate
        # search is measured, not equal.
        graph = [ids(kb.search_sync(q, 5)) for q in questions]
        overlap = [len(set(g) & set(e)) / len(e) for g, e in zip(graph, exact, strict=True)]
        assert sum(overlap) / len(overlap) >= 0.9
        assert kb._dense is not None and kb._dense.graph is not None
        assert len(kb._dense.graph) == kb.count()


def test_graph_follows_writes_and_rebuilds(
    tmp_path: Path, corpus: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tools.kb, "EXACT_DENSE_MAX", 0)
    db = tmp_path / "kb.sqlite"
    with (
        EmbeddedKB(db, embedder=HashEmbedder("local", EMBEDDING_DIM)) as kb,
        EmbeddedKB(db, embedder=HashEmbedder("local", EMBEDDING_DIM)) as other,
    ):
        kb.add_path(corpus)
        assert "chatter" not in ids(kb.search_sync(PHYSICS_QUERY, 20))
        graph = kb._dense.graph if kb._dense is not None else None
        kb.add_path(physics_file(corpus / "more"), root=corpus)
        assert "chatter" in ids(kb.search_sync(PHYSICS_QUERY, 20))
        assert kb._dense is not None and kb._dense.graph is graph  # updated, not rebuilt
        other.remove_source("more/physics.jsonl")
        assert "chatter" not in ids(kb.search_sync(PHYSICS_QUERY, 20))
        assert len(graph or []) == kb.count()
        # Every vector written again: the graph replaces them under the same passages.
        assert other.reindex_vectors(rebuild=True) == kb.count()
        assert ids(kb.search_sync("付款后多长时间发货？", 1)) == ["shipping"]
        assert len(graph or []) == kb.count()
    with EmbeddedKB(db, embedder=HashEmbedder("local", 64)) as kb:
        assert kb.reindex_vectors(rebuild=True) == 11
        assert ids(kb.search_sync("付款后多长时间发货？", 1)) == ["shipping"]
        assert kb._dense is not None and kb._dense.dim == 64


def test_another_base_holding_the_top_matches_does_not_hide_ours(tmp_path: Path) -> None:
    db = tmp_path / "kb.sqlite"
    (tmp_path / "mine.jsonl").write_text(faq_jsonl(FAQ), encoding="utf-8")
    noisy = [(f"n{i}", "退款退款", "退款退款退款退款。") for i in range(30)]
    (tmp_path / "noisy.jsonl").write_text(faq_jsonl(noisy), encoding="utf-8")
    with EmbeddedKB(db, "mine") as mine, EmbeddedKB(db, "noisy") as other:
        mine.add_path(tmp_path / "mine.jsonl")
        other.add_path(tmp_path / "noisy.jsonl")
        # The file's 5 best rows for 退款 are all the other base's; ours still ranks its own.
        assert ids(mine.search_sync("退款", 1)) == ["refund"]
        assert len(other.search_sync("退款", 5)) == 5
        assert {p["kb"] for p in other.search_sync("退款", 40)} == {"noisy"}
