"""Sensitive words: one Aho-Corasick pass over a message finds every listed word.

Matching ignores case, compatibility differences (full-width/half-width letters, digits and
punctuation, ligatures, circled characters) and invisible characters (zero-width spaces and
joiners, direction marks, variation selectors): words and text are folded alike, character by
character, and each folded character remembers which original character it came from, so hits
report spans in the text as the user wrote it.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import ahocorasick

from agent.policy._watch import Watched

_FOLD_CACHE_LIMIT = 200_000
# Unicode's Default_Ignorable_Code_Point: drawn as nothing, so "敏\u200b感词" reads as
# "敏感词" to a person and must match as it.
_IGNORABLE = re.compile(
    "[\u00ad\u034f\u061c\u115f\u1160\u17b4\u17b5\u180b-\u180f\u200b-\u200f\u202a-\u202e"
    "\u2060-\u206f\u3164\ufe00-\ufe0f\ufeff\uffa0\ufff0-\ufff8\U0001bca0-\U0001bca3"
    "\U0001d173-\U0001d17a\U000e0000-\U000e0fff]"
)


class _FoldTable(dict[int, str]):
    """`str.translate` table folding each character on first sight, then from the cache."""

    def __missing__(self, codepoint: int) -> str:
        # NFKD rather than NFKC: decomposition works character by character, so "é" and
        # "e"+U+0301 fold alike without looking at neighbours, and every visible character
        # folds to a run of its own (only ignorable ones fold to nothing), which the span
        # mapping relies on.
        char = chr(codepoint)
        folded = (
            ""
            if _IGNORABLE.match(char)
            else unicodedata.normalize("NFKD", unicodedata.normalize("NFKD", char).casefold())
        )
        if len(self) < _FOLD_CACHE_LIMIT:
            self[codepoint] = folded
        return folded


_FOLD = _FoldTable()


def fold(text: str) -> str:
    """The form matched: compatibility-decomposed, case-folded, invisible characters dropped."""
    return text.translate(_FOLD)


def _as_bytes(text: str) -> str:
    # The automaton runs over UTF-8 bytes (carried in a str, one character per byte): its nodes
    # search their children linearly, and a root with thousands of CJK children made each step
    # of a scan ~30 times slower than a root with a handful of lead bytes. JSON may carry lone
    # surrogates ("\ud800"); surrogatepass encodes them like any other character.
    return text.encode("utf-8", "surrogatepass").decode("latin-1")


@dataclass(frozen=True, slots=True)
class Hit:
    word: str
    """The word as written in its list."""
    category: str
    """The list's name: its file name without .txt."""
    start: int
    end: int
    """`text[start:end]` is what matched, in the original text."""


class SensitiveWords:
    """An immutable set of word lists compiled into one automaton."""

    def __init__(self, lists: Mapping[str, Iterable[str]]) -> None:
        entries: dict[str, list[tuple[str, str]]] = {}
        for category, words in lists.items():
            for word in words:
                key = fold(word)
                if key.strip() and (word, category) not in entries.setdefault(key, []):
                    entries[key].append((word, category))
        self.categories: tuple[str, ...] = tuple(lists)
        self._size = len(entries)
        self._automaton = ahocorasick.Automaton()
        for key, owners in entries.items():
            self._automaton.add_word(_as_bytes(key), (len(key), tuple(owners)))
        if entries:
            self._automaton.make_automaton()

    @classmethod
    def from_dir(cls, path: Path | str) -> SensitiveWords:
        """Every `*.txt` in a folder: one word a line; blank lines and `#` lines are skipped.

        Raises OSError for a missing folder or unreadable file, UnicodeDecodeError for a file
        that is not UTF-8.
        """
        folder = Path(path)
        if not folder.is_dir():
            raise NotADirectoryError(f"sensitive-word folder {folder} is not a folder")
        lists: dict[str, list[str]] = {}
        for file in sorted(folder.glob("*.txt")):
            lines = (line.strip() for line in file.read_text(encoding="utf-8-sig").splitlines())
            lists[file.stem] = [line for line in lines if line and not line.startswith("#")]
        return cls(lists)

    def __len__(self) -> int:
        """Distinct words after folding."""
        return self._size

    def scan(self, text: str) -> list[Hit]:
        """Every occurrence of every word, overlapping ones included, in order of position."""
        if not self._size:
            return []
        folded = fold(text)
        encoded = _as_bytes(folded)
        origin: list[int] | None = None
        # Every visible character folds to at least one, so equal lengths mean one-to-one
        # unless an invisible one folded to none (a search far cheaper than the mapping).
        if len(folded) != len(text) or _IGNORABLE.search(text):
            origin = [i for i, ch in enumerate(text) for _ in _FOLD[ord(ch)]]
        hits: list[Hit] = []
        ascii_only = len(encoded) == len(folded)
        byte_end = char_end = 0
        for last, (length, owners) in self._automaton.iter(encoded):
            # Matches come in order of their end, so byte offsets turn into character offsets
            # by decoding each stretch once; keys are whole UTF-8 sequences, so every offset
            # falls on a character boundary.
            if ascii_only:
                char_end = last + 1
            else:
                stretch = encoded[byte_end : last + 1].encode("latin-1")
                char_end += len(stretch.decode("utf-8", "surrogatepass"))
                byte_end = last + 1
            first = char_end - length
            if origin is None:
                start, end = first, char_end
            else:
                start, end = origin[first], origin[char_end - 1] + 1
            hits.extend(Hit(word, category, start, end) for word, category in owners)
        hits.sort(key=lambda hit: (hit.start, -hit.end, hit.category))
        return hits

    def mask(self, text: str) -> tuple[str, list[Hit]]:
        """The text with every matched character replaced by `*`, and the hits that remain
        once those inside a longer hit are dropped (the longest wins).

        Partly overlapping hits are all kept and masked together, so no fragment survives.
        """
        hits = self.scan(text)
        kept: list[Hit] = []
        # Hits come sorted by start, longest first, so any hit containing this one came earlier:
        # it is inside another span when an earlier, different span reaches as far.
        reach = -1
        span: tuple[int, int] | None = None
        keep = False
        for hit in hits:
            if (hit.start, hit.end) != span:
                if span is not None:
                    reach = max(reach, span[1])
                span = (hit.start, hit.end)
                keep = hit.end > reach
            if keep:
                kept.append(hit)
        return _star(text, hits), kept


def _star(text: str, hits: list[Hit]) -> str:
    pieces: list[str] = []
    cursor = 0
    for hit in hits:
        start = max(cursor, hit.start)
        if hit.end > start:
            pieces.append(text[cursor:start])
            pieces.append("*" * (hit.end - start))
            cursor = hit.end
    pieces.append(text[cursor:])
    return "".join(pieces)


class SafetyFilter(Watched[SensitiveWords]):
    """`SensitiveWords` from a folder, rebuilt when its files change; never raises on a bad folder.

    The folder is looked at no more than once per `check_interval` seconds, on use, and a
    rebuild replaces the automaton in one assignment. A missing folder means no words (logged
    once); a file that cannot be read keeps the previous words (logged once per change).
    """

    what = "sensitive words"
    errors = (OSError, UnicodeDecodeError)
    when_missing = "so no word is filtered (there is no built-in list)"

    @property
    def words(self) -> SensitiveWords:
        return self.value

    def scan(self, text: str) -> list[Hit]:
        return self.words.scan(text)

    def mask(self, text: str) -> tuple[str, list[Hit]]:
        return self.words.mask(text)

    def load(self) -> SensitiveWords:
        return SensitiveWords.from_dir(self.path)

    def missing(self) -> SensitiveWords:
        return SensitiveWords({})

    def signature(self) -> tuple[tuple[str, int, int], ...] | None:
        if not self.path.is_dir():
            return None
        signature = []
        for file in sorted(self.path.glob("*.txt")):
            try:
                stat = file.stat()
            except FileNotFoundError:
                continue  # removed since the listing, as an editor's save may do
            signature.append((file.name, stat.st_mtime_ns, stat.st_size))
        return tuple(signature)
