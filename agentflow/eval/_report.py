"""Comparison reports: per-question records in, report.json / report.md / pareto.png out.

The compare command only accumulates `QuestionRecord`s (one per question and arm, also what the
`RunStore` keeps). A record is built from the question's `Bill` (`QuestionRecord.from_bill`), the one
account a `Budget` keeps of every call, so the report's tokens and FLOPs are the bill's own figures, not
a second count. `ArmResult.from_records` turns one arm's records into its totals, and `write_report`
writes the three files:

    arms = [ArmResult.from_records("small", small_records), ArmResult.from_records("cascade", cascade_records)]
    report = write_report(out_dir, arms, examples)   # -> the report.json content as a dict
    console.print(render_table(report))   # from ._report_render

Below `MIN_N_FOR_INTERVAL` questions a bootstrap interval says nothing useful: the report keeps the
numbers but marks them (`interval_note`), and the renderings print the note instead.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from .._bill import ORIGINAL_USAGE, Bill, original_usage, spend_for
from .._catalog import ModelSpec, get_model
from .._energy import energy_for, energy_summary
from .._exceptions import UnknownModelError
from .._types import Usage
from ._data import Example
from ._deferral import plot_deferral_section
from ._metrics import Interval, Score, bootstrap_ci, paired_bootstrap_diff
from ._report_render import plot_pareto, render_markdown

__all__ = [
    "MIN_N_FOR_INTERVAL",
    "ORIGINAL_USAGE",
    "REPORT_VERSION",
    "ArmResult",
    "QuestionRecord",
    "RungRecord",
    "build_report",
    "interval_note",
    "original_usage",
    "write_report",
]

REPORT_VERSION = 2

MIN_N_FOR_INTERVAL = 20
"""Below this many (paired) questions a 95% interval is not informative: the report says so instead."""


def interval_note(n: int) -> str | None:
    """What to print instead of an interval over `n` questions, or None when the interval is informative."""
    return f"n={n}: too few for an interval" if n < MIN_N_FOR_INTERVAL else None


def _spec(model: str) -> ModelSpec | None:
    try:
        return get_model(model)
    except UnknownModelError:
        return None


def _flops(model: str, usage: Usage) -> float:
    """FLOPs of `usage` on `model`, by the bill's arithmetic (`spend_for`); 0 for a model not in the catalog."""
    return spend_for(_spec(model), usage.prompt_tokens, usage.completion_tokens, usage.requests).flops


def _usage_from(d: Mapping[str, Any]) -> Usage:
    return Usage(int(d.get("requests", 0)), int(d.get("prompt_tokens", 0)), int(d.get("completion_tokens", 0)))


def _sum_usage(items: Sequence[Mapping[str, Usage]]) -> dict[str, Usage]:
    out: dict[str, Usage] = {}
    for usage in items:
        for name, u in usage.items():
            out[name] = out.get(name, Usage()) + u
    return dict(sorted(out.items()))


@dataclass(frozen=True, slots=True)
class RungRecord:
    """One rung of a cascade arm on one question: its confidence `score` against `threshold`, whether the
    question went on (`escalated`), the rung's own `answer` and whether it was right (also when the
    question went on), what the rung cost (`flops`, cache hits at their original cost), and why. `started`
    is False for a rung the budget could not afford (`degraded`: a better answer was not sought); `error`
    holds a failed rung's error."""

    name: str
    score: float | None = None
    threshold: float | None = None
    escalated: bool = False
    answer: str = ""
    correct: bool = False
    flops: float = 0.0
    started: bool = True
    degraded: bool = False
    why: str = ""
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @staticmethod
    def from_json(d: Mapping[str, Any]) -> RungRecord:
        return RungRecord(**{f.name: d[f.name] for f in fields(RungRecord) if f.name in d})


@dataclass(frozen=True, slots=True)
class QuestionRecord:
    """One arm's outcome on one question.

    `usage` is per model and counts every call as if it had been made (cached ones included);
    `cached_usage` is the part a response cache served, so spent-now = usage - cached_usage. `flops`
    likewise counts every call, `cached_flops` the part served from the cache (None in records written
    before it was kept: then it is derived from `cached_usage`). Build it with `from_bill`.
    `model` is the model whose answer was kept; `escalated` says a larger rung was used.
    `error` holds a message when the question failed (it then counts as wrong). `rungs` (cascade arms
    only) says what each rung scored, decided, answered and cost; `degradations` why the budget cut the
    question short (a cheaper answer kept, or no answer). Records stored before these were kept load with
    none.
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
    cached_flops: float | None = None
    rungs: tuple[RungRecord, ...] = ()
    degradations: tuple[str, ...] = ()

    @staticmethod
    def from_bill(
        question_id: str,
        bill: Bill,
        answer: str,
        score: Score,
        *,
        model: str | None = None,
        wall_s: float = 0.0,
        escalated: bool = False,
        error: str | None = None,
        confidence: float | None = None,
        rungs: Sequence[RungRecord] = (),
        degradations: Sequence[str] = (),
    ) -> QuestionRecord:
        """The record of a question whose calls were all booked on one budget scope (its `bill()`):
        usage and FLOPs are the bill's, cache hits counted at their original cost; the bill's degradations
        and then `degradations` (e.g. the question refused by the budget) are the record's."""
        models = sorted(bill.models.items())
        return QuestionRecord(
            question_id=question_id,
            answer=answer,
            correct=score.correct,
            f1=score.f1,
            usage={m: mb.with_cache().usage() for m, mb in models},
            cached_usage={m: mb.from_cache.usage() for m, mb in models if mb.cached},
            flops=sum(mb.flops + mb.from_cache.flops for _, mb in models),
            model=model,
            wall_s=wall_s,
            escalated=escalated,
            error=error,
            confidence=confidence,
            cached_flops=sum(mb.from_cache.flops for _, mb in models),
            rungs=tuple(rungs),
            degradations=(*bill.degradations, *degradations),
        )

    @property
    def em(self) -> float:
        return 1.0 if self.correct else 0.0

    @property
    def calls(self) -> int:
        return sum(u.requests for u in self.usage.values())

    @property
    def cached_calls(self) -> int:
        return sum(u.requests for u in self.cached_usage.values())

    @property
    def from_cache(self) -> bool:
        """Every call of this answer came from the response cache (its wall time says nothing of the model)."""
        return self.calls > 0 and self.cached_calls == self.calls

    @property
    def flops_from_cache(self) -> float:
        if self.cached_flops is not None:
            return self.cached_flops
        return sum(_flops(m, u) for m, u in self.cached_usage.items())

    @property
    def tokens(self) -> int:
        return sum(u.total_tokens for u in self.usage.values())

    def to_json(self) -> dict[str, Any]:
        return {
            "question_id": self.question_id,
            "answer": self.answer,
            "correct": self.correct,
            "f1": self.f1,
            "usage": {m: u.to_dict() for m, u in self.usage.items()},
            "cached_usage": {m: u.to_dict() for m, u in self.cached_usage.items()},
            "flops": self.flops,
            "model": self.model,
            "wall_s": self.wall_s,
            "calls": self.calls,
            "escalated": self.escalated,
            "error": self.error,
            "confidence": self.confidence,
            "cached_flops": self.cached_flops,
            "rungs": [r.to_json() for r in self.rungs],
            "degradations": list(self.degradations),
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
            cached_flops=None if d.get("cached_flops") is None else float(d["cached_flops"]),
            rungs=tuple(RungRecord.from_json(r) for r in d.get("rungs") or ()),
            degradations=tuple(str(x) for x in d.get("degradations") or ()),
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
    def flops_from_cache(self) -> float:
        return sum(r.flops_from_cache for r in self.records)

    @property
    def wall_s(self) -> float:
        return sum(r.wall_s for r in self.records)

    def wall_quantile(self, q: float) -> float:
        """The q-quantile (0.5: median) of the seconds per question, interpolated between records."""
        return _quantile([r.wall_s for r in self.records], q)

    @property
    def cached_calls(self) -> int:
        return sum(r.cached_calls for r in self.records)

    @property
    def answers_from_cache(self) -> int:
        """Answers whose every call came from the response cache."""
        return sum(r.from_cache for r in self.records)

    @property
    def wall_mostly_from_cache(self) -> bool:
        """More than half of the calls came from the cache: the wall time is not comparable with other arms."""
        return self.calls > 0 and 2 * self.cached_calls > self.calls

    @property
    def calls(self) -> int:
        return sum(r.calls for r in self.records)

    @property
    def escalation_rate(self) -> float:
        return self._mean([1.0 if r.escalated else 0.0 for r in self.records])

    @property
    def errors(self) -> int:
        return sum(r.error is not None for r in self.records)

    @property
    def degraded(self) -> int:
        """Questions the budget cut short: a cheaper answer kept, or no answer at all."""
        return sum(bool(r.degradations) for r in self.records)

    @property
    def first_degraded(self) -> QuestionRecord | None:
        return next((r for r in self.records if r.degradations), None)

    @property
    def first_error(self) -> QuestionRecord | None:
        """The first failed record (in the order the records were made), whose error is shown in full."""
        return next((r for r in self.records if r.error is not None), None)


def _quantile(values: Sequence[float], q: float) -> float:
    xs = sorted(values)
    if not xs:
        return math.nan
    pos = q * (len(xs) - 1)
    lo, hi = math.floor(pos), math.ceil(pos)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


# --- report.json ----------------------------------------------------------------------------------


def _num(x: float) -> float | None:
    return None if math.isnan(x) else round(x, 6)


def _arm_json(arm: ArmResult, *, seed: int) -> dict[str, Any]:
    ci = arm.em_ci(seed=seed)
    usage = arm.usage
    cached = arm.cached_usage
    first = arm.first_error
    cut = arm.first_degraded
    return {
        "name": arm.name,
        "n": arm.n,
        "em": _num(arm.em),
        "em_ci95": [_num(ci.lo), _num(ci.hi)],
        "interval_note": interval_note(arm.n),
        "f1": _num(arm.f1),
        "tokens": {m: u.to_dict() for m, u in usage.items()},
        "prompt_tokens": sum(u.prompt_tokens for u in usage.values()),
        "completion_tokens": sum(u.completion_tokens for u in usage.values()),
        "cached_tokens": {m: u.to_dict() for m, u in cached.items()},
        "flops": arm.flops,
        "flops_per_question": _num(arm.flops_per_question),
        "flops_spent_now": max(arm.flops - arm.flops_from_cache, 0.0),
        "wall_s": round(arm.wall_s, 3),
        "wall_s_p50": _num(arm.wall_quantile(0.5)),
        "wall_s_p95": _num(arm.wall_quantile(0.95)),
        "wall_mostly_from_cache": arm.wall_mostly_from_cache,
        "calls": arm.calls,
        "cached_calls": arm.cached_calls,
        "answers_from_cache": arm.answers_from_cache,
        "escalation_rate": _num(arm.escalation_rate),
        "errors": arm.errors,
        "first_error": None if first is None else {"question_id": first.question_id, "error": first.error},
        "degraded": arm.degraded,
        "first_degradation": None if cut is None else {"question_id": cut.question_id, "why": cut.degradations[0]},
        **energy_summary(energy_for(arm.wall_s, arm.flops), arm.n),
        "energy_j_spent_now": energy_for(arm.wall_s, max(arm.flops - arm.flops_from_cache, 0.0)).joules,
    }


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
                    "interval_note": interval_note(len(common)),
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
                "tokens": {m: u.to_dict() for m, u in rec.usage.items()},
                "model": rec.model,
                "flops": rec.flops,
                "calls": rec.calls,
                "cached_calls": rec.cached_calls,
                "wall_s": round(rec.wall_s, 3),
                "escalated": rec.escalated,
                "error": rec.error,
                **({"confidence": rec.confidence} if rec.confidence is not None else {}),
                **({"rungs": [r.to_json() for r in rec.rungs]} if rec.rungs else {}),
                **({"degradations": list(rec.degradations)} if rec.degradations else {}),
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
    deferral: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The report.json content: per-arm totals with a 95% bootstrap interval for EM (marked not
    informative below MIN_N_FOR_INTERVAL questions), paired EM differences between every pair of arms
    (b - a), and one row per question. `meta` is shown in report.md as a list, except its "config";
    `deferral` (`_deferral.deferral_section`) is kept under "deferral"."""
    names = [a.name for a in arms]
    if len(set(names)) != len(names):
        raise ValueError(f"arm names must be unique, got {names}: name each arm after its model or workflow")
    report: dict[str, Any] = {
        "version": REPORT_VERSION,
        "meta": dict(meta or {}),
        "arms": [_arm_json(a, seed=seed) for a in arms],
        "comparisons": _comparisons(arms, seed=seed),
    }
    if deferral is not None:
        report["deferral"] = dict(deferral)
    report["questions"] = _rows(arms, examples)
    return report


# --- renderings -----------------------------------------------------------------------------------


def write_report(
    out_dir: Path | str,
    arms: Sequence[ArmResult],
    examples: Sequence[Example] | None = None,
    *,
    meta: Mapping[str, Any] | None = None,
    plot: bool = True,
    seed: int = 0,
    deferral: Mapping[str, Any] | None = None,
    bills: Mapping[str, Bill] | None = None,
) -> dict[str, Any]:
    """Write report.json, report.md and (with plot=True, needs matplotlib) pareto.png into out_dir, and
    deferral.png when `deferral` holds a curve. `bills` (each arm's bill for the questions answered in
    this run) are kept under "bills_this_run", next to the figures built from them."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    report = build_report(arms, examples, meta=meta, seed=seed, deferral=deferral)
    if bills is not None:
        report["bills_this_run"] = {arm: bill.to_dict() for arm, bill in bills.items()}
    (out / "report.json").write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    (out / "report.md").write_text(render_markdown(report), encoding="utf-8")
    if plot:
        plot_pareto(report, out / "pareto.png")
        if deferral is not None and any(c.get("available") for c in deferral.get("curves", {}).values()):
            plot_deferral_section(deferral, out / "deferral.png")
    return report
