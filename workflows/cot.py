"""Chain-of-thought: a few short reasoning sentences, then the answer on its own line.

The reasoning budget is short by default (`QADeps.reasoning_tokens`: `agentflow.DEFAULT_REASONING_TOKENS`,
160): on a CPU every generated token costs, and small models ramble.
"""

from __future__ import annotations

from agentflow import END, START, Ctx, Graph, GraphBuilder

from ._common import ANSWER_RULES, QADeps, QAState, answer_request, ask, finished

__all__ = ["INSTRUCTIONS", "build"]

INSTRUCTIONS = (
    "Answer the question using the paragraphs. First think step by step in at most three short "
    "sentences, then write a last line 'Answer: <answer>'. " + ANSWER_RULES.replace("Reply with", "The answer is")
)


async def reason(state: QAState, ctx: Ctx[QAState, QADeps]) -> dict[str, object]:
    deps = ctx.deps
    completion = await ask(deps, answer_request(state, INSTRUCTIONS, max_tokens=deps.reasoning_tokens))
    update = finished(completion)
    update["notes"] = [completion.text.strip()]
    return update


def build() -> Graph[QAState, QADeps]:
    g: GraphBuilder[QAState, QADeps] = GraphBuilder(QAState, deps=QADeps, name="cot")
    g.add_node("reason", reason)
    g.add_sequence(START, "reason", END)
    return g.compile()
