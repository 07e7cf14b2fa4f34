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

Models are passed in (any `Model`), only those the chosen arms need (`roles_needed`); the CLI starts
local llama.cpp servers or uses given URLs. `cache_only=True` replays from the response cache and asks
no model: a request the cache cannot answer fails that question.

Every call is booked on a budget: one scope per question (`question_limits`) inside one per arm inside
one per run (`run_limits`), all with the "degrade" policy. The question's bill is its record's account
(tokens, FLOPs, cache hits), and `Comparison.bills` keeps each arm's bill of this run.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Literal, Protocol

from .._bill import DEFAULT_ANSWER_TOKENS, Bill
from .._budget import Budget, BudgetLimits
from .._calibration import DEFAULT_THRESHOLD, Thresholds
from .._confidence import ConfidenceState, Estimator, TokenProb
from .._exceptions import AgentFlowError, BudgetExceeded, ConfidenceError, ConfigError, ServerUnavailableError
from .._router import RouteDecision, Router
from .._types import ChatRequest, Completion, Model
from ._data import Example, Paragraph
from ._metrics import score
from ._report import ArmResult, QuestionRecord, write_report
from ._stores import CachedModel, ResponseCache, RunStore

__all__ = [
    "ARMS",
    "ARM_MODELS",
    "ArmName",
    "CompareConfig",
    "Comparison",
    "Role",
    "ScoredModel",
    "Solver",
    "roles_needed",
    "row_ranges",
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

_HOW: Mapping[str, Literal["mean", "geomean", "min", "joint"]] = {
    "mean": "mean",
    "geomean": "geomean",
    "min": "min",
    "joint": "joint",
}


def roles_needed(arms: Sequence[ArmName]) -> tuple[Role, ...]:
    """The models (small, large) that `arms` call, small first."""
    needed = {role for arm in arms for role in ARM_MODELS[arm]}
    return tuple(role for role in ("small", "large") if role in needed)


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
    max_tokens: int = DEFAULT_ANSWER_TOKENS
    small_model: str = "qwen2.5-coder-0.5b"
    large_model: str = "qwen2.5-coder-1.5b"

    def __post_init__(self) -> None:
        unknown = [a for a in self.arms if a not in ARMS]
        if unknown or not self.arms:
            raise ConfigError(f"unknown arms {unknown or '(none)'}: choose from {', '.join(ARMS)}")
        if self.retrieve_k < 1:
            raise ConfigError(f"retrieve_k must be >= 1, got {self.retrieve_k}")
        if self.max_tokens < 1:
            raise ConfigError(f"max_tokens must be >= 1, got {self.max_tokens}: answers need at least one token")
        how, _, variants = self.estimator.partition(":")
        if how not in _HOW or variants not in ("", "variants"):
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


class ScoredModel:
    """A Model wrapper that keeps its last call, so that the answer can be scored. With `logprobs_for`, it
    asks for the logprobs that estimator reads, so this arm's requests are the very requests a router with
    that estimator makes (one cache entry serves both). What a call cost is the budget's to count."""

    def __init__(self, model: Model, *, logprobs_for: Estimator | None = None) -> None:
        self._model = model
        self._estimator = logprobs_for
        self.last: tuple[ChatRequest, Completion] | None = None

    @property
    def name(self) -> str:
        return self._model.name

    async def complete(self, request: ChatRequest) -> Completion:
        if self._estimator is not None:
            request = self._estimator.prepare(request)
        c = await self._model.complete(request)
        self.last = (request, c)
        return c


class _CacheOnly:
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


@dataclass
class Comparison:
    """Runs the arms of `config` over `examples` with `small` and `large`, storing into `out_dir`.

    `small`/`large` may be None when no chosen arm calls that model (or with `cache_only`).
    `question_limits` caps each question, `run_limits` the whole run (None: count only). `rows` (the
    dataset rows of `examples`) only labels the report. `on_arm(arm)` is called when an arm starts,
    `on_question(arm, record)` after each answer. After `run()`, `bills[arm]` is what each arm spent in
    this run, as its budget counted it (the report's figures are built from the same bills)."""

    config: CompareConfig
    examples: Sequence[Example]
    small: Model | None
    large: Model | None
    out_dir: Path
    solve: Solver
    question_limits: BudgetLimits | None = None
    run_limits: BudgetLimits | None = None
    cache_only: bool = False
    rows: Sequence[int] | None = None
    on_arm: Callable[[str], None] | None = None
    on_question: Callable[[str, QuestionRecord], None] | None = None
    bills: dict[str, Bill] = field(default_factory=dict, init=False)

    def __post_init__(self) -> None:
        if self.cache_only:
            return
        for role in roles_needed(self.config.arms):
            if self._given(role) is None:
                users = [a for a in self.config.arms if role in ARM_MODELS[a]]
                raise ConfigError(
                    f"arms {', '.join(users)} call the {role} model ({self._name(role)}) but none was given: "
                    f"pass {role}=..., drop those arms, or replay from the response cache with cache_only=True"
                )

    def _given(self, role: Role) -> Model | None:
        return self.small if role == "small" else self.large

    def _name(self, role: Role) -> str:
        return self.config.small_model if role == "small" else self.config.large_model

    def _settings(self) -> dict[str, Any]:
        """What the answer store fingerprints: the config, and the per-question limits when set (they change
        what an answer may spend; absent when unset, so a run without limits keeps its old fingerprint)."""
        settings = asdict(self.config)
        if self.question_limits is not None:
            settings["question_limits"] = asdict(self.question_limits)
        return settings

    def _store(self) -> RunStore:
        return RunStore(self.out_dir / "answers.sqlite", config=self._settings())

    def stored_ids(self, arm: str) -> set[str]:
        """Questions of this comparison already answered for `arm` (a resumed run skips them; a question that
        failed is asked again)."""
        if not (self.out_dir / "answers.sqlite").exists():
            return set()
        with self._store() as store:
            return _answered(store, arm) & {ex.id for ex in self.examples}

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
        return TokenProb(_HOW[how], variants=bool(variants))

    def _source(self, role: Role) -> Model:
        given = self._given(role)
        return _CacheOnly(self._name(role)) if self.cache_only or given is None else given

    async def run(self, cache_path: Path | None = None) -> dict[str, Any]:
        """Answer every (arm, question) not yet stored, then write the report; returns report.json's content.

        `cache_path` is the response cache (default: in `out_dir`); share one between runs so that a
        call any earlier run made with the same settings costs nothing."""
        self.out_dir.mkdir(parents=True, exist_ok=True)
        if cache_path is not None:
            cache_path.parent.mkdir(parents=True, exist_ok=True)
        cache = ResponseCache(cache_path or self.out_dir / "responses.sqlite")
        models = {role: CachedModel(self._source(role), cache) for role in roles_needed(self.config.arms)}
        run_budget = Budget(self.run_limits or BudgetLimits(), policy="degrade", name="compare")
        try:
            with self._store() as store:
                for arm in self.config.arms:
                    if self.on_arm is not None:
                        self.on_arm(arm)
                    arm_budget = run_budget.child(name=arm)
                    done = _answered(store, arm)
                    for ex in self.examples:
                        if ex.id in done:
                            continue
                        budget = arm_budget.child(self.question_limits or BudgetLimits(), name=f"{arm}:{ex.id}")
                        record = await self._answer(arm, ex, models, budget)
                        store.save(arm, record)
                        if self.on_question is not None:
                            self.on_question(arm, record)
                    self.bills[arm] = arm_budget.bill()
                arms = [_arm_result(arm, store.records(arm), self.examples) for arm in self.config.arms]
                _write_calibration(self.out_dir / "calibration.jsonl", store, self.config)
        finally:
            cache.close()
        return write_report(self.out_dir, arms, list(self.examples), meta=self._meta())

    def _meta(self) -> dict[str, Any]:
        """The settings as report.md lists them (the full config, question ids included, is kept under "config")."""
        cfg = self.config
        n = len(self.examples)
        if cfg.thresholds_file:
            thresholds = f"from {cfg.thresholds_file}"
        elif cfg.threshold is not None:
            thresholds = f"{cfg.threshold:g}"
        else:
            thresholds = f"{DEFAULT_THRESHOLD:g} (default)"
        meta: dict[str, Any] = {
            "dataset": cfg.dataset,
            "questions": f"{n} (rows {row_ranges(self.rows)})" if self.rows else str(n),
            "arms": list(cfg.arms),
            "workflow": f"{cfg.workflow}, reading the top {cfg.retrieve_k} paragraphs",
            "models": {"small": cfg.small_model, "large": cfg.large_model},
            "estimator": cfg.estimator,
            "thresholds": thresholds,
            "max tokens per answer": cfg.max_tokens,
        }
        for label, limits in (("budget per question", self.question_limits), ("budget per run", self.run_limits)):
            if limits is not None:
                meta[label] = _limits_text(limits)
        if self.cache_only:
            meta["replay"] = "answers only from the response cache; no model was asked"
        meta["config"] = asdict(cfg)
        return meta

    async def _answer(self, arm: ArmName, ex: Example, models: Mapping[Role, Model], budget: Budget) -> QuestionRecord:
        decisions: list[RouteDecision] = []
        est = self._estimator()
        cfg = self.config
        model: Model
        scored: ScoredModel | None = None  # the arm whose own answer gets a confidence score
        if arm == "cascade":
            return await self._cascade(ex, models, est, budget)
        if arm == "agent":
            # The router asks for logprobs itself and books every rung on the budget.
            model = Router(
                [models["small"], models["large"]],
                estimator=est,
                thresholds=self._thresholds(),
                budget=budget,
                listener=decisions.append,
            )
            workflow, k = cfg.workflow, cfg.retrieve_k
        elif arm in ("small", "large-retrieval"):
            scored = ScoredModel(models["small" if arm == "small" else "large"], logprobs_for=est)
            model, workflow, k = budget.wrap(scored), cfg.workflow, cfg.retrieve_k
        elif arm == "large-cot":
            model, workflow, k = budget.wrap(ScoredModel(models["large"], logprobs_for=est)), "cot", None
        else:
            model, workflow, k = budget.wrap(ScoredModel(models["large"], logprobs_for=est)), "direct", None
        started = time.perf_counter()
        answer, failure = await self._run(workflow, k, model, budget, ex)
        wall = time.perf_counter() - started
        return QuestionRecord.from_bill(
            ex.id,
            budget.bill(),
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
        self, ex: Example, models: Mapping[Role, Model], est: Estimator, budget: Budget
    ) -> QuestionRecord:
        cfg = self.config
        started = time.perf_counter()
        scored = ScoredModel(models["small"], logprobs_for=est)
        answer, failure = await self._run(cfg.workflow, cfg.retrieve_k, budget.wrap(scored), budget, ex)
        confidence = None if failure is not None else await _score(est, scored)
        escalated = confidence is None or confidence < self._threshold()  # a failed or unscorable answer escalates
        if escalated:
            large_model = budget.wrap(ScoredModel(models["large"], logprobs_for=est))
            large_answer, large_failure = await self._run("direct", None, large_model, budget, ex)
            if failure is None and _is_budget_refusal(large_failure):  # the budget cannot pay: keep the small answer
                budget.record_degradation(f"{ex.id}: kept the small model's answer, the large one over budget")
                escalated = False
            else:
                answer, failure = large_answer, large_failure
                budget.record_escalation(cfg.small_model, cfg.large_model)
        return QuestionRecord.from_bill(
            ex.id,
            budget.bill(),
            answer,
            score(ex, answer),
            model=cfg.large_model if escalated else cfg.small_model,
            wall_s=time.perf_counter() - started,
            escalated=escalated,
            error=_describe(failure),
            confidence=confidence,
        )


def row_ranges(rows: Sequence[int]) -> str:
    """Row numbers as ranges, in the order given: [0, 1, 2, 3, 250, 251] -> "0-3, 250-251"."""
    runs: list[list[int]] = []
    for r in rows:
        if runs and r == runs[-1][1] + 1:
            runs[-1][1] = r
        else:
            runs.append([r, r])
    return ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in runs)


def _limits_text(limits: BudgetLimits) -> str:
    set_ = [f"{f.name} {getattr(limits, f.name):g}" for f in fields(limits) if getattr(limits, f.name) is not None]
    return ", ".join(set_) or "none (counted only)"


async def _score(est: Estimator, scored: ScoredModel) -> float | None:
    """The estimator's confidence in the model's last answer, or None when there is none or it cannot say."""
    if scored.last is None:
        return None
    request, completion = scored.last
    try:
        return (await est(ConfidenceState(request, completion, scored, None))).score
    except ConfidenceError:
        return None


def _answered(store: RunStore, arm: str) -> set[str]:
    """The questions `arm` answered without an error (a failed one, e.g. on a server that was down, is asked
    again when the run is resumed; its stored record is then replaced)."""
    return {r.question_id for r in store.records(arm) if r.error is None}


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
