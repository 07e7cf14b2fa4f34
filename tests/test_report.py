"""Reports on a tiny synthetic comparison: report.json numbers, report.md, pareto.png, the rich table."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from rich.console import Console

from agentflow._types import Usage
from agentflow.eval._data import Example
from agentflow.eval._report import (
    ArmResult,
    QuestionRecord,
    UsageTally,
    build_report,
    estimate_flops,
    write_report,
)
from agentflow.eval._report_render import render_table

SMALL = "qwen2.5-coder-0.5b"
LARGE = "qwen2.5-coder-1.5b"
EXAMPLES = [Example(f"q{i}", f"Question {i}?", f"answer {i}") for i in range(4)]


def _rec(qid: str, correct: bool, model: str, tokens: tuple[int, int], *, escalated: bool = False) -> QuestionRecord:
    usage = {model: Usage(1, *tokens)}
    if escalated:
        usage = {SMALL: Usage(1, 100, 10), LARGE: Usage(1, *tokens)}
    return QuestionRecord(
        question_id=qid,
        answer="a" if correct else "b",
        correct=correct,
        f1=1.0 if correct else 0.5,
        usage=usage,
        flops=estimate_flops(usage),
        model=model,
        wall_s=0.5,
        escalated=escalated,
    )


def _arms() -> list[ArmResult]:
    small = [_rec(f"q{i}", ok, SMALL, (100, 10)) for i, ok in enumerate([True, False, False, True])]
    large = [_rec(f"q{i}", ok, LARGE, (100, 10)) for i, ok in enumerate([True, True, False, True])]
    cascade = [
        _rec("q0", True, SMALL, (100, 10)),
        _rec("q1", True, LARGE, (100, 10), escalated=True),
        _rec("q2", False, LARGE, (100, 10), escalated=True),
        _rec("q3", True, SMALL, (100, 10)),
    ]
    return [
        ArmResult.from_records("small", small),
        ArmResult.from_records("large", large),
        ArmResult.from_records("cascade", cascade),
    ]


def test_arm_result_adds_up_its_records() -> None:
    small, large, cascade = _arms()
    assert (small.n, small.em, small.f1) == (4, 0.5, 0.75)
    assert large.em == 0.75
    assert cascade.escalation_rate == 0.5
    assert cascade.calls == 6
    assert cascade.usage == {SMALL: Usage(4, 400, 40), LARGE: Usage(2, 200, 20)}
    assert small.flops == pytest.approx(2 * 630_000_000 * 440)
    assert cascade.flops == pytest.approx(2 * 630_000_000 * 440 + 2 * 1_780_000_000 * 220)
    lo, hi = small.em_ci()[1:]
    assert 0.0 <= lo <= 0.5 <= hi <= 1.0
    with pytest.raises(ValueError, match="twice"):
        ArmResult.from_records("x", [_rec("q0", True, SMALL, (1, 1))] * 2)


def test_write_report_files_and_numbers(tmp_path: Path) -> None:
    out = tmp_path / "report"
    report = write_report(out, _arms(), EXAMPLES, meta={"dataset": "synthetic"})
    assert {p.name for p in out.iterdir()} == {"report.json", "report.md", "pareto.png"}
    data = json.loads((out / "report.json").read_text())
    assert data == json.loads(json.dumps(report))
    assert data["meta"] == {"dataset": "synthetic"}
    small = data["arms"][0]
    for key in ("n", "em", "em_ci95", "f1", "tokens", "flops", "wall_s", "calls", "escalation_rate"):
        assert key in small
    assert (small["name"], small["n"], small["em"], small["calls"]) == ("small", 4, 0.5, 4)
    assert small["tokens"] == {SMALL: {"requests": 4, "prompt_tokens": 400, "completion_tokens": 40}}
    assert (small["prompt_tokens"], small["completion_tokens"]) == (400, 40)
    assert small["wall_s"] == 2.0
    assert data["arms"][2]["escalation_rate"] == 0.5
    # Paired differences, b - a, for every pair.
    pairs = {(c["a"], c["b"]): c for c in data["comparisons"]}
    assert set(pairs) == {("small", "large"), ("small", "cascade"), ("large", "cascade")}
    sl = pairs[("small", "large")]
    assert (sl["n"], sl["diff"], sl["b_better"], sl["a_better"]) == (4, 0.25, 1, 0)
    assert sl["ci95"][0] <= 0.25 <= sl["ci95"][1]
    # One row per question, in dataset order, with every arm.
    rows = data["questions"]
    assert [r["question_id"] for r in rows] == ["q0", "q1", "q2", "q3"]
    assert rows[1]["question"] == "Question 1?" and rows[1]["gold"] == "answer 1"
    assert rows[1]["arms"]["small"]["correct"] is False
    assert rows[1]["arms"]["cascade"]["model"] == LARGE
    assert rows[1]["arms"]["cascade"]["escalated"] is True
    md = (out / "report.md").read_text()
    assert "| small | 4 | 50.0 |" in md
    assert "Paired differences" in md and "| small | large | 4 | 25.0 |" in md
    assert (out / "pareto.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_report_without_plot_and_with_missing_records(tmp_path: Path) -> None:
    small, large, _ = _arms()
    partial = ArmResult.from_records("large", large.records[:2])
    report = write_report(tmp_path, [small, partial], plot=False)
    assert not (tmp_path / "pareto.png").exists()
    assert report["comparisons"][0]["n"] == 2
    assert [r["question_id"] for r in report["questions"]] == ["q0", "q1", "q2", "q3"]
    assert set(report["questions"][3]["arms"]) == {"small"}
    assert "question" not in report["questions"][0]


def test_cached_usage_is_reported_as_spent_now_and_would_have_cost() -> None:
    rec = QuestionRecord(
        "q0",
        "a",
        True,
        usage={SMALL: Usage(2, 200, 20)},
        cached_usage={SMALL: Usage(1, 100, 10)},
        flops=estimate_flops({SMALL: Usage(2, 200, 20)}),
    )
    arm = build_report([ArmResult.from_records("cached", [rec])])["arms"][0]
    assert arm["flops"] == pytest.approx(2 * 630e6 * 220)
    assert arm["flops_spent_now"] == pytest.approx(2 * 630e6 * 110)
    assert arm["cached_tokens"][SMALL]["prompt_tokens"] == 100


def test_duplicate_arm_names_are_rejected() -> None:
    small = _arms()[0]
    with pytest.raises(ValueError, match="unique"):
        build_report([small, small])


def test_render_table_for_the_cli() -> None:
    table = render_table(build_report(_arms()))
    assert table.row_count == 3
    console = Console(width=200, record=True)
    console.print(table)
    text = console.export_text()
    assert "cascade" in text and "50.0" in text and "75.0" in text


async def test_usage_tally_from_completions_counts_cache_hits_at_their_original_cost() -> None:
    from agentflow._types import ChatRequest
    from agentflow.eval._metrics import Score
    from agentflow.eval._stores import CachedModel, ResponseCache
    from agentflow.testing import Reply, ScriptedModel

    model = CachedModel(
        ScriptedModel([Reply("x", prompt_tokens=50, completion_tokens=2)], name=SMALL), ResponseCache(":memory:")
    )
    tally = UsageTally()
    for _ in range(2):
        tally.add(await model.complete(ChatRequest.of("q")))
    rec = tally.record("q0", "x", Score(1.0, 1.0), model=SMALL, wall_s=0.1)
    assert rec.usage == {SMALL: Usage(2, 100, 4)}
    assert rec.cached_usage == {SMALL: Usage(1, 50, 2)}
    assert rec.calls == 2 and rec.correct and rec.model == SMALL
    assert rec.flops == pytest.approx(2 * 630e6 * 104)
    assert tally.record("q0", "x", Score(0.0, 0.0), flops=7.0).flops == 7.0


def test_usage_tally_as_an_event_listener() -> None:
    from agentflow._events import ModelCallEvent, NodeStarted

    tally = UsageTally()
    tally(ModelCallEvent(SMALL, Usage(1, 10, 2), 0.1))
    tally(ModelCallEvent(SMALL, Usage(), 0.0, cached=True))
    tally(NodeStarted("run", "node", 0, 0))
    assert tally.usage == {SMALL: Usage(2, 10, 2)}
    assert tally.cached == {SMALL: Usage(1, 0, 0)}


async def test_pipeline_load_retrieve_answer_store_resume_report(tmp_path: Path) -> None:
    """How the compare command fits the pieces together, with a resume after a 'kill'."""
    from agentflow._types import ChatRequest
    from agentflow.eval._data import load_dataset
    from agentflow.eval._metrics import score
    from agentflow.eval._retrieval import top_paragraphs
    from agentflow.eval._stores import CachedModel, ResponseCache, RunStore
    from agentflow.testing import FunctionModel

    examples = load_dataset("hotpotqa", data_dir=Path(__file__).parent / "data")
    gold = {e.question: e.answer for e in examples}
    asked: list[str] = []

    def oracle(request: ChatRequest) -> str:
        question = request.messages[-1].content.rsplit("Question: ", 1)[1]
        asked.append(question)
        return gold[question] if len(question) % 2 else "unknown"

    config = {"dataset": "hotpotqa", "rows": len(examples), "arms": ["small"]}
    cache = ResponseCache(tmp_path / "cache.sqlite")
    model = CachedModel(FunctionModel(oracle, name=SMALL), cache)

    async def run(limit: int) -> None:
        store = RunStore(tmp_path / "runs.sqlite", config=config)
        done = store.done_ids("small")
        for ex in [e for e in examples if e.id not in done][:limit]:
            context = "\n\n".join(p.text for p in top_paragraphs(ex.question, ex.paragraphs, k=2))
            tally = UsageTally()
            completion = await model.complete(ChatRequest.of(f"{context}\n\nQuestion: {ex.question}"))
            tally.add(completion)
            store.save("small", tally.record(ex.id, completion.text, score(ex, completion.text), model=SMALL))
        store.close()

    await run(limit=2)  # killed after two questions
    await run(limit=100)  # resumes with the other three
    assert len(asked) == len(examples)  # nobody was asked twice
    records = RunStore(tmp_path / "runs.sqlite").records("small")
    assert [r.question_id for r in records] == [e.id for e in examples]
    report = write_report(tmp_path / "out", [ArmResult.from_records("small", records)], examples, plot=False)
    expected = sum(len(e.question) % 2 for e in examples) / len(examples)
    assert report["arms"][0]["em"] == pytest.approx(expected)
    assert report["arms"][0]["calls"] == len(examples)
