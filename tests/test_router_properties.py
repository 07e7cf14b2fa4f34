"""Property tests for the router's decision rule and the calibration search."""

from __future__ import annotations

import asyncio
import math

from hypothesis import given, settings
from hypothesis import strategies as st

from agentflow._budget import Budget, BudgetLimits
from agentflow._calibration import ScoredExample, calibrate
from agentflow._confidence import ConfidenceState, estimator
from agentflow._router import Router
from agentflow._types import ChatRequest
from agentflow.testing import ScriptedModel

unit = st.floats(0.0, 1.0, allow_nan=False)


@settings(max_examples=200, deadline=None)
@given(data=st.data(), n=st.integers(2, 5))
def test_router_answers_with_the_first_rung_that_clears_its_threshold(data: st.DataObject, n: int) -> None:
    scores = data.draw(st.lists(unit, min_size=n, max_size=n))
    thresholds = data.draw(st.lists(unit, min_size=n - 1, max_size=n - 1))
    ladder = [ScriptedModel([f"answer {i}"], name=f"m{i}") for i in range(n)]
    by_name = {m.name: s for m, s in zip(ladder, scores, strict=True)}
    est = estimator(lambda s: by_name[s.completion.model])
    router = Router(ladder, estimator=est, thresholds=thresholds)
    out = asyncio.run(router.complete(ChatRequest.of("q")))
    expected = next((i for i in range(n - 1) if scores[i] >= thresholds[i]), n - 1)
    assert out.model == f"m{expected}" and out.text == f"answer {expected}"
    assert [d.model for d in router.decisions] == [f"m{i}" for i in range(expected + 1)]
    assert [d.escalated for d in router.decisions] == [True] * expected + [False]
    # rungs above the answer were never asked
    assert all(not m.requests for m in ladder[expected + 1 :])
    assert out.usage.requests == expected + 1


@settings(max_examples=100, deadline=None)
@given(
    scores=st.lists(unit, min_size=2, max_size=4),
    thresholds_seed=st.lists(unit, min_size=3, max_size=3),
    requests=st.integers(1, 4),
)
def test_router_never_spends_beyond_a_degrading_budget(
    scores: list[float], thresholds_seed: list[float], requests: int
) -> None:
    n = len(scores)
    ladder = [ScriptedModel([f"a{i}"], name=f"m{i}") for i in range(n)]
    by_name = {m.name: s for m, s in zip(ladder, scores, strict=True)}

    def score(s: ConfidenceState) -> float:
        return by_name[s.completion.model]

    budget = Budget(BudgetLimits(requests=requests), policy="degrade")
    router = Router(ladder, estimator=estimator(score), thresholds=thresholds_seed[: n - 1], budget=budget)
    out = asyncio.run(router.complete(ChatRequest.of("q")))
    bill = budget.bill()
    assert bill.requests <= requests
    asked = sum(1 for m in ladder if m.requests)
    assert asked == bill.requests == out.usage.requests
    if out.meta.get("degraded"):
        assert asked == requests < n and bill.degradations
        answered = [s for s in scores[:asked]]
        assert out.meta["confidence"] == max(answered)


@settings(max_examples=150, deadline=None)
@given(
    rows=st.lists(st.tuples(unit, st.booleans()), min_size=1, max_size=60),
    target=st.floats(0.05, 1.0),
)
def test_calibrated_threshold_is_the_least_that_reaches_the_target(
    rows: list[tuple[float, bool]], target: float
) -> None:
    exs = [ScoredExample(s, c) for s, c in rows]
    [t] = calibrate(exs, target_accuracy=target, bootstrap=0).thresholds.values

    def accuracy_at(th: float) -> float | None:
        acc = [c for s, c in rows if s >= th]
        return sum(acc) / len(acc) if acc else None

    if t != math.inf:
        a = accuracy_at(t)
        assert a is not None and a >= target
    for s in {s for s, _ in rows}:
        if s < t:
            a = accuracy_at(s)
            assert a is None or a < target
