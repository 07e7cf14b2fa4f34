"""Seeing a graph: Mermaid export, load_graph("module:attr"), and the JSONL trace."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import pytest
from pydantic import BaseModel

from agentflow._events import JsonlTraceWriter, observe
from agentflow._exceptions import ConfigError
from agentflow._graph import END, START, Append, Graph, GraphBuilder
from agentflow._mermaid import load_graph
from agentflow._types import ChatRequest
from agentflow.testing import ScriptedModel


class S(BaseModel):
    log: Annotated[list[str], Append()] = []
    ok: bool = False


def sample_graph() -> Graph[S, None]:
    child: GraphBuilder[S, None] = GraphBuilder(S, name="child")
    child.add_node("inner", lambda s: None).add_sequence(START, "inner", END)
    g: GraphBuilder[S, None] = GraphBuilder(S, name="sample")
    g.add_node("plan", lambda s: None)
    g.add_node("a", lambda s: None).add_node("b", lambda s: None)
    g.add_node("merge", lambda s: None)
    g.add_node("check", lambda s: {"ok": True}, max_visits=3, on_exhausted=END)
    g.add_node("sub", child.compile())
    g.add_edge(START, "plan").add_edge("plan", ["a", "b"]).add_edge(["a", "b"], "merge").add_edge("merge", "check")
    g.add_conditional_edges("check", lambda s: "sub" if s.ok else "plan", targets=["plan", "sub"])
    g.add_edge("sub", END)
    return g.compile()


def test_mermaid_export() -> None:
    text = sample_graph().to_mermaid()
    assert text == (
        "flowchart TD\n"
        '    n_start(["start"])\n'
        '    n0["plan"]\n'
        '    n1["a"]\n'
        '    n2["b"]\n'
        '    n3{{"merge"}}\n'
        '    n4["check (max 3)"]\n'
        '    n5[["sub"]]\n'
        '    n_end(["end"])\n'
        "    n_start --> n0\n"
        "    n0 --> n1\n"
        "    n0 --> n2\n"
        "    n1 --> n3\n"
        "    n2 --> n3\n"
        "    n3 --> n4\n"
        "    n5 --> n_end\n"
        "    n4 -.-> n0\n"
        "    n4 -.-> n5\n"
        "    n4 -. exhausted .-> n_end\n"
    )


def test_mermaid_escapes_quotes() -> None:
    g: GraphBuilder[S, None] = GraphBuilder(S)
    g.add_node('say "hi"', lambda s: None).add_sequence(START, 'say "hi"', END)
    assert 'n0["say #quot;hi#quot;"]' in g.compile().to_mermaid()


MODULE = """
from agentflow._graph import END, START, GraphBuilder
from pydantic import BaseModel

class S(BaseModel):
    x: int = 0

builder = GraphBuilder(S)
builder.add_node("a", lambda s: None).add_sequence(START, "a", END)
graph = builder.compile()

def make():
    return builder

not_a_graph = 3

def needs_args(x):
    return builder
"""


@pytest.fixture
def graph_module(tmp_path: Path) -> Any:
    (tmp_path / "my_flows.py").write_text(MODULE)
    sys.path.insert(0, str(tmp_path))
    yield "my_flows"
    sys.path.remove(str(tmp_path))
    sys.modules.pop("my_flows", None)


def test_load_graph(graph_module: str) -> None:
    for attr in ("graph", "builder", "make"):
        g = load_graph(f"{graph_module}:{attr}")
        assert isinstance(g, Graph) and g.nodes == ["a"]


def test_load_graph_errors(graph_module: str) -> None:
    with pytest.raises(ConfigError, match=r"not of the form 'module:name'"):
        load_graph("just_a_module")
    with pytest.raises(ConfigError, match=r"cannot import module 'no_such_mod_xyz'.*check the module path"):
        load_graph("no_such_mod_xyz:graph")
    with pytest.raises(ConfigError, match=r"module 'my_flows' has no attribute 'nope'.*'builder'"):
        load_graph(f"{graph_module}:nope")
    with pytest.raises(ConfigError, match=r"'my_flows:not_a_graph' is a int, not a graph"):
        load_graph(f"{graph_module}:not_a_graph")
    with pytest.raises(ConfigError, match=r"cannot be called without arguments"):
        load_graph(f"{graph_module}:needs_args")


async def test_jsonl_trace(tmp_path: Path) -> None:
    model = observe(ScriptedModel(["hello"], name="tiny", cycle=True))

    async def ask(s: S) -> dict[str, Any]:
        c = await model.complete(ChatRequest.of("hi"))
        return {"log": [c.text]}

    g: GraphBuilder[S, None] = GraphBuilder(S)
    g.add_node("ask", ask).add_sequence(START, "ask", END)
    path = tmp_path / "traces" / "run.jsonl"
    with JsonlTraceWriter(path) as trace:
        await g.compile().run(S(), run_id="t1", listeners=[trace])
        await g.compile().run(S(), run_id="t2", listeners=[trace])
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    first = [r for r in rows if r.get("run_id", "t1") == "t1"][:5]
    assert [r["event"] for r in first] == [
        "NodeStarted",
        "ModelCallEvent",
        "StateUpdated",
        "NodeFinished",
        "RunFinished",
    ]
    call = first[1]
    assert call["model"] == "tiny" and call["usage"]["requests"] == 1 and call["cached"] is False
    assert first[2]["update"] == {"log": ["hello"]}
    assert first[4]["status"] == "ok" and first[4]["state"] == {"log": ["hello"], "ok": False}
    assert all(isinstance(r["ts"], float) for r in rows)
    assert sum(r["event"] == "RunFinished" for r in rows) == 2


async def test_a_model_client_in_a_node_reaches_the_record_once_however_it_is_wrapped() -> None:
    from agentflow import ModelClient
    from agentflow.testing import FakeOpenAIServer

    class S(BaseModel):
        q: str
        a: str = ""

    server = FakeOpenAIServer(["4"], repeat_last=True)
    async with ModelClient("http://127.0.0.1:9/v1", "m", transport=server.transport) as client:
        for model in (client, observe(client), observe(observe(client))):

            async def ask(s: S, ctx: Any, model: Any = model) -> dict[str, Any]:
                c = await model.complete(ChatRequest.of(s.q))
                return {"a": c.text}

            g: Any = GraphBuilder(S)
            g.add_node("ask", ask).add_sequence(START, "ask", END)
            _, record = await g.compile().run(S(q="2+2?"))
            assert record.usage.requests == 1, model
            assert record.usage_by_node["ask"].requests == 1


async def test_a_failed_structured_call_still_reaches_the_record() -> None:
    from agentflow import ModelClient, NodeFailedError
    from agentflow.testing import FakeOpenAIServer

    class S(BaseModel):
        q: str
        n: int = 0

    server = FakeOpenAIServer(["not a number"], repeat_last=True)
    async with ModelClient("http://127.0.0.1:9/v1", "m", transport=server.transport, structured_retries=1) as client:

        async def ask(s: S) -> dict[str, Any]:
            return {"n": await client.parse(s.q, int)}

        g: Any = GraphBuilder(S)
        g.add_node("ask", ask).add_sequence(START, "ask", END)
        with pytest.raises(NodeFailedError) as info:
            await g.compile().run(S(q="2+2?"))
    assert info.value.record.usage.requests == 2  # both invalid answers were paid for
