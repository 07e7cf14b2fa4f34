"""Self-ask / decomposition for multi-hop questions: plan up to `max_steps` sub-questions (constrained
JSON), answer them in turn (a later one may refer to an earlier answer as #1, #2), then compose the
final answer from the findings."""

from __future__ import annotations

import re

from pydantic import BaseModel, Field

from agentflow import END, START, ConfigError, Ctx, Graph, GraphBuilder, JsonOutput, StructuredOutputError

from ._common import QADeps, QAState, answer_request, clean_answer, finished
from .direct import INSTRUCTIONS

__all__ = ["Plan", "build"]


class Plan(BaseModel):
    subquestions: list[str] = Field(max_length=3)


PLAN = (
    "Split the question into at most {n} simpler questions that answer it step by step. "
    "A later question may refer to the answer of an earlier one as #1, #2. Reply in JSON."
)
SUB = "Answer the question using the paragraphs. Reply with only a short span."
COMPOSE = INSTRUCTIONS + " Use the findings."


def build(*, max_steps: int = 2) -> Graph[QAState, QADeps]:
    if not 1 <= max_steps <= 3:
        raise ConfigError(f"max_steps must be 1..3, got {max_steps}")

    async def plan(state: QAState, ctx: Ctx[QAState, QADeps]) -> dict[str, object]:
        req = answer_request(
            state, PLAN.format(n=max_steps), max_tokens=24 * max_steps + 16, output=JsonOutput.of(Plan)
        )
        try:
            parsed = (await ctx.deps.model.complete(req)).parsed
        except StructuredOutputError:
            return {"subquestions": []}  # no usable plan: answer the question directly
        subs = [q.strip() for q in parsed.subquestions if q.strip()] if isinstance(parsed, Plan) else []
        return {"subquestions": subs[:max_steps]}

    async def sub(state: QAState, ctx: Ctx[QAState, QADeps]) -> dict[str, object]:
        i = len(state.notes)
        answers = [n.split(" -> ", 1)[-1] for n in state.notes]
        question = re.sub(r"#(\d)", lambda m: _ref(answers, m.group(1)), state.subquestions[i])
        sub_state = state.model_copy(update={"question": question})
        c = await ctx.deps.model.complete(answer_request(sub_state, SUB, max_tokens=ctx.deps.max_tokens))
        return {"notes": [f"{question} -> {clean_answer(c.text)}"]}

    def after(state: QAState) -> str:
        return "sub" if len(state.notes) < len(state.subquestions) else "compose"

    async def compose(state: QAState, ctx: Ctx[QAState, QADeps]) -> dict[str, object]:
        extra = ("Findings:\n" + "\n".join(state.notes)) if state.notes else ""
        req = answer_request(state, COMPOSE, max_tokens=ctx.deps.max_tokens, extra=extra)
        return finished(await ctx.deps.model.complete(req))

    g: GraphBuilder[QAState, QADeps] = GraphBuilder(QAState, deps=QADeps, name="decompose")
    g.add_node("plan", plan)
    g.add_node("sub", sub, max_visits=max_steps, on_exhausted="compose")
    g.add_node("compose", compose)
    g.add_edge(START, "plan")
    g.add_conditional_edges("plan", after, targets=["sub", "compose"])
    g.add_conditional_edges("sub", after, targets=["sub", "compose"])
    g.add_edge("compose", END)
    return g.compile()


def _ref(answers: list[str], digit: str) -> str:
    i = int(digit) - 1
    return answers[i] if 0 <= i < len(answers) else f"#{digit}"
