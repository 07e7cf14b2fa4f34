"""Ready-made question-answering workflows, written with agentflow's public API only.

Each is a graph over `QAState` whose nodes call `QADeps.model` — a plain model, or a `Router` that
escalates a call from the small model to a larger one when its confidence is low (a router is a
model, so every workflow runs behind it unchanged).

    from workflows import QADeps, QAState, build
    graph = build("verify", retrieve_k=2)
    deps = QADeps(model=router, rule=short_span_rule)
    state, record = await graph.run(QAState(question=q, paragraphs=paras), deps=deps)

A cascade escalates a whole question from one workflow to the next when the first is unsure, judged
from the state it ended in (`rung()` builds one step of it):

    cascade = Cascade([rung("sc", small, confidence=AgreementShare(), threshold=0.6, retrieve_k=2),
                       rung("direct", large)], budget=budget)
    result = await cascade.run(QAState(question=q, paragraphs=paras))
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from agentflow import (
    DEFAULT_ANSWER_TOKENS,
    Budget,
    BudgetedModel,
    ChatRequest,
    ConfigError,
    Graph,
    Model,
    Rung,
    StateScore,
)
from agentflow.eval import Paragraph, top_paragraphs

from . import cot, decompose, direct, multihop, self_consistency, verify
from ._common import QADeps, QAState, Rule, answer_request, clean_answer, short_span_rule
from .retrieve import with_retrieval

__all__ = [
    "WORKFLOWS",
    "QADeps",
    "QAState",
    "Rule",
    "build",
    "clean_answer",
    "rung",
    "short_span_rule",
    "solve",
    "with_retrieval",
]

WORKFLOWS: dict[str, Callable[[], Graph[QAState, QADeps]]] = {
    "direct": direct.build,
    "cot": cot.build,
    "sc": self_consistency.build,
    "verify": verify.build,
    "decompose": decompose.build,
    "multihop": multihop.build,
}


def build(name: str, *, retrieve_k: int | None = None) -> Graph[QAState, QADeps]:
    """The named workflow with its default settings, behind retrieval of `retrieve_k` paragraphs if given."""
    if name == "multihop":  # it retrieves for itself, hop by hop: `retrieve_k` paragraphs in all (k-1, then 1)
        return multihop.build(k=max(1, (retrieve_k or 2) - 1), next_k=1)
    try:
        graph = WORKFLOWS[name]()
    except KeyError:
        raise ConfigError(f"unknown workflow {name!r}: choose one of {', '.join(WORKFLOWS)}") from None
    return graph if retrieve_k is None else with_retrieval(graph, k=retrieve_k)


async def solve(
    workflow: str,
    model: Model,
    *,
    question: str,
    paragraphs: Sequence[Paragraph],
    retrieve_k: int | None,
    budget: Budget | None,
    max_tokens: int,
) -> str:
    """Run the named workflow on one question with `model` and return its answer.

    This is the workflow factory `agentflow.eval.Comparison` is handed (evaluation never imports
    the workflows); errors propagate as they are."""
    deps = QADeps(model=model, rule=short_span_rule, budget=budget, max_tokens=max_tokens)
    state, _ = await build(workflow, retrieve_k=retrieve_k).run(
        QAState(question=question, paragraphs=list(paragraphs)), deps=deps
    )
    return str(state.answer)


def rung(
    workflow: str,
    model: Model,
    *,
    confidence: StateScore[QAState] | None = None,
    threshold: float | None = None,
    retrieve_k: int | None = None,
    budget: Budget | None = None,
    verifier: Model | None = None,
    rule: Rule | None = short_span_rule,
    max_tokens: int = DEFAULT_ANSWER_TOKENS,
    logprobs: int | None = None,
    name: str | None = None,
) -> Rung[QAState, QADeps]:
    """One step of a cascade: the named workflow on `model` (behind retrieval of `retrieve_k` paragraphs
    if given), judged by `confidence` against `threshold` (default: `DEFAULT_THRESHOLD`, 0.7).

    With a `budget`, the model (and verifier) spend from it, and the rung's `cost` lists the calls it
    needs at the least to answer (one answer; `agree` samples for sc; answer and judgement for verify
    with a model verifier; plan and composition for decompose), so the cascade can check it first.
    `logprobs` defaults to 1 when the confidence reads token probabilities (`needs_logprobs`), else 0;
    `rule` is the verify workflow's rule when no `verifier` model is given.
    """
    graph = build(workflow, retrieve_k=retrieve_k)
    if budget is not None:
        model = _spending(model, budget)
        verifier = None if verifier is None else _spending(verifier, budget)
    wants = 1 if getattr(confidence, "needs_logprobs", False) else 0
    deps = QADeps(
        model=model,
        verifier=verifier,
        rule=None if verifier is not None else rule,
        budget=budget,
        max_tokens=max_tokens,
        logprobs=wants if logprobs is None else logprobs,
    )

    def cost(state: QAState) -> list[tuple[ChatRequest, Model]]:
        return _least_calls(workflow, state, deps, retrieve_k)

    label = name or f"{workflow}@{model.name}"
    if threshold is None:
        return Rung(graph, deps, confidence=confidence, name=label, cost=cost)
    return Rung(graph, deps, confidence=confidence, threshold=threshold, name=label, cost=cost)


def _spending(model: Model, budget: Budget) -> Model:
    """`model` spending from `budget` (already so when wrapped by it or by one of its children)."""
    if isinstance(model, BudgetedModel) and any(b is budget for b in model.budget.chain()):
        return model
    return budget.wrap(model)


def _least_calls(
    workflow: str, state: QAState, deps: QADeps, retrieve_k: int | None
) -> list[tuple[ChatRequest, Model]]:
    """The calls `workflow` needs at the least to give an answer for `state`, as it would send them."""
    if retrieve_k is not None and state.paragraphs:
        state = state.model_copy(
            update={"context": top_paragraphs(state.question, state.paragraphs, retrieve_k, keep_order=True)}
        )
    answer = answer_request(state, direct.INSTRUCTIONS, max_tokens=deps.max_tokens)
    if workflow == "cot":
        return [(answer_request(state, cot.INSTRUCTIONS, max_tokens=deps.reasoning_tokens), deps.model)]
    if workflow == "sc":
        return [(answer, deps.model)] * 2  # the default agree=2: the fewest samples that can agree
    if workflow == "verify" and deps.verifier is not None:
        judged = state.model_copy(update={"answer": "x" * 2 * deps.max_tokens})  # the longest answer it may judge
        return [(answer, deps.model), (verify.judge_request(judged), deps.verifier)]
    if workflow == "decompose":
        plan = answer_request(state, decompose.PLAN.format(n=2), max_tokens=24 * 2 + 16)
        return [(plan, deps.model), (answer, deps.model)]
    if workflow == "multihop":  # the bridge of the first hop, then the answer
        return [(answer, deps.model)] * 2
    return [(answer, deps.model)]
