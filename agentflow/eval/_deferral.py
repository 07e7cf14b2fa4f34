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
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from .._exceptions import ConfigError, MissingDependencyError

__all__ = ["DeferralCurve", "DeferralPoint", "Deferred", "deferral_curve", "plot_deferral"]


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

    @property
    def recovered(self) -> float | None:
        """Area over random as a share of the oracle's (APGR-like); None when the oracle gains nothing."""
        if self.oracle_area_over_random <= 0:
            return None
        return self.area_over_random / self.oracle_area_over_random

    def to_dict(self) -> dict[str, object]:
        return {
            "n": self.n,
            "small_accuracy": self.small_accuracy,
            "large_accuracy": self.large_accuracy,
            "area_over_random": self.area_over_random,
            "area_interval": list(self.area_interval) if self.area_interval else None,
            "oracle_area_over_random": self.oracle_area_over_random,
            "recovered": self.recovered,
            "points": [
                {"threshold": p.threshold, "share": p.share, "accuracy": p.accuracy, "cost": p.cost}
                for p in self.points
            ],
            "oracle": [list(p) for p in self.oracle],
        }


def _points(items: Sequence[Deferred]) -> list[DeferralPoint]:
    n = len(items)
    thresholds = sorted({d.score for d in items})
    points = []
    for t in [*thresholds, math.inf]:  # below the lowest score: none escalated; inf: all escalated
        escalated = [d.score < t for d in items]
        acc = sum(d.large_correct if e else d.small_correct for d, e in zip(items, escalated, strict=True)) / n
        cost = sum(d.small_cost + (d.large_cost if e else 0.0) for d, e in zip(items, escalated, strict=True)) / n
        points.append(DeferralPoint(t, sum(escalated) / n, acc, cost))
    return points


def _area_over_line(curve: Sequence[tuple[float, float]], start: float, end: float) -> float:
    """Trapezoid area between a (share, accuracy) curve and the line from (0, start) to (1, end)."""
    area = 0.0
    for (x0, y0), (x1, y1) in zip(curve, curve[1:], strict=False):
        line0, line1 = start + (end - start) * x0, start + (end - start) * x1
        area += (x1 - x0) * ((y0 - line0) + (y1 - line1)) / 2
    return area


def _oracle(items: Sequence[Deferred]) -> list[tuple[float, float]]:
    """Escalate first where it helps most (small wrong, large right), then where it changes nothing,
    and last where it hurts (small right, large wrong)."""
    n = len(items)
    order = sorted(items, key=lambda d: -(d.large_correct - d.small_correct))
    acc = sum(d.small_correct for d in items) / n
    curve = [(0.0, acc)]
    for i, d in enumerate(order, start=1):
        acc += (d.large_correct - d.small_correct) / n
        curve.append((i / n, acc))
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
        area_over_random=area,
        area_interval=interval,
        oracle_area_over_random=oracle_area,
        n=len(items),
    )


def plot_deferral(curve: DeferralCurve, path: Path | str, *, title: str = "") -> Path:
    """deferral.png: accuracy against the share escalated (with the random line and the oracle), and
    against the mean cost per question."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise MissingDependencyError("matplotlib (for deferral.png)", "pip install 'agentflow[eval]'") from None
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4), dpi=120)
    try:
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
        left.set_title(f"area over random {curve.area_over_random:+.3f}{interval}", fontsize=9)
        left.legend(fontsize=8)
        costs = [p.cost for p in curve.points]
        right.plot(costs, accs, "o-", ms=3, label="estimator")
        lo, hi = costs[0], costs[-1]
        right.plot([lo, hi], [100 * curve.small_accuracy, 100 * curve.large_accuracy], "--", label="random router")
        right.set_xlabel("FLOPs per question")
        right.set_ylabel("exact match (%)")
        right.legend(fontsize=8)
        if title:
            fig.suptitle(title, fontsize=10)
        fig.tight_layout()
        fig.savefig(path)
    finally:
        plt.close(fig)
    return Path(path)
