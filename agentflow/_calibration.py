"""Calibration: choose each rung's escalation threshold from labelled examples, and save it.

An example is one answer of one rung: its confidence `score`, whether it was `correct`, which `rung`
gave it (index in the ladder, or model name) and what it `cost` (default 1.0, i.e. costs count calls).

Two goals:
- `target_accuracy=a` (default 0.9): for each rung below the top, the lowest threshold (so the fewest
  escalations, the least cost) whose accepted answers are right at least `a` of the time; a rung
  that never reaches it always escalates (threshold `inf`, saved as null).
- `target_cost=c`: the thresholds with the best expected accuracy of the whole cascade whose expected
  cost per query is at most `c` (needs examples of the top rung; rungs treated as independent).

The report gives, per rung, the accepted accuracy and escalation rate with Wilson intervals, and for
the cascade the expected accuracy and cost with seeded bootstrap intervals (both from `_intervals`).

Uncalibrated routers use `DEFAULT_THRESHOLD` (0.7) for every rung below the top.

Collecting examples from models and reading or writing them as JSONL is `_calibration_data`'s.
"""

from __future__ import annotations

import bisect
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ._config import load_json_file
from ._exceptions import ConfigError
from ._intervals import Interval, bootstrap_intervals, wilson_interval

__all__ = [
    "DEFAULT_TARGET_ACCURACY",
    "DEFAULT_THRESHOLD",
    "Calibration",
    "CalibrationReport",
    "RungReport",
    "ScoredExample",
    "Thresholds",
    "calibrate",
]

#: The threshold of every rung below the top when no calibration is given: an answer whose
#: confidence is below 0.7 escalates to the next rung.
DEFAULT_THRESHOLD = 0.7
DEFAULT_TARGET_ACCURACY = 0.9
_FORMAT_VERSION = 1


# --- thresholds ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Thresholds:
    """One threshold per rung below the top, in ladder order (`inf` = always escalate).

    `models` names the ladder they were calibrated for (top included), when known; a router
    checks it against its own ladder. `info` keeps the calibration target and report.
    """

    values: tuple[float, ...]
    models: tuple[str, ...] | None = None
    info: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "values", tuple(float(v) for v in self.values))
        if self.models is not None:
            object.__setattr__(self, "models", tuple(self.models))
        if not self.values:
            raise ConfigError("Thresholds needs at least one value (one per rung below the top)")
        for i, v in enumerate(self.values):
            if not (0.0 <= v <= 1.0 or v == math.inf):
                raise ConfigError(
                    f"threshold {i} is {v!r}: thresholds are confidence scores in [0, 1] (or inf to always escalate)"
                )
        if self.models is not None and len(self.models) != len(self.values) + 1:
            raise ConfigError(
                f"Thresholds has {len(self.values)} values for models {list(self.models)}: give one threshold per "
                "rung below the top (len(models) - 1)"
            )

    @staticmethod
    def default(n_rungs: int) -> Thresholds:
        """`DEFAULT_THRESHOLD` for each of the `n_rungs - 1` rungs below the top."""
        return Thresholds((DEFAULT_THRESHOLD,) * (n_rungs - 1))

    def for_ladder(self, names: Sequence[str]) -> tuple[float, ...]:
        """The values for a ladder of models `names`, or ConfigError when they do not match."""
        if self.models is not None and tuple(self.models) != tuple(names):
            raise ConfigError(
                f"thresholds were calibrated for the ladder {list(self.models)} but this router's ladder is "
                f"{list(names)}: recalibrate for this ladder, or build the router with the same models in that order"
            )
        if len(self.values) != len(names) - 1:
            raise ConfigError(
                f"{len(self.values)} thresholds do not match a ladder of {len(names)} models {list(names)}: "
                f"give one threshold per rung below the top ({len(names) - 1})"
            )
        return self.values

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": _FORMAT_VERSION,
            "models": list(self.models) if self.models is not None else None,
            "thresholds": [None if v == math.inf else v for v in self.values],
            "info": dict(self.info),
        }

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2, allow_nan=False) + "\n", encoding="utf-8")

    @staticmethod
    def from_dict(data: Mapping[str, Any], *, source: str = "thresholds") -> Thresholds:
        if not isinstance(data, Mapping) or not isinstance(data.get("thresholds"), list):
            raise ConfigError(
                f"{source}: expected a JSON object with a 'thresholds' list (write it with Thresholds.save)"
            )
        raw = data["thresholds"]
        values: list[float] = []
        for i, v in enumerate(raw):
            if v is None:
                values.append(math.inf)
            elif isinstance(v, int | float) and not isinstance(v, bool):
                values.append(float(v))
            else:
                raise ConfigError(f"{source}: threshold {i} is {v!r}; use a number in [0, 1] or null (always escalate)")
        models = data.get("models")
        if models is not None and not (isinstance(models, list) and all(isinstance(m, str) for m in models)):
            raise ConfigError(f"{source}: 'models' must be a list of model names or null")
        info = data.get("info") or {}
        return Thresholds(tuple(values), tuple(models) if models is not None else None, dict(info))

    @staticmethod
    def load(path: str | Path) -> Thresholds:
        data = load_json_file(
            path,
            what="thresholds file",
            missing="write it with `agentflow calibrate DATASET_FILE`",
            invalid="recalibrate to rewrite it",
        )
        return Thresholds.from_dict(data, source=str(path))


# --- examples and statistics --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ScoredExample:
    """One labelled answer: its confidence score, whether it was right, its rung and its cost."""

    score: float
    correct: bool
    rung: int = 0
    cost: float = 1.0


@dataclass(frozen=True, slots=True)
class RungReport:
    rung: int
    model: str | None
    examples: int
    threshold: float
    accepted_accuracy: Interval | None  # None when nothing is accepted
    escalation_rate: Interval

    def to_dict(self) -> dict[str, Any]:
        return {
            "rung": self.rung,
            "model": self.model,
            "examples": self.examples,
            "threshold": None if self.threshold == math.inf else self.threshold,
            "accepted_accuracy": None if self.accepted_accuracy is None else self.accepted_accuracy.to_dict(),
            "escalation_rate": self.escalation_rate.to_dict(),
        }


@dataclass(frozen=True, slots=True)
class CalibrationReport:
    """Per-rung results and, when the top rung has examples, the cascade's expected accuracy and cost."""

    target: Mapping[str, float]
    rungs: tuple[RungReport, ...]
    escalation_rate: Interval  # share of queries the first rung escalates (Wilson)
    expected_accuracy: Interval | None  # bootstrap; None without examples of the top rung
    expected_cost: Interval | None
    confidence: float
    bootstrap: int
    seed: int

    def summary(self) -> str:
        """A few human-readable lines (for the CLI)."""

        def iv(x: Interval | None, pct: bool = True) -> str:
            if x is None:
                return "n/a (no examples of the top rung)"
            if pct:
                return f"{x.value:.1%} [{x.low:.1%}, {x.high:.1%}]"
            return f"{x.value:.4g} [{x.low:.4g}, {x.high:.4g}]"

        goal = ", ".join(f"{k} {v:g}" for k, v in self.target.items())
        lines = [f"target: {goal}; intervals at {self.confidence:.0%}"]
        for r in self.rungs:
            name = r.model if r.model is not None else f"rung {r.rung}"
            t = "always escalate" if r.threshold == math.inf else f"{r.threshold:.4f}"
            lines.append(
                f"{name}: threshold {t}; accepted accuracy {iv(r.accepted_accuracy)}; "
                f"escalation rate {iv(r.escalation_rate)} ({r.examples} examples)"
            )
        lines.append(f"expected accuracy {iv(self.expected_accuracy)}; expected cost {iv(self.expected_cost, False)}")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {
            "target": dict(self.target),
            "confidence": self.confidence,
            "bootstrap": self.bootstrap,
            "seed": self.seed,
            "escalation_rate": self.escalation_rate.to_dict(),
            "expected_accuracy": None if self.expected_accuracy is None else self.expected_accuracy.to_dict(),
            "expected_cost": None if self.expected_cost is None else self.expected_cost.to_dict(),
            "rungs": [r.to_dict() for r in self.rungs],
        }


@dataclass(frozen=True, slots=True)
class Calibration:
    """The thresholds, the report, and (from `calibrate_file`) where the thresholds were written."""

    thresholds: Thresholds
    report: CalibrationReport
    path: Path | None = None


# --- the search ---------------------------------------------------------------------------------


class _Rung:
    """One rung's examples, sorted so that acceptance at any threshold is a binary search."""

    def __init__(self, scores: Sequence[float], correct: Sequence[bool], mean_cost: float) -> None:
        order = sorted(range(len(scores)), key=lambda i: scores[i])
        self.scores = tuple(scores)
        self.correct = tuple(correct)
        self.mean_cost = mean_cost
        self._asc = [scores[i] for i in order]
        # _ok_from[i] = correct answers among the i-th smallest score and above
        self._ok_from = [0] * (len(order) + 1)
        for j in range(len(order) - 1, -1, -1):
            self._ok_from[j] = self._ok_from[j + 1] + bool(correct[order[j]])

    def accept(self, t: float) -> tuple[int, int]:
        """(accepted, accepted and correct) at threshold t: the answers with score >= t."""
        i = bisect.bisect_left(self._asc, t)
        return len(self._asc) - i, self._ok_from[i]

    def candidates(self) -> list[float]:
        return [*sorted(set(self.scores)), math.inf]


def _cascade(rungs: Sequence[_Rung], ts: Sequence[float]) -> tuple[float, float]:
    """(expected accuracy, expected cost) of the cascade, rungs taken as independent."""
    reach, acc, cost = 1.0, 0.0, 0.0
    for r, t in zip(rungs[:-1], ts, strict=True):
        cost += reach * r.mean_cost
        n = len(r.scores)
        a, ok = r.accept(t) if n else (0, 0)
        rate = a / n if n else 0.0
        acc += reach * (ok / n if n else 0.0)
        reach *= 1.0 - rate
    top = rungs[-1]
    cost += reach * top.mean_cost
    acc += reach * (sum(top.correct) / len(top.correct))
    return acc, cost


def _for_accuracy(r: _Rung, target: float) -> float:
    for t in r.candidates():
        a, ok = r.accept(t)
        if a > 0 and ok / a >= target:
            return t
    return math.inf


def _for_cost(rungs: Sequence[_Rung], target: float) -> list[float]:
    ts = [0.0] * (len(rungs) - 1)
    best_acc, best_cost = _cascade(rungs, ts)
    if best_cost > target + 1e-12:
        raise ConfigError(
            f"target_cost={target} is below the cheapest cascade (every answer accepted at the first rung costs "
            f"{best_cost:.4g} per query): raise target_cost"
        )
    for _ in range(10):
        changed = False
        for i in range(len(ts)):
            for t in rungs[i].candidates():
                trial = [*ts[:i], t, *ts[i + 1 :]]
                acc, cost = _cascade(rungs, trial)
                if cost <= target + 1e-12 and (
                    acc > best_acc + 1e-12 or (abs(acc - best_acc) <= 1e-12 and cost < best_cost)
                ):
                    ts, best_acc, best_cost, changed = trial, acc, cost, True
        if not changed:
            break
    return ts


def calibrate(
    examples: Iterable[ScoredExample],
    *,
    models: Sequence[str] | None = None,
    n_rungs: int | None = None,
    target_accuracy: float | None = None,
    target_cost: float | None = None,
    confidence: float = 0.95,
    bootstrap: int = 1000,
    seed: int = 0,
) -> Calibration:
    """Pick a threshold for each rung below the top from labelled examples (see the module doc).

    The ladder has `len(models)` rungs, or `n_rungs`, or (neither given) the highest rung seen + 1,
    and at least 2. Give exactly one of `target_accuracy` (default 0.9) and `target_cost`.
    """
    exs = list(examples)
    if not exs:
        raise ConfigError("calibrate needs at least one example: label some answers with their score and correctness")
    if target_accuracy is not None and target_cost is not None:
        raise ConfigError("give target_accuracy or target_cost, not both")
    if target_cost is None and target_accuracy is None:
        target_accuracy = DEFAULT_TARGET_ACCURACY
    if target_accuracy is not None and not 0.0 < target_accuracy <= 1.0:
        raise ConfigError(f"target_accuracy must be in (0, 1], got {target_accuracy}")
    if target_cost is not None and target_cost < 0:
        raise ConfigError(f"target_cost must be >= 0, got {target_cost}")
    if not 0.0 < confidence < 1.0:
        raise ConfigError(f"confidence must be in (0, 1), got {confidence}")
    seen = max(e.rung for e in exs) + 1
    n = len(models) if models is not None else n_rungs if n_rungs is not None else max(seen, 2)
    if n < 2:
        raise ConfigError(f"a ladder needs at least two rungs to calibrate, got {n}")
    if seen > n:
        raise ConfigError(f"examples mention rung {seen - 1}, but the ladder has only {n} rungs (0..{n - 1})")
    if models is not None and len(set(models)) != len(models):
        raise ConfigError(f"models must be distinct, got {list(models)}")

    def build(sample: Sequence[ScoredExample], i: int) -> _Rung:
        mine = [e for e in sample if e.rung == i]
        cost = sum(e.cost for e in mine) / len(mine) if mine else 1.0
        return _Rung(tuple(e.score for e in mine), tuple(e.correct for e in mine), cost)

    rungs = [build(exs, i) for i in range(n)]
    have_top = bool(rungs[-1].scores)
    if target_cost is not None:
        if not have_top:
            raise ConfigError("target_cost needs examples of the top rung (its accuracy and cost): add them")
        ts = _for_cost(rungs, target_cost)
        target: dict[str, float] = {"cost": target_cost}
    else:
        assert target_accuracy is not None
        ts = [_for_accuracy(r, target_accuracy) if r.scores else math.inf for r in rungs[:-1]]
        target = {"accuracy": target_accuracy}

    reports = []
    for i, (r, t) in enumerate(zip(rungs[:-1], ts, strict=True)):
        a, ok = r.accept(t)
        total = len(r.scores)
        reports.append(
            RungReport(
                rung=i,
                model=models[i] if models is not None else None,
                examples=total,
                threshold=t,
                accepted_accuracy=wilson_interval(ok, a, confidence) if a else None,
                escalation_rate=wilson_interval(total - a, total, confidence),
            )
        )
    expected_acc = expected_cost = None
    if have_top and all(r.scores for r in rungs):
        expected_acc, expected_cost = bootstrap_intervals(
            [[e for e in exs if e.rung == i] for i in range(n)],
            lambda by_rung: _cascade([build(g, i) for i, g in enumerate(by_rung)], ts),
            resamples=bootstrap,
            seed=seed,
            confidence=confidence,
        )
    report = CalibrationReport(
        target=target,
        rungs=tuple(reports),
        escalation_rate=reports[0].escalation_rate,
        expected_accuracy=expected_acc,
        expected_cost=expected_cost,
        confidence=confidence,
        bootstrap=bootstrap,
        seed=seed,
    )
    thresholds = Thresholds(
        tuple(ts), tuple(models) if models is not None else None, {"target": target, "report": report.to_dict()}
    )
    return Calibration(thresholds, report)
