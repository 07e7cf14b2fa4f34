"""End-to-end workflows over scripted models: verify/retry loop, self-consistency fan-out, subgraphs, usage."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Annotated, Any

import pytest
from pydantic import BaseModel

from agentflow import NodeFailedError
from agentflow._events import Event, ModelCallEvent, emit, observe
from agentflow._graph import END, START, Append, GraphBuilder
from agentflow._graph_plan import Ctx
from agentflow._types import ChatRequest, Model, Usage
from agentflow.testing import FunctionModel, Reply, ScriptedModel


@dataclass
class Models:
    writer: Model
    checker: Model


class QA(BaseModel):
    question: str
    drafts: Annotated[list[str], Append()] = []
    verdict: str = ""
    answer: str = ""


async def draft(s: QA, ctx: Ctx[QA, Models]) -> dict[str, Any]:
    c = await ctx.deps.writer.complete(ChatRequest.of(f"{s.question} (attempt {ctx.visit})"))
    return {"drafts": [c.text]}


async def check(s: QA, ctx: Ctx[QA, Models]) -> dict[str, Any]:
    c = await ctx.deps.checker.complete(ChatRequest.of(f"Is {s.drafts[-1]!r} right for {s.question}?"))
    return {"verdict": c.text, "answer": s.drafts[-1] if c.text == "yes" else ""}


def give_up(s: QA) -> dict[str, Any]:
    return {"answer": "unsure"}


def verify_graph(max_attempts: int) -> Any:
    g: GraphBuilder[QA, Models] = GraphBuilder(QA, deps=Models, name="verify")
    g.add_node("draft", draft, max_visits=max_attempts, on_exhausted="give_up")
    g.add_node("check", check)
    g.add_node("give_up", give_up)
    g.add_sequence(START, "draft", "check")
    g.add_conditional_edges("check", lambda s: END if s.verdict == "yes" else "draft", targets=["draft", END])
    g.add_edge("give_up", END)
    return g.compile()


async def test_verify_retry_loop_until_accepted_and_usage_summed() -> None:
    writer = ScriptedModel(
        [Reply("41", completion_tokens=1, prompt_tokens=10), Reply("42", completion_tokens=1, prompt_tokens=10)]
    )
    checker = ScriptedModel(
        [Reply("no", prompt_tokens=20, completion_tokens=1), Reply("yes", prompt_tokens=20, completion_tokens=1)]
    )
    deps = Models(observe(writer), observe(checker))
    events: list[Event] = []
    state, record = await verify_graph(3).run(QA(question="6*7?"), deps=deps, listeners=[events.append])
    assert state.answer == "42" and state.drafts == ["41", "42"]
    assert record.nodes == ["draft", "check", "draft", "check"]
    assert record.usage == Usage(requests=4, prompt_tokens=60, completion_tokens=4)
    assert record.usage_by_node == {"draft": Usage(2, 20, 2), "check": Usage(2, 40, 2)}
    assert [s.usage.requests for s in record.steps] == [1, 1, 1, 1]
    assert "(attempt 2)" in writer.requests[1].messages[0].content
    calls = [e for e in events if isinstance(e, ModelCallEvent)]
    assert [c.model for c in calls] == ["scripted"] * 4


async def test_self_consistency_merges_in_declaration_order_whatever_finishes_first() -> None:
    import asyncio

    async def answer(r: ChatRequest) -> str:
        seed = r.seed or 0
        await asyncio.sleep(0.005 * (5 - seed))  # sample4 finishes first, sample0 last
        return {0: "a", 1: "b", 2: "b", 3: "c", 4: "b"}[seed]

    state, _ = await self_consistency(observe(FunctionModel(answer)), 5).run(Vote(question="?"))
    assert state.samples == ["a", "b", "b", "c", "b"] and state.answer == "b"


async def test_verify_retry_loop_gives_up_after_its_bound() -> None:
    deps = Models(observe(ScriptedModel(["a", "b"])), observe(ScriptedModel(["no", "no"])))
    state, record = await verify_graph(2).run(QA(question="?"), deps=deps)
    assert state.answer == "unsure" and state.drafts == ["a", "b"]
    assert record.nodes[-1] == "give_up" and record.visits["draft"] == 2
    assert record.usage.requests == 4


class Vote(BaseModel):
    question: str
    samples: Annotated[list[str], Append()] = []
    answer: str = ""
    agreement: float = 0.0


def self_consistency(model: Model, k: int) -> Any:
    g: GraphBuilder[Vote, None] = GraphBuilder(Vote, name="self_consistency")
    g.add_node("ask", lambda s: None)
    names = [f"sample{i}" for i in range(k)]

    async def sample(s: Vote, ctx: Ctx[Vote, None]) -> dict[str, Any]:
        c = await model.complete(ChatRequest.of(s.question, temperature=0.8, seed=int(ctx.node[-1])))
        return {"samples": [c.text.strip()]}

    for name in names:
        g.add_node(name, sample)

    def vote(s: Vote) -> dict[str, Any]:
        best, n = Counter(s.samples).most_common(1)[0]
        return {"answer": best, "agreement": n / len(s.samples)}

    g.add_node("vote", vote)
    g.add_edge(START, "ask").add_edge("ask", names).add_edge(names, "vote").add_edge("vote", END)
    return g.compile()


async def test_self_consistency_fan_out_votes() -> None:
    scripted = ScriptedModel(["7", "7", "8", "7", "9"], name="sampler")
    state, record = await self_consistency(observe(scripted), 5).run(Vote(question="3+4?"))
    assert state.samples == ["7", "7", "8", "7", "9"]  # branches start (and merge) in declaration order
    assert [r.seed for r in scripted.requests] == [0, 1, 2, 3, 4]
    assert all(r.temperature == 0.8 for r in scripted.requests)
    assert state.answer == "7" and state.agreement == 0.6
    assert record.usage.requests == 5
    assert all(record.usage_by_node[f"sample{i}"].requests == 1 for i in range(5))  # per branch, concurrently
    assert record.usage_by_node["vote"] == Usage()
    assert sorted(record.nodes[1:6]) == [f"sample{i}" for i in range(5)]


class Doc(BaseModel):
    topic: str
    text: str = ""
    log: Annotated[list[str], Append()] = []


class Draft(BaseModel):
    brief: str
    text: str = ""
    rounds: int = 0


def refine_graph(model: Model) -> Any:
    g: GraphBuilder[Draft, None] = GraphBuilder(Draft, name="refine")

    async def write(s: Draft) -> dict[str, Any]:
        c = await model.complete(ChatRequest.of(f"{s.brief}\n{s.text}"))
        return {"text": c.text, "rounds": s.rounds + 1}

    g.add_node("write", write, max_visits=3, on_exhausted=END)
    g.add_edge(START, "write")
    g.add_conditional_edges("write", lambda s: END if s.text.endswith(".") else "write", targets=["write", END])
    return g.compile()


async def test_subgraph_with_input_and_output_mapping() -> None:
    model = observe(ScriptedModel(["draft one", "draft two."]))
    child = refine_graph(model)
    g: GraphBuilder[Doc, None] = GraphBuilder(Doc)
    g.add_node("plan", lambda s: {"log": ["plan"]})
    g.add_node(
        "refine",
        child,
        input=lambda s: Draft(brief=f"write about {s.topic}"),
        output=lambda d: {"text": d.text, "log": [f"refined in {d.rounds}"]},
    )
    g.add_node("publish", lambda s: {"log": ["publish"]})
    g.add_sequence(START, "plan", "refine", "publish", END)
    state, record = await g.compile().run(Doc(topic="graphs"))
    assert state.text == "draft two."
    assert state.log == ["plan", "refined in 2", "publish"]
    assert record.nodes == ["plan", "refine/write", "refine/write", "refine", "publish"]
    assert record.usage.requests == 2  # the child's model calls reach the parent's record
    assert record.usage_by_node["refine/write"].requests == 2 and record.usage_by_node["refine"] == Usage()
    assert model.name == "scripted"


async def test_subgraph_default_mapping_copies_shared_fields() -> None:
    class Inner(BaseModel):
        topic: str
        text: str = ""

    c: GraphBuilder[Inner, None] = GraphBuilder(Inner)
    c.add_node("up", lambda s: {"text": s.topic.upper()}).add_sequence(START, "up", END)
    g: GraphBuilder[Doc, None] = GraphBuilder(Doc)
    g.add_node("inner", c)  # a builder is compiled for you
    g.add_sequence(START, "inner", END)
    state, _ = await g.compile().run(Doc(topic="abc", log=["kept"]))
    assert state.text == "ABC" and state.log == ["kept"]


async def test_a_failing_subgraph_node_is_named_once_with_one_fix() -> None:
    class Inner(BaseModel):
        topic: str

    def boom(s: Inner) -> dict[str, Any]:
        raise ValueError("bad topic")

    c: GraphBuilder[Inner, None] = GraphBuilder(Inner)
    c.add_node("answer", boom).add_sequence(START, "answer", END)
    g: GraphBuilder[Doc, None] = GraphBuilder(Doc)
    g.add_node("read", c).add_sequence(START, "read", END)
    with pytest.raises(NodeFailedError) as info:
        await g.compile().run(Doc(topic="abc"))
    message = str(info.value)
    assert "'read'" in message and "'answer'" in message and "bad topic" in message
    assert message.count("fix the node") == 1


async def test_emit_outside_a_run_is_a_no_op_and_inside_sums_usage() -> None:
    emit(ModelCallEvent("m", Usage(1, 2, 3), 0.1))  # nothing happens, nothing raises

    def node(s: Doc) -> None:
        emit(ModelCallEvent("m", Usage(1, 2, 3), 0.1, cached=True))
        emit(ModelCallEvent("m", Usage(1, 1, 1), 0.1))

    g: GraphBuilder[Doc, None] = GraphBuilder(Doc)
    g.add_node("n", node).add_sequence(START, "n", END)
    _, record = await g.compile().run(Doc(topic="x"))
    assert record.usage == Usage(2, 3, 4)
