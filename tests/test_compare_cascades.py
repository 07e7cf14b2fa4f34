"""compare's cascade arms: rung records, estimators, deferral curves, caps, concurrency, split, old stores."""

from __future__ import annotations

import asyncio
import json
import math
from pathlib import Path
from typing import Any

import pytest

from agentflow import (
    BudgetLimits,
    ChatRequest,
    ChoiceOutput,
    Completion,
    ConfigError,
    LearnedConfidence,
    TokenLogprob,
    Usage,
)
from agentflow.eval import CompareConfig, Comparison, Example, QuestionRecord, RunStore, load_dataset
from agentflow.eval._deferral import deferral_section
from agentflow.eval._report_render import deferral_line, notes
from agentflow.testing import FunctionModel, Reply
from workflows import QAState, rung

DATA = Path(__file__).parent / "data"
SMALL, LARGE = "qwen2.5-coder-0.5b", "qwen2.5-coder-1.5b"
GOLD = {
    "Kiss and Tell": "Chief of Protocol",
    "enslaved worlds": "Animorphs",
    "Big Stone Gap": "Greenwich Village, New York City",
    "Scott Derrickson": "yes",
    "Laleli Mosque": "no",
}
SMALL_RIGHT = {"enslaved worlds", "Scott Derrickson"}  # the small model knows these two, and is sure of them


def _key(req: ChatRequest) -> str:
    q = req.messages[-1].content.rsplit("Question:", 1)[-1]
    return next(k for k in GOLD if k in q)


def _small(name: str = SMALL) -> FunctionModel:
    """Right and sure (0.95) on SMALL_RIGHT, wrong and unsure (0.3) elsewhere."""

    def answer(req: ChatRequest) -> Reply:
        k = _key(req)
        return Reply(GOLD[k], prob=0.95) if k in SMALL_RIGHT else Reply("Nobody", prob=0.3)

    return FunctionModel(answer, name=name)


def _large() -> FunctionModel:
    return FunctionModel(lambda req: Reply(GOLD[_key(req)], prob=0.9), name=LARGE)


def _examples() -> list[Example]:
    return load_dataset(DATA / "hotpotqa_dev.jsonl")


def _config(examples: list[Example], **kw: Any) -> CompareConfig:
    base: dict[str, Any] = {"arms": ("small", "large", "cascade"), "threshold": 0.8}
    base.update(kw)
    return CompareConfig("hotpotqa", tuple(e.id for e in examples), small_model=SMALL, large_model=LARGE, **base)


# --- what each rung did, stored per question ------------------------------------------------------


async def test_each_rungs_score_decision_answer_and_cost_are_stored_per_question(tmp_path: Path) -> None:
    examples = _examples()
    report = await Comparison(_config(examples), examples, _small(), _large(), tmp_path, rung, QAState).run()
    arms = {a["name"]: a for a in report["arms"]}
    assert arms["cascade"]["em"] == 1.0 and arms["cascade"]["escalation_rate"] == pytest.approx(0.6)
    with RunStore(tmp_path / "answers.sqlite") as store:
        stored = {r.question_id: r for r in store.records("cascade")}
    for ex, row in zip(examples, report["questions"], strict=True):
        key = _key(ChatRequest.of("Question: " + ex.question))
        small, *large = stored[ex.id].rungs
        sure = key in SMALL_RIGHT
        assert (small.name, small.threshold, small.escalated) == (SMALL, 0.8, not sure)
        assert small.score == pytest.approx(0.95 if sure else 0.3)
        assert small.answer == (GOLD[key] if sure else "Nobody") and small.correct is sure  # its own answer
        assert small.flops == pytest.approx(row["arms"]["small"]["flops"])  # the small arm's very calls
        if sure:
            assert large == []
        else:
            (top,) = large
            assert (top.name, top.answer, top.correct, top.threshold) == (LARGE, GOLD[key], True, None)
            assert top.flops == pytest.approx(row["arms"]["large"]["flops"])
        assert row["arms"]["cascade"]["rungs"][0]["score"] == small.score  # ... and in report.json
        assert stored[ex.id].confidence == small.score


async def test_the_agent_escalates_to_the_same_workflow_on_the_large_model_behind_retrieval(tmp_path: Path) -> None:
    examples = _examples()
    large = _large()
    cfg = _config(examples, arms=("agent",))
    report = await Comparison(cfg, examples, _small(), large, tmp_path, rung, QAState).run()
    assert report["arms"][0]["em"] == 1.0 and report["arms"][0]["escalation_rate"] == pytest.approx(0.6)
    assert len(large.requests) == 3
    for req in large.requests:  # two retrieved paragraphs, not the full context of ten
        assert req.messages[-1].content.count("Title:") == 2


# --- deferral curves ------------------------------------------------------------------------------


async def test_the_report_has_a_deferral_curve_for_each_cascade_arm_or_says_why_not(tmp_path: Path) -> None:
    examples = _examples()
    cfg = _config(examples, arms=("small", "large", "cascade", "agent"))
    report = await Comparison(cfg, examples, _small(), _large(), tmp_path, rung, QAState).run()
    section = report["deferral"]
    assert section["estimator"] == "mean"
    cascade = section["curves"]["cascade"]
    assert cascade["available"] and cascade["reference"] == "large" and cascade["n"] == 5
    # the small rung is sure exactly when it is right: its score separates perfectly, as the oracle does
    assert cascade["auroc"] == 1.0 and cascade["auroc_n"] == 5
    assert (cascade["small_accuracy"], cascade["large_accuracy"]) == (0.4, 1.0)
    assert cascade["area_over_random"] == pytest.approx(cascade["oracle_area_over_random"])
    assert cascade["recovered"] == pytest.approx(1.0)
    assert cascade["area_interval"] is None  # five questions: too few for an interval, and it says so
    assert [p["share"] for p in cascade["points"]] == [0.0, 0.6, 1.0] and cascade["points"][-1]["threshold"] is None
    costs = [p["cost"] for p in cascade["points"]]
    assert costs[0] < costs[1] < costs[2]  # FLOPs per question grow with the share escalated
    agent = section["curves"]["agent"]
    assert not agent["available"] and "add large-retrieval to --arms" in agent["why"]
    assert (tmp_path / "deferral.png").stat().st_size > 1000
    md = (tmp_path / "report.md").read_text()
    assert "## Deferral (estimator mean)" in md and "![deferral curves](deferral.png)" in md
    line = deferral_line(report)
    assert line is not None and "\n" not in line
    assert "cascade: area over random +" in line and "AUROC 1.00 on 5 scored of 5 questions" in line
    assert "agent: no curve (the large-retrieval arm is not in this run" in line
    assert json.loads((tmp_path / "report.json").read_text())["deferral"] == json.loads(json.dumps(section))


async def test_a_run_without_a_cascade_arm_says_why_it_has_no_curve(tmp_path: Path) -> None:
    examples = _examples()
    report = await Comparison(
        _config(examples, arms=("small",)), examples, _small(), None, tmp_path, rung, QAState
    ).run()
    assert report["deferral"]["curves"] == {} and "add one to --arms" in report["deferral"]["why"]
    assert not (tmp_path / "deferral.png").exists()
    assert deferral_line(report) == (
        "deferral (estimator mean): no curve (no cascade arm (cascade or agent) in this run: add one to --arms "
        "to draw its curve)"
    )


def test_records_stored_before_rungs_were_recorded_give_no_curve_and_say_so() -> None:
    old = [QuestionRecord(f"q{i}", "a", True, confidence=0.9) for i in range(3)]
    section = deferral_section({"cascade": old, "large": old}, estimator="mean")
    c = section["curves"]["cascade"]
    assert not c["available"] and c["why"] == "no question to draw it from (3 stored before rungs were recorded)"


# --- estimators -----------------------------------------------------------------------------------


async def test_agreement_of_the_sc_workflow_decides(tmp_path: Path) -> None:
    examples = _examples()

    def sampled(req: ChatRequest) -> Reply:  # sure questions: the same answer every time; others: each seed differs
        k = _key(req)
        return Reply(GOLD[k] if k in SMALL_RIGHT else f"Guess {req.seed}", prob=0.99)

    cfg = _config(examples, workflow="sc", estimator="agreement", threshold=0.6)
    report = await Comparison(
        cfg, examples, FunctionModel(sampled, name=SMALL), _large(), tmp_path, rung, QAState
    ).run()
    rows = {r["question"]: r["arms"]["cascade"] for r in report["questions"]}
    scores = sorted(r["rungs"][0]["score"] for r in rows.values())
    assert scores == [0.2, 0.2, 0.2, 1.0, 1.0]  # five different guesses agree 1 in 5; two equal answers agree
    assert report["arms"][2]["em"] == 1.0 and report["deferral"]["curves"]["cascade"]["auroc"] == 1.0


def _judging(name: str) -> FunctionModel:
    """Answers like `_small`; as a constrained yes/no judge, says yes (P 0.9) to a right answer, no to a wrong one."""

    def answer(req: ChatRequest) -> Reply | Completion:
        if not isinstance(req.output, ChoiceOutput):
            k = _key(req)
            return Reply(GOLD[k] if k in SMALL_RIGHT else "Nobody", prob=0.5)
        p_yes = 0.1 if "Nobody" in req.messages[-1].content else 0.9
        top = (("yes", math.log(p_yes)), ("no", math.log(1 - p_yes)))
        token = TokenLogprob("yes" if p_yes > 0.5 else "no", max(top[0][1], top[1][1]), top)
        return Completion(token.token, name, "stop", Usage(1, 50, 1), (token,), token.token)

    return FunctionModel(answer, name=name)


async def test_the_verifier_is_the_small_model_judging_its_own_answer(tmp_path: Path) -> None:
    examples = _examples()
    small, large = _judging(SMALL), _large()
    cfg = _config(examples, arms=("cascade",), workflow="verify", estimator="verifier", threshold=0.5)
    report = await Comparison(cfg, examples, small, large, tmp_path, rung, QAState).run()
    judged = [r for r in small.requests if isinstance(r.output, ChoiceOutput)]
    assert judged, "the small model judged its answers"
    scores = [q["arms"]["cascade"]["rungs"][0]["score"] for q in report["questions"]]
    assert sorted(round(s, 3) for s in scores) == [0.1, 0.1, 0.1, 0.9, 0.9]
    assert report["arms"][0]["escalation_rate"] == pytest.approx(0.6) and report["arms"][0]["em"] == 1.0


async def test_a_learned_confidence_is_loaded_from_its_file(tmp_path: Path) -> None:
    examples = _examples()
    path = tmp_path / "confidence.json"
    # trusts only answers found in the paragraphs read: "Animorphs" is; "Nobody", and "yes", are not
    LearnedConfidence(("answer_in_context",), (0.5,), (0.5,), (4.0,), 0.0).save(path)
    cfg = _config(examples, estimator=f"learned:{path}")
    report = await Comparison(cfg, examples, _small(), _large(), tmp_path / "out", rung, QAState).run()
    cascade = {a["name"]: a for a in report["arms"]}["cascade"]
    assert cascade["em"] == 1.0 and cascade["escalation_rate"] == pytest.approx(0.8)
    kept = [q["arms"]["cascade"] for q in report["questions"] if not q["arms"]["cascade"]["escalated"]]
    assert [k["answer"] for k in kept] == ["Animorphs"] and kept[0]["rungs"][0]["score"] == pytest.approx(
        0.982, abs=1e-3
    )
    assert report["meta"]["estimator"] == f"learned (LearnedConfidence from {path})"
    with pytest.raises(ConfigError, match="does not exist"):
        Comparison(_config(examples, estimator="learned:/nowhere.json"), examples, _small(), _large(), tmp_path,
                   rung, QAState)  # fmt: skip


@pytest.mark.parametrize(
    ("estimator", "workflow", "says"),
    [
        ("agreement", "direct", "use workflow 'sc'"),
        ("verifier", "cot", "use workflow 'verify'"),
        ("mean:tops", "direct", "unknown estimator"),
        ("median", "direct", "unknown estimator"),
        ("learned:", "direct", "names no file"),
    ],
)
def test_an_estimator_that_cannot_read_the_workflow_is_refused(estimator: str, workflow: str, says: str) -> None:
    with pytest.raises(ConfigError, match=says):
        CompareConfig("x", (), estimator=estimator, workflow=workflow)


# --- caps -----------------------------------------------------------------------------------------


async def test_a_token_cap_per_question_keeps_the_small_answer_and_the_report_counts_it(tmp_path: Path) -> None:
    examples = _examples()
    large = _large()
    cap = BudgetLimits(total_tokens=1500)  # the small rung's two paragraphs fit, the full context does not
    cfg = _config(examples, arms=("cascade",))
    report = await Comparison(cfg, examples, _small(), large, tmp_path, rung, QAState, question_limits=cap).run()
    (arm,) = report["arms"]
    assert large.requests == [] and arm["errors"] == 0 and arm["escalation_rate"] == 0.0
    assert arm["degraded"] == 3 and arm["em"] == pytest.approx(0.4)  # the three unsure answers kept
    assert "total_tokens" in arm["first_degradation"]["why"]
    assert any(line.startswith("cascade: 3 of 5 questions cut short by the budget") for line in notes(report))
    assert "- budget per question: total_tokens 1500" in (tmp_path / "report.md").read_text()
    decisions = [q["arms"]["cascade"]["rungs"][0] for q in report["questions"]]
    assert sum(d["degraded"] for d in decisions) == 3


async def test_a_seconds_cap_refuses_what_comes_after_it_and_the_report_counts_it(tmp_path: Path) -> None:
    examples = _examples()
    small = _small()
    cap = BudgetLimits(wall_time_s=0.0)  # spent before any call can start
    report = await Comparison(
        _config(examples, arms=("small",)), examples, small, None, tmp_path, rung, QAState, run_limits=cap
    ).run()
    (arm,) = report["arms"]
    assert small.requests == [] and arm["errors"] == 5 and arm["degraded"] == 5
    assert arm["first_degradation"]["why"].startswith("not answered: over budget")
    assert report["meta"]["budget per run"] == "wall_time_s 0"


# --- concurrency ----------------------------------------------------------------------------------


class _LastFirst:
    """Holds the calls that arrive together and answers them last first, so concurrent questions finish
    in the reverse of their order. No clock: a batch is what arrived within a few hundred loop turns."""

    def __init__(self, inner: FunctionModel) -> None:
        self.inner = inner
        self.pending: list[tuple[ChatRequest, asyncio.Future[Completion]]] = []
        self.most = 0
        self.flushes: list[asyncio.Task[None]] = []

    @property
    def name(self) -> str:
        return self.inner.name

    async def complete(self, request: ChatRequest) -> Completion:
        future: asyncio.Future[Completion] = asyncio.get_running_loop().create_future()
        self.pending.append((request, future))
        self.most = max(self.most, len(self.pending))
        if len(self.pending) == 1:
            self.flushes.append(asyncio.ensure_future(self._flush()))
        return await future

    async def _flush(self) -> None:
        for _ in range(500):
            await asyncio.sleep(0)
        batch, self.pending = self.pending, []
        for request, future in reversed(batch):
            future.set_result(await self.inner.complete(request))


def _timeless(value: Any) -> Any:
    """A report without what depends on the clock (wall times, energy estimated from them)."""
    if isinstance(value, dict):
        return {
            k: _timeless(v)
            for k, v in value.items()
            if not k.startswith(("wall_s", "wall_time_s", "energy")) and k not in ("questions at once",)
        }
    if isinstance(value, list):
        return [_timeless(v) for v in value]
    return value


async def test_concurrent_questions_finishing_out_of_order_give_the_sequential_report(tmp_path: Path) -> None:
    examples = _examples()
    cfg = _config(examples, arms=("small", "large", "large-retrieval", "cascade", "agent"))
    small, large = _LastFirst(_small()), _LastFirst(_large())
    together = Comparison(cfg, examples, small, large, tmp_path / "together", rung, QAState, concurrency=5)
    parallel = await together.run()
    sequential = await Comparison(cfg, examples, _small(), _large(), tmp_path / "one", rung, QAState).run()
    assert small.most == 5 and large.most == 5  # five questions were in flight at once
    with RunStore(tmp_path / "together" / "answers.sqlite") as store:
        finished = [r.question_id for r in store.records("small")]  # in the order they were saved
        together_records = {arm: {r.question_id: r for r in store.records(arm)} for arm in cfg.arms}
    assert finished == [e.id for e in reversed(examples)]  # they finished last first...
    assert _timeless(parallel) == _timeless(sequential)  # ...yet the report is the sequential one
    assert parallel["meta"]["questions at once"] == 5
    with RunStore(tmp_path / "one" / "answers.sqlite") as store:
        for arm in cfg.arms:
            one = {r.question_id: r for r in store.records(arm)}
            assert {q: _timeless(r.to_json()) for q, r in together_records[arm].items()} == {
                q: _timeless(r.to_json()) for q, r in one.items()
            }
    calibration = (tmp_path / "together" / "calibration.jsonl").read_text()
    assert calibration == (tmp_path / "one" / "calibration.jsonl").read_text()


def test_concurrency_below_one_is_refused(tmp_path: Path) -> None:
    examples = _examples()
    with pytest.raises(ConfigError, match="concurrency must be a whole number >= 1"):
        Comparison(_config(examples), examples, _small(), _large(), tmp_path, rung, QAState, concurrency=0)


# --- split, old stores ----------------------------------------------------------------------------


async def test_the_split_is_in_the_config_the_settings_and_the_headline(tmp_path: Path) -> None:
    examples = _examples()
    cfg = _config(examples, arms=("small",), split="evaluation")
    report = await Comparison(cfg, examples, _small(), None, tmp_path, rung, QAState).run()
    assert report["meta"]["split"] == "evaluation" and report["meta"]["config"]["split"] == "evaluation"
    md = (tmp_path / "report.md").read_text()
    assert md.startswith("# agentflow comparison (evaluation split)\n")
    assert "Every number below comes from the evaluation split." in md and "- split: evaluation\n" in md
    with pytest.raises(ConfigError, match="split is empty"):
        _config(examples, split=" ")


async def test_a_run_stored_before_split_and_rungs_existed_resumes(tmp_path: Path) -> None:
    """The answer store of a run started before this version: its settings without `split`, its records
    without `rungs` or `degradations`. The same command resumes it, asking nothing again."""
    examples = _examples()
    cfg = _config(examples, arms=("small", "large"))
    old_settings = {
        "dataset": "hotpotqa",
        "question_ids": [e.id for e in examples],
        "arms": ["small", "large"],
        "workflow": "direct",
        "retrieve_k": 2,
        "threshold": 0.8,
        "thresholds_file": None,
        "estimator": "mean",
        "max_tokens": 32,
        "small_model": SMALL,
        "large_model": LARGE,
    }
    with RunStore(tmp_path / "answers.sqlite", config=old_settings) as store:
        for arm in cfg.arms:
            for e in examples:
                old = QuestionRecord(e.id, "Animorphs", False, usage={SMALL: Usage(1, 10, 1)}).to_json()
                del old["rungs"], old["degradations"], old["cached_flops"]
                store.save(arm, QuestionRecord.from_json(old))
                store._conn.execute(  # the row exactly as the earlier version wrote it
                    "UPDATE answers SET record = ? WHERE arm = ? AND question_id = ?", (json.dumps(old), arm, e.id)
                )
    small, large = _small(), _large()
    report = await Comparison(cfg, examples, small, large, tmp_path, rung, QAState).run()
    assert small.requests == [] and large.requests == []
    assert [a["n"] for a in report["arms"]] == [5, 5]
    with RunStore(tmp_path / "answers.sqlite") as store:
        assert {(r.rungs, r.degradations) for r in store.records("small")} == {((), ())}


async def test_cascade_arms_do_not_resume_a_store_of_the_router_based_arms(tmp_path: Path) -> None:
    """An answer store of agent/cascade answers made by the earlier router-based arms has no rung records and
    other escalation decisions: the cascades refuse to add to it."""
    from agentflow import RunConfigMismatchError

    examples = _examples()
    cfg = _config(examples, arms=("cascade",))
    settings = {
        "dataset": "hotpotqa", "question_ids": [e.id for e in examples], "arms": ["cascade"], "workflow": "direct",
        "retrieve_k": 2, "threshold": 0.8, "thresholds_file": None, "estimator": "mean", "max_tokens": 32,
        "small_model": SMALL, "large_model": LARGE,
    }  # fmt: skip
    RunStore(tmp_path / "answers.sqlite", config=settings).close()
    with pytest.raises(RunConfigMismatchError, match="cascade_arms"):
        await Comparison(cfg, examples, _small(), _large(), tmp_path, rung, QAState).run()
