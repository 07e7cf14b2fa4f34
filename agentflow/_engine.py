"""Running a compiled graph: the hot loop, node calls (timeout, retries, subgraphs), routing, checkpoints.

The builder (`_graph.py`) compiles a graph into a `Plan` (`_graph_plan.py`) of plain dicts, tuples and
slotted objects; this module only walks it. A run proceeds in steps: the nodes of one step run on the
same state (one node is simply awaited; several run concurrently), their updates merge in declaration
order, and their edges pick the next step's nodes. A join runs once all its inputs have arrived.
Nothing here validates the whole state per step, copies it deeply, or creates a task for a single
successor.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from collections.abc import Coroutine, Sequence
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception

from ._checkpoint import CheckpointStore, restore_run, save_run
from ._events import (
    _BUS,
    NODE_USAGE,
    ErrorEvent,
    Listener,
    NodeFinished,
    NodeStarted,
    RunBus,
    RunFinished,
    RunRecord,
    StateUpdated,
    StepRecord,
)
from ._exceptions import CheckpointError, GraphRunError, RoutingError
from ._graph_plan import (
    END,
    START,
    Ctx,
    CycleLimitError,
    NodeFailedError,
    NodePlan,
    NodeRetry,
    Overwrite,
    Plan,
    as_update,
    merge,
    merge_one,
)
from ._types import Usage

__all__ = ["RunState", "execute"]

_T = TypeVar("_T")
_ZERO = Usage()
_perf = time.perf_counter
_set_cell, _reset_cell = NODE_USAGE.set, NODE_USAGE.reset


class RunState:
    """The mutable bookkeeping of one run (or one subgraph call)."""

    __slots__ = ("arrivals", "bus", "deps", "plan", "record", "run_id", "sem", "step", "store", "t0", "visits")

    def __init__(
        self,
        plan: Plan,
        bus: RunBus,
        run_id: str,
        deps: Any,
        store: CheckpointStore | None,
        max_concurrency: int | None,
    ) -> None:
        self.plan = plan
        self.bus = bus
        self.run_id = run_id
        self.deps = deps
        self.store = store
        self.record = RunRecord(run_id)
        self.visits: dict[str, int] = {}
        self.arrivals: dict[str, set[str]] = {}
        self.step = 0
        self.t0 = time.perf_counter()
        cap = max_concurrency if max_concurrency is not None else plan.max_concurrency
        self.sem = asyncio.Semaphore(cap) if cap is not None else None


# --- calling a node ----------------------------------------------------------------------------------


def _start(node: NodePlan, state: BaseModel, run: RunState, visit: int) -> Any:
    """Call the node's function: its result, or (an async node) the awaitable of it."""
    fn: Any = node.fn
    return fn(state, Ctx(state, run.deps, run.run_id, node.name, visit)) if node.takes_ctx else fn(state)


def _failure_message(node: NodePlan, e: BaseException, attempts: int) -> str:
    if isinstance(e, NodeFailedError):  # a subgraph's node failed: its message already names the fix
        return f"in its subgraph, {e}"
    if isinstance(e, TimeoutError) and node.timeout is not None:
        what = f"timed out after {node.timeout}s"
    else:
        what = f"raised {type(e).__name__}: {e}"
    tries = f" (after {attempts} attempts)" if attempts > 1 else ""
    fix = (
        "raise its timeout or make it faster"
        if isinstance(e, TimeoutError) and node.timeout is not None
        else "fix the node, or give it retry=NodeRetry(...) if the failure is transient"
    )
    return f"{what}{tries}; {fix}"


def _failed(run: RunState, node: NodePlan, e: Exception, attempts: int) -> NodeFailedError:
    """The error for a node that raised `e` after `attempts` attempts (reported to the listeners first)."""
    message = _failure_message(node, e, attempts)
    if run.bus.listeners:
        run.bus.send(ErrorEvent(run.run_id, node.name, run.step, message, attempts, True))
    return NodeFailedError(node.name, message)


_ONCE = NodeRetry(max_attempts=1)


async def _call_guarded(node: NodePlan, state: BaseModel, run: RunState, visit: int) -> tuple[Any, int]:
    """A node with a timeout, retries or a subgraph: each attempt under its timeout, retried by its NodeRetry
    (tenacity). Returns what it returned and the attempts used."""
    policy = node.retry or _ONCE

    def before_sleep(rs: RetryCallState) -> None:
        if run.bus.listeners and rs.outcome is not None:
            exc = rs.outcome.exception()
            if exc is not None:
                msg = _failure_message(node, exc, 1)
                run.bus.send(ErrorEvent(run.run_id, node.name, run.step, msg, rs.attempt_number, False))

    retrying = AsyncRetrying(
        stop=policy.stop(),
        wait=policy.wait if policy.wait is not None else policy.backoff(),
        retry=retry_if_exception(policy.should_retry),
        reraise=True,
        before_sleep=before_sleep,
        sleep=policy.sleep if policy.sleep is not None else asyncio.sleep,
    )
    attempts = 0
    try:
        async for attempt in retrying:
            with attempt:
                attempts = attempt.retry_state.attempt_number
                async with asyncio.timeout(node.timeout):  # None: no timeout
                    if node.sub is not None:
                        out = await _call_subgraph(node, state, run)
                    else:
                        out = _start(node, state, run, visit)
                        if node.is_async:
                            out = await out
    except Exception as e:
        raise _failed(run, node, e, attempts) from e
    return out, attempts


async def _call_subgraph(node: NodePlan, state: BaseModel, parent: RunState) -> Any:
    sub = node.sub
    assert sub is not None
    if node.sub_in is not None:
        raw = node.sub_in(state)
        child_state = raw if isinstance(raw, sub.state_cls) else sub.state_cls.model_validate(raw)
    else:
        common = {k: getattr(state, k) for k in sub.fields if k in parent.plan.fields}
        child_state = sub.state_cls.model_validate(common)
    child = RunState(sub, parent.bus, f"{parent.run_id}/{node.name}", parent.deps, None, None)
    final = await run_steps(child, child_state, start_frontier(child, child_state), {})
    prefix = node.name + "/"
    t = child.t0 - parent.t0
    parent.record.steps.extend(s._replace(node=prefix + s.node, start_s=s.start_s + t) for s in child.record.steps)
    if node.sub_out is not None:
        return node.sub_out(final)
    return Overwrite(
        {k: getattr(final, k) for k in sub.fields if k in parent.plan.fields and getattr(final, k) != getattr(state, k)}
    )


# --- routing -----------------------------------------------------------------------------------------


def _route(node: NodePlan, state: BaseModel, run: RunState, visit: int) -> tuple[str, ...]:
    router = node.router
    if router is None:
        return node.fixed
    out = router(state, Ctx(state, run.deps, run.run_id, node.name, visit)) if node.router_ctx else router(state)
    chosen: tuple[str, ...] = (out,) if isinstance(out, str) else tuple(out)
    targets = node.router_targets
    for t in chosen:
        if t not in targets:
            raise RoutingError(node.name, str(t), sorted(targets))
    if len(chosen) != 1 and not node.multi:
        raise RoutingError(node.name, repr(list(chosen)), sorted(targets))
    return node.fixed + chosen if node.fixed else chosen


def _advance(run: RunState, src: str, targets: tuple[str, ...], nxt: list[str]) -> None:
    nodes = run.plan.nodes
    for t in targets:
        if t == END:
            continue
        tn = nodes[t]
        if tn.is_join:
            got = run.arrivals.setdefault(t, set())
            got.add(src)
            if len(got) == len(tn.join_inputs):
                nxt.append(t)
                del run.arrivals[t]
        else:
            nxt.append(t)


def _order(run: RunState, nxt: list[str]) -> tuple[str, ...]:
    if len(nxt) <= 1:
        return tuple(nxt)
    nodes = run.plan.nodes
    return tuple(sorted(set(nxt), key=lambda n: nodes[n].index))


def start_frontier(run: RunState, state: BaseModel) -> tuple[str, ...]:
    nxt: list[str] = []
    _advance(run, START, _route(run.plan.start, state, run, 1), nxt)
    return _order(run, nxt)


def _apply_bounds(run: RunState, frontier: tuple[str, ...]) -> tuple[str, ...]:
    """Replace each node past its max_visits by its on_exhausted target (or fail with CycleLimitError)."""
    nodes = run.plan.nodes
    visits = run.visits
    for _ in range(len(nodes) + 1):
        over = [n for n in frontier if (m := nodes[n].max_visits) is not None and visits.get(n, 0) >= m]
        if not over:
            return frontier
        nxt = [n for n in frontier if n not in over]
        for name in over:
            node = nodes[name]
            assert node.max_visits is not None
            if node.exhausted is None:
                raise CycleLimitError(node.name, node.max_visits)
            _advance(run, name, (node.exhausted,), nxt)
        frontier = _order(run, nxt)
    raise GraphRunError(
        f"the on_exhausted targets of {sorted(frontier)} are themselves exhausted in a circle: "
        "point on_exhausted at a node outside the loop, or at END"
    )


# On 3.12+ a task runs eagerly until its first suspension, as the current task: a node that finishes
# without waiting costs no trip through the event loop.
_EAGER = sys.version_info >= (3, 12)


def _spawn(coro: Coroutine[Any, Any, _T]) -> asyncio.Task[_T]:
    if sys.version_info >= (3, 12):
        return asyncio.Task(coro, eager_start=True)
    return asyncio.get_running_loop().create_task(coro)  # pragma: no cover


# --- the loop ----------------------------------------------------------------------------------------


async def _run_one(run: RunState, node: NodePlan, state: BaseModel, visit: int) -> tuple[dict[str, Any], StepRecord]:
    """Run one node (every node runs through here): its events, the model usage reported while it runs, its
    timing. Returns its update and its step."""
    listeners = run.bus.listeners
    name = node.name
    if listeners:
        run.bus.send(NodeStarted(run.run_id, name, run.step, visit))
    cell = [_ZERO]  # model usage reported while this node runs
    token = _set_cell(cell)
    t = _perf()
    try:
        if node.simple:  # a function without timeout or retries: called right here
            try:
                out = _start(node, state, run, visit)
                if node.is_async:
                    out = await out
            except Exception as e:
                raise _failed(run, node, e, 1) from e
            attempts = 1
        else:
            out, attempts = await _call_guarded(node, state, run, visit)
    finally:
        _reset_cell(token)
    t1 = _perf()
    update = out if type(out) is dict else as_update(name, out, state)
    if listeners:
        if update:
            run.bus.send(StateUpdated(run.run_id, name, run.step, update))
        run.bus.send(NodeFinished(run.run_id, name, run.step, visit, t1 - t, attempts))
    return update, StepRecord(name, run.step, visit, t - run.t0, t1 - t, attempts, cell[0])


async def run_steps(
    run: RunState, state: BaseModel, frontier: tuple[str, ...], done: dict[str, dict[str, Any]]
) -> BaseModel:
    """Walk the plan from `frontier` until every branch has reached END. Returns the final state."""
    plan = run.plan
    nodes = plan.nodes
    visits = run.visits
    steps = run.record.steps
    store = run.store
    while frontier:
        if len(frontier) != 1:
            if plan.bounded:
                frontier = _apply_bounds(run, frontier)
                if len(frontier) <= 1:
                    continue
            frontier, state = await _fan_out(run, state, frontier, done)
            run.step += 1
            continue
        name = frontier[0]
        node = nodes[name]
        visit = visits.get(name, 0) + 1
        if node.max_visits is not None and visit > node.max_visits:
            frontier = _apply_bounds(run, frontier)
            continue
        visits[name] = visit
        ran = name not in done
        if not ran:
            update = done.pop(name)
        else:
            try:
                update, rec = await _run_one(run, node, state, visit)
            except NodeFailedError as e:
                e.record, e.state = run.record, state
                raise
            steps.append(rec)
        if update:
            state = merge_one(plan, state, name, update)
        nf = node.fast_next
        frontier = nf if nf is not None else _next(run, node, state, visit)
        run.step += 1
        if store is not None:
            await save_run(run, state, frontier, {}, (steps[-1],) if ran else ())
    if run.arrivals:
        join, got = next(iter(run.arrivals.items()))
        missing = sorted(nodes[join].join_inputs - got)
        raise GraphRunError(
            f"join {join!r} never ran: it received {sorted(got)} but not {missing} before every branch ended; "
            "make sure each of its inputs is reached on every path (a conditional edge may have routed elsewhere)"
        )
    return state


def _next(run: RunState, node: NodePlan, state: BaseModel, visit: int) -> tuple[str, ...]:
    targets = _route(node, state, run, visit)
    if len(targets) == 1:
        t = targets[0]
        if t == END:
            return ()
        if not run.plan.nodes[t].is_join:
            return targets
    nxt: list[str] = []
    _advance(run, node.name, targets, nxt)
    return _order(run, nxt)


async def _fan_out(
    run: RunState, state: BaseModel, frontier: tuple[str, ...], done: dict[str, dict[str, Any]]
) -> tuple[tuple[str, ...], BaseModel]:
    """One step with several nodes: run them concurrently on the same state, merge in declaration order."""
    plan = run.plan
    nodes = plan.nodes
    store = run.store
    visit_of: dict[str, int] = {}
    for name in frontier:
        visit_of[name] = run.visits.get(name, 0) + 1
        run.visits[name] = visit_of[name]
    finished: dict[str, dict[str, Any]] = {n: done.pop(n) for n in frontier if n in done} if done else {}
    records: dict[str, StepRecord] = {}
    sem = run.sem
    lock = asyncio.Lock() if store is not None else None

    async def one(name: str) -> tuple[dict[str, Any], StepRecord]:
        if sem is None:
            out = await _run_one(run, nodes[name], state, visit_of[name])
        else:
            async with sem:
                out = await _run_one(run, nodes[name], state, visit_of[name])
        if store is not None:
            assert lock is not None
            async with lock:  # one save at a time, each with everything finished so far
                finished[name] = out[0]
                run.record.steps.append(out[1])  # with a store, steps are recorded (and saved) as they finish
                await save_run(run, state, frontier, finished, (out[1],))
        return out

    # Plain-function nodes cannot wait, so they run in this task, as does the first async node; the other
    # async nodes get tasks, awaited one by one (they all run meanwhile): cheaper than gather, and errors
    # come in frontier order.
    direct = sem is None and store is None
    here: list[str] = []
    waiting: list[str] = []
    for n in frontier:
        if n not in finished:
            (here if nodes[n].inline else waiting).append(n)
    here.extend(waiting[:1])
    create = _spawn if _EAGER else asyncio.get_running_loop().create_task
    tasks = [(n, create(_run_one(run, nodes[n], state, visit_of[n]) if direct else one(n))) for n in waiting[1:]]
    errors: dict[str, Exception] = {}
    try:
        for name in here:
            try:
                if direct:
                    finished[name], records[name] = await _run_one(run, nodes[name], state, visit_of[name])
                else:
                    finished[name], records[name] = await one(name)
            except Exception as e:
                errors[name] = e
        for name, task in tasks:
            try:
                finished[name], records[name] = await task
            except Exception as e:
                errors[name] = e
    finally:
        for _, task in tasks:
            if not task.done():
                task.cancel()
    if store is None:
        run.record.steps.extend(records[n] for n in frontier if n in records)
    if errors:
        error = next(errors[n] for n in frontier if n in errors)  # the first in declaration order
        if isinstance(error, NodeFailedError):
            error.record, error.state = run.record, state
        raise error
    state = merge(plan, state, [(n, finished[n]) for n in frontier])
    nxt: list[str] = []
    for name in frontier:
        _advance(run, name, _route(plan.nodes[name], state, run, visit_of[name]), nxt)
    new_frontier = _order(run, nxt)
    if store is not None:
        run.step += 1
        try:
            await save_run(run, state, new_frontier, {})
        finally:
            run.step -= 1
    return new_frontier, state


async def execute(
    plan: Plan,
    state_in: Any,
    *,
    deps: Any = None,
    run_id: str | None = None,
    store: CheckpointStore | None = None,
    listeners: Sequence[Listener] = (),
    max_concurrency: int | None = None,
    resume: bool = False,
) -> tuple[Any, RunRecord]:
    """Run `plan` from `state_in`, or from the run's last checkpoint when one exists in `store`."""
    bus = RunBus(listeners)
    rid = run_id if run_id is not None else os.urandom(8).hex()
    run = RunState(plan, bus, rid, deps, store, max_concurrency)
    record = run.record
    cp = await store.load(rid) if store is not None and run_id is not None else None
    if resume and cp is None:
        where = "no checkpointer was given" if store is None else f"{type(store).__name__} has no checkpoint for it"
        raise CheckpointError(
            f"cannot resume run {rid!r}: {where}; pass the checkpointer the run was started with and its run_id"
        )
    token = _BUS.set(bus)
    state: BaseModel | None = None
    try:
        if cp is not None:
            state, frontier, done = restore_run(run, cp)
        else:
            cls = plan.state_cls
            try:
                state = state_in if isinstance(state_in, cls) else cls.model_validate(state_in)
            except ValidationError as e:
                raise GraphRunError(
                    f"the input state is not a valid {cls.__name__}: {e}; pass a {cls.__name__}(...) or a dict "
                    "that validates as one"
                ) from e
            frontier = start_frontier(run, state)
            done = {}
            if store is not None:
                await save_run(run, state, frontier, {})
        state = await run_steps(run, state, frontier, done)
        try:
            state = plan.state_cls.model_validate(state.__dict__)
        except ValidationError as e:
            raise GraphRunError(
                f"the final state is not a valid {plan.state_cls.__name__}: {e}; a node returned a value of the "
                "wrong type for a field (check the nodes' updates, or compile(validate_steps=True) to find which)"
            ) from e
        if store is not None:
            await save_run(run, state, (), {}, (), "done")
        record.status = "ok"
        return state, record
    except BaseException:
        record.status = "error"
        raise
    finally:
        record.wall_s = time.perf_counter() - run.t0
        record.usage = bus.usage
        if bus.listeners:
            ok = record.status == "ok"
            bus.send(RunFinished(rid, "ok" if ok else "error", record.wall_s, len(record.steps), bus.usage, state))
        _BUS.reset(token)
