"""Deferral curves: does the router's confidence find the questions the small rung gets wrong?

For each question we know the small rung's confidence, whether its answer was right, whether the large
rung's answer was right, and what each rung cost. Escalating every question whose confidence is below a
threshold t gives one point (share escalated, accuracy, cost); sweeping t over the distinct scores gives
the estimator's curve. Two references sit beside it:

- the random router escalates the same share at random: in expectation the straight line between the
  small rung alone (share 0) and the large rung alone (share 1);
- the oracle escalates exactly the small rung's wrong answers (the ones the large rung gets right first).

The area between the estimator's curve and the random line, over the share escalated, says how much
better than chance the confidence ranks the questions (RouteLLM's APGR is the same idea, normalised by
the oracle's area). Its bootstrap interval says whether that is more than luck. Thresholds split ties
whole (a question is escalated exactly when its score is below t), so equal scores are never ordered
arbitrarily.

`deferral_section` builds the report's "deferral" section from a comparison's stored records: for each
cascade arm (`agent`, `cascade`), its small rung's score, correctness and cost on each question, against
the arm that answers as its large rung does (`DEFERRAL_PAIRS`), with the AUROC of that score for "the
small rung's answer is right"; `plot_deferral_section` draws it as deferral.png.
"""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .._exceptions import ConfigError, MissingDependencyError
from .._learned import auroc

if TYPE_CHECKING:
    from ._report import QuestionRecord

__all__ = [
    "DEFERRAL_PAIRS",
    "UNSCORED",
    "DeferralCurve",
    "DeferralPoint",
    "Deferred",
    "deferral_curve",
    "deferral_section",
    "plot_deferral",
    "plot_deferral_section",
]

DEFERRAL_PAIRS: Mapping[str, str] = {"cascade": "large", "agent": "large-retrieval"}
"""Each cascade arm, and the arm whose answers are its large rung's: `cascade` escalates to the large model
on the full context (the `large` arm), `agent` to the same workflow on the large model (`large-retrieval`)."""

UNSCORED = -1.0
"""The score a question gets when its small rung gave none: below every real score, so it is escalated at
every threshold but the lowest, as the cascade escalates it."""


@dataclass(frozen=True, slots=True)
class Deferred:
    """One question as the deferral analysis sees it."""

    score: float
    small_correct: float
    large_correct: float
    small_cost: float = 0.0
    large_cost: float = 0.0


@dataclass(frozen=True, slots=True)
class DeferralPoint:
    """Escalating every question with confidence below `threshold`."""

    threshold: float
    share: float
    accuracy: float
    cost: float  # mean cost per question: the small rung always, the large rung where escalated


@dataclass(frozen=True, slots=True)
class DeferralCurve:
    """The estimator's curve, the random and oracle references, and the area over random."""

    points: tuple[DeferralPoint, ...]
    small_accuracy: float
    large_accuracy: float
    oracle: tuple[tuple[float, float], ...]  # (share, accuracy)
    area_over_random: float
    area_interval: tuple[float, float] | None  # 95% bootstrap; None below `min_n` questions
    oracle_area_over_random: float
    n: int
    oracle_cost: tuple[float, ...] = ()  # the mean cost per question at each oracle point

    @property
    def recovered(self) -> float | None:
        """Area over random as a share of the oracle's (APGR-like); None when the oracle gains nothing."""
        if self.oracle_area_over_random <= 0:
            return None
        return self.area_over_random / self.oracle_area_over_random

    def to_dict(self) -> dict[str, Any]:
        """As JSON (the "escalate all" point's infinite threshold as None)."""
        return {
            "n": self.n,
            "small_accuracy": self.small_accuracy,
            "large_accuracy": self.large_accuracy,
            "area_over_random": self.area_over_random,
            "area_interval": list(self.area_interval) if self.area_interval else None,
            "oracle_area_over_random": self.oracle_area_over_random,
            "recovered": self.recovered,
            "points": [
                {
                    "threshold": None if p.threshold == math.inf else p.threshold,
                    "share": p.share,
                    "accuracy": p.accuracy,
                    "cost": p.cost,
                }
                for p in self.points
            ],
            "oracle": [list(p) for p in self.oracle],
            "oracle_cost": list(self.oracle_cost),
        }

    @staticmethod
    def from_dict(d: Mapping[str, Any]) -> DeferralCurve:
        """The inverse of `to_dict` (a report's curve, e.g. to draw it again)."""
        interval = d.get("area_interval")
        return DeferralCurve(
            points=tuple(
                DeferralPoint(
                    math.inf if p["threshold"] is None else p["threshold"], p["share"], p["accuracy"], p["cost"]
                )
                for p in d["points"]
            ),
            small_accuracy=d["small_accuracy"],
            large_accuracy=d["large_accuracy"],
            oracle=tuple((x, y) for x, y in d["oracle"]),
            area_over_random=d["area_over_random"],
            area_interval=None if not interval else (interval[0], interval[1]),
            oracle_area_over_random=d["oracle_area_over_random"],
            n=d["n"],
            oracle_cost=tuple(d.get("oracle_cost") or ()),
        )


def _points(items: Sequence[Deferred]) -> list[DeferralPoint]:
    """One point per distinct score t (escalating every score below t), then inf (all escalated): a sweep
    over the items sorted by score, O(n log n)."""
    n = len(items)
    ranked = sorted(items, key=lambda d: d.score)
    acc = sum(d.small_correct for d in items)
    cost = sum(d.small_cost for d in items)
    points = []
    i = 0
    while i < n:
        t = ranked[i].score
        points.append(DeferralPoint(t, i / n, acc / n, cost / n))  # every score below t escalated
        while i < n and ranked[i].score == t:  # ties go together
            acc += ranked[i].large_correct - ranked[i].small_correct
            cost += ranked[i].large_cost
            i += 1
    points.append(DeferralPoint(math.inf, 1.0, acc / n, cost / n))
    return points


def _area_over_line(curve: Sequence[tuple[float, float]], start: float, end: float) -> float:
    """Trapezoid area between a (share, accuracy) curve and the line from (0, start) to (1, end)."""
    area = 0.0
    for (x0, y0), (x1, y1) in itertools.pairwise(curve):
        line0, line1 = start + (end - start) * x0, start + (end - start) * x1
        area += (x1 - x0) * ((y0 - line0) + (y1 - line1)) / 2
    return area


def _oracle(items: Sequence[Deferred]) -> list[tuple[float, float]]:
    """Escalate first where it helps most (small wrong, large right), then where it changes nothing,
    and last where it hurts (small right, large wrong)."""
    return [(share, acc) for share, acc, _ in _oracle_points(items)]


def _oracle_points(items: Sequence[Deferred]) -> list[tuple[float, float, float]]:
    """The oracle's (share, accuracy, mean cost) points, in `_oracle`'s order."""
    n = len(items)
    order = sorted(items, key=lambda d: -(d.large_correct - d.small_correct))
    acc = sum(d.small_correct for d in items) / n
    cost = sum(d.small_cost for d in items) / n
    curve = [(0.0, acc, cost)]
    for i, d in enumerate(order, start=1):
        acc += (d.large_correct - d.small_correct) / n
        cost += d.large_cost / n
        curve.append((i / n, acc, cost))
    return curve


def _area(items: Sequence[Deferred]) -> tuple[list[DeferralPoint], float, float, float, float]:
    n = len(items)
    small = sum(d.small_correct for d in items) / n
    large = sum(d.large_correct for d in items) / n
    points = _points(items)
    area = _area_over_line([(p.share, p.accuracy) for p in points], small, large)
    return points, small, large, area, _area_over_line(_oracle(items), small, large)


def deferral_curve(
    items: Sequence[Deferred], *, resamples: int = 1000, seed: int = 0, min_n: int = 20
) -> DeferralCurve:
    """The deferral curve of `items`, its references, and the area over random with a bootstrap interval."""
    if not items:
        raise ConfigError("a deferral curve needs at least one scored question: run the small rung first")
    points, small, large, area, oracle_area = _area(items)
    interval: tuple[float, float] | None = None
    if len(items) >= min_n and resamples > 0:
        rng = random.Random(seed)
        areas = sorted(_area([rng.choice(items) for _ in items])[3] for _ in range(resamples))
        interval = (areas[int(0.025 * resamples)], areas[min(resamples - 1, int(0.975 * resamples))])
    return DeferralCurve(
        points=tuple(points),
        small_accuracy=small,
        large_accuracy=large,
        oracle=tuple(_oracle(items)),
        oracle_cost=tuple(c for _, _, c in _oracle_points(items)),
        area_over_random=area,
        area_interval=interval,
        oracle_area_over_random=oracle_area,
        n=len(items),
    )


def plot_deferral(curve: DeferralCurve, path: Path | str, *, title: str = "") -> Path:
    """deferral.png: accuracy against the share escalated (with the random line and the oracle), and
    against the mean cost per question."""
    return _plot([(title, curve)], path)


def plot_deferral_section(section: Mapping[str, Any], path: Path | str) -> Path:
    """deferral.png from a report's "deferral" section: one row per cascade arm that has a curve."""
    rows = [
        (f"{arm} (estimator {section.get('estimator', '?')}, large rung from the {c['reference']} arm)",
         DeferralCurve.from_dict(c))
        for arm, c in section.get("curves", {}).items()
        if c.get("available")
    ]  # fmt: skip
    if not rows:
        raise ConfigError(f"no deferral curve to draw: {section.get('why') or 'no cascade arm has one'}")
    return _plot(rows, path)


def _plot(rows: Sequence[tuple[str, DeferralCurve]], path: Path | str) -> Path:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise MissingDependencyError("matplotlib (for deferral.png)", "pip install 'agentflow[eval]'") from None
    fig, axes = plt.subplots(len(rows), 2, figsize=(10, 4 * len(rows)), dpi=120, squeeze=False)
    try:
        for (title, curve), (left, right) in zip(rows, axes, strict=True):
            _draw(curve, left, right, title)
        fig.tight_layout()
        fig.savefig(path)
    finally:
        plt.close(fig)
    return Path(path)


def _draw(curve: DeferralCurve, left: Any, right: Any, title: str) -> None:
    shares = [p.share for p in curve.points]
    accs = [100 * p.accuracy for p in curve.points]
    left.plot(shares, accs, "o-", ms=3, label="estimator")
    left.plot([0, 1], [100 * curve.small_accuracy, 100 * curve.large_accuracy], "--", label="random router")
    left.plot([x for x, _ in curve.oracle], [100 * y for _, y in curve.oracle], ":", label="oracle")
    left.set_xlabel("share of questions escalated")
    left.set_ylabel("exact match (%)")
    interval = (
        f" [{curve.area_interval[0]:+.3f}, {curve.area_interval[1]:+.3f}]"
        if curve.area_interval
        else f" (n={curve.n}: too few for an interval)"
    )
    heading = f"area over random {curve.area_over_random:+.3f}{interval}"
    left.set_title(f"{title}\n{heading}" if title else heading, fontsize=9)
    left.legend(fontsize=8)
    costs = [p.cost for p in curve.points]
    right.plot(costs, accs, "o-", ms=3, label="estimator")
    lo, hi = costs[0], costs[-1]
    right.plot([lo, hi], [100 * curve.small_accuracy, 100 * curve.large_accuracy], "--", label="random router")
    if len(curve.oracle_cost) == len(curve.oracle):
        right.plot(curve.oracle_cost, [100 * y for _, y in curve.oracle], ":", label="oracle")
    right.set_xlabel("FLOPs per question")
    right.set_ylabel("exact match (%)")
    right.legend(fontsize=8)


# --- from a comparison's records --------------------------------------------------------------------


def deferral_section(
    records: Mapping[str, Sequence[QuestionRecord]],
    *,
    estimator: str,
    pairs: Mapping[str, str] = DEFERRAL_PAIRS,
    resamples: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """The report's "deferral" section from each arm's records (this run's questions, in their order): per
    cascade arm in `records`, its curve (`DeferralCurve.to_dict()`) with the AUROC of its small rung's
    score, or `available: False` and why not."""
    curves = {
        arm: _curve_for(arm, ref, records, resamples=resamples, seed=seed)
        for arm, ref in pairs.items()
        if arm in records
    }
    section: dict[str, Any] = {"estimator": estimator, "curves": curves}
    if not curves:
        section["why"] = f"no cascade arm ({' or '.join(pairs)}) in this run: add one to --arms to draw its curve"
    return section


def _curve_for(
    arm: str, ref: str, records: Mapping[str, Sequence[QuestionRecord]], *, resamples: int, seed: int
) -> dict[str, Any]:
    if ref not in records:
        return {
            "available": False,
            "reference": ref,
            "why": f"the {ref} arm is not in this run, so what {arm}'s large rung answers on every question is "
            f"unknown: add {ref} to --arms",
        }
    large = {r.question_id: r for r in records[ref] if r.error is None}
    items: list[Deferred] = []
    skipped: dict[str, int] = {}
    scored: list[tuple[float, bool]] = []
    for r in records[arm]:
        small = r.rungs[0] if r.rungs else None
        why = (
            "stored before rungs were recorded" if small is None
            else "small rung not started" if not small.started
            else "small rung failed" if small.error is not None
            else f"{ref} failed" if r.question_id not in large
            else None
        )  # fmt: skip
        if why is not None or small is None:
            skipped[why or "?"] = skipped.get(why or "?", 0) + 1
            continue
        other = large[r.question_id]
        score = UNSCORED if small.score is None else small.score
        items.append(Deferred(score, float(small.correct), float(other.correct), small.flops, other.flops))
        if small.score is not None:
            scored.append((small.score, small.correct))
    if not items:
        reasons = ", ".join(f"{n} {why}" for why, n in skipped.items()) or "no question"
        return {"available": False, "reference": ref, "why": f"no question to draw it from ({reasons})"}
    curve = deferral_curve(items, resamples=resamples, seed=seed)
    out: dict[str, Any] = {
        "available": True,
        "reference": ref,
        "small_rung": next((r.rungs[0].name for r in records[arm] if r.rungs), None),
        "threshold": next((r.rungs[0].threshold for r in records[arm] if r.rungs), None),
        "unscored": sum(1 for d in items if d.score == UNSCORED),
        "skipped": skipped,
        **_auroc(scored),
        **curve.to_dict(),
    }
    return out


def _auroc(scored: Sequence[tuple[float, bool]]) -> dict[str, Any]:
    """AUROC of the small rung's score for "its answer is right", or why there is none."""
    right = sum(1 for _, ok in scored if ok)
    if not scored or right in (0, len(scored)):
        why = f"needs right and wrong answers among the scored ones ({right} right of {len(scored)})"
        return {"auroc": None, "auroc_n": len(scored), "auroc_note": why}
    value = auroc([s for s, _ in scored], [ok for _, ok in scored])
    return {"auroc": value, "auroc_n": len(scored), "auroc_note": None}
