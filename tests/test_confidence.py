from __future__ import annotations

import math

import pytest

from agentflow._budget import Budget, BudgetLimits
from agentflow._confidence import (
    Agreement,
    Confidence,
    ConfidenceError,
    ConfidenceState,
    Estimator,
    MaxOf,
    Mean,
    MinOf,
    TokenProb,
    Verifier,
    answers_agree,
    estimator,
    normalize_answer,
    yes_probability,
)
from agentflow._exceptions import ServerError
from agentflow._types import ChatRequest, ChoiceOutput, Completion, TokenLogprob, Usage
from agentflow.testing import FunctionModel, Reply, ScriptedModel

SMALL = "qwen2.5-coder-0.5b"


def completion(text: str, probs: list[float] | None = None, model: str = "m") -> Completion:
    lps = None if probs is None else tuple(TokenLogprob(f"t{i}", math.log(p)) for i, p in enumerate(probs))
    return Completion(text, model, "stop", Usage(1, 5, len(probs or [])), logprobs=lps)


def state(
    c: Completion, model: ScriptedModel | FunctionModel | None = None, budget: Budget | None = None
) -> ConfidenceState:
    req = ChatRequest.of("What is the capital of France?")
    return ConfidenceState(req, c, model or ScriptedModel([], name="m"), budget)


@pytest.mark.parametrize(
    ("raw", "norm"),
    [
        ("The  Eiffel Tower!", "eiffel tower"),
        ("  PARIS. ", "paris"),
        ("an apple, a pear", "apple pear"),
        ("theatre", "theatre"),
        ("", ""),
    ],
)
def test_normalize_answer(raw: str, norm: str) -> None:
    assert normalize_answer(raw) == norm


@pytest.mark.parametrize(
    ("how", "expected"),
    [
        ("mean", (0.9 + 0.5 + 0.8) / 3),
        ("geomean", (0.9 * 0.5 * 0.8) ** (1 / 3)),
        ("min", 0.5),
        ("joint", 0.9 * 0.5 * 0.8),
    ],
)
async def test_token_prob(how: str, expected: float) -> None:
    conf = await TokenProb(how)(state(completion("a b c", [0.9, 0.5, 0.8])))  # type: ignore[arg-type]
    assert conf.score == pytest.approx(expected)
    assert conf.usage == Usage()  # free: no extra calls


async def test_token_prob_with_variants_counts_other_casings_of_the_same_answer() -> None:
    lp = math.log
    yes = TokenLogprob("Yes", lp(0.4), (("Yes", lp(0.4)), ("yes", lp(0.3)), (" yes", lp(0.1)), ("No", lp(0.15))))
    c = Completion("Yes", "m", "stop", Usage(1, 5, 1), logprobs=(yes,))
    plain = await TokenProb("mean")(state(c))
    merged = await TokenProb("mean", variants=True)(state(c))
    assert plain.score == pytest.approx(0.4)
    assert merged.score == pytest.approx(0.8)  # "No" is not a variant of "Yes"
    assert TokenProb(variants=True).prepare(ChatRequest.of("q")).top_logprobs == 5
    assert TokenProb().prepare(ChatRequest.of("q")).top_logprobs == 1


async def test_token_prob_without_logprobs_raises() -> None:
    with pytest.raises(ConfidenceError, match="no logprobs"):
        await TokenProb()(state(completion("a")))
    with pytest.raises(ConfidenceError, match="how="):
        TokenProb("median")  # type: ignore[arg-type]


async def test_agreement_counts_normalised_matches_and_reports_costs() -> None:
    sampler = ScriptedModel(["paris.", "The Paris", "London"], name="small")
    st = state(completion("Paris"), sampler)
    conf = await Agreement(k=4, temperature=0.8)(st)
    assert conf.score == pytest.approx(3 / 4)
    assert conf.costs["small"].requests == 3
    assert conf.usage.requests == 3
    assert [r.temperature for r in sampler.requests] == [0.8] * 3
    assert len({r.seed for r in sampler.requests}) == 3  # distinct seeds per sample


async def test_agreement_samples_fewer_under_a_degrading_budget() -> None:
    budget = Budget(BudgetLimits(requests=2), policy="degrade")
    sampler = budget.wrap(ScriptedModel(["Paris", "Rome", "Paris"], name=SMALL))
    st = ConfidenceState(ChatRequest.of("q"), completion("Paris"), sampler, budget)
    conf = await Agreement(k=5)(st)
    assert conf.detail["samples"] == 3  # the answer + the 2 affordable samples
    assert conf.score == pytest.approx(2 / 3)
    assert budget.spent.requests == 2
    with pytest.raises(ConfidenceError, match="cannot afford"):
        await Agreement(k=5)(st)


async def test_agreement_rejects_k_below_two_and_wraps_model_errors() -> None:
    with pytest.raises(ConfidenceError, match="k >= 2"):
        Agreement(k=1)

    def boom(req: ChatRequest) -> str:
        raise ServerError("down", status_code=500)

    with pytest.raises(ConfidenceError, match="sample"):
        await Agreement(k=2)(state(completion("x"), FunctionModel(boom)))


def verdict(top: list[tuple[str, float]], text: str = "yes") -> Completion:
    first = TokenLogprob(top[0][0], math.log(top[0][1]), tuple((t, math.log(p)) for t, p in top))
    return Completion(text, "judge", "stop", Usage(1, 30, 1), logprobs=(first,))


async def test_verifier_reads_p_yes_normalised_over_yes_no() -> None:
    judge = ScriptedModel([verdict([(" Yes", 0.6), ("no", 0.2), ("maybe", 0.2)])], name="judge")
    conf = await Verifier(judge)(state(completion("Paris")))
    assert conf.score == pytest.approx(0.75)
    assert conf.costs == {"judge": Usage(1, 30, 1)}
    req = judge.requests[0]
    assert req.output == ChoiceOutput(("yes", "no"))
    assert req.logprobs and req.top_logprobs >= 2
    assert "capital of France" in req.messages[0].content and "Paris" in req.messages[0].content


async def test_verifier_missing_alternative_takes_the_unlisted_mass() -> None:
    # only "no" listed at 0.9 (as ScriptedModel's synthetic logprobs give): P(yes) <= 0.1
    judge = ScriptedModel([Reply("no", prob=0.9)], name="judge")
    conf = await Verifier(judge)(state(completion("Paris")))
    assert conf.score == pytest.approx(0.1)
    judge2 = ScriptedModel([Reply("yes", prob=0.8)], name="judge")
    assert (await Verifier(judge2)(state(completion("Paris")))).score == pytest.approx(0.8)


async def test_verifier_failures_raise_confidence_error() -> None:
    with pytest.raises(ConfidenceError, match="neither 'yes' nor 'no'"):
        await Verifier(ScriptedModel([verdict([("maybe", 0.9)])]))(state(completion("x")))
    no_lp = Completion("yes", "judge", "stop", Usage(1, 1, 1))
    with pytest.raises(ConfidenceError, match="no logprobs"):
        await Verifier(ScriptedModel([no_lp]))(state(completion("x")))

    def boom(req: ChatRequest) -> str:
        raise ServerError("down", status_code=503)

    with pytest.raises(ConfidenceError, match="failed"):
        await Verifier(FunctionModel(boom))(state(completion("x")))
    with pytest.raises(ConfidenceError, match="answer"):
        Verifier(ScriptedModel([]), prompt="no placeholders")


async def test_verifier_stops_verifying_when_budget_cannot_afford() -> None:
    budget = Budget(BudgetLimits(requests=0), policy="degrade")
    judge = ScriptedModel([Reply("yes")], name=SMALL)
    with pytest.raises(ConfidenceError, match="cannot afford"):
        await Verifier(judge)(state(completion("x"), budget=budget))
    assert judge.requests == []


async def test_verifier_call_is_charged_to_the_budget() -> None:
    budget = Budget()
    judge = ScriptedModel([Reply("yes", prob=0.9)], name=SMALL)
    await Verifier(judge)(state(completion("x"), budget=budget))
    assert budget.bill().models[SMALL].requests == 1


async def test_combinators_min_max_mean_and_costs() -> None:
    hi = estimator(lambda s: 0.9)
    lo = estimator(lambda s: 0.3)

    async def mid_fn(s: ConfidenceState) -> float:
        return 0.6

    mid = estimator(mid_fn)
    st = state(completion("x", [0.5]))
    both = hi & lo
    assert isinstance(both, MinOf) and (await both(st)).score == pytest.approx(0.3)
    either = hi | lo
    assert isinstance(either, MaxOf) and (await either(st)).score == pytest.approx(0.9)
    chained = hi & lo & mid
    assert isinstance(chained, MinOf) and len(chained.parts) == 3
    assert len((hi | lo | mid).parts) == 3
    assert (await Mean([hi, lo])(st)).score == pytest.approx(0.6)
    assert (await Mean([hi, lo], weights=[3, 1])(st)).score == pytest.approx(0.75)
    # logprob needs propagate, costs merge
    sampler = ScriptedModel(["x"], name="s")
    judge = ScriptedModel([Reply("yes", prob=0.8)], name="j")
    combo = TokenProb("min") & Agreement(k=2) & Verifier(judge)
    assert combo.needs_logprobs
    conf = await combo(state(completion("x", [0.95]), sampler))
    assert conf.score == pytest.approx(0.8)
    assert set(conf.costs) == {"s", "j"} and conf.usage.requests == 2


async def test_combinator_and_confidence_validation() -> None:
    with pytest.raises(ConfidenceError, match="weight"):
        Mean([estimator(lambda s: 1.0)], weights=[1, 2])
    with pytest.raises(ConfidenceError, match="at least one"):
        MinOf([])
    with pytest.raises(ConfidenceError, match=r"\[0, 1\]"):
        Confidence(1.5)
    # function estimators clamp into [0, 1]
    assert (await estimator(lambda s: 7.0)(state(completion("x")))).score == 1.0


def test_estimator_is_an_abstract_base() -> None:
    with pytest.raises(TypeError):
        Estimator()  # type: ignore[abstract]


def test_estimators_have_readable_reprs() -> None:
    combo = TokenProb("min") & Agreement(k=4) | Verifier(ScriptedModel([], name="judge"))
    assert repr(combo) == "MaxOf([MinOf([TokenProb('min'), Agreement(k=4, temperature=0.7)]), Verifier('judge')])"


@pytest.mark.parametrize(
    ("a", "b", "agree"),
    [
        ("Jane Roe", "jane roe.", True),  # equal after normalisation
        ("Jane Roe", "Roe", True),  # one contains the other, word for word
        ("the Eiffel Tower", "Eiffel Tower in Paris", True),
        ("1", "1901", False),  # not inside a word
        ("Roe", "Roebuck", False),
        ("Paris", "London", False),
        ("", "", False),  # an empty answer agrees with nothing
        ("The", "the", False),  # only an article: empty after normalisation
    ],
)
def test_answers_agree_when_equal_or_one_contains_the_other(a: str, b: str, agree: bool) -> None:
    assert answers_agree(a, b) is agree
    assert answers_agree(b, a) is agree


def test_the_core_normalisation_is_the_metrics_one() -> None:
    from agentflow.eval import _metrics

    assert _metrics.normalize_answer is normalize_answer  # one function: EM/F1 and agreement cannot drift apart


async def test_agreement_counts_a_sample_that_contains_the_answer() -> None:
    sampler = ScriptedModel(["Jane Roe", "Roe", "John Doe"], name="small")
    conf = await Agreement(k=4)(state(completion("Jane Roe"), sampler))
    assert conf.score == pytest.approx(3 / 4)


def test_yes_probability_reads_a_verdict_and_says_why_it_cannot() -> None:
    assert yes_probability(verdict([("yes", 0.6), (" No", 0.3)])) == pytest.approx(0.6 / 0.9)
    assert yes_probability(verdict([("no", 0.9)])) == pytest.approx(0.1)  # "yes" unlisted: at most the rest
    with pytest.raises(ConfidenceError, match="no logprobs"):
        yes_probability(Completion("yes", "judge", "stop", Usage(1, 1, 1)), source="judge")
    with pytest.raises(ConfidenceError, match="neither 'yes' nor 'no'"):
        yes_probability(verdict([("maybe", 0.9)]))
