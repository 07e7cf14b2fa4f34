"""Verify and retry: answer, let a verifier check the answer, retry with its feedback; bounded.

The verifier is a rule (`QADeps.rule`: a function of question and answer returning feedback or None)
or a model judging with a constrained yes/no (`QADeps.verifier`). After `max_attempts` answers the
last one stands, with `accepted=False`. With a budget in the deps, verification stops (the answer is
kept, marked degraded) when the verifier call cannot be afforded.

A model verifier's probability of "yes" for the final answer is recorded as `verifier_p_yes` (read
from the top logprobs of its verdict; None for a rule, or when the server returns no logprobs), so a
cascade can escalate on it.
"""

from __future__ import annotations

from agentflow import (
    END,
    START,
    ChatRequest,
    ChoiceOutput,
    ConfidenceError,
    ConfigError,
    Ctx,
    Graph,
    GraphBuilder,
    Message,
    yes_probability,
)

from ._common import QADeps, QAState, answer_request, ask, context_block, finished
from .direct import INSTRUCTIONS

__all__ = ["JUDGE_TOP_LOGPROBS", "build", "judge_request"]

JUDGE_TOP_LOGPROBS = 5

JUDGE = (
    "You check answers. Given paragraphs, a question and a proposed answer, reply 'yes' if the proposed "
    "answer is correct and supported by the paragraphs, otherwise 'no'."
)


def judge_request(state: QAState) -> ChatRequest:
    ctx = context_block(state)
    body = (f"{ctx}\n\n" if ctx else "") + f"Question: {state.question}\nProposed answer: {state.answer}\nCorrect?"
    return ChatRequest.of(
        [Message.system(JUDGE), Message.user(body)],
        max_tokens=2,
        output=ChoiceOutput(("yes", "no")),
        logprobs=True,  # P(yes) is read from the first token's alternatives
        top_logprobs=JUDGE_TOP_LOGPROBS,
    )


async def answer(state: QAState, ctx: Ctx[QAState, QADeps]) -> dict[str, object]:
    extra = ""
    if state.notes:
        extra = "Earlier answers were rejected:\n" + "\n".join(state.notes) + "\nGive a different, better answer."
    req = answer_request(state, INSTRUCTIONS, max_tokens=ctx.deps.max_tokens, extra=extra)
    return {**finished(await ask(ctx.deps, req)), "accepted": None, "verifier_p_yes": None}


async def verify(state: QAState, ctx: Ctx[QAState, QADeps]) -> dict[str, object]:
    deps = ctx.deps
    if deps.rule is not None:
        feedback = deps.rule(state.question, state.answer)
        if feedback is None:
            return {"accepted": True}
        return {"accepted": False, "notes": [f"- {state.answer!r}: {feedback}"]}
    assert deps.verifier is not None  # checked at build time of the deps by `check_deps`
    req = judge_request(state)
    if deps.budget is not None and not deps.budget.can_afford(req, deps.verifier):
        return {"accepted": None, "degraded": True}
    verdict = await deps.verifier.complete(req)
    try:
        p_yes: float | None = yes_probability(verdict, source=f"verifier {deps.verifier.name!r}")
    except ConfidenceError:
        p_yes = None  # no logprobs from this server: the verdict still decides
    if str(verdict.parsed) == "yes":
        return {"accepted": True, "verifier_p_yes": p_yes}
    return {
        "accepted": False,
        "verifier_p_yes": p_yes,
        "notes": [f"- {state.answer!r}: a checker judged it wrong"],
    }


def _route(state: QAState) -> str:
    return "answer" if state.accepted is False else END


def check_deps(deps: QADeps) -> None:
    if deps.rule is None and deps.verifier is None:
        raise ConfigError(
            "the verify workflow needs a verifier: pass QADeps(rule=...) (e.g. short_span_rule) "
            "or QADeps(verifier=model)"
        )


def build(*, max_attempts: int = 3) -> Graph[QAState, QADeps]:
    if max_attempts < 1:
        raise ConfigError(f"max_attempts must be >= 1, got {max_attempts}")

    async def verify_checked(state: QAState, ctx: Ctx[QAState, QADeps]) -> dict[str, object]:
        check_deps(ctx.deps)
        return await verify(state, ctx)

    g: GraphBuilder[QAState, QADeps] = GraphBuilder(QAState, deps=QADeps, name="verify")
    g.add_node("answer", answer, max_visits=max_attempts, on_exhausted=END)
    g.add_node("verify", verify_checked)
    g.add_edge(START, "answer")
    g.add_edge("answer", "verify")
    g.add_conditional_edges("verify", _route, targets=["answer", END])
    return g.compile()
