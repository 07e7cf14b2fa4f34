"""Confidence intervals: one `Interval` type, the Wilson interval of a proportion, and a seeded
percentile bootstrap of any statistic. Pure Python (the core needs no numpy); calibration and the
evaluation metrics both use these.

    wilson_interval(8, 10)                                  # Interval(value=0.8, low=0.49, high=0.94)
    [acc] = bootstrap_intervals([answers], lambda g: [fmean(g[0])])   # the mean, with a 95% interval
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from statistics import NormalDist
from typing import NamedTuple, TypeVar

from ._exceptions import ConfigError

__all__ = ["Interval", "bootstrap_intervals", "percentile_interval", "wilson_interval"]

T = TypeVar("T")


class Interval(NamedTuple):
    """A point estimate `value` and its interval [`low`, `high`]; a tuple, so `value, low, high = iv`."""

    value: float
    low: float
    high: float

    def to_dict(self) -> dict[str, float]:
        return {"value": self.value, "low": self.low, "high": self.high}

    # The names agentflow.eval's bootstrap interval had; kept while callers move to value/low/high.
    @property
    def mean(self) -> float:
        """Same as `value`."""
        return self.value

    @property
    def lo(self) -> float:
        """Same as `low`."""
        return self.low

    @property
    def hi(self) -> float:
        """Same as `high`."""
        return self.high


def _check_confidence(confidence: float) -> None:
    if not 0.0 < confidence < 1.0:
        raise ConfigError(f"confidence must be between 0 and 1 (0.95 for a 95% interval), got {confidence}")


def wilson_interval(successes: int, n: int, confidence: float = 0.95) -> Interval:
    """The Wilson score interval of the proportion `successes / n` (value nan, [0, 1] when n is 0)."""
    _check_confidence(confidence)
    if n <= 0:
        return Interval(math.nan, 0.0, 1.0)
    z = NormalDist().inv_cdf(0.5 + confidence / 2)
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return Interval(p, max(0.0, centre - half), min(1.0, centre + half))


def percentile_interval(point: float, values: Sequence[float], confidence: float = 0.95) -> Interval:
    """`point` with the central `confidence` share of `values` around it, widened to contain `point`."""
    if not values:
        return Interval(point, point, point)
    vs = sorted(values)
    lo = vs[max(0, math.floor((1 - confidence) / 2 * len(vs)))]
    hi = vs[min(len(vs) - 1, math.ceil((1 + confidence) / 2 * len(vs)) - 1)]
    return Interval(point, min(lo, point), max(hi, point))


def bootstrap_intervals(
    groups: Sequence[Sequence[T]],
    statistics: Callable[[Sequence[Sequence[T]]], Sequence[float]],
    *,
    resamples: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
) -> tuple[Interval, ...]:
    """A percentile bootstrap interval for each figure `statistics(groups)` returns.

    Each resample draws every group again with replacement, at its own size (a stratified bootstrap:
    one group for plain data, one per ladder rung for calibration). The same seed gives the same
    resamples, so two calls on paired data (a - b and b - a) give mirrored intervals. With
    `resamples=0` each interval is just its point.
    """
    _check_confidence(confidence)
    if resamples < 0:
        raise ConfigError(f"resamples (the number of bootstrap resamples) must be >= 0, got {resamples}")
    points = list(statistics(groups))
    rng = random.Random(seed)
    drawn: list[list[float]] = [[] for _ in points]
    for _ in range(resamples):
        sample = [rng.choices(group, k=len(group)) for group in groups]
        for figures, value in zip(drawn, statistics(sample), strict=True):
            figures.append(value)
    return tuple(percentile_interval(p, d, confidence) for p, d in zip(points, drawn, strict=True))
