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
import os
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from ._bill import Bill, ModelBill, Spend
from ._budget import (
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
from ._ledger import DEFAULT_LEASE_S, Ledger, LedgerBook, LedgerSnapshot, LocalLedger, Refusal, SqliteLedger
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

DEFAULT_POLL_S = 0.01
"""The first pause of a waiting `acquire` before it asks the ledger again; it doubles up to MAX_POLL_S."""
MAX_POLL_S = 0.5


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
