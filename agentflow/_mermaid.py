"""Seeing a graph: Mermaid export, and `load_graph("package.module:name")` for the CLI.

Shapes: START/END are stadiums, nodes rectangles, subgraphs subroutines (`[[...]]`), joins hexagons.
Fixed edges are solid, conditional edges dotted, `on_exhausted` exits dotted and labelled "exhausted".
Bounded nodes show "max N".
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ._exceptions import ConfigError
from ._graph_plan import END, START

if TYPE_CHECKING:
    from ._graph import Graph, GraphSpec

__all__ = ["load_graph", "to_mermaid"]


def _label(text: str) -> str:
    return '"' + text.replace('"', "#quot;") + '"'


def to_mermaid(spec: GraphSpec, *, direction: str = "TD") -> str:
    ids: dict[str, str] = {START: "n_start", END: "n_end"}
    for i, name in enumerate(spec.nodes):
        ids[name] = f"n{i}"
    lines = [f"flowchart {direction}", f"    n_start([{_label('start')}])"]
    for name, d in spec.nodes.items():
        text = name if d.max_visits is None else f"{name} (max {d.max_visits})"
        if d.sub is not None:
            lines.append(f"    {ids[name]}[[{_label(text)}]]")
        elif name in spec.joins:
            lines.append(f"    {ids[name]}{{{{{_label(text)}}}}}")
        else:
            lines.append(f"    {ids[name]}[{_label(text)}]")
    lines.append(f"    n_end([{_label('end')}])")
    for src, dst in spec.edges:
        lines.append(f"    {ids[src]} --> {ids[dst]}")
    for src, cond in spec.conditionals.items():
        for t in cond.targets:
            lines.append(f"    {ids[src]} -.-> {ids[t]}")
    for name, d in spec.nodes.items():
        if d.on_exhausted is not None:
            lines.append(f"    {ids[name]} -. exhausted .-> {ids[d.on_exhausted]}")
    return "\n".join(lines) + "\n"


def load_graph(spec: str) -> Graph[Any, Any]:
    """Import `module:attr` and return it as a compiled Graph (a GraphBuilder is compiled; a function taking
    no arguments is called). Raises ConfigError saying what went wrong and how to fix it."""
    from ._graph import Graph, GraphBuilder

    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ConfigError(f"graph spec {spec!r} is not of the form 'module:name': write e.g. 'workflows.verify:graph'")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        raise ConfigError(
            f"cannot import module {module_name!r} for graph spec {spec!r} ({e}): check the module path and that "
            "it is importable from the current directory (or installed)"
        ) from e
    obj: Any = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            names = sorted(n for n in dir(module) if not n.startswith("_"))
            raise ConfigError(
                f"module {module_name!r} has no attribute {attr!r}: use one of its names, e.g. {names[:10]}"
            )
        obj = getattr(obj, part)
    if isinstance(obj, GraphBuilder):
        obj = obj.compile()
    elif callable(obj) and not isinstance(obj, Graph | type):
        try:
            obj = obj()
        except TypeError as e:
            raise ConfigError(
                f"{spec!r} is a function that cannot be called without arguments ({e}): point the spec at a "
                "compiled Graph, a GraphBuilder, or a function that takes no arguments and returns one"
            ) from e
        if isinstance(obj, GraphBuilder):
            obj = obj.compile()
    if not isinstance(obj, Graph):
        raise ConfigError(
            f"{spec!r} is a {type(obj).__name__}, not a graph: point it at a compiled Graph "
            "(GraphBuilder(...).compile()), a GraphBuilder, or a function returning one"
        )
    return obj
