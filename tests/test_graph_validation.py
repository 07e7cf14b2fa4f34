"""Build-time validation: every problem is a GraphValidationError naming the node and the fix."""

from __future__ import annotations

from typing import Annotated, Any

import pytest
from pydantic import BaseModel

from agentflow._exceptions import GraphValidationError
from agentflow._graph import END, START, Append, GraphBuilder


class S(BaseModel):
    x: int = 0
    log: Annotated[list[str], Append()] = []


def noop(s: S) -> None:
    return None


async def anoop(s: S) -> None:
    return None


def builder(*names: str) -> GraphBuilder[S, None]:
    g: GraphBuilder[S, None] = GraphBuilder(S)
    for n in names:
        g.add_node(n, noop)
    return g


def test_valid_graph_compiles() -> None:
    g = builder("a", "b")
    g.add_sequence(START, "a", "b", END)
    assert g.compile().nodes == ["a", "b"]


def test_duplicate_names() -> None:
    g = builder("a")
    with pytest.raises(GraphValidationError, match=r"node 'a' is declared twice.*Fix: give one of them another name"):
        g.add_node("a", noop)


def test_reserved_name() -> None:
    with pytest.raises(GraphValidationError, match="'__end__' is reserved"):
        builder().add_node(END, noop)


def test_edge_to_undeclared_node() -> None:
    g = builder("a")
    g.add_edge(START, "a").add_edge("a", "b").add_edge("a", END)
    with pytest.raises(GraphValidationError) as ei:
        g.compile()
    assert ei.value.node == "b"
    assert "edge 'a' -> 'b' names node 'b', which is not declared (declared: a)" in str(ei.value)
    assert "add_node('b', fn)" in str(ei.value)


def test_conditional_edge_with_undeclared_target() -> None:
    g = builder("a")
    g.add_edge(START, "a").add_conditional_edges("a", lambda s: END, targets=["a", "missing", END])
    with pytest.raises(
        GraphValidationError,
        match=r"conditional edge from 'a' \(a target it may return\) names node "
        r"'missing'.*add_node\('missing', fn\)",
    ):
        g.compile()


def test_no_start() -> None:
    g = builder("a")
    g.add_edge("a", END)
    with pytest.raises(GraphValidationError, match=r"the graph has no start.*add_edge\(START, 'first_node'\)"):
        g.compile()


def test_unreachable_node() -> None:
    g = builder("a", "orphan")
    g.add_sequence(START, "a", END).add_edge("orphan", END)
    with pytest.raises(GraphValidationError, match=r"node 'orphan' is unreachable from START.*add an edge to it") as ei:
        g.compile()
    assert ei.value.node == "orphan"


def test_node_that_cannot_reach_end() -> None:
    g = builder("a", "sink")
    g.add_sequence(START, "a", END).add_edge("a", "sink")
    with pytest.raises(GraphValidationError, match=r"node 'sink' cannot reach END.*add_edge\('sink', END\)") as ei:
        g.compile()
    assert ei.value.fix is not None and "END" in ei.value.fix


def test_unbounded_cycle() -> None:
    g = builder("gen", "check")
    g.add_sequence(START, "gen", "check")
    g.add_conditional_edges("check", lambda s: END, targets=["gen", END])
    with pytest.raises(GraphValidationError) as ei:
        g.compile()
    msg = str(ei.value)
    assert "cycle" in msg and "gen" in msg and "check" in msg and "has no bound" in msg
    assert "max_visits=3" in msg
    assert ei.value.node == "gen"


def test_bounded_cycle_compiles_and_inner_unbounded_cycle_does_not() -> None:
    g = builder("gen", "check")
    g.add_sequence(START, "gen", "check")
    g.add_conditional_edges("check", lambda s: END, targets=["gen", END])
    g.spec.nodes["gen"].max_visits = 3
    g.compile()  # bounded: fine

    h = builder("a", "b")
    h.add_node("head", noop, max_visits=3)
    h.add_sequence(START, "head", "a", "b")
    h.add_conditional_edges("b", lambda s: END, targets=["a", "head", END])  # a<->b loop avoids the bounded head
    with pytest.raises(GraphValidationError, match=r"the cycle a -> b -> a has no bound"):
        h.compile()


def test_self_loop_needs_bound() -> None:
    g = builder("a")
    g.add_edge(START, "a").add_conditional_edges("a", lambda s: "a", targets=["a", END])
    with pytest.raises(GraphValidationError, match=r"the cycle a -> a has no bound"):
        g.compile()


def test_join_inputs_on_exclusive_branches() -> None:
    g = builder("route", "left", "right", "merge")
    g.add_edge(START, "route")
    g.add_conditional_edges("route", lambda s: "left", targets=["left", "right"])
    g.add_edge(["left", "right"], "merge").add_edge("merge", END)
    with pytest.raises(GraphValidationError) as ei:
        g.compile()
    msg = str(ei.value)
    assert ei.value.node == "merge"
    assert "join 'merge' waits for 'left' and 'right'" in msg
    assert "conditional edge from 'route' picks one target" in msg
    assert "multi=True" in msg


def test_join_on_multi_conditional_fan_out_compiles() -> None:
    g = builder("route", "left", "right", "merge")
    g.add_edge(START, "route")
    g.add_conditional_edges("route", lambda s: ["left", "right"], targets=["left", "right"], multi=True)
    g.add_edge(["left", "right"], "merge").add_edge("merge", END)
    g.compile()


def test_join_input_only_after_join() -> None:
    g = builder("a", "merge", "late")
    g.add_edge(START, "a").add_edge(["a", "late"], "merge").add_edge("merge", "late").add_edge("late", END)
    with pytest.raises(GraphValidationError, match=r"join 'merge' waits for 'late', which can only run after the join"):
        g.compile()


def test_edge_into_join_from_a_non_input() -> None:
    g = builder("a", "b", "c", "merge")
    g.add_edge(START, ["a", "b", "c"]).add_edge(["a", "b"], "merge").add_edge("c", "merge").add_edge("merge", END)
    with pytest.raises(
        GraphValidationError, match=r"node 'c' has an edge to join 'merge' but is not one of its inputs"
    ):
        g.compile()


def test_edge_from_end() -> None:
    g = builder("a")
    g.add_sequence(START, "a", END).add_edge(END, "a")
    with pytest.raises(GraphValidationError, match=r"uses '__end__' on the wrong side.*END cannot be a source"):
        g.compile()


def test_timeout_on_plain_function() -> None:
    with pytest.raises(GraphValidationError, match=r"node 'a' has a timeout but is a plain function.*async def"):
        builder().add_node("a", noop, timeout=1.0)
    builder().add_node("a", anoop, timeout=1.0)  # fine


def test_node_with_wrong_arity() -> None:
    def three(a: Any, b: Any, c: Any) -> None: ...

    with pytest.raises(GraphValidationError, match=r"node 'a' takes 3 required positional.*fn\(state, ctx\)"):
        builder().add_node("a", three)


def test_async_router_rejected() -> None:
    async def router(s: S) -> str:
        return END

    g = builder("a")
    with pytest.raises(GraphValidationError, match=r"the router of 'a' is async.*plain functions"):
        g.add_conditional_edges("a", router, targets=[END])


def test_two_conditional_edges_rejected() -> None:
    g = builder("a")
    g.add_conditional_edges("a", lambda s: END, targets=[END])
    with pytest.raises(GraphValidationError, match=r"node 'a' has two conditional edges"):
        g.add_conditional_edges("a", lambda s: END, targets=[END])


def test_append_on_non_list_field() -> None:
    class Bad(BaseModel):
        n: Annotated[int, Append()] = 0

    g: GraphBuilder[Bad, None] = GraphBuilder(Bad)
    g.add_node("a", lambda s: None).add_sequence(START, "a", END)
    with pytest.raises(GraphValidationError, match=r"field 'n' of Bad is marked Append\(\) but is not a list"):
        g.compile()


def test_on_exhausted_needs_max_visits_and_declared_target() -> None:
    g = builder("a")
    g.spec.nodes["a"].on_exhausted = END
    g.add_sequence(START, "a", END)
    with pytest.raises(GraphValidationError, match=r"node 'a' has on_exhausted but no max_visits"):
        g.compile()
    h = builder()
    h.add_node("a", noop, max_visits=2, on_exhausted="nowhere").add_sequence(START, "a", END)
    with pytest.raises(GraphValidationError, match=r"on_exhausted of node 'a' names node 'nowhere'"):
        h.compile()


def test_subgraph_state_mapping_needed() -> None:
    class Child(BaseModel):
        required_text: str

    c: GraphBuilder[Child, None] = GraphBuilder(Child)
    c.add_node("c", lambda s: None).add_sequence(START, "c", END)
    child = c.compile()
    with pytest.raises(
        GraphValidationError, match=r"subgraph node 'sub': Child requires \['required_text'\].*input=fn"
    ):
        builder().add_node("sub", child)
    builder().add_node("sub", child, input=lambda s: Child(required_text="x"))  # fine


def test_state_must_be_pydantic() -> None:
    with pytest.raises(GraphValidationError, match="must be a pydantic model class"):
        GraphBuilder(dict)  # type: ignore[type-var]


def test_error_is_raised_before_anything_runs() -> None:
    ran: list[str] = []
    g: GraphBuilder[S, None] = GraphBuilder(S)
    g.add_node("a", lambda s: ran.append("a")).add_edge(START, "a").add_edge("a", "ghost")
    with pytest.raises(GraphValidationError):
        g.compile()
    assert ran == []


def test_join_input_without_an_edge_to_the_join() -> None:
    g = builder("a", "b", "merge")
    g.add_edge(START, ["a", "b"]).add_join("merge", ["a", "b"]).add_edge("a", "merge").add_edge("b", END)
    g.add_edge("merge", END)
    with pytest.raises(
        GraphValidationError,
        match=r"join 'merge' waits for 'b', but 'b' has no edge to it.*"
        r"add_edge\('b', 'merge'\)",
    ):
        g.compile()
