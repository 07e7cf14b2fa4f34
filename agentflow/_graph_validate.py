"""Build-time checks of a graph, over a networkx DiGraph (imported here only: never on the hot path).

Each problem is a GraphValidationError naming the node and the fix, raised by `compile()` before anything
runs: an edge to an undeclared node, a conditional edge that may return an undeclared node, no start,
unreachable nodes, nodes that cannot reach END, a cycle with no bound, and joins whose inputs cannot all
arrive.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._exceptions import GraphValidationError
from ._graph_plan import END, START

if TYPE_CHECKING:
    from ._graph import GraphSpec

__all__ = ["validate"]


def _declared(spec: GraphSpec, name: str, *, what: str, source: bool = False) -> None:
    if name == (END if source else START):
        raise GraphValidationError(
            f"{what} uses {name!r} on the wrong side",
            node=name,
            fix="edges leave START and arrive at END; START cannot be a target and END cannot be a source",
        )
    if name in spec.nodes or name == (START if source else END):
        return
    known = ", ".join(sorted(spec.nodes)) or "none yet"
    raise GraphValidationError(
        f"{what} names node {name!r}, which is not declared (declared: {known})",
        node=name,
        fix=f"declare it with add_node({name!r}, fn) or correct the name",
    )


def _check_declared(spec: GraphSpec) -> None:
    for src, dst in spec.edges:
        _declared(spec, src, what=f"edge {src!r} -> {dst!r}", source=True)
        _declared(spec, dst, what=f"edge {src!r} -> {dst!r}")
    for src, cond in spec.conditionals.items():
        _declared(spec, src, what=f"conditional edge from {src!r}", source=True)
        for t in cond.targets:
            _declared(spec, t, what=f"conditional edge from {src!r} (a target it may return)")
    for join, inputs in spec.joins.items():
        _declared(spec, join, what=f"join {join!r}")
        for i in inputs:
            _declared(spec, i, what=f"join {join!r} (one of its inputs)", source=True)
    for name, node in spec.nodes.items():
        if node.on_exhausted is not None:
            _declared(spec, node.on_exhausted, what=f"on_exhausted of node {name!r}")
            if node.on_exhausted in spec.joins:
                raise GraphValidationError(
                    f"node {name!r} has on_exhausted={node.on_exhausted!r}, which is a join",
                    node=name,
                    fix="point on_exhausted at a plain node or END",
                )
        if node.on_exhausted is not None and node.max_visits is None:
            raise GraphValidationError(
                f"node {name!r} has on_exhausted but no max_visits, so it is never exhausted",
                node=name,
                fix=f"add max_visits=N to add_node({name!r}, ...) or drop on_exhausted",
            )


def _build(spec: GraphSpec) -> Any:
    import networkx as nx

    g = nx.DiGraph()
    g.add_node(START)
    g.add_nodes_from(spec.nodes)
    g.add_node(END)
    for src, dst in spec.edges:
        g.add_edge(src, dst, kind="fixed")
    for src, cond in spec.conditionals.items():
        for t in cond.targets:
            g.add_edge(src, t, kind="conditional")
    for name, node in spec.nodes.items():
        if node.on_exhausted is not None:
            g.add_edge(name, node.on_exhausted, kind="exhausted")
    return g


def validate(spec: GraphSpec) -> None:
    """Raise GraphValidationError for the first problem found, in declaration order."""
    import networkx as nx

    _check_declared(spec)
    order = {n: i for i, n in enumerate(spec.nodes)}
    g = _build(spec)
    if g.out_degree(START) == 0:
        raise GraphValidationError(
            "the graph has no start", node=START, fix="add an edge from START, e.g. add_edge(START, 'first_node')"
        )
    reachable = nx.descendants(g, START)
    for name in spec.nodes:
        if name not in reachable:
            raise GraphValidationError(
                f"node {name!r} is unreachable from START",
                node=name,
                fix=f"add an edge to it (add_edge('some_node', {name!r})) or remove it",
            )
    if END not in reachable:
        raise GraphValidationError(
            "no path reaches END", node=END, fix="add an edge to END, e.g. add_edge('last', END)"
        )
    finishing = nx.ancestors(g, END)
    for name in spec.nodes:
        if name not in finishing:
            raise GraphValidationError(
                f"node {name!r} cannot reach END (every run through it would never finish)",
                node=name,
                fix=f"add an edge from it, or from a node after it, to END (add_edge({name!r}, END))",
            )
    _check_joins(spec, g, order)
    _check_cycles(spec, g, order)


def _check_cycles(spec: GraphSpec, g: Any, order: dict[str, int]) -> None:
    import networkx as nx

    unbounded = g.subgraph([n for n, d in spec.nodes.items() if d.max_visits is None]).copy()
    try:
        cycle = nx.find_cycle(unbounded)
    except nx.NetworkXNoCycle:
        return
    names = [u for u, _v, *_ in cycle]
    first = min(names, key=order.__getitem__)
    k = names.index(first)
    names = names[k:] + names[:k]
    path = " -> ".join([*names, names[0]])
    raise GraphValidationError(
        f"the cycle {path} has no bound, so a run could loop forever",
        node=first,
        fix=f"give one of its nodes a bound, e.g. add_node({first!r}, fn, max_visits=3) "
        "(optionally with on_exhausted='node_after_the_loop')",
    )


def _check_joins(spec: GraphSpec, g: Any, order: dict[str, int]) -> None:
    import networkx as nx

    if not spec.joins:
        return
    # Plain edges into a join must come from its inputs: a join only counts its inputs.
    for src, dst in [*spec.edges, *((s, t) for s, c in spec.conditionals.items() for t in c.targets)]:
        if dst in spec.joins and src not in spec.joins[dst] and src != START:
            raise GraphValidationError(
                f"node {src!r} has an edge to join {dst!r} but is not one of its inputs {list(spec.joins[dst])}",
                node=dst,
                fix=f"add it to the join's inputs (add_edge([..., {src!r}], {dst!r})) or route it elsewhere",
            )
        if dst in spec.joins and src == START:
            raise GraphValidationError(
                f"START goes straight to join {dst!r}, which then never receives its inputs",
                node=dst,
                fix="start at the nodes that feed the join instead",
            )
    # Which inputs can only be reached through one particular target of an exclusive conditional edge?
    needs: dict[str, dict[str, str]] = {}  # input -> {conditional source: the only target it comes through}
    all_inputs = {i for ins in spec.joins.values() for i in ins}
    for src, cond in spec.conditionals.items():
        if cond.multi or len(cond.targets) < 2:
            continue
        for t in cond.targets:
            if not g.has_edge(src, t) or g.edges[src, t].get("kind") != "conditional":
                continue
            h = g.copy()
            h.remove_edge(src, t)
            still = nx.descendants(h, START)
            for i in all_inputs:
                if i not in still:
                    needs.setdefault(i, {})[src] = t
    for join, inputs in spec.joins.items():
        for i in inputs:
            if not g.has_edge(i, join):
                raise GraphValidationError(
                    f"join {join!r} waits for {i!r}, but {i!r} has no edge to it",
                    node=join,
                    fix=f"add add_edge({i!r}, {join!r}) (or a conditional edge that may return {join!r})",
                )
        without = g.copy()
        without.remove_node(join)
        before = nx.descendants(without, START)
        for i in inputs:
            if i not in before:
                raise GraphValidationError(
                    f"join {join!r} waits for {i!r}, which can only run after the join itself",
                    node=join,
                    fix=f"remove {i!r} from the join's inputs, or give it a path from START that avoids {join!r}",
                )
        ins = sorted(inputs, key=order.__getitem__)
        for a_i, a in enumerate(ins):
            for b in ins[a_i + 1 :]:
                for src, ta in needs.get(a, {}).items():
                    tb = needs.get(b, {}).get(src)
                    if tb is not None and tb != ta:
                        raise GraphValidationError(
                            f"join {join!r} waits for {a!r} and {b!r}, but the conditional edge from {src!r} picks "
                            f"one target ({a!r} only follows {ta!r}, {b!r} only follows {tb!r}), so they never both "
                            "arrive",
                            node=join,
                            fix=f"join after the branches meet, or let {src!r} fan out "
                            f"(add_conditional_edges({src!r}, fn, [...], multi=True) returning a list)",
                        )
