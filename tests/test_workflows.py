"""The ready-made workflows, each driven by a deterministic scripted model."""

from __future__ import annotations

import math

import pytest

from agentflow import (
    Budget,
    BudgetLimits,
    ChatRequest,
    ChoiceOutput,
    Completion,
    ConfigError,
    Router,
    TokenLogprob,
    TokenProb,
    Usage,
)
from agentflow.eval import Paragraph
from agentflow.testing import FunctionModel, Reply, ScriptedModel
from workflows import QADeps, QAState, build, clean_answer, rung, short_span_rule

PARAS = [
    Paragraph("Alpha", "Alpha is a city founded in 1901 by Jane Roe."),
    Paragraph("Beta", "Beta is a river in the north."),
    Paragraph("Gamma", "Gamma is a village near Beta."),
]
Q = "Who founded Alpha?"


def _state() -> QAState:
    return QAState(question=Q, paragraphs=PARAS)


async def test_direct_answers_once_with_paragraphs_first_and_question_last() -> None:
    model = ScriptedModel(["Jane Roe."])
    state, record = await build("direct").run(_state(), deps=QADeps(model=model))
    assert state.answer == "Jane Roe"
    assert record.nodes == ["answer"]
    (req,) = model.requests
    user = req.messages[-1].content
    assert user.index("Title: Alpha") < user.index("Question: Who founded Alpha?")
    assert req.max_tokens == 32  # conservative default


async def test_retrieval_narrows_the_context_the_model_reads() -> None:
    model = ScriptedModel(["Jane Roe"])
    state, record = await build("direct", retrieve_k=1).run(_state(), deps=QADeps(model=model))
    assert record.nodes[:1] == ["retrieve"]
    assert [p.title for p in state.context or []] == ["Alpha"]
    user = model.requests[0].messages[-1].content
    assert "Title: Alpha" in user and "Title: Beta" not in user


async def test_cot_extracts_the_final_answer_line() -> None:
    model = ScriptedModel(["Alpha's paragraph names its founder.\nAnswer: Jane Roe"])
    state, _ = await build("cot").run(_state(), deps=QADeps(model=model))
    assert state.answer == "Jane Roe"
    assert model.requests[0].max_tokens == 160


async def test_self_consistency_stops_as_soon_as_two_answers_agree() -> None:
    model = ScriptedModel(["Jane Roe", "John Doe", "jane roe.", "never asked"])
    state, record = await build("sc").run(_state(), deps=QADeps(model=model))
    assert len(model.requests) == 3
    assert state.answer == "Jane Roe"
    assert state.confidence == pytest.approx(2 / 3)
    assert model.requests[0].temperature == 0.0 and model.requests[1].temperature > 0
    assert record.visits["sample"] == 3


async def test_self_consistency_never_samples_more_than_k() -> None:
    model = ScriptedModel([f"answer {i}" for i in range(10)])
    from workflows import self_consistency

    state, _ = await self_consistency.build(k=4, agree=2).run(_state(), deps=QADeps(model=model))
    assert len(model.requests) == 4
    assert state.answer == "answer 0"  # no majority: the first (greedy) sample wins the tie
    assert state.confidence == pytest.approx(1 / 4)


async def test_self_consistency_samples_fewer_when_the_budget_cannot_afford_more() -> None:
    model = ScriptedModel(["A", "B", "C", "D", "E"])
    budget = Budget(BudgetLimits(requests=2), policy="degrade")
    state, _ = await build("sc").run(_state(), deps=QADeps(model=budget.wrap(model), budget=budget))
    assert len(model.requests) == 2
    assert state.degraded


async def test_verify_accepts_a_good_answer_without_retrying() -> None:
    model = ScriptedModel(["Jane Roe"])
    state, record = await build("verify").run(_state(), deps=QADeps(model=model, rule=short_span_rule))
    assert state.accepted is True and state.answer == "Jane Roe"
    assert record.nodes == ["answer", "verify"]


async def test_verify_retries_with_feedback_then_accepts() -> None:
    model = ScriptedModel(["It was founded by a woman whose name was Jane Roe in the year 1901", "Jane Roe"])
    state, _ = await build("verify").run(_state(), deps=QADeps(model=model, rule=short_span_rule))
    assert state.accepted is True and state.answer == "Jane Roe"
    retry = model.requests[1].messages[-1].content
    assert "Earlier answers were rejected" in retry and "sentence" in retry


async def test_verify_loop_hits_its_bound_and_keeps_the_last_answer() -> None:
    model = ScriptedModel(["wrong"], cycle=True)
    verifier = ScriptedModel([Reply("no")], cycle=True, name="judge")
    from workflows import verify

    state, record = await verify.build(max_attempts=3).run(_state(), deps=QADeps(model=model, verifier=verifier))
    assert len(model.requests) == 3
    assert record.visits["answer"] == 3
    assert state.accepted is False
    assert state.answer == "wrong"
    assert len(state.notes) == 3


async def test_verify_with_a_model_judge_sends_a_constrained_yes_no() -> None:
    model = ScriptedModel(["Jane Roe"])
    judge = ScriptedModel([Completion("yes", "judge", "stop", Usage(1, 50, 1), parsed="yes")], name="judge")
    state, _ = await build("verify").run(_state(), deps=QADeps(model=model, verifier=judge))
    assert state.accepted is True
    (req,) = judge.requests
    assert req.output == ChoiceOutput(("yes", "no"))
    assert "Proposed answer: Jane Roe" in req.messages[-1].content


async def test_verify_without_a_verifier_is_a_clear_error() -> None:
    with pytest.raises(Exception, match="needs a verifier"):
        await build("verify").run(_state(), deps=QADeps(model=ScriptedModel(["x"])))


async def test_decompose_answers_subquestions_in_turn_then_composes() -> None:
    from workflows.decompose import Plan

    def reply(req: ChatRequest) -> object:
        if req.output is not None:
            plan = Plan(subquestions=["Which city is named Alpha?", "Who founded #1?"])
            return Completion(plan.model_dump_json(), "m", "stop", Usage(1, 10, 10), parsed=plan)
        q = req.messages[-1].content
        if "Findings" in q:
            return "Jane Roe"
        return "Alpha" if "Which city" in q else "Jane Roe"

    model = FunctionModel(reply)  # type: ignore[arg-type]
    state, record = await build("decompose").run(_state(), deps=QADeps(model=model))
    assert record.nodes == ["plan", "sub", "sub", "compose"]
    assert state.notes == ["Which city is named Alpha? -> Alpha", "Who founded Alpha? -> Jane Roe"]
    assert "Findings" in model.requests[-1].messages[-1].content
    assert state.answer == "Jane Roe"


async def test_workflow_runs_behind_the_router_and_escalates_on_low_confidence() -> None:
    small = ScriptedModel([Reply("Beta", prob=0.3)], name="small")
    large = ScriptedModel([Reply("Jane Roe", prob=0.95)], name="large")
    router = Router([small, large], estimator=TokenProb("mean"), thresholds=[0.8])
    state, _ = await build("direct", retrieve_k=2).run(_state(), deps=QADeps(model=router))
    assert state.answer == "Jane Roe"
    assert router.decisions[0].escalated and router.decisions[-1].model == "large"


def test_unknown_workflow_and_bad_settings_are_clear_errors() -> None:
    with pytest.raises(ConfigError, match="choose one of"):
        build("nope")
    from workflows import self_consistency, with_retrieval

    with pytest.raises(ConfigError, match="agree"):
        self_consistency.build(k=2, agree=3)
    with pytest.raises(ConfigError, match="k >= 1"):
        with_retrieval(build("direct"), k=0)


@pytest.mark.parametrize(
    ("raw", "want"),
    [("Jane Roe.", "Jane Roe"), ("Reasoning.\nAnswer: 1901", "1901"), ("answer: yes\nmore", "yes"), ('"X"', "X")],
)
def test_clean_answer(raw: str, want: str) -> None:
    assert clean_answer(raw) == want


# --- evidence in the final state (for cascades) -------------------------------------------------


async def test_direct_requests_are_unchanged_by_default_and_ask_for_logprobs_only_when_told() -> None:
    from workflows import direct
    from workflows._common import answer_request

    model = ScriptedModel(["Jane Roe."])
    state, _ = await build("direct").run(_state(), deps=QADeps(model=model))
    assert model.requests[0] == answer_request(_state(), direct.INSTRUCTIONS, max_tokens=32)  # as before
    assert state.answer_logprobs is None  # the model was not asked for any

    model = ScriptedModel([Reply("Jane Roe.", prob=0.8)])
    state, _ = await build("direct").run(_state(), deps=QADeps(model=model, logprobs=1))
    (req,) = model.requests
    assert req.logprobs and req.top_logprobs == 1
    assert req == TokenProb("mean").prepare(answer_request(_state(), direct.INSTRUCTIONS, max_tokens=32))
    assert state.answer_logprobs is not None and len(state.answer_logprobs) == 2  # "Jane", " Roe": not the "."


async def test_cot_records_the_logprobs_of_the_answer_line_only() -> None:
    reply = Completion(
        "Alpha names him.\nAnswer: Jane Roe",
        "m",
        "stop",
        Usage(1, 10, 6),
        logprobs=tuple(
            TokenLogprob(t, lp)
            for t, lp in [("Alpha", -2.0), (" names him.", -2.0), ("\nAnswer:", -2.0), (" Jane", -0.1), (" Roe", -0.2)]
        ),
    )
    state, _ = await build("cot").run(_state(), deps=QADeps(model=ScriptedModel([reply])))
    assert state.answer == "Jane Roe" and state.answer_logprobs == [-0.1, -0.2]


async def test_self_consistency_agreement_is_semantic_and_stops_early() -> None:
    model = ScriptedModel(["Jane Roe", "Roe.", "never asked"])  # one contains the other: they agree
    state, record = await build("sc").run(_state(), deps=QADeps(model=model))
    assert len(model.requests) == 2 and record.visits["sample"] == 2
    assert state.answer == "Jane Roe" and state.agreement == 1.0 and state.confidence == 1.0
    model = ScriptedModel(["1", "1901", "Bob", "Al", "Zed"])  # "1" is not inside "1901"
    state, _ = await build("sc").run(_state(), deps=QADeps(model=model))
    assert len(model.requests) == 5 and state.agreement == pytest.approx(1 / 5) and state.answer == "1"


async def test_self_consistency_keeps_the_winners_logprobs() -> None:
    model = ScriptedModel([Reply("Bob", prob=0.3), Reply("Jane Roe", prob=0.6), Reply("jane roe", prob=0.9)])
    state, _ = await build("sc").run(_state(), deps=QADeps(model=model, logprobs=1))
    assert state.answer == "Jane Roe" and state.agreement == pytest.approx(2 / 3)
    assert state.answer_logprobs == pytest.approx([math.log(0.6)] * 2)  # the first winning sample's tokens


async def test_verify_records_the_verifiers_probability_of_yes() -> None:
    top = (("yes", math.log(0.3)), ("no", math.log(0.6)))
    no = Completion("no", "judge", "stop", Usage(1, 50, 1), (TokenLogprob("no", top[1][1], top),), "no")
    top2 = (("yes", math.log(0.9)), ("no", math.log(0.1)))
    yes = Completion("yes", "judge", "stop", Usage(1, 50, 1), (TokenLogprob("yes", top2[0][1], top2),), "yes")
    judge = ScriptedModel([no, yes], name="judge")
    model = ScriptedModel(["Bob", "Jane Roe"])
    state, _ = await build("verify").run(_state(), deps=QADeps(model=model, verifier=judge))
    assert state.answer == "Jane Roe" and state.accepted is True
    assert state.verifier_p_yes == pytest.approx(0.9)  # of the final answer, not the rejected one
    assert all(r.logprobs and r.top_logprobs >= 2 for r in judge.requests)  # P(yes) needs the alternatives
    # a server without logprobs: the verdict still decides, P(yes) is unknown
    judge = ScriptedModel([Completion("yes", "judge", "stop", Usage(1, 50, 1), parsed="yes")], name="judge")
    state, _ = await build("verify").run(_state(), deps=QADeps(model=ScriptedModel(["Jane Roe"]), verifier=judge))
    assert state.accepted is True and state.verifier_p_yes is None


async def test_rung_builds_a_cascade_step_with_budgeted_models_and_its_least_calls() -> None:
    from agentflow import AgreementShare, AnswerTokenProb, BudgetedModel

    budget = Budget(BudgetLimits(requests=10))
    small = ScriptedModel([], name="qwen2.5-coder-0.5b")
    step = rung("sc", small, confidence=AgreementShare(), threshold=0.6, retrieve_k=1, budget=budget)
    assert step.name == "sc@qwen2.5-coder-0.5b" and step.threshold == 0.6
    assert isinstance(step.deps.model, BudgetedModel) and step.deps.model.budget is budget
    assert step.deps.logprobs == 0  # agreement needs no logprobs: requests stay as they were
    assert step.cost is not None
    calls = list(step.cost(_state()))
    assert len(calls) == 2  # two samples at the least: the fewest that can agree
    user = calls[0][0].messages[-1].content
    assert "Title: Alpha" in user and "Title: Beta" not in user  # estimated on what retrieval leaves
    assert rung("direct", small, confidence=AnswerTokenProb()).deps.logprobs == 1
    judged = rung("verify", small, verifier=ScriptedModel([], name="judge"))
    assert judged.deps.rule is None and len(list(judged.cost(_state()))) == 2  # type: ignore[misc]
    assert len(list(rung("verify", small).cost(_state()))) == 1  # type: ignore[misc]  # a rule costs nothing
