"""Compute budgets: limits, a reservation before every model call, settlement after it, and the bill.

A `Budget` is a running `Spend` plus frozen `BudgetLimits`. Before a call, `reserve()` books the call's
worst case (estimated prompt tokens + `max_tokens`) on the budget *and every parent* in one step with
no `await` in between, so any number of concurrent branches can never overshoot a cap together.
After the call, `settle()` releases the reservation and charges what the server reported: prompt tokens it
took from its prefix cache (`Usage.cached_prompt_tokens`) are counted but cost no FLOPs, while the
reservation stays the worst case (the whole prompt computed).

    budget = Budget(BudgetLimits(completion_tokens=2_000, flops=1e13))
    model = budget.wrap(client)              # every call now reserves and settles
    node_budget = budget.child(BudgetLimits(requests=3))   # spends from its parent too
    print(budget.bill().to_dict())

Policies: `"raise"` (default) makes an unaffordable call raise `BudgetExceeded`; `"degrade"` tells
callers that look (the router, samplers, verifiers) to check `can_afford()` first and do less
instead. A call that is made anyway still raises: the budget never lets a call past a cap.

A call that breaks a cap only because of reservations still in flight does not fail at once: it waits
(`acquire()`, which wrapped models use) for those calls to settle and is then decided on what they really
spent. Waiters are served in order of arrival, each booked the moment it fits; one that can no longer fit
whatever the calls in flight spend fails then. The wait is cancellable and bounded: a waiter fails when no
call in its way has settled for `wait_s` seconds (a hung call), or when the wall time is up.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import re
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, fields, replace
from typing import Literal

from ._bill import CHECKED, Bill, ModelBill, Spend, astuple, cache_hit_bill, spend_for, usage_spend
from ._catalog import ModelSpec, get_model, list_models
from ._exceptions import BudgetExceeded, ConfigError, UncountableModelError, UnknownModelError
from ._types import ChatRequest, Completion, Model, Usage

__all__ = [
    "DEFAULT_BUDGET_LIMITS",
    "DEFAULT_WAIT_S",
    "Bill",
    "Budget",
    "BudgetLimits",
    "BudgetPolicy",
    "BudgetedModel",
    "ModelBill",
    "Reservation",
    "Spend",
    "UncountableModelError",
    "estimate_prompt_tokens",
    "estimate_text_tokens",
]

BudgetPolicy = Literal["raise", "degrade"]
_reservation_ids = itertools.count(1)
Tokenizer = Callable[[str], int]

#: Conservative prompt-size estimate when no tokenizer is given (measured on SmolLM2 and Qwen2.5 with
#: llama.cpp): one token per 2 ASCII characters (English averages ~4; "x x x ..." reaches 2), one per
#: digit (SmolLM2 and Qwen split numbers into digits), one per UTF-8 byte of anything else, 8 tokens of
#: chat template per message and 32 per request (the default system prompt a template adds: ~26).
ASCII_CHARS_PER_TOKEN = 2
MESSAGE_OVERHEAD_TOKENS = 8
REQUEST_OVERHEAD_TOKENS = 32
_DIGITS = re.compile(r"[0-9]")


def estimate_text_tokens(text: str) -> int:
    """An upper estimate of the tokens of `text` (see ASCII_CHARS_PER_TOKEN)."""
    if not text:
        return 0
    n_ascii = len(text) if text.isascii() else sum(1 for ch in text if ch < "\x80")
    digits = len(_DIGITS.findall(text))
    other_bytes = len(text.encode("utf-8")) - n_ascii
    return -(-(n_ascii - digits) // ASCII_CHARS_PER_TOKEN) + digits + other_bytes


def estimate_prompt_tokens(request: ChatRequest, tokenizer: Tokenizer | None = None) -> int:
    """An upper estimate of the prompt tokens of `request`: `estimate_text_tokens` (or `tokenizer(text)`)
    of each message, plus 8 tokens of template per message and 32 per request."""
    count = tokenizer or estimate_text_tokens
    return REQUEST_OVERHEAD_TOKENS + sum(count(m.content) + MESSAGE_OVERHEAD_TOKENS for m in request.messages)


# --- limits and amounts -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class BudgetLimits:
    """Caps for one budget scope; `None` means unlimited. All must be >= 0.

    `total_tokens` caps prompt + completion; `max_tokens_per_call` caps the `max_tokens` any single
    request may ask for; `wall_time_s` is measured from the scope's creation with its clock.
    """

    requests: int | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    total_tokens: int | None = None
    flops: float | None = None
    cost_usd: float | None = None
    wall_time_s: float | None = None
    max_tokens_per_call: int | None = None

    def __post_init__(self) -> None:
        for f in fields(self):
            v = getattr(self, f.name)
            if v is None:
                continue
            if isinstance(v, bool) or not isinstance(v, int | float):
                raise ConfigError(f"BudgetLimits.{f.name} must be a number or None, got {v!r}")
            if math.isnan(v) or v < 0:
                raise ConfigError(
                    f"BudgetLimits.{f.name} must be >= 0, got {v!r}: pass a non-negative limit, or None for no limit"
                )
        cap = self.max_tokens_per_call
        if cap is not None:
            for other in ("completion_tokens", "total_tokens"):
                lim = getattr(self, other)
                if lim is not None and cap > lim:
                    raise ConfigError(
                        f"BudgetLimits.max_tokens_per_call={cap} contradicts {other}={lim}: no call asking for "
                        f"that many tokens could ever fit; lower max_tokens_per_call or raise {other}"
                    )

    @property
    def needs_catalog(self) -> str | None:
        """The limit that needs catalog data to count a model (flops or cost_usd), if any."""
        if self.flops is not None:
            return "flops"
        if self.cost_usd is not None:
            return "cost_usd"
        return None


#: Unlimited; a budget with these limits only counts.
DEFAULT_BUDGET_LIMITS = BudgetLimits()

#: How long a call waiting for calls in flight to settle waits without any of them settling (seconds).
DEFAULT_WAIT_S = 60.0


# --- what a call is checked against and charged (shared with `_shared_budget`) -------------------


def limit_broken(
    limits: BudgetLimits, used: Spend, max_tokens: int, elapsed: Callable[[], float]
) -> tuple[str, float, float] | None:
    """The first of `limits` that `used` (spent + reserved + asked) breaks, as (limit, allowed, would-be), or
    None; `max_tokens` is the call's, `elapsed()` the scope's wall time (read only when it is limited)."""
    if limits.wall_time_s is not None and elapsed() >= limits.wall_time_s:
        return "wall_time_s", limits.wall_time_s, elapsed()
    if limits.max_tokens_per_call is not None and max_tokens > limits.max_tokens_per_call:
        return "max_tokens_per_call", limits.max_tokens_per_call, max_tokens
    for key in CHECKED:
        allowed = getattr(limits, key)
        if allowed is not None and getattr(used, key) > allowed:
            return key, allowed, getattr(used, key)
    return None


def settlement(
    spec: ModelSpec | None, ask: Spend, max_tokens: int, completion: Completion | Usage
) -> tuple[Spend, ModelBill]:
    """What a call that reserved `ask` (asking `max_tokens`) and answered `completion` is charged, and its bill.

    A cached completion costs nothing; one whose server reported no usage (`meta["usage_missing"]`) is
    charged its reserved worst case; any other is charged its usage (above the reservation: an overshoot), the
    prompt tokens its server took from its prefix cache without FLOPs."""
    if isinstance(completion, Completion) and completion.cached:
        return Spend(), cache_hit_bill(spec, completion)
    if isinstance(completion, Completion) and completion.meta.get("usage_missing"):
        # the server did not say what it used: charge the worst case that was reserved, and every attempt
        # the client counted (a retried call reached the server more than once)
        worst = replace(ask, requests=max(ask.requests, completion.usage.requests))
        return worst, ModelBill(*astuple(worst))
    usage = completion.usage if isinstance(completion, Completion) else completion
    actual = usage_spend(spec, usage, max(1, usage.requests))
    over = int(actual.prompt_tokens > ask.prompt_tokens or actual.completion_tokens > max_tokens)
    return actual, ModelBill(*astuple(actual), overshoots=over)


def failure_charge(spec: ModelSpec | None, usage: Usage | None) -> tuple[Spend, ModelBill]:
    """What a call that raised is charged: what its error says it spent (`usage`), or, when the error does not
    say (None), one request and no tokens; its bill counts it as failed."""
    if usage is None:
        return Spend(requests=1), ModelBill(requests=1, failed=1)
    spent = usage_spend(spec, usage)
    return spent, ModelBill(*astuple(spent), failed=1)


# --- the budget ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Reservation:
    """A booked worst case for one call, held on a budget and all its parents until settled."""

    budget: Budget
    model: str
    spec: ModelSpec | None
    ask: Spend
    max_tokens: int
    id: int = field(default_factory=lambda: next(_reservation_ids))


@dataclass(eq=False, slots=True)
class _Waiter:
    """A call waiting in a scope's queue; its future gets the reservation, or None to decide again."""

    budget: Budget
    model: str
    spec: ModelSpec | None
    ask: Spend
    max_tokens: int
    future: asyncio.Future[Reservation | None]


class Budget:
    """Limits plus what has been spent and reserved, for a run, a node, or across runs.

    `child(limits)` makes a nested scope: every spend is charged to the child and up the chain,
    and a call must fit every scope's limits. `clock` measures wall time (injectable for tests);
    `tokenizer(text) -> int` replaces the conservative `estimate_text_tokens`. `wait_s` bounds how long a
    call waits for calls in flight without any of them settling (0: never wait). Single event loop only:
    reservations are atomic because nothing awaits between check and booking.
    """

    def __init__(
        self,
        limits: BudgetLimits = DEFAULT_BUDGET_LIMITS,
        *,
        policy: BudgetPolicy = "raise",
        clock: Callable[[], float] = time.monotonic,
        tokenizer: Tokenizer | None = None,
        name: str = "budget",
        parent: Budget | None = None,
        wait_s: float = DEFAULT_WAIT_S,
    ) -> None:
        if not isinstance(limits, BudgetLimits):
            raise ConfigError(f"Budget limits must be a BudgetLimits, got {type(limits).__name__}")
        if policy not in ("raise", "degrade"):
            raise ConfigError(f"Budget policy must be 'raise' or 'degrade', got {policy!r}")
        if isinstance(wait_s, bool) or not isinstance(wait_s, int | float) or not wait_s >= 0:
            raise ConfigError(f"Budget wait_s must be a number of seconds >= 0 (0: never wait), got {wait_s!r}")
        self.wait_s = float(wait_s)
        self._queue: deque[_Waiter] = deque()
        self._settled_at = -math.inf  # loop time of the last settlement in this scope
        self.limits = limits
        self.policy: BudgetPolicy = policy
        self.name = name
        self.parent = parent
        self._clock = clock
        self._tokenizer = tokenizer
        self._start = clock()
        self._spent = Spend()
        self._reserved = Spend()
        self._in_flight = 0
        self._open: set[int] = set()
        self._models: dict[str, ModelBill] = {}
        self._escalations = 0
        self._routes: dict[str, int] = {}
        self._degradations: list[str] = []

    def __repr__(self) -> str:
        return f"Budget(name={self.name!r}, limits={self.limits!r}, policy={self.policy!r}, spent={self._spent!r})"

    def child(
        self,
        limits: BudgetLimits = DEFAULT_BUDGET_LIMITS,
        *,
        name: str | None = None,
        policy: BudgetPolicy | None = None,
    ) -> Budget:
        """A nested scope that spends from this one (and its parents)."""
        return Budget(
            limits,
            policy=policy or self.policy,
            clock=self._clock,
            tokenizer=self._tokenizer,
            name=name or f"{self.name}/child",
            parent=self,
            wait_s=self.wait_s,
        )

    def chain(self) -> Iterator[Budget]:
        b: Budget | None = self
        while b is not None:
            yield b
            b = b.parent

    @property
    def degrades(self) -> bool:
        return self.policy == "degrade"

    @property
    def spent(self) -> Spend:
        return self._spent

    @property
    def reserved(self) -> Spend:
        return self._reserved

    def elapsed(self) -> float:
        return self._clock() - self._start

    def remaining(self) -> dict[str, float | None]:
        """What is left under each limit of this scope (None = unlimited), counting calls in flight."""
        used = self._spent + self._reserved
        out: dict[str, float | None] = {}
        for key in CHECKED:
            lim = getattr(self.limits, key)
            out[key] = None if lim is None else lim - getattr(used, key)
        lim_t = self.limits.wall_time_s
        out["wall_time_s"] = None if lim_t is None else lim_t - self.elapsed()
        return out

    # -- pricing ---------------------------------------------------------------------------------

    def _needs_catalog(self) -> str | None:
        for b in self.chain():
            need = b.limits.needs_catalog
            if need is not None:
                return need
        return None

    def spec_for(self, model: Model | str | ModelSpec) -> ModelSpec | None:
        """The catalog entry used to count `model`; None when unknown and no limit needs it.

        A model that stands for others (a Router) names the one it calls first in `counted_as`."""
        if isinstance(model, ModelSpec):
            return model
        if isinstance(model, BudgetedModel):
            return model.spec
        stand_in = getattr(model, "counted_as", None)
        if isinstance(stand_in, Model):
            return self.spec_for(stand_in)
        name = model if isinstance(model, str) else model.name
        try:
            return get_model(name)
        except UnknownModelError as e:
            need = self._needs_catalog()
            if need is not None:
                raise UncountableModelError(name, [m.name for m in list_models()], need) from e
            return None

    def estimate(self, request: ChatRequest, model: Model | str | ModelSpec) -> Spend:
        """The worst case of `request` on `model`: estimated prompt tokens plus `max_tokens`."""
        prompt = estimate_prompt_tokens(request, self._tokenizer)
        return spend_for(self.spec_for(model), prompt, request.max_tokens)

    # -- checking and reserving ------------------------------------------------------------------

    def _violation(
        self, ask: Spend, max_tokens: int, *, in_flight: bool = True
    ) -> tuple[Budget, str, float, float] | None:
        """The first (scope, limit, allowed, would-be) that `ask` would break, across the chain
        (`in_flight=False`: as if every call in flight settled for nothing)."""
        for b in self.chain():
            used = b._spent + b._reserved + ask if in_flight else b._spent + ask
            bad = limit_broken(b.limits, used, max_tokens, b.elapsed)
            if bad is not None:
                return b, *bad
        return None

    def can_afford(self, request: ChatRequest, model: Model | str | ModelSpec) -> bool:
        """Whether the worst case of `request` on `model` fits every scope now (counting calls in flight)."""
        return self._violation(self.estimate(request, model), request.max_tokens) is None

    def affordable(self, request: ChatRequest, model: Model | str | ModelSpec, n: int) -> int:
        """How many (at most `n`) concurrent calls of `request` on `model` fit now."""
        ask = self.estimate(request, model)
        k = 0
        while k < n and self._violation(ask.scaled(k + 1), request.max_tokens) is None:
            k += 1
        return k

    def _ask(self, request: ChatRequest, model: Model | str | ModelSpec) -> tuple[str, ModelSpec | None, Spend]:
        spec = self.spec_for(model)
        name = model.name if isinstance(model, ModelSpec) else model if isinstance(model, str) else model.name
        return name, spec, spend_for(spec, estimate_prompt_tokens(request, self._tokenizer), request.max_tokens)

    def reserve(self, request: ChatRequest, model: Model | str | ModelSpec) -> Reservation:
        """Book the worst case of `request` on this scope and all parents, or raise BudgetExceeded at once.

        Check and booking happen with no await in between, so it is atomic under asyncio.
        """
        name, spec, ask = self._ask(request, model)
        bad = self._violation(ask, request.max_tokens)
        if bad is not None:
            raise self._exceeded(bad, ask, request, name)
        return self._book(name, spec, ask, request.max_tokens)

    def _book(self, name: str, spec: ModelSpec | None, ask: Spend, max_tokens: int) -> Reservation:
        for b in self.chain():
            b._reserved = b._reserved + ask
            b._in_flight += 1
        res = Reservation(self, name, spec, ask, max_tokens)
        self._open.add(res.id)
        return res

    async def acquire(self, request: ChatRequest, model: Model | str | ModelSpec) -> Reservation:
        """`reserve()`, except that a call breaking a cap only because of calls still in flight waits for
        them to settle, then is decided on what they really spent (see the module doc). Cancellable."""
        name, spec, ask = self._ask(request, model)
        mt = request.max_tokens
        loop = asyncio.get_running_loop()
        since = loop.time()
        while True:
            bad = self._violation(ask, mt)
            if bad is None:
                return self._book(name, spec, ask, mt)
            never = self._violation(ask, mt, in_flight=False)
            if never is not None or self.wait_s <= 0:
                raise self._exceeded(never or bad, ask, request, name)
            if loop.time() - max(since, bad[0]._settled_at) >= self.wait_s:
                raise self._exceeded(bad, ask, request, name, waited=self.wait_s)
            waiter = _Waiter(self, name, spec, ask, mt, loop.create_future())
            bad[0]._queue.append(waiter)
            try:
                async with asyncio.timeout(self.wait_s):
                    await waiter.future
            except TimeoutError:
                pass  # decided again below: served if it fits, failed if nothing settled
            except BaseException:
                booked = _booked(waiter)
                if booked is not None:  # booked for us just as we were cancelled
                    self.cancel(booked)
                raise
            booked = _booked(waiter)
            if booked is not None:
                return booked

    def _serve_queue(self, now: float) -> None:
        """After a settlement: book the waiters at the head of this scope's queue that fit now, in order."""
        self._settled_at = now
        q = self._queue
        while q:
            w = q[0]
            if w.future.done():  # timed out or cancelled
                q.popleft()
                continue
            bad = w.budget._violation(w.ask, w.max_tokens)
            if bad is None:
                q.popleft()
                w.future.set_result(w.budget._book(w.model, w.spec, w.ask, w.max_tokens))
            elif w.budget._violation(w.ask, w.max_tokens, in_flight=False) is not None:
                q.popleft()
                w.future.set_result(None)  # it can no longer fit: it fails when it wakes
            elif bad[0] is not self:  # now blocked by calls in flight of another scope: wait there
                q.popleft()
                bad[0]._queue.append(w)
            else:
                return

    def _wake(self, res: Reservation) -> None:
        try:
            now = asyncio.get_running_loop().time()
        except RuntimeError:  # settled outside an event loop: nobody can be waiting
            return
        for b in res.budget.chain():
            b._serve_queue(now)

    def _exceeded(
        self,
        bad: tuple[Budget, str, float, float],
        ask: Spend,
        request: ChatRequest,
        model: str,
        *,
        waited: float | None = None,
    ) -> BudgetExceeded:
        scope, key, allowed, would = bad
        if key == "wall_time_s":
            fix = "raise BudgetLimits.wall_time_s, or start a new budget scope"
            what = f"its wall time is up ({would:.3g}s of {allowed:.3g}s)"
        elif key == "max_tokens_per_call":
            fix = f"lower the request's max_tokens to <= {allowed:g}, or raise BudgetLimits.max_tokens_per_call"
            what = f"the call asks for max_tokens={request.max_tokens}, above max_tokens_per_call={allowed:g}"
        elif waited is not None:
            fix = f"raise Budget(wait_s=...) (now {waited:g}), or give the calls in flight a timeout"
            what = (
                f"{key} would reach {would:.6g} with the calls in flight (limit {allowed:.6g}), and none of them "
                f"settled in {waited:g} s of waiting"
            )
        else:
            fix = f"raise BudgetLimits.{key}"
            if key != "requests":
                fix += f", or lower the request's max_tokens (now {request.max_tokens})"
            what = (
                f"{key} would reach {would:.6g} with this call (limit {allowed:.6g}; spent "
                f"{getattr(scope._spent, key):.6g}, reserved by calls in flight {getattr(scope._reserved, key):.6g}, "
                f"this call asks up to {getattr(ask, key):.6g})"
            )
        return BudgetExceeded(
            f"budget {scope.name!r}: a call to {model!r} would break the {key} limit: {what}. Fix: {fix}",
            limit=key,
            spent=scope._spent.as_dict(),
            asked=ask.as_dict(),
            allowed=float(allowed),
        )

    def _release(self, res: Reservation) -> None:
        if res.id not in self._open:
            raise ConfigError(
                f"reservation {res.id} for {res.model!r} was already settled or cancelled: settle, fail or "
                "cancel each reservation exactly once"
            )
        self._open.discard(res.id)
        for b in self.chain():
            b._in_flight -= 1
            b._reserved = Spend() if b._in_flight == 0 else b._reserved - res.ask

    def _charge(self, model: str, spend: Spend, bill: ModelBill) -> None:
        for b in self.chain():
            b._spent = b._spent + spend
            b._models[model] = b._models[model] + bill if model in b._models else bill

    def settle(self, res: Reservation, completion: Completion | Usage) -> Spend:
        """Release `res` and charge the actual usage (even above the reservation: that is an overshoot).

        A cached completion costs nothing; one whose server reported no usage (`meta["usage_missing"]`)
        is charged its reserved worst case."""
        try:
            return self._settle(res, completion)
        finally:
            self._wake(res)

    def _settle(self, res: Reservation, completion: Completion | Usage) -> Spend:
        res.budget._release(res)
        spent, bill = settlement(res.spec, res.ask, res.max_tokens, completion)
        res.budget._charge(res.model, spent, bill)
        return spent

    def fail(self, res: Reservation, usage: Usage | None = None) -> None:
        """Release `res` for a call that raised. It is charged exactly what the error says the call spent
        (`usage`: a ModelClient error counts every attempt that reached the server, a StructuredOutputError its
        invalid answers too; `Usage()` when no attempt reached a server), or, when the error does not say, one
        request and no tokens."""
        res.budget._release(res)
        res.budget._charge(res.model, *failure_charge(res.spec, usage))
        self._wake(res)

    def cancel(self, res: Reservation) -> None:
        """Release `res` for a call that never reached a server; nothing is charged."""
        res.budget._release(res)
        self._wake(res)

    # -- wrapping and reporting ------------------------------------------------------------------

    def wrap(self, model: Model, *, spec: ModelSpec | str | None = None) -> BudgetedModel:
        """`model` with every call reserved and settled on this budget. `spec` names the catalog
        entry to count it by (default: its name). Raises UncountableModelError now, not at the
        first call, when FLOPs or dollars are limited and the model is not in the catalog."""
        resolved = get_model(spec) if isinstance(spec, str) else spec
        if resolved is None:
            resolved = self.spec_for(model)
        return BudgetedModel(model, self, resolved)

    def record_escalation(self, from_model: str, to_model: str) -> None:
        """Count an escalation, in total and by route (`"small -> large"`), here and in every parent."""
        route = f"{from_model} -> {to_model}"
        for b in self.chain():
            b._escalations += 1
            b._routes[route] = b._routes.get(route, 0) + 1

    def record_degradation(self, reason: str) -> None:
        for b in self.chain():
            b._degradations.append(reason)

    def bill(self) -> Bill:
        return Bill(
            dict(self._models),
            self.elapsed(),
            self._escalations,
            tuple(self._degradations),
            escalation_routes=dict(self._routes),
        )


class BudgetedModel:
    """A Model whose every call reserves its worst case on a budget first and settles after."""

    def __init__(self, inner: Model, budget: Budget, spec: ModelSpec | None) -> None:
        self.inner = inner
        self.budget = budget
        self.spec = spec

    @property
    def name(self) -> str:
        return self.inner.name

    def __repr__(self) -> str:
        return f"BudgetedModel({self.inner!r}, budget={self.budget.name!r})"

    async def complete(self, request: ChatRequest) -> Completion:
        res = await self.budget.acquire(request, self)
        try:
            completion = await self.inner.complete(request)
        except BudgetExceeded:
            self.budget.cancel(res)
            raise
        except Exception as e:
            usage = getattr(e, "usage", None)  # an error may say what the failed call still spent
            self.budget.fail(res, usage if isinstance(usage, Usage) else None)
            raise
        except BaseException:  # cancelled: the server may have started, but we cannot know its usage
            self.budget.cancel(res)
            raise
        self.budget.settle(res, completion)
        return completion


def _booked(waiter: _Waiter) -> Reservation | None:
    f = waiter.future
    return f.result() if f.done() and not f.cancelled() else None
