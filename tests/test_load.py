"""Many concurrent workflow runs against a misbehaving loopback server: every run ends, each one answered or
failed with a typed agentflow error, and the budget's books close. (The 1,000-run figures, with memory, come
from `benchmarks/load.py`.)"""

from __future__ import annotations

import asyncio
import random

from agentflow import (
    AgentFlowError,
    Budget,
    BudgetLimits,
    ModelClient,
    ModelError,
    NodeFailedError,
    RetryPolicy,
    Router,
    TokenProb,
)
from agentflow.eval import Paragraph
from agentflow.testing import Fault, FaultServer, SeenRequest
from workflows import QADeps, QAState, build, short_span_rule


def misbehaving(seen: SeenRequest) -> Fault:
    r = random.Random(seen.n).random()
    if r < 0.05:
        return Fault.hang()
    if r < 0.15:
        return Fault.status(503, "overloaded")
    if r < 0.2:
        return Fault.reset_mid_body("Paris")
    if r < 0.25:
        return Fault.no_logprobs("Paris")
    return Fault.ok("Paris")


async def test_200_concurrent_runs_all_end_answered_or_with_a_typed_error() -> None:
    policy = RetryPolicy(max_attempts=2, initial_backoff_s=0.01, max_backoff_s=0.01, max_total_s=5)
    budget = Budget(BudgetLimits(requests=10_000), name="load")
    paras = [Paragraph("France", "Paris is the capital of France.")]
    async with FaultServer(handler=misbehaving) as server:
        async with (
            ModelClient(server.url, "small", timeout=0.3, retry=policy, max_in_flight=32) as small,
            ModelClient(server.url, "large", timeout=0.3, retry=policy, max_in_flight=32) as large,
        ):
            router = Router([small, large], estimator=TokenProb("mean"), thresholds=[0.5], budget=budget)
            deps = QADeps(model=router, rule=short_span_rule, budget=budget)
            graph = build("verify")

            async def one(i: int) -> str:
                out, _ = await graph.run(QAState(question=f"Capital of France? {i}", paragraphs=paras), deps=deps)
                return out.answer

            results = await asyncio.wait_for(asyncio.gather(*(one(i) for i in range(200)), return_exceptions=True), 60)
    answers = [r for r in results if isinstance(r, str)]
    errors = [r for r in results if not isinstance(r, str)]
    assert set(answers) == {"Paris"} and len(answers) > 150
    for e in errors:
        assert isinstance(e, NodeFailedError) and isinstance(e.__cause__, ModelError), repr(e)
        assert isinstance(e, AgentFlowError)
    assert errors, "with 2 attempts and these fault rates some runs must fail: the faults were not injected"
    assert budget.reserved.requests == 0
    assert budget.bill().escalations > 0  # answers without logprobs escalated
    assert server.hits >= budget.bill().requests
