"""The graph engine's own cost per run, with no-op nodes, side by side with LangGraph.

    .venv/bin/python benchmarks/engine_overhead.py [--quick]

Shapes: (a) 3-node chain, (b) 5-way fan-out and join, (c) 1,000-node chain, (d) 10-iteration bounded loop.
Both engines get async no-op nodes that return a small update (LangGraph over a TypedDict state, agentflow
over a pydantic model). Each figure is the median over 7 interleaved batches of microseconds per run; every
run happens in one process and one event loop. agentflow is also measured with checkpointing (in memory,
SQLite on disk) and with a JSONL trace on.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import operator
import platform
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from functools import partial
from pathlib import Path
from typing import Annotated, Any, TypedDict

from pydantic import BaseModel

from agentflow import (
    END,
    START,
    Append,
    Graph,
    GraphBuilder,
    JsonlTraceWriter,
    MemoryCheckpointer,
    SqliteCheckpointer,
)

Runner = Callable[[], Awaitable[Any]]


# --- agentflow -----------------------------------------------------------------------------------


class AState(BaseModel):
    n: int = 0
    log: Annotated[list[int], Append()] = []


async def a_inc(s: AState) -> dict[str, Any]:
    return {"n": s.n + 1}


def a_branch(i: int) -> Callable[[AState], Awaitable[dict[str, Any]]]:
    async def node(s: AState) -> dict[str, Any]:
        return {"log": [i]}

    return node


def af_chain(n: int) -> Graph[AState, None]:
    g: GraphBuilder[AState, None] = GraphBuilder(AState, name=f"chain{n}")
    names = [f"n{i}" for i in range(n)]
    for name in names:
        g.add_node(name, a_inc)
    g.add_sequence(START, *names, END)
    return g.compile()


def af_fanout(k: int = 5) -> Graph[AState, None]:
    g: GraphBuilder[AState, None] = GraphBuilder(AState, name="fanout")
    g.add_node("fan", a_inc)
    branches = [f"b{i}" for i in range(k)]
    for i, b in enumerate(branches):
        g.add_node(b, a_branch(i))
    g.add_node("join", a_inc)
    g.add_edge(START, "fan")
    g.add_edge("fan", branches)
    g.add_edge(branches, "join")
    g.add_edge("join", END)
    return g.compile()


def af_loop(iterations: int = 10) -> Graph[AState, None]:
    g: GraphBuilder[AState, None] = GraphBuilder(AState, name="loop")
    g.add_node("step", a_inc, max_visits=iterations)
    g.add_edge(START, "step")
    g.add_conditional_edges("step", lambda s: "step" if s.n < iterations else END, targets=["step", END])
    return g.compile()


# --- langgraph -----------------------------------------------------------------------------------


class LState(TypedDict):
    n: int
    log: Annotated[list[int], operator.add]


async def l_inc(s: LState) -> dict[str, Any]:
    return {"n": s["n"] + 1}


def l_branch(i: int) -> Callable[[LState], Awaitable[dict[str, Any]]]:
    async def node(s: LState) -> dict[str, Any]:
        return {"log": [i]}

    return node


def lg_graphs(checkpointer: Any = None) -> dict[str, Any]:
    from langgraph.graph import END as LEND
    from langgraph.graph import START as LSTART
    from langgraph.graph import StateGraph as _StateGraph

    StateGraph: Any = _StateGraph

    def chain(n: int) -> Any:
        g = StateGraph(LState)
        names = [f"n{i}" for i in range(n)]
        for name in names:
            g.add_node(name, l_inc)
        g.add_edge(LSTART, names[0])
        for a, b in itertools.pairwise(names):
            g.add_edge(a, b)
        g.add_edge(names[-1], LEND)
        return g.compile(checkpointer=checkpointer)

    def fanout(k: int = 5) -> Any:
        g = StateGraph(LState)
        g.add_node("fan", l_inc)
        branches = [f"b{i}" for i in range(k)]
        for i, b in enumerate(branches):
            g.add_node(b, l_branch(i))
        g.add_node("join", l_inc)
        g.add_edge(LSTART, "fan")
        for b in branches:
            g.add_edge("fan", b)
        g.add_edge(branches, "join")
        g.add_edge("join", LEND)
        return g.compile(checkpointer=checkpointer)

    def loop(iterations: int = 10) -> Any:
        g = StateGraph(LState)
        g.add_node("step", l_inc)
        g.add_edge(LSTART, "step")
        g.add_conditional_edges("step", lambda s: "step" if s["n"] < iterations else LEND, ["step", LEND])
        return g.compile(checkpointer=checkpointer)

    return {
        "3-node chain": chain(3),
        "5-way fan-out+join": fanout(),
        "1,000-node chain": chain(1000),
        "10-iter loop": loop(),
    }


# --- measuring -----------------------------------------------------------------------------------


async def batch_us(fn: Runner, reps: int) -> float:
    t = time.perf_counter()
    for _ in range(reps):
        await fn()
    return (time.perf_counter() - t) / reps * 1e6


async def measure(runners: dict[str, tuple[Runner, int]], batches: int) -> dict[str, float]:
    """Median microseconds per run of each runner. Batches of the runners are interleaved, so a burst of
    load from other processes hits all of them alike instead of skewing one column."""
    for fn, reps in runners.values():  # warm up
        await batch_us(fn, max(1, reps // 10))
    times: dict[str, list[float]] = {k: [] for k in runners}
    for _ in range(batches):
        for key, (fn, reps) in runners.items():
            times[key].append(await batch_us(fn, reps))
    return {k: statistics.median(v) for k, v in times.items()}


_ids = itertools.count()


def runner(graph: Graph[AState, None], **kwargs: Any) -> Runner:
    def go() -> Awaitable[Any]:
        if "checkpointer" in kwargs:
            return graph.run(AState(), run_id=f"r{next(_ids)}", **kwargs)
        return graph.run(AState(), **kwargs)

    return go


def check(state: Any, shape: str) -> None:
    n = state["n"] if isinstance(state, dict) else state.n
    want = {"3-node chain": 3, "5-way fan-out+join": 2, "1,000-node chain": 1000, "10-iter loop": 10}[shape]
    if n != want:
        raise SystemExit(f"benchmark bug: {shape} ended with n={n}, expected {want}")


async def main(quick: bool) -> None:
    scale = 0.2 if quick else 1.0
    reps = {"3-node chain": 2000, "5-way fan-out+join": 1000, "1,000-node chain": 20, "10-iter loop": 1000}
    batches = 7
    ours = {
        "3-node chain": af_chain(3),
        "5-way fan-out+join": af_fanout(),
        "1,000-node chain": af_chain(1000),
        "10-iter loop": af_loop(),
    }
    try:
        theirs: dict[str, Any] | None = lg_graphs()
        import langgraph.version as lv

        lg_version = lv.__version__
    except ImportError:
        theirs, lg_version = None, "absent"
        print("LangGraph is not installed: showing agentflow only (install it with `pip install langgraph`).")

    tmp = Path(tempfile.mkdtemp(prefix="agentflow-bench-"))
    sqlite = SqliteCheckpointer(tmp / "ckpt.sqlite")
    trace = JsonlTraceWriter(tmp / "trace.jsonl")

    print(
        f"python {platform.python_version()} on {platform.machine()}, langgraph {lg_version}; "
        f"median of {batches} batches, microseconds per run\n"
    )
    cols = ("langgraph", "agentflow", "ratio", "+mem ckpt", "+sqlite", "+trace")
    head = f"{'shape':<20} " + " ".join(f"{c:>{7 if c == 'ratio' else 11}}" for c in cols)
    print(head)
    print("-" * len(head))
    for shape, graph in ours.items():
        r = max(1, int(reps[shape] * scale))
        check((await graph.run(AState())).state, shape)
        runners: dict[str, tuple[Runner, int]] = {
            "af": (runner(graph), r),
            "mem": (runner(graph, checkpointer=MemoryCheckpointer()), r),
            "sql": (runner(graph, checkpointer=sqlite), max(1, r // 5)),
            "trace": (runner(graph, listeners=[trace]), max(1, r // 2)),
        }
        if theirs is not None:
            lg = theirs[shape]
            check(await lg.ainvoke({"n": 0, "log": []}), shape)
            lgr = max(1, r // 10) if shape != "1,000-node chain" else max(1, r // 4)
            runners["lg"] = (partial(lg.ainvoke, {"n": 0, "log": []}), lgr)
        us = await measure(runners, batches)
        af = us["af"]
        if "lg" in us:
            lg_s, ratio = f"{us['lg']:11.1f}", f"{us['lg'] / af:6.1f}x"
        else:
            lg_s, ratio = f"{'-':>11}", f"{'-':>7}"
        print(f"{shape:<20} {lg_s} {af:11.1f} {ratio} {us['mem']:11.1f} {us['sql']:11.1f} {us['trace']:11.1f}")
    trace.close()
    sqlite.close()
    print(
        "\nratio = langgraph / agentflow (higher is better for agentflow). Checkpoint and trace columns are "
        "agentflow with that feature on."
    )


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer repetitions (a smoke run)")
    args = ap.parse_args()
    asyncio.run(main(args.quick))
