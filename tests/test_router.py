from __future__ import annotations

import math
from pathlib import Path

import pytest

from agentflow._budget import Budget, BudgetedModel, BudgetLimits, estimate_prompt_tokens
from agentflow._calibration import DEFAULT_THRESHOLD, Thresholds
from agentflow._catalog import get_model
from agentflow._confidence import Agreement, ConfidenceError, TokenProb, Verifier, estimator
from agentflow._exceptions import (
    BudgetExceeded,
    ConfigError,
    ModelTimeoutError,
    RequestRejectedError,
    ServerUnavailableError,
)
from agentflow._router import RouteDecision, Router
from agentflow._types import ChatRequest, Completion, Model, Usage
from agentflow.testing import FunctionModel, Reply, ScriptedModel

SMOKE, SMALL, LARGE = "smollm2-135m", "qwen2.5-coder-0.5b", "qwen2.5-coder-1.5b"
Q = ChatRequest.of("What is 2 + 2?", max_tokens=16)


def ladder(*replies: list[Reply | str | Completion]) -> list[ScriptedModel]:
    names = [SMOKE, SMALL, LARGE]
    return [ScriptedModel(r, name=names[i]) for i, r in enumerate(replies)]


async def test_first_rung_confident_answers_and_never_calls_the_next() -> None:
    small, large = ladder([Reply("4", prob=0.95)], [])
    seen: list[RouteDecision] = []
    router = Router([small, large], thresholds=[0.8], listener=seen.append)
    assert isinstance(router, Model) and router.name == f"router:{SMOKE}>{SMALL}"
    out = await router.complete(Q)
    assert out.text == "4" and out.model == SMOKE
    assert large.requests == []
    assert small.requests[0].logprobs  # the router asked for the logprobs its estimator reads
    assert small.requests[0].top_logprobs >= 1  # llama.cpp sends no logprobs without it
    [d] = router.decisions
    assert seen == [d]
    assert (d.model, d.escalated, d.threshold) == (SMOKE, False, 0.8)
    assert d.score == pytest.approx(0.95) and "confident" in d.reason
    assert out.meta["route"] == [d.to_dict()] and out.meta["confidence"] == pytest.approx(0.95)
    assert "degraded" not in out.meta


async def test_escalates_once_to_a_confident_middle_rung() -> None:
    a, b, c = ladder([Reply("5", prob=0.3)], [Reply("4", prob=0.9)], [])
    router = Router([a, b, c], thresholds=[0.7, 0.8])
    out = await router.complete(Q)
    assert (out.text, out.model) == ("4", SMALL)
    assert c.requests == []
    first, second = router.decisions
    assert first.escalated and first.score == pytest.approx(0.3) and "escalating" in first.reason
    assert not second.escalated and second.model == SMALL
    assert [r["model"] for r in out.meta["route"]] == [SMOKE, SMALL]
    assert out.usage.requests == 2  # the router's answer costs every rung it tried
    assert out.meta["answer_usage"]["requests"] == 1


async def test_escalates_to_top_and_top_is_final() -> None:
    a, b, c = ladder([Reply("5", prob=0.3)], [Reply("3", prob=0.4)], [Reply("4", prob=0.1)])
    router = Router([a, b, c], thresholds={SMOKE: 0.7, SMALL: 0.7})
    out = await router.complete(Q)
    assert (out.text, out.model) == ("4", LARGE)
    top = router.decisions[-1]
    assert (top.model, top.score, top.threshold, top.escalated) == (LARGE, None, None, False)
    assert "final" in top.reason
    assert a.requests[0].logprobs and not c.requests[0].logprobs  # the top rung is not scored
    assert [d.escalated for d in router.decisions] == [True, True, False]


async def test_budget_prevents_escalation_and_returns_degraded_best_so_far() -> None:
    # a FLOPs cap that fits the smoke call but not the next rung
    req = Q.with_(logprobs=True)
    per_call = estimate_prompt_tokens(req) + req.max_tokens
    cap = get_model(SMALL).flops(per_call) - 1  # the smoke call fits, the 0.5B call never does
    budget = Budget(BudgetLimits(flops=cap), policy="degrade")
    small, large = ladder([Reply("5", prob=0.3)], [])
    router = Router([small, large], thresholds=[0.7], budget=budget)
    out = await router.complete(Q)
    assert (out.text, out.model) == ("5", SMOKE)
    assert out.meta["degraded"] is True and "cannot afford" in out.meta["degraded_reason"]
    [d] = router.decisions
    assert d.degraded and not d.escalated and "not escalated" in d.reason
    assert large.requests == []
    bill = budget.bill()
    assert bill.escalations == 0 and len(bill.degradations) == 1 and bill.requests == 1


async def test_degraded_returns_the_best_scored_answer() -> None:
    budget = Budget(BudgetLimits(requests=2), policy="degrade")
    a, b, c = ladder([Reply("good", prob=0.6)], [Reply("worse", prob=0.4)], [])
    router = Router([a, b, c], thresholds=[0.9, 0.9], budget=budget)
    out = await router.complete(Q)
    assert out.text == "good" and out.model == SMOKE and out.meta["degraded"]
    assert budget.bill().escalations == 1


async def test_budget_under_raise_policy_raises_on_escalation() -> None:
    budget = Budget(BudgetLimits(requests=1))
    small, large = ladder([Reply("5", prob=0.3)], [])
    router = Router([small, large], budget=budget)
    with pytest.raises(BudgetExceeded, match="requests"):
        await router.complete(Q)


async def test_router_wraps_rungs_in_its_budget_and_bills_them() -> None:
    budget = Budget()
    small, large = ladder([Reply("5", prob=0.3, completion_tokens=1)], [Reply("4", completion_tokens=1)])
    pre = budget.wrap(small)
    router = Router([pre, large], budget=budget)
    assert router.ladder[0] is pre and isinstance(router.ladder[1], BudgetedModel)
    await router.complete(Q)
    bill = budget.bill()
    assert bill.models[SMOKE].requests == 1 and bill.models[SMALL].requests == 1
    assert bill.escalations == 1


async def test_estimator_failure_escalates_by_default() -> None:
    bare = Completion("5", SMOKE, "stop", Usage(1, 3, 1))  # no logprobs: TokenProb cannot score it
    small, large = ladder([bare], [Reply("4")])
    router = Router([small, large])
    out = await router.complete(Q)
    assert out.model == SMALL
    first = router.decisions[0]
    assert first.escalated and first.score is None and "estimator failed" in first.reason


async def test_estimator_failure_accept_and_raise_options() -> None:
    bare = Completion("5", SMOKE, "stop", Usage(1, 3, 1))
    small, large = ladder([bare, bare], [])
    accepting = Router([small, large], on_estimator_error="accept")
    out = await accepting.complete(Q)
    assert out.model == SMOKE and "accepted" in accepting.decisions[0].reason
    raising = Router([small, large], on_estimator_error="raise")
    with pytest.raises(ConfidenceError):
        await raising.complete(Q)
    with pytest.raises(ConfigError, match="on_estimator_error"):
        Router([small, large], on_estimator_error="ignore")  # type: ignore[arg-type]


async def test_degraded_after_estimator_failure_has_no_score() -> None:
    bare = Completion("5", SMOKE, "stop", Usage(1, 3, 1))
    budget = Budget(BudgetLimits(requests=1), policy="degrade")
    small, large = ladder([bare], [])
    out = await Router([small, large], budget=budget).complete(Q)
    assert out.meta["degraded"] and out.meta["confidence"] is None and out.text == "5"


async def test_router_with_agreement_and_verifier_estimators() -> None:
    small, large = ladder(["Paris", "paris", "the Paris"], [])
    router = Router([small, large], estimator=Agreement(k=3), thresholds=[0.9])
    out = await router.complete(ChatRequest.of("Capital of France?"))
    assert out.model == SMOKE and out.meta["confidence"] == 1.0
    assert not small.requests[0].logprobs  # agreement does not need logprobs
    assert router.decisions[0].usage.requests == 2

    judge = ScriptedModel([Reply("no", prob=0.9)], name="judge")
    s2, l2 = ladder(["Lyon"], ["Paris"])
    router2 = Router([s2, l2], estimator=Verifier(judge), thresholds=[0.5])
    out2 = await router2.complete(ChatRequest.of("Capital of France?"))
    assert out2.text == "Paris" and router2.decisions[0].score == pytest.approx(0.1)


async def test_default_thresholds_and_custom_name() -> None:
    small, large = ladder([Reply("4", prob=DEFAULT_THRESHOLD)], [])
    router = Router([small, large], name="cascade")
    assert router.name == "cascade" and router.thresholds == (DEFAULT_THRESHOLD,)
    out = await router.complete(Q)  # a score equal to the threshold clears it
    assert out.model == SMOKE


def failing(error: Exception, name: str) -> FunctionModel:
    def fn(req: ChatRequest) -> str:
        raise error

    return FunctionModel(fn, name=name)


async def test_a_rung_whose_server_is_down_falls_back_to_the_next_with_the_reason() -> None:
    down = failing(ServerUnavailableError("could not reach the model server at http://x/v1"), SMOKE)
    b, c = ladder([], [Reply("4", prob=0.9)], [Reply("5")])[1:]
    budget = Budget()
    router = Router([down, b, c], thresholds=[0.7, 0.8], budget=budget)
    out = await router.complete(Q)
    assert (out.text, out.model) == ("4", SMALL) and c.requests == []
    first, second = router.decisions
    assert (first.model, first.score, first.threshold, first.escalated) == (SMOKE, None, 0.7, True)
    assert first.reason == (
        "no answer (ServerUnavailableError: could not reach the model server at http://x/v1); "
        "falling back to the next rung"
    )
    assert not second.escalated and out.meta["route"][0]["reason"] == first.reason
    assert out.usage.requests == 1 and budget.bill().escalations == 1


async def test_which_errors_fall_back_is_configurable() -> None:
    slow = failing(ModelTimeoutError("the model server did not answer within 1 s"), SMOKE)
    large = ScriptedModel(["4"], cycle=True, name=LARGE)
    with pytest.raises(ModelTimeoutError):  # not a fallback by default: the question fails
        await Router([slow, large]).complete(Q)
    out = await Router([slow, large], fallback_on=(ServerUnavailableError, ModelTimeoutError)).complete(Q)
    assert out.model == LARGE and "ModelTimeoutError" in out.meta["route"][0]["reason"]
    with pytest.raises(RequestRejectedError):  # a rejected request is the request's fault
        await Router([failing(RequestRejectedError("HTTP 400"), SMOKE), large]).complete(Q)
    with pytest.raises(ServerUnavailableError):  # the top rung's failure is the question's
        await Router([large, failing(ServerUnavailableError("down"), SMALL)], thresholds=[1.0]).complete(Q)
    with pytest.raises(ConfigError, match="fallback_on must be a tuple of ModelError classes"):
        Router([slow, large], fallback_on=ServerUnavailableError)  # type: ignore[arg-type]


async def test_router_inside_router() -> None:
    a, b, c = ladder([Reply("x", prob=0.1)], [Reply("y", prob=0.9)], [])
    inner = Router([a, b], thresholds=[0.5])
    outer = Router([inner, c], estimator=estimator(lambda s: 1.0), thresholds=[0.5])
    out = await outer.complete(Q)
    assert out.text == "y" and out.model == inner.name


async def test_thresholds_file_drives_the_router(tmp_path: Path) -> None:
    path = tmp_path / "t.json"
    Thresholds((0.9,), (SMOKE, SMALL)).save(path)
    small, large = ladder([Reply("4", prob=0.85)], [Reply("4")])
    router = Router([small, large], thresholds=Thresholds.load(path))
    assert router.thresholds == (0.9,)
    assert (await router.complete(Q)).model == SMALL
    never = Router(ladder([], []), thresholds=Thresholds((math.inf,)))
    assert never.thresholds == (math.inf,)


# --- bad input ------------------------------------------------------------------------------------


def test_one_model_ladder_is_rejected() -> None:
    with pytest.raises(ConfigError, match=r"a router needs at least two models.*use the model directly"):
        Router([ScriptedModel([])])
    with pytest.raises(ConfigError, match="at least two"):
        Router([])


@pytest.mark.parametrize(
    ("thresholds", "match"),
    [
        ([0.5, 0.5], r"2 thresholds do not match a ladder of 2 models"),
        ([], "at least one value"),
        ({"other": 0.5}, r"unknown \['other'\]"),
        ({}, "missing"),
        ([1.5], r"\[0, 1\]"),
        (Thresholds((0.5,), ("a", "b")), "calibrated for the ladder"),
    ],
)
def test_thresholds_not_matching_rungs(thresholds: object, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        Router(ladder([], []), thresholds=thresholds)  # type: ignore[arg-type]


def test_bad_ladder_entries() -> None:
    with pytest.raises(ConfigError, match="not a Model"):
        Router([ScriptedModel([]), "large"])  # type: ignore[list-item]
    with pytest.raises(ConfigError, match="repeated"):
        Router([ScriptedModel([], name="a"), ScriptedModel([], name="a")])


def test_router_with_flops_budget_rejects_uncatalogued_rung() -> None:
    budget = Budget(BudgetLimits(flops=1e12))
    with pytest.raises(ConfigError, match="not in the catalog"):
        Router([ScriptedModel([], name="mystery"), ScriptedModel([], name=SMALL)], budget=budget)


def test_router_with_flops_budget_rejects_uncatalogued_verifier() -> None:
    budget = Budget(BudgetLimits(flops=1e12))
    judge = ScriptedModel([], name="mystery-judge")
    est = TokenProb() & Verifier(judge)
    with pytest.raises(ConfigError, match="mystery-judge"):
        Router(ladder([], []), estimator=est, budget=budget)


def test_budget_counts_a_router_as_its_first_rung() -> None:
    # workflows ask `budget.can_afford(request, deps.model)` where the model may be a router
    budget = Budget(BudgetLimits(flops=1e12))
    router = Router(ladder([], []), budget=budget)
    req = ChatRequest.of("q", max_tokens=16)
    assert budget.estimate(req, router) == budget.estimate(req, SMOKE)
    assert budget.can_afford(req, router)
    tight = Budget(BudgetLimits(flops=get_model(SMOKE).flops(estimate_prompt_tokens(req) + 16) - 1))
    assert not tight.can_afford(req, Router(ladder([], []), budget=tight))
