"""How fast the sensitive-word filter builds and scans: `python -m evals.safety_bench`.

50,000 random Chinese words (2-6 characters) and 500-character messages, from a fixed seed.
Prints the figures as JSON; the target is well under 1 ms per scan.
"""

from __future__ import annotations

import json
import random
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from agent.policy.safety import SensitiveWords

SEED = 20240601
WORDS = 50_000
MESSAGE_CHARS = 500
RUNS = 1000
_CJK = (0x4E00, 0x9FFF)
_PUNCTUATION = "，。！？：、（）ＡＢＣ１２３ abc 123"


def _cjk(rng: random.Random, count: int) -> str:
    return "".join(chr(rng.randint(*_CJK)) for _ in range(count))


def make_words(rng: random.Random) -> list[str]:
    return [_cjk(rng, rng.randint(2, 6)) for _ in range(WORDS)]


def make_message(rng: random.Random, words: list[str], *, expanding: bool) -> str:
    """Chinese with full-width punctuation and three listed words; `expanding` adds characters
    that fold to several (㈱ → (株)), which takes the span-mapping path."""
    parts: list[str] = []
    while sum(map(len, parts)) < MESSAGE_CHARS:
        parts.append(_cjk(rng, rng.randint(4, 12)))
        parts.append(rng.choice(_PUNCTUATION))
    for word in rng.sample(words, 3):
        parts.insert(rng.randrange(len(parts)), word)
    if expanding:
        parts.insert(len(parts) // 2, "㈱ﬁ")
    return "".join(parts)[:MESSAGE_CHARS]


def _median_us(action: Callable[[], Any]) -> float:
    samples = []
    for _ in range(RUNS):
        start = time.perf_counter()
        action()
        samples.append(time.perf_counter() - start)
    return round(statistics.median(samples) * 1e6, 1)


def run() -> dict[str, Any]:
    rng = random.Random(SEED)
    words = make_words(rng)
    start = time.perf_counter()
    filter_ = SensitiveWords({"bench": words})
    build_s = time.perf_counter() - start
    with tempfile.TemporaryDirectory() as folder:
        Path(folder, "bench.txt").write_text("\n".join(words), encoding="utf-8")
        start = time.perf_counter()
        SensitiveWords.from_dir(folder)
        from_dir_s = time.perf_counter() - start
    plain = make_message(rng, words, expanding=False)
    expanding = make_message(rng, words, expanding=True)
    return {
        "words": WORDS,
        "distinct_words": len(filter_),
        "message_chars": MESSAGE_CHARS,
        "runs": RUNS,
        "build_ms": round(build_s * 1e3, 1),
        "from_dir_ms": round(from_dir_s * 1e3, 1),
        "scan_median_us": _median_us(lambda: filter_.scan(plain)),
        "scan_expanding_median_us": _median_us(lambda: filter_.scan(expanding)),
        "mask_median_us": _median_us(lambda: filter_.mask(plain)),
        "hits_in_message": len(filter_.scan(plain)),
    }


if __name__ == "__main__":
    print(json.dumps(run(), indent=2))
