"""Small frozen settings for the model client, with module-level defaults (like httpx's `Timeout`).

- `RetryPolicy`: how often and how long a failed request is retried (connection errors, timeouts, 429, 5xx).
- `DEFAULT_RETRY` / `NO_RETRY`: the two policies most callers want.
- `DEFAULT_LIMITS`: the connection pool of the one `httpx.AsyncClient` a `ModelClient` owns.
- `DEFAULT_TIMEOUT_S`, `DEFAULT_CONNECT_TIMEOUT_S`, `DEFAULT_MAX_IN_FLIGHT`, `DEFAULT_STRUCTURED_RETRIES`.
"""

from __future__ import annotations

from dataclasses import dataclass

import httpx

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
class RetryPolicy:
    """Retries of one request on connection errors, timeouts, HTTP 429 and HTTP 5xx.

    Bounded twice: at most `max_attempts` attempts (the first one included), and no retry is started that
    would end its wait after `max_total_s` seconds from the first attempt. The wait before attempt n+1 is
    `max(Retry-After, min(max_backoff_s, initial_backoff_s * multiplier**(n-1)))`; a Retry-After longer
    than `max_retry_after_s` (or than the time left) is not waited for: the RateLimitedError is raised.
    Other HTTP 4xx and malformed answers are never retried. The default total (300 s) leaves room to retry
    a request that timed out after the default 120 s timeout once; an attempt already started is not cut
    short by the total (its own timeout bounds it).
    """

    max_attempts: int = 4
    max_total_s: float = 300.0
    initial_backoff_s: float = 0.5
    multiplier: float = 2.0
    max_backoff_s: float = 8.0
    max_retry_after_s: float = 30.0

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ConfigError(
                f"RetryPolicy(max_attempts={self.max_attempts}) must be at least 1 (1 means no retry): "
                "pass max_attempts=1 or more, or use agentflow.NO_RETRY"
            )
        for name in ("max_total_s", "initial_backoff_s", "max_backoff_s", "max_retry_after_s"):
            if getattr(self, name) < 0:
                raise ConfigError(f"RetryPolicy({name}={getattr(self, name)}) must not be negative: pass 0 or more")
        if self.multiplier < 1:
            raise ConfigError(f"RetryPolicy(multiplier={self.multiplier}) must be at least 1: pass 1 or more")

    def backoff(self, attempt: int) -> float:
        """The exponential backoff after failed attempt number `attempt` (1-based)."""
        return min(self.max_backoff_s, self.initial_backoff_s * self.multiplier ** max(0, attempt - 1))


DEFAULT_RETRY = RetryPolicy()
NO_RETRY = RetryPolicy(max_attempts=1)
