"""Self-consistency with adaptive stopping: sample answers one at a time, stop as soon as `agree` of
them agree, never more than `k`; the answer with the most support wins (ties: the earliest sample).

Two answers agree when they are equal after answer normalisation or one contains the other word for
word ("Jane Roe" and "Roe"; `agentflow.answers_agree`). The share of samples that agree with the
winner is recorded as `agreement` (and as `confidence`), with the winner's token logprobs when the
model returned them.

With a budget in the deps, sampling also stops when the next sample cannot be afforded (the state is
then marked degraded).
"""

from __future__ import annotations

from agentflow import END, START, ChatRequest, ConfigError, Ctx, Graph, GraphBuilder, answers_agree

from ._common import QADeps, QAState, answer_logprobs, answer_request, ask, clean_answer
from .direct import INSTRUCTIONS

__all__ = ["build", "support"]


def support(samples: list[str]) -> list[int]:
    """For each sample, how many samples (itself included) agree with it; 0 for an empty one."""
    return [sum(answers_agree(s, t) for t in samples) for s in samples]


def _winner(samples: list[str]) -> tuple[int, int] | None:
    """(index, support) of the best-supported sample, the earliest on ties; None when all are empty."""
    counts = support(samples)
    if not counts or max(counts) == 0:
        return None
    best = max(counts)
    return counts.index(best), best


def build(*, k: int = 5, agree: int = 2, temperature: float = 0.7) -> Graph[QAState, QADeps]:
    if not 1 <= agree <= k:
        raise ConfigError(f"self-consistency needs 1 <= agree <= k, got agree={agree}, k={k}: lower agree or raise k")

    def request(state: QAState, deps: QADeps, visit: int) -> ChatRequest:
        # The first sample is greedy (the model's best guess); later ones sample, each with its own seed.
        temp = 0.0 if visit <= 1 else temperature
        return answer_request(state, INSTRUCTIONS, max_tokens=deps.max_tokens, temperature=temp, seed=visit)

    async def sample(state: QAState, ctx: Ctx[QAState, QADeps]) -> dict[str, object]:
        req = request(state, ctx.deps, ctx.visit)
        completion = await ask(ctx.deps, req)
        text = clean_answer(completion.text)
        return {
            "samples": [text],
            "sample_logprobs": [answer_logprobs(completion, text) or []],
            "degraded": bool(completion.meta.get("degraded")),
        }

    def next_step(state: QAState, ctx: Ctx[QAState, QADeps]) -> str:
        won = _winner(state.samples)
        if won is not None and won[1] >= agree:
            return "vote"
        budget = ctx.deps.budget
        nxt = request(state, ctx.deps, len(state.samples) + 1)
        if budget is not None and not budget.can_afford(nxt, ctx.deps.model):
            return "stop_short"
        return "sample"

    def stop_short(state: QAState) -> dict[str, object]:
        return {"degraded": True, "notes": [f"stopped sampling after {len(state.samples)}: budget"]}

    def vote(state: QAState) -> dict[str, object]:
        won = _winner(state.samples)
        if won is None:
            return {"answer": "", "confidence": 0.0, "agreement": 0.0, "answer_logprobs": None}
        i, count = won
        share = count / len(state.samples)
        lps = state.sample_logprobs[i] if i < len(state.sample_logprobs) else []
        # The winning sample as the model wrote it (keeps its casing).
        return {"answer": state.samples[i], "confidence": share, "agreement": share, "answer_logprobs": lps or None}

    g: GraphBuilder[QAState, QADeps] = GraphBuilder(QAState, deps=QADeps, name="self_consistency")
    g.add_node("sample", sample, max_visits=k, on_exhausted="vote")
    g.add_node("stop_short", stop_short)
    g.add_node("vote", vote)
    g.add_edge(START, "sample")
    g.add_conditional_edges("sample", next_step, targets=["sample", "vote", "stop_short"])
    g.add_edge("stop_short", "vote")
    g.add_edge("vote", END)
    return g.compile()
