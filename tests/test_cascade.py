"""Cascades of whole workflows: a question escalates from one (workflow, model) rung to the next only
when the rung's confidence, read from its final state, is below its threshold."""

from __future__ import annotations

import math
from typing import Any

import pytest

from agentflow import (
    END,
    START,
    AgreementShare,
    AnswerTokenProb,
    Budget,
    BudgetExceeded,
    BudgetLimits,
    Cascade,
    Completion,
    ConfigError,
    Ctx,
    Event,
    GraphBuilder,
    LearnedConfidence,
    Rung,
    ServerError,
    ServerUnavailableError,
    StateUpdated,
    Thresholds,
    TokenLogprob,
    Usage,
    VerifierYes,
    observe,
)
from agentflow.eval import Paragraph, load_dataset
from agentflow.testing import FunctionModel, Reply, ScriptedModel
from workflows import QADeps, QAState, build, rung

SMALL, LARGE = "qwen2.5-coder-0.5b", "qwen2.5-coder-1.5b"
PARAS = [
    Paragraph("Alpha", "Alpha is a city founded in 1901 by Jane Roe."),
    Paragraph("Beta", "Beta is a river in the north."),
    Paragraph("Gamma", "Gamma is a village near Beta."),
]
Q = "Who founded Alpha?"


def question() -> QAState:
    return QAState(question=Q, paragraphs=PARAS)


def models(small: list[Any], large: list[Any]) -> tuple[ScriptedModel, ScriptedModel]:
    return ScriptedModel(small, name=SMALL), ScriptedModel(large, name=LARGE)


# --- escalation on each estimator ---------------------------------------------------------------


async def test_agreement_share_of_self_consistency_keeps_a_confident_answer_on_the_small_rung() -> None:
    small, large = models(["Jane Roe", "Jane Roe"], [])
    cascade = Cascade([rung("sc", small, confidence=AgreementShare(), threshold=0.6), rung("direct", large)])
    result = await cascade.run(question())
    assert (result.state.answer, result.rung, result.name) == ("Jane Roe", 0, f"sc@{SMALL}")
    assert result.score == 1.0 and result.state.agreement == 1.0
    assert large.requests == []  # never asked
    [d] = result.decisions
    assert (d.escalated, d.score, d.threshold) == (False, 1.0, 0.6) and d.why.startswith("confident")


async def test_low_agreement_escalates_the_whole_question_to_the_next_workflow() -> None:
    small, large = models(["Jane Roe", "John Doe", "Bob", "Al", "Zed"], ["Jane Roe"])
    cascade = Cascade([rung("sc", small, confidence=AgreementShare(), threshold=0.6), rung("direct", large)])
    result = await cascade.run(question())
    assert (result.state.answer, result.rung) == ("Jane Roe", 1)
    assert len(small.requests) == 5  # the whole sc workflow ran on the small model, then the question moved on
    assert len(large.requests) == 1
    first, top = result.decisions
    assert first.escalated and first.score == pytest.approx(0.2) and "not confident" in first.why
    assert not top.escalated and top.threshold is None and "top rung" in top.why
    assert result.state.agreement is None  # the final state is the top rung's own, started afresh
    assert result.escalations == 1


def judge(p_yes: float) -> ScriptedModel:
    """A verifier that says "yes" (parsed, as a constrained server would) with P(yes) = p_yes."""
    top = (("yes", math.log(p_yes)), ("no", math.log(1 - p_yes)))
    verdict = Completion("yes", "judge", "stop", Usage(1, 50, 1), (TokenLogprob("yes", top[0][1], top),), "yes")
    return ScriptedModel([verdict], cycle=True, name="judge")


async def test_verifier_probability_of_yes_decides() -> None:
    for p_yes, escalated in [(0.95, False), (0.3, True)]:
        small, large = models(["Jane Roe"], ["Jane Roe (large)"])
        sure = rung("verify", small, verifier=judge(p_yes), confidence=VerifierYes(), threshold=0.8)
        result = await Cascade([sure, rung("direct", large)]).run(question())
        first = result.decisions[0]
        assert first.score == pytest.approx(p_yes) and first.escalated is escalated
        assert result.rung == int(escalated)


async def test_token_probability_of_the_final_answer_decides_and_asks_for_logprobs() -> None:
    for prob, rung_index in [(0.9, 0), (0.2, 1)]:
        small, large = models([Reply("Jane Roe", prob=prob)], ["Jane Roe"])
        cascade = Cascade([rung("direct", small, confidence=AnswerTokenProb("mean")), rung("direct", large, name="L")])
        result = await cascade.run(question())
        assert result.rung == rung_index and result.decisions[0].score == pytest.approx(prob)
        (req,) = small.requests
        assert req.logprobs and req.top_logprobs == 1  # as a router with TokenProb asks: one cache entry for both
        assert not large.requests or not large.requests[0].logprobs  # the top rung is not scored, not asked


async def test_combined_and_learned_confidences_decide() -> None:
    small, large = models([Reply("Jane Roe", prob=0.9)] * 2, ["x"])
    both = AgreementShare() & AnswerTokenProb("min")
    result = await Cascade([rung("sc", small, confidence=both, threshold=0.85), rung("direct", large)]).run(question())
    assert result.rung == 0 and result.score == pytest.approx(0.9)

    # a learned model that only trusts answers found in the paragraphs read
    learned = LearnedConfidence(("answer_in_context",), (0.5,), (0.5,), (4.0,), 0.0)
    for answer, rung_index in [("Jane Roe", 0), ("Napoleon", 1)]:
        small, large = models([answer], ["Jane Roe"])
        result = await Cascade([rung("direct", small, confidence=learned), rung("direct", large, name="L")]).run(
            question()
        )
        assert result.rung == rung_index


async def test_a_confidence_with_nothing_to_read_or_failing_escalates_with_the_reason() -> None:
    small, large = models(["Jane Roe"], ["Jane Roe"])
    # the direct workflow records no agreement: nothing to read
    result = await Cascade([rung("direct", small, confidence=AgreementShare()), rung("direct", large, name="L")]).run(
        question()
    )
    assert result.rung == 1 and result.decisions[0].score is None
    assert "nothing to read" in result.decisions[0].why

    def broken(state: QAState) -> float:
        return 1.5

    small, large = models(["Jane Roe"], ["Jane Roe"])
    result = await Cascade([rung("direct", small, confidence=broken), rung("direct", large, name="L")]).run(question())
    assert result.rung == 1 and "not a score in [0, 1]" in result.decisions[0].why


async def test_async_confidence_and_thresholds_from_a_calibration() -> None:
    async def sure(state: QAState) -> float:
        return 0.5

    small, large = models(["Jane Roe"] * 2, ["Jane Roe"] * 2)
    rungs = [rung("direct", small, confidence=sure, name="s"), rung("direct", large, name="l")]
    assert (await Cascade(rungs).run(question())).rung == 1  # 0.5 < the default 0.7
    calibrated = Cascade(rungs, thresholds=Thresholds((0.4,), ("s", "l")))
    assert calibrated.rungs[0].threshold == 0.4
    assert (await calibrated.run(question())).rung == 0
    with pytest.raises(ConfigError, match="calibrated for the ladder"):
        Cascade(rungs, thresholds=Thresholds((0.4,), ("a", "b")))


# --- budget -------------------------------------------------------------------------------------


async def test_degrade_keeps_the_best_answer_when_the_next_rung_cannot_be_afforded() -> None:
    small, large = models(["Jane Roe", "John Doe", "Bob"], ["never asked"])
    budget = Budget(BudgetLimits(requests=3), policy="degrade")
    sc = rung("sc", small, confidence=AgreementShare(), threshold=0.9, budget=budget)
    from workflows import self_consistency

    sc = Rung(self_consistency.build(k=3), sc.deps, confidence=sc.confidence, threshold=0.9, name="sc", cost=sc.cost)
    result = await Cascade([sc, rung("direct", large, budget=budget)], budget=budget).run(question())
    assert large.requests == []  # not started
    assert (result.rung, result.state.answer, result.degraded) == (0, "Jane Roe", True)
    [d] = result.decisions
    assert d.degraded and not d.escalated and "cannot afford the next rung" in d.why
    bill = budget.bill()
    assert bill.requests == 3 and bill.escalations == 0 and len(bill.degradations) == 1
    assert result.degradations[0] in bill.degradations[0]


async def test_raise_policy_raises_budget_exceeded_before_starting_the_rung() -> None:
    small, large = models(["Beta"], ["never asked"])
    budget = Budget(BudgetLimits(requests=1))  # policy "raise"
    cascade = Cascade(
        [rung("direct", small, confidence=AgreementShare(), budget=budget), rung("direct", large, budget=budget)],
        budget=budget,
    )
    with pytest.raises(BudgetExceeded, match="requests"):
        await cascade.run(question())
    assert large.requests == [] and budget.spent.requests == 1


async def test_the_first_rung_unaffordable_raises_even_when_degrading() -> None:
    small, large = models(["never asked"], ["never asked"])
    budget = Budget(BudgetLimits(completion_tokens=10), policy="degrade")  # a 32-token answer does not fit
    cascade = Cascade(
        [rung("direct", small, confidence=AgreementShare(), budget=budget), rung("direct", large, budget=budget)],
        budget=budget,
    )
    with pytest.raises(BudgetExceeded, match="completion_tokens"):
        await cascade.run(question())
    assert small.requests == []


async def test_a_rung_that_runs_out_of_budget_inside_degrades_to_the_best_so_far() -> None:
    small, large = models([Reply("Jane Roe", prob=0.4)], ["never answered"])
    budget = Budget(BudgetLimits(requests=1), policy="degrade")
    first = rung("direct", small, confidence=AnswerTokenProb(), budget=budget)
    top = rung("direct", large, budget=budget)
    top.cost = None  # no estimate: the rung starts, and its own call refuses
    result = await Cascade([first, top], budget=budget).run(question())
    assert result.rung == 0 and result.state.answer == "Jane Roe" and result.degraded
    assert (
        result.decisions[0].escalated and result.decisions[1].degraded and "ran out of budget" in result.degradations[0]
    )


async def test_models_outside_the_cascade_budget_are_refused_loudly() -> None:
    small, large = models(["x"], ["y"])
    budget = Budget(BudgetLimits(requests=5))
    cascade = Cascade([rung("direct", small, confidence=AgreementShare()), rung("direct", large)], budget=budget)
    with pytest.raises(ConfigError, match=r"outside the cascade's budget.*budget\.wrap"):
        await cascade.run(question())


# --- decisions, usage, tracing ------------------------------------------------------------------


async def test_per_question_decisions_usage_and_trace_are_recorded() -> None:
    small = observe(ScriptedModel([Reply("Beta", prob=0.3), Reply("Jane Roe", prob=0.95)], name=SMALL))
    large = observe(ScriptedModel(["Jane Roe"], name=LARGE))
    budget = Budget(BudgetLimits(requests=10), policy="degrade")
    cascade = Cascade(
        [rung("direct", small, confidence=AnswerTokenProb(), budget=budget), rung("direct", large, budget=budget)],
        budget=budget,
    )
    seen: list[Event] = []
    unsure = await cascade.run(question(), listeners=[seen.append], run_id="q1")
    sure = await cascade.run(question(), run_id="q2")
    assert [d.escalated for d in unsure.decisions] == [True, False]
    assert [d.escalated for d in sure.decisions] == [False]
    assert [d.usage.requests for d in unsure.decisions] == [1, 1] and unsure.usage.requests == 2
    assert unsure.to_dict()["decisions"][0]["usage"]["requests"] == 1 and len(unsure.records) == 2
    traced = [e for e in seen if isinstance(e, StateUpdated) and e.node.startswith("cascade/")]
    assert [e.update for e in traced] == [d.to_dict() for d in unsure.decisions]
    assert {e.run_id for e in traced} == {"q1"}
    assert any(getattr(e, "run_id", "") == f"q1/direct@{SMALL}" for e in seen)  # the rungs' graph events too
    assert budget.bill().escalations == 1


async def test_a_cascade_inside_a_graph_node_reports_to_that_run() -> None:
    small, large = models(["Beta"], ["Jane Roe"])
    cascade = Cascade([rung("direct", small, confidence=AgreementShare()), rung("direct", large, name="top")])

    async def answer(state: QAState, ctx: Ctx[QAState, None]) -> dict[str, object]:
        return {"answer": (await cascade.run(state)).state.answer}

    g: GraphBuilder[QAState, None] = GraphBuilder(QAState, name="outer")
    g.add_node("answer", answer)
    g.add_sequence(START, "answer", END)
    seen: list[Event] = []
    state, _ = await g.compile().run(question(), listeners=[seen.append])
    assert state.answer == "Jane Roe"
    assert [e.node for e in seen if isinstance(e, StateUpdated) and e.node.startswith("cascade/")] == [
        f"cascade/direct@{SMALL}",
        "cascade/top",
    ]


async def test_a_failing_rung_raises_or_escalates_as_configured() -> None:
    def down(req: Any) -> str:
        raise ServerError("down", status_code=503)

    broken = FunctionModel(down, name=SMALL)
    large = ScriptedModel(["Jane Roe"], cycle=True, name=LARGE)
    rungs = [rung("direct", broken, confidence=AgreementShare()), rung("direct", large)]
    with pytest.raises(Exception, match="down"):
        await Cascade(rungs).run(question())
    result = await Cascade(rungs, on_error="escalate").run(question())
    assert result.rung == 1 and result.decisions[0].escalated and "ServerError" in result.decisions[0].why


async def test_a_rung_whose_server_is_down_falls_back_whatever_on_error_says() -> None:
    def down(req: Any) -> str:
        raise ServerUnavailableError("could not reach the model server at http://x/v1")

    budget = Budget()
    large = ScriptedModel(["Jane Roe"], cycle=True, name=LARGE)
    small = FunctionModel(down, name=SMALL)
    rungs = [rung("direct", small, confidence=AgreementShare(), budget=budget), rung("direct", large, budget=budget)]
    result = await Cascade(rungs, budget=budget).run(question())  # on_error="raise"
    assert (result.rung, result.state.answer) == (1, "Jane Roe")
    first = result.decisions[0]
    assert first.escalated and first.score is None and first.started
    assert first.why == (
        "no answer (ServerUnavailableError: could not reach the model server at http://x/v1); "
        "falling back to the next rung"
    )
    assert result.to_dict()["decisions"][0]["why"] == first.why and budget.bill().escalations == 1
    with pytest.raises(Exception, match="could not reach"):
        await Cascade(rungs, fallback_on=()).run(question())
    with pytest.raises(Exception, match="could not reach"):  # the top rung's failure is the question's
        first_large = rung("direct", large, confidence=AgreementShare())  # answers, but is never sure
        await Cascade([first_large, rung("direct", FunctionModel(down, name="x"))]).run(question())


# --- configuration errors -----------------------------------------------------------------------


def test_workflow_defaults_and_the_k_check_come_from_one_place() -> None:
    import inspect

    from agentflow import DEFAULT_ANSWER_TOKENS, DEFAULT_REASONING_TOKENS, check_k
    from agentflow.eval import top_paragraphs
    from workflows import with_retrieval

    small, _ = models([], [])
    deps = QADeps(model=small)
    assert (deps.max_tokens, deps.reasoning_tokens) == (DEFAULT_ANSWER_TOKENS, DEFAULT_REASONING_TOKENS)
    assert inspect.signature(rung).parameters["max_tokens"].default == DEFAULT_ANSWER_TOKENS
    assert rung("direct", small).deps.max_tokens == DEFAULT_ANSWER_TOKENS
    assert check_k(3) == 3
    message = "k must be >= 1, got 0: pass how many paragraphs the model should read"
    for bad in (
        lambda: check_k(0),
        lambda: with_retrieval(build("direct"), k=0),
        lambda: top_paragraphs("q", PARAS, k=0),
        lambda: rung("direct", small, retrieve_k=0),
    ):
        with pytest.raises(ConfigError, match=message):
            bad()
    with pytest.raises(ConfigError, match=r"retrieve_k must be >= 1, got True"):
        check_k(True, name="retrieve_k")


def test_configuration_mistakes_are_errors_that_say_the_fix() -> None:
    small, large = models([], [])
    top = rung("direct", large)
    with pytest.raises(ConfigError, match="at least two rungs"):
        Cascade([top])
    with pytest.raises(ConfigError, match="no confidence"):
        Cascade([rung("direct", small), top])
    with pytest.raises(ConfigError, match="distinct name"):
        Cascade([rung("direct", small, confidence=AgreementShare(), name="x"), rung("direct", large, name="x")])
    with pytest.raises(ConfigError, match=r"threshold 1\.5"):
        Rung(build("direct"), QADeps(model=small), threshold=1.5)
    with pytest.raises(ConfigError, match="pass QADeps"):
        Rung(build("direct"), object())
    with pytest.raises(ConfigError, match="on_error"):
        Cascade([rung("direct", small, confidence=AgreementShare()), top], on_error="ignore")  # type: ignore[arg-type]

    class Other(QAState):
        pass

    g: GraphBuilder[Other, QADeps] = GraphBuilder(Other, deps=QADeps, name="other")
    g.add_node("n", lambda s: {})
    g.add_sequence(START, "n", END)
    with pytest.raises(ConfigError, match="same state type"):
        Cascade([rung("direct", small, confidence=AgreementShare()), Rung(g.compile(), QADeps(model=large))])
    assert math.isinf(Rung(build("direct"), QADeps(model=small), threshold=math.inf).threshold)


# --- on the real local models -------------------------------------------------------------------


@pytest.mark.real_model
async def test_real_two_rung_cascade_on_two_hotpotqa_questions(small_client: Any, large_client: Any) -> None:
    budget = Budget(BudgetLimits(requests=20, flops=1e15), policy="degrade")
    cascade = Cascade(
        [
            rung(
                "direct", small_client, confidence=AnswerTokenProb("mean"), threshold=0.9, retrieve_k=2, budget=budget
            ),
            rung("direct", large_client, budget=budget),
        ],
        budget=budget,
    )
    escalations, attempts = 0, 0
    for ex in load_dataset("hotpotqa", rows=[0, 1]):
        result = await cascade.run(QAState(question=ex.question, paragraphs=list(ex.paragraphs)))
        first = result.decisions[0]
        assert first.score is not None and 0.0 < first.score <= 1.0  # a real token probability, read from the state
        assert first.usage.requests >= 1 and result.state.answer.strip()  # more than 1 only if an attempt was retried
        attempts += sum(d.usage.requests for d in result.decisions)
        assert result.rung == (1 if first.escalated else 0) and len(result.decisions) == 1 + first.escalated
        escalations += first.escalated
    bill = budget.bill()
    assert bill.escalations == escalations and bill.overshoots == 0
    assert bill.requests == attempts >= 2 + escalations  # every attempt on the bill, once
