"""One ledger: a call's cost is booked once, on a budget's bill, and the compare report is built from it.

So the same figure in a report and in a bill cannot disagree: tokens, calls, FLOPs (what would have been
spent, and what was spent now), cache hits and escalations.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from agentflow import Bill, Budget, ChatRequest, Completion, ModelBill, Usage, get_model
from agentflow._bill import Spend, cache_hit_bill, original_usage, spend_for
from agentflow.eval import CompareConfig, Comparison, load_dataset
from agentflow.eval._arms import ArmName
from agentflow.eval._metrics import Score
from agentflow.eval._report import QuestionRecord
from agentflow.eval._stores import CachedModel, ResponseCache
from agentflow.testing import FunctionModel, Reply, ScriptedModel
from workflows import QAState, rung

DATA = Path(__file__).parent / "data"
SMALL, LARGE = "qwen2.5-coder-0.5b", "qwen2.5-coder-1.5b"
ARMS: tuple[ArmName, ...] = ("small", "large", "cascade", "agent", "large-retrieval")


def _model(name: str, prob: float) -> FunctionModel:
    """Right on the questions whose text has an even length, wrong elsewhere; token probability `prob`,
    lower on odd questions so that the router and the cascade escalate some and not others."""

    def answer(req: ChatRequest) -> Reply:
        q = req.messages[-1].content.rsplit("Question:", 1)[-1]
        return Reply("yes" if len(q) % 2 else "no", prob=prob if len(q) % 3 else 0.2)

    return FunctionModel(answer, name=name)


def _shared_figures(arm: dict, bill: Bill) -> None:  # type: ignore[type-arg]
    """Every figure the report and the bill both have, side by side."""
    with_cache = {m: mb.with_cache() for m, mb in bill.models.items()}
    assert arm["calls"] == sum(s.requests for s in with_cache.values())
    assert arm["prompt_tokens"] == sum(s.prompt_tokens for s in with_cache.values())
    assert arm["completion_tokens"] == sum(s.completion_tokens for s in with_cache.values())
    assert arm["tokens"] == {m: s.usage().to_dict() for m, s in sorted(with_cache.items())}
    cached = {m: mb.from_cache.usage().to_dict() for m, mb in sorted(bill.models.items()) if mb.cached}
    assert arm["cached_tokens"] == cached
    assert arm["cached_calls"] == sum(mb.from_cache.requests for mb in bill.models.values())
    assert arm["flops"] == pytest.approx(sum(s.flops for s in with_cache.values()), rel=1e-12)
    assert arm["flops_spent_now"] == pytest.approx(bill.flops, rel=1e-12, abs=1e-6)
    assert round(arm["escalation_rate"] * arm["n"]) == bill.escalations
    if bill.flops > 0:  # energy is estimated from the FLOPs both hold (a measured bill would carry its reading)
        assert arm["energy_j_spent_now"] == pytest.approx(bill.energy_j, rel=1e-12)
        assert bill.to_dict()["energy"]["measured"] is False


async def test_the_report_of_a_compare_run_shows_the_bills_figures(tmp_path: Path) -> None:
    examples = load_dataset(DATA / "hotpotqa_dev.jsonl")
    cfg = CompareConfig("hotpotqa", tuple(e.id for e in examples), arms=ARMS, threshold=0.5)
    comparison = Comparison(cfg, examples, _model(SMALL, 0.9), _model(LARGE, 0.95), tmp_path, rung, QAState)
    report = await comparison.run(tmp_path / "cache.sqlite")
    arms = {a["name"]: a for a in report["arms"]}
    assert set(comparison.bills) == set(ARMS)
    for name in ARMS:
        _shared_figures(arms[name], comparison.bills[name])
    # The run is not trivial: the cascade and the agent escalate some questions, and the cascade's calls
    # are the small and large arms' own calls, served by the response cache.
    assert 0 < arms["cascade"]["escalation_rate"] < 1 and 0 < arms["agent"]["escalation_rate"] < 1
    assert comparison.bills["cascade"].requests == 0 and arms["cascade"]["cached_calls"] == arms["cascade"]["calls"]
    assert arms["cascade"]["flops_spent_now"] == 0 and arms["cascade"]["flops"] > 0
    # FLOPs are 2 x active parameters x tokens, whichever side reports them.
    large = arms["large"]["tokens"][LARGE]
    tokens = large["prompt_tokens"] + large["completion_tokens"]
    assert arms["large"]["flops"] == pytest.approx(2 * get_model(LARGE).active_params * tokens)


async def test_per_question_figures_sum_to_the_arms_bill(tmp_path: Path) -> None:
    examples = load_dataset(DATA / "hotpotqa_dev.jsonl")
    cfg = CompareConfig("hotpotqa", tuple(e.id for e in examples), arms=("agent",), threshold=0.5)
    comparison = Comparison(cfg, examples, _model(SMALL, 0.9), _model(LARGE, 0.95), tmp_path, rung, QAState)
    report = await comparison.run()
    rows = [q["arms"]["agent"] for q in report["questions"]]
    bill = comparison.bills["agent"]
    assert sum(r["calls"] for r in rows) == bill.requests  # nothing cached in a fresh run
    assert sum(r["flops"] for r in rows) == pytest.approx(bill.flops, rel=1e-12)
    for model in (SMALL, LARGE):
        assert sum(r["tokens"].get(model, {}).get("prompt_tokens", 0) for r in rows) == bill.models[model].prompt_tokens


async def test_a_cache_hit_is_booked_at_nothing_now_and_its_original_cost_kept() -> None:
    budget = Budget()
    inner = ScriptedModel([Reply("x", prompt_tokens=40, completion_tokens=3)], name=SMALL)
    model = budget.wrap(CachedModel(inner, ResponseCache(":memory:")))
    first = await model.complete(ChatRequest.of("q"))
    hit = await model.complete(ChatRequest.of("q"))
    assert hit.cached and original_usage(hit) == first.usage
    mb = budget.bill().models[SMALL]
    assert mb.spent == spend_for(get_model(SMALL), 40, 3)  # the one call that was made
    assert (mb.cached, mb.from_cache) == (1, spend_for(get_model(SMALL), 40, 3))  # ... and the one served
    assert mb.with_cache() == spend_for(get_model(SMALL), 80, 6, 2)
    assert cache_hit_bill(get_model(SMALL), hit) == ModelBill(cached=1, from_cache=mb.from_cache)


def test_a_bill_with_cache_hits_survives_json() -> None:
    mb = ModelBill(1, 10, 2, 1.5e10, 0.0, cached=2, from_cache=Spend(2, 20, 4, 3.0e10, 0.0))
    bill = Bill({SMALL: mb}, 1.0, 1, ("why",))
    again = Bill.from_dict(json.loads(json.dumps(bill.to_dict())))
    assert again == bill
    assert (bill + bill).models[SMALL].from_cache == Spend(4, 40, 8, 6.0e10, 0.0)
    assert bill.to_dict()["models"][SMALL]["from_cache"]["total_tokens"] == 24
    assert Bill.from_dict({"models": {SMALL: {"requests": 1}}}).models[SMALL] == ModelBill(1)  # older bills load


async def test_prompt_tokens_from_a_servers_prefix_cache_are_booked_apart_and_cost_no_flops() -> None:
    spec = get_model(SMALL)
    answers = [Completion("x", SMALL, "stop", Usage(1, 400, 4, 384)), Completion("y", SMALL, "stop", Usage(1, 400, 4))]
    budget = Budget()
    model = budget.wrap(ScriptedModel(answers, name=SMALL))
    for _ in answers:
        await model.complete(ChatRequest.of("word " * 400))
    bill = budget.bill()
    mb = bill.models[SMALL]
    assert (mb.prompt_tokens, mb.cached_prompt_tokens, mb.completion_tokens) == (800, 384, 8)
    assert bill.flops == pytest.approx(spec.flops(800 - 384 + 8))  # the prefill of 384 tokens was not done
    # the report's figures are the bill's: tokens with the cached part shown, FLOPs of what was computed
    record = QuestionRecord.from_bill("q", bill, "x", Score(1.0, 1.0))
    assert record.usage[SMALL] == Usage(2, 800, 8, 384) and record.flops == pytest.approx(bill.flops)
    assert Bill.from_dict(json.loads(json.dumps(bill.to_dict()))) == bill
