"""Retrieve-then-read: BM25 picks the k paragraphs most relevant to the question (see
`agentflow.top_paragraphs`), so a small model reads two or three paragraphs, not ten. Wraps any other
workflow: `with_retrieval(direct.build(), k=2)` runs retrieval, then that workflow as a subgraph."""

from __future__ import annotations

from agentflow import END, START, Graph, GraphBuilder, check_k
from agentflow.eval import top_paragraphs

from ._common import QADeps, QAState

__all__ = ["retrieve", "with_retrieval"]


def retrieve(k: int) -> object:
    def node(state: QAState) -> dict[str, object]:
        if not state.paragraphs:
            return {}
        # Original order keeps the passage flow the model expects; BM25 only chooses which.
        return {"context": top_paragraphs(state.question, state.paragraphs, k, keep_order=True)}

    return node


def with_retrieval(reader: Graph[QAState, QADeps], *, k: int = 2) -> Graph[QAState, QADeps]:
    check_k(k)
    g: GraphBuilder[QAState, QADeps] = GraphBuilder(QAState, deps=QADeps, name=f"retrieve{k}+{reader.name}")
    g.add_node("retrieve", retrieve(k))  # type: ignore[arg-type]
    g.add_node("read", reader)
    g.add_sequence(START, "retrieve", "read", END)
    return g.compile()
