"""Comparison reports: per-question records in, report.json / report.md / pareto.png out.

The compare command only accumulates `QuestionRecord`s (one per question and arm, also what the
`RunStore` keeps); `ArmResult.from_records` turns one arm's records into its totals, and
`write_report` writes the three files:

    arms = [ArmResult.from_records("small", small_records), ArmResult.from_records("cascade", cascade_records)]
    report = write_report(out_dir, arms, examples)   # -> the report.json content as a dict
    console.print(render_table(report))   # from ._report_render
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .._catalog import get_model
from .._events import Event, ModelCallEvent
from .._exceptions import UnknownModelError
from .._types import Completion, Usage
from ._data import Example
from ._metrics import Interval, Score, bootstrap_ci, paired_bootstrap_diff
from ._report_render import plot_pareto, render_markdown

__all__ = [
    "ORIGINAL_USAGE",
    "REPORT_VERSION",
    "ArmResult",
    "QuestionRecord",
    "UsageTally",
    "build_report",
    "estimate_flops",
    "original_usage",
    "write_report",
]

REPORT_VERSION = 1

ORIGINAL_USAGE = "original_usage"
"""The Completion.meta key where a response cache keeps what a cached answer cost when it was made."""


def original_usage(completion: Completion) -> Usage:
    """What a completion cost when it was made (for a cache hit, the usage of the original call)."""
    orig = completion.meta.get(ORIGINAL_USAGE)
    return orig if isinstance(orig, Usage) else completion.usage


def estimate_flops(usage: Mapping[str, Usage]) -> float:
    """FLOPs of per-model usage from the catalog (2 x active params x tokens); UnknownModelError if missing."""
    return sum(get_model(name).flops(u.total_tokens) for name, u in usage.items())


def _usage_json(u: Usage) -> dict[str, int]:
    return {"requests": u.requests, "prompt_tokens": u.prompt_tokens, "completion_tokens": u.completion_tokens}


def _usage_from(d: Mapping[str, Any]) -> Usage:
    return Usage(int(d.get("requests", 0)), int(d.get("prompt_tokens", 0)), int(d.get("completion_tokens", 0)))


def _sum_usage(items: Sequence[Mapping[str, Usage]]) -> dict[str, Usage]:
    out: dict[str, Usage] = {}
    for usage in items:
        for name, u in usage.items():
            out[name] = out.get(name, Usage()) + u
    return dict(sorted(out.items()))


@dataclass(frozen=True, slots=True)
class QuestionRecord:
    """One arm's outcome on one question.

    `usage` is per model and counts every call as if it had been made (cached ones included);
    `cached_usage` is the part a response cache served, so spent-now = usage - cached_usage.
    `model` is the model whose answer was kept; `escalated` says a larger rung was used.
    `error` holds a message when the question failed (it then counts as wrong).
    """

    question_id: str
    answer: str
    correct: bool
    f1: float = 0.0
    usage: Mapping[str, Usage] = field(default_factory=dict, hash=False)
    cached_usage: Mapping[str, Usage] = field(default_factory=dict, hash=False)
    flops: float = 0.0
    model: str | None = None
    wall_s: float = 0.0
    escalated: bool = False
    error: str | None = None
    confidence: float | None = None

    @property
    def em(self) -> float:
        return 1.0 if self.correct else 0.0

    @property
    def calls(self) -> int:
        return sum(u.requests for u in self.usage.values())

    @property
    def tokens(self) -> int:
        return sum(u.total_tokens for u in self.usage.values())

    def to_json(self) -> dict[str, Any]:
        return {
            "question_id": self.question_id,
            "answer": self.answer,
            "correct": self.correct,
            "f1": self.f1,
            "usage": {m: _usage_json(u) for m, u in self.usage.items()},
            "cached_usage": {m: _usage_json(u) for m, u in self.cached_usage.items()},
            "flops": self.flops,
            "model": self.model,
            "wall_s": self.wall_s,
            "calls": self.calls,
            "escalated": self.escalated,
            "error": self.error,
            "confidence": self.confidence,
        }

    @staticmethod
    def from_json(d: Mapping[str, Any]) -> QuestionRecord:
        return QuestionRecord(
            question_id=str(d["question_id"]),
            answer=str(d.get("answer", "")),
            correct=bool(d.get("correct", False)),
            f1=float(d.get("f1", 0.0)),
            usage={m: _usage_from(u) for m, u in dict(d.get("usage") or {}).items()},
            cached_usage={m: _usage_from(u) for m, u in dict(d.get("cached_usage") or {}).items()},
            flops=float(d.get("flops", 0.0)),
            model=d.get("model"),
            wall_s=float(d.get("wall_s", 0.0)),
            escalated=bool(d.get("escalated", False)),
            error=d.get("error"),
            confidence=None if d.get("confidence") is None else float(d["confidence"]),
        )


def _add(into: dict[str, Usage], model: str, usage: Usage) -> None:
    into[model] = into.get(model, Usage()) + usage


@dataclass(slots=True)
class UsageTally:
    """What one question cost, per model: feed it the completions (`add`), or pass it to a graph run as
    a listener (it reads ModelCallEvents), then turn it into the question's record.

    A cache hit counts in `usage` at its original cost ("would have cost") and also in `cached`.
    Through events a hit only shows what it spent now (zero), so prefer `add` when caching.
    """

    usage: dict[str, Usage] = field(default_factory=dict)
    cached: dict[str, Usage] = field(default_factory=dict)

    def add(self, completion: Completion) -> None:
        cost = original_usage(completion)
        if completion.cached and cost.requests == 0:
            cost = cost + Usage(requests=1)
        _add(self.usage, completion.model, cost)
        if completion.cached:
            _add(self.cached, completion.model, cost)

    def __call__(self, event: Event) -> None:
        if isinstance(event, ModelCallEvent):
            cost = event.usage + Usage(requests=1) if event.usage.requests == 0 else event.usage
            _add(self.usage, event.model, cost)
            if event.cached:
                _add(self.cached, event.model, cost)

    def record(
        self,
        question_id: str,
        answer: str,
        score: Score,
        *,
        model: str | None = None,
        wall_s: float = 0.0,
        escalated: bool = False,
        error: str | None = None,
        flops: float | None = None,
        confidence: float | None = None,
    ) -> QuestionRecord:
        """The QuestionRecord; `flops` defaults to the catalog estimate of the usage."""
        return QuestionRecord(
            question_id=question_id,
            answer=answer,
            correct=score.correct,
            f1=score.f1,
            usage=dict(sorted(self.usage.items())),
            cached_usage=dict(sorted(self.cached.items())),
            flops=estimate_flops(self.usage) if flops is None else flops,
            model=model,
            wall_s=wall_s,
            escalated=escalated,
            error=error,
            confidence=confidence,
        )


@dataclass(frozen=True, slots=True)
class ArmResult:
    """One arm (a model or workflow) of a comparison: its records and what they add up to."""

    name: str
    records: tuple[QuestionRecord, ...]

    @staticmethod
    def from_records(name: str, records: Sequence[QuestionRecord]) -> ArmResult:
        ids = [r.question_id for r in records]
        if len(set(ids)) != len(ids):
            dup = next(i for i in ids if ids.count(i) > 1)
            raise ValueError(f"arm {name!r} has question {dup!r} twice: keep one record per question")
        return ArmResult(name, tuple(records))

    @property
    def n(self) -> int:
        return len(self.records)

    def _mean(self, values: Sequence[float]) -> float:
        return sum(values) / len(values) if values else math.nan

    @property
    def em(self) -> float:
        return self._mean([r.em for r in self.records])

    @property
    def f1(self) -> float:
        return self._mean([r.f1 for r in self.records])

    def em_ci(self, *, n: int = 2000, seed: int = 0, alpha: float = 0.05) -> Interval:
        return bootstrap_ci([r.em for r in self.records], n=n, seed=seed, alpha=alpha)

    @property
    def usage(self) -> dict[str, Usage]:
        return _sum_usage([r.usage for r in self.records])

    @property
    def cached_usage(self) -> dict[str, Usage]:
        return _sum_usage([r.cached_usage for r in self.records])

    @property
    def flops(self) -> float:
        return sum(r.flops for r in self.records)

    @property
    def flops_per_question(self) -> float:
        return self.flops / self.n if self.n else math.nan

    @property
    def wall_s(self) -> float:
        return sum(r.wall_s for r in self.records)

    @property
    def calls(self) -> int:
        return sum(r.calls for r in self.records)

    @property
    def escalation_rate(self) -> float:
        return self._mean([1.0 if r.escalated else 0.0 for r in self.records])

    @property
    def errors(self) -> int:
        return sum(r.error is not None for r in self.records)


# --- report.json ----------------------------------------------------------------------------------


def _num(x: float) -> float | None:
    return None if math.isnan(x) else round(x, 6)


def _arm_json(arm: ArmResult, *, seed: int) -> dict[str, Any]:
    ci = arm.em_ci(seed=seed)
    usage = arm.usage
    cached = arm.cached_usage
    cached_flops = sum(get_model(m).flops(u.total_tokens) for m, u in cached.items() if _known(m))
    return {
        "name": arm.name,
        "n": arm.n,
        "em": _num(arm.em),
        "em_ci95": [_num(ci.lo), _num(ci.hi)],
        "f1": _num(arm.f1),
        "tokens": {m: _usage_json(u) for m, u in usage.items()},
        "prompt_tokens": sum(u.prompt_tokens for u in usage.values()),
        "completion_tokens": sum(u.completion_tokens for u in usage.values()),
        "cached_tokens": {m: _usage_json(u) for m, u in cached.items()},
        "flops": arm.flops,
        "flops_per_question": _num(arm.flops_per_question),
        "flops_spent_now": max(arm.flops - cached_flops, 0.0),
        "wall_s": round(arm.wall_s, 3),
        "calls": arm.calls,
        "escalation_rate": _num(arm.escalation_rate),
        "errors": arm.errors,
    }


def _known(model: str) -> bool:
    try:
        get_model(model)
    except UnknownModelError:
        return False
    return True


def _comparisons(arms: Sequence[ArmResult], *, seed: int) -> list[dict[str, Any]]:
    out = []
    for i, a in enumerate(arms):
        for b in arms[i + 1 :]:
            ra = {r.question_id: r for r in a.records}
            common = [r.question_id for r in b.records if r.question_id in ra]
            rb = {r.question_id: r for r in b.records}
            diff = paired_bootstrap_diff([ra[q].em for q in common], [rb[q].em for q in common], seed=seed)
            out.append(
                {
                    "a": a.name,
                    "b": b.name,
                    "metric": "em",
                    "n": len(common),
                    "diff": _num(diff.mean),
                    "ci95": [_num(diff.lo), _num(diff.hi)],
                    "b_better": sum(rb[q].correct and not ra[q].correct for q in common),
                    "a_better": sum(ra[q].correct and not rb[q].correct for q in common),
                }
            )
    return out


def _rows(arms: Sequence[ArmResult], examples: Sequence[Example] | None) -> list[dict[str, Any]]:
    by_id = {e.id: e for e in examples or ()}
    order: list[str] = [e.id for e in examples or ()]
    seen = set(order)
    for arm in arms:
        for r in arm.records:
            if r.question_id not in seen:
                seen.add(r.question_id)
                order.append(r.question_id)
    lookup = [{r.question_id: r for r in arm.records} for arm in arms]
    rows = []
    for qid in order:
        row: dict[str, Any] = {"question_id": qid}
        if qid in by_id:
            row["question"] = by_id[qid].question
            row["gold"] = by_id[qid].answer
        row["arms"] = {
            arm.name: {
                "answer": rec.answer,
                "correct": rec.correct,
                "f1": _num(rec.f1),
                "tokens": {m: _usage_json(u) for m, u in rec.usage.items()},
                "model": rec.model,
                "flops": rec.flops,
                "escalated": rec.escalated,
                "error": rec.error,
            }
            for arm, recs in zip(arms, lookup, strict=True)
            if (rec := recs.get(qid)) is not None
        }
        if row["arms"]:
            rows.append(row)
    return rows


def build_report(
    arms: Sequence[ArmResult],
    examples: Sequence[Example] | None = None,
    *,
    meta: Mapping[str, Any] | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """The report.json content: per-arm totals with a 95% bootstrap interval for EM, paired EM
    differences between every pair of arms (b - a), and one row per question."""
    names = [a.name for a in arms]
    if len(set(names)) != len(names):
        raise ValueError(f"arm names must be unique, got {names}: name each arm after its model or workflow")
    return {
        "version": REPORT_VERSION,
        "meta": dict(meta or {}),
        "arms": [_arm_json(a, seed=seed) for a in arms],
        "comparisons": _comparisons(arms, seed=seed),
        "questions": _rows(arms, examples),
    }


# --- renderings -----------------------------------------------------------------------------------


def write_report(
    out_dir: Path | str,
    arms: Sequence[ArmResult],
    examples: Sequence[Example] | None = None,
    *,
    meta: Mapping[str, Any] | None = None,
    plot: bool = True,
    seed: int = 0,
) -> dict[str, Any]:
    """Write report.json, report.md and (with plot=True, needs matplotlib) pareto.png into out_dir."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    report = build_report(arms, examples, meta=meta, seed=seed)
    (out / "report.json").write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    (out / "report.md").write_text(render_markdown(report), encoding="utf-8")
    if plot:
        plot_pareto(report, out / "pareto.png")
    return report
