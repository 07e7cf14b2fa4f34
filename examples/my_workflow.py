"""Define your own workflow: three samples from a real local model run concurrently, a vote picks the answer,
and a budget caps the run. The run record says what each node cost; the diagram is printed as Mermaid.

    python examples/my_workflow.py [MODEL]      # MODEL: smoke (default), small, large
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections import Counter
from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import BaseModel

import serving
from agentflow import END, START, Append, Budget, BudgetLimits, ChatRequest, Ctx, GraphBuilder, Model, ModelClient

SAMPLES = 3


class Vote(BaseModel):
    question: str
    samples: Annotated[list[str], Append()] = []  # each branch appends its sample; the join sees all of them
    answer: str = ""
    agreement: float = 0.0


@dataclass
class Deps:
    model: Model


async def sample(state: Vote, ctx: Ctx[Vote, Deps]) -> dict[str, Any]:
    seed = int(ctx.node.removeprefix("sample"))
    request = ChatRequest.of(state.question, max_tokens=8, temperature=0.7, seed=seed)
    completion = await ctx.deps.model.complete(request)
    return {"samples": [completion.text.strip().rstrip(".")]}


def vote(state: Vote) -> dict[str, Any]:
    best, count = Counter(state.samples).most_common(1)[0]
    return {"answer": best, "agreement": count / len(state.samples)}


def build() -> Any:
    g: GraphBuilder[Vote, Deps] = GraphBuilder(Vote, deps=Deps, name="vote")
    names = [f"sample{i}" for i in range(SAMPLES)]
    for name in names:
        g.add_node(name, sample)
    g.add_node("vote", vote)
    g.add_edge(START, names).add_edge(names, "vote").add_edge("vote", END)
    return g.compile()


async def main(model: str) -> None:
    graph = build()
    print(graph.to_mermaid())
    budget = Budget(BudgetLimits(requests=SAMPLES, completion_tokens=SAMPLES * 8))
    async with (
        serving.LlamaCppServer(model) as server,
        ModelClient(server.url, server.model_name, dialect="llama_cpp") as client,
    ):
        question = "What is the capital of Italy? Answer with one word."
        state, record = await graph.run(Vote(question=question), deps=Deps(budget.wrap(client)))
    print(f"samples: {json.dumps(state.samples)}")
    print(f"answer: {state.answer!r} agreement={state.agreement:.2f}")
    print(f"nodes: {json.dumps({n: u.requests for n, u in record.usage_by_node.items()})}")
    print(f"bill: {json.dumps(budget.bill().to_dict())}")


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1] if len(sys.argv) > 1 else "smoke"))
