"""The comparison that proves the point: an agent of small models against a single large model.

On the same questions it runs each arm (`_arms`: `small`, `large-retrieval`, `large`, `large-cot`, and
the cascades `agent` and `cascade`) and keeps every answer in a SQLite `RunStore` as it goes (a killed
run resumes where it stopped, spending nothing twice); model responses go through a `ResponseCache` so a
rerun with the same settings costs nothing. It is handed what it needs from the workflows: `rung`
(`workflows.rung`) and `state` (`workflows.QAState`).

Models are passed in (any `Model`), only those the chosen arms need (`roles_needed`); the CLI starts
local llama.cpp servers or uses given URLs. `cache_only=True` replays from the response cache and asks
no model: a request the cache cannot answer fails that question.

Every call is booked on a budget: one scope per question (`question_limits`: FLOPs, tokens, seconds...)
inside one per arm inside one per run (`run_limits`), all with the "degrade" policy: a cascade that cannot
afford its large rung keeps the small answer, a question the budget refuses is not answered, and the
report counts both. The question's bill is its record's account (tokens, FLOPs, cache hits), and
`Comparison.bills` keeps each arm's bill of this run.

Up to `concurrency` questions of an arm run at once (so a vLLM server batches them); each answer is
stored as it comes, and the report and calibration file list them in question order, so they are those
of a sequential run. The report draws the cascades' deferral curves (`_deferral.deferral_section`).

Where the questions are answered is an `Executor`'s business: by default here, in this event loop; a
`RayExecutor` (`_ray`) spreads them over a Ray cluster. Either way this process alone writes the answer
store, arms run one after the other, and the report is built here from the stored records.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Coroutine, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Protocol

from .._bill import DEFAULT_ANSWER_TOKENS, Bill
from .._budget import Budget, BudgetLimits
from .._calibration import DEFAULT_THRESHOLD, Thresholds
from .._exceptions import ConfigError
from .._learned import LearnedConfidence
from .._types import Model
from ._arms import (
    ARM_MODELS,
    ARMS,
    CASCADE_ARMS,
    Answerer,
    ArmName,
    CacheOnly,
    Role,
    RungFactory,
    StateFactory,
    check_estimator,
    describe_estimator,
    estimator_kind,
    roles_needed,
)
from ._data import Example
from ._deferral import deferral_section
from ._report import ArmResult, QuestionRecord, write_report
from ._stores import CachedModel, ResponseCache, RunStore

# the arms live in `_arms`
__all__ = ["ArmRunner", "CompareConfig", "Comparison", "Executor", "Work", "gather_or_cancel", "row_ranges"]


@dataclass(frozen=True, slots=True)
class CompareConfig:
    """The settings of one comparison; stored with its answers, so a resumed run cannot mix settings.

    `split` names the split the questions come from (e.g. "tuning", "evaluation"); the report says it."""

    dataset: str
    question_ids: tuple[str, ...]
    arms: tuple[ArmName, ...] = ("agent", "large")
    workflow: str = "direct"
    retrieve_k: int = 2
    threshold: float | None = None  # None: the default (or `thresholds_file`)
    thresholds_file: str | None = None
    estimator: str = "mean"
    max_tokens: int = DEFAULT_ANSWER_TOKENS
    small_model: str = "qwen2.5-coder-0.5b"
    large_model: str = "qwen2.5-coder-1.5b"
    split: str | None = None

    def __post_init__(self) -> None:
        unknown = [a for a in self.arms if a not in ARMS]
        if unknown or not self.arms:
            raise ConfigError(f"unknown arms {unknown or '(none)'}: choose from {', '.join(ARMS)}")
        if self.retrieve_k < 1:
            raise ConfigError(f"retrieve_k must be >= 1, got {self.retrieve_k}")
        if self.max_tokens < 1:
            raise ConfigError(f"max_tokens must be >= 1, got {self.max_tokens}: answers need at least one token")
        check_estimator(self.estimator, self.workflow)
        if self.split is not None and not self.split.strip():
            raise ConfigError("split is empty: name it (e.g. tuning, evaluation) or leave it out")


@dataclass(frozen=True)
class Work:
    """What answering one question of a comparison needs, wherever it runs (an executor ships it to workers,
    so it pickles): the answerer, the models the arms call, the limits, whether only the cache answers, and
    how many questions may run at once."""

    answerer: Answerer
    roles: tuple[Role, ...]
    question_limits: BudgetLimits | None
    run_limits: BudgetLimits | None
    cache_only: bool
    concurrency: int


class ArmRunner(Protocol):
    """Answers an arm's questions, calling `save(record)` as each answer comes, and returns what the arm spent."""

    async def answer_arm(
        self, arm: ArmName, todo: Sequence[Example], save: Callable[[QuestionRecord], None]
    ) -> Bill: ...

    async def close(self) -> None: ...


class Executor(Protocol):
    """Where a comparison answers its questions (None: here). `open` gets the work and the response cache's
    path, and fails (ConfigError) before any question when it cannot do that work."""

    async def open(self, work: Work, cache_path: Path) -> ArmRunner: ...


@dataclass
class Comparison:
    """Runs the arms of `config` over `examples` with `small` and `large`, storing into `out_dir`.

    `rung` builds each arm's rungs (`workflows.rung`) and `state` the question's state (`workflows.QAState`).
    `small`/`large` may be None when no chosen arm calls that model (or with `cache_only`).
    `question_limits` caps each question, `run_limits` the whole run (None: count only). `concurrency`
    questions of an arm run at once. `rows` (the dataset rows of `examples`) only labels the report.
    `on_arm(arm)` is called when an arm starts, `on_question(arm, record)` after each answer. After
    `run()`, `bills[arm]` is what each arm spent in this run, as its budget counted it (the report's
    figures are built from the same bills). `executor` answers the questions elsewhere (a `RayExecutor`,
    which then makes the models from its own sources: leave `small` and `large` None); None: here."""

    config: CompareConfig
    examples: Sequence[Example]
    small: Model | None
    large: Model | None
    out_dir: Path
    rung: RungFactory
    state: StateFactory
    question_limits: BudgetLimits | None = None
    run_limits: BudgetLimits | None = None
    cache_only: bool = False
    concurrency: int = 1
    rows: Sequence[int] | None = None
    on_arm: Callable[[str], None] | None = None
    on_question: Callable[[str, QuestionRecord], None] | None = None
    executor: Executor | None = None
    bills: dict[str, Bill] = field(default_factory=dict, init=False)
    _answerer: Answerer = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if isinstance(self.concurrency, bool) or not isinstance(self.concurrency, int) or self.concurrency < 1:
            raise ConfigError(f"concurrency must be a whole number >= 1 (questions at once), got {self.concurrency!r}")
        cfg = self.config
        kind, path = estimator_kind(cfg.estimator)
        threshold = cfg.threshold if cfg.threshold is not None else DEFAULT_THRESHOLD
        if cfg.thresholds_file:  # a missing or mismatched file is refused before any question
            threshold = Thresholds.load(cfg.thresholds_file).for_ladder([cfg.small_model, cfg.large_model])[0]
        self._answerer = Answerer(
            self.rung,
            self.state,
            cfg.workflow,
            cfg.retrieve_k,
            cfg.max_tokens,
            cfg.estimator,
            {"small": cfg.small_model, "large": cfg.large_model},
            threshold,
            LearnedConfidence.load(path) if kind == "learned" else None,
        )
        if self.executor is not None and (self.small is not None or self.large is not None):
            raise ConfigError(
                "an executor makes the models in its workers, from its own sources: pass small=None and large=None "
                "and give the executor the sources (RayExecutor(sources={'small': ..., 'large': ...}))"
            )
        if self.cache_only or self.executor is not None:  # an executor checks its own models when opened
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
        """What the answer store fingerprints: the config (a field added later only when set, so that a run
        started before keeps its fingerprint), the per-question limits when set, and for cascade arms the
        version of their design (answers of the router-based arms must not be mixed with the cascades')."""
        settings = asdict(self.config)
        if settings.get("split") is None:
            del settings["split"]
        if self.question_limits is not None:
            settings["question_limits"] = asdict(self.question_limits)
        if any(a in CASCADE_ARMS for a in self.config.arms):
            settings["cascade_arms"] = "workflow cascades (2)"
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

    def _source(self, role: Role) -> Model:
        given = self._given(role)
        return CacheOnly(self._name(role)) if self.cache_only or given is None else given

    def work(self) -> Work:
        """What answering a question of this comparison needs (what an executor ships to its workers)."""
        return Work(
            self._answerer,
            roles_needed(self.config.arms),
            self.question_limits,
            self.run_limits,
            self.cache_only,
            self.concurrency,
        )

    async def run(self, cache_path: Path | None = None) -> dict[str, Any]:
        """Answer every (arm, question) not yet stored, then write the report; returns report.json's content.

        `cache_path` is the response cache (default: in `out_dir`); share one between runs so that a
        call any earlier run made with the same settings costs nothing."""
        self.out_dir.mkdir(parents=True, exist_ok=True)
        if cache_path is not None:
            cache_path.parent.mkdir(parents=True, exist_ok=True)
        cache_file = cache_path or self.out_dir / "responses.sqlite"
        if self.executor is None:
            models = {role: self._source(role) for role in roles_needed(self.config.arms)}
            runner: ArmRunner = _Here(self.work(), models, cache_file)
        else:
            runner = await self.executor.open(self.work(), cache_file)
        try:
            with self._store() as store:
                for arm in self.config.arms:
                    if self.on_arm is not None:
                        self.on_arm(arm)
                    done = _answered(store, arm)
                    todo = [ex for ex in self.examples if ex.id not in done]
                    self.bills[arm] = await runner.answer_arm(arm, todo, self._saver(store, arm))
                arms = [_arm_result(arm, store.records(arm), self.examples) for arm in self.config.arms]
                _write_calibration(self.out_dir / "calibration.jsonl", arms, self.config)
        finally:
            await runner.close()
        deferral = deferral_section({a.name: a.records for a in arms}, estimator=self.config.estimator)
        return write_report(
            self.out_dir, arms, list(self.examples), meta=self._meta(), deferral=deferral, bills=self.bills
        )

    def _saver(self, store: RunStore, arm: ArmName) -> Callable[[QuestionRecord], None]:
        """Stores an answer of `arm` (this process is the answer store's one writer), then reports it."""

        def save(record: QuestionRecord) -> None:
            store.save(arm, record)
            if self.on_question is not None:
                self.on_question(arm, record)

        return save

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
        meta: dict[str, Any] = {"dataset": cfg.dataset}
        if cfg.split is not None:
            meta["split"] = cfg.split
        meta |= {
            "questions": f"{n} (rows {row_ranges(self.rows)})" if self.rows else str(n),
            "arms": list(cfg.arms),
            "workflow": f"{cfg.workflow}, reading the top {cfg.retrieve_k} paragraphs",
            "models": {"small": cfg.small_model, "large": cfg.large_model},
            "estimator": describe_estimator(cfg.estimator),
            "thresholds": thresholds,
            "max tokens per answer": cfg.max_tokens,
            "questions at once": self.concurrency,
        }
        for label, limits in (("budget per question", self.question_limits), ("budget per run", self.run_limits)):
            if limits is not None:
                meta[label] = _limits_text(limits)
        if self.cache_only:
            meta["replay"] = "answers only from the response cache; no model was asked"
        meta["config"] = asdict(cfg)
        return meta


class _Here:
    """Answers questions in this event loop: models behind one response cache, one budget for the run (a scope
    per arm inside it, one per question inside that), up to `concurrency` questions at once."""

    def __init__(self, work: Work, sources: Mapping[Role, Model], cache_path: Path) -> None:
        self._work = work
        self._cache = ResponseCache(cache_path)
        self._models: dict[Role, Model] = {role: CachedModel(model, self._cache) for role, model in sources.items()}
        self._run_budget = Budget(work.run_limits or BudgetLimits(), policy="degrade", name="compare")

    async def answer_arm(self, arm: ArmName, todo: Sequence[Example], save: Callable[[QuestionRecord], None]) -> Bill:
        """Answer `todo`, up to `concurrency` at once, saving each answer as it comes; the arm's bill."""
        arm_budget = self._run_budget.child(name=arm)
        gate = asyncio.Semaphore(self._work.concurrency)
        limits = self._work.question_limits or BudgetLimits()

        async def one(ex: Example) -> None:
            async with gate:
                budget = arm_budget.child(limits, name=f"{arm}:{ex.id}")
                record = await self._work.answerer.answer(arm, ex, self._models, budget)
            save(record)

        await gather_or_cancel([one(ex) for ex in todo])
        return arm_budget.bill()

    async def close(self) -> None:
        self._cache.close()


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


def _answered(store: RunStore, arm: str) -> set[str]:
    """The questions `arm` answered without an error (a failed one, e.g. on a server that was down, is asked
    again when the run is resumed; its stored record is then replaced)."""
    return {r.question_id for r in store.records(arm) if r.error is None}


def _arm_result(arm: str, records: Sequence[QuestionRecord], examples: Sequence[Example]) -> ArmResult:
    """One arm's records of these questions, in question order (the order of a sequential run, whatever
    order concurrent questions finished in)."""
    by_id = {r.question_id: r for r in records}
    return ArmResult.from_records(arm, [by_id[ex.id] for ex in examples if ex.id in by_id])


def _write_calibration(path: Path, arms: Sequence[ArmResult], cfg: CompareConfig) -> None:
    """Labelled (score, correct) answers of the single-model arms, for `agentflow calibrate`."""
    rungs = {"small": cfg.small_model, "large-retrieval": cfg.large_model}
    ladder = [cfg.small_model, cfg.large_model]
    lines = []
    for arm in arms:
        for r in arm.records if arm.name in rungs else ():
            if r.confidence is not None and r.error is None:
                lines.append(
                    {
                        "score": r.confidence,
                        "correct": r.correct,
                        "rung": rungs[arm.name],
                        "cost": r.flops,
                        "ladder": ladder,
                    }
                )
    if lines:
        path.write_text("".join(json.dumps(line) + "\n" for line in lines), encoding="utf-8")


async def gather_or_cancel(coros: Sequence[Coroutine[Any, Any, None]]) -> None:
    """Run `coros` as tasks; when one fails (or this is cancelled), cancel the others, wait for them, and raise."""
    tasks = [asyncio.ensure_future(c) for c in coros]
    try:
        await asyncio.gather(*tasks)
    except BaseException:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise
