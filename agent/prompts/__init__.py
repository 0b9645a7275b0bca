"""Prompt files a prompt engineer edits without touching Python.

`NAME.md` is the default text; `NAME.VARIANT.md` overrides it for a prompt variant. A folder
named by `QQRAG_PROMPTS_DIR` is searched before the bundled one, so a deployment can replace
single prompts. Files are re-read when they change: no restart needed after an edit.

Set-up reads them all (`preload`), so a turn's renders only check each file's modification
time, a stat served from the kernel's cache: nothing is read on the event loop until an edit.
"""

from __future__ import annotations

import re
from pathlib import Path

from agent.settings import get_settings

BUILTIN_DIR = Path(__file__).resolve().parent
_PLACEHOLDER = re.compile(r"\{(\w+)\}")
_cache: dict[Path, tuple[float, str]] = {}


def _read(path: Path) -> str | None:
    try:
        mtime = path.stat().st_mtime
    except FileNotFoundError:
        return None
    cached = _cache.get(path)
    if cached is None or cached[0] != mtime:
        cached = (mtime, path.read_text(encoding="utf-8").strip())
        _cache[path] = cached
    return cached[1]


def _folders() -> list[Path]:
    override = get_settings().prompts_dir
    return [override, BUILTIN_DIR] if override else [BUILTIN_DIR]


def preload() -> None:
    """Read every prompt file into the cache (set-up, off the event loop)."""
    for folder in _folders():
        for path in folder.glob("*.md"):
            _read(path)


def load(name: str, variant: str = "default") -> str:
    """The text of prompt `name` for `variant`, falling back to the default file."""
    folders = _folders()
    files = [f"{name}.{variant}.md", f"{name}.md"] if variant != "default" else [f"{name}.md"]
    for filename in files:
        for folder in folders:
            text = _read(folder / filename)
            if text is not None:
                return text
    raise FileNotFoundError(f"prompt {name!r} not found in {', '.join(map(str, folders))}")


def render(name: str, variant: str = "default", **values: object) -> str:
    """Prompt `name` with `{placeholder}`s filled; unknown braces (JSON examples) stay as they are."""

    def fill(match: re.Match[str]) -> str:
        key = match.group(1)
        return str(values[key]) if key in values else match.group(0)

    return _PLACEHOLDER.sub(fill, load(name, variant))
