"""Direct answer: one short call. The cheapest workflow, and the baseline the others must beat."""

from __future__ import annotations

from agentflow import END, START, Ctx, Graph, GraphBuilder

from ._common import ANSWER_RULES, QADeps, QAState, answer_request, ask, finished

__all__ = ["INSTRUCTIONS", "build"]

INSTRUCTIONS = f"Answer the question using the paragraphs. {ANSWER_RULES}"


async def answer(state: QAState, ctx: Ctx[QAState, QADeps]) -> dict[str, object]:
    deps = ctx.deps
    completion = await ask(deps, answer_request(state, INSTRUCTIONS, max_tokens=deps.max_tokens))
    return finished(completion)


def build() -> Graph[QAState, QADeps]:
    g: GraphBuilder[QAState, QADeps] = GraphBuilder(QAState, deps=QADeps, name="direct")
    g.add_node("answer", answer)
    g.add_sequence(START, "answer", END)
    return g.compile()
