"""Escalation on real logprobs: the small model answers, and only when its confidence is low does the
router ask the large one. Every decision, whether each final answer is right, and the bill are printed.

    python examples/router_budget.py SMALL LARGE     # default: smoke small

Needs the 'local' extra and the models' extras (e.g. '.[cpu]').

What to look for: the router trusts a score, not the truth. With the defaults, the smoke model is sure
of gold's symbol and keeps its answer; it is unsure of 2 + 2 and of who wrote Middlemarch, and both go
to the 0.5B model, which fixes the sum but answers the novel wrongly. The top rung's answer is final,
right or wrong: escalation buys a bigger model, not a correct answer. Calibrate the threshold on
labelled answers (`agentflow calibrate`) to know what a score is worth.
"""

from __future__ import annotations

import asyncio
import json
import sys

import serving
from agentflow import Budget, BudgetLimits, ChatRequest, ModelClient, Router, TokenProb

QUESTIONS = [  # (question, the answer a right reply contains)
    ("What is the chemical symbol for gold? Reply with the symbol only.", "Au"),
    ("What is 2 + 2? Reply with the number only.", "4"),
    ("Who wrote the novel 'Middlemarch'? Reply with the name only.", "George Eliot"),
]
THRESHOLD = 0.8


async def main(small_name: str, large_name: str) -> None:
    budget = Budget(BudgetLimits(requests=20, completion_tokens=500))
    right = 0
    async with serving.start_servers([small_name, large_name]) as (s, l_):
        async with (
            ModelClient(s.url, s.model_name, dialect="llama_cpp") as small,
            ModelClient(l_.url, l_.model_name, dialect="llama_cpp") as large,
        ):
            router = Router([small, large], estimator=TokenProb("mean"), thresholds=[THRESHOLD], budget=budget)
            for question, expected in QUESTIONS:
                answer = await router.complete(ChatRequest.of(question, max_tokens=16))
                print(f"{question}\n  -> {answer.text.strip()!r} from {answer.model}")
                for d in answer.meta["route"]:
                    print(f"     {d['model']}: score={d['score']} threshold={d['threshold']} {d['reason']}")
                ok = expected.lower() in answer.text.lower()
                right += ok
                kept = "kept" if len(answer.meta["route"]) == 1 else "escalated"
                print(f"     {'right' if ok else 'WRONG'} (expected {expected!r}; {kept})")
    print(
        f"shows: {right} of {len(QUESTIONS)} right. A confident answer is kept without a second look, and "
        "the top rung's answer is final even when it is wrong: the router acts on scores, not on truth"
    )
    print(f"bill: {json.dumps(budget.bill().to_dict())}")


if __name__ == "__main__":
    args = sys.argv[1:] + ["smoke", "small"][len(sys.argv[1:]) :]
    asyncio.run(main(args[0], args[1]))
