"""Confidence estimators: how sure is a model of the answer it just gave?

Shaped like tenacity's strategies: each estimator is a small callable object over one state
(`ConfidenceState`: the request, the completion, the model that answered, the budget) that returns a
`Confidence` (a score in [0, 1] plus the usage of any extra calls it made). They combine:

    TokenProb("mean") & Agreement(k=3)          # the lower of the two scores (both must be sure)
    TokenProb("min") | Verifier(judge)          # the higher of the two
    Mean([TokenProb(), Verifier(judge)], weights=[1, 2])

- `TokenProb(how)`: from the answer tokens' logprobs: "mean" (arithmetic mean token probability),
  "geomean" (exp of the mean logprob), "min" (least sure token) or "joint" (product of all).
- `Agreement(k)`: samples k-1 more answers and scores the share that agree with the answer
  (`answers_agree`: equal after `normalize_answer`, or one containing the other word for word).
  Samples fewer when the budget cannot afford k-1.
- `Verifier(model)`: asks a verifier model a constrained yes/no question and reads P(yes) from the
  first token's top alternatives, normalised over yes/no (`yes_probability`).

These score one model call. Confidence read from a workflow's final state (agreement of its samples,
its verifier's P(yes), the final answer's token probabilities, a learned classifier) is in `_learned.py`.

An estimator that cannot score (no logprobs, no budget left, a verifier that fails) raises
`ConfidenceError`; the router records it and escalates.
"""

from __future__ import annotations

import abc
import asyncio
import inspect
import math
import re
import string
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from ._exceptions import ConfidenceError, ModelError
from ._types import ChatRequest, ChoiceOutput, Completion, Message, Model, TokenLogprob, Usage

if TYPE_CHECKING:
    from ._budget import Budget

__all__ = [
    "DEFAULT_VERIFIER_PROMPT",
    "Agreement",
    "Confidence",
    "ConfidenceError",
    "ConfidenceState",
    "Estimator",
    "FunctionEstimator",
    "MaxOf",
    "Mean",
    "MinOf",
    "TokenProb",
    "Verifier",
    "answers_agree",
    "estimator",
    "normalize_answer",
    "yes_probability",
]


# --- answer normalisation -----------------------------------------------------------------------

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = str.maketrans("", "", string.punctuation)


def normalize_answer(text: str) -> str:
    """SQuAD normalisation: lowercase, drop punctuation and the articles a/an/the, collapse whitespace.

    The one normalisation of agentflow: exact match and F1 (`agentflow.eval`) and answer agreement use it."""
    text = text.lower().translate(_PUNCT)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def answers_agree(a: str, b: str, normalize: Callable[[str], str] = normalize_answer) -> bool:
    """Whether two answers say the same: equal after `normalize`, or one contains the other as whole
    words ("Jane Roe" and "roe"; not "1" and "1901"). An empty answer agrees with nothing."""
    x, y = normalize(a), normalize(b)
    if not x or not y:
        return False
    if x == y:
        return True
    short, long = (x, y) if len(x) <= len(y) else (y, x)
    return f" {short} " in f" {long} "


# --- state and result ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ConfidenceState:
    """What an estimator looks at: the request, the answer, the model that gave it, and the budget."""

    request: ChatRequest
    completion: Completion
    model: Model
    budget: Budget | None = None


@dataclass(frozen=True, slots=True)
class Confidence:
    """A score in [0, 1], the usage of the extra calls made to get it (per model), and details."""

    score: float
    costs: Mapping[str, Usage] = field(default_factory=dict)
    detail: Mapping[str, object] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not 0.0 <= self.score <= 1.0 or math.isnan(self.score):
            raise ConfidenceError(f"confidence score must be in [0, 1], got {self.score!r}")

    @property
    def usage(self) -> Usage:
        return sum(self.costs.values(), Usage())


def _merge_costs(parts: Sequence[Confidence]) -> dict[str, Usage]:
    out: dict[str, Usage] = {}
    for p in parts:
        for name, u in p.costs.items():
            out[name] = out.get(name, Usage()) + u
    return out


def _clamp(x: float) -> float:
    return min(1.0, max(0.0, x))


# --- the strategy base --------------------------------------------------------------------------


class Estimator(abc.ABC):
    """Base of all estimators: `await est(state) -> Confidence`; `a & b` is the min, `a | b` the max.

    `needs_logprobs` / `top_logprobs` tell the router to ask the answering model for logprobs.
    """

    needs_logprobs: bool = False
    top_logprobs: int = 0

    @abc.abstractmethod
    async def __call__(self, state: ConfidenceState) -> Confidence: ...

    def prepare(self, request: ChatRequest) -> ChatRequest:
        """The request with the logprobs this estimator reads (llama.cpp returns none unless
        top_logprobs >= 1). Whoever asks the answering model uses this, so equal asks stay equal."""
        if not self.needs_logprobs:
            return request
        return request.with_(logprobs=True, top_logprobs=max(request.top_logprobs, self.top_logprobs, 1))

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"

    def __and__(self, other: Estimator) -> MinOf:
        return MinOf([self, other])

    def __or__(self, other: Estimator) -> MaxOf:
        return MaxOf([self, other])


class FunctionEstimator(Estimator):
    """An estimator from a function `state -> float` (sync or async)."""

    def __init__(
        self, fn: Callable[[ConfidenceState], float | Awaitable[float]], *, needs_logprobs: bool = False
    ) -> None:
        self._fn = fn
        self.needs_logprobs = needs_logprobs

    async def __call__(self, state: ConfidenceState) -> Confidence:
        out = self._fn(state)
        if inspect.isawaitable(out):
            out = await out
        return Confidence(_clamp(float(out)))


def estimator(
    fn: Callable[[ConfidenceState], float | Awaitable[float]], *, needs_logprobs: bool = False
) -> FunctionEstimator:
    """Make an estimator from a plain function returning a score in [0, 1]."""
    return FunctionEstimator(fn, needs_logprobs=needs_logprobs)


# --- combinators --------------------------------------------------------------------------------


class _Combined(Estimator):
    def __init__(self, parts: Sequence[Estimator]) -> None:
        if not parts:
            raise ConfidenceError(f"{type(self).__name__} needs at least one estimator")
        self.parts = list(parts)
        self.needs_logprobs = any(p.needs_logprobs for p in self.parts)
        self.top_logprobs = max(p.top_logprobs for p in self.parts)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.parts!r})"

    async def _run(self, state: ConfidenceState) -> list[Confidence]:
        return list(await asyncio.gather(*(p(state) for p in self.parts)))


class MinOf(_Combined):
    """The lowest score of its parts (`a & b`): confident only when all are."""

    def __and__(self, other: Estimator) -> MinOf:
        return MinOf([*self.parts, other])

    async def __call__(self, state: ConfidenceState) -> Confidence:
        got = await self._run(state)
        return Confidence(min(c.score for c in got), _merge_costs(got), {"min_of": [c.score for c in got]})


class MaxOf(_Combined):
    """The highest score of its parts (`a | b`): confident when any is."""

    def __or__(self, other: Estimator) -> MaxOf:
        return MaxOf([*self.parts, other])

    async def __call__(self, state: ConfidenceState) -> Confidence:
        got = await self._run(state)
        return Confidence(max(c.score for c in got), _merge_costs(got), {"max_of": [c.score for c in got]})


class Mean(_Combined):
    """The (weighted) mean score of its parts."""

    def __init__(self, parts: Sequence[Estimator], weights: Sequence[float] | None = None) -> None:
        super().__init__(parts)
        w = list(weights) if weights is not None else [1.0] * len(self.parts)
        if len(w) != len(self.parts) or any(x < 0 for x in w) or sum(w) <= 0:
            raise ConfidenceError(
                f"Mean got {len(self.parts)} estimators and weights {w}: give one non-negative weight per "
                "estimator, with a positive sum"
            )
        self.weights = w

    async def __call__(self, state: ConfidenceState) -> Confidence:
        got = await self._run(state)
        score = sum(w * c.score for w, c in zip(self.weights, got, strict=True)) / sum(self.weights)
        return Confidence(_clamp(score), _merge_costs(got), {"mean_of": [c.score for c in got]})


# --- from logprobs ------------------------------------------------------------------------------


class TokenProb(Estimator):
    """Confidence from the answer tokens' logprobs: "mean", "geomean", "min" or "joint" probability.

    With `variants=True` a token's probability includes its spelling variants among the top 5
    alternatives ("Yes", "yes", " yes" are one answer), so a model that splits its belief between
    casings is not read as unsure. It asks for top-5 logprobs, so its requests differ from the plain one's.
    """

    needs_logprobs = True

    def __init__(self, how: Literal["mean", "geomean", "min", "joint"] = "mean", *, variants: bool = False) -> None:
        if how not in ("mean", "geomean", "min", "joint"):
            raise ConfidenceError(f"TokenProb(how={how!r}): use 'mean', 'geomean', 'min' or 'joint'")
        self.how = how
        self.variants = variants
        self.top_logprobs = 5 if variants else 0

    def __repr__(self) -> str:
        return f"TokenProb({self.how!r}, variants=True)" if self.variants else f"TokenProb({self.how!r})"

    def _logprob(self, t: TokenLogprob) -> float:
        if not self.variants or not t.top:
            return t.logprob
        key = t.token.strip().lower()
        seen = {t.token}
        p = math.exp(t.logprob)
        for token, lp in t.top:
            if token not in seen and token.strip().lower() == key:
                seen.add(token)
                p += math.exp(lp)
        return math.log(min(p, 1.0))

    async def __call__(self, state: ConfidenceState) -> Confidence:
        lps = state.completion.logprobs
        if not lps:
            raise ConfidenceError(
                f"TokenProb: the answer of {state.completion.model!r} has no logprobs: ask for them "
                "(request logprobs=True; the router does this itself) or use a server that returns them"
            )
        logs = [self._logprob(t) for t in lps]
        if self.how == "mean":
            score = sum(math.exp(x) for x in logs) / len(logs)
        elif self.how == "geomean":
            score = math.exp(sum(logs) / len(logs))
        elif self.how == "min":
            score = math.exp(min(logs))
        else:
            score = math.exp(sum(logs))
        return Confidence(_clamp(score), {}, {"how": self.how, "tokens": len(logs), "variants": self.variants})


# --- agreement among samples --------------------------------------------------------------------


class Agreement(Estimator):
    """Samples `k - 1` more answers at `temperature` and scores the share of all k that agree with
    the answer (`answers_agree` after `normalize`: equal, or one containing the other). With a
    degrading budget it samples as many as it can afford (at least one); with none affordable it
    raises ConfidenceError."""

    def __init__(
        self,
        k: int = 3,
        *,
        temperature: float = 0.7,
        normalize: Callable[[str], str] = normalize_answer,
    ) -> None:
        if k < 2:
            raise ConfidenceError(f"Agreement(k={k}) needs k >= 2 (the answer plus at least one sample)")
        self.k = k
        self.temperature = temperature
        self.normalize = normalize

    def __repr__(self) -> str:
        return f"Agreement(k={self.k}, temperature={self.temperature})"

    async def __call__(self, state: ConfidenceState) -> Confidence:
        base = state.request.with_(temperature=self.temperature, logprobs=False, top_logprobs=0)
        n = self.k - 1
        if state.budget is not None and state.budget.degrades:
            n = state.budget.affordable(base, state.model, n)
            if n == 0:
                raise ConfidenceError("Agreement: the budget cannot afford a single extra sample")
        seed0 = state.request.seed if state.request.seed is not None else 0
        try:
            samples = await asyncio.gather(*(state.model.complete(base.with_(seed=seed0 + i + 1)) for i in range(n)))
        except ModelError as e:
            raise ConfidenceError(f"Agreement: a sample from {state.model.name!r} failed: {e}") from e
        target = state.completion.text
        agree = 1 + sum(answers_agree(s.text, target, self.normalize) for s in samples)
        costs: dict[str, Usage] = {}
        for s in samples:
            costs[s.model] = costs.get(s.model, Usage()) + s.usage
        return Confidence(agree / (n + 1), costs, {"samples": n + 1, "agree": agree})


# --- a verifier model ---------------------------------------------------------------------------

DEFAULT_VERIFIER_PROMPT = (
    "Question: {question}\nProposed answer: {answer}\n"
    "Is the proposed answer correct? Reply with exactly one word: yes or no."
)


def _yes_no_mass(top: Sequence[tuple[str, float]]) -> tuple[float | None, float | None, float]:
    yes: float | None = None
    no: float | None = None
    listed = 0.0
    for tok, lp in top:
        p = math.exp(lp)
        listed += p
        t = tok.strip().lower()
        if t == "yes":
            yes = (yes or 0.0) + p
        elif t == "no":
            no = (no or 0.0) + p
    return yes, no, max(0.0, 1.0 - listed)


class Verifier(Estimator):
    """Asks `model` whether the answer is right, constrained to "yes"/"no", and scores P(yes).

    P(yes) is read from the first output token's top alternatives (any case/whitespace of "yes" and
    "no"), normalised over yes + no. When one of them is missing from the list, its probability is
    taken as the unlisted mass (an upper bound), which keeps the score conservative.
    """

    def __init__(
        self,
        model: Model,
        *,
        prompt: str = DEFAULT_VERIFIER_PROMPT,
        top_logprobs: int = 5,
        max_tokens: int = 2,
    ) -> None:
        if "{answer}" not in prompt:
            raise ConfidenceError("Verifier prompt must contain {answer} (and usually {question})")
        self.model = model
        self.prompt = prompt
        self.verifier_top_logprobs = top_logprobs
        self.max_tokens = max_tokens

    def __repr__(self) -> str:
        return f"Verifier({self.model.name!r})"

    def request_for(self, state: ConfidenceState) -> ChatRequest:
        users = [m.content for m in state.request.messages if m.role == "user"]
        question = users[-1] if users else ""
        text = self.prompt.format(question=question, answer=state.completion.text)
        return ChatRequest(
            messages=(Message.user(text),),
            max_tokens=self.max_tokens,
            temperature=0.0,
            logprobs=True,
            top_logprobs=self.verifier_top_logprobs,
            output=ChoiceOutput(("yes", "no")),
        )

    async def __call__(self, state: ConfidenceState) -> Confidence:
        request = self.request_for(state)
        model = self.model
        if state.budget is not None:
            from ._budget import BudgetedModel

            if not (isinstance(model, BudgetedModel) and model.budget is state.budget):
                model = state.budget.wrap(model)
            if state.budget.degrades and not state.budget.can_afford(request, model):
                raise ConfidenceError("Verifier: the budget cannot afford the verification call")
        try:
            out = await model.complete(request)
        except ModelError as e:
            raise ConfidenceError(f"Verifier {model.name!r} failed: {e}") from e
        p_yes = yes_probability(out, source=f"Verifier {model.name!r}")
        detail = {"p_yes": p_yes, "verdict": out.text.strip()}
        return Confidence(_clamp(p_yes), {out.model: out.usage}, detail)


def yes_probability(verdict: Completion, *, source: str = "the verifier") -> float:
    """P(yes) of a constrained yes/no verdict, read from its first token's top alternatives (any case
    or spacing of "yes" and "no") and normalised over yes + no. When one of them is not listed, its
    probability is taken as the unlisted mass (an upper bound), which keeps the score conservative.
    Raises ConfidenceError when the verdict has no logprobs or lists neither word."""
    if not verdict.logprobs:
        raise ConfidenceError(
            f"{source} returned no logprobs: ask for them (logprobs=True, top_logprobs>=2) from a server "
            "that returns logprobs (llama.cpp and vLLM do)"
        )
    first = verdict.logprobs[0]
    top = first.top or ((first.token, first.logprob),)
    yes, no, rest = _yes_no_mass(top)
    if yes is None and no is None:
        raise ConfidenceError(
            f"{source}: neither 'yes' nor 'no' among the first token's alternatives "
            f"{[t for t, _ in top]}: the server may ignore the choice constraint; raise top_logprobs"
        )
    p_yes = yes if yes is not None else rest
    p_no = no if no is not None else rest
    total = p_yes + p_no
    return _clamp(p_yes / total) if total > 0 else 0.0
