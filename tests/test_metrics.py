"""Metrics on known cases (SQuAD / HotpotQA official behaviour), numbers, yes/no, and the bootstrap."""

from __future__ import annotations

import math

import pytest

from agentflow._calibration import ScoredExample, calibrate
from agentflow._exceptions import ConfigError
from agentflow._intervals import Interval as CoreInterval
from agentflow._intervals import bootstrap_intervals
from agentflow.eval._data import Example
from agentflow.eval._metrics import (
    Interval,
    bootstrap_ci,
    exact_match,
    extract_number,
    f1_score,
    normalize_answer,
    numeric_match,
    paired_bootstrap_diff,
    parse_yes_no,
    score,
    yes_no_match,
)


@pytest.mark.parametrize(
    ("text", "normal"),
    [
        ("The Cat", "cat"),
        ("  A  dog, an apple!  ", "dog apple"),
        ("Theatre of the Absurd", "theatre of absurd"),  # 'the' inside a word is kept
        ("U.S.A.", "usa"),
        ("Greenwich Village, New York City", "greenwich village new york city"),
    ],
)
def test_normalize_answer_like_squad(text: str, normal: str) -> None:
    assert normalize_answer(text) == normal


def test_exact_match_takes_the_max_over_aliases() -> None:
    assert exact_match("the Eiffel Tower.", "Eiffel Tower")
    assert not exact_match("Eiffel", "Eiffel Tower")
    assert exact_match("NYC", ["New York City", "NYC"])
    assert not exact_match("", ["x"])


def test_f1_known_values() -> None:
    assert f1_score("Barack Obama", "Obama") == pytest.approx(2 / 3)
    assert f1_score("the cat sat", "a cat sat down") == pytest.approx(2 * (1.0 * 2 / 3) / (1.0 + 2 / 3))
    assert f1_score("dog", "cat") == 0.0
    assert f1_score("Obama", ["Barack Obama", "Obama"]) == 1.0


def test_f1_yes_no_only_scores_when_equal_like_hotpotqa() -> None:
    assert f1_score("yes", "no") == 0.0
    assert f1_score("no it is not", "no") == 0.0  # gold is 'no' and the prediction is not exactly 'no'
    assert f1_score("Yes.", "yes") == 1.0


def test_extract_number_takes_the_last_one_and_ignores_commas_and_dollars() -> None:
    assert extract_number("3 apples + 4 apples = 7 apples. The answer is $1,250.") == 1250.0
    assert extract_number("It costs -3.5 dollars") == -3.5
    assert extract_number("none") is None


def test_numeric_match() -> None:
    assert numeric_match("The answer is 18.00", "18")
    assert numeric_match("#### 70,000", "70000")
    assert numeric_match("so $70,000 profit", 70000)
    assert not numeric_match("17 or 18? I think 17", "18")
    assert not numeric_match("no idea", "18")


def test_yes_no_reads_the_first_yes_no_word() -> None:
    assert parse_yes_no("Yes, because ...") is True
    assert parse_yes_no("False. It is not.") is False
    assert parse_yes_no("The answer: no; yes would be wrong") is False
    assert parse_yes_no("maybe") is None
    assert parse_yes_no("nothing known") is None  # 'no' only as a whole word
    assert yes_no_match("TRUE", "yes")
    assert not yes_no_match("unclear", "no")


def test_score_dispatches_by_the_example_metric() -> None:
    text = Example("1", "q", "Chief of Protocol", aliases=("Protocol chief",))
    s = score(text, "chief of protocol")
    assert (s.em, s.f1, s.correct) == (1.0, 1.0, True)
    assert score(text, "the Chief").f1 == pytest.approx(2 / 3)  # max of 1/2 (answer) and 2/3 (alias)
    num = Example("2", "q", "18", metric="number")
    assert score(num, "She makes $18.").correct
    yn = Example("3", "q", "no", metric="yesno")
    assert score(yn, "No, it was not.").correct
    assert not score(yn, "Yes").correct
    assert score(yn, "no", kind="text").correct  # an explicit kind wins


def test_bootstrap_is_deterministic_and_brackets_the_mean() -> None:
    values = [1.0] * 30 + [0.0] * 70
    a = bootstrap_ci(values, seed=1)
    b = bootstrap_ci(values, seed=1)
    assert a == b
    assert isinstance(a, Interval)
    assert a.value == pytest.approx(0.3)
    assert a.low < 0.3 < a.high
    # Normal approximation: 0.3 +- 1.96 * sqrt(.3*.7/100) = +-0.09.
    assert a.high - a.low == pytest.approx(0.18, abs=0.04)
    assert len({bootstrap_ci(values, n=40, seed=s) for s in range(6)}) > 1  # the seed picks the resamples


def test_bootstrap_edge_cases() -> None:
    assert bootstrap_ci([1.0, 1.0, 1.0]) == (1.0, 1.0, 1.0)
    assert all(math.isnan(x) for x in bootstrap_ci([]))
    wide = bootstrap_ci([0.0, 1.0] * 50, alpha=0.5)
    narrow_ci = bootstrap_ci([0.0, 1.0] * 50, alpha=0.01)
    assert (wide.high - wide.low) < (narrow_ci.high - narrow_ci.low)
    with pytest.raises(ConfigError, match=r"alpha must be between 0 and 1 \(0\.05 for a 95% interval\), got 1\.5"):
        bootstrap_ci([1.0], alpha=1.5)
    with pytest.raises(ConfigError, match="must be >= 1, got 0"):
        bootstrap_ci([1.0], n=0)


def test_paired_bootstrap_diff() -> None:
    a = [0.0] * 50 + [1.0] * 50
    b = [1.0] * 80 + [0.0] * 20
    d = paired_bootstrap_diff(a, b, seed=0)
    assert d.value == pytest.approx(0.3)
    assert d.low > 0.0  # b is clearly better
    same = paired_bootstrap_diff(a, a)
    assert same == (0.0, 0.0, 0.0)
    with pytest.raises(ConfigError, match="same length, got 1 and 2: pair them by question id"):
        paired_bootstrap_diff([1.0], [1.0, 0.0])


def test_one_interval_type_and_one_bootstrap_for_metrics_and_calibration() -> None:
    assert Interval is CoreInterval
    values = [1.0] * 12 + [0.0] * 28
    # bootstrap_ci is the core bootstrap of the mean: same seed, same resamples, same interval.
    [core] = bootstrap_intervals([values], lambda g: [sum(g[0]) / len(g[0])], resamples=500, seed=3)
    assert bootstrap_ci(values, n=500, seed=3) == pytest.approx(core)
    # calibration's report intervals are the same type, serialised as value/low/high
    examples = [ScoredExample(score=i / 10, correct=i >= 5, rung=i % 2) for i in range(10)]
    report = calibrate(examples, target_accuracy=0.5, bootstrap=50).report
    assert isinstance(report.escalation_rate, CoreInterval)
    assert set(report.escalation_rate.to_dict()) == {"value", "low", "high"}
    # the names the report used before still read the same figures
    assert (core.mean, core.lo, core.hi) == tuple(core)
