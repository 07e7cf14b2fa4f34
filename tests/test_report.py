"""Reports on a tiny synthetic comparison: report.json numbers, report.md, pareto.png, the rich table."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from rich.console import Console

from agentflow._catalog import get_model
from agentflow._types import Usage
from agentflow.eval._data import Example
from agentflow.eval._report import ArmResult, QuestionRecord, build_report, write_report
from agentflow.eval._report_render import notes, render_table, verdicts

SMALL = "qwen2.5-coder-0.5b"
LARGE = "qwen2.5-coder-1.5b"
EXAMPLES = [Example(f"q{i}", f"Question {i}?", f"answer {i}") for i in range(4)]


def estimate_flops(usage: dict[str, Usage]) -> float:
    """2 x active parameters x tokens, written out here independently of the code under test."""
    return sum(2 * get_model(m).active_params * u.total_tokens for m, u in usage.items())


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


async def test_a_record_from_a_bill_counts_cache_hits_at_their_original_cost() -> None:
    from agentflow._budget import Budget
    from agentflow._types import ChatRequest
    from agentflow.eval._metrics import Score
    from agentflow.eval._stores import CachedModel, ResponseCache
    from agentflow.testing import Reply, ScriptedModel

    budget = Budget()
    model = budget.wrap(
        CachedModel(
            ScriptedModel([Reply("x", prompt_tokens=50, completion_tokens=2)], name=SMALL), ResponseCache(":memory:")
        )
    )
    for _ in range(2):
        await model.complete(ChatRequest.of("q"))  # the second is a cache hit
    bill = budget.bill()
    assert bill.requests == 1 and bill.models[SMALL].cached == 1  # spent now: one call
    rec = QuestionRecord.from_bill("q0", bill, "x", Score(1.0, 1.0), model=SMALL, wall_s=0.1)
    assert rec.usage == {SMALL: Usage(2, 100, 4)}  # would have cost: both calls
    assert rec.cached_usage == {SMALL: Usage(1, 50, 2)}
    assert rec.calls == 2 and rec.cached_calls == 1 and rec.correct and rec.model == SMALL
    assert not rec.from_cache  # one of its two calls reached the model
    assert rec.flops == pytest.approx(2 * 630e6 * 104)
    assert rec.flops - rec.flops_from_cache == pytest.approx(bill.flops)  # spent now is the bill's figure
    assert QuestionRecord.from_json(json.loads(json.dumps(rec.to_json()))) == rec


def test_an_old_record_without_cached_flops_derives_them_by_the_bills_arithmetic() -> None:
    rec = QuestionRecord("q0", "a", True, usage={SMALL: Usage(2, 20, 2)}, cached_usage={SMALL: Usage(1, 10, 1)})
    old = rec.to_json()
    del old["cached_flops"]
    assert QuestionRecord.from_json(old).flops_from_cache == pytest.approx(2 * 630e6 * 11)


async def test_pipeline_load_retrieve_answer_store_resume_report(tmp_path: Path) -> None:
    """How the compare command fits the pieces together, with a resume after a 'kill'."""
    from agentflow._budget import Budget
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
            budget = Budget()
            completion = await budget.wrap(model).complete(ChatRequest.of(f"{context}\n\nQuestion: {ex.question}"))
            record = QuestionRecord.from_bill(ex.id, budget.bill(), completion.text, score(ex, completion.text))
            store.save("small", record)
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


def _timed(qid: str, wall_s: float, *, error: str | None = None, cached: bool = False) -> QuestionRecord:
    usage = {SMALL: Usage(1, 100, 10)}
    return QuestionRecord(
        qid,
        "" if error else "a",
        error is None,
        usage=usage,
        cached_usage=usage if cached else {},
        flops=estimate_flops(usage),
        wall_s=wall_s,
        error=error,
    )


def test_few_questions_get_a_note_instead_of_an_interval(tmp_path: Path) -> None:
    report = write_report(tmp_path, _arms(), EXAMPLES, plot=False)
    assert all(a["interval_note"] == "n=4: too few for an interval" for a in report["arms"])
    assert all(c["interval_note"] == "n=4: too few for an interval" for c in report["comparisons"])
    console = Console(width=250, record=True)
    console.print(render_table(report))
    table = console.export_text()
    assert table.count("n=4: too few for an interval") == 3 and "25.0-" not in table
    md = (tmp_path / "report.md").read_text()
    assert "| small | 4 | 50.0 | n=4: too few for an interval |" in md
    assert "| small | large | 4 | 25.0 | n=4: too few for an interval |" in md
    assert verdicts(report)[0] == (
        "small vs large: exact match -25.0 points (n=4: too few for an interval), at 0.35x the FLOPs"
    )


def test_twenty_questions_get_an_interval() -> None:
    records = [_rec(f"q{i}", i % 2 == 0, SMALL, (100, 10)) for i in range(20)]
    others = [_rec(f"q{i}", i % 4 == 0, LARGE, (100, 10)) for i in range(20)]
    report = build_report([ArmResult.from_records("small", records), ArmResult.from_records("large", others)])
    assert report["arms"][0]["interval_note"] is None and report["comparisons"][0]["interval_note"] is None
    lo, hi = report["arms"][0]["em_ci95"]
    assert lo < 0.5 < hi
    assert "95% CI" in verdicts(report)[0] and "on 20 questions" in verdicts(report)[0]


def test_seconds_per_question_as_p50_and_p95(tmp_path: Path) -> None:
    walls = [1.0, 2.0, 3.0, 4.0, 100.0]
    arm = ArmResult.from_records("small", [_timed(f"q{i}", w) for i, w in enumerate(walls)])
    report = write_report(tmp_path, [arm], plot=False)
    (a,) = report["arms"]
    assert a["wall_s"] == 110.0
    assert a["wall_s_p50"] == 3.0
    assert a["wall_s_p95"] == pytest.approx(4.0 + 0.8 * 96.0)  # interpolated between the two slowest
    md = (tmp_path / "report.md").read_text()
    assert "s/q p50 | s/q p95 |" in md and "| 110.0 | 3.00 | 80.80 |" in md


def test_errors_are_counted_per_arm_and_the_first_is_shown_in_full(tmp_path: Path) -> None:
    long_error = "ServerUnavailableError: could not reach the model server at http://127.0.0.1:9/v1 " + "x" * 200
    records = [_timed("q0", 0.1), _timed("q1", 0.1, error=long_error), _timed("q2", 0.1, error="Other: second")]
    report = write_report(tmp_path, [ArmResult.from_records("small", records)], plot=False)
    (a,) = report["arms"]
    assert a["errors"] == 2 and a["first_error"] == {"question_id": "q1", "error": long_error}
    expected = f"small: 2 of 3 questions failed; the first (question q1): {long_error}"
    assert expected in notes(report)
    md = (tmp_path / "report.md").read_text()
    assert f"- {expected}" in md and "## Notes" in md


def test_answers_from_the_cache_are_counted_and_their_wall_time_flagged(tmp_path: Path) -> None:
    cached = ArmResult.from_records("large", [_timed(f"q{i}", 0.01, cached=i < 3) for i in range(4)])
    fresh = ArmResult.from_records("small", [_timed(f"q{i}", 2.0) for i in range(4)])
    report = write_report(tmp_path, [fresh, cached], plot=False)
    small, large = report["arms"]
    assert (small["answers_from_cache"], small["wall_mostly_from_cache"]) == (0, False)
    assert (large["answers_from_cache"], large["cached_calls"], large["wall_mostly_from_cache"]) == (3, 3, True)
    assert large["flops_spent_now"] == pytest.approx(large["flops"] / 4)
    said = [line for line in notes(report) if not line.startswith("energy ")]
    assert len(said) == 1 and said[0].startswith("large: 3 of 4 answers came from the response cache")
    assert "not comparable" in said[0]
    md = (tmp_path / "report.md").read_text()
    assert "| 0.0* |" in md and "| 8.0 |" in md  # the cached arm's wall time is marked


def test_report_md_lists_the_settings_not_a_raw_config(tmp_path: Path) -> None:
    meta = {
        "dataset": "hotpotqa",
        "questions": "4 (rows 0-1, 250-251)",
        "arms": ["small", "large"],
        "models": {"small": SMALL, "large": LARGE},
        "config": {"question_ids": ["id-0", "id-1", "id-250", "id-251"]},
    }
    report = write_report(tmp_path, _arms(), EXAMPLES, meta=meta, plot=False)
    md = (tmp_path / "report.md").read_text()
    assert "- questions: 4 (rows 0-1, 250-251)\n" in md
    assert "- arms: small, large\n" in md
    assert f"- models: small {SMALL}, large {LARGE}\n" in md
    assert "id-250" not in md and "{" not in md.split("|", 1)[0]  # no dict and no question id in the list
    assert report["meta"]["config"]["question_ids"][2] == "id-250"  # report.json keeps the full config


def test_energy_per_answer_is_in_the_report_and_labelled_estimated(tmp_path: Path) -> None:
    arm = ArmResult.from_records("small", [_timed(f"q{i}", 2.0) for i in range(4)])
    report = write_report(tmp_path, [arm], plot=False)
    [a] = report["arms"]
    assert a["energy_measured"] is False and a["energy_method"].startswith("estimated")
    assert a["energy_j_per_answer"] == pytest.approx(a["energy_j"] / 4) and a["energy_j"] > 0
    assert a["energy_wh_per_1000"] == pytest.approx(a["energy_j_per_answer"] * 1000 / 3600)
    line = next(x for x in notes(report) if x.startswith("energy "))
    assert "estimated" in line and "J/FLOP" in line
    assert "J/q" in (tmp_path / "report.md").read_text()


def test_a_record_keeps_its_rungs_and_degradations_through_json_and_the_store(tmp_path: Path) -> None:
    from agentflow._budget import Budget
    from agentflow.eval._metrics import Score
    from agentflow.eval._report import RungRecord
    from agentflow.eval._stores import RunStore

    budget = Budget(policy="degrade")
    budget.record_degradation("cascade: kept the small answer")
    rungs = (
        RungRecord(SMALL, 0.4, 0.7, True, "b", False, 1e9, why="not confident"),
        RungRecord(LARGE, 0.9, None, False, "a", True, 5e9, why="top rung"),
    )
    rec = QuestionRecord.from_bill("q0", budget.bill(), "a", Score(1.0, 1.0), rungs=rungs, degradations=("also",))
    assert rec.degradations == ("cascade: kept the small answer", "also")
    assert QuestionRecord.from_json(json.loads(json.dumps(rec.to_json()))) == rec
    with RunStore(tmp_path / "a.sqlite") as store:
        store.save("cascade", rec)
        assert store.get("cascade", "q0") == rec
    arm = build_report([ArmResult.from_records("cascade", [rec])])["arms"][0]
    assert arm["degraded"] == 1
    assert arm["first_degradation"] == {"question_id": "q0", "why": "cascade: kept the small answer"}
