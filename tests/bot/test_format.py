"""The plugin's pure text functions.

The plugin package reads NoneBot's configuration when imported, so it is imported inside the
tests, once NoneBot runs (nonebug's convention).
"""

from __future__ import annotations

from types import ModuleType

import pytest


@pytest.fixture
def fmt() -> ModuleType:
    from bot.plugins.qqrag import format

    return format


def citation(index: int, title: str, source: str) -> object:
    from bot.plugins.qqrag.client import Citation

    return Citation(index=index, title=title, source=source)


@pytest.mark.parametrize(
    ("raw", "clean"),
    [
        ("  星尘打印机\u3000保修多久？ ", "星尘打印机 保修多久？"),
        ("[CQ:at,qq=10001] 保修[CQ:face,id=14]多久", "保修 多久"),
        ("<@!1234> <emoji:4>保修多久<faceType=1,faceId=13,ext=eyJ0> ", "保修多久"),
        ("第一行\n\n\n\n  第二行  ", "第一行\n\n第二行"),
        ("   ", ""),
    ],
)
def test_clean_text(fmt: ModuleType, raw: str, clean: str) -> None:
    assert fmt.clean_text(raw) == clean


@pytest.mark.parametrize(
    ("text", "question"),
    [
        ("小知，保修多久", "保修多久"),
        ("小知保修多久", "保修多久"),
        ("小知助手: 保修多久", "保修多久"),
        ("Bot 保修多久", "保修多久"),
        ("bottle 多少钱", None),
        ("请问小知保修多久", None),
        ("小知", ""),
    ],
)
def test_strip_nickname(fmt: ModuleType, text: str, question: str | None) -> None:
    assert fmt.strip_nickname(text, ["小知", "小知助手", "bot"]) == question


@pytest.mark.parametrize(
    ("text", "masked"),
    [
        ("看 https://docs.example.com/a/b.html?x=1", "看 docs[.]example[.]com/a/b[.]html?x=1"),
        (
            "官网 www.stardust.cn 和 shop.stardust.com.cn",
            "官网 www[.]stardust[.]cn 和 shop[.]stardust[.]com[.]cn",
        ),
        ("控制台 http://192.168.1.20:8080", "控制台 192[.]168[.]1[.]20:8080"),
        ("见 stardust.md 第二节", "见 stardust[.]md 第二节"),
        ("直径 1.75 毫米，版本 v2.1，Wi-Fi", "直径 1.75 毫米，版本 v2.1，Wi-Fi"),
    ],
)
def test_mask_links(fmt: ModuleType, text: str, masked: str) -> None:
    assert fmt.mask_links(text) == masked


def test_citations_name_the_file_and_the_section_once(fmt: ModuleType) -> None:
    citations = [
        citation(1, "星尘打印机 › 保修", "kb/stardust.md"),
        citation(2, "月光扫地机器人", "kb/moonlight.md"),
        citation(3, "星尘打印机 › 保修", "kb/stardust.md"),
        citation(3, "星尘打印机 › 保修", "kb/stardust.md"),
        citation(4, "", ""),
    ]
    assert fmt.citation_lines(citations) == [
        "[1][3] stardust.md · 星尘打印机 › 保修",
        "[2] moonlight.md · 月光扫地机器人",
    ]
    assert fmt.compose_reply(" 答案[1]。\n", citations[:1]) == (
        "答案[1]。\n\n[1] stardust.md · 星尘打印机 › 保修"
    )
    assert fmt.compose_reply("没有找到。", []) == "没有找到。"


def test_split_text_cuts_at_sentence_ends(fmt: ModuleType) -> None:
    text = "第一句话。第二句话！\n第三句话？" + "长" * 25
    assert fmt.split_text(text, 10) == [
        "第一句话。第二句话！",
        "第三句话？",
        "长" * 10,
        "长" * 10,
        "长" * 5,
    ]
    assert fmt.split_text("短", 10) == ["短"]
    assert fmt.split_text("It works. Really.", 10) == ["It works.", "Really."]
    assert all(len(part) <= 10 for part in fmt.split_text("甲乙丙。" * 40, 10))


def test_fit_parts_truncates_the_last_allowed_part(fmt: ModuleType) -> None:
    parts = ["一二三四五。" * 5, "六七八九十。" * 5, "更多。"]
    assert fmt.fit_parts(parts, 3, 30) == parts
    fitted = fmt.fit_parts(parts, 2, 30)
    assert fitted == [parts[0], "六七八九十。" * 3 + fmt.TRUNCATED]
    assert all(len(part) <= 30 for part in fitted)
    assert fmt.fit_parts(parts, 0, 30) == []


def test_clean_text_makes_unpaired_surrogates_sendable(fmt: ModuleType) -> None:
    cleaned = fmt.clean_text("保修\ud800多久？")
    assert cleaned == "保修\ufffd多久？"
    cleaned.encode("utf-8")
