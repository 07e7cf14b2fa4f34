"""`agentflow compare` with scripted models: the report, resume after a kill, the response cache."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from agentflow import ChatRequest, ConfigError, RunConfigMismatchError
from agentflow.eval import CompareConfig, Comparison, load_dataset
from agentflow.testing import FunctionModel, Reply
from workflows import QAState, rung

DATA = Path(__file__).parent / "data"
SMALL, LARGE = "qwen2.5-coder-0.5b", "qwen2.5-coder-1.5b"
GOLD = {  # a phrase of each question -> its gold answer
    "Kiss and Tell": "Chief of Protocol",
    "enslaved worlds": "Animorphs",
    "Big Stone Gap": "Greenwich Village, New York City",
    "Scott Derrickson": "yes",
    "Laleli Mosque": "no",
}


def _question(req: ChatRequest) -> str:
    return req.messages[-1].content.rsplit("Question:", 1)[-1]


def oracle(name: str, *, right: set[str], prob: float) -> FunctionModel:
    """Answers right on the questions whose key is in `right`, wrong elsewhere, with token prob `prob`."""

    def answer(req: ChatRequest) -> Reply:
        q = _question(req)
        key = next(k for k in GOLD if k in q)
        return Reply(GOLD[key] if key in right else "Nobody", prob=prob)

    return FunctionModel(answer, name=name)


def _examples() -> list:  # type: ignore[type-arg]
    return load_dataset(DATA / "hotpotqa_dev.jsonl")


def _config(examples: list, **kw: object) -> CompareConfig:  # type: ignore[type-arg]
    base: dict[str, object] = {
        "dataset": "hotpotqa",
        "question_ids": tuple(e.id for e in examples),
        "arms": ("agent", "large", "small", "large-retrieval"),
        "threshold": 0.8,
        "small_model": SMALL,
        "large_model": LARGE,
    }
    base.update(kw)
    return CompareConfig(**base)  # type: ignore[arg-type]


async def test_report_has_every_figure_per_arm_and_per_question(tmp_path: Path) -> None:
    examples = _examples()
    small = oracle(SMALL, right={"enslaved worlds", "Scott Derrickson"}, prob=0.5)  # unsure: always escalates
    large = oracle(LARGE, right=set(GOLD), prob=0.95)
    report = await Comparison(_config(examples), examples, small, large, tmp_path, rung, QAState).run()

    arms = {a["name"]: a for a in report["arms"]}
    assert set(arms) == {"agent", "large", "small", "large-retrieval"}
    for arm in arms.values():
        for key in ("n", "em", "f1", "tokens", "flops", "wall_s", "calls", "escalation_rate", "em_ci95"):
            assert key in arm, key
        assert arm["n"] == 5
    assert arms["small"]["em"] == pytest.approx(0.4)
    assert arms["large"]["em"] == 1.0 and arms["agent"]["em"] == 1.0
    assert arms["agent"]["escalation_rate"] == 1.0  # prob 0.5 < threshold 0.8 on every question
    assert set(arms["agent"]["tokens"]) == {SMALL, LARGE}
    # FLOPs are 2 x active parameters x tokens, from the catalog.
    large_tokens = arms["large"]["tokens"][LARGE]
    assert arms["large"]["flops"] == pytest.approx(
        2 * 1.78e9 * (large_tokens["prompt_tokens"] + large_tokens["completion_tokens"])
    )
    # The large arm reads all ten paragraphs, the retrieval arms two: far fewer prompt tokens.
    assert arms["large-retrieval"]["prompt_tokens"] < arms["large"]["prompt_tokens"] / 2
    assert report["comparisons"], "the paired difference between arms is reported"
    assert len(report["questions"]) == 5
    for name in ("report.json", "report.md", "pareto.png"):
        assert (tmp_path / name).stat().st_size > 0
    assert "| agent |" in (tmp_path / "report.md").read_text()
    # Labelled confidences of the single-model arms, ready for `agentflow calibrate`.
    lines = [json.loads(x) for x in (tmp_path / "calibration.jsonl").read_text().splitlines()]
    assert {x["rung"] for x in lines} == {SMALL, LARGE}
    assert all(0.0 <= x["score"] <= 1.0 for x in lines)


async def test_confident_small_model_answers_alone(tmp_path: Path) -> None:
    examples = _examples()
    small = oracle(SMALL, right=set(GOLD), prob=0.99)
    large = oracle(LARGE, right=set(GOLD), prob=0.99)
    report = await Comparison(_config(examples, arms=("agent",)), examples, small, large, tmp_path, rung, QAState).run()
    (agent,) = report["arms"]
    assert agent["escalation_rate"] == 0.0
    assert set(agent["tokens"]) == {SMALL}
    assert large.requests == []


def _prob_by_question(probs: dict[str, float], name: str) -> FunctionModel:
    """Right on every question, with a confidence that depends on the question."""

    def answer(req: ChatRequest) -> Reply:
        key = next(k for k in GOLD if k in _question(req))
        return Reply(GOLD[key], prob=probs.get(key, 0.99))

    return FunctionModel(answer, name=name)


async def test_cascade_escalates_unsure_answers_to_the_large_model_on_the_full_context(tmp_path: Path) -> None:
    examples = _examples()
    small = _prob_by_question({"Kiss and Tell": 0.3, "Big Stone Gap": 0.5}, SMALL)
    large = oracle(LARGE, right=set(GOLD), prob=0.99)
    cfg = _config(examples, arms=("small", "large", "cascade"), threshold=0.8)
    report = await Comparison(cfg, examples, small, large, tmp_path, rung, QAState).run(tmp_path / "cache.sqlite")
    arms = {a["name"]: a for a in report["arms"]}
    assert arms["cascade"]["escalation_rate"] == pytest.approx(0.4)
    escalated = {q["question"][:20]: q["arms"]["cascade"] for q in report["questions"]}
    assert sum(r["model"] == LARGE for r in escalated.values()) == 2
    # The escalated calls are the large arm's own calls (full context), so next to it they cost nothing new.
    assert arms["cascade"]["flops_spent_now"] == 0
    for q in report["questions"]:
        c, sm, lg = q["arms"]["cascade"], q["arms"]["small"], q["arms"]["large"]
        expected = sm["flops"] + (lg["flops"] if c["escalated"] else 0.0)
        assert c["flops"] == pytest.approx(expected) and c["correct"]
    assert len(large.requests) == 5  # the large arm's five; the cascade's two came from the cache


async def test_cascade_keeps_the_small_answer_when_the_budget_cannot_pay_for_the_large_one(tmp_path: Path) -> None:
    from agentflow import BudgetLimits

    examples = _examples()
    small = oracle(SMALL, right={"Scott Derrickson"}, prob=0.3)  # unsure everywhere: would always escalate
    large = oracle(LARGE, right=set(GOLD), prob=0.99)
    cfg = _config(examples, arms=("cascade",), threshold=0.8)
    limits = BudgetLimits(requests=1)
    comparison = Comparison(cfg, examples, small, large, tmp_path, rung, QAState, question_limits=limits)
    report = await comparison.run()
    (arm,) = report["arms"]
    assert large.requests == [] and arm["errors"] == 0 and arm["escalation_rate"] == 0.0
    assert arm["em"] == pytest.approx(0.2)  # the small model's own answers, one of them right


async def test_a_rerun_with_the_same_settings_costs_nothing(tmp_path: Path) -> None:
    examples = _examples()
    cache = tmp_path / "responses.sqlite"
    first_small, first_large = oracle(SMALL, right=set(GOLD), prob=0.5), oracle(LARGE, right=set(GOLD), prob=0.9)
    cfg = _config(examples, arms=("agent", "large"))
    await Comparison(cfg, examples, first_small, first_large, tmp_path / "a", rung, QAState).run(cache)
    assert first_small.requests and first_large.requests

    again_small, again_large = oracle(SMALL, right=set(), prob=0.5), oracle(LARGE, right=set(), prob=0.9)
    report = await Comparison(cfg, examples, again_small, again_large, tmp_path / "b", rung, QAState).run(cache)
    assert again_small.requests == [] and again_large.requests == []
    arms = {a["name"]: a for a in report["arms"]}
    assert arms["large"]["em"] == 1.0  # the cached answers, not the new (wrong) models
    assert arms["large"]["cached_tokens"], "the report says which tokens came from the cache"


async def test_other_settings_in_the_same_folder_are_refused(tmp_path: Path) -> None:
    examples = _examples()
    small, large = oracle(SMALL, right=set(), prob=0.99), oracle(LARGE, right=set(), prob=0.99)
    await Comparison(_config(examples, arms=("small",)), examples, small, large, tmp_path, rung, QAState).run()
    with pytest.raises(RunConfigMismatchError):
        await Comparison(
            _config(examples, arms=("small",), workflow="cot"), examples, small, large, tmp_path, rung, QAState
        ).run()


def test_bad_arm_names_are_clear_errors() -> None:
    with pytest.raises(ConfigError, match="choose from"):
        CompareConfig(dataset="x", question_ids=(), arms=("medium",))  # type: ignore[arg-type]


KILLED_RUN = textwrap.dedent(
    """
    import asyncio, os, signal, sys
    from pathlib import Path
    sys.path.insert(0, {tests!r})
    from test_compare import _config, _examples, oracle, SMALL, LARGE, GOLD
    from agentflow.eval import Comparison
    from agentflow.testing import FunctionModel, Reply
    from workflows import QAState, rung

    asked = Path({asked!r})

    def answer(req):
        q = req.messages[-1].content.rsplit("Question:", 1)[-1]
        key = next(k for k in GOLD if k in q)
        with asked.open("a") as f:
            f.write(key + "\\n")
        if key == "Big Stone Gap":  # the third question: die mid-run, as a kill would
            os.kill(os.getpid(), signal.SIGKILL)
        return Reply(GOLD[key], prob=0.99)

    examples = _examples()
    small = FunctionModel(answer, name=SMALL)
    large = oracle(LARGE, right=set(GOLD), prob=0.99)
    cfg = _config(examples, arms=("small",))
    asyncio.run(Comparison(cfg, examples, small, large, Path({out!r}), rung, QAState).run())
    """
)


def test_a_killed_run_resumes_without_answering_any_question_twice(tmp_path: Path) -> None:
    asked = tmp_path / "asked.txt"
    out = tmp_path / "out"
    script = KILLED_RUN.format(tests=str(Path(__file__).parent), asked=str(asked), out=str(out))
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, env=os.environ)
    assert proc.returncode == -9, proc.stderr
    assert asked.read_text().splitlines() == ["Kiss and Tell", "enslaved worlds", "Big Stone Gap"]

    examples = _examples()
    small = oracle(SMALL, right=set(GOLD), prob=0.99)
    large = oracle(LARGE, right=set(GOLD), prob=0.99)
    cfg = _config(examples, arms=("small",))
    report = asyncio.run(Comparison(cfg, examples, small, large, out, rung, QAState).run())
    again = [next(k for k in GOLD if k in _question(r)) for r in small.requests]
    assert again == ["Big Stone Gap", "Scott Derrickson", "Laleli Mosque"]  # the two answered ones are kept
    assert report["arms"][0]["n"] == 5


async def test_only_the_models_the_arms_call_are_needed(tmp_path: Path) -> None:
    examples = _examples()
    small = oracle(SMALL, right=set(GOLD), prob=0.99)
    report = await Comparison(_config(examples, arms=("small",)), examples, small, None, tmp_path, rung, QAState).run()
    assert report["arms"][0]["em"] == 1.0
    with pytest.raises(ConfigError, match="arms agent, cascade call the large model"):
        cfg = _config(examples, arms=("small", "agent", "cascade"))
        Comparison(cfg, examples, small, None, tmp_path, rung, QAState)


async def test_a_failed_question_is_reported_and_asked_again_on_resume(tmp_path: Path) -> None:
    from agentflow import ServerUnavailableError

    examples = _examples()

    def down(req: ChatRequest) -> Reply:
        raise ServerUnavailableError("could not reach the model server at http://127.0.0.1:9/v1: start it")

    first = await Comparison(
        _config(examples, arms=("small",)), examples, FunctionModel(down, name=SMALL), None, tmp_path, rung, QAState
    ).run()
    (arm,) = first["arms"]
    assert arm["errors"] == 5 and arm["em"] == 0.0
    assert "could not reach the model server at http://127.0.0.1:9/v1: start it" in arm["first_error"]["error"]

    small = oracle(SMALL, right=set(GOLD), prob=0.99)
    again = await Comparison(_config(examples, arms=("small",)), examples, small, None, tmp_path, rung, QAState).run()
    assert len(small.requests) == 5 and again["arms"][0]["errors"] == 0 and again["arms"][0]["em"] == 1.0


async def test_a_cache_only_replay_asks_no_model(tmp_path: Path) -> None:
    examples = _examples()
    cache = tmp_path / "cache.sqlite"
    cfg = _config(examples, arms=("small", "large"))
    small, large = oracle(SMALL, right=set(GOLD), prob=0.9), oracle(LARGE, right=set(GOLD), prob=0.9)
    await Comparison(cfg, examples, small, large, tmp_path / "live", rung, QAState).run(cache)

    replay = Comparison(cfg, examples, None, None, tmp_path / "replay", rung, QAState, cache_only=True)
    report = await replay.run(cache)
    for arm in report["arms"]:
        assert (arm["em"], arm["answers_from_cache"], arm["flops_spent_now"]) == (1.0, 5, 0)
    assert report["meta"]["replay"].startswith("answers only from the response cache")

    cold = await Comparison(cfg, examples, small, large, tmp_path / "cold", rung, QAState, cache_only=True).run(
        tmp_path / "empty.sqlite"
    )
    assert [a["errors"] for a in cold["arms"]] == [5, 5]
    assert "is not in the response cache" in cold["arms"][0]["first_error"]["error"]
    assert len(small.requests) == 5  # the first run's five: a replay never asks the model it was given


async def test_a_run_budget_caps_the_whole_run_and_each_arm_has_its_bill(tmp_path: Path) -> None:
    from agentflow import BudgetLimits

    examples = _examples()
    small, large = oracle(SMALL, right=set(GOLD), prob=0.9), oracle(LARGE, right=set(GOLD), prob=0.9)
    started: list[str] = []
    comparison = Comparison(
        _config(examples, arms=("small", "large")),
        examples,
        small,
        large,
        tmp_path,
        rung,
        QAState,
        run_limits=BudgetLimits(requests=3),
        on_arm=started.append,
    )
    report = await comparison.run()
    assert started == ["small", "large"]
    assert len(small.requests) + len(large.requests) == 3
    assert comparison.bills["small"].requests == 3 and comparison.bills["large"].requests == 0
    arms = {a["name"]: a for a in report["arms"]}
    assert (arms["small"]["errors"], arms["large"]["errors"]) == (2, 5)
    assert "BudgetExceeded" in arms["large"]["first_error"]["error"]
    assert report["meta"]["budget per run"] == "requests 3"
