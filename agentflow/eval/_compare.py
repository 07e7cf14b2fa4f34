"""The comparison that proves the point: an agent of small models against a single large model.

On the same questions it runs each arm and keeps every answer in a SQLite `RunStore` as it goes (a
killed run resumes where it stopped, spending nothing twice); model responses go through a
`ResponseCache` so a rerun with the same settings costs nothing. Arms:

- `agent`: a workflow (from `workflows/`) over retrieval of `retrieve_k` paragraphs, on a `Router`
  from the small model to the large one, escalating only when confidence is below the threshold.
- `large`: the large model alone, answering directly over the full context (the usual baseline).
- `large-retrieval`: the large model behind the same retrieval as the agent, so the saving from
  small models is not confused with the saving from shorter prompts.
- `small`: the small model alone behind the same retrieval and workflow (what routing adds).
- `large-cot`: the large model with chain-of-thought over the full context.
- `cascade`: the small model behind retrieval as in `small`; when its confidence is below the threshold,
  the large model answers over the full context as in `large` (a cheap try first, the full expensive
  answer only where it is needed). Its calls are the `small` and `large` arms' calls, so next to those
  arms it is answered from the response cache.

Models are passed in (any `Model`); the CLI starts local llama.cpp servers or uses given URLs.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

from .._budget import Budget, BudgetLimits
from .._calibration import DEFAULT_THRESHOLD, Thresholds
from .._confidence import ConfidenceState, Estimator, TokenProb
from .._exceptions import AgentFlowError, BudgetExceeded, ConfidenceError, ConfigError
from .._router import RouteDecision, Router
from .._types import ChatRequest, Completion, Model
from ._data import Example, Paragraph
from ._metrics import score
from ._report import ArmResult, QuestionRecord, UsageTally, write_report
from ._stores import CachedModel, ResponseCache, RunStore

__all__ = ["ARMS", "ArmName", "CompareConfig", "Comparison", "Meter", "Solver"]

ArmName = Literal["agent", "large", "large-retrieval", "small", "large-cot", "cascade"]
ARMS: tuple[ArmName, ...] = ("agent", "large", "large-retrieval", "small", "large-cot", "cascade")


@dataclass(frozen=True, slots=True)
class CompareConfig:
    """The settings of one comparison; stored with its answers, so a resumed run cannot mix settings."""

    dataset: str
    question_ids: tuple[str, ...]
    arms: tuple[ArmName, ...] = ("agent", "large")
    workflow: str = "direct"
    retrieve_k: int = 2
    threshold: float | None = None  # None: the router's default (or `thresholds_file`)
    thresholds_file: str | None = None
    estimator: str = "mean"
    max_tokens: int = 32
    small_model: str = "qwen2.5-coder-0.5b"
    large_model: str = "qwen2.5-coder-1.5b"

    def __post_init__(self) -> None:
        unknown = [a for a in self.arms if a not in ARMS]
        if unknown or not self.arms:
            raise ConfigError(f"unknown arms {unknown or '(none)'}: choose from {', '.join(ARMS)}")
        if self.retrieve_k < 1:
            raise ConfigError(f"retrieve_k must be >= 1, got {self.retrieve_k}")
        how, _, variants = self.estimator.partition(":")
        if how not in ("mean", "geomean", "min", "joint") or variants not in ("", "variants"):
            raise ConfigError(
                f"unknown estimator {self.estimator!r}: choose mean, geomean, min or joint, optionally "
                "with ':variants' (count 'Yes' and 'yes' as one answer), e.g. mean:variants"
            )


class Solver(Protocol):
    """Runs a named workflow on one question with a model and returns its answer (`workflows.solve`).

    Evaluation is handed one instead of importing the workflows package, which is built on agentflow."""

    async def __call__(
        self,
        workflow: str,
        model: Model,
        *,
        question: str,
        paragraphs: Sequence[Paragraph],
        retrieve_k: int | None,
        budget: Budget | None,
        max_tokens: int,
    ) -> str: ...


class Meter:
    """A Model wrapper that tallies what every call cost (cached calls at their original cost) and keeps
    the last call. With `logprobs_for`, it asks for the logprobs that estimator reads, so this arm's
    requests are the very requests a router with that estimator makes (one cache entry serves both)."""

    def __init__(self, model: Model, tally: UsageTally, *, logprobs_for: Estimator | None = None) -> None:
        self._model = model
        self._tally = tally
        self._estimator = logprobs_for
        self.last: tuple[ChatRequest, Completion] | None = None

    @property
    def name(self) -> str:
        return self._model.name

    async def complete(self, request: ChatRequest) -> Completion:
        if self._estimator is not None:
            request = self._estimator.prepare(request)
        c = await self._model.complete(request)
        self._tally.add(c)
        self.last = (request, c)
        return c


@dataclass
class Comparison:
    """Runs the arms of `config` over `examples` with `small` and `large`, storing into `out_dir`."""

    config: CompareConfig
    examples: Sequence[Example]
    small: Model
    large: Model
    out_dir: Path
    solve: Solver
    limits: BudgetLimits | None = None
    on_question: Callable[[str, QuestionRecord], None] | None = None
    _cache: ResponseCache | None = field(default=None, init=False)

    def _store(self) -> RunStore:
        return RunStore(self.out_dir / "answers.sqlite", config=asdict(self.config))

    def stored_ids(self, arm: str) -> set[str]:
        """Questions of this comparison already answered for `arm` (a resumed run skips them)."""
        if not (self.out_dir / "answers.sqlite").exists():
            return set()
        with self._store() as store:
            return store.done_ids(arm) & {ex.id for ex in self.examples}

    def _thresholds(self) -> Thresholds | Sequence[float] | None:
        if self.config.thresholds_file:
            return Thresholds.load(self.config.thresholds_file)
        return None if self.config.threshold is None else [self.config.threshold]

    def _threshold(self) -> float:
        """The small rung's threshold, for the cascade arm."""
        t = self._thresholds()
        if t is None:
            return DEFAULT_THRESHOLD
        values = t.for_ladder([self.config.small_model, self.config.large_model]) if isinstance(t, Thresholds) else t
        return float(values[0])

    def _estimator(self) -> Estimator:
        how, _, variants = self.config.estimator.partition(":")  # checked by CompareConfig
        return TokenProb(how, variants=bool(variants))  # type: ignore[arg-type]

    async def run(self, cache_path: Path | None = None) -> dict[str, Any]:
        """Answer every (arm, question) not yet stored, then write the report; returns report.json's content.

        `cache_path` is the response cache (default: in `out_dir`); share one between runs so that a
        call any earlier run made with the same settings costs nothing."""
        self.out_dir.mkdir(parents=True, exist_ok=True)
        if cache_path is not None:
            cache_path.parent.mkdir(parents=True, exist_ok=True)
        cache = ResponseCache(cache_path or self.out_dir / "responses.sqlite")
        small, large = CachedModel(self.small, cache), CachedModel(self.large, cache)
        try:
            with self._store() as store:
                for arm in self.config.arms:
                    done = store.done_ids(arm)
                    for ex in self.examples:
                        if ex.id in done:
                            continue
                        record = await self._answer(arm, ex, small, large)
                        store.save(arm, record)
                        if self.on_question is not None:
                            self.on_question(arm, record)
                arms = [_arm_result(arm, store.records(arm), self.examples) for arm in self.config.arms]
                _write_calibration(self.out_dir / "calibration.jsonl", store, self.config)
        finally:
            cache.close()
        meta = {"config": asdict(self.config), "n_questions": len(self.examples)}
        return write_report(self.out_dir, arms, list(self.examples), meta=meta)

    async def _answer(self, arm: ArmName, ex: Example, small: Model, large: Model) -> QuestionRecord:
        tally = UsageTally()
        decisions: list[RouteDecision] = []
        est = self._estimator()
        budget = Budget(self.limits or BudgetLimits(), policy="degrade", name=f"{arm}:{ex.id}")
        cfg = self.config
        model: Model
        scored: Meter | None = None  # the arm whose own answer gets a confidence score
        if arm == "cascade":
            return await self._cascade(ex, small, large, tally, est, budget)
        if arm == "agent":
            # The router asks for logprobs itself; the meters tally its calls without changing them.
            model = Router(
                [Meter(small, tally), Meter(large, tally)],
                estimator=est,
                thresholds=self._thresholds(),
                budget=budget,
                listener=decisions.append,
            )
            workflow, k = cfg.workflow, cfg.retrieve_k
        elif arm in ("small", "large-retrieval"):
            scored = Meter(small if arm == "small" else large, tally, logprobs_for=est)
            model, workflow, k = budget.wrap(scored), cfg.workflow, cfg.retrieve_k
        elif arm == "large-cot":
            model, workflow, k = budget.wrap(Meter(large, tally, logprobs_for=est)), "cot", None
        else:
            model, workflow, k = budget.wrap(Meter(large, tally, logprobs_for=est)), "direct", None
        started = time.perf_counter()
        answer, failure = await self._run(workflow, k, model, budget, ex)
        wall = time.perf_counter() - started
        return tally.record(
            ex.id,
            answer,
            score(ex, answer),
            model=_answering_model(decisions, arm, cfg),
            wall_s=wall,
            escalated=any(d.escalated for d in decisions),
            error=_describe(failure),
            confidence=None if scored is None else await _score(est, scored),
        )

    async def _run(
        self, workflow: str, retrieve_k: int | None, model: Model, budget: Budget, ex: Example
    ) -> tuple[str, AgentFlowError | None]:
        """One workflow on one question: its answer, or "" and the error (one bad question must not lose
        the rest of the run)."""
        try:
            answer = await self.solve(
                workflow,
                model,
                question=ex.question,
                paragraphs=ex.paragraphs,
                retrieve_k=retrieve_k,
                budget=budget,
                max_tokens=self.config.max_tokens,
            )
        except AgentFlowError as e:
            return "", e
        return answer, None

    async def _cascade(
        self, ex: Example, small: Model, large: Model, tally: UsageTally, est: Estimator, budget: Budget
    ) -> QuestionRecord:
        cfg = self.config
        started = time.perf_counter()
        scored = Meter(small, tally, logprobs_for=est)
        answer, failure = await self._run(cfg.workflow, cfg.retrieve_k, budget.wrap(scored), budget, ex)
        confidence = None if failure is not None else await _score(est, scored)
        escalated = confidence is None or confidence < self._threshold()  # a failed or unscorable answer escalates
        if escalated:
            large_model = budget.wrap(Meter(large, tally, logprobs_for=est))
            large_answer, large_failure = await self._run("direct", None, large_model, budget, ex)
            if failure is None and _is_budget_refusal(large_failure):  # the budget cannot pay: keep the small answer
                budget.record_degradation(f"{ex.id}: kept the small model's answer, the large one over budget")
                escalated = False
            else:
                answer, failure = large_answer, large_failure
                budget.record_escalation(cfg.small_model, cfg.large_model)
        return tally.record(
            ex.id,
            answer,
            score(ex, answer),
            model=cfg.large_model if escalated else cfg.small_model,
            wall_s=time.perf_counter() - started,
            escalated=escalated,
            error=_describe(failure),
            confidence=confidence,
        )


async def _score(est: Estimator, meter: Meter) -> float | None:
    """The estimator's confidence in the meter's last answer, or None when there is none or it cannot say."""
    if meter.last is None:
        return None
    request, completion = meter.last
    try:
        return (await est(ConfidenceState(request, completion, meter, None))).score
    except ConfidenceError:
        return None


def _describe(error: AgentFlowError | None) -> str | None:
    return None if error is None else f"{type(error).__name__}: {error}"


def _is_budget_refusal(e: BaseException | None) -> bool:
    """A BudgetExceeded, also when a graph node wraps it."""
    while e is not None:
        if isinstance(e, BudgetExceeded):
            return True
        e = e.__cause__
    return False


def _answering_model(decisions: Sequence[RouteDecision], arm: ArmName, cfg: CompareConfig) -> str:
    final = [d for d in decisions if not d.escalated]
    if final:
        return final[-1].model
    return cfg.small_model if arm == "small" else cfg.large_model


def _arm_result(arm: str, records: Sequence[QuestionRecord], examples: Sequence[Example]) -> ArmResult:
    wanted = {ex.id for ex in examples}
    return ArmResult.from_records(arm, [r for r in records if r.question_id in wanted])


def _write_calibration(path: Path, store: RunStore, cfg: CompareConfig) -> None:
    """Labelled (score, correct) answers of the single-model arms, for `agentflow calibrate`."""
    rungs = {"small": cfg.small_model, "large-retrieval": cfg.large_model}
    ladder = [cfg.small_model, cfg.large_model]
    lines = []
    for arm, model in rungs.items():
        for r in store.records(arm) if arm in cfg.arms else []:
            if r.confidence is not None and r.error is None:
                lines.append(
                    {"score": r.confidence, "correct": r.correct, "rung": model, "cost": r.flops, "ladder": ladder}
                )
    if lines:
        path.write_text("".join(json.dumps(line) + "\n" for line in lines), encoding="utf-8")
