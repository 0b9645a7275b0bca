from pathlib import Path

import pytest

from agent import prompts
from agent.settings import get_settings


def test_every_prompt_file_renders():
    names = {p.name.split(".")[0] for p in prompts.BUILTIN_DIR.glob("*.md")}
    assert {"classify", "answer", "answer_user", "not_found", "chitchat", "help"} <= names
    for name in names:
        assert prompts.render(name).strip()


def test_placeholders_fill_and_unknown_braces_stay():
    text = prompts.render("not_found", question="星尘打印机")
    assert "“星尘打印机”" in text
    assert (
        prompts.render("answer_user", evidence="E", question="Q")
        == "<context>\nE\n</context>\n\n<question>\nQ\n</question>"
    )


def test_variant_overrides_and_falls_back(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    (tmp_path / "answer.concise.md").write_text("只用一句话回答。", encoding="utf-8")
    monkeypatch.setenv("QQRAG_PROMPTS_DIR", str(tmp_path))
    get_settings.cache_clear()
    assert prompts.load("answer", "concise") == "只用一句话回答。"
    # No such variant of classify: the default file is used.
    assert prompts.load("classify", "concise") == prompts.load("classify")


def test_edits_are_picked_up_without_restart(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    monkeypatch.setenv("QQRAG_PROMPTS_DIR", str(tmp_path))
    get_settings.cache_clear()
    path = tmp_path / "help.md"
    path.write_text("第一版", encoding="utf-8")
    assert prompts.load("help") == "第一版"
    path.write_text("第二版，更长一些", encoding="utf-8")
    import os

    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 1_000_000_000))
    assert prompts.load("help") == "第二版，更长一些"


def test_missing_prompt_names_the_folders():
    with pytest.raises(FileNotFoundError, match="prompt 'nope' not found"):
        prompts.load("nope")
