"""Small frozen settings for the model client, with module-level defaults (like httpx's `Timeout`).

- `RetryPolicy`: how often and how long a failed request is retried (connection errors, timeouts, 429, 5xx);
  its bounds and backoff are tenacity's own strategies, shared with a graph node's `NodeRetry`.
- `DEFAULT_RETRY` / `NO_RETRY`: the two policies most callers want.
- `DEFAULT_LIMITS`: the connection pool of the one `httpx.AsyncClient` a `ModelClient` owns.
- `DEFAULT_TIMEOUT_S`, `DEFAULT_CONNECT_TIMEOUT_S`, `DEFAULT_MAX_IN_FLIGHT`, `DEFAULT_STRUCTURED_RETRIES`.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import httpx
from tenacity import stop_after_attempt, stop_before_delay, wait_exponential
from tenacity.stop import stop_base
from tenacity.wait import wait_base

from ._exceptions import ConfigError

__all__ = [
    "DEFAULT_CONNECT_TIMEOUT_S",
    "DEFAULT_LIMITS",
    "DEFAULT_MAX_IN_FLIGHT",
    "DEFAULT_RETRY",
    "DEFAULT_STRUCTURED_RETRIES",
    "DEFAULT_TIMEOUT_S",
    "NO_RETRY",
    "RetryPolicy",
]

DEFAULT_TIMEOUT_S = 120.0
"""Per-request timeout (seconds): a CPU server writing a few hundred tokens needs tens of seconds."""

DEFAULT_CONNECT_TIMEOUT_S = 10.0
"""Connecting to a loopback server is instant; a slow connect means nothing is listening."""

DEFAULT_MAX_IN_FLIGHT = 4
"""Requests in flight per client (per server): a 2-core llama.cpp server serves one at a time anyway."""

DEFAULT_STRUCTURED_RETRIES = 2
"""Extra attempts for a structured answer that came back truncated or invalid."""

DEFAULT_LIMITS = httpx.Limits(max_connections=32, max_keepalive_connections=8, keepalive_expiry=30.0)


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
