"""Property tests: hundreds of concurrent budgeted calls never break a limit, and the books balance."""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agentflow._budget import Budget, BudgetLimits, Spend, estimate_prompt_tokens
from agentflow._catalog import get_model
from agentflow._exceptions import BudgetExceeded
from agentflow._types import ChatRequest, Usage
from agentflow.testing import FunctionModel, Reply

MODELS = ("smollm2-135m", "qwen2.5-coder-0.5b", "qwen2.5-coder-1.5b")
FIELDS = ("requests", "prompt_tokens", "completion_tokens", "total_tokens", "flops", "cost_usd")


@dataclass(frozen=True)
class Plan:
    scope: int  # which budget (0 = the root, else a child)
    model: int
    prompt: str
    max_tokens: int
    prompt_frac: float
    completion_frac: float
    awaits: int


def within(b: Budget, amount: Spend) -> bool:
    for f in FIELDS:
        lim = getattr(b.limits, f)
        if lim is not None and getattr(amount, f) > lim * (1 + 1e-9):
            return False
    return True


def optional(strategy: st.SearchStrategy[int]) -> st.SearchStrategy[int | None]:
    return st.none() | strategy


limits_st = st.builds(
    BudgetLimits,
    requests=optional(st.integers(0, 400)),
    prompt_tokens=optional(st.integers(0, 20_000)),
    completion_tokens=optional(st.integers(0, 20_000)),
    total_tokens=optional(st.integers(0, 30_000)),
    flops=st.none() | st.floats(0, 5e13),
)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    root_limits=limits_st,
    child_limits=st.lists(limits_st, min_size=1, max_size=4),
    n_calls=st.integers(100, 400),
    seed=st.integers(0, 2**32 - 1),
)
def test_concurrent_calls_never_exceed_and_books_balance(
    root_limits: BudgetLimits, child_limits: list[BudgetLimits], n_calls: int, seed: int
) -> None:
    rng = random.Random(seed)
    root = Budget(root_limits, name="root")
    scopes = [root] + [root.child(lim, name=f"c{i}") for i, lim in enumerate(child_limits)]
    # a grandchild, so charges travel two levels up
    scopes.append(scopes[1].child(BudgetLimits(completion_tokens=rng.randint(0, 5000)), name="gc"))
    plans = [
        Plan(
            scope=rng.randrange(len(scopes)),
            model=rng.randrange(len(MODELS)),
            prompt="x" * rng.randint(0, 300),
            max_tokens=rng.randint(1, 300),
            prompt_frac=rng.random(),
            completion_frac=rng.random(),
            awaits=rng.randint(0, 5),
        )
        for _ in range(n_calls)
    ]
    violations: list[str] = []

    def check_all() -> None:
        for b in scopes:
            if not within(b, b.spent + b.reserved):
                violations.append(f"{b.name}: spent {b.spent} + reserved {b.reserved} > {b.limits}")

    async def answer(req: ChatRequest) -> Reply:
        plan = plans[req.seed or 0]
        for _ in range(plan.awaits):
            check_all()
            await asyncio.sleep(0)
        est = estimate_prompt_tokens(req)
        return Reply(
            "ok",
            prompt_tokens=int(est * plan.prompt_frac),
            completion_tokens=int(req.max_tokens * plan.completion_frac),
        )

    wrapped = {
        (s, m): scopes[s].wrap(FunctionModel(answer, name=MODELS[m]))
        for s in range(len(scopes))
        for m in range(len(MODELS))
    }

    async def main() -> list[object]:
        calls = [
            wrapped[(p.scope, p.model)].complete(ChatRequest.of(p.prompt, max_tokens=p.max_tokens, seed=i))
            for i, p in enumerate(plans)
        ]
        return await asyncio.gather(*calls, return_exceptions=True)

    results = asyncio.run(main())
    check_all()
    assert violations == []

    # every result is an answer or a BudgetExceeded: nothing else went wrong
    expected = [Spend() for _ in scopes]
    per_model: list[dict[str, Usage]] = [{} for _ in scopes]
    for plan, res in zip(plans, results, strict=True):
        if isinstance(res, BaseException):
            assert isinstance(res, BudgetExceeded), res
            continue
        u = res.usage  # type: ignore[attr-defined]
        spec = get_model(MODELS[plan.model])
        spend = Spend(1, u.prompt_tokens, u.completion_tokens, spec.flops(u.total_tokens), 0.0)
        # charged to its own scope and every ancestor
        s: int | None = plan.scope
        while s is not None:
            expected[s] = expected[s] + spend
            per_model[s][MODELS[plan.model]] = per_model[s].get(MODELS[plan.model], Usage()) + u
            s = {0: None, len(scopes) - 1: 1}.get(s, 0)
    for i, b in enumerate(scopes):
        assert b.reserved == Spend(), b.name
        assert b.spent.requests == expected[i].requests
        assert b.spent.prompt_tokens == expected[i].prompt_tokens
        assert b.spent.completion_tokens == expected[i].completion_tokens
        assert b.spent.flops == expected[i].flops
        assert within(b, b.spent)
        bill = b.bill()
        assert bill.overshoots == 0
        for name, u in per_model[i].items():
            assert (bill.models[name].prompt_tokens, bill.models[name].completion_tokens) == (
                u.prompt_tokens,
                u.completion_tokens,
            )
    # the root is the sum of everything that succeeded
    succeeded = sum(1 for r in results if not isinstance(r, BaseException))
    assert root.bill().requests == succeeded


@settings(max_examples=25, deadline=None)
@given(
    cap=st.integers(0, 3000),
    max_tokens=st.lists(st.integers(1, 200), min_size=200, max_size=300),
    seed=st.integers(0, 1000),
)
def test_degrading_callers_that_check_first_never_get_refused(cap: int, max_tokens: list[int], seed: int) -> None:
    """Callers that check can_afford() and then call without awaiting in between are never refused."""
    rng = random.Random(seed)
    budget = Budget(BudgetLimits(completion_tokens=cap), policy="degrade")

    async def answer(req: ChatRequest) -> Reply:
        for _ in range(rng.randint(0, 3)):
            await asyncio.sleep(0)
        return Reply("ok", completion_tokens=req.max_tokens)

    model = budget.wrap(FunctionModel(answer, name="qwen2.5-coder-0.5b"))

    async def branch(mt: int) -> int:
        await asyncio.sleep(0)
        req = ChatRequest.of("q", max_tokens=mt)
        if not budget.can_afford(req, model):
            return 0
        out = await model.complete(req)
        return out.usage.completion_tokens

    async def main() -> list[int]:
        return await asyncio.gather(*(branch(mt) for mt in max_tokens))

    got = asyncio.run(main())
    assert sum(got) == budget.spent.completion_tokens <= cap
    assert budget.reserved == Spend()
