from pathlib import Path

import pytest
from dotenv import dotenv_values

from agent.settings import Settings

ENV_EXAMPLE = Path(__file__).resolve().parents[2] / ".env.example"


def field_env_names() -> set[str]:
    return {f"QQRAG_{name.upper()}" for name in Settings.model_fields}


def test_env_example_documents_every_setting_and_nothing_else():
    text = ENV_EXAMPLE.read_text(encoding="utf-8")
    # Commented-out lines count too: they document a setting whose default is computed.
    named = {
        line.lstrip("# ").split("=", 1)[0]
        for line in text.splitlines()
        if "=" in line and line.lstrip("# ").startswith("QQRAG_")
    }
    # QQRAG_BOT_* belong to the bot plugin's own config, checked in tests/bot.
    assert {n for n in named if not n.startswith("QQRAG_BOT_")} == field_env_names()


def test_env_example_loads_as_valid_settings():
    values = {
        k: v
        for k, v in dotenv_values(ENV_EXAMPLE).items()
        if v is not None and k.startswith("QQRAG_") and not k.startswith("QQRAG_BOT_")
    }
    settings = Settings(
        _env_file=None, **{k.removeprefix("QQRAG_").lower(): v for k, v in values.items()}
    )  # type: ignore[arg-type]
    assert settings.chat_model == "qwen3:8b"
    assert settings.maxkb_knowledge_ids == []
    assert settings.link_allowlist == []


@pytest.mark.parametrize(
    ("raw", "url"),
    [
        ("0.0.0.0:11434", "http://127.0.0.1:11434"),
        ("http://gpu-box:11434/", "http://gpu-box:11434"),
        ("http://gpu-box:11434/v1", "http://gpu-box:11434"),
        ("https://ollama.example.com", "https://ollama.example.com"),
    ],
)
def test_ollama_url_is_normalised(monkeypatch: pytest.MonkeyPatch, raw: str, url: str):
    monkeypatch.setenv("OLLAMA_HOST", raw)
    assert Settings(_env_file=None).ollama_url == url  # type: ignore[call-arg]


def test_link_allowlist_is_split_and_normalised(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("QQRAG_LINK_ALLOWLIST", " Docs.Example.com, *.example.org,,docs.example.com")
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    assert settings.link_allowlist == ["docs.example.com", "example.org"]
    monkeypatch.setenv("QQRAG_LINK_ALLOWLIST", "example.com;example.org")
    with pytest.raises(ValueError, match="不是域名"):
        Settings(_env_file=None)  # type: ignore[call-arg]


def test_qqrag_variable_wins_over_ollama_host(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("OLLAMA_HOST", "0.0.0.0:1")
    monkeypatch.setenv("QQRAG_OLLAMA_URL", "http://a:2")
    assert Settings(_env_file=None).ollama_url == "http://a:2"  # type: ignore[call-arg]


def test_dotenv_file_in_the_working_directory_is_read(tmp_path: Path):
    (tmp_path / ".env").write_text("QQRAG_CHAT_MODEL=qwen3:14b\nQQRAG_MAXKB_KNOWLEDGE_IDS=a, b\n")
    settings = Settings()
    assert settings.chat_model == "qwen3:14b"
    assert settings.effective_classify_model == "qwen3:14b"
    assert settings.maxkb_knowledge_ids == ["a", "b"]


def test_bad_values_are_rejected_with_the_field_name(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("QQRAG_PORT", "99999")
    with pytest.raises(ValueError, match="port"):
        Settings(_env_file=None)  # type: ignore[call-arg]
