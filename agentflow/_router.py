"""The escalation router: a ladder of models, small to large, that is itself a Model.

It asks the first rung; when the estimator's confidence clears that rung's threshold the answer is
final, otherwise it escalates to the next rung. The top rung's answer is always final.

    router = Router([small, large], estimator=TokenProb("mean"), thresholds=Thresholds.load("t.json"),
                    budget=budget)
    answer = await router.complete(ChatRequest.of("What is 2 + 2?"))
    answer.model                 # the rung that answered
    answer.meta["route"]         # every decision: model, score, threshold, escalated, why
    answer.usage                 # everything this answer cost: every rung tried and the estimator's calls

A rung below the top whose server is down, or whose client's circuit is open (`ServerUnavailableError`,
`CircuitOpenError`; `fallback_on` widens or narrows that), does not fail the question: the router falls
back to the next rung at once and the decision says why. The top rung's failure is the question's.

With a budget, every rung (and the estimator's extra calls) is charged to it. Under the "degrade"
policy the router does not escalate to a rung it cannot afford: it returns the best answer so far
with `meta["degraded"] = True` and the reason. Under "raise", the unaffordable call raises
BudgetExceeded.

Defaults are conservative: thresholds default to `DEFAULT_THRESHOLD` (0.7) and the estimator to
`TokenProb("mean")` (free: it reads the logprobs of the answer itself).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from ._budget import Budget, BudgetedModel
from ._calibration import DEFAULT_THRESHOLD, Thresholds
from ._confidence import (
    Confidence,
    ConfidenceError,
    ConfidenceState,
    Estimator,
    MaxOf,
    Mean,
    MinOf,
    TokenProb,
    Verifier,
)
from ._config import check_fallback_on
from ._exceptions import ConfigError, ModelError, ServerUnavailableError
from ._types import ChatRequest, Completion, Model, Usage

__all__ = ["RouteDecision", "Router"]

OnEstimatorError = Literal["escalate", "accept", "raise"]


@dataclass(frozen=True, slots=True)
class RouteDecision:
    """One step of a route: the rung that answered, its score against its threshold, and what followed.

    `score`/`threshold` are None for the top rung (final without scoring) and when the estimator
    failed. `usage` is what the estimator's extra calls cost.
    """

    rung: int
    model: str
    score: float | None
    threshold: float | None
    escalated: bool
    reason: str
    degraded: bool = False
    usage: Usage = field(default_factory=Usage)

    def to_dict(self) -> dict[str, Any]:
        return {
            "rung": self.rung,
            "model": self.model,
            "score": self.score,
            "threshold": None if self.threshold == math.inf else self.threshold,
            "escalated": self.escalated,
            "reason": self.reason,
            "degraded": self.degraded,
            "estimator_usage": self.usage.to_dict(),
        }


class Router:
    """A Model that answers with the first rung of `ladder` whose confidence clears its threshold.

    - `thresholds`: a `Thresholds` (e.g. `Thresholds.load(path)`), one float per rung below the top,
      a mapping model name -> threshold, or None for `DEFAULT_THRESHOLD` everywhere.
    - `budget`: rungs (and verifiers) are wrapped to spend from it; see the module doc for policies.
    - `listener(decision)` is called for every decision; all decisions are also kept in `.decisions`.
    - `on_estimator_error`: what to do when the estimator raises ConfidenceError: "escalate"
      (default), "accept" the answer, or "raise".
    - `fallback_on`: the model errors on a rung below the top that fall back to the next rung (recorded
      in the decision) instead of failing the question. Default: a server that is down or whose circuit
      is open; add e.g. ModelTimeoutError or ServerError to fall back on those too, or pass () to fail.
    """

    def __init__(
        self,
        ladder: Sequence[Model],
        *,
        estimator: Estimator | None = None,
        thresholds: Thresholds | Sequence[float] | Mapping[str, float] | None = None,
        budget: Budget | None = None,
        listener: Callable[[RouteDecision], None] | None = None,
        on_estimator_error: OnEstimatorError = "escalate",
        fallback_on: tuple[type[ModelError], ...] = (ServerUnavailableError,),
        name: str | None = None,
    ) -> None:
        models = list(ladder)
        if len(models) < 2:
            raise ConfigError(
                f"a router needs at least two models (small -> large), got {len(models)}: "
                "with a single model there is nothing to escalate to, so use the model directly"
            )
        for m in models:
            if not isinstance(m, Model):
                raise ConfigError(f"router ladder entry {m!r} is not a Model (it needs .name and async .complete)")
        names = [m.name for m in models]
        if len(set(names)) != len(names):
            raise ConfigError(f"router ladder has repeated model names {names}: give each rung a distinct name")
        if on_estimator_error not in ("escalate", "accept", "raise"):
            raise ConfigError(f"on_estimator_error must be 'escalate', 'accept' or 'raise', got {on_estimator_error!r}")
        self.fallback_on = check_fallback_on(fallback_on)
        self.budget = budget
        if budget is not None:
            models = [m if isinstance(m, BudgetedModel) and m.budget is budget else budget.wrap(m) for m in models]
        self.ladder: list[Model] = models
        self.estimator: Estimator = estimator if estimator is not None else TokenProb("mean")
        if budget is not None:
            for v in _verifiers(self.estimator):
                budget.spec_for(v.model)  # an uncountable verifier fails now, not at the first call
        self.thresholds: tuple[float, ...] = _resolve_thresholds(thresholds, names)
        self.listener = listener
        self.on_estimator_error: OnEstimatorError = on_estimator_error
        self.decisions: list[RouteDecision] = []
        self._name = name or "router:" + ">".join(names)

    @property
    def name(self) -> str:
        return self._name

    @property
    def counted_as(self) -> Model:
        """What a budget counts a call to this router as, for `can_afford`: its first rung (the router
        checks the rungs above itself before escalating)."""
        return self.ladder[0]

    def __repr__(self) -> str:
        return f"Router({[m.name for m in self.ladder]}, thresholds={list(self.thresholds)})"

    def _record(self, d: RouteDecision, route: list[RouteDecision]) -> None:
        route.append(d)
        self.decisions.append(d)
        if self.listener is not None:
            self.listener(d)

    async def _score(self, request: ChatRequest, completion: Completion, model: Model) -> Confidence:
        return await self.estimator(ConfidenceState(request, completion, model, self.budget))

    async def complete(self, request: ChatRequest) -> Completion:
        req = self.estimator.prepare(request)
        route: list[RouteDecision] = []
        answers: list[tuple[float, int, Completion]] = []  # (score, rung, completion); -1 = unscored
        total = Usage()
        last = len(self.ladder) - 1
        for i, model in enumerate(self.ladder):
            try:  # the top rung is never scored, so it gets the caller's request as is
                completion = await model.complete(request if i == last else req)
            except ModelError as e:
                if i == last or not isinstance(e, self.fallback_on):
                    raise
                score, usage, why = None, Usage(), f"no answer ({type(e).__name__}: {e})"
                step = "falling back to the next rung"
            else:
                total = total + completion.usage
                if i == last:
                    self._record(
                        RouteDecision(i, model.name, None, None, False, "top rung: its answer is final"), route
                    )
                    return self._finish(completion, i, route, total)
                score, usage, why, final = await self._verdict(i, model, req, completion)
                total = total + usage
                if final:
                    self._record(
                        RouteDecision(i, model.name, score, self.thresholds[i], False, why, usage=usage), route
                    )
                    return self._finish(completion, i, route, total, score=score)
                answers.append((-1.0 if score is None else score, i, completion))
                step = "escalating"
            threshold = self.thresholds[i]
            nxt = self.ladder[i + 1]
            nxt_req = request if i + 1 == last else req
            budget = self.budget
            if answers and budget is not None and budget.degrades and not budget.can_afford(nxt_req, nxt):
                reason = f"cannot afford the next rung {nxt.name!r} under budget {budget.name!r}"
                why = f"{why}; not escalated: {reason}"
                self._record(RouteDecision(i, model.name, score, threshold, False, why, True, usage), route)
                budget.record_degradation(f"{self.name}: {reason}")
                best_score, rung, best = max(answers, key=lambda a: (a[0], a[1]))
                return self._finish(
                    best, rung, route, total, score=None if best_score < 0 else best_score, degraded=reason
                )
            self._record(RouteDecision(i, model.name, score, threshold, True, f"{why}; {step}", usage=usage), route)
            if budget is not None:
                budget.record_escalation(model.name, nxt.name)
        raise AssertionError("unreachable: the top rung always answers")  # pragma: no cover

    async def _verdict(
        self, i: int, model: Model, req: ChatRequest, completion: Completion
    ) -> tuple[float | None, Usage, str, bool]:
        """Rung `i`'s score for its answer, what scoring cost, why, and whether the answer is final."""
        threshold = self.thresholds[i]
        try:
            conf = await self._score(req, completion, model)
        except ConfidenceError as e:
            if self.on_estimator_error == "raise":
                raise
            if self.on_estimator_error == "accept":
                return (
                    None,
                    Usage(),
                    f"estimator failed ({e}); accepted as configured (on_estimator_error='accept')",
                    True,
                )
            return None, Usage(), f"estimator failed ({e})", False
        if conf.score >= threshold:
            return conf.score, conf.usage, f"confident: score {conf.score:.3f} >= threshold {threshold:.3f}", True
        return conf.score, conf.usage, f"not confident: score {conf.score:.3f} < threshold {threshold:.3f}", False

    def _finish(
        self,
        completion: Completion,
        rung: int,
        route: list[RouteDecision],
        total: Usage,
        *,
        score: float | None = None,
        degraded: str | None = None,
    ) -> Completion:
        meta = {
            **completion.meta,
            "route": [d.to_dict() for d in route],
            "rung": rung,
            "confidence": score,
            "answer_usage": completion.usage.to_dict(),
        }
        if degraded is not None:
            meta["degraded"] = True
            meta["degraded_reason"] = degraded
        return replace(completion, model=self.ladder[rung].name, usage=total, meta=meta)


def _verifiers(est: Estimator) -> list[Verifier]:
    if isinstance(est, Verifier):
        return [est]
    if isinstance(est, MinOf | MaxOf | Mean):
        return [v for p in est.parts for v in _verifiers(p)]
    return []


def _resolve_thresholds(
    thresholds: Thresholds | Sequence[float] | Mapping[str, float] | None, names: list[str]
) -> tuple[float, ...]:
    if thresholds is None:
        return (DEFAULT_THRESHOLD,) * (len(names) - 1)
    if isinstance(thresholds, Thresholds):
        return thresholds.for_ladder(names)
    if isinstance(thresholds, Mapping):
        below = names[:-1]
        extra = sorted(set(thresholds) - set(below))
        missing = [n for n in below if n not in thresholds]
        if extra or missing:
            raise ConfigError(
                f"thresholds {dict(thresholds)} do not match the rungs below the top {below}"
                f"{f': unknown {extra}' if extra else ''}{f': missing {missing}' if missing else ''}. "
                "Give one threshold per rung below the top, keyed by model name (the top rung needs none)"
            )
        return Thresholds(tuple(thresholds[n] for n in below)).values
    return Thresholds(tuple(thresholds)).for_ladder(names)
