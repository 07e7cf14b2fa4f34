"""Evaluation datasets: the JSONL format of the bundled multi-hop QA sets, loaded into typed `Example`s.

One object per line with `id`, `question`, `answer` (str), `aliases` (list[str]) and, optionally,
`context` ([{title, text, is_supporting}]), `decomposition` ([{question, answer}]), `type`, `facts`.
Every other field is kept in `Example.extra`. A line that does not parse raises `DatasetError`
naming the file, the line number (and for bad JSON the column) and what is wrong.

    load_dataset("hotpotqa", limit=20)                 # the bundled copy (agentflow/eval/data)
    load_dataset("path/to/my.jsonl", rows=[0, 5, 9])   # any file in the same format
"""

from __future__ import annotations

import codecs
import importlib
import itertools
import json
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from .._exceptions import DatasetError, MissingDependencyError

__all__ = [
    "BUNDLED_DATA_DIR",
    "DATASETS",
    "DecompositionStep",
    "Example",
    "MetricKind",
    "Paragraph",
    "from_hf_dataset",
    "from_records",
    "load_dataset",
    "parse_number",
    "read_jsonl",
]

MetricKind = Literal["text", "number", "yesno"]
"""How answers are scored: SQuAD-style text (EM/F1), a final number (GSM8K), or yes/no (StrategyQA)."""


@dataclass(frozen=True, slots=True)
class _DatasetInfo:
    file: str
    metric: MetricKind


DATASETS: dict[str, _DatasetInfo] = {
    "hotpotqa": _DatasetInfo("hotpotqa_dev.jsonl", "text"),
    "2wikimultihopqa": _DatasetInfo("2wikimultihopqa_dev.jsonl", "text"),
    "strategyqa": _DatasetInfo("strategyqa_dev.jsonl", "yesno"),
    "gsm8k": _DatasetInfo("gsm8k_test.jsonl", "number"),
}
"""Bundled dataset names and the file each resolves to inside the data directory."""


@dataclass(frozen=True, slots=True)
class Paragraph:
    """One context paragraph; `is_supporting` marks the gold paragraphs (for retrieval recall only)."""

    title: str
    text: str
    is_supporting: bool = False


@dataclass(frozen=True, slots=True)
class DecompositionStep:
    """A sub-question; `answer` is a string, a list of strings, or None when the source has none."""

    question: str
    answer: str | tuple[str, ...] | None = None


@dataclass(frozen=True, slots=True)
class Example:
    """One evaluation question with its gold answer (plus aliases) and optional context."""

    id: str
    question: str
    answer: str
    aliases: tuple[str, ...] = ()
    paragraphs: tuple[Paragraph, ...] = ()
    decomposition: tuple[DecompositionStep, ...] = ()
    type: str | None = None
    facts: tuple[str, ...] = ()
    metric: MetricKind = "text"
    extra: Mapping[str, Any] = field(default_factory=dict, hash=False)

    @property
    def answers(self) -> tuple[str, ...]:
        """The answer followed by its aliases (all count as correct)."""
        return (self.answer, *self.aliases)

    @property
    def number(self) -> float | None:
        """The final number of a numeric answer ("#### 1,234" or "1234" -> 1234.0), else None."""
        return parse_number(self.answer)

    @property
    def supporting(self) -> tuple[Paragraph, ...]:
        return tuple(p for p in self.paragraphs if p.is_supporting)


_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?|-?\.\d+")


def parse_number(text: str) -> float | None:
    """The final number in `text` ("#### N" marks it in raw GSM8K), with commas and $ ignored; None if none."""
    if "####" in text:
        text = text.rsplit("####", 1)[1]
    found = _NUMBER.findall(text.replace("$", ""))
    if not found:
        return None
    try:
        return float(found[-1].replace(",", ""))
    except ValueError:
        return None


# --- parsing one record ---------------------------------------------------------------------------


class _Bad(Exception):
    """What is wrong with one record; turned into a DatasetError with the file and line."""


def _str(obj: Mapping[str, Any], key: str, *, required: bool = True, where: str = "") -> str | None:
    if key not in obj or obj[key] is None:
        if required:
            raise _Bad(f"missing field {where}{key!r} (every line needs 'id', 'question' and 'answer')")
        return None
    value = obj[key]
    if isinstance(value, int | float) and not isinstance(value, bool) and key in ("id", "answer"):
        return str(value)  # numeric ids and answers are common and unambiguous
    if not isinstance(value, str):
        raise _Bad(f"field {where}{key!r} must be a string, got {type(value).__name__} {value!r:.60}")
    return value


def _str_list(obj: Mapping[str, Any], key: str) -> tuple[str, ...]:
    value = obj.get(key)
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise _Bad(f"field {key!r} must be a list of strings, got {value!r:.80}")
    return tuple(value)


def _paragraphs(value: Any) -> tuple[Paragraph, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        raise _Bad(
            f"field 'context' must be a list of {{title, text, is_supporting}} objects, got {type(value).__name__}"
        )
    out = []
    for i, item in enumerate(value):
        if not isinstance(item, Mapping):
            raise _Bad(f"context[{i}] must be an object with 'title' and 'text', got {type(item).__name__}")
        where = f"context[{i}]."
        title = _str(item, "title", where=where) or ""
        text = _str(item, "text", where=where) or ""
        sup = item.get("is_supporting", False)
        if not isinstance(sup, bool):
            raise _Bad(f"{where}is_supporting must be true or false, got {sup!r:.40}")
        out.append(Paragraph(title, text, sup))
    return tuple(out)


def _decomposition(value: Any) -> tuple[DecompositionStep, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        raise _Bad(f"field 'decomposition' must be a list of {{question, answer}} objects, got {type(value).__name__}")
    out = []
    for i, item in enumerate(value):
        if not isinstance(item, Mapping):
            raise _Bad(f"decomposition[{i}] must be an object with 'question', got {type(item).__name__}")
        question = _str(item, "question", where=f"decomposition[{i}].") or ""
        answer = item.get("answer")
        if isinstance(answer, list) and all(isinstance(a, str) for a in answer):
            answer = tuple(answer)
        elif answer is not None and not isinstance(answer, str):
            raise _Bad(f"decomposition[{i}].answer must be a string, a list of strings or null, got {answer!r:.40}")
        out.append(DecompositionStep(question, answer))
    return tuple(out)


_KNOWN = frozenset({"id", "question", "answer", "aliases", "context", "decomposition", "type", "facts"})


def _example(obj: Any, metric: MetricKind) -> Example:
    if not isinstance(obj, Mapping):
        raise _Bad(f"each line must be a JSON object, got {type(obj).__name__}")
    qid = _str(obj, "id") or ""
    question = _str(obj, "question") or ""
    answer = _str(obj, "answer") or ""
    if not question.strip():
        raise _Bad("field 'question' is empty")
    ex_type = _str(obj, "type", required=False)
    return Example(
        id=qid,
        question=question,
        answer=answer,
        aliases=_str_list(obj, "aliases"),
        paragraphs=_paragraphs(obj.get("context")),
        decomposition=_decomposition(obj.get("decomposition")),
        type=ex_type,
        facts=_str_list(obj, "facts"),
        metric=metric,
        extra={k: v for k, v in obj.items() if k not in _KNOWN},
    )


# --- reading JSONL -------------------------------------------------------------------------------


def read_jsonl(path: str | Path) -> Iterator[tuple[int, Any]]:
    """Each non-blank line of a JSONL file as (line number, parsed value), in order.

    Only "\\n" ends a line (a form feed or U+2028 inside a string does not), and a UTF-8 BOM is
    skipped. A line that is not UTF-8 or not JSON raises DatasetError with the file, the line, the
    column, what is wrong there and the text around it.
    """
    p = Path(path)
    with p.open("rb") as fh:
        for lineno, raw in enumerate(fh, start=1):
            if lineno == 1 and raw.startswith(codecs.BOM_UTF8):
                raw = raw[len(codecs.BOM_UTF8) :]
            try:
                # without its line ending: else an error at the very end is put at "line 2, column 1"
                line = raw.decode("utf-8").rstrip("\r\n")
            except UnicodeDecodeError as exc:
                raise DatasetError(
                    f"not UTF-8 text at byte {exc.start + 1} of the line ({exc.reason}): save the file as UTF-8",
                    path=str(p),
                    line=lineno,
                ) from None
            if not line.strip():
                continue
            try:
                value = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DatasetError(_json_error(line, exc), path=str(p), line=lineno) from None
            yield lineno, value


def _json_error(text: str, exc: json.JSONDecodeError) -> str:
    """What is wrong with one line of JSONL, where (the column and the text on either side), and the fix."""
    start, end = max(0, exc.pos - 30), min(len(text), exc.pos + 20)
    before = ("..." if start else "") + text[start : exc.pos]
    after = text[exc.pos : end] + ("..." if end < len(text) else "")
    where = (f"after {before!r}" if before else "at the start of the line") + (
        f", before {after!r}" if after else ", at the end of the line"
    )
    return (
        f"invalid JSON at column {exc.colno}: {exc.msg}, {where}. Each line must be one complete JSON object: "
        "fix the text at that column (keys and strings in double quotes, a comma between fields, no trailing "
        "comma, every brace closed on the same line)"
    )


# --- files and names ------------------------------------------------------------------------------


BUNDLED_DATA_DIR = Path(__file__).parent / "data"
"""The evaluation sets shipped inside the package (see `SOURCES.md` there for origins and licences)."""


def _resolve(name_or_path: str | Path, data_dir: Path | str | None) -> tuple[Path, MetricKind]:
    text = str(name_or_path)
    key = text.lower()
    if key in DATASETS:
        info = DATASETS[key]
        base = Path(data_dir) if data_dir is not None else BUNDLED_DATA_DIR
        path = base / info.file
        if not path.is_file():
            raise DatasetError(
                f"dataset {text!r} should be at {path}, which does not exist: pass the right data_dir "
                "(or leave it unset for the bundled copy), or pass the path of a .jsonl file"
            )
        return path, info.metric
    path = Path(text)
    if path.suffix in (".jsonl", ".json") or path.exists():
        if not path.is_file():
            raise DatasetError(
                f"dataset file {path} does not exist: check the path, or use a bundled name ({', '.join(DATASETS)})"
            )
        stem = path.name.lower()
        metric: MetricKind = next((i.metric for n, i in DATASETS.items() if stem.startswith(n)), "text")
        return path, metric
    raise DatasetError(
        f"unknown dataset {text!r}: use one of {', '.join(DATASETS)}, or the path of a JSONL file "
        "(one object per line with id, question, answer)"
    )


def load_dataset(
    name_or_path: str | Path,
    *,
    limit: int | None = None,
    rows: Sequence[int] | None = None,
    data_dir: Path | str | None = None,
    metric: MetricKind | None = None,
) -> list[Example]:
    """Load a bundled dataset by name (hotpotqa, 2wikimultihopqa, strategyqa, gsm8k) or a JSONL path.

    `rows` picks explicit 0-based line indices (in the order given); `limit` keeps the first N
    (of `rows` when both are given). `data_dir` defaults to the bundled copy (`BUNDLED_DATA_DIR`).
    `metric` overrides how answers are scored (inferred from the dataset name, else "text").
    """
    path, inferred = _resolve(name_or_path, data_dir)
    kind: MetricKind = metric or inferred
    if limit is not None and limit < 0:
        raise DatasetError(f"limit must be >= 0, got {limit}: pass a non-negative number or None for all rows")
    wanted: list[int] | None = None
    if rows is not None:
        wanted = list(rows)
        if any(r < 0 for r in wanted):
            raise DatasetError(f"row indices must be >= 0, got {sorted(r for r in wanted if r < 0)}", path=str(path))
        if limit is not None:
            wanted = wanted[:limit]
    stop = (max(wanted) + 1 if wanted else 0) if wanted is not None else limit

    parsed: list[Example] = []
    seen: dict[str, int] = {}
    for lineno, obj in itertools.islice(read_jsonl(path), stop):  # lines past `stop` are not read
        try:
            ex = _example(obj, kind)
        except _Bad as exc:
            raise DatasetError(str(exc), path=str(path), line=lineno) from None
        if ex.id in seen:
            raise DatasetError(
                f"duplicate id {ex.id!r} (first on line {seen[ex.id]}): ids must be unique",
                path=str(path),
                line=lineno,
            )
        seen[ex.id] = lineno
        parsed.append(ex)
    if wanted is None:
        return parsed
    missing = [r for r in wanted if r >= len(parsed)]
    if missing:
        raise DatasetError(
            f"row {missing[0]} is out of range: the file has {len(parsed)} rows (indices 0..{len(parsed) - 1})",
            path=str(path),
        )
    return [parsed[r] for r in wanted]


# --- other sources --------------------------------------------------------------------------------


def _get(record: Mapping[str, Any], column: str) -> Any:
    """`record[column]`, where a dotted column ("answers.text") walks into nested mappings."""
    value: Any = record
    for part in column.split("."):
        if not isinstance(value, Mapping) or part not in value:
            return None
        value = value[part]
    return value


def _hf_context(value: Any, supporting_titles: set[str]) -> Any:
    # Hugging Face HotpotQA: {"title": [...], "sentences": [[...], ...]}.
    if isinstance(value, Mapping) and "title" in value and "sentences" in value:
        return [
            {"title": t, "text": " ".join(s).strip(), "is_supporting": t in supporting_titles}
            for t, s in zip(value["title"], value["sentences"], strict=False)
        ]
    return value


def from_records(
    records: Iterable[Mapping[str, Any]],
    mapping: Mapping[str, str] | None = None,
    *,
    metric: MetricKind = "text",
    source: str = "<records>",
) -> list[Example]:
    """Build Examples from mappings; `mapping` maps an Example field to a source column (dotted paths allowed).

    A list-valued answer becomes answer + aliases (SQuAD's `answers.text`). A Hugging Face HotpotQA
    `context` ({title, sentences}) is converted, with `supporting_facts.title` marking the gold ones.
    Errors name the record index as the "line".
    """
    mapping = dict(mapping or {})
    out: list[Example] = []
    for i, record in enumerate(records):
        obj: dict[str, Any] = {k: v for k, v in record.items() if k not in mapping.values()}
        for target, column in mapping.items():
            obj[target] = _get(record, column)
        answer = obj.get("answer")
        if isinstance(answer, list | tuple) and answer:
            obj["answer"] = answer[0]
            obj["aliases"] = [*list(answer[1:]), *(obj.get("aliases") or [])]
        sup = _get(record, "supporting_facts.title")
        titles = set(sup) if isinstance(sup, list) else set()
        obj["context"] = _hf_context(obj.get("context"), titles)
        try:
            out.append(_example(obj, metric))
        except _Bad as exc:
            raise DatasetError(str(exc), path=source, line=i) from None
    return out


def from_hf_dataset(ds: Any, mapping: Mapping[str, str] | None = None, *, metric: MetricKind = "text") -> list[Example]:
    """Examples from an already loaded Hugging Face `datasets.Dataset` (nothing is fetched from a hub)."""
    try:
        importlib.import_module("datasets")  # only to say how to install it; the object is already loaded
    except ImportError:
        raise MissingDependencyError("the Hugging Face `datasets` package", "pip install datasets") from None
    return from_records(iter(ds), mapping, metric=metric, source=f"<{type(ds).__name__}>")
