"""Self-consistency with adaptive stopping: sample answers one at a time, stop as soon as `agree` of
them match (after answer normalisation), never more than `k`; the majority answer wins.

With a budget in the deps, sampling also stops when the next sample cannot be afforded (the state is
then marked degraded). The share of samples behind the winner is the answer's confidence.
"""

from __future__ import annotations

from collections import Counter

from agentflow import END, START, ChatRequest, ConfigError, Ctx, Graph, GraphBuilder
from agentflow.eval import normalize_answer

from ._common import QADeps, QAState, answer_request, clean_answer
from .direct import INSTRUCTIONS

__all__ = ["build"]


def _tally(samples: list[str]) -> Counter[str]:
    return Counter(normalize_answer(s) for s in samples if s.strip())


def build(*, k: int = 5, agree: int = 2, temperature: float = 0.7) -> Graph[QAState, QADeps]:
    if not 1 <= agree <= k:
        raise ConfigError(f"self-consistency needs 1 <= agree <= k, got agree={agree}, k={k}: lower agree or raise k")

    def request(state: QAState, deps: QADeps, visit: int) -> ChatRequest:
        # The first sample is greedy (the model's best guess); later ones sample, each with its own seed.
        temp = 0.0 if visit <= 1 else temperature
        return answer_request(state, INSTRUCTIONS, max_tokens=deps.max_tokens, temperature=temp, seed=visit)

    async def sample(state: QAState, ctx: Ctx[QAState, QADeps]) -> dict[str, object]:
        req = request(state, ctx.deps, ctx.visit)
        completion = await ctx.deps.model.complete(req)
        return {"samples": [clean_answer(completion.text)], "degraded": bool(completion.meta.get("degraded"))}

    def next_step(state: QAState, ctx: Ctx[QAState, QADeps]) -> str:
        tally = _tally(state.samples)
        if tally and tally.most_common(1)[0][1] >= agree:
            return "vote"
        budget = ctx.deps.budget
        nxt = request(state, ctx.deps, len(state.samples) + 1)
        if budget is not None and not budget.can_afford(nxt, ctx.deps.model):
            return "stop_short"
        return "sample"

    def stop_short(state: QAState) -> dict[str, object]:
        return {"degraded": True, "notes": [f"stopped sampling after {len(state.samples)}: budget"]}

    def vote(state: QAState) -> dict[str, object]:
        tally = _tally(state.samples)
        if not tally:
            return {"answer": "", "confidence": 0.0}
        top, count = tally.most_common(1)[0]
        # Report the first raw sample with the winning normal form (keeps the model's casing).
        answer = next(s for s in state.samples if normalize_answer(s) == top)
        return {"answer": answer, "confidence": count / len(state.samples)}

    g: GraphBuilder[QAState, QADeps] = GraphBuilder(QAState, deps=QADeps, name="self_consistency")
    g.add_node("sample", sample, max_visits=k, on_exhausted="vote")
    g.add_node("stop_short", stop_short)
    g.add_node("vote", vote)
    g.add_edge(START, "sample")
    g.add_conditional_edges("sample", next_step, targets=["sample", "vote", "stop_short"])
    g.add_edge("stop_short", "vote")
    g.add_edge("vote", END)
    return g.compile()
