"""Evaluation on a Ray cluster: `RayExecutor` answers a comparison's questions as Ray tasks.

    ray start --head --port 6379                       # on the first machine
    ray start --address HEAD:6379                      # on each of the others
    agentflow compare --ray HEAD:6379 --small-url http://gpu1:8000/v1 --large-url http://gpu2:8000/v1 ...

Run it on a node of the cluster (the head, say): that process, the driver, keeps the stores on its disk.
Every node needs the same Python environment (agentflow with the `ray` extra, and the workflows), and must reach
the model servers: a local llama.cpp server started by compare listens on the driver's loopback only, so the CLI
refuses it on a cluster of more than one node.

One writer per store. The driver (the process that runs `Comparison.run`) alone writes the answer store, as
each question's task returns. One actor on the driver's node owns the response cache file: a worker asks it
before each deterministic call, and sends it each new response as soon as the model answers. So a question
whose worker dies is asked again from the start and finds every call that worker made in the cache: nothing
is spent twice. The driver asks a question again (up to `retries` times) when its worker or node dies; after
that the question is stored as failed, and the next run asks it again. A killed driver loses nothing either:
the answers it stored are kept, the responses its workers got are in the cache.

Run-level limits are a shared budget (`agentflow.SharedBudget` on a ledger actor, `ray_ledger`): every
worker's calls reserve their worst case there, so the cap holds across the cluster; what a dead worker held
is reclaimed (charged its worst case: its call may have reached the server) before its question is asked
again. Per-question limits are an in-process `Budget` in the worker that answers the question. Arms run one
after the other, as in a local run, so the cache answers the same calls; the report is built on the driver
from the stored records, the same report as a local run on the same questions (wall times aside).

Near a run-level cap a Ray run may differ from a local one: the `can_afford` checks that degrading workflows
read (sc sampling fewer, a cascade not starting its large rung) see the question's in-process budget, not the
run's shared one, so a call the shared budget refuses raises BudgetExceeded when it is made (a cascade keeps
its small answer, as for any BudgetExceeded inside a rung; another question is not answered).

Ray is optional (`pip install 'agentflow[ray]'`) and imported only here, when a run on Ray starts.
"""

from __future__ import annotations

import asyncio
import importlib
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, AsyncExitStack
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import ModuleType
from typing import Any

from .._bill import Bill, ModelBill, Spend
from .._budget import Budget, BudgetLimits
from .._exceptions import ConfigError, MissingDependencyError
from .._ledger import DEFAULT_LEASE_S, LedgerBook, LedgerSnapshot, Refusal
from .._shared_budget import SharedBudget
from .._types import ChatRequest, Completion, Model, OutputSpec
from ._arms import ArmName, CacheOnly, Role
from ._compare import Work, gather_or_cancel
from ._data import Example
from ._report import QuestionRecord
from ._stores import CachedModel, ResponseCache, is_deterministic, request_key

__all__ = ["RAY_INSTALL", "ModelSource", "RayExecutor", "RayLedger", "check_address", "import_ray", "ray_ledger"]

RAY_INSTALL = "pip install 'agentflow[ray]'"

ModelSource = Callable[[], Model | AbstractAsyncContextManager[Model]]
"""Makes a model in a worker, once per question: `functools.partial(ModelClient, url, name, dialect=...)`, or a
scripted model in tests. It is pickled to the workers; an async context manager is entered and left there."""


def import_ray() -> ModuleType:
    """The `ray` module, or MissingDependencyError naming the extra that installs it."""
    try:
        return importlib.import_module("ray")
    except ImportError:
        raise MissingDependencyError("ray (to run on a Ray cluster)", RAY_INSTALL) from None


# --- the shared budget's ledger as an actor -------------------------------------------------------


class _LedgerOwner:
    """The actor that holds a shared budget's books; Ray runs its calls one at a time, so each is atomic."""

    def __init__(self, limits: BudgetLimits, lease_s: float) -> None:
        self._book = LedgerBook(limits, time.monotonic())
        self._lease_s = lease_s

    def reserve(self, ask: Spend, max_tokens: int, model: str, owner: str) -> int | Refusal:
        return self._book.reserve(
            ask, max_tokens, model=model, owner=owner, now=time.monotonic(), lease_s=self._lease_s
        )

    def settle(self, ticket: int, spend: Spend, bill: ModelBill) -> bool:
        return self._book.settle(ticket, spend, bill, time.monotonic())

    def reclaim(self, owner: str) -> int:
        return self._book.reclaim(owner, time.monotonic())

    def snapshot(self) -> LedgerSnapshot:
        return self._book.snapshot(time.monotonic())


class RayLedger:
    """A `Ledger` held by a Ray actor (`ray_ledger`); it pickles, so every worker can be handed it."""

    def __init__(self, actor: Any, limits: BudgetLimits) -> None:
        self.actor = actor
        self._limits = limits

    @property
    def limits(self) -> BudgetLimits:
        return self._limits

    async def reserve(self, ask: Spend, max_tokens: int, *, model: str, owner: str) -> int | Refusal:
        got: int | Refusal = await self.actor.reserve.remote(ask, max_tokens, model, owner)
        return got

    async def settle(self, ticket: int, spend: Spend, bill: ModelBill) -> bool:
        return bool(await self.actor.settle.remote(ticket, spend, bill))

    async def reclaim(self, owner: str) -> int:
        return int(await self.actor.reclaim.remote(owner))

    async def snapshot(self) -> LedgerSnapshot:
        snap: LedgerSnapshot = await self.actor.snapshot.remote()
        return snap


def ray_ledger(limits: BudgetLimits, *, lease_s: float = DEFAULT_LEASE_S) -> RayLedger:
    """A new shared budget ledger in an actor of the Ray cluster this process is connected to (`ray.init()`);
    it lives as long as this process (or until `ray.kill(ledger.actor)`)."""
    ray = _connected()
    actor = ray.remote(_LedgerOwner).options(num_cpus=0).remote(limits, lease_s)
    return RayLedger(actor, limits)


def _connected() -> ModuleType:
    ray = import_ray()
    if not ray.is_initialized():
        raise ConfigError("Ray is not connected in this process: call ray.init(...) (or ray.init('auto')) first")
    return ray


# --- the response cache's one writer, and the model a worker calls through it -----------------------


class _CacheOwner:
    """The actor that owns the response cache file (on the driver's node): every read and write goes here."""

    def __init__(self, path: str) -> None:
        self._cache = ResponseCache(path)

    def get(self, key: str, output: OutputSpec | None) -> Completion | None:
        return self._cache.get(key, output=output)

    def put(self, key: str, completion: Completion) -> None:
        self._cache.put(key, completion)

    def close(self) -> None:
        self._cache.close()


class _OwnedCache:
    """A worker's CachedModel over a cache in its memory that is filled from the cache owner before each
    deterministic call, and whose new responses go to the owner as soon as they are made (before the
    workflow sees them): a hit and a miss are exactly a local CachedModel's."""

    def __init__(self, model: Model, owner: Any) -> None:
        self._owner = owner
        self._local = ResponseCache(":memory:")
        self._cached = CachedModel(model, self._local)

    @property
    def name(self) -> str:
        return self._cached.name

    async def complete(self, request: ChatRequest) -> Completion:
        if not is_deterministic(request):
            return await self._cached.complete(request)
        key = request_key(self.name, request)
        if self._local.get(key) is None:
            stored: Completion | None = await self._owner.get.remote(key, request.output)
            if stored is not None:
                self._local.put(key, stored)
        completion = await self._cached.complete(request)
        if not completion.cached:
            await self._owner.put.remote(key, completion)
        return completion

    def close(self) -> None:
        self._local.close()


# --- one question, in a worker --------------------------------------------------------------------


def _answer_one(
    work: Work,
    sources: Mapping[Role, ModelSource],
    cache: Any,
    ledger: RayLedger | None,
    arm: ArmName,
    ex: Example,
    owner: str,
) -> tuple[QuestionRecord, Bill]:
    """The Ray task: `arm`'s answer to `ex` and the question's bill (reservations on the ledger as `owner`)."""
    return asyncio.run(_answer(work, sources, cache, ledger, arm, ex, owner))


async def _answer(
    work: Work,
    sources: Mapping[Role, ModelSource],
    cache: Any,
    ledger: RayLedger | None,
    arm: ArmName,
    ex: Example,
    owner: str,
) -> tuple[QuestionRecord, Bill]:
    shared = None if ledger is None else SharedBudget(ledger, policy="degrade", name="compare", owner=owner)
    async with AsyncExitStack() as stack:
        models: dict[Role, Model] = {}
        for role in work.roles:
            source = CacheOnly(work.answerer.names[role]) if work.cache_only else await _enter(stack, sources[role])
            cached = _OwnedCache(source, cache)
            stack.callback(cached.close)
            models[role] = cached if shared is None else shared.wrap(cached)
        budget = Budget(work.question_limits or BudgetLimits(), policy="degrade", name=f"{arm}:{ex.id}")
        record = await work.answerer.answer(arm, ex, models, budget)
        return record, budget.bill()


async def _enter(stack: AsyncExitStack, source: ModelSource) -> Model:
    made = source()
    if isinstance(made, AbstractAsyncContextManager):
        return await stack.enter_async_context(made)
    return made


# --- the executor, on the driver ------------------------------------------------------------------


def check_address(address: str) -> None:
    """ConfigError for an address a run cannot use: empty, or a Ray Client one (ray://)."""
    if not address.strip():
        raise ConfigError("the Ray address is empty: give auto, local, or the head's address (HEAD:6379)")
    if address.startswith("ray://"):
        raise ConfigError(
            f"{address}: a Ray Client address runs the driver on the cluster's head, away from this machine's "
            "answer store and response cache: run compare on a node of the cluster (e.g. the head) with the "
            "address HEAD:6379, or auto"
        )


@dataclass(frozen=True)
class RayExecutor:
    """Answers a comparison's questions on Ray: `Comparison(..., small=None, large=None, executor=RayExecutor(...))`.

    `sources` makes each model the arms call, in the worker (`ModelSource`; not needed for a cache-only
    replay). `address`: the cluster to connect to when this process is not connected yet (`ray.init(address)`:
    None starts or finds one as Ray decides, "local" starts a new one here, "auto" finds the running one,
    "HOST:PORT" names it); a connection made here is closed with the run. This process must run on a node of
    the cluster (the cache owner is placed on its node, next to the stores): a Ray Client address (ray://) is
    refused. A question
    whose worker dies is asked again up to `retries` times. `cpus_per_question` is what each question's task
    asks of the cluster (questions at once are also capped by the comparison's `concurrency`). `lease_s`:
    how long a run-budget reservation may stay open (see `agentflow.SharedBudget`)."""

    sources: Mapping[Role, ModelSource] = field(default_factory=dict)
    address: str | None = None
    retries: int = 2
    cpus_per_question: float = 1.0
    lease_s: float = DEFAULT_LEASE_S

    def __post_init__(self) -> None:
        if isinstance(self.retries, bool) or not isinstance(self.retries, int) or self.retries < 0:
            raise ConfigError(f"RayExecutor retries must be a whole number >= 0, got {self.retries!r}")
        if not self.cpus_per_question >= 0:
            raise ConfigError(f"RayExecutor cpus_per_question must be >= 0, got {self.cpus_per_question!r}")
        if self.address is not None:
            check_address(self.address)

    async def open(self, work: Work, cache_path: Path) -> _OnRay:
        """Connect (when not connected), start the cache owner (and the run budget's ledger), ready the task."""
        ray = import_ray()
        missing = [] if work.cache_only else [role for role in work.roles if role not in self.sources]
        if missing:
            raise ConfigError(
                f"the arms call the {' and '.join(missing)} model but RayExecutor has no source for it: pass "
                f"sources={{{', '.join(repr(r) for r in missing)}: ...}} (a function that makes the model in a "
                "worker), or replay from the response cache with cache_only=True"
            )
        connected_here = not ray.is_initialized()
        if connected_here:
            try:
                ray.init(address=self.address)
            except ConnectionError as e:
                raise ConfigError(
                    f"no Ray cluster answers at {self.address!r} ({e}): start one with `ray start --head`, check "
                    "the address, or use a local one (--ray local)"
                ) from None
        try:
            return self._start(ray, work, cache_path, connected_here)
        except BaseException:
            if connected_here:
                ray.shutdown()
            raise

    def _start(self, ray: ModuleType, work: Work, cache_path: Path, connected_here: bool) -> _OnRay:
        strategies = importlib.import_module("ray.util.scheduling_strategies")
        here = strategies.NodeAffinitySchedulingStrategy(node_id=ray.get_runtime_context().get_node_id(), soft=False)
        cache = ray.remote(_CacheOwner).options(num_cpus=0, scheduling_strategy=here).remote(str(cache_path.resolve()))
        ledger = None if work.run_limits is None else ray_ledger(work.run_limits, lease_s=self.lease_s)
        task = ray.remote(_answer_one).options(num_cpus=self.cpus_per_question, max_retries=0)
        shipped = (ray.put(work), ray.put(dict(self.sources)))
        return _OnRay(ray, work, task, shipped, cache, ledger, self.retries, connected_here)


class _OnRay:
    """The runner of a Ray run: each question a task, each answer saved here as its task returns."""

    def __init__(
        self,
        ray: ModuleType,
        work: Work,
        task: Any,
        shipped: tuple[Any, Any],
        cache: Any,
        ledger: RayLedger | None,
        retries: int,
        connected_here: bool,
    ) -> None:
        self._ray = ray
        self._work = work
        self._task = task
        self._shipped = shipped
        self._cache = cache
        self.ledger = ledger
        self._retries = retries
        self._connected_here = connected_here
        errors = ray.exceptions
        self._lost: tuple[type[BaseException], ...] = (
            errors.WorkerCrashedError,
            errors.NodeDiedError,
            errors.LocalRayletDiedError,
        )

    async def answer_arm(self, arm: ArmName, todo: Sequence[Example], save: Callable[[QuestionRecord], None]) -> Bill:
        """Answer `todo`, up to `concurrency` tasks at once, saving each answer as it comes; the arm's bill (its
        questions' bills, in question order, over the arm's wall time)."""
        started = time.monotonic()
        gate = asyncio.Semaphore(self._work.concurrency)
        bills: dict[str, Bill] = {}

        async def one(ex: Example) -> None:
            async with gate:
                record, bills[ex.id] = await self._ask(arm, ex)
            save(record)

        await gather_or_cancel([one(ex) for ex in todo])
        total = sum((bills[ex.id] for ex in todo), Bill())
        return replace(total, wall_time_s=time.monotonic() - started)

    async def _ask(self, arm: ArmName, ex: Example) -> tuple[QuestionRecord, Bill]:
        """One question as a task, asked again when its worker dies (what the dead one held on the run budget
        is charged first); stored as failed after `retries` deaths."""
        lost: BaseException | None = None
        for attempt in range(self._retries + 1):
            owner = f"{arm}:{ex.id}:{attempt}"
            ref = self._task.remote(*self._shipped, self._cache, self.ledger, arm, ex, owner)
            try:
                got: tuple[QuestionRecord, Bill] = await ref
                return got
            except self._lost as e:
                lost = e
                if self.ledger is not None:
                    await self.ledger.reclaim(owner)
            except asyncio.CancelledError:
                self._ray.cancel(ref)
                raise
        first_line = str(lost).strip().splitlines()[0] if str(lost).strip() else ""
        error = (
            f"WorkerLost: the Ray worker answering this question died {self._retries + 1} times "
            f"({type(lost).__name__}: {first_line[:200]}): check the workers' logs (memory?), then run the same "
            "command again: this question is asked again, the calls its workers made come from the cache"
        )
        return QuestionRecord(ex.id, "", False, error=error), Bill()

    async def close(self) -> None:
        """Close the cache owner and end the actors (and the connection, when the run made it)."""
        try:
            await self._cache.close.remote()
        finally:
            self._ray.kill(self._cache)
            if self.ledger is not None:
                self._ray.kill(self.ledger.actor)
            if self._connected_here:
                self._ray.shutdown()
