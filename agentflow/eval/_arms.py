"""How each arm of a comparison answers one question: its rungs, their confidence, and the cascade.

Every arm is made of rungs, each a workflow on one model built by the `rung` factory the comparison is
handed (`workflows.rung`; evaluation never imports the workflows):

- `small`: the workflow behind retrieval of `retrieve_k` paragraphs on the small model;
- `large-retrieval`: the same on the large model (so the saving from small models is not confused with the
  saving from shorter prompts);
- `large`: `direct` on the large model over the full context (the usual baseline); `large-cot`: `cot` there;
- `agent`: a `Cascade` [small's rung] -> [large-retrieval's rung];
- `cascade`: a `Cascade` [small's rung] -> [large's rung] (a cheap try first, the full expensive answer only
  where it is needed).

A cascade escalates a question when its small rung's confidence, read from the state the workflow ended
in, is below the threshold. The estimator chooses it (`ESTIMATORS`): the final answer's token
probability, `agreement` (sc), `verifier` (verify, each rung's own model judging its answer) or
`learned:PATH`. Every call asks for the logprobs of a token-probability estimator (top 1, or top 5 with
`:variants`) through a `ScoredModel`, exactly as the single arms always have, so a cascade's rungs send
the single arms' very requests and, next to those arms, are answered from the response cache.
"""

from __future__ import annotations

import inspect
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from .._bill import Bill
from .._budget import Budget
from .._cascade import Cascade, Rung, StateScore
from .._confidence import ConfidenceState, TokenProb, normalize_answer
from .._events import Event, StateUpdated
from .._exceptions import AgentFlowError, BudgetExceeded, ConfidenceError, ConfigError, ServerUnavailableError
from .._learned import AgreementShare, AnswerTokenProb, LearnedConfidence, VerifierYes
from .._types import ChatRequest, Completion, Model
from ._data import Example, Paragraph
from ._metrics import score
from ._report import QuestionRecord, RungRecord

__all__ = [
    "ARMS",
    "ARM_MODELS",
    "CASCADE_ARMS",
    "ESTIMATORS",
    "Answerer",
    "ArmName",
    "CacheOnly",
    "Role",
    "RungFactory",
    "ScoredModel",
    "StateFactory",
    "check_estimator",
    "describe_estimator",
    "estimator_kind",
    "roles_needed",
]

ArmName = Literal["agent", "large", "large-retrieval", "small", "large-cot", "cascade"]
ARMS: tuple[ArmName, ...] = ("agent", "large", "large-retrieval", "small", "large-cot", "cascade")
Role = Literal["small", "large"]

ARM_MODELS: Mapping[ArmName, tuple[Role, ...]] = {
    "agent": ("small", "large"),
    "large": ("large",),
    "large-retrieval": ("large",),
    "small": ("small",),
    "large-cot": ("large",),
    "cascade": ("small", "large"),
}
"""The models each arm calls: only these need a server."""

TokenHow = Literal["mean", "geomean", "min", "joint"]
_TOKEN_HOWS: tuple[TokenHow, ...] = ("mean", "geomean", "min", "joint")
ESTIMATORS = (
    "mean, geomean, min or joint (the final answer's token probability; add :variants to count 'Yes' and "
    "'yes' as one answer), agreement (the sc workflow's samples), verifier (the verify workflow, each rung's "
    "model judging its own answer) or learned:PATH (a LearnedConfidence saved as JSON)"
)
"""The `estimator` values compare takes, as its help and errors say them."""

CASCADE_ARMS: tuple[ArmName, ...] = ("agent", "cascade")


def roles_needed(arms: Sequence[ArmName]) -> tuple[Role, ...]:
    """The models (small, large) that `arms` call, small first."""
    needed = {role for arm in arms for role in ARM_MODELS[arm]}
    return tuple(role for role in ("small", "large") if role in needed)


EstimatorKind = Literal["token", "agreement", "verifier", "learned"]


def _parse_estimator(text: str) -> tuple[EstimatorKind, str, str]:
    """(kind, how or path, variants) of an estimator name; unchecked."""
    if text in ("agreement", "verifier"):
        return ("agreement" if text == "agreement" else "verifier"), "", ""
    if text.startswith("learned:"):
        return "learned", text.removeprefix("learned:"), ""
    how, _, variants = text.partition(":")
    return "token", how, variants


def estimator_kind(estimator: str) -> tuple[EstimatorKind, str]:
    """The kind of an estimator and its argument (the token statistic, or the learned model's path)."""
    kind, how, _ = _parse_estimator(estimator)
    return kind, how


def check_estimator(estimator: str, workflow: str) -> None:
    """ConfigError, naming the fix, for an estimator that does not exist or cannot read `workflow`'s state."""
    kind, how, variants = _parse_estimator(estimator)
    if kind == "token" and (how not in _TOKEN_HOWS or variants not in ("", "variants")):
        raise ConfigError(f"unknown estimator {estimator!r}: choose {ESTIMATORS}, e.g. mean:variants")
    if kind == "learned" and not how:
        raise ConfigError("estimator 'learned:' names no file: write learned:PATH (saved by LearnedConfidence.save)")
    needs = {"agreement": "sc", "verifier": "verify"}.get(kind)
    if needs is not None and workflow != needs:
        raise ConfigError(
            f"estimator {kind!r} reads what the {needs} workflow records, but the workflow is {workflow!r}: "
            f"use workflow {needs!r}, or a token-probability estimator (mean)"
        )


def describe_estimator(estimator: str) -> str:
    """The estimator as report.md says it."""
    kind, how, variants = _parse_estimator(estimator)
    if kind == "agreement":
        return "agreement (share of the sc workflow's samples behind the answer)"
    if kind == "verifier":
        return "verifier (P(yes) of each rung's own model judging its answer in the verify workflow)"
    if kind == "learned":
        return f"learned (LearnedConfidence from {how})"
    return f"{how} token probability of the final answer" + (", spelling variants counted as one" if variants else "")


class RungFactory(Protocol):
    """Builds one rung of a cascade: a named workflow on a model (`workflows.rung`).

    Evaluation is handed one instead of importing the workflows package, which is built on agentflow."""

    def __call__(
        self,
        workflow: str,
        model: Model,
        *,
        confidence: StateScore[Any] | None = ...,
        threshold: float | None = ...,
        retrieve_k: int | None = ...,
        budget: Budget | None = ...,
        verifier: Model | None = ...,
        max_tokens: int = ...,
        logprobs: int | None = ...,
        name: str | None = ...,
    ) -> Rung[Any, Any]: ...


class StateFactory(Protocol):
    """Makes the state a question starts from (`workflows.QAState`); its final state has an `answer`."""

    def __call__(self, *, question: str, paragraphs: list[Paragraph]) -> Any: ...


class ScoredModel:
    """A Model wrapper that keeps its calls, so that an answer can be scored. With `logprobs_for`, it asks
    for the logprobs that estimator reads, so every arm's requests are the same requests (one cache entry
    serves them all). What a call cost is the budget's to count."""

    def __init__(self, model: Model, *, logprobs_for: TokenProb | None = None) -> None:
        self._model = model
        self._estimator = logprobs_for
        self.calls: list[tuple[ChatRequest, Completion]] = []

    @property
    def name(self) -> str:
        return self._model.name

    @property
    def last(self) -> tuple[ChatRequest, Completion] | None:
        return self.calls[-1] if self.calls else None

    async def complete(self, request: ChatRequest) -> Completion:
        if self._estimator is not None:
            request = self._estimator.prepare(request)
        c = await self._model.complete(request)
        self.calls.append((request, c))
        return c


class CacheOnly:
    """Stands for a model in a cache-only replay: the response cache answers, or the question fails."""

    def __init__(self, name: str) -> None:
        self._name = name

    @property
    def name(self) -> str:
        return self._name

    async def complete(self, request: ChatRequest) -> Completion:
        raise ServerUnavailableError(
            f"this request to {self._name!r} is not in the response cache, and a cache-only replay "
            "(compare --replay) asks no server: run again without --replay, with the model's server, to answer it"
        )


class _VariantTokenProb:
    """Token probability with spelling variants (`TokenProb(how, variants=True)`), over the call that gave
    the final answer: the state keeps no top alternatives, the rung's `ScoredModel` does."""

    def __init__(self, how: TokenHow, asked: ScoredModel) -> None:
        self._estimator = TokenProb(how, variants=True)
        self._asked = asked

    async def __call__(self, state: Any) -> float | None:
        want = normalize_answer(str(state.answer))
        calls = [c for c in self._asked.calls if c[1].logprobs and want and want in normalize_answer(c[1].text)]
        chosen = calls[-1] if calls else self._asked.last
        if chosen is None:
            return None
        request, completion = chosen
        return (await self._estimator(ConfidenceState(request, completion, self._asked))).score


class _Seen:
    """A rung's confidence that keeps the final state it scored: the rung's own answer, also when the
    question went on to the next rung."""

    def __init__(self, confidence: StateScore[Any]) -> None:
        self.confidence = confidence
        self.state: Any = None

    def __call__(self, state: Any) -> Any:
        self.state = state
        return self.confidence(state)


Step = tuple[Role, str | None, bool]
"""A rung of an arm: the model, the workflow (None: the configured one), whether it reads retrieved
paragraphs (else the full context)."""

_PLANS: Mapping[ArmName, tuple[Step, ...]] = {
    "small": (("small", None, True),),
    "large-retrieval": (("large", None, True),),
    "large": (("large", "direct", False),),
    "large-cot": (("large", "cot", False),),
    "agent": (("small", None, True), ("large", None, True)),
    "cascade": (("small", None, True), ("large", "direct", False)),
}


@dataclass(frozen=True)
class Answerer:
    """Answers one question for one arm with the given models, booking every call on the question's budget.

    `names` are the catalog names of the small and large models (the rungs' names, so that a thresholds
    file calibrated for that ladder applies); `threshold` is the small rung's; `learned` the loaded model of
    a `learned:PATH` estimator."""

    rung: RungFactory
    state: StateFactory
    workflow: str
    retrieve_k: int
    max_tokens: int
    estimator: str
    names: Mapping[Role, str]
    threshold: float
    learned: LearnedConfidence | None = None

    def _asks(self) -> TokenProb:
        """The token estimator whose logprobs every call asks for (the `mean` one for other estimators, so
        that their requests are the default's)."""
        kind, how, variants = _parse_estimator(self.estimator)
        if kind != "token":
            return TokenProb("mean")
        return TokenProb(_TOKEN_HOWS[_TOKEN_HOWS.index(how)], variants=bool(variants))

    def _confidence(self, asked: ScoredModel) -> StateScore[Any]:
        kind, how, variants = _parse_estimator(self.estimator)
        if kind == "agreement":
            return AgreementShare()
        if kind == "verifier":
            return VerifierYes()
        if kind == "learned":
            if self.learned is None:
                raise ConfigError(f"estimator {self.estimator!r}: load the model and pass learned=")
            return self.learned
        token_how = _TOKEN_HOWS[_TOKEN_HOWS.index(how)]
        return _VariantTokenProb(token_how, asked) if variants else AnswerTokenProb(token_how)

    def _rung(self, step: Step, models: Mapping[Role, Model], budget: Budget) -> tuple[Rung[Any, Any], _Seen]:
        """One rung, spending from `budget`, scored by the estimator (watched)."""
        role, workflow, retrieval = step
        asked = ScoredModel(models[role], logprobs_for=self._asks())
        seen = _Seen(self._confidence(asked))
        workflow = workflow or self.workflow
        judge = models[role] if workflow == "verify" and self.estimator == "verifier" else None
        made = self.rung(
            workflow,
            asked,
            confidence=seen,
            threshold=self.threshold if role == "small" else None,
            retrieve_k=self.retrieve_k if retrieval else None,
            budget=budget,
            verifier=judge,
            max_tokens=self.max_tokens,
            logprobs=0,  # the ScoredModel asks for them, on every call, as the single arms always have
            name=self.names[role],
        )
        return made, seen

    def _state(self, ex: Example) -> Any:
        return self.state(question=ex.question, paragraphs=list(ex.paragraphs))

    async def answer(self, arm: ArmName, ex: Example, models: Mapping[Role, Model], budget: Budget) -> QuestionRecord:
        """`arm`'s answer to `ex`, as a record (a failed question is a record with its error)."""
        plan = _PLANS[arm]
        if len(plan) > 1:
            return await self._cascade(arm, plan, ex, models, budget)
        made, seen = self._rung(plan[0], models, budget)
        started = time.perf_counter()
        confidence: float | None = None
        failure: AgentFlowError | None = None
        try:
            final, _ = await made.graph.run(self._state(ex), deps=made.deps)
            answer = str(final.answer)
            confidence = await _state_score(seen, final)
        except AgentFlowError as e:
            answer, failure = "", e
        cut = _refused(failure) + _stopped_short(made.name, seen)
        return QuestionRecord.from_bill(
            ex.id,
            budget.bill(),
            answer,
            score(ex, answer),
            model=made.name,
            wall_s=time.perf_counter() - started,
            error=_describe(failure),
            confidence=confidence,
            degradations=cut,
        )

    async def _cascade(
        self, arm: ArmName, plan: Sequence[Step], ex: Example, models: Mapping[Role, Model], budget: Budget
    ) -> QuestionRecord:
        """Small rung, then (when unsure) large rung, each spending from its own scope of the question's budget."""
        scopes = [budget.child(name=f"{budget.name}/{role}") for role, _, _ in plan]
        built = [self._rung(step, models, b) for step, b in zip(plan, scopes, strict=True)]
        cascade = Cascade([r for r, _ in built], budget=budget, on_error="escalate", name=arm)
        decisions: list[Mapping[str, Any]] = []

        def listen(event: Event) -> None:
            if isinstance(event, StateUpdated) and event.node.startswith(f"{arm}/"):
                decisions.append(event.update)

        started = time.perf_counter()
        answer, failure, rung = "", None, None
        try:
            result = await cascade.run(self._state(ex), listeners=[listen])
            answer, rung = str(result.state.answer), result.rung
        except AgentFlowError as e:
            failure = e
        rungs = tuple(
            _rung_record(i, made.name, seen, decisions, scope.bill(), ex, failure)
            for i, ((made, seen), scope) in enumerate(zip(built, scopes, strict=True))
            if i < len(decisions) or (failure is not None and i == len(decisions))
        )
        last = rung if rung is not None else len(rungs) - 1  # the rung that answered, or the one that failed
        return QuestionRecord.from_bill(
            ex.id,
            budget.bill(),
            answer,
            score(ex, answer),
            model=built[last][0].name,
            wall_s=time.perf_counter() - started,
            escalated=any(r.escalated for r in rungs),
            error=_describe(failure),
            confidence=rungs[0].score if rungs else None,
            rungs=rungs,
            degradations=_refused(failure) + tuple(x for made, seen in built for x in _stopped_short(made.name, seen)),
        )


def _rung_record(
    i: int,
    name: str,
    seen: _Seen,
    decisions: Sequence[Mapping[str, Any]],
    bill: Bill,
    ex: Example,
    failure: AgentFlowError | None,
) -> RungRecord:
    """What rung `i` scored, decided, answered and cost on `ex` (a rung without a decision is the one the
    cascade failed in)."""
    answer = "" if seen.state is None else str(seen.state.answer)
    flops = sum(mb.flops + mb.from_cache.flops for mb in bill.models.values())
    if i >= len(decisions):
        return RungRecord(name, answer=answer, flops=flops, why="failed", error=_describe(failure))
    d = decisions[i]
    failed = str(d.get("why", "")).startswith(("rung failed", "no answer ("))
    return RungRecord(
        name,
        score=d.get("score"),
        threshold=d.get("threshold"),
        escalated=bool(d.get("escalated")),
        answer=answer,
        correct=bool(answer) and score(ex, answer).correct,
        flops=flops,
        started=bool(d.get("started", True)),
        degraded=bool(d.get("degraded")),
        why=str(d.get("why", "")),
        error=str(d.get("why")) if failed else None,
    )


async def _state_score(confidence: StateScore[Any], state: Any) -> float | None:
    """A confidence's score of a final state, or None when it cannot say (as a cascade reads it)."""
    try:
        out = confidence(state)
        if inspect.isawaitable(out):
            out = await out
    except ConfidenceError:
        return None
    if out is None or math.isnan(float(out)) or not 0.0 <= float(out) <= 1.0:
        return None
    return float(out)


def _describe(error: AgentFlowError | None) -> str | None:
    return None if error is None else f"{type(error).__name__}: {error}"


def _stopped_short(name: str, seen: _Seen) -> tuple[str, ...]:
    """The degradation of a workflow that stopped short for its budget (e.g. sc sampling fewer)."""
    stopped = seen.state is not None and bool(getattr(seen.state, "degraded", False))
    return (f"{name}: the workflow stopped short (budget)",) if stopped else ()


def _refused(e: BaseException | None) -> tuple[str, ...]:
    """The degradation of a question the budget refused (a BudgetExceeded, also when a graph node wraps it)."""
    while e is not None:
        if isinstance(e, BudgetExceeded):
            return (f"not answered: over budget ({e})",)
        e = e.__cause__
    return ()
