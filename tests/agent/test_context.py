"""Context defaults come from settings through one mechanism: the `setting` field metadata."""

from __future__ import annotations

import dataclasses

import pytest

from agent.context import Context
from agent.settings import Settings, get_settings

MAPPED = {
    f.name: f.metadata["setting"] for f in dataclasses.fields(Context) if "setting" in f.metadata
}

# Every mapped setting away from its default, so a field left at the process default shows.
GIVEN = Settings(
    chat_model="given-chat",
    classify_model="given-classify",
    thinking=True,
    top_k=3,
    rerank_top_n=2,
    relevance_threshold=0.55,
    evidence_ratio=0.6,
    reranker="none",
    kb_name="given-kb",
    prompt_variant="given-variant",
    history_turns=1,
    rewrite="model",
)


def test_every_setting_of_the_same_name_is_mapped():
    # A setting named like a Context field means the same choice: its default must come
    # from the setting, so a Context field added later cannot silently ignore it.
    shared = {f.name for f in dataclasses.fields(Context)} & set(Settings.model_fields)
    assert shared <= set(MAPPED)
    assert MAPPED["classify_model"] == "effective_classify_model"
    assert MAPPED["knowledge_bases"] == "kb_name"


def test_from_settings_takes_every_mapped_field_from_them():
    context = Context.from_settings(GIVEN)
    defaults = Context.from_settings(Settings())
    for name in MAPPED:
        assert getattr(context, name) != getattr(defaults, name), name
    assert context.chat_model == "given-chat"
    assert context.classify_model == "given-classify"
    assert context.knowledge_bases == ("given-kb",)
    assert context.rewrite == "model"
    assert Context.from_settings(Settings(chat_model="solo")).classify_model == "solo"


def test_unmapped_fields_keep_their_code_defaults():
    context = Context.from_settings(GIVEN)
    for f in dataclasses.fields(Context):
        if f.name not in MAPPED:
            assert getattr(context, f.name) == f.default, f.name


@pytest.fixture
def process_settings(monkeypatch: pytest.MonkeyPatch):
    for name, value in {"QQRAG_CHAT_MODEL": "env-chat", "QQRAG_KB_NAME": "env-kb"}.items():
        monkeypatch.setenv(name, value)
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


def test_plain_context_takes_the_process_settings(process_settings: None):
    assert Context() == Context.from_settings(get_settings())
    assert Context().chat_model == "env-chat"
    assert Context().knowledge_bases == ("env-kb",)


def test_knowledge_bases_from_json_become_a_tuple():
    # LangGraph Studio sends the context as JSON, where a tuple arrives as a list.
    assert Context(knowledge_bases=["a", "b"]).knowledge_bases == ("a", "b")  # type: ignore[arg-type]
