"""Durability: checkpoints after each step, resume after a crash or a SIGKILL, nothing re-run or lost."""

from __future__ import annotations

import importlib
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Annotated, Any

import pytest
from pydantic import BaseModel

from agentflow._checkpoint import Checkpoint, CheckpointStore, MemoryCheckpointer, SqliteCheckpointer
from agentflow._events import StepRecord
from agentflow._exceptions import CheckpointError, NodeFailedError
from agentflow._graph import END, START, Append, GraphBuilder
from agentflow._types import Usage

# The workflow the kill test runs in a child process. Each node appends "<name>:start" and "<name>:done" to a
# side file; the node named in $HANG_AT hangs after "start" (only when $HANG_AT is set) until it is killed.
WORKFLOW = """
from __future__ import annotations
import asyncio, os
from typing import Annotated
from pydantic import BaseModel
from agentflow._graph import END, START, Append, GraphBuilder

SIDE = os.environ["SIDE_FILE"]

class State(BaseModel):
    done: Annotated[list[str], Append()] = []
    total: int = 0

def mark(text: str) -> None:
    with open(SIDE, "a") as fh:
        fh.write(text + "\\n")

def node(name: str):
    async def run(s: State) -> dict:
        mark(name + ":start")
        if os.environ.get("HANG_AT") == name:
            await asyncio.sleep(3600)
        await asyncio.sleep(0)
        mark(name + ":done")
        return {"done": [name], "total": s.total + 1}
    return run

g = GraphBuilder(State, name="durable")
for n in ["a", "b1", "b2", "join", "c", "d"]:
    g.add_node(n, node(n))
g.add_edge(START, "a").add_edge("a", ["b1", "b2"]).add_edge(["b1", "b2"], "join")
g.add_sequence("join", "c", "d", END)
graph = g.compile()

if __name__ == "__main__":
    import sys
    from agentflow._checkpoint import SqliteCheckpointer
    asyncio.run(graph.run(State(), run_id="run-1", checkpointer=SqliteCheckpointer(sys.argv[1])))
"""


def lines(path: Path) -> list[str]:
    return path.read_text().split() if path.exists() else []


def start_and_kill(tmp_path: Path, hang_at: str) -> tuple[Path, Path]:
    """Run the workflow in a child process and SIGKILL it while node `hang_at` is running."""
    (tmp_path / "durable_flow.py").write_text(WORKFLOW)
    side, db = tmp_path / "side.txt", tmp_path / "runs.sqlite"
    env = {**os.environ, "SIDE_FILE": str(side), "HANG_AT": hang_at, "PYTHONPATH": str(tmp_path)}
    child = subprocess.Popen([sys.executable, str(tmp_path / "durable_flow.py"), str(db)], env=env)
    try:
        deadline = time.monotonic() + 60
        must_be_done = {"c": ["a:done", "b1:done", "b2:done", "join:done"], "b2": ["a:done", "b1:done"]}[hang_at]
        while f"{hang_at}:start" not in lines(side) or not all(x in lines(side) for x in must_be_done):
            assert child.poll() is None, "the child run ended before it reached the node it should hang in"
            assert time.monotonic() < deadline, "the child run never reached the node it should hang in"
            time.sleep(0.02)
        time.sleep(0.2)  # let the child commit the checkpoint of what just finished
        child.send_signal(signal.SIGKILL)
    finally:
        child.wait(10)
    assert child.returncode == -signal.SIGKILL
    before = lines(side)
    assert f"{hang_at}:done" not in before and "d:done" not in before

    return side, db


@pytest.mark.skipif(sys.platform == "win32", reason="needs SIGKILL (POSIX)")
@pytest.mark.parametrize("hang_at", ["c", "b2"])
async def test_killed_run_resumes_without_rerunning_or_losing_anything(tmp_path: Path, hang_at: str) -> None:
    side, db = start_and_kill(tmp_path, hang_at)
    # Resume in this process, without the hang.
    os.environ["SIDE_FILE"] = str(side)
    sys.path.insert(0, str(tmp_path))
    try:
        durable_flow: Any = importlib.import_module("durable_flow")

        state, record = await durable_flow.graph.resume("run-1", checkpointer=SqliteCheckpointer(db))
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("durable_flow", None)
        os.environ.pop("SIDE_FILE", None)

    after = lines(side)
    done = [x.split(":")[0] for x in after if x.endswith(":done")]
    assert sorted(done) == sorted(["a", "b1", "b2", "join", "c", "d"])  # every node completed exactly once
    assert after.count(f"{hang_at}:start") == 2  # only the killed node started again
    assert all(after.count(f"{n}:start") == 1 for n in ["a", "b1", "b2", "join", "c", "d"] if n != hang_at)
    assert state.done == ["a", "b1", "b2", "join", "c", "d"]  # no update lost, in order
    assert state.total == 5  # b1 and b2 both read total=1 and each set 2
    assert record.resumed_from_step is not None and record.status == "ok"
    assert record.nodes == ["a", "b1", "b2", "join", "c", "d"]
    # A finished run returns its stored result and runs nothing.
    n_lines = len(lines(side))
    again, _ = await durable_flow.graph.resume("run-1", checkpointer=SqliteCheckpointer(db))
    assert again == state and len(lines(side)) == n_lines


class S(BaseModel):
    log: Annotated[list[str], Append()] = []


def flaky_graph(fail: dict[str, bool], ran: list[str]) -> Any:
    def node(name: str) -> Any:
        def run(s: S) -> dict[str, Any]:
            ran.append(name)
            if fail.get(name):
                raise RuntimeError(f"{name} crashed")
            return {"log": [name]}

        return run

    g: GraphBuilder[S, None] = GraphBuilder(S, name="flaky")
    for n in ["a", "x", "y", "z"]:
        g.add_node(n, node(n))
    g.add_edge(START, "a").add_edge("a", ["x", "y"]).add_edge(["x", "y"], "z").add_edge("z", END)
    return g.compile()


@pytest.mark.parametrize("store_kind", ["memory", "sqlite"])
async def test_crash_in_fan_out_resumes_only_the_failed_branch(tmp_path: Path, store_kind: str) -> None:
    store: CheckpointStore = MemoryCheckpointer() if store_kind == "memory" else SqliteCheckpointer(tmp_path / "c.db")
    ran: list[str] = []
    fail = {"y": True}
    graph = flaky_graph(fail, ran)
    with pytest.raises(NodeFailedError, match="y crashed"):
        await graph.run(S(), run_id="r", checkpointer=store)
    assert sorted(ran) == ["a", "x", "y"]
    fail["y"] = False
    ran.clear()
    state, record = await graph.resume("r", checkpointer=store)
    assert ran == ["y", "z"]  # a and x are not run again
    assert state.log == ["a", "x", "y", "z"]
    assert record.resumed_from_step == 1
    assert record.nodes[-2:] == ["y", "z"] and record.nodes[0] == "a"


async def test_run_with_existing_run_id_resumes(tmp_path: Path) -> None:
    store = SqliteCheckpointer(tmp_path / "c.db")
    ran: list[str] = []
    fail = {"z": True}
    graph = flaky_graph(fail, ran)
    with pytest.raises(NodeFailedError):
        await graph.run(S(), run_id="same", checkpointer=store)
    fail["z"] = False
    ran.clear()
    state, _ = await graph.run(S(log=["ignored: resuming"]), run_id="same", checkpointer=store)
    assert ran == ["z"] and state.log == ["a", "x", "y", "z"]


async def test_checkpoint_saved_after_every_step() -> None:
    store = MemoryCheckpointer()
    graph = flaky_graph({}, [])
    await graph.run(S(), run_id="r", checkpointer=store)
    cp = await store.load("r")
    assert cp is not None and cp.status == "done" and cp.frontier == ()
    assert [s.node for s in cp.new_steps] == ["a", "x", "y", "z"]
    # initial + a + (x, y each finishing) + fan-out step + z + final
    assert store.saves == 7


async def test_resume_errors_are_clear(tmp_path: Path) -> None:
    graph = flaky_graph({}, [])
    with pytest.raises(CheckpointError, match=r"cannot resume run 'nope': MemoryCheckpointer has no checkpoint"):
        await graph.resume("nope", checkpointer=MemoryCheckpointer())
    store = MemoryCheckpointer()
    await store.save(Checkpoint("r", "other", 0, {}, ("a",), {}))
    with pytest.raises(CheckpointError, match=r"was checkpointed by graph 'other'.*not by 'flaky'"):
        await graph.resume("r", checkpointer=store)


async def test_sqlite_store_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "c.db"
    store = SqliteCheckpointer(path)
    graph = flaky_graph({}, [])
    await graph.run(S(), run_id="r1", checkpointer=store)
    store.close()
    again = SqliteCheckpointer(path)
    cp = await again.load("r1")
    assert cp is not None and cp.state == {"log": ["a", "x", "y", "z"]}
    assert [s.node for s in cp.new_steps] == ["a", "x", "y", "z"]
    assert again.runs() == ["r1"]
    assert all(s.usage == Usage() and s.attempts == 1 for s in cp.new_steps)
    assert await again.load("missing") is None


def test_sqlite_store_bad_path(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(CheckpointError, match=r"cannot open checkpoint database.*writable file path"):
        SqliteCheckpointer(tmp_path / "file" / "c.db")


async def test_unserialisable_state_is_a_checkpoint_error(tmp_path: Path) -> None:
    class Odd(BaseModel):
        model_config = {"arbitrary_types_allowed": True}
        thing: Any = None

    g: GraphBuilder[Odd, None] = GraphBuilder(Odd)
    g.add_node("a", lambda s: {"thing": object()}).add_sequence(START, "a", END)
    with pytest.raises(CheckpointError, match=r"cannot checkpoint the state .*JSON-serialisable"):
        await g.compile().run(Odd(), run_id="r", checkpointer=SqliteCheckpointer(tmp_path / "c.db"))


async def test_resumed_loop_keeps_its_visit_counts(tmp_path: Path) -> None:
    crash = {"on": True}
    seen: list[int] = []

    def gen(s: S, ctx: Any) -> dict[str, Any]:
        seen.append(ctx.visit)
        return {"log": [f"gen{ctx.visit}"]}

    def check(s: S) -> None:
        if crash["on"] and len(s.log) == 2:
            raise RuntimeError("crash in the second round")

    g: GraphBuilder[S, None] = GraphBuilder(S, name="loop")
    g.add_node("gen", gen, max_visits=3, on_exhausted=END).add_node("check", check)
    g.add_sequence(START, "gen", "check")
    g.add_conditional_edges("check", lambda s: "gen", targets=["gen", END])
    graph = g.compile()
    store = SqliteCheckpointer(tmp_path / "c.db")
    with pytest.raises(NodeFailedError, match="crash in the second round"):
        await graph.run(S(), run_id="loop-1", checkpointer=store)
    crash["on"] = False
    state, record = await graph.resume("loop-1", checkpointer=SqliteCheckpointer(tmp_path / "c.db"))
    assert seen == [1, 2, 3]  # the bound still counts the visits made before the crash
    assert state.log == ["gen1", "gen2", "gen3"]
    assert record.visits == {"gen": 3, "check": 3}


async def test_resumed_fan_out_keeps_a_finished_subgraph_result_as_it_was() -> None:
    child: GraphBuilder[S, None] = GraphBuilder(S, name="child")
    child.add_node("inner", lambda s: {"log": ["inner"]}).add_sequence(START, "inner", END)
    crash = {"on": True}

    def bad(s: S) -> dict[str, Any]:
        if crash["on"]:
            raise RuntimeError("bad crashed")
        return {"log": ["bad"]}

    g: GraphBuilder[S, None] = GraphBuilder(S, name="parent")
    g.add_node("sub", child.compile()).add_node("bad", bad).add_node("join", lambda s: None)
    g.add_edge(START, ["sub", "bad"]).add_edge(["sub", "bad"], "join").add_edge("join", END)
    graph = g.compile()
    store = MemoryCheckpointer()
    with pytest.raises(NodeFailedError, match="bad crashed"):
        await graph.run(S(log=["start"]), run_id="p", checkpointer=store)
    crash["on"] = False
    state, _ = await graph.resume("p", checkpointer=store)
    # The subgraph's result replaces `log` (it already holds "start"); it must not be appended on resume.
    assert state.log == ["start", "inner", "bad"]


async def test_sqlite_keeps_each_steps_model_usage(tmp_path: Path) -> None:
    from agentflow._events import ModelCallEvent, emit

    def call(s: S) -> dict[str, Any]:
        emit(ModelCallEvent("m", Usage(1, 7, 3), 0.01))
        return {"log": ["called"]}

    g: GraphBuilder[S, None] = GraphBuilder(S, name="usage")
    g.add_node("call", call).add_node("after", lambda s: None).add_sequence(START, "call", "after", END)
    _, record = await g.compile().run(S(), run_id="u", checkpointer=SqliteCheckpointer(tmp_path / "u.db"))
    cp = await SqliteCheckpointer(tmp_path / "u.db").load("u")
    assert cp is not None and cp.usage == Usage(1, 7, 3) == record.usage
    assert [(s.node, s.usage) for s in cp.new_steps] == [("call", Usage(1, 7, 3)), ("after", Usage())]


def test_a_checkpoint_is_one_readable_json_object_and_reads_back() -> None:
    cp = Checkpoint(
        "r1", "g", 3, {"a": [1, {"b": 2}]}, ("x", "y"), {"j": ["x"]}, {"y": {"overwrite": True, "update": {"a": []}}},
        usage=Usage(1, 20, 3),
    )  # fmt: skip
    assert json.loads(cp.to_json()) == {
        "run_id": "r1",
        "graph": "g",
        "step": 3,
        "state": {"a": [1, {"b": 2}]},
        "frontier": ["x", "y"],
        "arrivals": {"j": ["x"]},
        "done": {"y": {"overwrite": True, "update": {"a": []}}},
        "usage": {"requests": 1, "prompt_tokens": 20, "completion_tokens": 3},
        "status": "running",
    }
    assert Usage(1, 20, 3).to_dict() == {"requests": 1, "prompt_tokens": 20, "completion_tokens": 3}
    steps = (StepRecord("x", 0, 1, 0.0, 0.1),)
    assert Checkpoint.from_json(cp.to_json(), steps) == replace(cp, new_steps=steps)
    with pytest.raises(ValueError, match="frontier"):
        Checkpoint.from_json(cp.to_json().replace('"frontier":["x","y"]', '"frontier":7'), ())
