"""Ledgers: the books of a budget shared by many workers, each booking a reservation in one atomic step.

`LedgerBook` is the accounting as plain data (reserve, settle, reclaim, expire, snapshot) with the in-process
`Budget`'s rules; a backend applies its operations atomically: `LocalLedger` (one process, under a lock),
`SqliteLedger` (the processes of one machine, one `BEGIN IMMEDIATE` transaction per operation) and the Ray
actor in `agentflow.eval` (the processes of a cluster). `SharedBudget` (in `_shared_budget`) is what workers
hold.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Protocol, TypeVar

from . import _sqlite
from ._bill import ModelBill, Spend, astuple
from ._budget import DEFAULT_BUDGET_LIMITS, BudgetLimits, limit_broken
from ._exceptions import ConfigError

__all__ = ["DEFAULT_LEASE_S", "Ledger", "LedgerBook", "LedgerSnapshot", "LocalLedger", "Refusal", "SqliteLedger"]

DEFAULT_LEASE_S = 900.0
"""How long a reservation may stay open before it is charged its worst case (seconds): longer than any call
that has not hung (a ModelClient call gives up within its retry bound)."""

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
