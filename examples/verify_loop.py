"""A verify-and-retry workflow on a real local model, with a rule verifier and a compute budget.

    python examples/verify_loop.py [MODEL]      # MODEL: smoke (default), small, large

The workflow answers, a rule checks that the answer is a short span, and a rejected answer is
retried with the rule's feedback, at most three times. The budget's bill shows what it cost.
"""

from __future__ import annotations

import asyncio
import json
import sys

import serving
from agentflow import Budget, BudgetLimits, ModelClient
from agentflow.eval import Paragraph
from workflows import QADeps, QAState, build, short_span_rule

PARAGRAPHS = [
    Paragraph("Eiffel Tower", "The Eiffel Tower is a wrought-iron tower in Paris, completed in 1889."),
    Paragraph("Big Ben", "Big Ben is the nickname of the Great Bell of the clock at Westminster, London."),
]


async def main(model: str) -> None:
    graph = build("verify")
    budget = Budget(BudgetLimits(requests=10, completion_tokens=400))
    async with (
        serving.LlamaCppServer(model) as server,
        ModelClient(server.url, server.model_name, dialect="llama_cpp") as client,
    ):
        deps = QADeps(model=budget.wrap(client), rule=short_span_rule, budget=budget)
        state, record = await graph.run(
            QAState(question="In which year was the Eiffel Tower completed?", paragraphs=PARAGRAPHS), deps=deps
        )
    print(f"answer: {state.answer!r} accepted={state.accepted} attempts={record.visits.get('answer', 0)}")
    print(f"bill: {json.dumps(budget.bill().to_dict())}")


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1] if len(sys.argv) > 1 else "smoke"))
