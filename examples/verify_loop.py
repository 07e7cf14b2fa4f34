"""A verify-and-retry workflow on a real local model, with a rule verifier and a compute budget.

    python examples/verify_loop.py [MODEL]      # MODEL: smoke (default), small, large

The workflow answers, a rule checks that the answer is a short span, and a rejected answer is
retried with the rule's feedback, at most three times. Every attempt is printed with the rule's
verdict, then what the loop shows, then the budget's bill.

With the default 135M smoke model the loop usually fails, and that is the lesson: the model keeps
answering in sentences, the rule rejects all three, and the last answer stands with accepted=False
(the workflow never loops without a bound). `python examples/verify_loop.py small` answers "1889"
and is accepted on the first attempt.
"""

from __future__ import annotations

import asyncio
import json
import sys

import serving
from agentflow import Budget, BudgetLimits, ModelClient
from agentflow.eval import Paragraph
from workflows import QADeps, QAState, short_span_rule
from workflows.verify import build

PARAGRAPHS = [
    Paragraph("Eiffel Tower", "The Eiffel Tower is a wrought-iron tower in Paris, completed in 1889."),
    Paragraph("Big Ben", "Big Ben is the nickname of the Great Bell of the clock at Westminster, London."),
]
QUESTION = "In which year was the Eiffel Tower completed?"
MAX_ATTEMPTS = 3


async def main(model: str) -> None:
    graph = build(max_attempts=MAX_ATTEMPTS)
    budget = Budget(BudgetLimits(requests=10, completion_tokens=400))
    async with (
        serving.LlamaCppServer(model) as server,
        ModelClient(server.url, server.model_name, dialect="llama_cpp") as client,
    ):
        deps = QADeps(model=budget.wrap(client), rule=short_span_rule, budget=budget)
        state, record = await graph.run(QAState(question=QUESTION, paragraphs=PARAGRAPHS), deps=deps)
    attempts = record.visits.get("answer", 0)
    print(f"question: {QUESTION!r}")
    for i, note in enumerate(state.notes, start=1):  # one note per rejected answer: the answer and the feedback
        print(f"attempt {i}: rejected {note.removeprefix('- ')}")
    if state.accepted:
        print(f"attempt {attempts}: accepted {state.answer!r}")
    print(f"answer: {state.answer!r} accepted={state.accepted} attempts={attempts}")
    if state.accepted:
        print(f"shows: the rule accepted attempt {attempts} of at most {MAX_ATTEMPTS}")
    else:
        print(
            f"shows: the rule rejected all {attempts} answers, so the loop stopped at its bound and the last "
            f"answer stands, marked accepted=False: {server.model_name} did not follow the feedback. "
            "A larger model does better: python examples/verify_loop.py small"
        )
    print(f"bill: {json.dumps(budget.bill().to_dict())}")


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1] if len(sys.argv) > 1 else "smoke"))
