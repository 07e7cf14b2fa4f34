"""Properties of the metrics that must hold for any text and any scores."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from agentflow.eval._metrics import (
    bootstrap_ci,
    exact_match,
    extract_number,
    f1_score,
    normalize_answer,
    paired_bootstrap_diff,
)

texts = st.text(max_size=40)
words = st.lists(st.sampled_from(["the", "a", "cat", "Dog", "New", "York", "1,000", "yes", "no", "!"]), max_size=6)


@given(texts)
def test_normalize_is_idempotent(text: str) -> None:
    once = normalize_answer(text)
    assert normalize_answer(once) == once


@given(texts, texts)
def test_f1_is_between_0_and_1_and_em_implies_full_f1(pred: str, gold: str) -> None:
    f1 = f1_score(pred, gold)
    assert 0.0 <= f1 <= 1.0
    if exact_match(pred, gold) and normalize_answer(gold):
        assert f1 == 1.0


@given(st.builds(" ".join, words), st.builds(" ".join, words))
def test_f1_is_symmetric_for_single_answers(a: str, b: str) -> None:
    assert f1_score(a, b) == f1_score(b, a)


@given(st.integers(min_value=-(10**9), max_value=10**9))
def test_extract_number_reads_formatted_integers(n: int) -> None:
    assert extract_number(f"so the total is ${n:,}.") == float(n)


@settings(max_examples=30, deadline=None)
@given(st.lists(st.sampled_from([0.0, 1.0]), min_size=1, max_size=60), st.integers(0, 10))
def test_bootstrap_interval_contains_the_mean(values: list[float], seed: int) -> None:
    mean, lo, hi = bootstrap_ci(values, n=300, seed=seed)
    assert 0.0 <= lo <= mean <= hi <= 1.0


@settings(max_examples=30, deadline=None)
@given(st.lists(st.tuples(st.sampled_from([0.0, 1.0]), st.sampled_from([0.0, 1.0])), min_size=1, max_size=40))
def test_paired_difference_is_antisymmetric(pairs: list[tuple[float, float]]) -> None:
    a = [x for x, _ in pairs]
    b = [y for _, y in pairs]
    ab = paired_bootstrap_diff(a, b, n=300)
    ba = paired_bootstrap_diff(b, a, n=300)
    assert abs(ab.mean + ba.mean) < 1e-12
    assert abs(ab.lo + ba.hi) < 1e-9 and abs(ab.hi + ba.lo) < 1e-9
