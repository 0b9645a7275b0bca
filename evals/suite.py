"""Evaluation suites as data: a YAML file names its knowledge base, its version, its tolerances
and its cases (inline, or one JSON case per line of a `.jsonl` file next to it).

A case is a conversation of one or more user turns from one QQ user; each turn states what is
expected of it (all optional)::

    name: smoke
    version: 1
    knowledge_base:
      name: smoke
      paths: ["{default_docs}", smoke/kb]   # relative to this file; {default_docs}: the guide
      exclude: smoke/withheld.txt           # optional: passage ids left out (one per line)
    sensitive_words: smoke/sensitive_words  # optional: a folder of *.txt word lists
    tolerances: {answer.f1: 0.02, cost.tokens: 10%}
    defaults: {platform: qq, scene: group, group_id: "20001"}
    cases:
      - id: port-follow-up
        user_id: "10001"
        turns:
          - text: qqrag 怎么安装？
            intent: knowledge
            gold: ["安装与启动 › 安装并启动 qqrag 的命令"]
          - text: 那它默认端口是多少？
            query_contains: [端口]
            contains: ["8000"]
            cite: true
            max_model_calls: 3

`gold` names passages by id (a split passage `id#2` counts as `id`) or by title: Markdown
passages have content-hash ids, so their heading path is the stable name.

`python -m evals.suite` rewrites the suites derived from CMRC 2018 (see `derived_suites`).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from agent.settings import Settings
from evals.metrics import METRICS, Expect, Tolerance
from evals.retrieval import DATA_DIR as CMRC_DIR
from evals.retrieval import Question, follow_up, load_questions
from tools.ingest import SUPPORTED_SUFFIXES, chunk_document, read_document

SUITES_DIR = Path(__file__).parent / "suites"
DEFAULT_DOCS = "{default_docs}"
"""A knowledge-base path meaning the bundled user guide, wherever it is installed."""

_SUITE_KEYS = (
    "name",
    "version",
    "description",
    "credit",
    "knowledge_base",
    "sensitive_words",
    "tolerances",
    "defaults",
    "cases",
)
_CASE_KEYS = ("id", "turns", "platform", "scene", "user_id", "group_id", "tags", "note")
_SPEAKER_KEYS = ("platform", "scene", "user_id", "group_id")
_TURN_KEYS = (
    "text",
    "intent",
    "gold",
    "answers",
    "contains",
    "not_contains",
    "refuse",
    "cite",
    "max_model_calls",
    "query_contains",
    "query_not_contains",
)
_INTENTS = ("knowledge", "chitchat", "command", "blocked")


class SuiteError(ValueError):
    """A suite that cannot be used; the message (Chinese) names the file and the place."""


@dataclass(frozen=True)
class TurnSpec:
    text: str
    expect: Expect


@dataclass(frozen=True)
class Case:
    id: str
    turns: tuple[TurnSpec, ...]
    platform: str = "qq"
    scene: Literal["group", "private"] = "private"
    user_id: str = "10000"
    group_id: str | None = None
    tags: tuple[str, ...] = ()
    note: str = ""


@dataclass(frozen=True)
class KnowledgeSpec:
    name: str
    paths: tuple[Path, ...]
    """Files or folders ingested, in order; a folder's sources are named from its parent."""
    exclude: frozenset[str] = frozenset()
    """Ids of JSON Lines rows left out of the knowledge base: the questions they answer
    become unanswerable (see `cmrc2018_unanswerable_cases`)."""


@dataclass(frozen=True)
class Suite:
    name: str
    version: str
    path: Path
    knowledge: KnowledgeSpec
    cases: tuple[Case, ...]
    description: str = ""
    credit: str = ""
    sensitive_words: Path | None = None
    tolerances: Mapping[str, Tolerance] = field(default_factory=dict)

    def case_ids(self) -> list[str]:
        return [case.id for case in self.cases]

    def unknown_gold(self) -> list[str]:
        """Gold references that name no passage of the knowledge base (a typo in a title)."""
        names: set[str] = set()
        for path in self.knowledge.paths:
            files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
            for file in files:
                # As the knowledge base ingests: hidden files skipped, sources named from the
                # parent of the path given.
                inside = file.relative_to(path).parts if path.is_dir() else ()
                hidden = any(part.startswith(".") for part in inside)
                if hidden or file.suffix.lower() not in SUPPORTED_SUFFIXES:
                    continue
                source = file.relative_to(path.parent).as_posix()
                for chunk in chunk_document(read_document(file.read_bytes(), source), source):
                    names |= {chunk.id.split("#", 1)[0], chunk.title}
        gold = {ref for case in self.cases for turn in case.turns for ref in turn.expect.gold}
        return sorted(gold - names)

    def sample(self, size: int) -> Suite:
        """`size` cases spread evenly over the suite, in suite order: the same every time."""
        if size < 1:
            raise SuiteError("--sample 至少为 1")
        if size >= len(self.cases):
            return self
        step = len(self.cases) / size
        return dataclasses.replace(
            self, cases=tuple(self.cases[int(i * step)] for i in range(size))
        )


def available_suites(folder: Path = SUITES_DIR) -> list[str]:
    return sorted(path.stem for path in folder.glob("*.yaml"))


def suite_path(name_or_path: str, folder: Path = SUITES_DIR) -> Path:
    """A shipped suite by name, or a suite file by path."""
    candidate = Path(name_or_path)
    if candidate.suffix in (".yaml", ".yml"):
        if not candidate.is_file():
            raise SuiteError(f"找不到套件文件 {candidate}")
        return candidate
    path = folder / f"{name_or_path}.yaml"
    if not path.is_file():
        known = "、".join(available_suites(folder)) or "（无）"
        raise SuiteError(f"没有名为 {name_or_path!r} 的套件；可用：{known}，或给出 .yaml 文件路径")
    return path


def load_suite(name_or_path: str, folder: Path = SUITES_DIR) -> Suite:
    path = suite_path(name_or_path, folder)
    source = str(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as error:
        raise SuiteError(f"{source}：无法读取：{error}") from error
    top = _mapping(data, source, "顶层")
    _known(top, _SUITE_KEYS, source, "顶层")
    for key in ("name", "version", "knowledge_base", "cases"):
        if key not in top:
            raise SuiteError(f"{source}：缺少 {key}")
    base = path.parent
    defaults = _mapping(top.get("defaults") or {}, source, "defaults")
    _known(defaults, _SPEAKER_KEYS, source, "defaults")
    raw_cases = top["cases"]
    if isinstance(raw_cases, str):
        raw_cases = list(_jsonl(base / raw_cases))
    cases = [
        _case(raw, defaults, source, f"cases[{index}]")
        for index, raw in enumerate(_list(raw_cases, source, "cases"))
    ]
    seen: set[str] = set()
    for case in cases:
        if case.id in seen:
            raise SuiteError(f"{source}：用例 id {case.id!r} 重复")
        seen.add(case.id)
    words = top.get("sensitive_words")
    return Suite(
        name=_text(top["name"], source, "name"),
        version=str(top["version"]),
        path=path,
        knowledge=_knowledge(top["knowledge_base"], base, source),
        cases=tuple(cases),
        description=str(top.get("description") or "").strip(),
        credit=str(top.get("credit") or "").strip(),
        sensitive_words=_existing(base / str(words), source, "sensitive_words") if words else None,
        tolerances=_tolerances(top.get("tolerances") or {}, source),
    )


def _knowledge(raw: object, base: Path, source: str) -> KnowledgeSpec:
    body = _mapping(raw, source, "knowledge_base")
    _known(body, ("name", "paths", "exclude"), source, "knowledge_base")
    paths = []
    for index, item in enumerate(_list(body.get("paths") or [], source, "knowledge_base.paths")):
        where = f"knowledge_base.paths[{index}]"
        text = _text(item, source, where)
        path = Settings.model_fields["default_docs"].get_default(call_default_factory=True)
        paths.append(_existing(path if text == DEFAULT_DOCS else base / text, source, where))
    if not paths:
        raise SuiteError(f"{source}：knowledge_base.paths 至少要有一项")
    exclude: frozenset[str] = frozenset()
    if "exclude" in body:
        where = "knowledge_base.exclude"
        listed = _existing(base / _text(body["exclude"], source, where), source, where)
        exclude = frozenset(listed.read_text(encoding="utf-8").split())
        if not any(path.suffix == ".jsonl" for path in paths):
            # Rows are left out of JSON Lines files named in paths; anything else has no ids.
            raise SuiteError(f"{source}：{where} 只作用于 paths 里的 .jsonl 文件，这里没有")
    return KnowledgeSpec(
        _text(body.get("name"), source, "knowledge_base.name"), tuple(paths), exclude
    )


def _case(raw: object, defaults: Mapping[str, Any], source: str, where: str) -> Case:
    body = {**defaults, **_mapping(raw, source, where)}
    _known(body, _CASE_KEYS, source, where)
    case_id = _text(body.get("id"), source, f"{where}.id")
    where = f"用例 {case_id}"
    scene = body.get("scene", "private")
    if scene not in ("group", "private"):
        raise SuiteError(f"{source}：{where}.scene：应为 group 或 private，实际 {scene!r}")
    group_id = body.get("group_id")
    if scene == "group" and group_id in (None, ""):
        raise SuiteError(f"{source}：{where}：群聊用例需要 group_id")
    turns = tuple(
        _turn(item, source, f"{where}.turns[{index}]")
        for index, item in enumerate(_list(body.get("turns") or [], source, f"{where}.turns"))
    )
    if not turns:
        raise SuiteError(f"{source}：{where}：至少要有一轮 turns")
    return Case(
        id=case_id,
        turns=turns,
        platform=str(body.get("platform", "qq")),
        scene=scene,
        user_id=str(body.get("user_id", "10000")),
        group_id=str(group_id) if scene == "group" else None,
        tags=tuple(_strings(body.get("tags", []), source, f"{where}.tags")),
        note=str(body.get("note") or ""),
    )


def _turn(raw: object, source: str, where: str) -> TurnSpec:
    body = _mapping(raw, source, where)
    _known(body, _TURN_KEYS, source, where)
    intent = body.get("intent")
    if intent is not None and intent not in _INTENTS:
        raise SuiteError(f"{source}：{where}.intent：应为 {'、'.join(_INTENTS)} 之一")
    limit = body.get("max_model_calls")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 0):
        raise SuiteError(f"{source}：{where}.max_model_calls：应为非负整数")
    flags = {}
    for key in ("refuse", "cite"):
        value = body.get(key)
        if value is not None and not isinstance(value, bool):
            raise SuiteError(f"{source}：{where}.{key}：应为 true 或 false")
        flags[key] = value

    def strings(key: str) -> tuple[str, ...]:
        return tuple(_strings(body.get(key, []), source, f"{where}.{key}"))

    return TurnSpec(
        text=_text(body.get("text"), source, f"{where}.text"),
        expect=Expect(
            intent=intent,
            gold=strings("gold"),
            answers=strings("answers"),
            contains=strings("contains"),
            not_contains=strings("not_contains"),
            refuse=flags["refuse"],
            cite=flags["cite"],
            max_model_calls=limit,
            query_contains=strings("query_contains"),
            query_not_contains=strings("query_not_contains"),
        ),
    )


def _tolerances(raw: object, source: str) -> dict[str, Tolerance]:
    body = _mapping(raw, source, "tolerances")
    tolerances = {}
    for key, value in body.items():
        if key not in METRICS:
            raise SuiteError(f"{source}：tolerances：没有指标 {key!r}；可用：{'、'.join(METRICS)}")
        try:
            tolerances[key] = Tolerance.parse(value)
        except ValueError as error:
            raise SuiteError(f"{source}：tolerances.{key}：{error}") from None
    return tolerances


def _jsonl(path: Path) -> Iterator[Any]:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as error:
        raise SuiteError(f"无法读取用例文件 {path}：{error}") from error
    for number, line in enumerate(lines, start=1):
        if line.strip():
            try:
                yield json.loads(line)
            except json.JSONDecodeError as error:
                raise SuiteError(f"{path}:{number}：不是合法的 JSON：{error.msg}") from None


def _existing(path: Path, source: str, where: str) -> Path:
    if not path.exists():
        raise SuiteError(f"{source}：{where}：{path} 不存在")
    return path.resolve()


def _mapping(value: object, source: str, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise SuiteError(f"{source}：{where}：应为映射，实际 {type(value).__name__}")
    return {str(key): item for key, item in value.items()}


def _list(value: object, source: str, where: str) -> list[Any]:
    if not isinstance(value, list):
        raise SuiteError(f"{source}：{where}：应为列表，实际 {type(value).__name__}")
    return value


def _text(value: object, source: str, where: str) -> str:
    # QQ ids and versions are numbers in YAML unless quoted; both mean the same.
    if isinstance(value, bool) or not isinstance(value, str | int) or str(value).strip() == "":
        raise SuiteError(f"{source}：{where}：应为非空文本，实际 {value!r}")
    return str(value)


def _strings(value: object, source: str, where: str) -> list[str]:
    return [_text(item, source, where) for item in _list(value, source, where)]


def _known(body: Mapping[str, Any], allowed: Sequence[str], source: str, where: str) -> None:
    for key in body:
        if key not in allowed:
            raise SuiteError(f"{source}：{where}：未知字段 {key!r}；可用：{'、'.join(allowed)}")


# —— suites derived from CMRC 2018 ——


def cmrc2018_cases(data_dir: Path = CMRC_DIR) -> list[dict[str, Any]]:
    """One single-turn case per public question: gold paragraph, reference answers, cited."""
    return [
        {
            "id": question.id,
            "turns": [
                {
                    "text": question.text,
                    "intent": "knowledge",
                    "gold": sorted(question.gold),
                    "answers": answers,
                    "refuse": False,
                    "cite": True,
                }
            ],
        }
        for question, answers in zip(
            load_questions(data_dir), _answers(data_dir / "questions_public.jsonl"), strict=True
        )
    ]


def cmrc2018_followup_cases(data_dir: Path = CMRC_DIR) -> list[dict[str, Any]]:
    """Two turns per question that names its paragraph's title: turn 1 names the subject, turn 2
    asks the question with the title replaced by 它/该… (see `evals.retrieval.follow_up`)."""
    cases = []
    for question, answers in zip(
        load_questions(data_dir), _answers(data_dir / "questions_public.jsonl"), strict=True
    ):
        case = follow_up(question)
        if case is None:
            continue
        gold = sorted(question.gold)
        cases.append(
            {
                "id": question.id,
                "turns": [
                    {"text": case.turn1, "intent": "knowledge", "gold": gold},
                    {
                        "text": case.turn2,
                        "intent": "knowledge",
                        "gold": gold,
                        "answers": answers,
                        "query_contains": [question.title],
                        "refuse": False,
                        "cite": True,
                    },
                ],
            }
        )
    return cases


def cmrc2018_switch_cases(data_dir: Path = CMRC_DIR) -> list[dict[str, Any]]:
    """Five turns over three unrelated paragraphs A, B and C: A's follow-up pair (turn 1 names
    A, turn 2 refers to it); B's question as asked, naming B; then C's follow-up pair. The
    switches (turns 3 and 4) must search without the earlier titles, and C's follow-up must
    lean on C alone.

    B and C are the paragraphs a third and two thirds of the list away from A; a trio where
    one title occurs in another's turns is left out (the check "A left behind" would be none).
    """
    topics = [
        (question, answers, case)
        for question, answers in zip(
            load_questions(data_dir), _answers(data_dir / "questions_public.jsonl"), strict=True
        )
        if (case := follow_up(question)) is not None
    ]
    cases = []
    for index, (a, a_answers, a_case) in enumerate(topics):
        b, b_answers, _ = topics[(index + len(topics) // 3) % len(topics)]
        c, c_answers, c_case = topics[(index + 2 * len(topics) // 3) % len(topics)]
        titles = (a.title, b.title, c.title)
        texts = (a_case.turn1 + a_case.turn2, b.text, c_case.turn1 + c_case.turn2)
        if any(t in text for i, t in enumerate(titles) for j, text in enumerate(texts) if i != j):
            continue
        cases.append(
            {
                "id": f"{a.id}__{b.id}__{c.id}",
                "turns": [
                    {"text": a_case.turn1, "intent": "knowledge", "gold": sorted(a.gold)},
                    _asked(a_case.turn2, a, a_answers, after=()),
                    _asked(b.text, b, b_answers, after=(a.title,)),
                    {
                        "text": c_case.turn1,
                        "intent": "knowledge",
                        "gold": sorted(c.gold),
                        "query_contains": [c.title],
                        "query_not_contains": [a.title, b.title],
                    },
                    _asked(c_case.turn2, c, c_answers, after=(a.title, b.title)),
                ],
            }
        )
    return cases


UNANSWERABLE_EVERY = 2
"""Every second public question has its gold paragraph withheld."""


def _unanswerable_split(data_dir: Path) -> list[tuple[Question, list[str], bool, bool]]:
    """Each public question with its answers, whether its paragraph is withheld, and whether it
    belongs to the development half (`python -m evals.calibrate` tunes the gate there) or to
    the held-out half (the `cmrc2018-unanswerable` suite)."""
    rows = zip(load_questions(data_dir), _answers(data_dir / "questions_public.jsonl"), strict=True)
    return [
        (question, answers, index % UNANSWERABLE_EVERY == 1, (index // UNANSWERABLE_EVERY) % 2 == 0)
        for index, (question, answers) in enumerate(rows)
    ]


def withheld_paragraphs(data_dir: Path = CMRC_DIR) -> list[str]:
    """Paragraphs left out of the unanswerable suite's knowledge base, both halves'."""
    return sorted(
        gold for q, _, withheld, _ in _unanswerable_split(data_dir) if withheld for gold in q.gold
    )


def unanswerable_questions(
    data_dir: Path = CMRC_DIR, *, development: bool
) -> list[tuple[Question, list[str], bool]]:
    """(question, answers, withheld) of one half."""
    return [
        (question, answers, withheld)
        for question, answers, withheld, dev in _unanswerable_split(data_dir)
        if dev == development
    ]


def cmrc2018_unanswerable_cases(data_dir: Path = CMRC_DIR) -> list[dict[str, Any]]:
    """The held-out half of the public questions against a base without the withheld
    paragraphs: a withheld question must be refused ("not found", no citation); the others
    answered with their gold cited."""
    cases = []
    for question, answers, withheld in unanswerable_questions(data_dir, development=False):
        turn: dict[str, Any] = {"text": question.text, "intent": "knowledge"}
        if withheld:
            turn |= {"refuse": True, "cite": False}
        else:
            turn |= {"gold": sorted(question.gold), "answers": answers, "refuse": False}
            turn["cite"] = True
        cases.append({"id": question.id, "turns": [turn]})
    return cases


def _asked(
    text: str, question: Question, answers: list[str], *, after: tuple[str, ...]
) -> dict[str, Any]:
    """A turn asking `question` (as `text`): the search must name its paragraph's title and
    none of the titles of the topics talked about before (`after`)."""
    turn: dict[str, Any] = {
        "text": text,
        "intent": "knowledge",
        "gold": sorted(question.gold),
        "answers": answers,
        "query_contains": [question.title],
    }
    if after:
        turn["query_not_contains"] = list(after)
    return turn | {"refuse": False, "cite": True}


def _answers(path: Path) -> list[list[str]]:
    with path.open(encoding="utf-8") as lines:
        return [list(dict.fromkeys(json.loads(line)["answers"])) for line in lines]


def derived_suites(data_dir: Path = CMRC_DIR) -> dict[str, str]:
    """Files under `evals/suites/` and their text, derived from the CMRC 2018 copy."""
    return {
        "cmrc2018/cases.jsonl": jsonl_text(cmrc2018_cases(data_dir)),
        "cmrc2018-followup/cases.jsonl": jsonl_text(cmrc2018_followup_cases(data_dir)),
        "cmrc2018-switch/cases.jsonl": jsonl_text(cmrc2018_switch_cases(data_dir)),
        "cmrc2018-unanswerable/cases.jsonl": jsonl_text(cmrc2018_unanswerable_cases(data_dir)),
        "cmrc2018-unanswerable/withheld.txt": "".join(
            f"{paragraph}\n" for paragraph in withheld_paragraphs(data_dir)
        ),
    }


def jsonl_text(rows: Sequence[Mapping[str, Any]]) -> str:
    return "".join(json.dumps(row, ensure_ascii=False, sort_keys=True) + "\n" for row in rows)


def main() -> None:
    for relative, text in derived_suites().items():
        target = SUITES_DIR / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text, encoding="utf-8")
        print(f"{target}：{text.count(chr(10))} 行")


if __name__ == "__main__":
    main()
