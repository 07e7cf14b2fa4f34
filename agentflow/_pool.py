"""`ReplicaPool`: one model served by several replicas (servers), itself a `Model`.

    async with ReplicaPool.from_urls([url_a, url_b, url_c], "qwen-7b", dialect="vllm") as pool:
        done = await pool.chat("Capital of France? One word.", max_tokens=8)
        done.meta["replica"], pool.describe()   # who answered; per replica: state, in flight, served, load

A request goes to the replica with the fewest of the pool's requests in flight; ties go to the least loaded by
its own `/metrics` (vLLM's requests running + waiting, then KV cache usage; llama.cpp's own names too), then
in turn. A request that failed before an answer came back (no connection, a reset, a timeout, HTTP 5xx or
429, an open circuit: asking again is safe) goes to another replica, each at most once; any other error (a
4xx, a body that is not a completion, invalid structured output) is the request's and is raised at once.
The replica that failed (on anything but a 429) is drained until a health probe (`GET /models` naming the
model) succeeds while its client's circuit is not open; then it rejoins. Probes are due every
`probe_interval_s`: a request starts the due ones in the background (and waits for them when no replica is
up), `await pool.check()` runs them all now. A replica with requests in flight is judged by how they end, not
by a probe that timed out behind them (llama.cpp's server answers `/models` only between completions).
An answer's `usage` (an error's too) counts the attempts that failed elsewhere first, so budgets bill them.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any, Literal

import httpx

from ._client import ModelClient, _display, _request
from ._config import NO_RETRY, RetryPolicy
from ._exceptions import (
    ConfigError,
    ModelError,
    ModelTimeoutError,
    RateLimitedError,
    ServerError,
    ServerUnavailableError,
    StructuredOutputError,
)
from ._types import ChatRequest, Completion, Message, Usage

__all__ = ["ReplicaLoad", "ReplicaPool", "ReplicaStats", "parse_load"]

logger = logging.getLogger("agentflow.pool")

DEFAULT_PROBE_INTERVAL_S = 5.0
"""How often a replica is probed (a drained one for rejoining, an idle one for health) and its load read."""
DEFAULT_PROBE_TIMEOUT_S = 5.0
"""One probe's timeout: an idle server on a reachable machine answers `/models` in milliseconds."""

ReplicaState = Literal["up", "drained"]

_MOVE = (ServerUnavailableError, ModelTimeoutError, ServerError, RateLimitedError)  # no answer came back
_DRAIN = (ServerUnavailableError, ModelTimeoutError, ServerError)  # ... and the server is to blame
_RUNNING = ("vllm:num_requests_running", "llamacpp:requests_processing")
_WAITING = ("vllm:num_requests_waiting", "llamacpp:requests_deferred")
_KV_CACHE = ("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc", "llamacpp:kv_cache_usage_ratio")
_SAMPLE = re.compile(r'^([A-Za-z_:][A-Za-z0-9_:]*)(?:\{(?:[^}"]|"(?:[^"\\]|\\.)*")*\})?\s+(\S+)')


@dataclass(frozen=True, slots=True)
class ReplicaLoad:
    """What a replica's own `/metrics` said: requests running and waiting, and the KV cache's used share (0-1)."""

    running: float = 0.0
    waiting: float = 0.0
    kv_cache: float = 0.0


def parse_load(text: str) -> ReplicaLoad | None:
    """The load in a Prometheus text exposition, summed over label sets (the KV cache: the fullest);
    None when the text has none of vLLM's (or llama.cpp's own server's) load metrics."""
    seen: dict[str, float] = {}
    for line in text.splitlines():
        match = _SAMPLE.match(line)  # comments (# HELP, # TYPE) and blank lines do not match
        if match is None:
            continue
        try:
            value = float(match[2])
        except ValueError:
            continue
        name = match[1]
        if math.isnan(value) or name not in (*_RUNNING, *_WAITING, *_KV_CACHE):
            continue
        seen[name] = max(seen.get(name, 0.0), value) if name in _KV_CACHE else seen.get(name, 0.0) + value
    if not seen:
        return None

    def first(names: tuple[str, ...]) -> float:
        return next((seen[n] for n in names if n in seen), 0.0)

    return ReplicaLoad(first(_RUNNING), first(_WAITING), first(_KV_CACHE))


@dataclass(frozen=True, slots=True)
class ReplicaStats:
    """A snapshot of one replica. `failures`: requests that failed there (then sent elsewhere, or raised);
    `drains`: how often it was drained; `circuit`: its client's circuit state (None without one); `load`:
    what its `/metrics` said at the last probe (None when it has none)."""

    url: str
    state: ReplicaState
    in_flight: int
    served: int
    failures: int
    drains: int
    last_error: str
    circuit: str | None
    load: ReplicaLoad | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class _Replica:
    def __init__(self, client: ModelClient, next_check: float) -> None:
        self.client = client
        self.url = _display(client.base_url)
        self.state: ReplicaState = "up"
        self.in_flight = self.served = self.failures = self.drains = 0
        self.last_error = ""
        self.load: ReplicaLoad | None = None
        self.has_metrics = True  # until a /metrics request says otherwise
        self.next_check = next_check
        self.checking: asyncio.Task[None] | None = None

    def stats(self) -> ReplicaStats:
        circuit = None if self.client.circuit is None else self.client.circuit.state
        s = (self.url, self.state, self.in_flight, self.served, self.failures, self.drains, self.last_error, circuit)
        return ReplicaStats(*s, self.load)


class ReplicaPool:
    """One model behind several `ModelClient`s (one per replica), itself a `Model`.

    The clients must serve the same model name at different URLs. Clients you pass stay yours (the pool does
    not close them); `from_urls` builds clients that the pool owns and closes. `clock` is the one the
    clients' circuits read (probe times are on it too).
    """

    def __init__(
        self,
        replicas: Sequence[ModelClient],
        *,
        probe_interval_s: float = DEFAULT_PROBE_INTERVAL_S,
        probe_timeout_s: float = DEFAULT_PROBE_TIMEOUT_S,
        metrics: bool = True,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        clients = list(replicas)
        if not clients or not all(isinstance(c, ModelClient) for c in clients):
            raise ConfigError(
                "ReplicaPool needs one or more ModelClients, one per replica: pass [ModelClient(...), ...]"
            )
        names = sorted({c.name for c in clients})
        if len(names) > 1:
            raise ConfigError(f"the replicas serve different models {names}: a pool is one model; make one per model")
        urls = [_display(c.base_url) for c in clients]
        if len(set(urls)) < len(urls):
            raise ConfigError(f"a replica is listed twice in {urls}: give each server once")
        for label, value in (("probe_interval_s", probe_interval_s), ("probe_timeout_s", probe_timeout_s)):
            if not value > 0:
                raise ConfigError(f"{label}={value!r} must be a positive number of seconds: pass e.g. 5.0")
        self._name = names[0]
        self._interval = probe_interval_s
        self._probe_timeout = httpx.Timeout(probe_timeout_s)
        self._metrics = metrics
        self._clock = clock
        self._replicas = [_Replica(c, clock() + probe_interval_s) for c in clients]
        self._turn = 0  # where the next tie starts: ties go round in turn
        self._tasks: set[asyncio.Task[None]] = set()
        self._owns_clients = False

    @classmethod
    def from_urls(
        cls,
        base_urls: Sequence[str],
        model: str,
        *,
        retry: RetryPolicy = NO_RETRY,
        probe_interval_s: float = DEFAULT_PROBE_INTERVAL_S,
        probe_timeout_s: float = DEFAULT_PROBE_TIMEOUT_S,
        metrics: bool = True,
        clock: Callable[[], float] = time.monotonic,
        **settings: Any,
    ) -> ReplicaPool:
        """A pool of one `ModelClient(url, model, retry=retry, clock=clock, **settings)` per URL (`settings`:
        dialect, api_key, timeout, max_in_flight, circuit, transport, http, sleep...). `retry` defaults to one
        attempt per replica: a failed request moves to another replica at once instead of waiting to retry; and
        the pool's drain and health probes stand in for each client's circuit (`circuit=None` unless you pass
        one; a circuit opened by a crash would keep a restarted replica out for its whole cool-down)."""
        if isinstance(base_urls, str):
            raise ConfigError(f"base_urls is one string {_display(base_urls)!r}: pass a list of URLs, one per replica")
        settings.setdefault("circuit", None)
        clients = [ModelClient(url, model, retry=retry, clock=clock, **settings) for url in base_urls]
        pool = cls(
            clients, probe_interval_s=probe_interval_s, probe_timeout_s=probe_timeout_s, metrics=metrics, clock=clock
        )
        pool._owns_clients = True
        return pool

    # --- identity and state ----------------------------------------------------------------------

    @property
    def name(self) -> str:
        return self._name

    def describe(self) -> tuple[ReplicaStats, ...]:
        """One snapshot per replica, in the order given."""
        return tuple(r.stats() for r in self._replicas)

    def __repr__(self) -> str:
        up = sum(r.state == "up" for r in self._replicas)
        return f"ReplicaPool({self._name!r}, {up} of {len(self._replicas)} up: {[r.url for r in self._replicas]})"

    # --- lifecycle -------------------------------------------------------------------------------

    async def aclose(self) -> None:
        """Stop the probes under way, and close the clients the pool built (`from_urls`)."""
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._owns_clients:
            await asyncio.gather(*(r.client.aclose() for r in self._replicas))

    async def __aenter__(self) -> ReplicaPool:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    # --- the Model protocol ----------------------------------------------------------------------

    async def complete(self, request: ChatRequest) -> Completion:
        """Answer on the least busy replica that is up; on a failure before an answer, on another one."""
        await self._check_due()
        spent = Usage()
        failed: list[tuple[_Replica, ModelError]] = []
        while (replica := self._pick({r for r, _ in failed})) is not None:
            replica.in_flight += 1
            try:
                out = await replica.client.complete(request)
            except _MOVE as exc:
                spent = spent + _cost(exc.usage)
                replica.failures += 1
                failed.append((replica, exc))
                if isinstance(exc, _DRAIN):
                    self._drain(replica, _reason(exc))
                continue
            except (ModelError, StructuredOutputError) as exc:  # an answer came back: the request's own error
                if failed:
                    exc.usage = spent + _cost(exc.usage)
                raise
            finally:
                replica.in_flight -= 1
            replica.served += 1
            meta = {**out.meta, "replica": replica.url}
            if failed:
                meta["replicas_failed"] = [r.url for r, _ in failed]
            return replace(out, usage=spent + out.usage, meta=meta)
        raise self._unavailable(failed, spent)

    async def chat(self, messages: Sequence[Message] | str, **params: Any) -> Completion:
        """`complete(ChatRequest.of(messages, **params))`, as on `ModelClient`."""
        return await self.complete(_request(messages, params))

    async def check(self) -> tuple[ReplicaStats, ...]:
        """Probe every replica now (drained and idle ones), read each one's load, and return `describe()`."""
        await asyncio.gather(*(self._check(r) for r in self._replicas))
        return self.describe()

    # --- choosing, draining, rejoining -----------------------------------------------------------

    def _pick(self, exclude: set[_Replica]) -> _Replica | None:
        n = len(self._replicas)
        best: tuple[tuple[float, ...], int] | None = None
        for i, r in enumerate(self._replicas):
            if r in exclude or r.state != "up":
                continue
            if r.client.circuit is not None and r.client.circuit.state == "open":
                self._drain(r, f"its client's circuit is open ({r.client.circuit.last_error})")
                continue
            load = r.load or ReplicaLoad()
            key = (r.in_flight, load.running + load.waiting, load.kv_cache, (i - self._turn) % n)
            if best is None or key < best[0]:
                best = (key, i)
        if best is None:
            return None
        self._turn = (best[1] + 1) % n
        return self._replicas[best[1]]

    def _drain(self, r: _Replica, reason: str) -> None:
        r.last_error = reason
        if r.state == "drained":
            return
        r.state, r.load = "drained", None
        r.drains += 1
        r.next_check = self._clock() + self._interval
        logger.warning(
            "replica %s of %r drained: %s. It rejoins when a health probe succeeds", r.url, self._name, reason
        )

    def _unavailable(self, failed: list[tuple[_Replica, ModelError]], spent: Usage) -> ServerUnavailableError:
        tried = {r for r, _ in failed}
        every = f", every {self._interval:g} s" if math.isfinite(self._interval) else ""
        why = [f"{r.url} failed ({_reason(e)})" for r, e in failed]
        why += [f"{r.url} is drained ({r.last_error})" for r in self._replicas if r not in tried]
        return ServerUnavailableError(
            f"no replica of model {self._name!r} could answer ({len(failed)} tried, "
            f"{sum(r.state == 'drained' for r in self._replicas)} of {len(self._replicas)} drained): "
            + "; ".join(why)
            + f". Fix: start the servers again (`agentflow serve {self._name} --port PORT` on each) or fix their "
            f"URLs; a drained replica rejoins when its health probe (GET /models{every}) succeeds, or at once after "
            "`await pool.check()`",
            usage=spent,
        )

    # --- probes ----------------------------------------------------------------------------------

    async def _check_due(self) -> None:
        """Start the probes that are due; wait for them when no replica is up (there is nowhere to send)."""
        now = self._clock()
        for r in self._replicas:
            if r.next_check <= now and r.checking is None:
                r.next_check = now + self._interval
                r.checking = task = asyncio.create_task(self._check(r))
                self._tasks.add(task)
                task.add_done_callback(functools.partial(self._done, r))
        running = [r.checking for r in self._replicas if r.checking is not None]
        if running and not any(r.state == "up" for r in self._replicas):
            await asyncio.wait(running)  # not gather: a cancelled request must not cancel the probes

    def _done(self, r: _Replica, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        r.checking = None

    async def _check(self, r: _Replica) -> None:
        if r.state == "drained" or r.in_flight == 0:
            served = r.served
            problem, certain = await self._probe(r)
            if problem is None and r.state == "drained":
                self._rejoin(r)
            elif problem is not None and r.state == "up" and r.served == served and (certain or r.in_flight == 0):
                self._drain(r, f"health probe: {problem}")
        if self._metrics and r.has_metrics and r.state == "up":
            await self._read_load(r)

    async def _probe(self, r: _Replica) -> tuple[str | None, bool]:
        """What is wrong with the replica (None: nothing), and whether that is certain (a timeout is not)."""
        try:
            response = await self._get(r, r.client.base_url + "/models")
        except httpx.TimeoutException:
            return f"GET /models did not answer within {self._probe_timeout.read:g} s", False
        except httpx.HTTPError as exc:
            return f"GET /models failed ({type(exc).__name__})", True
        if response.status_code != 200:
            return f"GET /models answered HTTP {response.status_code}", True
        try:
            ids = [m["id"] for m in response.json()["data"]]
        except (ValueError, KeyError, TypeError):
            return "GET /models answered something that is not a list of models", True
        if self._name not in ids:
            return f"it serves {ids[:5]}, not {self._name!r}", True
        return None, True

    def _rejoin(self, r: _Replica) -> None:
        circuit = r.client.circuit
        if circuit is not None and circuit.state == "open":
            r.last_error = f"answers its probe, but its client's circuit is open ({circuit.last_error})"
            return
        r.state, r.has_metrics = "up", True  # maybe another server now: ask for its metrics again
        logger.info("replica %s of %r rejoined: its health probe succeeded", r.url, self._name)

    async def _read_load(self, r: _Replica) -> None:
        try:
            response = await self._get(r, _metrics_url(r.client.base_url))
        except httpx.HTTPError:
            return  # a busy or dead server: its requests and probes tell
        if response.status_code == 200:
            r.load = parse_load(response.text)
            r.has_metrics = r.load is not None  # a page without load metrics: not worth asking again
        elif response.status_code in (404, 405):  # no /metrics here (llama-cpp-python's server has none)
            r.has_metrics = False

    async def _get(self, r: _Replica, url: str) -> httpx.Response:
        """A GET through the replica's own client: the same connection pool, transport, proxy settings and
        API key as its requests, so a probe that passes means requests can."""
        return await r.client.get(url, http_timeout=self._probe_timeout)


def _cost(usage: Usage | None) -> Usage:
    """What a failed call cost (unknown: one request, as a budget charges it)."""
    return usage if usage is not None else Usage(requests=1)


def _reason(exc: ModelError) -> str:
    status = f" HTTP {exc.status_code}" if exc.status_code else ""
    text = str(exc)
    return f"{type(exc).__name__}{status}: {text[:240]}{'...' if len(text) > 240 else ''}"


def _metrics_url(base_url: str) -> str:
    """`/metrics` sits at the server's root, beside `/v1`."""
    root = base_url.rstrip("/")
    return (root[:-3] if root.endswith("/v1") else root) + "/metrics"
