"""Small frozen settings for the model client, with module-level defaults (like httpx's `Timeout`).

- `RetryPolicy`: how often and how long a failed request is retried (connection errors, timeouts, 429, 5xx);
  its bounds and backoff are tenacity's own strategies, shared with a graph node's `NodeRetry`.
- `DEFAULT_RETRY` / `NO_RETRY`: the two policies most callers want.
- `CircuitBreaker` / `DEFAULT_CIRCUIT`: when a client stops calling a server that keeps failing, and for how
  long; `Circuit` is the state one policy drives for one client (one server), on the client's clock.
- `DEFAULT_POOL_LIMITS`: the connection pool of the one `httpx.AsyncClient` a `ModelClient` owns.
- `DEFAULT_TIMEOUT_S`, `DEFAULT_CONNECT_TIMEOUT_S`, `DEFAULT_MAX_IN_FLIGHT`, `DEFAULT_STRUCTURED_RETRIES`,
  `DEFAULT_MAX_RESPONSE_BYTES`.
- `check_k`: the one check of a retrieval depth (how many paragraphs a model reads).
"""

from __future__ import annotations

import json
import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Literal, TypeVar

import httpx
from tenacity import stop_after_attempt, stop_before_delay, wait_exponential
from tenacity.stop import stop_base
from tenacity.wait import wait_base

from ._exceptions import CircuitOpenError, ConfigError, ModelError

__all__ = [
    "DEFAULT_CIRCUIT",
    "DEFAULT_CONNECT_TIMEOUT_S",
    "DEFAULT_MAX_IN_FLIGHT",
    "DEFAULT_MAX_RESPONSE_BYTES",
    "DEFAULT_POOL_LIMITS",
    "DEFAULT_RETRY",
    "DEFAULT_STRUCTURED_RETRIES",
    "DEFAULT_TIMEOUT_S",
    "NO_RETRY",
    "Circuit",
    "CircuitBreaker",
    "CircuitState",
    "RetryPolicy",
    "check_k",
]

DEFAULT_TIMEOUT_S = 120.0
"""Per-request timeout (seconds): a CPU server writing a few hundred tokens needs tens of seconds."""

DEFAULT_CONNECT_TIMEOUT_S = 10.0
"""Connecting to a loopback server is instant; a slow connect means nothing is listening."""

DEFAULT_MAX_IN_FLIGHT = 4
"""Requests in flight per client (per server): a 2-core llama.cpp server serves one at a time anyway."""

DEFAULT_STRUCTURED_RETRIES = 2
"""Extra attempts for a structured answer that came back truncated or invalid."""

DEFAULT_MAX_RESPONSE_BYTES = 8 * 1024 * 1024
"""The largest answer body a `ModelClient` reads (8 MB): a completion of thousands of tokens with logprobs is a
few hundred kB; a larger body is a misbehaving server, refused before it fills the memory."""

DEFAULT_POOL_LIMITS = httpx.Limits(max_connections=32, max_keepalive_connections=8, keepalive_expiry=30.0)
"""The connection pool of the `httpx.AsyncClient` a `ModelClient` owns (budget limits are `BudgetLimits`)."""


@dataclass(frozen=True, slots=True)
class _Retry:
    """What `RetryPolicy` and `NodeRetry` share: two bounds and an exponential backoff, built from tenacity's
    own strategies (`stop_after_attempt | stop_before_delay`, `wait_exponential`)."""

    max_attempts: int = 4
    max_total_s: float = 300.0
    initial_backoff_s: float = 0.5
    multiplier: float = 2.0
    max_backoff_s: float = 8.0

    def __post_init__(self) -> None:
        name = type(self).__name__
        if self.max_attempts < 1:
            raise ConfigError(
                f"{name}(max_attempts={self.max_attempts}) must be at least 1 (1 means no retry): "
                "pass max_attempts=1 or more"
            )
        for seconds in (f.name for f in fields(self) if f.name.endswith("_s")):
            if getattr(self, seconds) < 0:
                raise ConfigError(f"{name}({seconds}={getattr(self, seconds)}) must not be negative: pass 0 or more")
        if self.multiplier < 1:
            raise ConfigError(f"{name}(multiplier={self.multiplier}) must be at least 1: pass 1 or more")

    def stop(self) -> stop_base:
        """Stop after `max_attempts` attempts, or before a wait that would end `max_total_s` or more after the
        first attempt started (tenacity's `stop_before_delay`: an attempt already started is not cut short)."""
        return stop_after_attempt(self.max_attempts) | stop_before_delay(self.max_total_s)

    def backoff(self) -> wait_base:
        """Wait `min(max_backoff_s, initial_backoff_s * multiplier**(n-1))` after failed attempt n."""
        return wait_exponential(multiplier=self.initial_backoff_s, max=self.max_backoff_s, exp_base=self.multiplier)


@dataclass(frozen=True, slots=True)
class RetryPolicy(_Retry):
    """Retries of one request on connection errors, timeouts, HTTP 429 and HTTP 5xx.

    Bounded twice: at most `max_attempts` attempts (the first one included), and no retry is started whose
    wait would end `max_total_s` seconds or more after the first attempt started. The wait before attempt n+1
    is `max(Retry-After, min(max_backoff_s, initial_backoff_s * multiplier**(n-1)))`; a Retry-After longer
    than `max_retry_after_s` (or than the time left) is not waited for: the RateLimitedError is raised.
    Other HTTP 4xx and malformed answers are never retried. The default total (300 s) leaves room to retry
    a request that timed out after the default 120 s timeout once; an attempt already started is not cut
    short by the total (its own timeout bounds it).
    """

    max_retry_after_s: float = 30.0


DEFAULT_RETRY = RetryPolicy()
NO_RETRY = RetryPolicy(max_attempts=1)


# --- circuit breaking ----------------------------------------------------------------------------

CircuitState = Literal["closed", "open", "half-open"]
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class CircuitBreaker:
    """When a `ModelClient` stops calling a server that keeps failing, and for how long (one circuit per
    client, so per server).

    Closed, calls go through. A call that fails on the server's side after its retries (a connection error,
    a timeout, HTTP 429 or 5xx: what `RetryPolicy` retries) counts one failure; any answer from the server
    (a 4xx too: that is the request's fault, not the server's) resets the count. After `failures` failed
    calls in a row the circuit opens: every call raises `CircuitOpenError` at once, without reaching the
    server, for `cooldown_s` seconds. Then it is half-open: `probes` calls go through with one attempt each
    (no retries; the others still fail fast); a probe the server answers closes the circuit, one that fails
    opens it for another cool-down.
    """

    failures: int = 5
    cooldown_s: float = 30.0
    probes: int = 1

    def __post_init__(self) -> None:
        for name in ("failures", "probes"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"CircuitBreaker({name}={value!r}) must be a whole number >= 1: pass 1 or more")
        if not (isinstance(self.cooldown_s, int | float) and math.isfinite(self.cooldown_s) and self.cooldown_s >= 0):
            raise ConfigError(
                f"CircuitBreaker(cooldown_s={self.cooldown_s!r}) must be a finite number of seconds >= 0: "
                "pass e.g. 30.0"
            )


DEFAULT_CIRCUIT = CircuitBreaker()
"""Five failed calls in a row open the circuit for 30 s: with `DEFAULT_RETRY` that is 20 failed attempts."""


class Circuit:
    """The circuit of one client (one server): its state under a `CircuitBreaker`, on the client's clock.

    The client makes every attempt through `call()` (which asks `admit()` first) and reports every call that
    gave up on the server after its retries (`gave_up()`).
    """

    def __init__(self, policy: CircuitBreaker, clock: Callable[[], float], *, url: str, model: str) -> None:
        self.policy = policy
        self.failures = 0
        """Calls in a row that failed on the server's side."""
        self.opened_at: float | None = None
        self.last_error = ""
        self._clock = clock
        self._probes = 0
        self._url = url
        self._model = model

    @property
    def state(self) -> CircuitState:
        retry_at = self.retry_at
        if retry_at is None:
            return "closed"
        return "open" if self._clock() < retry_at else "half-open"

    @property
    def retry_at(self) -> float | None:
        """When an open circuit lets a probe through (on the client's clock); None when closed."""
        return None if self.opened_at is None else self.opened_at + self.policy.cooldown_s

    def __repr__(self) -> str:
        return f"Circuit({self._url!r}, state={self.state!r}, failures={self.failures})"

    def admit(self) -> bool:
        """Before an attempt: True when it is a half-open circuit's probe, False when the circuit is closed;
        CircuitOpenError (nothing is sent) when it is open, or half-open with its probes all in flight."""
        retry_at = self.retry_at
        if retry_at is None:
            return False
        now = self._clock()
        if now >= retry_at and self._probes < self.policy.probes:
            self._probes += 1
            return True
        wait = max(0.0, retry_at - now)
        when = (
            f"until it half-opens in {wait:.1f} s"
            if wait > 0
            else "while the probe call sent to check whether it is back is in flight"
        )
        raise CircuitOpenError(
            f"the circuit to the model server at {self._url} is open: {self.failures} call(s) in a row failed "
            f"there (the last: {self.last_error}), so calls fail at once, without reaching it, {when}. Fix: "
            f"check that the server is up (start one with `agentflow serve {self._model}`), or let a Router or "
            "Cascade fall back to its next rung; ModelClient(circuit=CircuitBreaker(...)) changes the bounds, "
            "circuit=None turns circuit breaking off",
            failures=self.failures,
            retry_at=retry_at,
            retry_in_s=wait,
            url=self._url,
        )

    async def call(self, attempt: Callable[[], Awaitable[T]], probe: list[bool]) -> T:
        """Make one attempt through the circuit (`admit()` first) and learn from it: any answer from the server
        closes the circuit and starts the count over; a failed probe opens it again at once. `probe[0]` is set
        to whether the attempt is a half-open circuit's probe."""
        probe[0] = False
        probe[0] = self.admit()
        try:
            out = await attempt()
        except ModelError as exc:
            if exc.retryable:
                self._failed(probe[0])
            else:
                self._answered(probe[0])  # a 4xx or a malformed body: the server is there
            raise
        except BaseException:  # cancelled: nothing learnt about the server
            self._release(probe[0])
            raise
        self._answered(probe[0])
        return out

    def gave_up(self, error: ModelError) -> None:
        """A call failed on the server's side after its retries: one failure more; at `failures`, it opens."""
        self.failures += 1
        self.last_error = type(error).__name__ + (f" HTTP {error.status_code}" if error.status_code else "")
        if self.opened_at is None and self.failures >= self.policy.failures:
            self.opened_at = self._clock()

    def _answered(self, probe: bool) -> None:
        self._release(probe)
        self.failures = 0
        self.opened_at = None

    def _failed(self, probe: bool) -> None:
        if probe:
            self._release(probe)
            self.opened_at = self._clock()

    def _release(self, probe: bool) -> None:
        if probe:
            self._probes -= 1


def check_k(k: int, *, name: str = "k") -> int:
    """`k`, when it is a valid retrieval depth (how many paragraphs a model reads: a whole number >= 1);
    otherwise a ConfigError that says so. The one check behind every `k` and `retrieve_k`."""
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ConfigError(
            f"{name} must be >= 1, got {k!r}: pass how many paragraphs the model should read (k >= 1, e.g. 2)"
        )
    return k


def check_fallback_on(fallback_on: object) -> tuple[type[ModelError], ...]:
    """`fallback_on`, when it is a tuple of ModelError classes (the errors on which a router or cascade
    hands a question to the next rung); otherwise a ConfigError that says what to pass."""
    if not isinstance(fallback_on, tuple) or not all(
        isinstance(e, type) and issubclass(e, ModelError) for e in fallback_on
    ):
        raise ConfigError(
            f"fallback_on must be a tuple of ModelError classes, got {fallback_on!r}: pass e.g. "
            "(ServerUnavailableError, ModelTimeoutError), or () to never fall back"
        )
    return fallback_on


def load_json_file(path: str | Path, *, what: str, missing: str, invalid: str) -> Any:
    """The JSON in `path`; a ConfigError naming `what` and the fix (`missing`, `invalid`) when it is absent
    or does not parse. The one reader behind saved thresholds and learned confidences."""
    p = Path(path)
    try:
        return json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{what} {str(p)!r} does not exist: {missing}") from None
    except json.JSONDecodeError as e:
        raise ConfigError(f"{what} {str(p)!r} is not valid JSON ({e}): {invalid}") from e
