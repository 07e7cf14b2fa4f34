"""The answer store (resume, config fingerprint) and the response cache (CachedModel)."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import math
import sqlite3
from pathlib import Path

import pytest
from pydantic import BaseModel

from agentflow import _sqlite
from agentflow._checkpoint import SqliteCheckpointer
from agentflow._exceptions import ConfigError
from agentflow._types import ChatRequest, ChoiceOutput, Completion, JsonOutput, Message, TokenLogprob, Usage
from agentflow.eval._report import QuestionRecord, original_usage
from agentflow.eval._stores import (
    CachedModel,
    ResponseCache,
    RunConfigMismatchError,
    RunStore,
    completion_from_json,
    completion_to_json,
    is_deterministic,
    request_key,
)
from agentflow.testing import FunctionModel, Reply, ScriptedModel

CONFIG = {"dataset": "hotpotqa", "rows": [0, 1, 2], "arms": ["small", "cascade"], "k": 2}


def _rec(qid: str, correct: bool = True) -> QuestionRecord:
    return QuestionRecord(
        question_id=qid,
        answer="Chief of Protocol",
        correct=correct,
        f1=1.0 if correct else 0.25,
        usage={"qwen2.5-coder-0.5b": Usage(2, 300, 12), "qwen2.5-coder-1.5b": Usage(1, 150, 5)},
        cached_usage={"qwen2.5-coder-0.5b": Usage(1, 150, 6)},
        flops=1.23e12,
        model="qwen2.5-coder-1.5b",
        wall_s=1.5,
        escalated=True,
    )


# --- RunStore -------------------------------------------------------------------------------------


def test_records_survive_a_new_store_on_the_same_file(tmp_path: Path) -> None:
    path = tmp_path / "out" / "runs.sqlite"
    store = RunStore(path, config=CONFIG)
    store.save("small", _rec("q1"))
    store.save("small", _rec("q2", correct=False))
    store.save("cascade", _rec("q1"))
    # No close(): a killed process never gets to close; every save is already committed.
    again = RunStore(path, config=CONFIG)
    assert again.done_ids("small") == {"q1", "q2"}
    assert again.done_ids("cascade") == {"q1"}
    assert again.done_ids("other") == set()
    assert again.records("small") == [_rec("q1"), _rec("q2", correct=False)]
    assert again.get("small", "q2") == _rec("q2", correct=False)
    assert again.get("small", "nope") is None
    assert again.arms() == ["small", "cascade"]
    store.close()
    again.close()


def test_save_replaces_and_keeps_first_order(tmp_path: Path) -> None:
    with RunStore(tmp_path / "r.sqlite") as store:
        store.save("a", _rec("q1", correct=False))
        store.save("a", _rec("q2"))
        store.save("a", _rec("q1", correct=True))
        assert [(r.question_id, r.correct) for r in store.records("a")] == [("q1", True), ("q2", True)]


def test_store_uses_wal(tmp_path: Path) -> None:
    path = tmp_path / "r.sqlite"
    RunStore(path).close()
    assert sqlite3.connect(path).execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_other_settings_in_the_same_file_are_an_error_naming_the_fix(tmp_path: Path) -> None:
    path = tmp_path / "r.sqlite"
    RunStore(path, config=CONFIG).close()
    RunStore(path, config=dict(CONFIG)).close()  # same settings: fine
    RunStore(path).close()  # no settings given: no check
    with pytest.raises(RunConfigMismatchError) as info:
        RunStore(path, config={**CONFIG, "k": 3})
    msg = str(info.value)
    assert "k: 2 -> 3" in msg
    assert "--out" in msg and "delete" in msg and str(path) in msg
    assert isinstance(info.value, ConfigError)


def test_config_is_stored_in_canonical_form(tmp_path: Path) -> None:
    with RunStore(tmp_path / "r.sqlite", config={"b": (1, 2), "a": Path("/x")}) as store:
        assert store.config == {"a": "/x", "b": [1, 2]}
    with RunStore(tmp_path / "r2.sqlite") as store:
        assert store.config is None


def test_question_record_json_round_trip(tmp_path: Path) -> None:
    rec = _rec("q9")
    with RunStore(tmp_path / "r.sqlite") as store:
        store.save("a", rec)
        stored = json.loads(store._conn.execute("SELECT record FROM answers").fetchone()[0])
        assert store.get("a", "q9") == rec
    assert stored["usage"]["qwen2.5-coder-0.5b"] == {"requests": 2, "prompt_tokens": 300, "completion_tokens": 12}
    assert (stored["question_id"], stored["correct"], stored["model"]) == ("q9", True, "qwen2.5-coder-1.5b")
    assert rec.calls == 3
    assert rec.tokens == 467
    assert rec.em == 1.0


# --- completions as JSON --------------------------------------------------------------------------


class Answer(BaseModel):
    value: str
    confidence: float


def test_completion_round_trip_with_logprobs_and_pydantic_parsed() -> None:
    c = Completion(
        text='{"value": "x", "confidence": 0.5}',
        model="m",
        finish_reason="stop",
        usage=Usage(1, 10, 7),
        logprobs=(TokenLogprob("x", -0.1, (("x", -0.1), ("y", -2.0))),),
        parsed=Answer(value="x", confidence=0.5),
        latency_s=0.25,
        meta={"rung": 1, "obj": object()},
    )
    back = completion_from_json(completion_to_json(c), output=JsonOutput.of(Answer))
    assert back.parsed == Answer(value="x", confidence=0.5)
    assert back.logprobs == c.logprobs
    assert (back.text, back.model, back.usage, back.latency_s) == (c.text, "m", Usage(1, 10, 7), 0.25)
    assert back.meta == {"rung": 1}  # non-JSON meta is dropped
    assert completion_from_json(completion_to_json(c)).parsed == {"value": "x", "confidence": 0.5}


# --- the response cache ---------------------------------------------------------------------------


def _req(text: str = "What is 2+2?", **params: object) -> ChatRequest:
    return ChatRequest.of([Message.system("Be brief."), Message.user(text)], **params)


async def test_second_identical_call_does_not_reach_the_model(tmp_path: Path) -> None:
    inner = ScriptedModel([Reply("4", prompt_tokens=20, completion_tokens=1)], name="small")
    model = CachedModel(inner, ResponseCache(tmp_path / "cache.sqlite"))
    first = await model.complete(_req())
    second = await model.complete(_req())
    assert len(inner.requests) == 1
    assert (first.text, second.text) == ("4", "4")
    assert not first.cached and second.cached
    assert second.usage == Usage()  # costs nothing now...
    assert original_usage(second) == Usage(1, 20, 1)  # ...and this is what it would have cost
    assert original_usage(first) == first.usage
    assert second.model == "small" and model.name == "small"
    assert (model.hits, model.misses) == (1, 1)


async def test_cache_survives_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "cache.sqlite"
    await CachedModel(ScriptedModel(["4"]), ResponseCache(path)).complete(_req())
    inner = ScriptedModel([])
    again = await CachedModel(inner, ResponseCache(path)).complete(_req())
    assert again.text == "4" and again.cached
    assert inner.requests == []


async def test_any_difference_in_the_request_or_model_misses() -> None:
    inner = ScriptedModel(["a", "b", "c", "d", "e"], name="m")
    cache = ResponseCache(":memory:")
    model = CachedModel(inner, cache)
    await model.complete(_req())
    await model.complete(_req("What is 3+3?"))
    await model.complete(_req(max_tokens=8))
    await model.complete(_req(output=ChoiceOutput(("4", "5"))))
    await CachedModel(ScriptedModel(["x"], name="other"), cache).complete(_req())
    assert len(inner.requests) == 4
    assert len(cache) == 5


async def test_non_deterministic_requests_are_not_cached() -> None:
    inner = ScriptedModel(["a", "b"])
    model = CachedModel(inner, ResponseCache(":memory:"))
    r1 = await model.complete(_req(temperature=0.7))
    r2 = await model.complete(_req(temperature=0.7))
    assert (r1.text, r2.text) == ("a", "b")
    assert len(inner.requests) == 2 and model.bypassed == 2
    assert not is_deterministic(_req(temperature=0.7))
    assert is_deterministic(_req(temperature=0.7, seed=3))
    assert is_deterministic(_req())


async def test_seeded_sampling_is_cached() -> None:
    inner = ScriptedModel(["a"])
    model = CachedModel(inner, ResponseCache(":memory:"))
    await model.complete(_req(temperature=0.7, seed=1))
    assert (await model.complete(_req(temperature=0.7, seed=1))).cached
    assert len(inner.requests) == 1


async def test_concurrent_identical_requests_call_the_model_once() -> None:
    calls = 0

    async def slow(request: ChatRequest) -> str:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0.01)
        return "4"

    model = CachedModel(FunctionModel(slow), ResponseCache(":memory:"))
    results = await asyncio.gather(*(model.complete(_req()) for _ in range(5)))
    assert calls == 1
    assert [r.text for r in results] == ["4"] * 5
    assert sum(r.cached for r in results) == 4


def test_request_key_is_stable_and_covers_the_output_spec() -> None:
    assert request_key("m", _req()) == request_key("m", _req())
    assert request_key("m", _req()) != request_key("n", _req())
    a = _req(output=JsonOutput.of(Answer))
    b = _req(output=JsonOutput({"type": "object"}))
    assert request_key("m", a) != request_key("m", b)


async def test_an_entry_that_no_longer_parses_is_a_miss() -> None:
    cache = ResponseCache(":memory:")
    inner = ScriptedModel(['{"value": "x", "confidence": 0.5}', '{"value": "y", "confidence": 0.5}'])
    request = _req(output=JsonOutput.of(Answer))
    key = request_key(inner.name, request)
    cache.put(key, Completion("t", "m", "stop", Usage(1, 1, 1), parsed=Answer(value="x", confidence=0.5)))
    assert cache.get(key, output=request.output) is not None
    cache.put(key, Completion("t", "m", "stop", Usage(1, 1, 1), parsed={"value": "x"}))
    cache._conn.execute("UPDATE responses SET completion = replace(completion, '\"json\"', '\"pydantic\"')")
    assert cache.get(key, output=request.output) is None  # 'confidence' is missing now
    await CachedModel(inner, cache).complete(request)
    assert len(inner.requests) == 1


def test_request_key_treats_integral_floats_alike() -> None:
    assert request_key("m", _req(temperature=0)) == request_key("m", _req(temperature=0.0))
    assert request_key("m", _req(temperature=0.5)) != request_key("m", _req(temperature=0.0))


def test_secrets_in_the_config_are_not_stored(tmp_path: Path) -> None:
    path = tmp_path / "r.sqlite"
    with RunStore(path, config={"url": "http://127.0.0.1:8080/v1", "api_key": "sk-very-secret"}) as store:
        assert store.config == {"url": "http://127.0.0.1:8080/v1", "api_key": "<redacted>"}
    assert all(b"sk-very-secret" not in f.read_bytes() for f in tmp_path.iterdir())
    RunStore(path, config={"url": "http://127.0.0.1:8080/v1", "api_key": "another"}).close()  # not a new run


# --- what is already on disk stays readable; one SQLite setup ---------------------------------------

# A cache entry and an answer row exactly as the stores wrote them before they used TypeAdapters.
OLD_COMPLETION = (
    '{"text": "4", "model": "small", "finish_reason": "stop", "usage": [1, 20, 1], "logprobs": '
    '[["4", -0.01, [["4", -0.01], ["5", -Infinity]]]], "parsed": null, "latency_s": 0.5, "cached": false, '
    '"meta": {"rung": 0}}'
)
OLD_RECORD = (
    '{"question_id": "q1", "answer": "Ann", "correct": true, "f1": 1.0, "usage": {"small": {"requests": 2, '
    '"prompt_tokens": 300, "completion_tokens": 12}}, "cached_usage": {}, "flops": 1.5e12, "model": "small", '
    '"wall_s": 0.5, "calls": 2, "escalated": false, "error": null, "confidence": 0.9}'
)


def test_a_cache_entry_written_before_still_answers(tmp_path: Path) -> None:
    path = tmp_path / "cache.sqlite"
    ResponseCache(path).close()
    with sqlite3.connect(path) as raw:
        raw.execute("INSERT INTO responses VALUES ('k', 'small', ?, 0)", (OLD_COMPLETION,))
    got = ResponseCache(path).get("k")
    assert got is not None
    assert (got.text, got.model, got.finish_reason, got.latency_s) == ("4", "small", "stop", 0.5)
    assert got.usage == Usage(1, 20, 1)
    assert got.logprobs == (TokenLogprob("4", -0.01, (("4", -0.01), ("5", float("-inf")))),)
    assert got.meta == {"rung": 0} and got.parsed is None
    # what is written now has the same layout, so older code reads it too
    assert json.loads(json.dumps(completion_to_json(got))) == json.loads(OLD_COMPLETION)


def test_a_malformed_cache_entry_is_a_miss_and_names_the_field() -> None:
    bad = '{"text": "4", "model": "m", "usage": [1, "x", 1]}'
    cache = ResponseCache(":memory:")
    cache._conn.execute("INSERT INTO responses VALUES ('k', 'm', ?, 0)", (bad,))
    assert cache.get("k") is None
    with pytest.raises(ValueError, match=r"usage\.1"):
        completion_from_json(json.loads(bad))


def test_an_answer_row_written_before_still_loads(tmp_path: Path) -> None:
    path = tmp_path / "r.sqlite"
    RunStore(path).close()
    with sqlite3.connect(path) as raw:
        raw.execute("INSERT INTO answers VALUES ('small', 'q1', ?, 0, 1)", (OLD_RECORD,))
    with RunStore(path) as store:
        [rec] = store.records("small")
    assert rec.question_id == "q1" and rec.correct and rec.confidence == 0.9
    assert rec.usage == {"small": Usage(2, 300, 12)} and rec.calls == 2 and rec.flops == 1.5e12


def test_records_with_nan_and_infinite_figures_round_trip(tmp_path: Path) -> None:
    rec = dataclasses.replace(_rec("q1"), flops=float("inf"), confidence=float("nan"))
    with RunStore(tmp_path / "r.sqlite") as store:
        store.save("a", rec)
        [back] = store.records("a")
    assert back.flops == float("inf") and back.confidence is not None and math.isnan(back.confidence)


def test_one_sqlite_setup_for_the_stores_and_the_checkpointer(tmp_path: Path) -> None:
    conn = _sqlite.connect(tmp_path / "new" / "folder" / "x.sqlite")
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("PRAGMA synchronous").fetchone()[0] == 1  # NORMAL
    assert conn.isolation_level is None  # autocommit: a write is durable when the call returns
    conn.close()
    assert _sqlite.connect(":memory:").execute("SELECT 1").fetchone() == (1,)
    checkpointer = SqliteCheckpointer(tmp_path / "ckpt" / "c.sqlite")
    for store in (RunStore(tmp_path / "r.sqlite"), ResponseCache(tmp_path / "c.sqlite")):
        assert store._conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        store.close()
    assert checkpointer._db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    checkpointer.close()
    (tmp_path / "file").write_text("")
    with pytest.raises(OSError):
        _sqlite.connect(tmp_path / "file" / "below-a-file.sqlite")
