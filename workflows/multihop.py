"""Multi-hop retrieval: retrieve, find the bridge, retrieve again with it, then answer from all that was read.

Single-shot BM25 ranks paragraphs by the question alone, but the second paragraph of a bridge question
("the director of the film X") is about an entity the question never names. As in IRCoT and self-ask,
each hop here retrieves with what the previous one found:

    hop 1: BM25 picks `k` paragraphs for the question; the model names the bridge entity in them
           (a short span: "Shirley Temple");
    hop 2: BM25 ranks the paragraphs again for the question plus that name (a paragraph titled with
           the name gets the title bonus) and the best `next_k` not yet read are added; and so on up to
           `hops` hops;
    then the reader (by default `direct`) answers from the union of what was read, in original order.

Each hop leaves two lines in `state.notes`: `hop 1 read: ["Kiss and Tell (1945 film)", ...]` (titles,
best first, as JSON) and `hop 1 found: Shirley Temple`; `hops_read(state)` and `hop_findings(state)`
read them back. `agentflow.eval` measures them with supporting-paragraph recall per hop.

    graph = build()                    # 1 + 1 paragraphs, 2 model calls; build(k=2, next_k=1) reads 3
    state, _ = await graph.run(QAState(question=q, paragraphs=paras), deps=QADeps(model=model))

Recall of both supporting paragraphs on HotpotQA's tuning rows (0-39 bridge, 250-289 comparison),
`benchmarks/multihop_recall.py`, with the bridge named by Qwen2.5-Coder-0.5B / by an oracle (the gold
bridge title): 2 paragraphs read (1+1) 0.800 / 0.863 against 0.738 for single-shot BM25; 3 (2+1)
0.925 / 0.963 against 0.900; 4 (2+2) 0.950 / 0.975 against 0.938 (80 questions: one is 0.0125). The
0.5B names the gold bridge in about 30% of questions (it often answers the whole question instead);
a wrong name seldom hurts, as the ranking then mostly continues as single-shot BM25 would. Letting
it pick the next title from a constrained list of unread titles was worse (0.463 at 1+1): a wrong
pick gets the title bonus and is always read.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence

from agentflow import (
    END,
    START,
    ConfigError,
    Ctx,
    Graph,
    GraphBuilder,
    check_k,
)
from agentflow.eval import Paragraph, top_paragraphs

from . import direct
from ._common import QADeps, QAState, answer_request, clean_answer

__all__ = ["BRIDGE", "build", "hop_findings", "hops_read", "next_hop", "retriever"]

BRIDGE = (
    "The question needs two facts. Use the paragraphs to find the first one: the person, place, work or "
    "thing the question describes without naming it. Reply with only its name."
)
"""What the model is asked after a hop: the name the next hop should look up."""

_READ = re.compile(r"^hop (\d+) read: (\[.*\])$")
_FOUND = re.compile(r"^hop (\d+) found: (.*)$")


def next_hop(
    question: str,
    paragraphs: Sequence[Paragraph],
    read: Sequence[Paragraph],
    findings: Sequence[str],
    k: int,
) -> list[Paragraph]:
    """The k best paragraphs not yet read, best first, for the question plus what earlier hops found.

    All paragraphs are ranked again and those already read are skipped, rather than ranking the unread
    ones alone: the read paragraphs usually come first again, so titles they name keep BM25's link
    bonus (with nothing found, hop 2 simply continues hop 1's ranking). On HotpotQA's tuning rows
    this gains 1 to 6 points of recall over ranking the unread paragraphs alone."""
    if all(p in read for p in paragraphs):
        return []
    query = " ".join([question, *(f for f in findings if f)])
    ranked = top_paragraphs(query, paragraphs, len(paragraphs))
    return [p for p in ranked if p not in read][:k]


def hops_read(state: QAState) -> list[list[str]]:
    """The titles each hop read, best first, from the state's notes."""
    return [json.loads(m.group(2)) for m in map(_READ.match, state.notes) if m]


def hop_findings(state: QAState) -> list[str]:
    """What the model found after each hop (the bridge names), from the state's notes."""
    return [m.group(2) for m in map(_FOUND.match, state.notes) if m]


def retriever(*, k: int = 1, next_k: int = 1, hops: int = 2, instructions: str = BRIDGE) -> Graph[QAState, QADeps]:
    """The hops alone: on return `state.context` holds every paragraph read, in original order.
    After each hop but the last the model names the bridge in free text; `instructions` is that
    request's system prompt."""
    check_k(k)
    check_k(next_k, name="next_k")
    if not 1 <= hops <= 4:
        raise ConfigError(f"hops must be 1..4, got {hops}: two hops cover HotpotQA's bridge questions")

    def hop(state: QAState) -> dict[str, object]:
        done = len(hops_read(state))
        read = list(state.context or []) if done else []
        new = next_hop(state.question, state.paragraphs, read, hop_findings(state), k if done == 0 else next_k)
        chosen = [p for p in state.paragraphs if p in read or p in new]  # original order
        return {"context": chosen, "notes": [f"hop {done + 1} read: {json.dumps([p.title for p in new])}"]}

    async def bridge(state: QAState, ctx: Ctx[QAState, QADeps]) -> dict[str, object]:
        found = hop_findings(state)
        extra = ("Found so far: " + "; ".join(found)) if found else ""
        req = answer_request(state, instructions, max_tokens=ctx.deps.max_tokens, extra=extra)
        name = clean_answer((await ctx.deps.model.complete(req)).text)
        return {"notes": [f"hop {len(found) + 1} found: {name}"]}

    def after_hop(state: QAState) -> str:
        return "bridge" if len(hops_read(state)) < hops else END

    g: GraphBuilder[QAState, QADeps] = GraphBuilder(QAState, deps=QADeps, name=f"hops{hops}")
    g.add_node("hop", hop, max_visits=hops)
    g.add_node("bridge", bridge, max_visits=max(1, hops - 1))
    g.add_edge(START, "hop")
    g.add_conditional_edges("hop", after_hop, targets=["bridge", END])
    g.add_edge("bridge", "hop")
    return g.compile()


def _fresh(state: QAState) -> QAState:
    # The reader starts without the hop notes (decompose counts its own notes).
    return state.model_copy(update={"notes": [], "samples": []})


def _back(final: QAState) -> dict[str, object]:
    return {k: getattr(final, k) for k in type(final).model_fields if k not in ("question", "paragraphs")}


def build(
    *,
    k: int = 1,
    next_k: int = 1,
    hops: int = 2,
    instructions: str = BRIDGE,
    reader: Graph[QAState, QADeps] | None = None,
) -> Graph[QAState, QADeps]:
    """Multi-hop retrieval (see `retriever`), then `reader` (default: `direct`) answers from everything read."""
    g: GraphBuilder[QAState, QADeps] = GraphBuilder(QAState, deps=QADeps, name=f"multihop{hops}")
    g.add_node("hops", retriever(k=k, next_k=next_k, hops=hops, instructions=instructions))
    g.add_node("read", reader or direct.build(), input=_fresh, output=_back)
    g.add_sequence(START, "hops", "read", END)
    return g.compile()
