"""Cascades of whole workflows: a question escalates, not a call.

Each rung is a workflow (any `Graph`) with its deps (the model it calls), a confidence read from the
state that workflow ends in, and a threshold. The question runs through the first rung; when that
rung's confidence is at or above its threshold its answer is final, otherwise the whole question goes,
from the start, to the next rung. The top rung's answer is final.

    cascade = Cascade([
        Rung(sc_graph, QADeps(model=small), confidence=AgreementShare(), threshold=0.6, name="small"),
        Rung(direct_graph, QADeps(model=large), name="large"),
    ], budget=budget)
    result = await cascade.run(QAState(question=q, paragraphs=paragraphs))
    result.state.answer, result.name, [d.to_dict() for d in result.decisions]

Confidences (`AgreementShare`, `VerifierYes`, `AnswerTokenProb`, `LearnedConfidence`, or any function
`state -> float | None`, sync or async) score the final state; None, or a ConfidenceError, escalates.

A rung below the top whose server is down, or whose client's circuit is open (a `ServerUnavailableError`
or `CircuitOpenError` behind the rung's failure; `fallback_on` widens or narrows that), falls back to the
next rung whatever `on_error` says, and its decision says why; the top rung's failure is the question's.

Budget: before a rung starts, the worst case of the calls it needs (`Rung.cost(state)`: (request, model)
pairs, the models wrapped by that budget) is reserved on the cascade's budget and released at once, an
atomic check. A rung that does not fit is not started: with policy "degrade" the best answer so far
(highest score) is kept, marked degraded and recorded on the bill; with "raise", or when no rung has
answered yet, BudgetExceeded is raised. A BudgetExceeded from inside a rung is handled the same way.
Escalations go on the bill too.

Tracing: every decision is a `StateUpdated(run_id, node="cascade/<rung>", step=<rung>,
update=decision.to_dict())`, emitted to the run the cascade is called from (when a node of another
graph runs it) and sent to the listeners given to `run()`, which also receive every rung's graph events.
"""

from __future__ import annotations

import inspect
import math
import os
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, Literal, TypeVar

from pydantic import BaseModel

from ._budget import Budget, BudgetedModel, Reservation
from ._calibration import DEFAULT_THRESHOLD, Thresholds
from ._config import check_fallback_on
from ._events import Listener, RunRecord, StateUpdated, emit
from ._exceptions import (
    AgentFlowError,
    BudgetExceeded,
    ConfidenceError,
    ConfigError,
    ModelError,
    ServerUnavailableError,
)
from ._graph import Graph
from ._types import ChatRequest, Model, Usage

__all__ = ["Cascade", "CascadeResult", "Rung", "RungDecision", "StateScore"]

S = TypeVar("S", bound=BaseModel)
D = TypeVar("D")

#: A confidence over a final state: a score in [0, 1], or None when it cannot say (sync or async).
StateScore = Callable[[S], float | Awaitable[float | None] | None]
#: The calls a rung needs at the least to answer, for the budget check: (request, model) pairs.
CostFn = Callable[[S], Iterable[tuple[ChatRequest, Model]]]
OnError = Literal["raise", "escalate"]


class Rung(Generic[S, D]):
    """One step of a cascade: `graph` run with `deps`, scored by `confidence` against `threshold`.

    `cost(state)` lists the (request, model) calls the rung needs at the least to answer; the cascade
    checks that its budget can afford them before starting it (without `cost`, the rung is started and
    its own calls still reserve on the budget). `threshold` defaults to `DEFAULT_THRESHOLD` (0.7); `inf`
    always escalates. A rung below the top needs a confidence; the top rung's, if any, is only recorded.
    """

    def __init__(
        self,
        graph: Graph[S, D],
        deps: D,
        *,
        confidence: StateScore[S] | None = None,
        threshold: float = DEFAULT_THRESHOLD,
        name: str | None = None,
        cost: CostFn[S] | None = None,
    ) -> None:
        if not isinstance(graph, Graph):
            raise ConfigError(f"Rung needs a compiled Graph, got {type(graph).__name__}: pass builder.compile()")
        if graph.deps_type is not None and not isinstance(deps, graph.deps_type):
            raise ConfigError(
                f"rung {name or graph.name!r}: deps is a {type(deps).__name__} but graph {graph.name!r} "
                f"takes a {graph.deps_type.__name__}: pass {graph.deps_type.__name__}(...)"
            )
        if not (0.0 <= threshold <= 1.0 or threshold == math.inf):
            raise ConfigError(
                f"rung {name or graph.name!r}: threshold {threshold!r} is not a confidence in [0, 1] "
                "(or inf to always escalate)"
            )
        self.graph = graph
        self.deps = deps
        self.confidence = confidence
        self.threshold = float(threshold)
        self.name = name or graph.name
        self.cost = cost

    def __repr__(self) -> str:
        return f"Rung({self.name!r}, confidence={self.confidence!r}, threshold={self.threshold})"


@dataclass(frozen=True, slots=True)
class RungDecision:
    """What happened at one rung for one question.

    `started` is False for a rung the budget could not afford; `score` is None when the rung was not
    started, its confidence could not score, or it is the top rung without a confidence; `usage` is what
    the rung's run record counted (ModelClient reports its calls; wrap other models with `observe()`).
    """

    rung: int
    name: str
    score: float | None
    threshold: float | None
    escalated: bool
    why: str
    usage: Usage = field(default_factory=Usage)
    started: bool = True
    degraded: bool = False
    wall_s: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "rung": self.rung,
            "name": self.name,
            "score": self.score,
            "threshold": None if self.threshold is None or self.threshold == math.inf else self.threshold,
            "escalated": self.escalated,
            "why": self.why,
            "started": self.started,
            "degraded": self.degraded,
            "usage": self.usage.to_dict(),
            "wall_s": round(self.wall_s, 4),
        }


@dataclass(frozen=True, slots=True)
class CascadeResult(Generic[S]):
    """The final state of the rung that answered (`rung`, `name`, its `score`), every decision in order,
    the degradations (why a better answer was not sought), and each started rung's run record."""

    state: S
    rung: int
    name: str
    score: float | None
    decisions: tuple[RungDecision, ...]
    degradations: tuple[str, ...] = ()
    records: tuple[RunRecord, ...] = ()

    @property
    def degraded(self) -> bool:
        return bool(self.degradations)

    @property
    def escalations(self) -> int:
        return sum(d.escalated for d in self.decisions)

    @property
    def usage(self) -> Usage:
        """Everything the question cost: all rungs tried."""
        return sum((d.usage for d in self.decisions), Usage())

    def to_dict(self) -> dict[str, Any]:
        return {
            "rung": self.rung,
            "name": self.name,
            "score": self.score,
            "degraded": self.degraded,
            "degradations": list(self.degradations),
            "escalations": self.escalations,
            "usage": self.usage.to_dict(),
            "decisions": [d.to_dict() for d in self.decisions],
        }


@dataclass(slots=True)
class _Answer(Generic[S]):
    rung: int
    state: S
    score: float | None


class Cascade(Generic[S]):
    """Rungs of (workflow, model), small to large; a question escalates when its rung is unsure.

    - `budget`: checked before each rung (see the module doc); its policy decides degrade or raise.
    - `thresholds`: one per rung below the top (a `Thresholds`, e.g. loaded from a calibration file, or
      floats), overriding the rungs' own.
    - `on_error`: a rung below the top that fails (a model error, a failing node): "raise" (default), or
      "escalate" to the next rung, recorded with the error.
    - `fallback_on`: model errors behind a rung's failure that fall back to the next rung whatever
      `on_error` says. Default: a server that is down or whose circuit is open; () to never fall back.
    """

    def __init__(
        self,
        rungs: Sequence[Rung[S, Any]],
        *,
        budget: Budget | None = None,
        thresholds: Thresholds | Sequence[float] | None = None,
        on_error: OnError = "raise",
        fallback_on: tuple[type[ModelError], ...] = (ServerUnavailableError,),
        name: str = "cascade",
    ) -> None:
        rungs = list(rungs)
        if len(rungs) < 2:
            raise ConfigError(
                f"a cascade needs at least two rungs (small -> large), got {len(rungs)}: with one, run its graph"
            )
        for r in rungs:
            if not isinstance(r, Rung):
                raise ConfigError(f"cascade rung {r!r} is not a Rung: wrap it as Rung(graph, deps, confidence=...)")
        names = [r.name for r in rungs]
        if len(set(names)) != len(names):
            raise ConfigError(f"cascade rungs have repeated names {names}: give each Rung a distinct name=")
        state_types = {r.graph.state_type for r in rungs}
        if len(state_types) != 1:
            raise ConfigError(
                f"cascade rungs run on different states {sorted(t.__name__ for t in state_types)}: every rung's "
                "graph must take the same state type, since each starts from the question's state"
            )
        for r in rungs[:-1]:
            if r.confidence is None:
                raise ConfigError(
                    f"rung {r.name!r} is below the top but has no confidence, so it could never decide: give it "
                    "Rung(confidence=...) (e.g. AgreementShare(), VerifierYes(), AnswerTokenProb())"
                )
        if on_error not in ("raise", "escalate"):
            raise ConfigError(f"on_error must be 'raise' or 'escalate', got {on_error!r}")
        self.fallback_on = check_fallback_on(fallback_on)
        if thresholds is not None:
            given = thresholds if isinstance(thresholds, Thresholds) else Thresholds(tuple(thresholds))
            values = given.for_ladder(names)
            rungs = [_with_threshold(r, t) for r, t in zip(rungs[:-1], values, strict=True)] + [rungs[-1]]
        self.rungs: list[Rung[S, Any]] = rungs
        self.budget = budget
        self.on_error: OnError = on_error
        self.name = name

    def __repr__(self) -> str:
        return f"Cascade({[r.name for r in self.rungs]}, thresholds={[r.threshold for r in self.rungs[:-1]]})"

    async def run(
        self, state: S | dict[str, Any], *, listeners: Sequence[Listener] = (), run_id: str | None = None
    ) -> CascadeResult[S]:
        """Answer one question: run rungs from the first until one is confident (or the top answers)."""
        rid = run_id if run_id is not None else os.urandom(8).hex()
        start = self.rungs[0].graph.state_type
        question = state if isinstance(state, start) else start.model_validate(state)
        return await self._run(question, rid, listeners)

    async def _run(self, question: S, rid: str, listeners: Sequence[Listener]) -> CascadeResult[S]:
        decisions: list[RungDecision] = []
        answers: list[_Answer[S]] = []
        records: list[RunRecord] = []
        last = len(self.rungs) - 1

        def decide(d: RungDecision) -> None:
            decisions.append(d)
            event = StateUpdated(rid, f"{self.name}/{d.name}", d.rung, d.to_dict())
            emit(event)  # to the run this cascade is part of, if any
            for listener in listeners:
                listener(event)

        def result(final: _Answer[S], degradations: tuple[str, ...] = ()) -> CascadeResult[S]:
            name = self.rungs[final.rung].name
            done = tuple(decisions)
            return CascadeResult(final.state, final.rung, name, final.score, done, degradations, tuple(records))

        refusal = self._refusal(self.rungs[0], question)
        if refusal is not None:
            raise refusal  # nothing answered yet, so there is nothing to keep
        for i, rung in enumerate(self.rungs):
            threshold = None if i == last else rung.threshold
            t0 = time.perf_counter()
            try:
                final, record = await rung.graph.run(
                    question, deps=rung.deps, listeners=listeners, run_id=f"{rid}/{rung.name}"
                )
            except AgentFlowError as e:
                wall = time.perf_counter() - t0
                usage = _usage_of_failure(e)
                if _budget_refusal(e) and answers and self._degrades:
                    reason = f"rung {rung.name!r} ran out of budget: {e}"
                    decide(RungDecision(i, rung.name, None, threshold, False, reason, usage, True, True, wall))
                    return result(self._degrade(answers, reason), (reason,))
                down = _cause(e, self.fallback_on)
                if i == last or _budget_refusal(e) or (self.on_error == "raise" and down is None):
                    raise
                if down is not None:
                    why, step = f"no answer ({type(down).__name__}: {down})", "falling back to the next rung"
                else:
                    why, step = f"rung failed ({type(e).__name__}: {e}); on_error='escalate'", "escalating"
                score, usage_ok = None, usage
            else:
                wall = time.perf_counter() - t0
                records.append(record)
                score, why = await _score(rung, final)
                usage_ok = record.usage
                answers.append(_Answer(i, final, score))
                if i == last:
                    why = "top rung: its answer is final"
                    decide(RungDecision(i, rung.name, score, None, False, why, usage_ok, wall_s=wall))
                    return result(answers[-1])
                if score is not None and score >= rung.threshold:
                    why = f"confident: score {score:.3f} >= threshold {rung.threshold:.3f}"
                    decide(RungDecision(i, rung.name, score, rung.threshold, False, why, usage_ok, wall_s=wall))
                    return result(answers[-1])
                if score is not None:
                    why = f"not confident: score {score:.3f} < threshold {rung.threshold:.3f}"
                step = "escalating"
            nxt = self.rungs[i + 1]
            refusal = self._refusal(nxt, question)
            if refusal is not None:
                if not answers or not self._degrades:
                    raise refusal
                reason = f"cannot afford the next rung {nxt.name!r} under budget {self._budget_name}: {refusal}"
                why = f"{why}; not escalated: {reason}"
                decide(RungDecision(i, rung.name, score, threshold, False, why, usage_ok, True, True, wall))
                return result(self._degrade(answers, reason), (reason,))
            decide(RungDecision(i, rung.name, score, threshold, True, f"{why}; {step}", usage_ok, wall_s=wall))
            if self.budget is not None:
                self.budget.record_escalation(rung.name, nxt.name)
        raise AssertionError("unreachable: the top rung always answers")  # pragma: no cover

    @property
    def _degrades(self) -> bool:
        return self.budget is not None and self.budget.degrades

    @property
    def _budget_name(self) -> str:
        return repr(self.budget.name) if self.budget is not None else "(none)"

    def _refusal(self, rung: Rung[S, Any], question: S) -> BudgetExceeded | None:
        """Why the budget cannot afford the calls `rung` needs (reserved and released at once), or None."""
        if self.budget is None or rung.cost is None:
            return None
        budget = self.budget
        held: list[Reservation] = []
        try:
            for request, model in rung.cost(question):
                if not (isinstance(model, BudgetedModel) and any(b is budget for b in model.budget.chain())):
                    raise ConfigError(
                        f"rung {rung.name!r} calls {model.name!r} outside the cascade's budget {budget.name!r}, so "
                        "its calls would not be counted: wrap the model with budget.wrap(model) (or pass "
                        "budget= to workflows.rung)"
                    )
                held.append(budget.reserve(request, model))
        except BudgetExceeded as e:
            return e
        finally:
            for res in held:
                budget.cancel(res)
        return None

    def _degrade(self, answers: list[_Answer[S]], reason: str) -> _Answer[S]:
        """The best answer so far (highest score, the later rung on ties), the degradation on the bill."""
        assert self.budget is not None
        self.budget.record_degradation(f"{self.name}: {reason}")
        return max(answers, key=lambda a: (-1.0 if a.score is None else a.score, a.rung))


def _with_threshold(rung: Rung[S, D], threshold: float) -> Rung[S, D]:
    return Rung(rung.graph, rung.deps, confidence=rung.confidence, threshold=threshold, name=rung.name, cost=rung.cost)


async def _score(rung: Rung[S, Any], state: S) -> tuple[float | None, str]:
    """The rung's confidence in its final state, and why it has none when it has none."""
    if rung.confidence is None:
        return None, "no confidence"
    try:
        out = rung.confidence(state)
        if inspect.isawaitable(out):
            out = await out
    except ConfidenceError as e:
        return None, f"confidence could not score ({e})"
    if out is None:
        return None, f"confidence {rung.confidence!r} found nothing to read in the final state"
    score = float(out)
    if math.isnan(score) or not 0.0 <= score <= 1.0:
        return None, f"confidence {rung.confidence!r} gave {score!r}, not a score in [0, 1]"
    return score, ""


def _budget_refusal(e: BaseException | None) -> bool:
    """A BudgetExceeded, also when a graph node wraps it."""
    return _cause(e, (BudgetExceeded,)) is not None


def _cause(e: BaseException | None, kinds: tuple[type[BaseException], ...]) -> BaseException | None:
    """`e`, or the error behind it (a graph node wraps the error it raised), when it is one of `kinds`."""
    while e is not None:
        if isinstance(e, kinds):
            return e
        e = e.__cause__
    return None


def _usage_of_failure(e: BaseException) -> Usage:
    record = getattr(e, "record", None)
    return record.usage if isinstance(record, RunRecord) else Usage()
