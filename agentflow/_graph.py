"""Graph workflows: declare nodes and edges over a typed state, compile (validated), then run.

    class State(BaseModel):
        question: str
        drafts: Annotated[list[str], Append()] = []
        answer: str = ""

    g = GraphBuilder(State)
    g.add_node("draft", draft, max_visits=3, on_exhausted=END)   # async def draft(state) -> dict
    g.add_node("verify", verify)                                  # def verify(state, ctx) -> dict
    g.add_edge(START, "draft")
    g.add_edge("draft", "verify")
    g.add_conditional_edges("verify", lambda s: END if s.answer else "draft", targets=["draft", END])
    graph = g.compile()
    state, record = await graph.run(State(question="..."))

A node reads the state and returns an update: a dict of fields (or a pydantic model holding them, or None).
Fields merge by their declared rule: replace (default), `Append()`, or `Reducer(fn)`, via `Annotated`.
A node may also return a whole new state (`state.model_copy(update=...)`): its changed fields replace the
old ones as they are, without merge rules. Never mutate the state in place: return an update.
A node taking two parameters gets `(state, ctx)`, with `ctx.deps`, `ctx.run_id`, `ctx.node`, `ctx.visit`.
"""

from __future__ import annotations

import asyncio
import inspect
import itertools
from collections.abc import AsyncGenerator, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, NamedTuple, TypeVar, cast, get_origin

from pydantic import BaseModel

from ._checkpoint import CheckpointStore
from ._engine import execute
from ._events import Event, Listener, RunFinished, RunRecord
from ._exceptions import GraphValidationError
from ._graph_plan import END, START, NodePlan, NodeRetry, Plan, is_async_callable
from ._graph_validate import validate

__all__ = ["END", "START", "Append", "Graph", "GraphBuilder", "Reducer", "RunResult"]

S = TypeVar("S", bound=BaseModel)
D = TypeVar("D")


# --- merge rules -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Append:
    """Merge rule for a list field: a node's value (a list, or one item) is appended to the current list."""


@dataclass(frozen=True, slots=True)
class Reducer:
    """Merge rule: the field becomes `fn(current, update)`."""

    fn: Callable[[Any, Any], Any]


def _append(old: Any, new: Any) -> Any:
    if isinstance(new, list | tuple):
        return [*old, *new]
    return [*old, new]


def _reducers(state: type[BaseModel]) -> dict[str, Callable[[Any, Any], Any]]:
    out: dict[str, Callable[[Any, Any], Any]] = {}
    for name, info in state.model_fields.items():
        for m in info.metadata:
            if isinstance(m, Append):
                if get_origin(info.annotation) is not list and info.annotation is not list:
                    raise GraphValidationError(
                        f"field {name!r} of {state.__name__} is marked Append() but is not a list",
                        node=None,
                        fix=f"declare it as Annotated[list[...], Append()] or use Reducer(fn) for {name!r}",
                    )
                out[name] = _append
            elif isinstance(m, Reducer):
                out[name] = m.fn
    return out


# --- the declaration ---------------------------------------------------------------------------------


@dataclass(slots=True)
class NodeDef:
    name: str
    fn: Callable[..., Any] | None
    sub: Graph[Any, Any] | None = None
    retry: NodeRetry | None = None
    timeout: float | None = None
    max_visits: int | None = None
    on_exhausted: str | None = None
    input: Callable[[Any], Any] | None = None
    output: Callable[[Any], Any] | None = None


@dataclass(frozen=True, slots=True)
class CondDef:
    fn: Callable[..., Any]
    targets: tuple[str, ...]
    multi: bool = False


@dataclass(slots=True)
class GraphSpec:
    """Everything declared, before compilation. Read by validation and the Mermaid export."""

    name: str
    state: type[BaseModel]
    nodes: dict[str, NodeDef] = field(default_factory=dict)
    edges: list[tuple[str, str]] = field(default_factory=list)
    conditionals: dict[str, CondDef] = field(default_factory=dict)
    joins: dict[str, tuple[str, ...]] = field(default_factory=dict)


def _arity(fn: Callable[..., Any], what: str, name: str) -> int:
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return 1
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.default is p.empty]
    if len(positional) not in (1, 2):
        raise GraphValidationError(
            f"{what} {name!r} takes {len(positional)} required positional parameters",
            node=name,
            fix="write it as fn(state) or fn(state, ctx)",
        )
    return len(positional)


class GraphBuilder(Generic[S, D]):
    """Declares a graph over state type `S` (a pydantic model) with dependencies of type `D`."""

    def __init__(self, state: type[S], *, deps: type[D] | None = None, name: str | None = None) -> None:
        if not (isinstance(state, type) and issubclass(state, BaseModel)):
            raise GraphValidationError(
                f"the state type must be a pydantic model class, got {state!r}",
                fix="define `class State(BaseModel): ...` and pass GraphBuilder(State)",
            )
        self._spec = GraphSpec(name or state.__name__, state)
        self._deps = deps

    @property
    def spec(self) -> GraphSpec:
        return self._spec

    def add_node(
        self,
        name: str,
        fn: Callable[..., Any] | Graph[Any, Any] | GraphBuilder[Any, Any],
        *,
        retry: NodeRetry | None = None,
        timeout: float | None = None,
        max_visits: int | None = None,
        on_exhausted: str | None = None,
        input: Callable[[Any], Any] | None = None,
        output: Callable[[Any], Any] | None = None,
    ) -> GraphBuilder[S, D]:
        """Declare a node: a function `fn(state)` / `fn(state, ctx)` (async or plain), or a whole graph.

        `max_visits` bounds the node's runs (required on some node of every cycle); when it is reached,
        the run goes to `on_exhausted` (a node or END) instead, or fails with CycleLimitError. For a graph,
        `input` maps this state to the child's state and `output` maps the child's final state to an update
        (by default: the fields both states share, copied in and out).
        """
        spec = self._spec
        if name in (START, END):
            raise GraphValidationError(f"{name!r} is reserved", node=name, fix="give the node another name")
        if "/" in name or not name:
            raise GraphValidationError(
                f"node name {name!r} is empty or contains '/' (kept for subgraph steps, 'sub/node')",
                node=name,
                fix="give the node a name without '/'",
            )
        if name in spec.nodes:
            raise GraphValidationError(
                f"node {name!r} is declared twice", node=name, fix="give one of them another name"
            )
        if max_visits is not None and max_visits < 1:
            raise GraphValidationError(
                f"node {name!r} has max_visits={max_visits}", node=name, fix="use max_visits >= 1"
            )
        if timeout is not None and timeout <= 0:
            raise GraphValidationError(f"node {name!r} has timeout={timeout}", node=name, fix="use a timeout > 0")
        d = NodeDef(name, None, None, retry, timeout, max_visits, on_exhausted, input, output)
        if isinstance(fn, GraphBuilder):
            fn = fn.compile()
        if isinstance(fn, Graph):
            d.sub = fn
            if input is None:
                _check_sub_mapping(name, spec.state, fn.state_type)
        elif callable(fn):
            if input is not None or output is not None:
                raise GraphValidationError(
                    f"node {name!r} has input/output mappings but is not a graph",
                    node=name,
                    fix="pass input= and output= only when the node is a compiled Graph",
                )
            _arity(fn, "node", name)
            if timeout is not None and not is_async_callable(fn):
                raise GraphValidationError(
                    f"node {name!r} has a timeout but is a plain function, which cannot be interrupted",
                    node=name,
                    fix="make it `async def`, or drop the timeout",
                )
            d.fn = fn
        else:
            raise GraphValidationError(
                f"node {name!r} is {type(fn).__name__}, not a function or graph",
                node=name,
                fix="pass a function fn(state) / fn(state, ctx), or a compiled Graph",
            )
        spec.nodes[name] = d
        return self

    def add_edge(self, source: str | Sequence[str], target: str | Sequence[str]) -> GraphBuilder[S, D]:
        """A fixed edge. A list of targets fans out (they run concurrently); a list of sources makes
        `target` a join that runs once every source has finished."""
        if not isinstance(source, str):
            if not isinstance(target, str):
                raise GraphValidationError(
                    f"add_edge({list(source)}, {list(target)}) joins into several nodes",
                    fix="join into one node, then fan out from it",
                )
            self.add_join(target, source)
            for s in source:
                self._spec.edges.append((s, target))
            return self
        targets = [target] if isinstance(target, str) else list(target)
        for t in targets:
            self._spec.edges.append((source, t))
        return self

    def add_join(self, name: str, inputs: Sequence[str]) -> GraphBuilder[S, D]:
        """Make node `name` a join: it runs once each of `inputs` has sent to it (by a fixed or conditional
        edge) since it last ran. `add_edge([a, b], name)` is this plus fixed edges from a and b."""
        if isinstance(inputs, str):
            inputs = [inputs]
        prev = self._spec.joins.get(name, ())
        self._spec.joins[name] = tuple(dict.fromkeys([*prev, *inputs]))
        return self

    def add_sequence(self, *names: str) -> GraphBuilder[S, D]:
        """Fixed edges along `names` in order."""
        for a, b in itertools.pairwise(names):
            self.add_edge(a, b)
        return self

    def add_conditional_edges(
        self, source: str, router: Callable[..., Any], targets: Sequence[str], *, multi: bool = False
    ) -> GraphBuilder[S, D]:
        """`router(state)` (or `router(state, ctx)`) returns the next node name, one of `targets`; with
        `multi=True` it may return a list of them, which run concurrently. Routers are plain functions."""
        if source in self._spec.conditionals:
            raise GraphValidationError(
                f"node {source!r} has two conditional edges",
                node=source,
                fix="merge them into one router that returns any of their targets",
            )
        if is_async_callable(router):
            raise GraphValidationError(
                f"the router of {source!r} is async",
                node=source,
                fix="make routers plain functions of the state; do slow work in a node and store its result",
            )
        if isinstance(targets, str) or not targets:
            raise GraphValidationError(
                f"conditional edge from {source!r} declares targets={targets!r}",
                node=source,
                fix="pass the list of node names it may return, e.g. targets=['retry', END]",
            )
        _arity(router, "router of", source)
        self._spec.conditionals[source] = CondDef(router, tuple(targets), multi)
        return self

    def compile(self, *, max_concurrency: int | None = None, validate_steps: bool = False) -> Graph[S, D]:
        """Validate (GraphValidationError names the node and the fix) and compile to a runnable Graph.

        `max_concurrency` caps how many nodes run at once in a fan-out; `validate_steps` validates the
        whole state after every step (slower; by default it is validated at the start and the end)."""
        if max_concurrency is not None and max_concurrency < 1:
            raise GraphValidationError(f"max_concurrency={max_concurrency}", fix="use max_concurrency >= 1 or None")
        spec = self._spec
        validate(spec)
        plan = Plan(spec.name, spec.state)
        plan.reducers = _reducers(spec.state)
        plan.max_concurrency = max_concurrency
        plan.validate_steps = validate_steps
        for i, d in enumerate(spec.nodes.values()):
            p = NodePlan(d.name, i)
            if d.sub is not None:
                p.sub, p.sub_in, p.sub_out = d.sub._plan, d.input, d.output
            else:
                assert d.fn is not None
                p.fn = d.fn
                p.is_async = is_async_callable(d.fn)
                p.takes_ctx = _arity(d.fn, "node", d.name) == 2
            p.retry, p.timeout, p.max_visits, p.exhausted = d.retry, d.timeout, d.max_visits, d.on_exhausted
            p.simple = d.sub is None and d.retry is None and d.timeout is None
            p.inline = p.simple and not p.is_async
            plan.nodes[d.name] = p
        plan.bounded = any(p.max_visits is not None for p in plan.nodes.values())
        for name, inputs in spec.joins.items():
            plan.nodes[name].is_join = True
            plan.nodes[name].join_inputs = frozenset(inputs)
        fixed: dict[str, list[str]] = {}
        for src, dst in spec.edges:
            fixed.setdefault(src, []).append(dst)
        for p in [plan.start, *plan.nodes.values()]:
            p.fixed = tuple(dict.fromkeys(fixed.get(p.name, ())))
            cond = spec.conditionals.get(p.name)
            if cond is not None:
                p.router, p.router_targets, p.multi = cond.fn, frozenset(cond.targets), cond.multi
                p.router_ctx = _arity(cond.fn, "router of", p.name) == 2
            elif p.fixed == (END,):
                p.fast_next = ()
            elif len(p.fixed) == 1 and not plan.nodes[p.fixed[0]].is_join:
                p.fast_next = p.fixed
        return Graph(spec, plan, self._deps)


def _check_sub_mapping(name: str, parent: type[BaseModel], child: type[BaseModel]) -> None:
    missing = [k for k, f in child.model_fields.items() if f.is_required() and k not in parent.model_fields]
    if missing:
        raise GraphValidationError(
            f"subgraph node {name!r}: {child.__name__} requires {missing}, which {parent.__name__} lacks",
            node=name,
            fix=f"pass input=fn mapping a {parent.__name__} to a {child.__name__} (and output=fn for the way back)",
        )


# --- the compiled graph ------------------------------------------------------------------------------


class RunResult(NamedTuple, Generic[S]):
    """The final state and the run record; unpacks as `state, record = await graph.run(...)`."""

    state: S
    record: RunRecord


class Graph(Generic[S, D]):
    """A validated, compiled graph. Run it with `await graph.run(state)`; it is reusable and concurrency-safe."""

    def __init__(self, spec: GraphSpec, plan: Plan, deps_type: type[D] | None) -> None:
        self._spec = spec
        self._plan = plan
        self.deps_type = deps_type

    @property
    def name(self) -> str:
        return self._spec.name

    @property
    def state_type(self) -> type[S]:
        return cast("type[S]", self._spec.state)

    @property
    def spec(self) -> GraphSpec:
        return self._spec

    @property
    def nodes(self) -> list[str]:
        return list(self._spec.nodes)

    async def run(
        self,
        state: S | dict[str, Any],
        *,
        deps: D | None = None,
        run_id: str | None = None,
        checkpointer: CheckpointStore | None = None,
        listeners: Sequence[Listener] = (),
        max_concurrency: int | None = None,
    ) -> RunResult[S]:
        """Run to the end. With `checkpointer`, the run is saved after every step; if `run_id` names a run
        already in the store, it resumes from there (a finished run returns its stored result)."""
        out, record = await execute(
            self._plan,
            state,
            deps=deps,
            run_id=run_id,
            store=checkpointer,
            listeners=listeners,
            max_concurrency=max_concurrency,
        )
        return RunResult(out, record)

    async def resume(
        self,
        run_id: str,
        *,
        checkpointer: CheckpointStore,
        deps: D | None = None,
        listeners: Sequence[Listener] = (),
        max_concurrency: int | None = None,
    ) -> RunResult[S]:
        """Continue a crashed or killed run from its last checkpoint: no completed node runs again."""
        out, record = await execute(
            self._plan,
            None,
            deps=deps,
            run_id=run_id,
            store=checkpointer,
            listeners=listeners,
            max_concurrency=max_concurrency,
            resume=True,
        )
        return RunResult(out, record)

    def run_sync(self, state: S | dict[str, Any], **kwargs: Any) -> RunResult[S]:
        """`run()` for code without an event loop."""
        return asyncio.run(self.run(state, **kwargs))

    async def stream(self, state: S | dict[str, Any], **kwargs: Any) -> AsyncGenerator[Event, None]:
        """Yield the run's events as they happen; the last is RunFinished (holding the final state).
        Errors of the run are raised after the events that led to them."""
        queue: asyncio.Queue[Event | None] = asyncio.Queue()
        listeners = (*kwargs.pop("listeners", ()), queue.put_nowait)
        task = asyncio.ensure_future(self.run(state, listeners=listeners, **kwargs))
        task.add_done_callback(lambda _t: queue.put_nowait(None))
        try:
            while (ev := await queue.get()) is not None:
                yield ev
                if isinstance(ev, RunFinished):
                    break
            await task
        finally:
            if not task.done():
                task.cancel()

    def to_mermaid(self) -> str:
        """A Mermaid flowchart of the graph (paste into any Markdown that renders Mermaid)."""
        from ._mermaid import to_mermaid

        return to_mermaid(self._spec)

    def __repr__(self) -> str:
        return f"<Graph {self.name!r}: {len(self._spec.nodes)} nodes>"
