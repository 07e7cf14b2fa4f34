"""A compiled graph as plain data, and how updates merge into the state.

`Plan` and `NodePlan` are what the builder (`_graph.py`) compiles to and the engine (`_engine.py`) walks:
plain dicts, tuples and slotted objects. Merging an update copies the state once (shallow, no validation)
and applies each field's rule (replace, `Append()`, `Reducer(fn)`).
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from pydantic import BaseModel, TypeAdapter

from ._config import _Retry
from ._exceptions import BudgetExceeded, ConfigError, CycleLimitError, ModelError, NodeFailedError

__all__ = [
    "END",
    "START",
    "Ctx",
    "CycleLimitError",
    "NodeFailedError",
    "NodeRetry",
    "Overwrite",
]

START = "__start__"
END = "__end__"

S = TypeVar("S", bound=BaseModel)
D = TypeVar("D")


@dataclass(frozen=True, slots=True)
class Ctx(Generic[S, D]):
    """What a two-parameter node `fn(state, ctx)` receives besides the state."""

    state: S
    deps: D
    run_id: str
    node: str
    visit: int


def _default_retry_on() -> tuple[type[BaseException], ...]:
    return (Exception,)


@dataclass(frozen=True, slots=True)
class NodeRetry(_Retry):
    """A node's retry policy: the bounds and backoff of a `RetryPolicy` (tenacity's `stop_after_attempt`,
    `stop_before_delay` and `wait_exponential`): up to `max_attempts` tries (the first included), none started
    whose wait would end `max_total_s` or more after the first (no limit by default), waiting
    `initial_backoff_s * multiplier**(n-1)` seconds (at most `max_backoff_s`) before try n+1.

    Only exceptions in `retry_on` are retried, and never a ConfigError, a BudgetExceeded, or a ModelError
    that says it is not `retryable` (a rejected request fails the same way twice). A node's timeout counts
    as a TimeoutError. `wait` replaces the wait strategy (any tenacity wait, e.g. `wait_none()` in tests)
    and `sleep` the sleep function.

    Named apart from `RetryPolicy`, which retries one HTTP request inside the model client."""

    max_attempts: int = 3
    max_total_s: float = math.inf
    max_backoff_s: float = 10.0
    retry_on: tuple[type[BaseException], ...] = field(default_factory=_default_retry_on)
    wait: Any = None
    sleep: Callable[[float], Awaitable[None]] | None = None

    def should_retry(self, e: BaseException) -> bool:
        if not isinstance(e, self.retry_on) or isinstance(e, ConfigError | BudgetExceeded):
            return False
        return not isinstance(e, ModelError) or e.retryable


class Overwrite(dict[str, Any]):
    """An update that replaces fields as given, bypassing merge rules (used for subgraph results)."""


class NodePlan:
    """One node, compiled. `fast_next` is set when the node always goes to exactly one plain node."""

    __slots__ = (
        "exhausted",
        "fast_next",
        "fixed",
        "fn",
        "index",
        "inline",
        "is_async",
        "is_join",
        "join_inputs",
        "max_visits",
        "multi",
        "name",
        "retry",
        "router",
        "router_ctx",
        "router_targets",
        "simple",
        "sub",
        "sub_in",
        "sub_out",
        "takes_ctx",
        "timeout",
    )

    def __init__(self, name: str, index: int) -> None:
        self.name = name
        self.index = index
        self.fn: Callable[..., Any] | None = None
        self.is_async = False
        self.takes_ctx = False
        self.retry: NodeRetry | None = None
        self.timeout: float | None = None
        self.max_visits: int | None = None
        self.exhausted: str | None = None
        self.fixed: tuple[str, ...] = ()
        self.fast_next: tuple[str, ...] | None = None
        self.router: Callable[..., Any] | None = None
        self.router_ctx = False
        self.router_targets: frozenset[str] = frozenset()
        self.multi = False
        self.is_join = False
        self.join_inputs: frozenset[str] = frozenset()
        self.sub: Plan | None = None
        self.sub_in: Callable[[Any], Any] | None = None
        self.sub_out: Callable[[Any], Any] | None = None
        self.simple = False
        self.inline = False  # simple and a plain function: it cannot wait, so it never needs a task


class Plan:
    """A compiled graph: plain tables the engine walks."""

    __slots__ = (
        "bounded",
        "fast_copy",
        "fields",
        "max_concurrency",
        "name",
        "nodes",
        "reducers",
        "start",
        "state_cls",
        "validate_steps",
    )

    def __init__(self, name: str, state_cls: type[BaseModel]) -> None:
        self.name = name
        self.state_cls = state_cls
        self.nodes: dict[str, NodePlan] = {}
        self.start = NodePlan(START, -1)
        self.reducers: dict[str, Callable[[Any, Any], Any]] = {}
        self.fields: frozenset[str] = frozenset(state_cls.model_fields)
        self.max_concurrency: int | None = None
        self.validate_steps = False
        self.bounded = False
        self.fast_copy = not state_cls.__private_attributes__


# --- updates ----------------------------------------------------------------------------------------


def as_update(node: str, out: Any, state: BaseModel) -> dict[str, Any]:
    """A node's return value as an update. A whole state (same class) replaces the fields that changed,
    bypassing merge rules; another pydantic model contributes the fields it was built with."""
    if out is None:
        return {}
    if type(out) is dict or type(out) is Overwrite:
        return out
    if type(out) is type(state):
        old = state.__dict__
        return Overwrite({k: v for k, v in out.__dict__.items() if v is not old.get(k)})
    if isinstance(out, BaseModel):
        return {k: getattr(out, k) for k in out.model_fields_set}
    if isinstance(out, Mapping):
        return dict(out)
    raise NodeFailedError(
        node,
        f"returned {type(out).__name__}, not an update: return a dict of state fields to change, "
        "a pydantic model holding them, or None",
    )


def merge_one(plan: Plan, state: BaseModel, node: str, update: dict[str, Any]) -> BaseModel:
    """`merge` for one update (the common case)."""
    if type(update) is Overwrite or plan.validate_steps or not plan.fast_copy:
        return merge(plan, state, [(node, update)])
    reducers = plan.reducers
    known = plan.fields
    d = state.__dict__.copy()
    for k, v in update.items():
        if k not in known:
            return merge(plan, state, [(node, update)])  # raises the error
        r = reducers.get(k)
        d[k] = v if r is None else r(d[k], v)
    return _copy_with(state, d, update)


def merge(plan: Plan, state: BaseModel, updates: list[tuple[str, dict[str, Any]]]) -> BaseModel:
    """Apply updates in order with each field's merge rule; one copy of the state, no validation."""
    reducers = plan.reducers
    known = plan.fields
    vals: dict[str, Any] = {}
    for node, update in updates:
        over = type(update) is Overwrite
        for k, v in update.items():
            if k not in known:
                raise NodeFailedError(
                    node,
                    f"returned field {k!r}, which {plan.state_cls.__name__} does not declare: "
                    f"add it to the state model or return one of {sorted(known)}",
                )
            r = None if over else reducers.get(k)
            if r is None:
                vals[k] = v
            else:
                vals[k] = r(vals[k] if k in vals else getattr(state, k), v)
    if not vals:
        return state
    if plan.validate_steps:
        return plan.state_cls.model_validate({**state.__dict__, **vals})
    if not plan.fast_copy:
        return state.model_copy(update=vals)
    d = state.__dict__.copy()
    d.update(vals)
    return _copy_with(state, d, vals)


_setattr = object.__setattr__
_new = object.__new__


def _copy_with(state: BaseModel, d: dict[str, Any], changed: dict[str, Any]) -> BaseModel:
    """What BaseModel.model_copy(update=...) does, minus its generic paths: the plan only takes this
    road for models without private attributes, and `d` is already a fresh dict (no deep copies)."""
    new = _new(type(state))
    _setattr(new, "__dict__", d)
    extra = state.__pydantic_extra__
    _setattr(new, "__pydantic_extra__", None if extra is None else dict(extra))
    _setattr(new, "__pydantic_fields_set__", state.__pydantic_fields_set__ | changed.keys())
    _setattr(new, "__pydantic_private__", None)
    return new


def decode_update(plan: Plan, update: Mapping[str, Any]) -> dict[str, Any]:
    """Rebuild typed field values of an update saved as JSON (only on resume)."""
    out: dict[str, Any] = {}
    for k, v in update.items():
        info = plan.state_cls.model_fields.get(k)
        if info is None or info.annotation is None:
            out[k] = v
            continue
        ann = info.annotation
        try:
            out[k] = TypeAdapter(ann).validate_python(v)
        except Exception:
            # An Append field's update may be a single item rather than a list: keep the raw value.
            out[k] = v
    return out


def is_async_callable(fn: Callable[..., Any]) -> bool:
    return inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(getattr(fn, "__call__", None))  # noqa: B004
