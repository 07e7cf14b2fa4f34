"""Answer metrics and bootstrap intervals.

- Text answers (HotpotQA, 2Wiki): SQuAD-style exact match and token F1 after normalisation
  (lowercase, no punctuation, no articles a/an/the, single spaces), max over answer + aliases.
  As in HotpotQA's official script, a yes/no/noanswer on either side only scores F1 when equal.
- Numbers (GSM8K): the last number in the prediction, compared as a number ("$1,000.00" == 1000).
- Yes/no (StrategyQA): the prediction's first yes/no/true/false word.

`bootstrap_ci` and `paired_bootstrap_diff` return the core's `Interval(value, low, high)` (a tuple),
from the same seeded percentile bootstrap that calibration uses (`agentflow._intervals`).
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from .._confidence import normalize_answer  # the one SQuAD normalisation, kept in the core
from .._exceptions import ConfigError
from .._intervals import Interval, bootstrap_intervals
from ._data import Example, MetricKind, parse_number

__all__ = [
    "Interval",  # the core's, re-exported for the report
    "Score",
    "bootstrap_ci",
    "exact_match",
    "extract_number",
    "f1_score",
    "normalize_answer",
    "numeric_match",
    "paired_bootstrap_diff",
    "parse_yes_no",
    "score",
    "yes_no_match",
]


def _as_golds(golds: str | Iterable[str]) -> list[str]:
    return [golds] if isinstance(golds, str) else list(golds)


def exact_match(prediction: str, golds: str | Iterable[str]) -> bool:
    """True when the normalised prediction equals one normalised gold answer."""
    pred = normalize_answer(prediction)
    return any(pred == normalize_answer(g) for g in _as_golds(golds))


_SPECIAL = frozenset({"yes", "no", "noanswer"})


def _f1(prediction: str, gold: str) -> float:
    pred, ref = normalize_answer(prediction), normalize_answer(gold)
    if (pred in _SPECIAL or ref in _SPECIAL) and pred != ref:
        return 0.0
    pred_toks, ref_toks = pred.split(), ref.split()
    common = Counter(pred_toks) & Counter(ref_toks)
    same = sum(common.values())
    if same == 0:
        return 0.0
    precision = same / len(pred_toks)
    recall = same / len(ref_toks)
    return 2 * precision * recall / (precision + recall)


def f1_score(prediction: str, golds: str | Iterable[str]) -> float:
    """Token-level F1 of the normalised prediction, max over the gold answers."""
    return max((_f1(prediction, g) for g in _as_golds(golds)), default=0.0)


def extract_number(prediction: str) -> float | None:
    """The last number in a prediction ("The answer is $1,250." -> 1250.0), or None."""
    return parse_number(prediction)


def numeric_match(prediction: str, gold: str | float, *, rel_tol: float = 1e-6) -> bool:
    """True when the prediction's last number equals the gold number."""
    want = parse_number(gold) if isinstance(gold, str) else float(gold)
    got = extract_number(prediction)
    if want is None or got is None:
        return False
    return math.isclose(got, want, rel_tol=rel_tol, abs_tol=1e-9)


_YES_NO = re.compile(r"\b(yes|no|true|false)\b")


def parse_yes_no(prediction: str) -> bool | None:
    """The first yes/no/true/false word of a prediction as a bool, or None when there is none."""
    m = _YES_NO.search(prediction.lower())
    if m is None:
        return None
    return m.group(1) in ("yes", "true")


def yes_no_match(prediction: str, gold: str | bool) -> bool:
    """StrategyQA scoring: the first yes/no/true/false word of each side, and they agree."""
    want = parse_yes_no(gold) if isinstance(gold, str) else gold
    got = parse_yes_no(prediction)
    return want is not None and got is not None and got == want


@dataclass(frozen=True, slots=True)
class Score:
    """How one prediction scored. `em` is the accuracy measure for every kind; `f1` equals it for numbers and yes/no."""

    em: float
    f1: float

    @property
    def correct(self) -> bool:
        return self.em >= 1.0


def score(example: Example, prediction: str, kind: MetricKind | None = None) -> Score:
    """Score a prediction against an example, by `kind` (default: the example's dataset metric)."""
    kind = kind or example.metric
    if kind == "number":
        ok = numeric_match(prediction, example.answer)
        return Score(float(ok), float(ok))
    if kind == "yesno":
        ok = yes_no_match(prediction, example.answer)
        return Score(float(ok), float(ok))
    return Score(float(exact_match(prediction, example.answers)), f1_score(prediction, example.answers))


# --- bootstrap ------------------------------------------------------------------------------------


def _mean(groups: Sequence[Sequence[float]]) -> list[float]:
    return [math.fsum(groups[0]) / len(groups[0])]


def bootstrap_ci(values: Sequence[float], *, n: int = 2000, seed: int = 0, alpha: float = 0.05) -> Interval:
    """The mean of `values` and its percentile bootstrap interval at confidence 1 - alpha, from `n`
    seeded resamples (the same seed gives the same interval; all nan for no values)."""
    if not 0.0 < alpha < 1.0:
        raise ConfigError(f"alpha must be between 0 and 1 (0.05 for a 95% interval), got {alpha}")
    if n < 1:
        raise ConfigError(f"n (the number of bootstrap resamples) must be >= 1, got {n}: 2000 is the default")
    data = [float(v) for v in values]
    if not data:
        return Interval(math.nan, math.nan, math.nan)
    [interval] = bootstrap_intervals([data], _mean, resamples=n, seed=seed, confidence=1.0 - alpha)
    return interval


def paired_bootstrap_diff(
    a: Sequence[float], b: Sequence[float], *, n: int = 2000, seed: int = 0, alpha: float = 0.05
) -> Interval:
    """Mean of b - a over paired items (same questions, same order) and its bootstrap interval."""
    if len(a) != len(b):
        raise ConfigError(
            f"paired values need the same length, got {len(a)} and {len(b)}: pair them by question id first"
        )
    return bootstrap_ci([y - x for x, y in zip(a, b, strict=True)], n=n, seed=seed, alpha=alpha)
