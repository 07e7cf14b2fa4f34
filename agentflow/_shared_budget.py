"""One budget shared by many workers: the same reserve-then-settle guarantee across processes and machines.

A `SharedBudget` books every call on a `Ledger` that all workers reach, with the in-process `Budget`'s
rules (the same limits, `limit_broken`; the same charges, `settlement` and `failure_charge`):

    ledger = SqliteLedger("runs/budget.sqlite", BudgetLimits(flops=1e15))   # in every process of one machine
    shared = SharedBudget(ledger, owner="worker-3")
    model = shared.wrap(client)            # every call reserves its worst case on the ledger, then settles

A reservation is checked and booked in one step on the ledger (one `BEGIN IMMEDIATE` transaction in
SQLite; one call of a Ray actor, which runs its calls one at a time: `agentflow.eval.ray_ledger`), so no
interleaving of workers passes a cap. Backends: `LocalLedger` (one process, for tests and as the
reference), `SqliteLedger` (processes of one machine), the Ray actor (processes of a cluster).

A worker that dies between reserve and settle leaves its reservation open. It is never released for
free: the call may have reached the server, and what it spent is unknown, so the reservation is *charged
its worst case* (counted as a failed call on the bill), either when its owner is known to be dead
(`ledger.reclaim(owner)`, which a supervisor calls) or when its lease runs out (`lease_s` after it was
booked; every ledger call expires the overdue ones). Charged, not released: the cap stays safe whatever the
dead call spent up to its worst case; a late settlement of an expired reservation is ignored (it was
already charged its worst case). The lease only stops waiters from waiting on a call that will never settle.

`SharedBudget.acquire` (what wrapped models use) waits, like `Budget.acquire`, when a call breaks a cap
only because of calls in flight: it asks the ledger again, backing off, until it fits, until it can no
longer fit whatever those calls spend, or until nothing has settled for `wait_s`. Waiters poll: across
processes there is no order of arrival. The in-process `Budget` stays the default everywhere; its
`can_afford` checks (which degrading workflows read) do not see a shared budget's ledger: a call the ledger
refuses raises `BudgetExceeded` when it is made.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import threading
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Protocol, TypeVar

from . import _sqlite
from ._bill import Bill, ModelBill, Spend, astuple
from ._budget import (
    DEFAULT_BUDGET_LIMITS,
    DEFAULT_WAIT_S,
    Budget,
    BudgetLimits,
    BudgetPolicy,
    Tokenizer,
    failure_charge,
    limit_broken,
    settlement,
)
from ._catalog import ModelSpec, get_model
from ._exceptions import BudgetExceeded, ConfigError
from ._types import ChatRequest, Completion, Model, Usage

__all__ = [
    "DEFAULT_LEASE_S",
    "Ledger",
    "LedgerBook",
    "LedgerSnapshot",
    "LocalLedger",
    "Refusal",
    "SharedBudget",
    "SharedBudgetedModel",
    "SharedReservation",
    "SqliteLedger",
]

DEFAULT_LEASE_S = 900.0
"""How long a reservation may stay open before it is charged its worst case (seconds): longer than any call
that has not hung (a ModelClient call gives up within its retry bound)."""

DEFAULT_POLL_S = 0.01
"""The first pause of a waiting `acquire` before it asks the ledger again; it doubles up to MAX_POLL_S."""
MAX_POLL_S = 0.5

_T = TypeVar("_T")


# --- the accounting, wherever it lives ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why a ledger refused a reservation: the `limit` it would break (`allowed`, `would` reach), what was
    spent and reserved then, whether it could `never` fit (even if every call in flight settled for nothing),
    and how many settlements the ledger had seen (a waiter's sign that something moved)."""

    limit: str
    allowed: float
    would: float
    spent: Spend
    reserved: Spend
    never: bool
    settlements: int


@dataclass(frozen=True, slots=True)
class LedgerSnapshot:
    """A ledger's books at one moment: spent, reserved by calls in flight, and the per-model bills."""

    limits: BudgetLimits
    spent: Spend
    reserved: Spend
    in_flight: int
    elapsed_s: float
    models: Mapping[str, ModelBill]
    settlements: int
    expired: int


@dataclass(frozen=True, slots=True)
class _Open:
    owner: str
    model: str
    ask: Spend
    expires_at: float


@dataclass
class LedgerBook:
    """The books of a shared budget, as plain data with the operations every backend applies atomically.

    Times (`now`, `started_at`) are the backend's clock. Reservations are numbered from 1 by `next_id`."""

    limits: BudgetLimits
    started_at: float
    spent: Spend = field(default_factory=Spend)
    open: dict[int, _Open] = field(default_factory=dict)
    expired: set[int] = field(default_factory=set)
    models: dict[str, ModelBill] = field(default_factory=dict)
    next_id: int = 1
    settlements: int = 0

    @property
    def reserved(self) -> Spend:
        total = Spend()
        for o in self.open.values():
            total = total + o.ask
        return total

    def _charge(self, model: str, spend: Spend, bill: ModelBill) -> None:
        self.spent = self.spent + spend
        self.models[model] = self.models[model] + bill if model in self.models else bill

    def _close(self, ticket: int) -> None:
        """Charge an open reservation its worst case, as a failed call (its holder died or its lease ran out)."""
        o = self.open.pop(ticket)
        self._charge(o.model, o.ask, ModelBill(*astuple(o.ask)) + ModelBill(failed=1))
        self.expired.add(ticket)
        self.settlements += 1

    def expire(self, now: float) -> int:
        """Charge every reservation whose lease ran out its worst case; how many there were."""
        overdue = [t for t, o in self.open.items() if o.expires_at <= now]
        for t in overdue:
            self._close(t)
        return len(overdue)

    def reclaim(self, owner: str, now: float) -> int:
        """Charge every open reservation of `owner` (a worker known to be dead) its worst case; how many."""
        self.expire(now)
        mine = [t for t, o in self.open.items() if o.owner == owner]
        for t in mine:
            self._close(t)
        return len(mine)

    def reserve(
        self, ask: Spend, max_tokens: int, *, model: str, owner: str, now: float, lease_s: float
    ) -> int | Refusal:
        """Book `ask` and return its ticket, or the Refusal saying which limit it would break."""
        self.expire(now)
        reserved = self.reserved

        def elapsed() -> float:
            return now - self.started_at

        bad = limit_broken(self.limits, self.spent + reserved + ask, max_tokens, elapsed)
        if bad is not None:
            never = limit_broken(self.limits, self.spent + ask, max_tokens, elapsed) is not None
            return Refusal(*bad, self.spent, reserved, never, self.settlements)
        ticket = self.next_id
        self.next_id += 1
        self.open[ticket] = _Open(owner, model, ask, now + lease_s)
        return ticket

    def settle(self, ticket: int, spend: Spend, bill: ModelBill, now: float) -> bool:
        """Close `ticket`, charging `spend` and `bill`. False for a reservation that had expired (it was charged
        its worst case then, which stands); ConfigError for one that was never booked or is already closed."""
        if ticket in self.open:
            o = self.open.pop(ticket)
            self._charge(o.model, spend, bill)
            self.settlements += 1
            self.expire(now)
            return True
        if ticket in self.expired:
            return False
        raise ConfigError(
            f"reservation {ticket} is not open on this ledger: it was already settled, failed or cancelled, or "
            "was booked on another ledger; settle, fail or cancel each reservation exactly once"
        )

    def snapshot(self, now: float) -> LedgerSnapshot:
        self.expire(now)
        return LedgerSnapshot(
            self.limits,
            self.spent,
            self.reserved,
            len(self.open),
            now - self.started_at,
            dict(self.models),
            self.settlements,
            len(self.expired),
        )


class Ledger(Protocol):
    """Where a shared budget's books live; every method is one atomic step on them."""

    @property
    def limits(self) -> BudgetLimits: ...

    async def reserve(self, ask: Spend, max_tokens: int, *, model: str, owner: str) -> int | Refusal: ...

    async def settle(self, ticket: int, spend: Spend, bill: ModelBill) -> bool: ...

    async def reclaim(self, owner: str) -> int: ...

    async def snapshot(self) -> LedgerSnapshot: ...


class LocalLedger:
    """A ledger in this process (one event loop; each step has no await inside, so it is atomic)."""

    def __init__(
        self,
        limits: BudgetLimits = DEFAULT_BUDGET_LIMITS,
        *,
        lease_s: float = DEFAULT_LEASE_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        _check_lease(lease_s)
        self.lease_s = lease_s
        self._clock = clock
        self.book = LedgerBook(_checked_limits(limits), clock())

    @property
    def limits(self) -> BudgetLimits:
        return self.book.limits

    async def reserve(self, ask: Spend, max_tokens: int, *, model: str, owner: str) -> int | Refusal:
        return self.book.reserve(ask, max_tokens, model=model, owner=owner, now=self._clock(), lease_s=self.lease_s)

    async def settle(self, ticket: int, spend: Spend, bill: ModelBill) -> bool:
        return self.book.settle(ticket, spend, bill, self._clock())

    async def reclaim(self, owner: str) -> int:
        return self.book.reclaim(owner, self._clock())

    async def snapshot(self) -> LedgerSnapshot:
        return self.book.snapshot(self._clock())


class SqliteLedger:
    """A ledger in a SQLite file that every process of one machine opens: each step is one `BEGIN IMMEDIATE`
    transaction (read the books, apply the step, write them back), so steps of all processes are serialised.

    The first process to open the file stores `limits` (and the start of the wall time); opening it with other
    limits is a ConfigError. `clock` must be one all processes share (the default, `time.time`)."""

    def __init__(
        self,
        path: Path | str,
        limits: BudgetLimits = DEFAULT_BUDGET_LIMITS,
        *,
        lease_s: float = DEFAULT_LEASE_S,
        clock: Callable[[], float] = time.time,
    ) -> None:
        _check_lease(lease_s)
        self.path = Path(path)
        self.lease_s = lease_s
        self._limits = _checked_limits(limits)
        self._clock = clock
        self._lock = threading.Lock()
        self._conn = _sqlite.connect(path, any_thread=True)
        self._conn.executescript(_SCHEMA)
        self._step(lambda book: None)  # creates the books, or checks their limits

    @property
    def limits(self) -> BudgetLimits:
        return self._limits

    def _load(self) -> LedgerBook:
        row = self._conn.execute("SELECT limits, started_at, next_id, settlements, spent FROM ledger").fetchone()
        mine = json.dumps(asdict(self._limits), sort_keys=True)
        if row is None:
            self._conn.execute(
                "INSERT INTO ledger VALUES (1, ?, ?, 1, 0, ?)", (mine, self._clock(), json.dumps(Spend().as_dict()))
            )
            return LedgerBook(self._limits, self._clock())
        if row[0] != mine:
            raise ConfigError(
                f"the budget ledger {self.path} was made with other limits ({row[0]}, not {mine}): open it with "
                "the same BudgetLimits, or use another file for a budget with these limits"
            )
        book = LedgerBook(self._limits, float(row[1]), Spend.from_dict(json.loads(row[4])))
        book.next_id, book.settlements = int(row[2]), int(row[3])
        for t, owner, model, ask, expires_at in self._conn.execute("SELECT * FROM open_reservations"):
            book.open[int(t)] = _Open(str(owner), str(model), Spend.from_dict(json.loads(ask)), float(expires_at))
        book.expired = {int(r[0]) for r in self._conn.execute("SELECT id FROM expired")}
        for model, bill in self._conn.execute("SELECT model, bill FROM model_bills"):
            book.models[str(model)] = ModelBill.from_dict(json.loads(bill))
        return book

    def _store(self, book: LedgerBook) -> None:
        c = self._conn
        c.execute(
            "UPDATE ledger SET next_id = ?, settlements = ?, spent = ?",
            (book.next_id, book.settlements, json.dumps(book.spent.as_dict())),
        )
        c.execute("DELETE FROM open_reservations")
        c.executemany(
            "INSERT INTO open_reservations VALUES (?, ?, ?, ?, ?)",
            [(t, o.owner, o.model, json.dumps(o.ask.as_dict()), o.expires_at) for t, o in book.open.items()],
        )
        c.executemany("INSERT OR IGNORE INTO expired VALUES (?)", [(t,) for t in book.expired])
        c.execute("DELETE FROM model_bills")
        c.executemany(
            "INSERT INTO model_bills VALUES (?, ?)", [(m, json.dumps(b.to_dict())) for m, b in book.models.items()]
        )

    def _step(self, step: Callable[[LedgerBook], _T]) -> _T:
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                book = self._load()
                out = step(book)
                self._store(book)
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")
            return out

    async def _run(self, step: Callable[[LedgerBook], _T]) -> _T:
        return await asyncio.to_thread(self._step, step)

    async def reserve(self, ask: Spend, max_tokens: int, *, model: str, owner: str) -> int | Refusal:
        now, lease = self._clock, self.lease_s
        return await self._run(lambda b: b.reserve(ask, max_tokens, model=model, owner=owner, now=now(), lease_s=lease))

    async def settle(self, ticket: int, spend: Spend, bill: ModelBill) -> bool:
        return await self._run(lambda b: b.settle(ticket, spend, bill, self._clock()))

    async def reclaim(self, owner: str) -> int:
        return await self._run(lambda b: b.reclaim(owner, self._clock()))

    async def snapshot(self) -> LedgerSnapshot:
        return await self._run(lambda b: b.snapshot(self._clock()))

    def close(self) -> None:
        with self._lock:
            self._conn.close()


_SCHEMA = """
CREATE TABLE IF NOT EXISTS ledger (
    id INTEGER PRIMARY KEY CHECK (id = 1), limits TEXT NOT NULL, started_at REAL NOT NULL,
    next_id INTEGER NOT NULL, settlements INTEGER NOT NULL, spent TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS open_reservations (
    id INTEGER PRIMARY KEY, owner TEXT NOT NULL, model TEXT NOT NULL, ask TEXT NOT NULL, expires_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS expired (id INTEGER PRIMARY KEY);
CREATE TABLE IF NOT EXISTS model_bills (model TEXT PRIMARY KEY, bill TEXT NOT NULL);
"""


def _check_lease(lease_s: float) -> None:
    if isinstance(lease_s, bool) or not isinstance(lease_s, int | float) or not lease_s > 0:
        raise ConfigError(
            f"lease_s must be a number of seconds > 0 (how long a reservation may stay open), got {lease_s!r}"
        )


def _checked_limits(limits: BudgetLimits) -> BudgetLimits:
    if not isinstance(limits, BudgetLimits):
        raise ConfigError(f"ledger limits must be a BudgetLimits, got {type(limits).__name__}")
    return limits


# --- the budget every worker holds ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SharedReservation:
    """A worst case booked on a ledger (`ticket`) for one call, until settled, failed or cancelled."""

    ticket: int
    model: str
    spec: ModelSpec | None
    ask: Spend
    max_tokens: int


class SharedBudget:
    """A budget whose books are a `Ledger` shared with other workers; the surface of `Budget`, async.

    `owner` names this worker on the ledger (default: host and process id), so that a supervisor can reclaim
    what a dead worker left open. `policy`, `tokenizer` and `wait_s` mean what they mean for `Budget`; `sleep`
    and `clock` (for the waiting) are injectable for tests."""

    def __init__(
        self,
        ledger: Ledger,
        *,
        policy: BudgetPolicy = "raise",
        tokenizer: Tokenizer | None = None,
        name: str = "shared",
        owner: str | None = None,
        wait_s: float = DEFAULT_WAIT_S,
        poll_s: float = DEFAULT_POLL_S,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        # prices and estimates exactly as an in-process budget with these limits would (it books nothing)
        self._pricing = Budget(ledger.limits, policy=policy, tokenizer=tokenizer, name=name, wait_s=wait_s)
        if isinstance(poll_s, bool) or not isinstance(poll_s, int | float) or not poll_s > 0:
            raise ConfigError(f"SharedBudget poll_s must be a number of seconds > 0, got {poll_s!r}")
        self.ledger = ledger
        self.policy: BudgetPolicy = policy
        self.name = name
        self.owner = owner or f"{socket.gethostname()}:{os.getpid()}"
        self.wait_s = self._pricing.wait_s
        self._poll_s = float(poll_s)
        self._sleep = sleep
        self._clock = clock
        self._background: set[asyncio.Future[bool]] = set()  # cancellations of reservations booked too late

    def __repr__(self) -> str:
        return f"SharedBudget(name={self.name!r}, owner={self.owner!r}, limits={self.limits!r}, policy={self.policy!r})"

    @property
    def limits(self) -> BudgetLimits:
        return self.ledger.limits

    @property
    def degrades(self) -> bool:
        return self.policy == "degrade"

    def spec_for(self, model: Model | str | ModelSpec) -> ModelSpec | None:
        """The catalog entry used to count `model` (as `Budget.spec_for`)."""
        if isinstance(model, SharedBudgetedModel):
            return model.spec
        return self._pricing.spec_for(model)

    def estimate(self, request: ChatRequest, model: Model | str | ModelSpec) -> Spend:
        """The worst case of `request` on `model`: estimated prompt tokens plus `max_tokens`."""
        return self._ask(request, model)[2]

    def _ask(self, request: ChatRequest, model: Model | str | ModelSpec) -> tuple[str, ModelSpec | None, Spend]:
        spec = self.spec_for(model)
        return _name(model), spec, self._pricing.estimate(request, spec or _name(model))

    async def can_afford(self, request: ChatRequest, model: Model | str | ModelSpec) -> bool:
        """Whether the worst case of `request` on `model` fits the ledger now (counting calls in flight)."""
        _, _, ask = self._ask(request, model)
        snap = await self.ledger.snapshot()
        used = snap.spent + snap.reserved + ask
        return limit_broken(snap.limits, used, request.max_tokens, lambda: snap.elapsed_s) is None

    async def reserve(self, request: ChatRequest, model: Model | str | ModelSpec) -> SharedReservation:
        """Book the worst case of `request` on the ledger, or raise BudgetExceeded at once."""
        name, spec, ask = self._ask(request, model)
        got = await self._book(ask, request.max_tokens, name)
        if isinstance(got, Refusal):
            raise self._exceeded(got, ask, request, name)
        return SharedReservation(got, name, spec, ask, request.max_tokens)

    async def acquire(self, request: ChatRequest, model: Model | str | ModelSpec) -> SharedReservation:
        """`reserve()`, except that a call breaking a cap only because of calls in flight waits for them (see
        the module doc). Cancellable."""
        name, spec, ask = self._ask(request, model)
        seen: int | None = None
        since = self._clock()
        pause = self._poll_s
        while True:
            got = await self._book(ask, request.max_tokens, name)
            if not isinstance(got, Refusal):
                return SharedReservation(got, name, spec, ask, request.max_tokens)
            if got.never or self.wait_s <= 0:
                raise self._exceeded(got, ask, request, name)
            if got.settlements != seen:  # something settled since we last asked: the wait starts again
                seen, since = got.settlements, self._clock()
            waited = self._clock() - since
            if waited >= self.wait_s:
                raise self._exceeded(got, ask, request, name, waited=self.wait_s)
            await self._sleep(min(pause, self.wait_s - waited))
            pause = min(pause * 2, MAX_POLL_S)

    async def _book(self, ask: Spend, max_tokens: int, model: str) -> int | Refusal:
        """One reservation on the ledger. Cancelled while the ledger answers, a reservation it booked all the same
        is cancelled when the answer comes (in the background), so none is left open."""
        asked = asyncio.ensure_future(self.ledger.reserve(ask, max_tokens, model=model, owner=self.owner))
        try:
            return await asyncio.shield(asked)
        except asyncio.CancelledError:
            asked.add_done_callback(self._unbook)
            raise

    def _unbook(self, asked: asyncio.Future[int | Refusal]) -> None:
        if asked.cancelled() or asked.exception() is not None:
            return
        ticket = asked.result()
        if isinstance(ticket, Refusal):
            return
        undo = asyncio.ensure_future(self.ledger.settle(ticket, Spend(), ModelBill()))
        self._background.add(undo)
        undo.add_done_callback(self._background.discard)

    async def settle(self, res: SharedReservation, completion: Completion | Usage) -> Spend:
        """Close `res` and charge what the call used (the rules of `Budget.settle`)."""
        spend, bill = settlement(res.spec, res.ask, res.max_tokens, completion)
        charged = await self.ledger.settle(res.ticket, spend, bill)
        return spend if charged else res.ask

    async def fail(self, res: SharedReservation, usage: Usage | None = None) -> None:
        """Close `res` for a call that raised (the rules of `Budget.fail`)."""
        await self.ledger.settle(res.ticket, *failure_charge(res.spec, usage))

    async def cancel(self, res: SharedReservation) -> None:
        """Close `res` for a call that never reached a server; nothing is charged."""
        await self.ledger.settle(res.ticket, Spend(), ModelBill())

    def wrap(self, model: Model, *, spec: ModelSpec | str | None = None) -> SharedBudgetedModel:
        """`model` with every call reserved and settled on this budget's ledger (as `Budget.wrap`)."""
        resolved = get_model(spec) if isinstance(spec, str) else spec
        if resolved is None:
            resolved = self.spec_for(model)
        return SharedBudgetedModel(model, self, resolved)

    async def bill(self) -> Bill:
        """The bill of everything every worker booked on the ledger."""
        snap = await self.ledger.snapshot()
        return Bill(dict(snap.models), snap.elapsed_s)

    async def spent(self) -> Spend:
        return (await self.ledger.snapshot()).spent

    def _exceeded(
        self, r: Refusal, ask: Spend, request: ChatRequest, model: str, *, waited: float | None = None
    ) -> BudgetExceeded:
        key = r.limit
        if key == "wall_time_s":
            fix = "raise BudgetLimits.wall_time_s, or start a new ledger"
            what = f"its wall time is up ({r.would:.3g}s of {r.allowed:.3g}s)"
        elif key == "max_tokens_per_call":
            fix = f"lower the request's max_tokens to <= {r.allowed:g}, or raise BudgetLimits.max_tokens_per_call"
            what = f"the call asks for max_tokens={request.max_tokens}, above max_tokens_per_call={r.allowed:g}"
        elif waited is not None:
            fix = f"raise SharedBudget(wait_s=...) (now {waited:g}), or give the calls in flight a timeout"
            what = (
                f"{key} would reach {r.would:.6g} with the calls in flight of every worker (limit {r.allowed:.6g}), "
                f"and none of them settled in {waited:g} s of waiting"
            )
        else:
            fix = f"raise BudgetLimits.{key}"
            if key != "requests":
                fix += f", or lower the request's max_tokens (now {request.max_tokens})"
            what = (
                f"{key} would reach {r.would:.6g} with this call (limit {r.allowed:.6g}; spent by every worker "
                f"{getattr(r.spent, key):.6g}, reserved by calls in flight {getattr(r.reserved, key):.6g}, "
                f"this call asks up to {getattr(ask, key):.6g})"
            )
        return BudgetExceeded(
            f"shared budget {self.name!r}: a call to {model!r} would break the {key} limit: {what}. Fix: {fix}",
            limit=key,
            spent=r.spent.as_dict(),
            asked=ask.as_dict(),
            allowed=float(r.allowed),
        )


def _name(model: Model | str | ModelSpec) -> str:
    return model if isinstance(model, str) else model.name


class SharedBudgetedModel:
    """A Model whose every call reserves its worst case on a shared budget first and settles after."""

    def __init__(self, inner: Model, budget: SharedBudget, spec: ModelSpec | None) -> None:
        self.inner = inner
        self.budget = budget
        self.spec = spec

    @property
    def name(self) -> str:
        return self.inner.name

    def __repr__(self) -> str:
        return f"SharedBudgetedModel({self.inner!r}, budget={self.budget.name!r})"

    async def complete(self, request: ChatRequest) -> Completion:
        res = await self.budget.acquire(request, self)
        try:
            completion = await self.inner.complete(request)
        except BudgetExceeded:
            await asyncio.shield(self.budget.cancel(res))
            raise
        except Exception as e:
            usage = getattr(e, "usage", None)  # an error may say what the failed call still spent
            await asyncio.shield(self.budget.fail(res, usage if isinstance(usage, Usage) else None))
            raise
        except BaseException:  # cancelled: the server may have started, but we cannot know its usage
            await asyncio.shield(self.budget.cancel(res))
            raise
        await self.budget.settle(res, completion)
        return completion
