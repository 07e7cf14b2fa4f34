"""Properties over random layered graphs: every node runs once, in step-then-declaration order, every time."""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from agentflow._graph import END, START, Append, GraphBuilder


class S(BaseModel):
    log: Annotated[list[str], Append()] = []


@st.composite
def layered(draw: st.DrawFn) -> list[list[tuple[str, list[int]]]]:
    """Layers of nodes; each node after the first layer lists the indices of its predecessors."""
    widths = draw(st.lists(st.integers(1, 4), min_size=1, max_size=5))
    layers: list[list[tuple[str, list[int]]]] = []
    for depth, width in enumerate(widths):
        layer = []
        for i in range(width):
            preds: list[int] = []
            if depth:
                prev = widths[depth - 1]
                preds = sorted(draw(st.sets(st.integers(0, prev - 1), min_size=1, max_size=prev)))
            layer.append((f"L{depth}n{i}", preds))
        layers.append(layer)
    return layers


def node(name: str, delay: float) -> Any:
    async def run(s: S) -> dict[str, Any]:
        if delay:
            await asyncio.sleep(delay)
        return {"log": [name]}

    return run


@settings(max_examples=40, deadline=None)
@given(layers=layered(), delays=st.lists(st.sampled_from([0.0, 0.0, 0.001]), min_size=20, max_size=20))
async def test_random_layered_graphs_run_each_node_once_in_a_fixed_order(
    layers: list[list[tuple[str, list[int]]]], delays: list[float]
) -> None:
    g: GraphBuilder[S, None] = GraphBuilder(S)
    k = 0
    for layer in layers:
        for name, _ in layer:
            g.add_node(name, node(name, delays[k % len(delays)]))
            k += 1
    g.add_edge(START, [name for name, _ in layers[0]])
    for depth, layer in enumerate(layers[1:], start=1):
        prev = layers[depth - 1]
        for name, preds in layer:
            sources = [prev[p][0] for p in preds]
            if len(sources) == 1:
                g.add_edge(sources[0], name)
            else:
                g.add_edge(sources, name)
    for name, _ in layers[-1]:
        g.add_edge(name, END)
    # Nodes of earlier layers with no successor end there.
    for depth, layer in enumerate(layers[:-1]):
        used = {p for _, preds in layers[depth + 1] for p in preds}
        for i, (name, _) in enumerate(layer):
            if i not in used:
                g.add_edge(name, END)
    graph = g.compile()
    expected = [name for layer in layers for name, _ in layer]
    first = await graph.run(S())
    second = await graph.run(S())
    assert first.state.log == expected
    assert second.state.log == expected
    assert sorted(first.record.nodes) == sorted(expected)
    assert [s.step for s in first.record.steps] == sorted(s.step for s in first.record.steps)
