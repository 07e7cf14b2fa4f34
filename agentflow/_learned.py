"""Confidence read from the state a workflow ended in, and a learned one.

A cascade (`Cascade`) decides per question from the final state of a rung's workflow. The state says
what it saw as `Signals` (its `signals()` method; `workflows.QAState` has one), and these read them:

    AgreementShare()          the share of self-consistency samples behind the answer
    VerifierYes()             the verifier's probability of "yes" for the final answer
    AnswerTokenProb("mean")   the final answer's token probabilities ("mean", "geomean", "min", "joint")
    LearnedConfidence.load("confidence.json")   a logistic regression over cheap features of the signals

They combine like the call-level estimators: `a & b` is the lower score, `a | b` the higher,
`StateMean([a, b], weights=[1, 2])` the weighted mean. One that has nothing to read (a state without
samples, verifier or logprobs) returns None, and the cascade escalates.

Training needs scikit-learn (`pip install 'agentflow[learn]'`). The model is saved as plain JSON
(feature names, the scaler's means and scales, coefficients and intercept; never a pickle) and predicts
without scikit-learn: a dot product and a sigmoid. `auroc(scores, labels)` says how well any confidence
separates right answers from wrong ones (0.5: not at all; 1.0: perfectly).
"""

from __future__ import annotations

import abc
import importlib
import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable

from ._confidence import answers_agree, normalize_answer
from ._config import load_json_file
from ._exceptions import ConfidenceError, ConfigError, MissingDependencyError

__all__ = [
    "FEATURE_NAMES",
    "AgreementShare",
    "AnswerTokenProb",
    "HasSignals",
    "LearnedConfidence",
    "Signals",
    "StateConfidence",
    "StateMax",
    "StateMean",
    "StateMin",
    "VerifierYes",
    "auroc",
    "features",
    "signals_of",
]

_FORMAT = "agentflow.learned_confidence"
_FORMAT_VERSION = 1
LEARN_INSTALL = "pip install 'agentflow[learn]'"


# --- what a final state tells ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Signals:
    """What a workflow's final state tells about its answer (every field optional but the two texts).

    `token_logprobs`: logprobs of the final answer's tokens; `agreement`: the share of `samples`
    behind the answer; `verifier_p_yes`: a verifier's P(yes); `accepted`: a verifier's verdict (rule or
    model); `retrieval_scores`: the scores of the paragraphs read, best first; `context`: their text.
    """

    question: str
    answer: str
    token_logprobs: tuple[float, ...] = ()
    agreement: float | None = None
    samples: int = 0
    verifier_p_yes: float | None = None
    accepted: bool | None = None
    retrieval_scores: tuple[float, ...] = ()
    context: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @staticmethod
    def from_dict(data: Mapping[str, Any]) -> Signals:
        """Signals from `to_dict()` output (e.g. a JSONL line of labelled answers)."""
        try:
            given = dict(data)
            for key in ("token_logprobs", "retrieval_scores"):
                given[key] = tuple(float(x) for x in given.get(key) or ())
            return Signals(**given)
        except (TypeError, ValueError) as e:
            raise ConfigError(
                f"signals {dict(data)!r} do not parse ({type(e).__name__}: {e}): write them with Signals.to_dict()"
            ) from e


@runtime_checkable
class HasSignals(Protocol):
    """A state that says what it saw: `state.signals() -> Signals`."""

    def signals(self) -> Signals: ...


def signals_of(state: object) -> Signals:
    """The signals of a final state (`state.signals()`), or the Signals themselves."""
    if isinstance(state, Signals):
        return state
    if isinstance(state, HasSignals):
        out = state.signals()
        if isinstance(out, Signals):
            return out
        raise ConfidenceError(f"{type(state).__name__}.signals() returned {type(out).__name__}, not Signals")
    raise ConfidenceError(
        f"a {type(state).__name__} cannot be scored by a state confidence: give it a `signals() -> Signals` "
        "method (workflows.QAState has one), or use a plain function `state -> float | None` as the confidence"
    )


# --- hand-made confidences over signals -----------------------------------------------------------


class StateConfidence(abc.ABC):
    """Base of confidences read from a final state: `conf(state) -> float in [0, 1] | None`.

    `needs_logprobs` tells whoever builds the rung to ask the model for logprobs of the answer.
    `a & b` is the lower score (both must be sure), `a | b` the higher.
    """

    needs_logprobs: bool = False

    @abc.abstractmethod
    def score(self, signals: Signals) -> float | None:
        """The confidence in `signals.answer`, or None when the signals hold nothing to read."""

    def __call__(self, state: object) -> float | None:
        return self.score(signals_of(state))

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"

    def __and__(self, other: StateConfidence) -> StateMin:
        return StateMin([self, other])

    def __or__(self, other: StateConfidence) -> StateMax:
        return StateMax([self, other])


class AgreementShare(StateConfidence):
    """The share of samples that agree with the answer (self-consistency's vote)."""

    def score(self, signals: Signals) -> float | None:
        return None if signals.agreement is None else _clamp(signals.agreement)


class VerifierYes(StateConfidence):
    """The verifier model's probability of "yes" for the final answer (the verify workflow records it)."""

    def score(self, signals: Signals) -> float | None:
        return None if signals.verifier_p_yes is None else _clamp(signals.verifier_p_yes)


TokenHow = Literal["mean", "geomean", "min", "joint"]


def _token_stat(logprobs: Sequence[float], how: TokenHow) -> float:
    if how == "mean":
        return sum(math.exp(x) for x in logprobs) / len(logprobs)
    if how == "geomean":
        return math.exp(sum(logprobs) / len(logprobs))
    if how == "min":
        return math.exp(min(logprobs))
    return math.exp(sum(logprobs))


class AnswerTokenProb(StateConfidence):
    """Token probabilities of the final answer: "mean", "geomean", "min" (least sure token) or "joint"."""

    needs_logprobs = True

    def __init__(self, how: TokenHow = "mean") -> None:
        if how not in ("mean", "geomean", "min", "joint"):
            raise ConfigError(f"AnswerTokenProb(how={how!r}): use 'mean', 'geomean', 'min' or 'joint'")
        self.how: TokenHow = how

    def __repr__(self) -> str:
        return f"AnswerTokenProb({self.how!r})"

    def score(self, signals: Signals) -> float | None:
        if not signals.token_logprobs:
            return None
        return _clamp(_token_stat(signals.token_logprobs, self.how))


class _Combined(StateConfidence):
    def __init__(self, parts: Sequence[StateConfidence]) -> None:
        if not parts:
            raise ConfigError(f"{type(self).__name__} needs at least one confidence")
        self.parts = list(parts)
        self.needs_logprobs = any(p.needs_logprobs for p in self.parts)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.parts!r})"


class StateMin(_Combined):
    """The lowest score (`a & b`); None when any part cannot score (it cannot confirm the answer)."""

    def __and__(self, other: StateConfidence) -> StateMin:
        return StateMin([*self.parts, other])

    def score(self, signals: Signals) -> float | None:
        got = [p.score(signals) for p in self.parts]
        return None if any(g is None for g in got) else min(g for g in got if g is not None)


class StateMax(_Combined):
    """The highest score of the parts that can score (`a | b`); None when none can."""

    def __or__(self, other: StateConfidence) -> StateMax:
        return StateMax([*self.parts, other])

    def score(self, signals: Signals) -> float | None:
        got = [g for g in (p.score(signals) for p in self.parts) if g is not None]
        return max(got) if got else None


class StateMean(_Combined):
    """The weighted mean of the parts that can score; None when none can."""

    def __init__(self, parts: Sequence[StateConfidence], weights: Sequence[float] | None = None) -> None:
        super().__init__(parts)
        w = list(weights) if weights is not None else [1.0] * len(self.parts)
        if len(w) != len(self.parts) or any(x < 0 for x in w) or sum(w) <= 0:
            raise ConfigError(
                f"StateMean got {len(self.parts)} confidences and weights {w}: give one non-negative weight "
                "per confidence, with a positive sum"
            )
        self.weights = w

    def score(self, signals: Signals) -> float | None:
        got = [(w, p.score(signals)) for w, p in zip(self.weights, self.parts, strict=True)]
        scored = [(w, s) for w, s in got if s is not None]
        total = sum(w for w, _ in scored)
        if not scored or total <= 0:
            return None
        return _clamp(sum(w * s for w, s in scored) / total)


def _clamp(x: float) -> float:
    if math.isnan(x):
        raise ConfidenceError("a confidence score is NaN: check the signals it was computed from")
    return min(1.0, max(0.0, x))


# --- cheap features -------------------------------------------------------------------------------

_YES_NO_START = re.compile(r"^(is|was|are|were|do|does|did|can|could|has|have|had|will|would|should)\b")
_WH = ("who", "what", "when", "where", "which", "how")

#: The features `features()` computes, in order (a saved model names the ones it uses).
FEATURE_NAMES: tuple[str, ...] = (
    "has_logprobs",
    "tok_mean_p",
    "tok_geomean_p",
    "tok_min_p",
    "tok_count_log",
    "has_agreement",
    "agreement",
    "samples",
    "has_verifier",
    "verifier_p_yes",
    "accepted_yes",
    "accepted_no",
    "answer_chars_log",
    "answer_words",
    "answer_empty",
    "answer_yes_no",
    "answer_has_digit",
    "answer_capitalized",
    "answer_in_context",
    "answer_in_question",
    "has_retrieval",
    "retrieval_top",
    "retrieval_margin",
    *(f"q_{w}" for w in _WH),
    "q_yes_no",
    "q_or",
    "q_words_log",
)


def features(signals: Signals) -> dict[str, float]:
    """Cheap numeric features of a final answer, by name (`FEATURE_NAMES`); missing signals give 0 with
    their `has_*` flag at 0."""
    s = signals
    out = dict.fromkeys(FEATURE_NAMES, 0.0)
    if s.token_logprobs:
        lps = s.token_logprobs
        out.update(
            has_logprobs=1.0,
            tok_mean_p=_token_stat(lps, "mean"),
            tok_geomean_p=_token_stat(lps, "geomean"),
            tok_min_p=_token_stat(lps, "min"),
            tok_count_log=math.log1p(len(lps)),
        )
    if s.agreement is not None:
        out.update(has_agreement=1.0, agreement=float(s.agreement))
    out["samples"] = float(s.samples)
    if s.verifier_p_yes is not None:
        out.update(has_verifier=1.0, verifier_p_yes=float(s.verifier_p_yes))
    out["accepted_yes"] = float(s.accepted is True)
    out["accepted_no"] = float(s.accepted is False)
    answer = s.answer.strip()
    norm = normalize_answer(answer)
    out["answer_chars_log"] = math.log1p(len(answer))
    out["answer_words"] = float(len(answer.split()))
    out["answer_empty"] = float(not norm)
    out["answer_yes_no"] = float(norm in ("yes", "no"))
    out["answer_has_digit"] = float(any(ch.isdigit() for ch in answer))
    out["answer_capitalized"] = float(answer[:1].isupper())
    out["answer_in_context"] = float(bool(norm) and answers_agree(norm, normalize_answer(s.context)))
    out["answer_in_question"] = float(bool(norm) and answers_agree(norm, normalize_answer(s.question)))
    if s.retrieval_scores:
        ranked = sorted(s.retrieval_scores, reverse=True)
        top = ranked[0]
        out.update(has_retrieval=1.0, retrieval_top=top, retrieval_margin=top - (ranked[1] if len(ranked) > 1 else 0))
    q = s.question.strip().lower()
    for w in _WH:
        out[f"q_{w}"] = float(re.search(rf"\b{w}\b", q) is not None)
    out["q_yes_no"] = float(_YES_NO_START.match(q) is not None)
    out["q_or"] = float(" or " in q)
    out["q_words_log"] = math.log1p(len(q.split()))
    return out


# --- the learned confidence -----------------------------------------------------------------------


def _sklearn(module: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise MissingDependencyError("scikit-learn (to train a LearnedConfidence)", LEARN_INSTALL) from e


@dataclass(frozen=True)
class LearnedConfidence(StateConfidence):
    """P(correct) from a logistic regression over `features` of the signals, standardised first.

    Train with `LearnedConfidence.fit(signals, labels)` (scikit-learn), keep with `save(path)`, and
    `load(path)` it anywhere: predicting needs no scikit-learn.
    """

    feature_names: tuple[str, ...]
    mean: tuple[float, ...]
    scale: tuple[float, ...]
    coef: tuple[float, ...]
    intercept: float
    info: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        n = len(self.feature_names)
        if not n or not (len(self.mean) == len(self.scale) == len(self.coef) == n):
            raise ConfigError(
                f"LearnedConfidence needs one mean, scale and coefficient per feature: got {n} features, "
                f"{len(self.mean)} means, {len(self.scale)} scales, {len(self.coef)} coefficients; retrain it"
            )
        unknown = [f for f in self.feature_names if f not in FEATURE_NAMES]
        if unknown:
            raise ConfigError(
                f"LearnedConfidence uses features {unknown} that this agentflow does not compute "
                f"(known: {', '.join(FEATURE_NAMES)}): retrain it with this version"
            )
        values = (*self.mean, *self.scale, *self.coef, self.intercept)
        if any(not math.isfinite(v) for v in values) or any(v == 0 for v in self.scale):
            raise ConfigError("LearnedConfidence has a non-finite number or a zero scale: retrain it")
        uses_logprobs = any(f.startswith("tok_") or f == "has_logprobs" for f in self.feature_names)
        object.__setattr__(self, "needs_logprobs", uses_logprobs)

    def __repr__(self) -> str:
        return f"LearnedConfidence({len(self.feature_names)} features, n={self.info.get('n', '?')})"

    def vector(self, signals: Signals) -> list[float]:
        """The features this model reads, in its order."""
        return _vector(signals, self.feature_names)

    def predict(self, signals: Signals) -> float:
        """P(correct): sigmoid(intercept + sum(coef * (x - mean) / scale))."""
        z = self.intercept
        for x, m, s, c in zip(self.vector(signals), self.mean, self.scale, self.coef, strict=True):
            z += c * ((x - m) / s)
        return 1.0 / (1.0 + math.exp(-z)) if z >= 0 else math.exp(z) / (1.0 + math.exp(z))

    def score(self, signals: Signals) -> float | None:
        return self.predict(signals)

    @staticmethod
    def fit(
        signals: Sequence[Signals],
        labels: Sequence[bool],
        *,
        feature_names: Sequence[str] = FEATURE_NAMES,
        c: float = 1.0,
        max_iter: int = 1000,
    ) -> LearnedConfidence:
        """Train on labelled answers (`labels[i]`: whether `signals[i].answer` was right) with
        scikit-learn: StandardScaler, then L2 logistic regression with inverse strength `c`."""
        if len(signals) != len(labels):
            raise ConfigError(f"fit got {len(signals)} signals and {len(labels)} labels: give one label per answer")
        if len(set(map(bool, labels))) < 2:
            raise ConfigError(
                f"fit needs right and wrong answers among its {len(labels)} labels: add labelled answers of both kinds"
            )
        unknown = [f for f in feature_names if f not in FEATURE_NAMES]
        if unknown or not feature_names:
            raise ConfigError(f"fit: unknown features {unknown or '(none given)'}; choose from FEATURE_NAMES")
        x = [_vector(s, feature_names) for s in signals]
        y = [int(bool(v)) for v in labels]
        scaler = _sklearn("sklearn.preprocessing").StandardScaler().fit(x)
        clf = _sklearn("sklearn.linear_model").LogisticRegression(C=c, max_iter=max_iter)
        clf.fit(scaler.transform(x), y)
        model = LearnedConfidence(
            tuple(feature_names),
            tuple(float(v) for v in scaler.mean_),
            tuple(float(v) for v in scaler.scale_),
            tuple(float(v) for v in clf.coef_[0]),
            float(clf.intercept_[0]),
            {"n": len(y), "positives": sum(y), "c": c},
        )
        train_auroc = auroc([model.predict(s) for s in signals], labels)
        return replace(model, info={**model.info, "train_auroc": train_auroc})

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": _FORMAT,
            "version": _FORMAT_VERSION,
            "features": list(self.feature_names),
            "scaler": {"mean": list(self.mean), "scale": list(self.scale)},
            "coef": list(self.coef),
            "intercept": self.intercept,
            "info": dict(self.info),
        }

    @staticmethod
    def from_dict(data: Mapping[str, Any], *, source: str = "learned confidence") -> LearnedConfidence:
        if not isinstance(data, Mapping) or data.get("format") != _FORMAT:
            raise ConfigError(f"{source}: not a learned confidence (write it with LearnedConfidence.save)")
        if data.get("version") != _FORMAT_VERSION:
            raise ConfigError(f"{source}: format version {data.get('version')!r}, expected {_FORMAT_VERSION}: retrain")
        try:
            scaler = data["scaler"]
            return LearnedConfidence(
                tuple(str(f) for f in data["features"]),
                tuple(float(v) for v in scaler["mean"]),
                tuple(float(v) for v in scaler["scale"]),
                tuple(float(v) for v in data["coef"]),
                float(data["intercept"]),
                dict(data.get("info") or {}),
            )
        except (KeyError, TypeError, ValueError) as e:
            raise ConfigError(f"{source}: a field is missing or not a number ({e}): retrain and save it") from e

    def save(self, path: str | Path) -> None:
        """Write the model as JSON (no pickle)."""
        Path(path).write_text(json.dumps(self.to_dict(), indent=2, allow_nan=False) + "\n", encoding="utf-8")

    @staticmethod
    def load(path: str | Path) -> LearnedConfidence:
        data = load_json_file(
            path,
            what="learned confidence file",
            missing="train one with LearnedConfidence.fit and save it",
            invalid="save it again",
        )
        return LearnedConfidence.from_dict(data, source=str(path))


def _vector(signals: Signals, names: Sequence[str]) -> list[float]:
    f = features(signals)
    return [f[name] for name in names]


# --- how well a confidence separates -----------------------------------------------------------


def auroc(scores: Sequence[float], labels: Sequence[bool]) -> float:
    """The area under the ROC curve: the chance that a random right answer scores above a random wrong
    one (ties count half). 0.5 means the score does not separate them; 1.0, perfectly."""
    if len(scores) != len(labels):
        raise ConfigError(f"auroc got {len(scores)} scores and {len(labels)} labels: give one label per score")
    pos = sum(1 for v in labels if v)
    neg = len(labels) - pos
    if pos == 0 or neg == 0:
        raise ConfigError(f"auroc needs right and wrong answers, got {pos} right and {neg} wrong")
    order = sorted(range(len(scores)), key=lambda i: scores[i])
    rank_sum = 0.0  # sum of the (1-based, tie-averaged) ranks of the right answers
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and scores[order[j + 1]] == scores[order[i]]:
            j += 1
        avg_rank = (i + j) / 2 + 1
        rank_sum += avg_rank * sum(1 for k in order[i : j + 1] if labels[k])
        i = j + 1
    return (rank_sum - pos * (pos + 1) / 2) / (pos * neg)
