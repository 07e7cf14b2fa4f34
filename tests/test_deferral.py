"""Deferral curves: the estimator's curve, the random line, the oracle, and the area between them."""

from __future__ import annotations

from pathlib import Path

import pytest

from agentflow import ConfigError
from agentflow.eval._deferral import Deferred, deferral_curve, plot_deferral


def _items(scores_right: list[tuple[float, bool]], large_right: bool = True) -> list[Deferred]:
    return [Deferred(s, float(r), float(large_right), 1.0, 10.0) for s, r in scores_right]


def test_a_perfect_ranking_matches_the_oracle_and_beats_random() -> None:
    # wrong answers have the lowest scores: escalating them first is what the oracle does
    items = _items([(0.1, False), (0.2, False), (0.8, True), (0.9, True)] * 5)
    curve = deferral_curve(items)
    assert curve.small_accuracy == 0.5 and curve.large_accuracy == 1.0
    assert curve.area_over_random == pytest.approx(curve.oracle_area_over_random)
    assert curve.recovered == pytest.approx(1.0)
    assert curve.area_interval is not None and curve.area_interval[0] > 0


def test_an_inverted_ranking_is_below_random() -> None:
    items = _items([(0.9, False), (0.8, False), (0.2, True), (0.1, True)] * 5)
    curve = deferral_curve(items)
    assert curve.area_over_random < 0
    assert curve.recovered is not None and curve.recovered < 0


def test_ties_are_escalated_together_so_a_constant_score_is_the_random_line() -> None:
    items = _items([(0.5, False), (0.5, True), (0.5, False), (0.5, True)])
    curve = deferral_curve(items, min_n=20)
    assert [p.share for p in curve.points] == [0.0, 1.0]  # nothing in between: ties are never split
    assert curve.area_over_random == pytest.approx(0.0)
    assert curve.area_interval is None  # n=4 is below min_n: no interval is claimed


def test_points_carry_the_cost_of_escalation() -> None:
    curve = deferral_curve(_items([(0.1, False), (0.9, True)]))
    assert [p.cost for p in curve.points] == [1.0, 6.0, 11.0]  # small always; large on half, then on all
    assert [p.accuracy for p in curve.points] == [0.5, 1.0, 1.0]


def test_no_questions_is_a_named_error() -> None:
    with pytest.raises(ConfigError, match="at least one scored question"):
        deferral_curve([])


def test_the_picture_is_written(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib", reason="the eval extra draws deferral.png: pip install -e '.[eval]'")
    out = plot_deferral(deferral_curve(_items([(0.1, False), (0.9, True)] * 10)), tmp_path / "deferral.png")
    assert out.stat().st_size > 1000


def _brute_force(items: list[Deferred]) -> list[tuple[float, float, float, float]]:
    """Every point by its definition: escalate exactly the scores below each distinct score, then all."""
    n = len(items)
    out = []
    for t in [*sorted({d.score for d in items}), float("inf")]:
        up = [d.score < t for d in items]
        acc = sum(d.large_correct if e else d.small_correct for d, e in zip(items, up, strict=True)) / n
        cost = sum(d.small_cost + (d.large_cost if e else 0.0) for d, e in zip(items, up, strict=True)) / n
        out.append((t, sum(up) / n, acc, cost))
    return out


def test_the_sweep_gives_the_points_of_the_definition() -> None:
    import random

    rng = random.Random(7)
    for _ in range(20):
        items = [
            Deferred(rng.choice([0.1, 0.2, 0.5, 0.5, 0.9, rng.random()]), float(rng.random() < 0.5),
                     float(rng.random() < 0.7), rng.uniform(1, 2), rng.uniform(5, 9))
            for _ in range(rng.randint(1, 30))
        ]  # fmt: skip
        got = [(p.threshold, p.share, p.accuracy, p.cost) for p in deferral_curve(items, resamples=0).points]
        want = _brute_force(items)
        assert [g[:2] for g in got] == [w[:2] for w in want]
        assert [g[2:] for g in got] == [pytest.approx(w[2:]) for w in want]


def test_a_curve_survives_strict_json_and_draws_again(tmp_path: Path) -> None:
    import json

    from agentflow.eval._deferral import DeferralCurve, plot_deferral_section

    curve = deferral_curve(_items([(0.1, False), (0.9, True)] * 10))
    text = json.dumps(curve.to_dict(), allow_nan=False)  # the "escalate all" threshold is null, not Infinity
    again = DeferralCurve.from_dict(json.loads(text))
    assert again == curve
    assert curve.oracle_cost[0] == 1.0 and curve.oracle_cost[-1] == pytest.approx(11.0)  # small always; large on all
    pytest.importorskip("matplotlib", reason="the eval extra draws deferral.png: pip install -e '.[eval]'")
    section = {
        "estimator": "mean",
        "curves": {
            "cascade": {"available": True, "reference": "large", **curve.to_dict()},
            "agent": {"available": False, "reference": "large-retrieval", "why": "not in this run"},
        },
    }
    assert plot_deferral_section(section, tmp_path / "deferral.png").stat().st_size > 1000
    with pytest.raises(ConfigError, match="no deferral curve to draw"):
        plot_deferral_section({"curves": {}, "why": "no cascade arm"}, tmp_path / "none.png")
