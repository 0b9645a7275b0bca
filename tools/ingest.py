"""Turning documents into retrievable chunks: pure functions, no database.

Markdown is split by headings (each chunk titled with its heading path), plain text by
paragraphs, JSONL is taken as already chunked by its author. Long sections are packed into
chunks of `MIN_CHARS`..`MAX_CHARS` characters at paragraph, then sentence boundaries.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import re
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import TYPE_CHECKING

from tools.text import split_sentences

if TYPE_CHECKING:
    from docx.document import Document as WordDocument

MIN_CHARS = 200
"""Chunks shorter than this are avoided when a section is split (short sections stay short)."""
MAX_CHARS = 500
"""Sections up to this length stay whole; longer ones are split into chunks up to this length."""
HARD_LIMIT = 4000
"""No chunk is longer: a code block or a sentence over it is cut, a JSONL text over it split."""
TITLE_SEPARATOR = " › "

MARKDOWN_SUFFIXES = frozenset({".md", ".markdown"})
CONVERTED_SUFFIXES = frozenset({".pdf", ".docx"})
"""Binary formats converted to Markdown first (pages or Word headings become sections)."""
SUPPORTED_SUFFIXES = MARKDOWN_SUFFIXES | CONVERTED_SUFFIXES | {".txt", ".jsonl"}

_HEADING_RE = re.compile(r"^ {0,3}(#{1,6})(?:[ \t]+(.*?))?[ \t]*$")
_CLOSING_HASHES_RE = re.compile(r"(?:^|[ \t]+)#+$")
_FENCE_OPEN_RE = re.compile(r"^ {0,3}(`{3,}|~{3,})(.*)$")
_FENCE_CLOSE_RE = re.compile(r"^ {0,3}(`{3,}|~{3,})[ \t]*$")


# pypdf logs every repair it attempts on a damaged file ("EOF marker not found"), in English,
# on stderr; the `IngestError` for a file it cannot read already says what is wrong.
logging.getLogger("pypdf").setLevel(logging.ERROR)


class IngestError(ValueError):
    """A document that cannot be turned into chunks.

    The message says what is wrong in Chinese, with the line where there is one, but not which
    file: whoever holds the file names it (an import lists each file it left out).
    """


@dataclass(frozen=True)
class Chunk:
    """One passage-to-be, as it will be stored."""

    id: str
    title: str
    source: str
    text: str
    position: int
    """0-based order of the chunk within its source."""


@dataclass
class _Block:
    """A paragraph, or a run of lines that holds a fenced code block."""

    lines: list[str]
    code: bool = False

    @property
    def text(self) -> str:
        joined = "\n".join(self.lines)
        # Leading indentation is part of code; around prose it is noise.
        return joined.strip("\n").rstrip() if self.code else joined.strip()


@dataclass(frozen=True)
class _Unit:
    """An indivisible piece of a section: a paragraph, code block or sentence."""

    text: str
    joiner: str
    """What goes before the unit when it follows another one in the same chunk."""


def chunk_id(source: str, position: int, title: str, text: str) -> str:
    """Stable short id: the same source, place and content always give the same id."""
    digest = hashlib.sha256(f"{source}\0{position}\0{title}\0{text}".encode()).hexdigest()
    return digest[:16]


def read_document(data: bytes, source: str) -> str:
    """A file's text: UTF-8 as it is, PDF and Word converted to Markdown."""
    suffix = PurePosixPath(source).suffix.lower()
    if suffix == ".pdf":
        return _pdf_markdown(data, source)
    if suffix == ".docx":
        return _docx_markdown(data, source)
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise IngestError(f"不是 UTF-8 编码的文本（第 {exc.start} 个字节）") from None


def _pdf_markdown(data: bytes, source: str) -> str:
    from pypdf import PdfReader

    try:
        reader = PdfReader(io.BytesIO(data))
        pages = [(page.extract_text() or "").strip() for page in reader.pages]
        title = (reader.metadata.title if reader.metadata else None) or _stem(source)
    # A damaged file makes pypdf's parser fail wherever it stumbles: besides its own errors,
    # TypeError, AttributeError, AssertionError… Whatever it is, this file cannot be read.
    except Exception as exc:
        raise IngestError(f"PDF 文件已损坏或不是 PDF，无法读取（{_detail(exc)}）") from None
    if not pages:
        raise IngestError("PDF 文件里没有任何页面")
    if not any(pages):
        raise IngestError("PDF 里没有文字层（可能是扫描件），先做 OCR 再导入")
    # One section per page: a citation then says which page to open.
    sections = [f"## 第 {n} 页\n\n{text}" for n, text in enumerate(pages, start=1) if text]
    return f"# {title}\n\n" + "\n\n".join(sections)


def _docx_markdown(data: bytes, source: str) -> str:
    import docx

    try:
        return "\n\n".join(_docx_blocks(docx.Document(io.BytesIO(data))))
    # As with PDF: a damaged package fails in zipfile, lxml or python-docx, in many ways.
    except Exception as exc:
        raise IngestError(f"Word 文件已损坏或不是 .docx，无法读取（{_detail(exc)}）") from None


def _docx_blocks(document: WordDocument) -> list[str]:
    from docx.table import Table

    lines = []
    # Body order matters: a table belongs to the heading above it.
    for block in document.iter_inner_content():
        if isinstance(block, Table):
            rows = [" | ".join(cell.text.strip() for cell in row.cells) for row in block.rows]
            lines.append("\n".join(rows))
            continue
        text = block.text.strip()
        if text:
            style = (block.style.name if block.style is not None else "") or ""
            level = _heading_level(style)
            lines.append(f"{'#' * level} {text}" if level else text)
    return lines


def _detail(exc: Exception) -> str:
    """The library's own words on what it met, for whoever digs further."""
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def _heading_level(style: str) -> int:
    """Markdown level of a Word paragraph style: Title → 1, Heading n / 标题 n → n."""
    if style in ("Title", "标题"):
        return 1
    match = re.fullmatch(r"(?:Heading|标题)\s*(\d)", style)
    return min(int(match.group(1)), 6) if match else 0


def chunk_document(content: str, source: str) -> list[Chunk]:
    """Chunks of a document, parsed according to the suffix of `source`."""
    suffix = PurePosixPath(source).suffix.lower()
    if suffix in MARKDOWN_SUFFIXES or suffix in CONVERTED_SUFFIXES:
        return chunk_markdown(content, source)
    if suffix == ".txt":
        return chunk_text(content, source)
    if suffix == ".jsonl":
        return chunk_jsonl(content, source)
    raise IngestError(f"不支持的文件格式：{suffix or '（没有扩展名）'}")


def chunk_markdown(content: str, source: str) -> list[Chunk]:
    """Chunks of a Markdown document, titled with their heading path.

    The first H1 is the document title and the root of every path (the file stem when there
    is none); text before the first heading belongs to the document title.
    """
    sections = _markdown_sections(_lines(content))
    root_index = next((i for i, (level, _, _) in enumerate(sections) if level == 1), None)
    doc_title = (sections[root_index][1] if root_index is not None else "") or _stem(source)
    titled: list[tuple[str, list[_Block]]] = []
    path: list[tuple[int, str]] = []
    for index, (level, heading, blocks) in enumerate(sections):
        if index == root_index:
            path = []
        elif level:
            while path and path[-1][0] >= level:
                path.pop()
            path.append((level, heading))
        title = TITLE_SEPARATOR.join(t for t in [doc_title, *(h for _, h in path)] if t)
        # The preamble and the H1's own text share the document title: one section.
        if titled and titled[-1][0] == title:
            titled[-1][1].extend(blocks)
        else:
            titled.append((title, blocks))
    chunks: list[Chunk] = []
    for title, blocks in titled:
        for text in _pack(_units(blocks), MAX_CHARS):
            chunks.append(_chunk(source, len(chunks), title, text))
    return chunks


def chunk_text(content: str, source: str) -> list[Chunk]:
    """Chunks of a plain-text document, titled with the file stem."""
    title = _stem(source)
    texts = _pack(_units(_paragraphs(_lines(content), fences=False)), MAX_CHARS)
    return [_chunk(source, position, title, text) for position, text in enumerate(texts)]


def chunk_jsonl(content: str, source: str) -> list[Chunk]:
    """One chunk per `{"id", "title", "text"}` line; texts over `HARD_LIMIT` become `id#2`…

    A missing id is derived from the content, a missing title is the file stem; blank lines
    are skipped. Anything else that is not such an object raises `IngestError`.
    """
    chunks: list[Chunk] = []
    first_line: dict[str, int] = {}
    for number, line in enumerate(_lines(content), start=1):
        if not line.strip():
            continue
        given_id, title, text = _jsonl_record(line, f"第 {number} 行", _stem(source))
        pieces = _pack(_units([_Block([text])]), HARD_LIMIT) if len(text) > HARD_LIMIT else [text]
        base_id = given_id or chunk_id(source, len(chunks), title, text)
        for piece_number, piece in enumerate(pieces, start=1):
            passage_id = base_id if piece_number == 1 else f"{base_id}#{piece_number}"
            if passage_id in first_line:
                raise IngestError(
                    f"第 {number} 行：id {passage_id} 与第 {first_line[passage_id]} 行重复"
                )
            first_line[passage_id] = number
            chunks.append(Chunk(passage_id, title, source, piece, len(chunks)))
    return chunks


def _jsonl_record(line: str, where: str, default_title: str) -> tuple[str | None, str, str]:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as exc:
        raise IngestError(f"{where}：不是合法的 JSON（第 {exc.colno} 列：{exc.msg}）") from None
    if not isinstance(record, dict):
        raise IngestError(f"{where}：应为含 id、title、text 的 JSON 对象")
    passage_id, title, text = record.get("id"), record.get("title"), record.get("text")
    if not isinstance(text, str) or not text.strip():
        raise IngestError(f"{where}：text 必须是非空字符串")
    if title is not None and not isinstance(title, str):
        raise IngestError(f"{where}：title 必须是字符串")
    if passage_id is not None and (
        isinstance(passage_id, bool)
        or not isinstance(passage_id, str | int)
        or not str(passage_id).strip()
    ):
        raise IngestError(f"{where}：id 必须是非空字符串或整数")
    given_id = str(passage_id).strip() if passage_id is not None else None
    return given_id, default_title if title is None else title.strip(), text.strip()


def _chunk(source: str, position: int, title: str, text: str) -> Chunk:
    return Chunk(chunk_id(source, position, title, text), title, source, text, position)


def _stem(source: str) -> str:
    return PurePosixPath(source).stem


def _lines(content: str) -> list[str]:
    return content.replace("\r\n", "\n").replace("\r", "\n").split("\n")


def _markdown_sections(lines: list[str]) -> list[tuple[int, str, list[_Block]]]:
    """(heading level, heading text, body lines) per section; level 0 before any heading."""
    sections: list[tuple[int, str, list[str]]] = [(0, "", [])]
    fence: str | None = None
    for line in lines:
        if fence is None:
            heading = _HEADING_RE.match(line)
            if heading:
                text = _CLOSING_HASHES_RE.sub("", heading.group(2) or "").strip()
                sections.append((len(heading.group(1)), text, []))
                continue
            fence = _fence_opening(line)
        elif _closes(line, fence):
            fence = None
        sections[-1][2].append(line)
    return [(level, text, _paragraphs(body, fences=True)) for level, text, body in sections]


def _paragraphs(lines: list[str], *, fences: bool) -> list[_Block]:
    """Blank-line separated blocks; blank lines inside a fenced code block do not separate."""
    blocks: list[_Block] = []
    current = _Block([])
    fence: str | None = None
    for line in lines:
        if fence is None and not line.strip():
            if current.lines:
                blocks.append(current)
            current = _Block([])
            continue
        if fences:
            if fence is None:
                fence = _fence_opening(line)
                current.code = current.code or fence is not None
            elif _closes(line, fence):
                fence = None
        current.lines.append(line)
    if current.lines:
        blocks.append(current)
    return [block for block in blocks if block.text]


def _fence_opening(line: str) -> str | None:
    match = _FENCE_OPEN_RE.match(line)
    if match is None or (match.group(1)[0] == "`" and "`" in match.group(2)):
        return None
    return match.group(1)


def _closes(line: str, fence: str) -> bool:
    match = _FENCE_CLOSE_RE.match(line)
    return bool(match and match.group(1)[0] == fence[0] and len(match.group(1)) >= len(fence))


def _units(blocks: list[_Block]) -> list[_Unit]:
    """Blocks that fit stay whole; longer prose becomes sentences, longer code its lines."""
    units: list[_Unit] = []
    for block in blocks:
        text = block.text
        if len(text) <= MAX_CHARS or (block.code and len(text) <= HARD_LIMIT):
            pieces = [_Unit(text, "")]
        elif block.code:
            pieces = [_Unit(line, "\n") for line in text.split("\n")]
        else:
            pieces = _sentences(text)
        for index, piece in enumerate(pieces):
            for cut in range(0, len(piece.text), HARD_LIMIT):
                joiner = "\n\n" if index == 0 and cut == 0 else "" if cut else piece.joiner
                units.append(_Unit(piece.text[cut : cut + HARD_LIMIT], joiner))
    return units


def _sentences(text: str) -> list[_Unit]:
    """Sentences of `text`, each with the whitespace that preceded it in the original."""
    units: list[_Unit] = []
    end = 0
    for sentence in split_sentences(text):
        start = text.find(sentence, end)
        units.append(_Unit(sentence, text[end:start]))
        end = start + len(sentence)
    return units


def _pack(units: list[_Unit], max_chars: int) -> list[str]:
    """Greedy packing into chunks of at most `max_chars`, then evening out a short last chunk.

    A unit longer than `max_chars` becomes a chunk of its own.
    """
    groups: list[list[_Unit]] = []
    for unit in units:
        if groups and len(_join([*groups[-1], unit])) <= max_chars:
            groups[-1].append(unit)
        else:
            groups.append([unit])
    if len(groups) > 1:
        previous, last = groups[-2], groups[-1]
        while len(previous) > 1 and len(_join(last)) < MIN_CHARS:
            moved = [previous[-1], *last]
            if len(_join(moved)) > max_chars or len(_join(previous[:-1])) < MIN_CHARS:
                break
            previous.pop()
            last.insert(0, moved[0])
    return [_join(group) for group in groups]


def _join(units: list[_Unit]) -> str:
    return units[0].text + "".join(unit.joiner + unit.text for unit in units[1:])
