"""Chunking of Markdown, plain text and JSONL documents."""

from __future__ import annotations

import json

import pytest

from tools.ingest import (
    HARD_LIMIT,
    MAX_CHARS,
    MIN_CHARS,
    Chunk,
    IngestError,
    chunk_document,
    chunk_id,
    chunk_jsonl,
    chunk_markdown,
    chunk_text,
)

# 16 characters each, so sizes below are easy to check by hand.
SENTENCE = "这是用来凑够长度的一句测试文字。"
LONG_SECTION = SENTENCE * 40

GUIDE = f"""开头的说明。

# 安装

简介段落。

## 用 pip 安装

```bash
# 这一行在代码块里，不是标题
pip install qqrag

## 这一行也不是
```

### 升级 ##

{LONG_SECTION}

## 空的一节

## 配置
配置说明。
"""


def titles_and_texts(chunks: list[Chunk]) -> list[tuple[str, str]]:
    return [(c.title, c.text) for c in chunks]


def test_markdown_heading_paths_and_code_blocks() -> None:
    chunks = chunk_markdown(GUIDE, "docs/guide.md")
    code = "```bash\n# 这一行在代码块里，不是标题\npip install qqrag\n\n## 这一行也不是\n```"
    assert [c.title for c in chunks] == [
        "安装",
        "安装 › 用 pip 安装",
        "安装 › 用 pip 安装 › 升级",
        "安装 › 用 pip 安装 › 升级",
        "安装 › 配置",
    ]
    assert chunks[0].text == "开头的说明。\n\n简介段落。"
    assert chunks[1].text == code
    assert chunks[4].text == "配置说明。"
    assert [c.position for c in chunks] == [0, 1, 2, 3, 4]
    assert {c.source for c in chunks} == {"docs/guide.md"}


def test_long_section_split_at_sentences_within_target() -> None:
    chunks = chunk_markdown(GUIDE, "docs/guide.md")[2:4]
    assert len(SENTENCE) == 16
    # 40 sentences of 16 characters: 31 fit in 500, the rest (144) is evened out to >= 200.
    assert [len(c.text) for c in chunks] == [16 * 27, 16 * 13]
    assert all(MIN_CHARS <= len(c.text) <= MAX_CHARS for c in chunks)
    assert "".join(c.text for c in chunks) == LONG_SECTION
    assert all(c.text.endswith("。") for c in chunks)


def test_markdown_without_h1_uses_file_stem() -> None:
    chunks = chunk_markdown("前言。\n\n## 第一节\n内容一。\n\n### 小节\n内容二。\n", "a/b/说明.md")
    assert titles_and_texts(chunks) == [
        ("说明", "前言。"),
        ("说明 › 第一节", "内容一。"),
        ("说明 › 第一节 › 小节", "内容二。"),
    ]


def test_second_h1_and_level_jumps() -> None:
    text = "# 手册\n甲。\n### 深\n乙。\n## 平\n丙。\n# 附录\n丁。\n## 表\n戊。\n"
    assert [c.title for c in chunk_markdown(text, "m.md")] == [
        "手册",
        "手册 › 深",
        "手册 › 平",
        "手册 › 附录",
        "手册 › 附录 › 表",
    ]


def test_heading_syntax_edge_cases() -> None:
    text = (
        "#标签不是标题\n\n    # 缩进四格不是标题\n\n~~~\n# 波浪线围栏\n~~~\n\n# C# 指南 #\n正文。\n"
    )
    chunks = chunk_markdown(text, "x.md")
    assert titles_and_texts(chunks) == [
        ("C# 指南", "#标签不是标题\n\n# 缩进四格不是标题\n\n~~~\n# 波浪线围栏\n~~~\n\n正文。"),
    ]


def test_paragraphs_packed_and_never_split_mid_sentence() -> None:
    paragraph = SENTENCE * 10  # 160 characters
    text = "\n\n".join([paragraph] * 5)
    chunks = chunk_text(text, "notes/记录.txt")
    assert [len(c.text) for c in chunks] == [160 * 3 + 4, 160 * 2 + 2]
    assert chunks[0].text == "\n\n".join([paragraph] * 3)
    assert {c.title for c in chunks} == {"记录"}


def test_single_long_sentence_kept_whole_below_hard_limit() -> None:
    sentence = "长" * 900 + "。"
    chunks = chunk_text(f"短句。\n\n{sentence}\n\n尾句。", "t.txt")
    assert [c.text for c in chunks] == ["短句。", sentence, "尾句。"]


def test_sentence_over_hard_limit_is_cut() -> None:
    chunks = chunk_text("字" * (HARD_LIMIT + 10), "t.txt")
    assert [len(c.text) for c in chunks] == [HARD_LIMIT, 10]


def test_big_code_block_kept_intact() -> None:
    code = "```python\n" + "\n".join(f"x{i} = {i}  # 注释" for i in range(100)) + "\n```"
    assert MAX_CHARS < len(code) <= HARD_LIMIT
    chunks = chunk_markdown(f"# 代码\n\n前文。\n\n{code}\n\n后文。\n", "c.md")
    assert [c.text for c in chunks] == ["前文。", code, "后文。"]


def test_english_sentences_keep_their_spaces() -> None:
    text = " ".join(f"Sentence number {i} is here!" for i in range(40))
    chunks = chunk_text(text, "e.txt")
    assert len(chunks) == 3
    assert " ".join(c.text for c in chunks) == text


def test_empty_documents_give_no_chunks() -> None:
    assert chunk_markdown("# 标题\n\n## 空\n\n", "e.md") == []
    assert chunk_text("\n\n  \n", "e.txt") == []
    assert chunk_jsonl("\n\n", "e.jsonl") == []


def test_ids_stable_and_content_addressed() -> None:
    first = chunk_markdown(GUIDE, "docs/guide.md")
    again = chunk_markdown(GUIDE, "docs/guide.md")
    assert [c.id for c in first] == [c.id for c in again]
    assert len({c.id for c in first}) == len(first)
    assert all(len(c.id) == 16 for c in first)
    assert first[0].id == chunk_id("docs/guide.md", 0, "安装", "开头的说明。\n\n简介段落。")
    moved = chunk_markdown(GUIDE, "other/guide.md")
    assert {c.id for c in moved}.isdisjoint(c.id for c in first)


def test_jsonl_keeps_ids_and_derives_missing_ones() -> None:
    lines = [
        {"id": "faq-1", "title": "退款", "text": "七天内可以退款。"},
        {"title": "发货", "text": "下单后两天内发货。"},
        {"id": 7, "text": "没有标题的条目。"},
    ]
    content = "\n".join(json.dumps(line, ensure_ascii=False) for line in lines) + "\n\n"
    chunks = chunk_jsonl(content, "kb/faq.jsonl")
    assert chunks == [
        Chunk("faq-1", "退款", "kb/faq.jsonl", "七天内可以退款。", 0),
        Chunk(chunk_id("kb/faq.jsonl", 1, "发货", "下单后两天内发货。"), "发货", "kb/faq.jsonl",
              "下单后两天内发货。", 1),
        Chunk("7", "faq", "kb/faq.jsonl", "没有标题的条目。", 2),
    ]  # fmt: skip


def test_jsonl_long_text_split_with_numbered_ids() -> None:
    text = SENTENCE * 600  # 9600 characters
    chunks = chunk_jsonl(json.dumps({"id": "big", "title": "长文", "text": text}), "b.jsonl")
    assert [c.id for c in chunks] == ["big", "big#2", "big#3"]
    assert [len(c.text) for c in chunks] == [16 * 250, 16 * 250, 16 * 100]
    assert "".join(c.text for c in chunks) == text
    assert [c.position for c in chunks] == [0, 1, 2]


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('{"id": "a", "text": ', "第 2 行：不是合法的 JSON（第 21 列：Expecting value）"),
        ('["a", "b"]', "第 2 行：应为含 id、title、text 的 JSON 对象"),
        ('{"id": "a"}', "第 2 行：text 必须是非空字符串"),
        ('{"id": "a", "text": "  "}', "第 2 行：text 必须是非空字符串"),
        ('{"id": "a", "title": 3, "text": "x"}', "第 2 行：title 必须是字符串"),
        ('{"id": true, "text": "x"}', "第 2 行：id 必须是非空字符串或整数"),
        ('{"id": "ok", "text": "x"}', "第 2 行：id ok 与第 1 行重复"),
    ],
)
def test_jsonl_bad_line_says_which_line_in_chinese(line: str, message: str) -> None:
    content = '{"id": "ok", "title": "t", "text": "好的。"}\n' + line + "\n"
    with pytest.raises(IngestError) as error:
        chunk_jsonl(content, "data.jsonl")
    assert str(error.value) == message


def test_chunk_document_dispatches_on_suffix() -> None:
    assert [c.title for c in chunk_document("# 标题\n正文。", "a.MD")] == ["标题"]
    assert [c.title for c in chunk_document("# 标题\n正文。", "a.markdown")] == ["标题"]
    assert [c.title for c in chunk_document("# 标题\n正文。", "a.txt")] == ["a"]
    with pytest.raises(IngestError, match=r"^不支持的文件格式：\.odt$"):
        chunk_document("x", "a.odt")


def test_windows_line_endings() -> None:
    chunks = chunk_markdown("# 标题\r\n\r\n## 节\r\n第一段。\r\n\r\n第二段。\r\n", "w.md")
    assert titles_and_texts(chunks) == [("标题 › 节", "第一段。\n\n第二段。")]


def minimal_pdf(pages: list[str]) -> bytes:
    """A valid PDF whose pages show ASCII text in Helvetica (enough to test extraction)."""
    objects = ["<< /Type /Catalog /Pages 2 0 R >>", ""]
    kids = []
    for text in pages:
        stream = f"BT /F1 12 Tf 72 720 Td ({text}) Tj ET".encode()
        page_no = len(objects) + 1
        kids.append(f"{page_no} 0 R")
        objects.append(
            f"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] "
            f"/Resources << /Font << /F1 {page_no + 2} 0 R >> >> /Contents {page_no + 1} 0 R >>"
        )
        objects.append(f"<< /Length {len(stream)} >>\nstream\n{stream.decode()}\nendstream")
        objects.append("<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>")
    objects[1] = f"<< /Type /Pages /Kids [{' '.join(kids)}] /Count {len(kids)} >>"
    out = b"%PDF-1.4\n"
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += f"{number} 0 obj\n{body}\nendobj\n".encode()
    xref = len(out)
    out += f"xref\n0 {len(objects) + 1}\n0000000000 65535 f \n".encode()
    out += "".join(f"{offset:010d} 00000 n \n" for offset in offsets).encode()
    out += (
        f"trailer\n<< /Size {len(objects) + 1} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n".encode()
    )
    return out


def test_pdf_pages_become_sections() -> None:
    from tools.ingest import read_document

    data = minimal_pdf(["Install with pip install qqrag.", "The default port is 8000."])
    chunks = chunk_document(read_document(data, "manual.pdf"), "manual.pdf")
    assert [(c.title, c.text) for c in chunks] == [
        ("manual › 第 1 页", "Install with pip install qqrag."),
        ("manual › 第 2 页", "The default port is 8000."),
    ]


def test_pdf_without_text_and_broken_files_get_clear_errors() -> None:
    from tools.ingest import read_document

    with pytest.raises(IngestError, match=r"^PDF 里没有文字层（可能是扫描件），先做 OCR 再导入$"):
        read_document(minimal_pdf([""]), "scan.pdf")
    with pytest.raises(IngestError, match=r"^PDF 文件已损坏或不是 PDF，无法读取（"):
        read_document(b"%PDF-1.4 nonsense", "broken.pdf")
    with pytest.raises(IngestError, match=r"^Word 文件已损坏或不是 \.docx，无法读取（"):
        read_document(b"not a zip", "broken.docx")


def corrupt_pdf() -> bytes:
    """A PDF whose cross-reference table lost an entry's line end: pypdf stumbles over it with
    a TypeError, none of its own errors."""
    data = minimal_pdf(["Install with pip install qqrag.", "The default port is 8000."])
    damaged = data.replace(b"n \n0000000121 ", b"")
    assert damaged != data
    return damaged


def test_any_failure_of_the_pdf_parser_is_an_ingest_error() -> None:
    from tools.ingest import read_document

    with pytest.raises(IngestError) as error:
        read_document(corrupt_pdf(), "坏.pdf")
    assert str(error.value).startswith("PDF 文件已损坏或不是 PDF，无法读取（TypeError: ")


def test_any_failure_of_the_word_parser_is_an_ingest_error() -> None:
    import io
    import zipfile

    from tools.ingest import read_document

    # A zip that is no Word package at all, and one whose main part is not XML.
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("[Content_Types].xml", "<Types")
    for data in (buffer.getvalue(), b"PK\x03\x04 truncated"):
        with pytest.raises(IngestError, match=r"^Word 文件已损坏或不是 \.docx，无法读取（"):
            read_document(data, "坏.docx")


def test_docx_headings_and_tables_become_markdown_sections() -> None:
    import io

    import docx

    from tools.ingest import read_document

    document = docx.Document()
    document.add_heading("星尘打印机手册", level=0)
    document.add_heading("保修", level=1)
    document.add_paragraph("整机保修两年，喷头保修六个月。")
    document.add_heading("价格", level=1)
    table = document.add_table(rows=2, cols=2)
    for row, values in zip(table.rows, [("版本", "售价"), ("标准版", "1999 元")], strict=True):
        for cell, value in zip(row.cells, values, strict=True):
            cell.text = value
    buffer = io.BytesIO()
    document.save(buffer)
    chunks = chunk_document(read_document(buffer.getvalue(), "手册.docx"), "手册.docx")
    assert [(c.title, c.text) for c in chunks] == [
        ("星尘打印机手册 › 保修", "整机保修两年，喷头保修六个月。"),
        ("星尘打印机手册 › 价格", "版本 | 售价\n标准版 | 1999 元"),
    ]
