"""Self-consistency with adaptive stopping: sample answers one at a time, stop as soon as `agree` of
them agree, never more than `k`; the answer with the most support wins (ties: the earliest sample).

Two answers agree when they are equal after answer normalisation or one contains the other word for
word ("Jane Roe" and "Roe"; `agentflow.answers_agree`). The share of samples that agree with the
winner is recorded as `agreement` (and as `confidence`), with the winner's token logprobs when the
model returned them.

With a budget in the deps, sampling also stops when the next sample cannot be afforded (the state is
then marked degraded).

`build(batch=True)` draws the samples at once where the model asks for several answers in one request
(a `ModelClient` on vLLM or an OpenAI server: `samples_at_once`): the greedy answer, and the k - 1 sampled
ones in one request with `n` (its prompt computed once; vLLM seeds them 2..k, the seeds the one-at-a-time loop
sends). They are then counted in order as if drawn one at a time: the state keeps the samples up to the one
at which `agree` agreed (so `samples` and `agreement` are what the loop would have found), and a note says
how many were drawn. That is one round trip instead of up to k, for the decoding of samples the loop might
not have needed. Any other model (llama.cpp's server ignores `n`; a budgeted, cached or routed model) is
sampled one at a time, with the very requests the loop sends without `batch`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any, cast

from agentflow import END, START, ChatRequest, Completion, ConfigError, Ctx, Graph, GraphBuilder, Model, answers_agree

from ._common import QADeps, QAState, answer_logprobs, answer_request, as_asked, ask, clean_answer
from .direct import INSTRUCTIONS

__all__ = ["build", "needed", "support"]

SampleFn = Callable[[ChatRequest, int], Coroutine[Any, Any, list[Completion]]]


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


def needed(samples: list[str], agree: int) -> int:
    """How many of `samples`, taken in order, sampling one at a time would have drawn: up to the first at
    which `agree` of them agree, or all of them."""
    for m in range(1, len(samples) + 1):
        won = _winner(samples[:m])
        if won is not None and won[1] >= agree:
            return m
    return len(samples)


def _sampler(model: Model) -> SampleFn | None:
    """`model.sample` when the model asks for several answers in one request (an `agentflow.Sampler` whose
    `samples_at_once` is true), else None."""
    if getattr(model, "samples_at_once", False) is not True:
        return None
    sample = getattr(model, "sample", None)
    return cast(SampleFn, sample) if callable(sample) else None


def build(*, k: int = 5, agree: int = 2, temperature: float = 0.7, batch: bool = False) -> Graph[QAState, QADeps]:
    if not 1 <= agree <= k:
        raise ConfigError(f"self-consistency needs 1 <= agree <= k, got agree={agree}, k={k}: lower agree or raise k")

    def request(state: QAState, deps: QADeps, visit: int) -> ChatRequest:
        # The first sample is greedy (the model's best guess); later ones sample, each with its own seed.
        temp = 0.0 if visit <= 1 else temperature
        return answer_request(state, INSTRUCTIONS, max_tokens=deps.max_tokens, temperature=temp, seed=visit)

    async def sample(state: QAState, ctx: Ctx[QAState, QADeps]) -> dict[str, object]:
        if batch and k > 1 and ctx.visit == 1:
            draw = _sampler(ctx.deps.model)
            if draw is not None:
                return await sample_at_once(state, ctx.deps, draw)
        req = request(state, ctx.deps, ctx.visit)
        completion = await ask(ctx.deps, req)
        text = clean_answer(completion.text)
        return {
            "samples": [text],
            "sample_logprobs": [answer_logprobs(completion, text) or []],
            "degraded": bool(completion.meta.get("degraded")),
        }

    async def sample_at_once(state: QAState, deps: QADeps, draw: SampleFn) -> dict[str, object]:
        """The greedy answer and, in one request, the k - 1 sampled ones (fewer if the budget says so)."""
        greedy, sampled = request(state, deps, 1), as_asked(deps, request(state, deps, 2))
        n = k - 1
        if deps.budget is not None:  # the greedy answer and n samples of the same prompt must fit together
            n = min(n, deps.budget.affordable(sampled, deps.model, k) - 1)
        if n < 1:
            completion = await ask(deps, greedy)
            text = clean_answer(completion.text)
            return {
                "samples": [text],
                "sample_logprobs": [answer_logprobs(completion, text) or []],
                "degraded": True,
                "notes": ["stopped sampling after 1: budget"],
            }
        first, rest = asyncio.ensure_future(ask(deps, greedy)), asyncio.ensure_future(draw(sampled, n))
        try:
            answer, answers = await asyncio.gather(first, rest)
        except BaseException:  # the error of the one that failed, as the loop would raise it; the other stops
            first.cancel()
            rest.cancel()
            raise
        completions = [answer, *answers]
        texts = [clean_answer(c.text) for c in completions]
        m = needed(texts, agree)
        won = _winner(texts[:m])
        agreed = f"{m} needed for {agree} to agree" if won is not None and won[1] >= agree else "none agreed"
        notes = [f"drew {len(texts)} samples at once ({n} in one request); {agreed}"]
        if n < k - 1:
            notes.append(f"drew {len(texts)} of {k} samples: budget")
        return {
            "samples": texts[:m],
            "sample_logprobs": [answer_logprobs(c, t) or [] for c, t in zip(completions[:m], texts[:m], strict=True)],
            "degraded": n < k - 1 or any(bool(c.meta.get("degraded")) for c in completions),
            "notes": notes,
        }

    def next_step(state: QAState, ctx: Ctx[QAState, QADeps]) -> str:
        won = _winner(state.samples)
        if won is not None and won[1] >= agree:
            return "vote"
        if batch and k > 1 and _sampler(ctx.deps.model) is not None:
            return "vote"  # the first visit drew every sample it could at once
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
