"""What a run reports while it runs: events, the run record, `emit()`, a JSONL trace writer and `observe()`.

Events go to the listeners of the *current* run, found through a context variable, so code deep inside a
node (a model wrapper, a tool) can report without being handed anything:

    emit(ModelCallEvent("qwen", usage, latency_s=0.4, cached=False))

Outside a run `emit()` does nothing; inside a run without listeners it only sums model usage, so the
run record knows what the models cost.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import IO, Any, Literal, NamedTuple

from pydantic_core import to_json

from ._types import ChatRequest, Completion, Model, Usage

__all__ = [
    "ErrorEvent",
    "Event",
    "JsonlTraceWriter",
    "Listener",
    "ModelCallEvent",
    "NodeFinished",
    "NodeStarted",
    "RunFinished",
    "RunRecord",
    "StateUpdated",
    "StepRecord",
    "emit",
    "observe",
]


@dataclass(frozen=True, slots=True)
class NodeStarted:
    run_id: str
    node: str
    step: int
    visit: int


@dataclass(frozen=True, slots=True)
class NodeFinished:
    run_id: str
    node: str
    step: int
    visit: int
    duration_s: float
    attempts: int


@dataclass(frozen=True, slots=True)
class StateUpdated:
    """The fields a node returned (before merge rules were applied)."""

    run_id: str
    node: str
    step: int
    update: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class ModelCallEvent:
    """One model call finished: who answered, what it cost, how long it took, and whether a cache answered."""

    model: str
    usage: Usage
    latency_s: float
    cached: bool = False


@dataclass(frozen=True, slots=True)
class ErrorEvent:
    """A node raised. `final` is false when its retry policy will try again."""

    run_id: str
    node: str
    step: int
    error: str
    attempt: int
    final: bool


@dataclass(frozen=True, slots=True)
class RunFinished:
    run_id: str
    status: Literal["ok", "error"]
    wall_s: float
    steps: int
    usage: Usage
    state: Any = None


Event = NodeStarted | NodeFinished | StateUpdated | ModelCallEvent | ErrorEvent | RunFinished
Listener = Callable[[Event], None]


class StepRecord(NamedTuple):
    """One node execution: which node, in which step, its visit number, when it started (seconds after
    the run started), how long it took, how many attempts its retry policy used, and the model usage
    reported (by ModelCallEvents) while it ran."""

    node: str
    step: int
    visit: int
    start_s: float
    duration_s: float
    attempts: int = 1
    usage: Usage = Usage()


@dataclass(slots=True)
class RunRecord:
    """What a run did: its steps in order, total wall time, and model usage summed from ModelCallEvents.

    After a resume, `steps` holds the steps of the earlier attempts too, `resumed_from_step` says where
    this attempt took over, and `wall_s` counts only this attempt.
    """

    run_id: str
    steps: list[StepRecord] = field(default_factory=list)
    wall_s: float = 0.0
    usage: Usage = field(default_factory=Usage)
    status: Literal["ok", "error", "running"] = "running"
    resumed_from_step: int | None = None

    @property
    def visits(self) -> dict[str, int]:
        """How many times each node ran."""
        out: dict[str, int] = {}
        for s in self.steps:
            out[s.node] = out.get(s.node, 0) + 1
        return out

    @property
    def usage_by_node(self) -> dict[str, Usage]:
        """Model usage per node, summed over its visits. A subgraph's usage sits on its inner steps
        ("sub/node"), so these add up to `usage` (less any calls made outside nodes, e.g. by routers)."""
        out: dict[str, Usage] = {}
        for s in self.steps:
            out[s.node] = out.get(s.node, Usage()) + s.usage
        return out

    @property
    def nodes(self) -> list[str]:
        """The nodes that ran, in order."""
        return [s.node for s in self.steps]


class RunBus:
    """The listeners and the usage total of one run (shared with its subgraphs)."""

    __slots__ = ("listeners", "usage")

    def __init__(self, listeners: Sequence[Listener] = ()) -> None:
        self.listeners: tuple[Listener, ...] = tuple(listeners)
        self.usage = Usage()

    def send(self, event: Event) -> None:
        for listener in self.listeners:
            listener(event)


_BUS: ContextVar[RunBus | None] = ContextVar("agentflow_run_bus", default=None)
# The usage cell of the node running in this context (each fan-out branch runs in its own task context).
NODE_USAGE: ContextVar[list[Usage] | None] = ContextVar("agentflow_node_usage", default=None)


# Set by an observe() wrapper while its model runs: a ModelCallEvent sent from inside (a ModelClient reports
# its own calls) marks it, and the wrapper then stays quiet, so a call is never counted twice.
_REPORTED: ContextVar[list[bool] | None] = ContextVar("agentflow_reported", default=None)


def emit(event: Event) -> None:
    """Send `event` to the current run's listeners. A no-op outside a run; ModelCallEvents add to its usage."""
    if type(event) is ModelCallEvent:
        mark = _REPORTED.get()
        if mark is not None:
            mark[0] = True
    bus = _BUS.get()
    if bus is None:
        return
    if type(event) is ModelCallEvent:
        bus.usage = bus.usage + event.usage
        cell = NODE_USAGE.get()
        if cell is not None:
            cell[0] = cell[0] + event.usage
    for listener in bus.listeners:
        listener(event)


_FIELDS: dict[type, tuple[str, ...]] = {}


def _event_dict(event: Event) -> dict[str, Any]:
    cls = type(event)
    names = _FIELDS.get(cls)
    if names is None:
        names = _FIELDS[cls] = tuple(f.name for f in fields(event))
    out: dict[str, Any] = {"event": cls.__name__, "ts": time.time()}
    for n in names:
        out[n] = getattr(event, n)
    return out


class JsonlTraceWriter:
    """A listener that appends each event as one JSON line to `path`. Flushes at the end of each run.

    with JsonlTraceWriter("trace.jsonl") as trace:
        await graph.run(state, listeners=[trace])
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._fh: IO[bytes] | None = None

    def __call__(self, event: Event) -> None:
        fh = self._fh
        if fh is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fh = self._fh = self.path.open("ab")
        fh.write(to_json(_event_dict(event), fallback=repr) + b"\n")
        if type(event) is RunFinished:
            fh.flush()

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None

    def __enter__(self) -> JsonlTraceWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _Observed:
    """A Model that emits a ModelCallEvent for each completed call of the model it wraps."""

    def __init__(self, model: Model) -> None:
        self._model = model

    @property
    def name(self) -> str:
        return self._model.name

    async def complete(self, request: ChatRequest) -> Completion:
        t0 = time.perf_counter()
        mark = [False]
        token = _REPORTED.set(mark)
        try:
            out = await self._model.complete(request)
        finally:
            _REPORTED.reset(token)
        if mark[0]:  # the wrapped model reported its calls itself
            outer = _REPORTED.get()
            if outer is not None:
                outer[0] = True
            return out
        latency = out.latency_s or (time.perf_counter() - t0)
        emit(ModelCallEvent(out.model or self._model.name, out.usage, latency, out.cached))
        return out


def observe(model: Model) -> Model:
    """Wrap `model` so every `complete()` reports a ModelCallEvent to the current run (usage reaches the record).

    For a Model of your own: ModelClient reports its calls itself. A call is never counted twice, however the
    models are wrapped (a Router of observed models, an observed Router of clients)."""
    if isinstance(model, _Observed):
        return model
    return _Observed(model)
