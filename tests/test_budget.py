from __future__ import annotations

import asyncio
import json
import math

import pytest

from agentflow._budget import (
    Bill,
    Budget,
    BudgetedModel,
    BudgetLimits,
    ModelBill,
    Spend,
    UncountableModelError,
    estimate_prompt_tokens,
    estimate_text_tokens,
)
from agentflow._catalog import get_model
from agentflow._exceptions import BudgetExceeded, ConfigError, ServerError, StructuredOutputError, UnknownModelError
from agentflow._types import ChatRequest, Completion, Message, Usage
from agentflow.testing import FunctionModel, Reply, ScriptedModel

SMALL = "qwen2.5-coder-0.5b"
SMOKE = "smollm2-135m"


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


# --- limits ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "field", ["requests", "prompt_tokens", "completion_tokens", "flops", "cost_usd", "wall_time_s"]
)
def test_negative_limit_names_the_field(field: str) -> None:
    with pytest.raises(ConfigError, match=rf"BudgetLimits\.{field} must be >= 0"):
        BudgetLimits(**{field: -1})


def test_nan_and_bool_limits_are_rejected() -> None:
    with pytest.raises(ConfigError, match="flops"):
        BudgetLimits(flops=math.nan)
    with pytest.raises(ConfigError, match="requests must be a number"):
        BudgetLimits(requests=True)


def test_contradictory_limits_name_both_fields() -> None:
    with pytest.raises(ConfigError, match=r"max_tokens_per_call=500 contradicts completion_tokens=100") as e:
        BudgetLimits(completion_tokens=100, max_tokens_per_call=500)
    assert "lower max_tokens_per_call or raise completion_tokens" in str(e.value)
    with pytest.raises(ConfigError, match="total_tokens"):
        BudgetLimits(total_tokens=10, max_tokens_per_call=11)


def test_budget_rejects_bad_policy_and_limits_type() -> None:
    with pytest.raises(ConfigError, match="policy"):
        Budget(policy="ignore")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="BudgetLimits"):
        Budget({"requests": 1})  # type: ignore[arg-type]


# --- estimates --------------------------------------------------------------------------------------


def test_prompt_estimate_is_conservative_and_tokenizer_overrides() -> None:
    req = ChatRequest(messages=(Message.system("abcdefg"), Message.user("hi")))
    # ceil(7/2)=4 + ceil(2/2)=1 + 2*8 per message + 32 per request
    assert estimate_prompt_tokens(req) == 4 + 1 + 16 + 32
    assert estimate_prompt_tokens(req, lambda s: 100) == 200 + 16 + 32


@pytest.mark.parametrize(
    ("text", "tokens"),
    [("", 0), ("abcd", 2), ("abc", 2), ("1234", 4), ("a1", 2), ("é", 2), ("日本", 6), ("x 日", 1 + 3)],
)
def test_text_estimate_counts_digits_and_non_ascii_bytes(text: str, tokens: int) -> None:
    assert estimate_text_tokens(text) == tokens


@pytest.mark.parametrize(
    ("prompt", "measured"),
    [
        ("hi", 31),
        ("x " * 200, 231),
        ("The quick brown fox, 1234567 890; ünïcödé 日本語 text!" * 5, 205),
    ],
)
def test_estimate_covers_prompt_tokens_measured_on_real_servers(prompt: str, measured: int) -> None:
    # the largest prompt_tokens llama.cpp reported for these prompts on SmolLM2-135M / Qwen2.5 0.5B / 1.5B
    assert estimate_prompt_tokens(ChatRequest.of(prompt)) >= measured


def test_estimate_counts_flops_and_cost_from_catalog() -> None:
    b = Budget()
    req = ChatRequest.of("x" * 30, max_tokens=10)
    est = b.estimate(req, SMALL)
    prompt = estimate_prompt_tokens(req)
    assert est.prompt_tokens == prompt and est.completion_tokens == 10 and est.requests == 1
    assert est.flops == get_model(SMALL).flops(prompt + 10)


# --- reserve and settle -----------------------------------------------------------------------------


async def test_wrapped_model_charges_actual_usage_and_releases_reservation() -> None:
    b = Budget(BudgetLimits(completion_tokens=100))
    m = b.wrap(ScriptedModel([Reply("a b c", prompt_tokens=7, completion_tokens=3)], name=SMALL))
    assert isinstance(m, BudgetedModel) and m.name == SMALL
    out = await m.complete(ChatRequest.of("hello", max_tokens=20))
    assert out.text == "a b c"
    assert b.spent == Spend(1, 7, 3, get_model(SMALL).flops(10), 0.0)
    assert b.reserved == Spend()
    assert b.remaining()["completion_tokens"] == 97


async def test_reservation_is_held_while_the_call_is_in_flight() -> None:
    b = Budget(BudgetLimits(completion_tokens=100))
    gate = asyncio.Event()
    seen: list[Spend] = []

    async def fn(req: ChatRequest) -> Reply:
        seen.append(b.reserved)
        await gate.wait()
        return Reply("x", completion_tokens=1)

    m = b.wrap(FunctionModel(fn, name=SMALL))
    task = asyncio.create_task(m.complete(ChatRequest.of("q", max_tokens=60)))
    await asyncio.sleep(0)
    assert seen[0].completion_tokens == 60
    # a second call of 60 would overshoot together with the first one in flight: it is not made yet
    req = ChatRequest.of("q", max_tokens=60)
    assert not b.can_afford(req, m)
    with pytest.raises(BudgetExceeded) as e:
        b.reserve(req, m)  # the non-waiting form refuses at once
    assert e.value.limit == "completion_tokens"
    second = asyncio.create_task(m.complete(req))
    for _ in range(5):
        await asyncio.sleep(0)
    assert len(seen) == 1 and not second.done()  # it waits for the first call to settle
    gate.set()
    await task
    await second  # the first spent 1 token, so 60 more fit
    assert b.reserved == Spend() and b.spent.completion_tokens == 2
    assert b.can_afford(req, m)


async def test_budget_exceeded_names_limit_spent_asked_and_fix() -> None:
    b = Budget(BudgetLimits(completion_tokens=50), name="run")
    m = b.wrap(ScriptedModel([Reply("x", completion_tokens=30)], name=SMALL))
    await m.complete(ChatRequest.of("q", max_tokens=40))
    with pytest.raises(BudgetExceeded) as e:
        await m.complete(ChatRequest.of("q", max_tokens=40))
    err = e.value
    assert err.limit == "completion_tokens"
    assert err.spent["completion_tokens"] == 30
    assert err.asked["completion_tokens"] == 40
    assert err.allowed == 50
    msg = str(err)
    assert "'run'" in msg and "raise BudgetLimits.completion_tokens" in msg and "max_tokens (now 40)" in msg


async def test_requests_limit_and_max_tokens_per_call() -> None:
    b = Budget(BudgetLimits(requests=1, max_tokens_per_call=8))
    m = b.wrap(ScriptedModel(["a", "b"], name=SMALL))
    with pytest.raises(BudgetExceeded, match="max_tokens_per_call") as e:
        await m.complete(ChatRequest.of("q", max_tokens=9))
    assert "lower the request's max_tokens to <= 8" in str(e.value)
    await m.complete(ChatRequest.of("q", max_tokens=8))
    with pytest.raises(BudgetExceeded, match="requests") as e2:
        await m.complete(ChatRequest.of("q", max_tokens=8))
    assert e2.value.limit == "requests"


async def test_wall_time_uses_injected_clock() -> None:
    clock = FakeClock()
    b = Budget(BudgetLimits(wall_time_s=5), clock=clock)
    m = b.wrap(ScriptedModel(["a", "b"], name=SMALL))
    await m.complete(ChatRequest.of("q"))
    clock.now += 5
    with pytest.raises(BudgetExceeded, match="wall time is up") as e:
        await m.complete(ChatRequest.of("q"))
    assert e.value.limit == "wall_time_s"
    assert b.bill().wall_time_s == 5


async def test_overshoot_is_charged_and_recorded() -> None:
    b = Budget(BudgetLimits(completion_tokens=100))
    m = b.wrap(ScriptedModel([Reply("x", completion_tokens=80)], name=SMALL))
    await m.complete(ChatRequest.of("q", max_tokens=10))  # server ignored max_tokens
    assert b.spent.completion_tokens == 80
    bill = b.bill()
    assert bill.overshoots == 1 and bill.models[SMALL].overshoots == 1


async def test_failed_call_counts_a_request_and_releases() -> None:
    def boom(req: ChatRequest) -> str:
        raise ServerError("server down", status_code=503)

    b = Budget()
    m = b.wrap(FunctionModel(boom, name=SMALL))
    with pytest.raises(ServerError):
        await m.complete(ChatRequest.of("q"))
    assert b.reserved == Spend() and b.spent == Spend(requests=1)
    assert b.bill().models[SMALL].failed == 1


async def test_a_failed_call_whose_error_says_nothing_reached_the_server_costs_nothing() -> None:
    def refused(req: ChatRequest) -> str:
        err = ServerError("refused")
        err.usage = Usage()  # type: ignore[attr-defined]  # what a client reports when no attempt got through
        raise err

    b = Budget()
    m = b.wrap(FunctionModel(refused, name=SMALL))
    with pytest.raises(ServerError):
        await m.complete(ChatRequest.of("q"))
    assert b.reserved == Spend() and b.spent == Spend()
    assert b.bill().models[SMALL].failed == 1 and b.bill().requests == 0


async def test_a_failed_call_is_charged_exactly_the_attempts_its_error_counts() -> None:
    def retried(req: ChatRequest) -> str:
        raise ServerError("503 three times", status_code=503, usage=Usage(requests=3))

    b = Budget()
    m = b.wrap(FunctionModel(retried, name=SMALL))
    with pytest.raises(ServerError):
        await m.complete(ChatRequest.of("q"))
    assert b.reserved == Spend() and b.spent == Spend(requests=3)
    assert b.bill().models[SMALL].failed == 1 and b.bill().requests == 3


async def test_an_answer_without_usage_after_retries_is_charged_the_worst_case_and_every_attempt() -> None:
    b = Budget()
    missing = Completion("a", SMALL, "stop", Usage(requests=3), meta={"usage_missing": True})
    req = ChatRequest.of("q", max_tokens=10)
    await b.wrap(ScriptedModel([missing], name=SMALL)).complete(req)
    worst = b.estimate(req, SMALL)
    assert b.spent.requests == 3 and b.spent.prompt_tokens == worst.prompt_tokens
    assert b.spent.completion_tokens == worst.completion_tokens


async def test_a_failed_structured_call_is_charged_what_its_attempts_spent() -> None:
    def invalid(req: ChatRequest) -> str:
        raise StructuredOutputError("no valid JSON", raw_text="x", attempts=3, finish_reason="stop",
                                    usage=Usage(requests=3, prompt_tokens=30, completion_tokens=12))  # fmt: skip

    b = Budget()
    m = b.wrap(FunctionModel(invalid, name=SMALL))
    with pytest.raises(StructuredOutputError):
        await m.complete(ChatRequest.of("q"))
    assert b.reserved == Spend()
    assert b.spent.requests == 3 and b.spent.prompt_tokens == 30 and b.spent.completion_tokens == 12
    assert b.spent.flops == pytest.approx(get_model(SMALL).flops(42))
    assert b.bill().models[SMALL].failed == 1


async def test_cached_and_usage_missing_completions() -> None:
    b = Budget()
    cached = Completion("a", SMALL, "stop", Usage(1, 5, 5), cached=True)
    missing = Completion("a", SMALL, "stop", Usage(), meta={"usage_missing": True})
    m = b.wrap(ScriptedModel([cached, missing], name=SMALL))
    await m.complete(ChatRequest.of("q", max_tokens=10))
    assert b.spent == Spend() and b.bill().models[SMALL].cached == 1
    req = ChatRequest.of("q", max_tokens=10)
    await m.complete(req)
    assert b.spent == b.estimate(req, SMALL)  # charged the worst case, not zero


async def test_cancelled_call_releases_without_charge() -> None:
    async def slow(req: ChatRequest) -> str:
        await asyncio.sleep(10)
        return "never"

    b = Budget()
    m = b.wrap(FunctionModel(slow, name=SMALL))
    task = asyncio.create_task(m.complete(ChatRequest.of("q")))
    await asyncio.sleep(0)
    assert b.reserved.requests == 1
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert b.reserved == Spend() and b.spent == Spend()


# --- nesting ------------------------------------------------------------------------------------


async def test_child_spends_from_parent_and_obeys_both() -> None:
    parent = Budget(BudgetLimits(completion_tokens=100), name="run")
    child = parent.child(BudgetLimits(requests=5), name="node")
    grandchild = child.child(name="sub")
    assert [b.name for b in grandchild.chain()] == ["sub", "node", "run"]
    m = grandchild.wrap(ScriptedModel([Reply("x", completion_tokens=60)] * 3, name=SMALL))
    await m.complete(ChatRequest.of("q", max_tokens=60))
    for b in (parent, child, grandchild):
        assert b.spent.completion_tokens == 60
        assert b.bill().models[SMALL].requests == 1
    # the parent's cap binds the grandchild
    with pytest.raises(BudgetExceeded) as e:
        await m.complete(ChatRequest.of("q", max_tokens=60))
    assert "'run'" in str(e.value)
    sibling = parent.child(name="other")
    assert not sibling.can_afford(ChatRequest.of("q", max_tokens=41), SMALL)
    assert sibling.can_afford(ChatRequest.of("q", max_tokens=40), SMALL)


def test_affordable_counts_concurrent_calls() -> None:
    b = Budget(BudgetLimits(completion_tokens=100))
    req = ChatRequest.of("q", max_tokens=30)
    assert b.affordable(req, SMALL, 10) == 3
    assert b.affordable(req, SMALL, 2) == 2
    assert b.affordable(ChatRequest.of("q", max_tokens=101), SMALL, 5) == 0


# --- the catalog ----------------------------------------------------------------------------------


def test_unknown_model_with_flops_limit_fails_at_wrap_time() -> None:
    b = Budget(BudgetLimits(flops=1e12))
    with pytest.raises(UncountableModelError) as e:
        b.wrap(ScriptedModel(["a"], name="my-model"))
    assert isinstance(e.value, UnknownModelError)
    msg = str(e.value)
    assert "'my-model'" in msg and "flops" in msg and "register_model" in msg
    # a child of a FLOPs-limited budget cannot count it either
    with pytest.raises(UncountableModelError, match="cost_usd"):
        Budget(BudgetLimits(cost_usd=1.0)).child().wrap(ScriptedModel(["a"], name="my-model"))


async def test_unknown_model_without_flops_limit_counts_tokens_only() -> None:
    b = Budget(BudgetLimits(completion_tokens=10))
    m = b.wrap(ScriptedModel([Reply("a", completion_tokens=2)], name="my-model"))
    await m.complete(ChatRequest.of("q", max_tokens=5))
    assert b.spent.completion_tokens == 2 and b.spent.flops == 0


async def test_wrap_with_explicit_spec() -> None:
    b = Budget(BudgetLimits(flops=1e15))
    m = b.wrap(ScriptedModel([Reply("a", prompt_tokens=1, completion_tokens=1)], name="served-alias"), spec=SMOKE)
    await m.complete(ChatRequest.of("q", max_tokens=5))
    assert b.spent.flops == get_model(SMOKE).flops(2)


async def test_flops_limit_blocks_large_call() -> None:
    spec = get_model(SMALL)
    req = ChatRequest.of("q", max_tokens=100)
    worst = spec.flops(estimate_prompt_tokens(req) + 100)
    b = Budget(BudgetLimits(flops=worst - 1))
    m = b.wrap(ScriptedModel(["a"], name=SMALL))
    with pytest.raises(BudgetExceeded) as e:
        await m.complete(req)
    assert e.value.limit == "flops"


# --- the bill -------------------------------------------------------------------------------------


async def test_bill_per_model_json_and_addition() -> None:
    clock = FakeClock()
    b = Budget(clock=clock)
    small = b.wrap(ScriptedModel([Reply("a", prompt_tokens=10, completion_tokens=2)], name=SMALL))
    smoke = b.wrap(ScriptedModel([Reply("b", prompt_tokens=4, completion_tokens=1)], name=SMOKE))
    await small.complete(ChatRequest.of("q"))
    await smoke.complete(ChatRequest.of("q"))
    b.record_escalation(SMOKE, SMALL)
    b.record_degradation("no budget for the verifier")
    clock.now += 2.5
    bill = b.bill()
    assert bill.requests == 2 and bill.prompt_tokens == 14 and bill.completion_tokens == 3
    assert bill.flops == get_model(SMALL).flops(12) + get_model(SMOKE).flops(5)
    assert bill.escalations == 1 and bill.degradations == ("no budget for the verifier",)
    d = json.loads(json.dumps(bill.to_dict()))
    assert d["models"][SMALL]["prompt_tokens"] == 10 and d["wall_time_s"] == 2.5
    assert Bill.from_dict(d) == bill
    twice = bill + bill
    assert twice.requests == 4 and twice.escalations == 2 and twice.wall_time_s == 5.0
    assert bill.escalation_routes == {f"{SMOKE} -> {SMALL}": 1} and d["escalation_routes"] == bill.escalation_routes
    assert twice.escalation_routes == {f"{SMOKE} -> {SMALL}": 2}
    assert twice.models[SMOKE] == ModelBill(2, 8, 2, get_model(SMOKE).flops(10), 0.0)
    assert (Bill() + bill) == bill


async def test_manual_reserve_settle_through_any_scope_and_only_once() -> None:
    parent = Budget()
    child = parent.child(name="node")
    req = ChatRequest.of("q", max_tokens=10)
    res = child.reserve(req, SMALL)
    assert parent.reserved == child.reserved == child.estimate(req, SMALL)
    parent.settle(res, Usage(1, 3, 4))  # the reservation knows its scope
    assert child.spent.completion_tokens == parent.spent.completion_tokens == 4
    assert child.reserved == parent.reserved == Spend()
    with pytest.raises(ConfigError, match="already settled or cancelled: settle, fail or cancel each"):
        child.settle(res, Usage(1, 3, 4))
    assert parent.spent.completion_tokens == 4
