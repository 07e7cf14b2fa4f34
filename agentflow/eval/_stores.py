"""Durable evaluation state in SQLite (opened by `agentflow._sqlite`): the answer store and the response cache.

- `RunStore(path, config=...)` keeps every answer of a comparison as it is produced, keyed on
  (arm, question id) and committed at once, so a killed run resumes where it stopped
  (`done_ids(arm)` says what to skip). The run's settings are stored with it: reopening the file
  with different settings is a `RunConfigMismatchError` rather than a silent mix of two runs.
- `ResponseCache(path)` maps a hash of (model name, full ChatRequest) to its Completion, and
  `CachedModel(model, cache)` is a Model that answers from it. Only deterministic requests
  (temperature 0, or a fixed seed) are cached. A hit comes back with `cached=True`, zero `usage`
  (it costs nothing now) and the original usage in `meta["original_usage"]` (what it would have
  cost; `original_usage(completion)` reads either).
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import re
import time
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, NamedTuple, NotRequired

from pydantic import BaseModel, TypeAdapter
from typing_extensions import TypedDict  # pydantic reads typing.TypedDict only from Python 3.12

from .. import _sqlite
from .._exceptions import RunConfigMismatchError
from .._types import ChatRequest, Completion, JsonOutput, Model, OutputSpec, TokenLogprob, Usage
from ._report import ORIGINAL_USAGE, QuestionRecord, original_usage

__all__ = [
    "CachedModel",
    "ResponseCache",
    "RunConfigMismatchError",
    "RunStore",
    "completion_from_json",
    "completion_to_json",
    "is_deterministic",
    "original_usage",  # defined in _report (the accounting side); re-exported next to the cache
    "request_key",
]

_SCHEMA_VERSION = 1


_SECRET_KEY = re.compile(r"(?i)(api_?key|secret|password|authorization)$")


def _canonical(value: Any) -> Any:
    """A JSON-able, order-stable form of configs and requests (dataclasses, pydantic models, types,
    tuples, dicts). Integral floats become ints (temperature 0 == 0.0); secret-looking keys are redacted."""
    if isinstance(value, BaseModel):
        return {"__type__": type(value).__name__, **_canonical(value.model_dump(mode="json"))}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        fields = {f.name: _canonical(getattr(value, f.name)) for f in dataclasses.fields(value)}
        return {"__type__": type(value).__name__, **fields}
    if isinstance(value, type):
        return f"{value.__module__}.{value.__qualname__}"
    if isinstance(value, Mapping):
        return {
            str(k): "<redacted>" if _SECRET_KEY.search(str(k)) else _canonical(v)
            for k, v in sorted(value.items(), key=lambda kv: str(kv[0]))
        }
    if isinstance(value, list | tuple | set | frozenset):
        items = [_canonical(v) for v in value]
        return sorted(items, key=json.dumps) if isinstance(value, set | frozenset) else items
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return repr(value)


def _fingerprint(value: Any) -> str:
    return hashlib.sha256(json.dumps(_canonical(value), sort_keys=True).encode()).hexdigest()


# --- the answer store -----------------------------------------------------------------------------

_RECORD = TypeAdapter(QuestionRecord)
"""A record as stored: its fields as JSON (written with json.dumps, which keeps NaN and infinities)."""


class RunStore:
    """Every answer of a comparison, saved as it comes, so a killed run resumes where it stopped.

    `config` (any JSON-able settings: dataset, rows, arms, models, prompts...) is stored on first
    use; opening the same file with a different config raises RunConfigMismatchError.
    """

    def __init__(self, path: Path | str, *, config: Mapping[str, Any] | None = None) -> None:
        self.path = Path(path)
        self._conn = _sqlite.connect(path)
        self._conn.executescript(
            """
            CREATE TABLE IF NOT EXISTS run_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
            CREATE TABLE IF NOT EXISTS answers (
                arm TEXT NOT NULL, question_id TEXT NOT NULL, record TEXT NOT NULL,
                saved_at REAL NOT NULL, seq INTEGER NOT NULL,
                PRIMARY KEY (arm, question_id)
            );
            """
        )
        self._conn.execute("INSERT OR IGNORE INTO run_meta VALUES ('schema_version', ?)", (str(_SCHEMA_VERSION),))
        if config is not None:
            self._check_config(config)

    def _meta(self, key: str) -> str | None:
        row = self._conn.execute("SELECT value FROM run_meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def _check_config(self, config: Mapping[str, Any]) -> None:
        fingerprint = _fingerprint(config)
        stored = self._meta("config_fingerprint")
        if stored is None:
            self._conn.execute("BEGIN")
            self._conn.execute(
                "INSERT OR REPLACE INTO run_meta VALUES ('config', ?)",
                (json.dumps(_canonical(config), sort_keys=True),),
            )
            self._conn.execute("INSERT OR REPLACE INTO run_meta VALUES ('config_fingerprint', ?)", (fingerprint,))
            self._conn.execute("COMMIT")
            return
        if stored == fingerprint:
            return
        old = self.config or {}
        new = _canonical(config)
        changed = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
        detail = ", ".join(f"{k}: {old.get(k)!r:.60} -> {new.get(k)!r:.60}" for k in changed[:5])
        raise RunConfigMismatchError(
            f"{self.path} holds answers of a run with other settings ({detail or 'fingerprint differs'}): "
            f"use another output directory (--out) for these settings, or delete {self.path} to start over"
        )

    @property
    def config(self) -> dict[str, Any] | None:
        """The settings stored with the run (canonical JSON form), or None."""
        raw = self._meta("config")
        return None if raw is None else dict(json.loads(raw))

    def save(self, arm: str, record: QuestionRecord) -> None:
        """Store (or replace) one answer; committed before this returns."""
        self._conn.execute(
            "INSERT OR REPLACE INTO answers VALUES (?, ?, ?, ?, "
            "COALESCE((SELECT seq FROM answers WHERE arm = ? AND question_id = ?),"
            " (SELECT COALESCE(MAX(seq), 0) + 1 FROM answers)))",
            (arm, record.question_id, json.dumps(_RECORD.dump_python(record)), time.time(), arm, record.question_id),
        )

    def done_ids(self, arm: str) -> set[str]:
        """Question ids already answered by this arm (skip them when resuming)."""
        return {str(r[0]) for r in self._conn.execute("SELECT question_id FROM answers WHERE arm = ?", (arm,))}

    def records(self, arm: str) -> list[QuestionRecord]:
        """This arm's records in the order they were first saved."""
        rows = self._conn.execute("SELECT record FROM answers WHERE arm = ? ORDER BY seq", (arm,))
        return [_RECORD.validate_json(r[0]) for r in rows]

    def get(self, arm: str, question_id: str) -> QuestionRecord | None:
        row = self._conn.execute(
            "SELECT record FROM answers WHERE arm = ? AND question_id = ?", (arm, question_id)
        ).fetchone()
        return None if row is None else _RECORD.validate_json(row[0])

    def arms(self) -> list[str]:
        """Arms with at least one answer, in the order they first saved one."""
        rows = self._conn.execute("SELECT arm FROM answers GROUP BY arm ORDER BY MIN(seq)")
        return [str(r[0]) for r in rows]

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> RunStore:
        return self

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.close()


# --- completions as JSON --------------------------------------------------------------------------


class _StoredUsage(NamedTuple):
    requests: int
    prompt_tokens: int
    completion_tokens: int


class _StoredToken(NamedTuple):
    token: str
    logprob: float
    top: tuple[tuple[str, float], ...]


class _StoredParsed(TypedDict):
    kind: Literal["pydantic", "json"]
    value: Any


class _StoredCompletion(TypedDict):
    """A Completion as the response cache stores it (usage and tokens as JSON arrays). Caches on disk
    hold this layout: change it only with a way to read the old one."""

    text: str
    model: str
    usage: _StoredUsage
    finish_reason: NotRequired[str | None]
    logprobs: NotRequired[list[_StoredToken] | None]
    parsed: NotRequired[_StoredParsed | None]
    latency_s: NotRequired[float]
    cached: NotRequired[bool]
    meta: NotRequired[dict[str, Any] | None]
    cached_prompt_tokens: NotRequired[int]  # the part of usage's prompt tokens a prefix cache served; only if any


def _jsonable(value: Any) -> bool:
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return False
    return True


def completion_to_json(c: Completion) -> _StoredCompletion:
    """A Completion as JSON-able data. `parsed` keeps pydantic values (as their dump) and JSON values;
    `meta` keeps its JSON-able entries only."""
    parsed: _StoredParsed | None = None
    if isinstance(c.parsed, BaseModel):
        parsed = {"kind": "pydantic", "value": c.parsed.model_dump(mode="json")}
    elif c.parsed is not None and _jsonable(c.parsed):
        parsed = {"kind": "json", "value": c.parsed}
    out: _StoredCompletion = {
        "text": c.text,
        "model": c.model,
        "finish_reason": c.finish_reason,
        "usage": _StoredUsage(c.usage.requests, c.usage.prompt_tokens, c.usage.completion_tokens),
        "logprobs": None if c.logprobs is None else [_StoredToken(t.token, t.logprob, t.top) for t in c.logprobs],
        "parsed": parsed,
        "latency_s": c.latency_s,
        "cached": c.cached,
        "meta": {k: v for k, v in c.meta.items() if _jsonable(v)},
    }
    if c.usage.cached_prompt_tokens:
        out["cached_prompt_tokens"] = c.usage.cached_prompt_tokens
    return out


_STORED_COMPLETION = TypeAdapter(_StoredCompletion)


def _completion(d: _StoredCompletion, output: OutputSpec | None) -> Completion:
    parsed: Any = None
    p = d.get("parsed")
    if p is not None:
        parsed = p["value"]
        if p["kind"] == "pydantic" and isinstance(output, JsonOutput) and output.model is not None:
            parsed = output.model.model_validate(parsed)
    lps = d.get("logprobs")
    return Completion(
        text=d["text"],
        model=d["model"],
        finish_reason=d.get("finish_reason"),
        usage=Usage(*d["usage"], d.get("cached_prompt_tokens", 0)),
        logprobs=None if lps is None else tuple(TokenLogprob(*t) for t in lps),
        parsed=parsed,
        latency_s=d.get("latency_s", 0.0),
        cached=d.get("cached", False),
        meta=d.get("meta") or {},
    )


def completion_from_json(d: Mapping[str, Any], *, output: OutputSpec | None = None) -> Completion:
    """The inverse of completion_to_json; a pydantic `parsed` is rebuilt with `output.model` when given.
    A malformed `d` raises pydantic's ValidationError (a ValueError) naming the bad field."""
    return _completion(_STORED_COMPLETION.validate_python(d), output)


# --- the response cache ---------------------------------------------------------------------------


def is_deterministic(request: ChatRequest) -> bool:
    """Whether the same request always gets the same answer: greedy (temperature 0) or a fixed seed."""
    return request.temperature == 0 or request.seed is not None


def request_key(model: str, request: ChatRequest) -> str:
    """The cache key: sha256 over the model name and every field of the request (messages, params, output)."""
    return _fingerprint({"model": model, "request": request})


class ResponseCache:
    """Completions keyed on `request_key`, in SQLite (":memory:" for a throwaway cache)."""

    def __init__(self, path: Path | str) -> None:
        self.path = path
        self._conn = _sqlite.connect(path)
        self._conn.execute(
            "CREATE TABLE IF NOT EXISTS responses "
            "(key TEXT PRIMARY KEY, model TEXT NOT NULL, completion TEXT NOT NULL, created REAL NOT NULL)"
        )

    def get(self, key: str, *, output: OutputSpec | None = None) -> Completion | None:
        """The stored completion, or None (also for an entry that no longer parses, e.g. a changed output model)."""
        row = self._conn.execute("SELECT completion FROM responses WHERE key = ?", (key,)).fetchone()
        if row is None:
            return None
        try:
            return _completion(_STORED_COMPLETION.validate_json(row[0]), output)
        except ValueError:  # pydantic's ValidationError, from the layout or from output.model
            return None

    def put(self, key: str, completion: Completion) -> None:
        self._conn.execute(
            "INSERT OR REPLACE INTO responses VALUES (?, ?, ?, ?)",
            (key, completion.model, json.dumps(completion_to_json(completion)), time.time()),
        )

    def __len__(self) -> int:
        return int(self._conn.execute("SELECT COUNT(*) FROM responses").fetchone()[0])

    def close(self) -> None:
        self._conn.close()


class CachedModel:
    """A Model that answers deterministic requests from a ResponseCache and asks `model` otherwise.

    Concurrent identical requests wait for one call (a lock per key). Counts `hits`, `misses` and
    `bypassed` (non-deterministic requests, never cached).
    """

    def __init__(self, model: Model, cache: ResponseCache) -> None:
        self._model = model
        self._cache = cache
        self._locks: dict[str, asyncio.Lock] = {}
        self.hits = 0
        self.misses = 0
        self.bypassed = 0

    @property
    def name(self) -> str:
        return self._model.name

    async def complete(self, request: ChatRequest) -> Completion:
        if not is_deterministic(request):
            self.bypassed += 1
            return await self._model.complete(request)
        key = request_key(self.name, request)
        lock = self._locks.setdefault(key, asyncio.Lock())
        try:
            async with lock:
                stored = self._cache.get(key, output=request.output)
                if stored is not None:
                    self.hits += 1
                    meta = {
                        **stored.meta,
                        ORIGINAL_USAGE: stored.usage,
                        "original_latency_s": stored.latency_s,
                        "cache_key": key,
                    }
                    return dataclasses.replace(stored, usage=Usage(), latency_s=0.0, cached=True, meta=meta)
                completion = await self._model.complete(request)
                self._cache.put(key, completion)
                self.misses += 1
                return completion
        finally:
            if not lock.locked() and self._locks.get(key) is lock:
                del self._locks[key]
