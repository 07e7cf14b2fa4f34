"""Running graphs: merge rules, ctx/deps, routing, bounded loops, fan-out/join, ties, cap, retries, timeouts."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Annotated, Any

import pytest
from pydantic import BaseModel
from tenacity import wait_none

from agentflow import Ctx, CycleLimitError, NodeFailedError, NodeRetry, RetryPolicy
from agentflow._config import _Retry
from agentflow._events import ErrorEvent, Event, NodeFinished, NodeStarted, RunFinished, StateUpdated
from agentflow._exceptions import GraphRunError, RoutingError
from agentflow._graph import END, START, Append, GraphBuilder, Reducer
from agentflow._graph_plan import Plan, merge_one


class S(BaseModel):
    n: int = 0
    log: Annotated[list[str], Append()] = []
    total: Annotated[int, Reducer(lambda a, b: a + b)] = 0
    last: str = ""


def chain(*fns: Any, **node_kw: Any) -> GraphBuilder[S, None]:
    g: GraphBuilder[S, None] = GraphBuilder(S)
    names = [f"n{i}" for i in range(len(fns))]
    for name, fn in zip(names, fns, strict=True):
        g.add_node(name, fn, **node_kw)
    g.add_sequence(START, *names, END)
    return g


async def test_chain_merges_by_rule_and_records_steps() -> None:
    async def a(s: S) -> dict[str, Any]:
        return {"n": s.n + 1, "log": ["a"], "total": 5}

    def b(s: S) -> dict[str, Any]:
        return {"n": s.n + 10, "log": "b", "total": 2, "last": "b"}

    class Upd(BaseModel):
        last: str = ""
        n: int = 0

    def c(s: S) -> Upd:
        return Upd(last="c")  # only the fields it was built with count: n stays

    graph = chain(a, b, c, lambda s: None).compile()
    state, record = await graph.run(S(log=["start"]))
    assert state == S(n=11, log=["start", "a", "b"], total=7, last="c")
    assert record.nodes == ["n0", "n1", "n2", "n3"]
    assert [s.step for s in record.steps] == [0, 1, 2, 3]
    assert all(s.duration_s >= 0 and s.start_s >= 0 for s in record.steps)
    assert record.status == "ok" and record.wall_s > 0
    assert record.visits == {"n0": 1, "n1": 1, "n2": 1, "n3": 1}


async def test_returning_a_whole_state_replaces_changed_fields_without_merge_rules() -> None:
    def whole(s: S) -> S:
        return s.model_copy(update={"log": [*s.log, "w"], "n": 5})

    state, _ = await chain(lambda s: {"log": ["a"]}, whole).compile().run(S(log=["start"], last="kept"))
    assert state.log == ["start", "a", "w"] and state.n == 5 and state.last == "kept"


async def test_input_state_is_validated_and_not_mutated() -> None:
    graph = chain(lambda s: {"log": ["x"]}).compile()
    start = S()
    state, _ = await graph.run({"n": "3"})
    assert state.n == 3 and state.log == ["x"]
    state2, _ = await graph.run(start)
    assert start.log == [] and state2.log == ["x"]
    with pytest.raises(GraphRunError, match=r"(?s)the input state is not a valid S: .*pass a S\(\.\.\.\)"):
        await graph.run({"n": "three"})


async def test_ctx_and_deps() -> None:
    @dataclass
    class Deps:
        prefix: str

    seen: list[tuple[str, str, int]] = []

    async def node(s: S, ctx: Ctx[S, Deps]) -> dict[str, Any]:
        seen.append((ctx.node, ctx.run_id, ctx.visit))
        return {"last": ctx.deps.prefix + str(ctx.state.n)}

    g: GraphBuilder[S, Deps] = GraphBuilder(S, deps=Deps)
    g.add_node("a", node).add_sequence(START, "a", END)
    state, record = await g.compile().run(S(n=4), deps=Deps("n="), run_id="r-1")
    assert state.last == "n=4"
    assert seen == [("a", "r-1", 1)]
    assert record.run_id == "r-1"


def test_run_sync() -> None:
    state, record = chain(lambda s: {"n": 7}).compile().run_sync(S())
    assert state.n == 7 and record.nodes == ["n0"]


async def test_unknown_field_is_a_node_error() -> None:
    graph = chain(lambda s: {"nope": 1}).compile()
    with pytest.raises(NodeFailedError, match=r"node 'n0': returned field 'nope', which S does not declare"):
        await graph.run(S())


async def test_wrong_return_type_is_a_node_error() -> None:
    graph = chain(lambda s: 42).compile()
    with pytest.raises(NodeFailedError, match=r"returned int, not an update"):
        await graph.run(S())


async def test_invalid_final_state_is_reported() -> None:
    graph = chain(lambda s: {"n": "not a number"}).compile()
    with pytest.raises(GraphRunError, match=r"the final state is not a valid S"):
        await graph.run(S())
    strict = chain(lambda s: {"n": "not a number"}, lambda s: None).compile(validate_steps=True)
    with pytest.raises(Exception, match="validation error"):
        await strict.run(S())


# --- routing and loops -----------------------------------------------------------------------------


def verify_loop(max_visits: int, passes_at: int, on_exhausted: str | None = None) -> GraphBuilder[S, None]:
    g: GraphBuilder[S, None] = GraphBuilder(S)
    g.add_node(
        "gen", lambda s: {"n": s.n + 1, "log": [f"gen{s.n + 1}"]}, max_visits=max_visits, on_exhausted=on_exhausted
    )
    g.add_node("check", lambda s: {"last": "ok" if s.n >= passes_at else "bad"})
    g.add_node("give_up", lambda s: {"last": "gave up"})
    g.add_sequence(START, "gen", "check")
    g.add_conditional_edges("check", lambda s: END if s.last == "ok" else "gen", targets=["gen", END])
    g.add_edge("give_up", END)
    return g


async def test_bounded_loop_exits_when_condition_holds() -> None:
    state, record = await verify_loop(5, passes_at=3, on_exhausted="give_up").compile().run(S())
    assert state.last == "ok" and state.n == 3
    assert record.nodes == ["gen", "check"] * 3
    assert [s.visit for s in record.steps if s.node == "gen"] == [1, 2, 3]


async def test_bounded_loop_goes_to_on_exhausted() -> None:
    state, record = await verify_loop(2, passes_at=99, on_exhausted="give_up").compile().run(S())
    assert state.last == "gave up" and state.n == 2
    assert record.nodes == ["gen", "check", "gen", "check", "give_up"]


async def test_bounded_loop_without_exit_raises_cycle_limit() -> None:
    g2: GraphBuilder[S, None] = GraphBuilder(S)
    g2.add_node("gen", lambda s: {"n": s.n + 1}, max_visits=2)
    g2.add_edge(START, "gen")
    g2.add_conditional_edges("gen", lambda s: "gen", targets=["gen", END])
    with pytest.raises(CycleLimitError, match=r"node 'gen' was reached for visit 3 but max_visits=2.*on_exhausted"):
        await g2.compile().run(S())


async def test_routing_error_names_source_and_target() -> None:
    g: GraphBuilder[S, None] = GraphBuilder(S)
    g.add_node("a", lambda s: None).add_node("b", lambda s: None)
    g.add_edge(START, "a").add_edge("b", END)
    g.add_conditional_edges("a", lambda s: "c", targets=["b", END])
    with pytest.raises(RoutingError, match=r"conditional edge from 'a' returned 'c'.*\['__end__', 'b'\]") as ei:
        await g.compile().run(S())
    assert ei.value.source == "a" and ei.value.target == "c"


async def test_router_with_ctx() -> None:
    g: GraphBuilder[S, None] = GraphBuilder(S)
    g.add_node("a", lambda s: {"n": s.n + 1}, max_visits=10)
    g.add_edge(START, "a")
    g.add_conditional_edges("a", lambda s, ctx: END if ctx.visit == 4 else "a", targets=["a", END])
    state, _ = await g.compile().run(S())
    assert state.n == 4


# --- fan-out and joins -------------------------------------------------------------------------------


def fan(delays: dict[str, float], *, cap: int | None = None) -> GraphBuilder[S, None]:
    g: GraphBuilder[S, None] = GraphBuilder(S)

    def branch(name: str, delay: float) -> Any:
        async def node(s: S) -> dict[str, Any]:
            await asyncio.sleep(delay)
            return {"log": [name], "total": 1, "last": name}

        return node

    g.add_node("fan", lambda s: {"log": ["fan"]})
    for name, d in delays.items():
        g.add_node(name, branch(name, d))
    g.add_node("join", lambda s: {"log": ["join"], "n": s.total})
    g.add_edge(START, "fan").add_edge("fan", list(delays)).add_edge(list(delays), "join").add_edge("join", END)
    return g


async def test_fan_out_and_join_merge_in_declaration_order() -> None:
    # z finishes last, m first: merge order is still the declaration order z, a, m.
    events: list[Event] = []
    graph = fan({"z": 0.03, "a": 0.02, "m": 0.0}).compile()
    state, record = await graph.run(S(), listeners=[events.append])
    assert state.log == ["fan", "z", "a", "m", "join"]
    assert state.total == 3 and state.n == 3
    assert state.last == "m"  # replace: the last in declaration order wins
    assert record.nodes == ["fan", "z", "a", "m", "join"]
    started = [e.node for e in events if isinstance(e, NodeStarted)]
    assert started == ["fan", "z", "a", "m", "join"]
    assert {s.step for s in record.steps if s.node in "zam"} == {1}


async def test_fan_out_runs_concurrently_and_cap_limits_it() -> None:
    running = 0
    peak = 0

    async def work(s: S) -> None:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await asyncio.sleep(0.01)
        running -= 1

    def build(cap: int | None) -> Any:
        g: GraphBuilder[S, None] = GraphBuilder(S)
        names = [f"w{i}" for i in range(6)]
        for name in names:
            g.add_node(name, work)
        g.add_edge(START, names)
        for name in names:
            g.add_edge(name, END)
        return g.compile(max_concurrency=cap)

    await build(None).run(S())
    assert peak == 6
    peak = 0
    await build(2).run(S())
    assert peak == 2
    peak = 0
    await build(None).run(S(), max_concurrency=3)
    assert peak == 3


async def test_multi_conditional_fan_out() -> None:
    g: GraphBuilder[S, None] = GraphBuilder(S)
    for name in ("x", "y", "z"):
        g.add_node(name, lambda s, ctx: {"log": [ctx.node]})
    g.add_node("route", lambda s: None)
    g.add_node("merge", lambda s: {"last": ",".join(s.log)})
    g.add_edge(START, "route")
    g.add_conditional_edges("route", lambda s: ["z", "x"], targets=["x", "y", "z"], multi=True)
    g.add_edge(["x", "z"], "merge").add_edge("y", END).add_edge("merge", END)
    state, record = await g.compile().run(S())
    assert state.last == "x,z"  # declaration order, not the order the router returned
    assert "y" not in record.nodes


async def test_join_that_never_receives_an_input_is_a_run_error() -> None:
    g: GraphBuilder[S, None] = GraphBuilder(S)
    g.add_node("a", lambda s: None).add_node("b", lambda s: None).add_node("j", lambda s: None)
    g.add_edge(START, ["a", "b"])
    g.add_conditional_edges("a", lambda s: END, targets=["j", END])  # usually goes to j, but not this time
    g.add_join("j", ["a", "b"]).add_edge("b", "j").add_edge("j", END)
    with pytest.raises(GraphRunError, match=r"join 'j' never ran: it received \['b'\] but not \['a'\]"):
        await g.compile().run(S())


async def test_mixed_plain_and_async_branches_report_the_first_failure_in_declaration_order() -> None:
    async def bad_async(s: S) -> None:
        await asyncio.sleep(0.001)
        raise ValueError("async one")

    def bad_plain(s: S) -> None:
        raise ValueError("plain one")

    g: GraphBuilder[S, None] = GraphBuilder(S)
    g.add_node("a", bad_async).add_node("b", bad_plain).add_node("c", lambda s: {"log": ["c"]})
    g.add_edge(START, ["a", "b", "c"]).add_edge("a", END).add_edge("b", END).add_edge("c", END)
    with pytest.raises(NodeFailedError, match="async one") as ei:
        await g.compile().run(S())
    assert ei.value.record is not None and ei.value.record.nodes == ["c"]


async def test_deterministic_ties_across_runs() -> None:
    graph = fan({"c": 0.0, "b": 0.0, "a": 0.0}).compile()
    logs = {tuple((await graph.run(S())).state.log) for _ in range(20)}
    assert logs == {("fan", "c", "b", "a", "join")}


async def test_failing_branch_raises_after_the_others_complete() -> None:
    done: list[str] = []

    async def ok(s: S) -> None:
        await asyncio.sleep(0.01)
        done.append("ok")

    def bad(s: S) -> None:
        raise ValueError("boom")

    g: GraphBuilder[S, None] = GraphBuilder(S)
    g.add_node("ok", ok).add_node("bad", bad)
    g.add_edge(START, ["ok", "bad"]).add_edge("ok", END).add_edge("bad", END)
    with pytest.raises(NodeFailedError, match=r"node 'bad': raised ValueError: boom") as ei:
        await g.compile().run(S())
    assert done == ["ok"]
    assert ei.value.record is not None and ei.value.record.nodes == ["ok"]


# --- retries and timeouts ----------------------------------------------------------------------------


async def test_retry_until_success_reports_attempts_and_errors() -> None:
    calls = 0

    async def flaky(s: S) -> dict[str, Any]:
        nonlocal calls
        calls += 1
        if calls < 3:
            raise ConnectionError(f"try {calls}")
        return {"n": calls}

    events: list[Event] = []
    graph = chain(flaky, retry=NodeRetry(max_attempts=3, wait=wait_none())).compile()
    state, record = await graph.run(S(), listeners=[events.append])
    assert state.n == 3
    assert record.steps[0].attempts == 3
    errors = [e for e in events if isinstance(e, ErrorEvent)]
    assert [(e.attempt, e.final) for e in errors] == [(1, False), (2, False)]
    assert "ConnectionError: try 1" in errors[0].error
    finished = [e for e in events if isinstance(e, NodeFinished)]
    assert finished[0].attempts == 3


async def test_retry_waits_exponentially_within_its_bounds_with_injected_sleep() -> None:
    slept: list[float] = []

    async def fake_sleep(t: float) -> None:
        slept.append(t)

    def always(s: S) -> None:
        raise RuntimeError("down")

    graph = chain(
        lambda s: {"log": ["before"]}, always, retry=NodeRetry(max_attempts=4, initial_backoff_s=0.5, sleep=fake_sleep)
    )
    with pytest.raises(NodeFailedError) as ei:
        await graph.compile().run(S())
    assert slept == [0.5, 1.0, 2.0]
    err = ei.value
    assert isinstance(err, NodeFailedError) and err.node == "n1"
    assert "raised RuntimeError: down (after 4 attempts)" in str(err)
    assert isinstance(err.__cause__, RuntimeError)
    assert err.record is not None and err.record.nodes == ["n0"] and err.record.status == "error"
    assert err.state is not None and err.state.log == ["before"]
    # NodeRetry has RetryPolicy's bounds (the same tenacity strategies): a wait that would end past
    # max_total_s is not started, and the first one (4 s) already would
    slept.clear()
    bounded = NodeRetry(max_attempts=10, max_total_s=3, initial_backoff_s=4, sleep=fake_sleep)
    assert isinstance(bounded, _Retry) and isinstance(RetryPolicy(), _Retry)
    with pytest.raises(NodeFailedError, match=r"raised RuntimeError: down; fix the node"):
        await chain(always, retry=bounded).compile().run(S())
    assert slept == []


async def test_retry_only_on_declared_exceptions() -> None:
    calls = 0

    def wrong(s: S) -> None:
        nonlocal calls
        calls += 1
        raise KeyError("x")

    graph = chain(wrong, retry=NodeRetry(max_attempts=5, wait=wait_none(), retry_on=(ConnectionError,))).compile()
    with pytest.raises(NodeFailedError):
        await graph.run(S())
    assert calls == 1


async def test_non_retryable_model_errors_and_budget_are_not_retried() -> None:
    from agentflow._exceptions import BudgetExceeded, RequestRejectedError, ServerError

    for exc, expected_calls in [
        (RequestRejectedError("bad request", status_code=400), 1),
        (BudgetExceeded("over", limit="tokens", spent={}, asked={}, allowed=0), 1),
        (ServerError("overloaded", status_code=503), 3),
    ]:
        calls = 0

        def fail(s: S, exc: Exception = exc) -> None:
            nonlocal calls
            calls += 1
            raise exc

        graph = chain(fail, retry=NodeRetry(max_attempts=3, wait=wait_none())).compile()
        with pytest.raises(NodeFailedError):
            await graph.run(S())
        assert calls == expected_calls, type(exc).__name__


async def test_timeout_is_a_node_error() -> None:
    async def slow(s: S) -> None:
        await asyncio.sleep(5)

    graph = chain(slow, timeout=0.02).compile()
    with pytest.raises(NodeFailedError, match=r"node 'n0': timed out after 0.02s; raise its timeout") as ei:
        await graph.run(S())
    assert isinstance(ei.value.__cause__, TimeoutError)


async def test_timeout_then_retry_succeeds() -> None:
    calls = 0

    async def sometimes_slow(s: S) -> dict[str, Any]:
        nonlocal calls
        calls += 1
        if calls == 1:
            await asyncio.sleep(5)
        return {"n": calls}

    graph = chain(sometimes_slow, timeout=0.02, retry=NodeRetry(max_attempts=2, wait=wait_none())).compile()
    state, record = await graph.run(S())
    assert state.n == 2 and record.steps[0].attempts == 2


# --- streaming ---------------------------------------------------------------------------------------


async def test_stream_yields_events_in_order_and_ends_with_the_state() -> None:
    graph = chain(lambda s: {"n": 1}, lambda s: {"n": 2}).compile()
    events = [ev async for ev in graph.stream(S())]
    kinds = [type(e).__name__ for e in events]
    assert kinds == ["NodeStarted", "StateUpdated", "NodeFinished"] * 2 + ["RunFinished"]
    last = events[-1]
    assert isinstance(last, RunFinished) and last.status == "ok" and last.state.n == 2
    upd = events[1]
    assert isinstance(upd, StateUpdated) and upd.update == {"n": 1}


async def test_stream_raises_the_run_error_after_its_events() -> None:
    def bad(s: S) -> None:
        raise ValueError("nope")

    graph = chain(bad).compile()
    seen: list[str] = []
    with pytest.raises(NodeFailedError, match="nope"):
        async for ev in graph.stream(S()):
            seen.append(type(ev).__name__)
    assert seen == ["NodeStarted", "ErrorEvent", "RunFinished"]


async def test_graph_is_reusable_concurrently() -> None:
    async def slow_inc(s: S) -> dict[str, Any]:
        await asyncio.sleep(0.001)
        return {"n": s.n + 1}

    graph = chain(slow_inc, slow_inc, slow_inc).compile()
    results = await asyncio.gather(*(graph.run(S(n=i)) for i in range(10)))
    assert [r.state.n for r in results] == [i + 3 for i in range(10)]
    assert len({r.record.run_id for r in results}) == 10


# --- scale and combinations ------------------------------------------------------------------------


def long_chain(n: int) -> Any:
    g: GraphBuilder[S, None] = GraphBuilder(S)
    names = [f"n{i}" for i in range(n)]

    async def inc(s: S) -> dict[str, Any]:
        return {"n": s.n + 1}

    for name in names:
        g.add_node(name, inc)
    g.add_sequence(START, *names, END)
    return g.compile()


async def test_thousand_node_chain_runs_every_node_once_in_order() -> None:
    # Linear cost in node count is measured by benchmarks/engine_overhead.py (shape c), not timed here.
    state, record = await long_chain(1000).run(S())
    assert state.n == 1000
    assert record.nodes == [f"n{i}" for i in range(1000)]


async def test_subgraph_inside_a_fan_out_with_store_cap_and_listeners() -> None:
    from agentflow._checkpoint import MemoryCheckpointer

    child: GraphBuilder[S, None] = GraphBuilder(S, name="child")
    child.add_node("inner", lambda s: {"n": s.n + 100}).add_sequence(START, "inner", END)

    async def side(s: S) -> dict[str, Any]:
        await asyncio.sleep(0.001)
        return {"log": ["side"]}

    g: GraphBuilder[S, None] = GraphBuilder(S)
    g.add_node("sub", child.compile(), output=lambda c: {"total": c.n, "log": ["sub"]})
    g.add_node("side", side)
    g.add_node("join", lambda s: {"last": "joined"})
    g.add_edge(START, ["sub", "side"]).add_edge(["sub", "side"], "join").add_edge("join", END)
    events: list[Event] = []
    store = MemoryCheckpointer()
    state, record = await g.compile(max_concurrency=1).run(
        S(n=1), run_id="r", checkpointer=store, listeners=[events.append]
    )
    assert state.total == 101 and state.log == ["sub", "side"] and state.last == "joined"
    assert set(record.nodes) == {"sub/inner", "sub", "side", "join"}
    assert [e.node for e in events if isinstance(e, NodeStarted)] == ["sub", "inner", "side", "join"]
    cp = await store.load("r")
    assert cp is not None and cp.status == "done"


async def test_closing_a_stream_early_cancels_the_run() -> None:
    from contextlib import aclosing

    seen: list[str] = []

    async def slow(s: S) -> None:
        try:
            await asyncio.sleep(5)
        except asyncio.CancelledError:
            seen.append("cancelled")
            raise

    graph = chain(lambda s: None, slow).compile()
    async with aclosing(graph.stream(S())) as events:
        async for ev in events:
            if isinstance(ev, NodeStarted) and ev.node == "n1":
                break
    await asyncio.sleep(0.01)
    assert seen == ["cancelled"]


def test_node_retry_rejects_bad_settings() -> None:
    from agentflow._exceptions import ConfigError

    with pytest.raises(ConfigError, match=r"NodeRetry\(max_attempts=0\) must be at least 1"):
        NodeRetry(max_attempts=0)
    with pytest.raises(ConfigError, match=r"NodeRetry\(max_total_s=-1\) must not be negative"):
        NodeRetry(max_total_s=-1)


def test_the_fast_state_copy_writes_every_private_field_pydantic_has() -> None:
    # merging copies the state with _copy_with, which writes pydantic's private fields itself (model_copy is
    # slower): a pydantic that adds or renames one must fail here, not in a run
    assert BaseModel.__slots__ == ("__dict__", "__pydantic_fields_set__", "__pydantic_extra__", "__pydantic_private__")

    class Loose(BaseModel, extra="allow"):
        n: int = 0
        log: list[str] = []

    state = Loose(n=1, note="extra")
    fast = merge_one(Plan("p", Loose), state, "node", {"n": 2})
    slow = state.model_copy(update={"n": 2})
    assert fast == slow and fast is not state and state.n == 1
    assert fast.model_fields_set == slow.model_fields_set == {"n", "note"}
    assert fast.__pydantic_extra__ == slow.__pydantic_extra__ == {"note": "extra"}
    assert fast.__pydantic_extra__ is not state.__pydantic_extra__
    assert fast.model_dump() == {"n": 2, "log": [], "note": "extra"}
