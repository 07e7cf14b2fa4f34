"""Ready-made question-answering workflows, written with agentflow's public API only.

Each is a graph over `QAState` whose nodes call `QADeps.model` — a plain model, or a `Router` that
escalates a call from the small model to a larger one when its confidence is low (a router is a
model, so every workflow runs behind it unchanged).

    from workflows import QADeps, QAState, build
    graph = build("verify", retrieve_k=2)
    deps = QADeps(model=router, rule=short_span_rule)
    state, record = await graph.run(QAState(question=q, paragraphs=paras), deps=deps)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from agentflow import Budget, ConfigError, Graph, Model
from agentflow.eval import Paragraph

from . import cot, decompose, direct, self_consistency, verify
from ._common import QADeps, QAState, Rule, clean_answer, short_span_rule
from .retrieve import with_retrieval

__all__ = [
    "WORKFLOWS",
    "QADeps",
    "QAState",
    "Rule",
    "build",
    "clean_answer",
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
}


def build(name: str, *, retrieve_k: int | None = None) -> Graph[QAState, QADeps]:
    """The named workflow with its default settings, behind retrieval of `retrieve_k` paragraphs if given."""
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
