"""ReplicaPool: least-in-flight choice, the metrics tie-break, drain and retry elsewhere, rejoin, errors.

Choice and errors run against `Farm`, several fake replicas behind one `httpx.MockTransport` (told apart by
host), so which replica got what is exact; killing and restarting run against real loopback servers
(`FaultServer`), whose kill resets the connections of the requests in flight.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Callable

import httpx
import pytest

from agentflow import (
    BadResponseError,
    ChatRequest,
    CircuitBreaker,
    Completion,
    ConfigError,
    ModelClient,
    RequestRejectedError,
    ServerError,
    ServerUnavailableError,
    Usage,
)
from agentflow._config import NO_RETRY
from agentflow._pool import ReplicaLoad, ReplicaPool, parse_load
from agentflow._types import Model
from agentflow.testing import Fault, FaultServer

Q = ChatRequest.of("What is the capital of France?", max_tokens=8)
NEVER = math.inf  # no probe is due unless the test calls pool.check()
SECRET = "sk-pool-secret-1234"


class Farm:
    """Fake replicas r0.test, r1.test... behind one MockTransport. A closed gate holds a replica's completions;
    `script[host]` answers (or raises) first; `down` refuses connections; `metrics[host]` is its /metrics page."""

    def __init__(self, n: int, model: str = "m") -> None:
        self.hosts = [f"r{i}.test" for i in range(n)]
        self.urls = [f"http://{h}/v1" for h in self.hosts]
        self.model = model
        self.gates = {h: asyncio.Event() for h in self.hosts}
        for gate in self.gates.values():
            gate.set()
        self.script: dict[str, list[httpx.Response | Exception]] = {h: [] for h in self.hosts}
        self.metrics: dict[str, str | None] = dict.fromkeys(self.hosts)
        self.down: set[str] = set()
        self.busy_models: set[str] = set()  # GET /models times out (once `models_gate` opens)
        self.models_gate = asyncio.Event()
        self.models_gate.set()
        self.arrived = dict.fromkeys(self.hosts, 0)
        self.in_flight = dict.fromkeys(self.hosts, 0)
        self.gets: list[tuple[str, str, str | None]] = []
        self.transport = httpx.MockTransport(self.handler)

    async def handler(self, request: httpx.Request) -> httpx.Response:
        host, path = request.url.host, request.url.path
        if host in self.down:
            raise httpx.ConnectError("connection refused", request=request)
        if request.method == "GET":
            self.gets.append((host, path, request.headers.get("authorization")))
            if path == "/v1/models" and host in self.busy_models:
                await self.models_gate.wait()
                raise httpx.ReadTimeout("busy", request=request)
            if path == "/v1/models":
                return httpx.Response(200, json={"object": "list", "data": [{"id": self.model}]})
            page = self.metrics[host]
            return httpx.Response(200, text=page) if path == "/metrics" and page else httpx.Response(404)
        self.arrived[host] += 1
        self.in_flight[host] += 1
        try:
            await self.gates[host].wait()
        finally:
            self.in_flight[host] -= 1
        if self.script[host]:
            item = self.script[host].pop(0)
            if isinstance(item, Exception):
                raise item
            return item
        choice = {"index": 0, "message": {"role": "assistant", "content": host}, "finish_reason": "stop"}
        usage = {"prompt_tokens": 9, "completion_tokens": 1, "total_tokens": 10}
        return httpx.Response(200, json={"choices": [choice], "usage": usage})

    def pool(self, **kwargs: object) -> ReplicaPool:
        settings: dict[str, object] = {"probe_interval_s": NEVER, "transport": self.transport, **kwargs}
        return ReplicaPool.from_urls(self.urls, self.model, **settings)  # type: ignore[arg-type]


async def until(condition: Callable[[], bool]) -> None:
    """Let the event loop run until `condition` holds (MockTransport requests arrive within a few steps)."""
    for _ in range(10_000):
        if condition():
            return
        await asyncio.sleep(0)
    raise AssertionError("the condition never held")


def states(pool: ReplicaPool) -> list[str]:
    return [s.state for s in pool.describe()]


# --- choosing a replica -------------------------------------------------------------------------


async def test_each_request_goes_to_the_replica_with_the_fewest_in_flight() -> None:
    farm = Farm(3)
    for gate in farm.gates.values():
        gate.clear()
    async with farm.pool() as pool:
        assert isinstance(pool, Model) and pool.name == "m"
        first = [asyncio.create_task(pool.complete(Q)) for _ in range(7)]
        more: list[asyncio.Task[Completion]] = []
        try:
            await until(lambda: sum(farm.arrived.values()) == 7)
            assert list(farm.in_flight.values()) == [3, 2, 2]
            assert [s.in_flight for s in pool.describe()] == [3, 2, 2]

            farm.gates["r1.test"].set()  # r1 finishes its two
            await until(lambda: pool.describe()[1].in_flight == 0)
            farm.gates["r1.test"].clear()
            more = [asyncio.create_task(pool.complete(Q)) for _ in range(2)]
            await until(lambda: sum(farm.arrived.values()) == 9)
            assert farm.arrived == {"r0.test": 3, "r1.test": 4, "r2.test": 2}  # both to the one with none in flight
        finally:
            for gate in farm.gates.values():
                gate.set()
        answers = await asyncio.gather(*first, *more)
    assert sorted(a.text for a in answers) == ["r0.test"] * 3 + ["r1.test"] * 4 + ["r2.test"] * 2
    assert all(a.meta["replica"] == f"http://{a.text}/v1" for a in answers)
    assert [s.served for s in pool.describe()] == [3, 4, 2]
    assert [s.in_flight for s in pool.describe()] == [0, 0, 0]


async def test_requests_one_at_a_time_go_round_in_turn() -> None:
    farm = Farm(3)
    async with farm.pool() as pool:
        texts = [(await pool.complete(Q)).text for _ in range(6)]
    assert texts == ["r0.test", "r1.test", "r2.test"] * 2
    assert all(s.circuit is None for s in pool.describe()), "the pool's drain stands in for the clients' circuits"


async def test_ties_go_to_the_replica_whose_metrics_say_it_is_least_loaded() -> None:
    farm = Farm(3)
    farm.metrics["r0.test"] = (
        "# HELP vllm:num_requests_running Number of requests in model execution batches.\n"
        "# TYPE vllm:num_requests_running gauge\n"
        'vllm:num_requests_running{engine="0",model_name="m"} 4.0\n'
        'vllm:num_requests_waiting{engine="0",model_name="m"} 2.0\n'
        'vllm:kv_cache_usage_perc{engine="0",model_name="m"} 0.05\n'
    )
    farm.metrics["r1.test"] = "vllm:num_requests_running 0\nvllm:num_requests_waiting 0\nvllm:kv_cache_usage_perc 0.9\n"
    farm.metrics["r2.test"] = "vllm:num_requests_running 0\nvllm:num_requests_waiting 0\nvllm:kv_cache_usage_perc 0.1\n"
    async with farm.pool() as pool:
        stats = await pool.check()
        assert [s.load for s in stats] == [ReplicaLoad(4, 2, 0.05), ReplicaLoad(0, 0, 0.9), ReplicaLoad(0, 0, 0.1)]
        assert (await pool.complete(Q)).text == "r2.test"  # no queue, the emptiest KV cache

        farm.gates["r2.test"].clear()
        held = asyncio.create_task(pool.complete(Q))
        await until(lambda: farm.in_flight["r2.test"] == 1)
        assert (await pool.complete(Q)).text == "r1.test"  # fewest in flight first, then the shorter queue
        farm.gates["r2.test"].set()
        assert (await held).text == "r2.test"


async def test_a_replica_without_metrics_is_not_asked_for_them_again() -> None:
    farm = Farm(2)
    farm.metrics["r1.test"] = "vllm:num_requests_waiting 3\n"
    async with farm.pool() as pool:
        await pool.check()
        await pool.check()
        assert [s.load for s in pool.describe()] == [None, ReplicaLoad(0, 3, 0)]
    metric_gets = [host for host, path, _ in farm.gets if path == "/metrics"]
    assert metric_gets.count("r0.test") == 1 and metric_gets.count("r1.test") == 2


def test_parse_load_reads_vllm_and_llama_cpp_names_and_sums_label_sets() -> None:
    text = (
        "# HELP vllm:num_requests_waiting Number of requests waiting.\n"
        "# TYPE vllm:num_requests_waiting gauge\n"
        'vllm:num_requests_waiting{model_name="a{b}",engine="0"} 3 1712345678000\n'
        'vllm:num_requests_waiting{model_name="say \\"hi\\"",engine="1"} 2\n'
        'vllm:num_requests_running{engine="0"} NaN\n'
        'vllm:gpu_cache_usage_perc{engine="0"} 0.25\n'
        'vllm:gpu_cache_usage_perc{engine="1"} 0.75\n'
        "vllm:prompt_tokens_total 12345\n"
    )
    assert parse_load(text) == ReplicaLoad(running=0, waiting=5, kv_cache=0.75)
    llama = "llamacpp:requests_processing 1\nllamacpp:requests_deferred 4\nllamacpp:kv_cache_usage_ratio 0.5\n"
    assert parse_load(llama) == ReplicaLoad(1, 4, 0.5)
    assert parse_load("# nothing here\nprocess_cpu_seconds_total 3.5\n") is None
    assert parse_load("<html>Not Found</html>") is None


# --- failures: drain, retry elsewhere, rejoin --------------------------------------------------


@pytest.mark.parametrize(
    ("fault", "drained", "cost"),
    [
        (httpx.Response(503, json={"error": {"message": "overloaded"}}), True, 2),
        (httpx.ReadTimeout("too slow"), True, 2),
        (httpx.ConnectError("refused"), True, 1),  # never reached r0: costs nothing there
        (httpx.RemoteProtocolError("server disconnected"), True, 2),
        (httpx.Response(429, json={"error": {"message": "slow down"}}), False, 2),
    ],
    ids=["5xx", "timeout", "refused", "reset", "429"],
)
async def test_a_request_that_failed_before_an_answer_is_answered_by_another_replica(
    fault: httpx.Response | Exception, drained: bool, cost: int
) -> None:
    farm = Farm(2)
    farm.script["r0.test"].append(fault)
    async with farm.pool() as pool:
        done = await pool.complete(Q)
        assert done.text == "r1.test" and done.meta["replicas_failed"] == ["http://r0.test/v1"]
        assert done.usage == Usage(cost, 9, 1)  # the attempt that failed is billed too
        r0, r1 = pool.describe()
        assert (r0.state, r0.failures, r0.served, r1.served) == ("drained" if drained else "up", 1, 0, 1)
        assert (r0.drains, bool(r0.last_error)) == (int(drained), drained)
        assert (await pool.complete(Q)).text == ("r1.test" if drained else "r0.test")


@pytest.mark.parametrize(
    ("answer", "error"),
    [
        (httpx.Response(400, json={"error": {"message": "prompt too long"}}), RequestRejectedError),
        (httpx.Response(200, text="<html>It works!</html>"), BadResponseError),
    ],
    ids=["4xx", "not-a-completion"],
)
async def test_an_answer_that_came_back_is_the_requests_own_error_and_not_retried(
    answer: httpx.Response, error: type[Exception]
) -> None:
    farm = Farm(2)
    farm.script["r0.test"].append(answer)
    async with farm.pool() as pool:
        with pytest.raises(error):
            await pool.complete(Q)
        assert farm.arrived["r1.test"] == 0
        assert states(pool) == ["up", "up"]


async def test_a_cancelled_request_leaves_nothing_in_flight() -> None:
    farm = Farm(2)
    farm.gates["r0.test"].clear()
    async with farm.pool() as pool:
        task = asyncio.create_task(pool.complete(Q))
        await until(lambda: farm.in_flight["r0.test"] == 1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert [(s.in_flight, s.served, s.failures, s.state) for s in pool.describe()] == [(0, 0, 0, "up")] * 2


async def test_a_killed_replica_is_drained_its_requests_answered_elsewhere_and_it_rejoins() -> None:
    hang = [True]
    a = FaultServer(handler=lambda seen: Fault.hang() if hang[0] else Fault.ok("A"), model="m")
    b, c = FaultServer(then="B", model="m"), FaultServer(then="C", model="m")
    with a, b, c:
        async with ReplicaPool.from_urls([a.url, b.url, c.url], "m", probe_interval_s=NEVER, timeout=60) as pool:
            requests = [asyncio.create_task(pool.complete(Q)) for _ in range(9)]
            await a.wait_for_hits(3)  # three requests hang on A
            await asyncio.to_thread(a.kill)  # their connections are reset mid-request
            answers = await asyncio.gather(*requests)
            assert len(answers) == 9 and {x.text for x in answers} <= {"B", "C"}  # every request got an answer
            moved = [x for x in answers if x.meta.get("replicas_failed")]
            assert len(moved) == 3 and all(x.meta["replicas_failed"] == [a.url] for x in moved)
            assert sum(x.usage.requests for x in answers) == 12  # the three reset attempts are billed
            sa, sb, sc = pool.describe()
            assert (sa.state, sa.served, sa.failures, sa.drains) == ("drained", 0, 3, 1)
            assert "ServerUnavailableError" in sa.last_error
            assert sb.served + sc.served == 9 and sb.state == sc.state == "up"

            await pool.check()
            assert states(pool) == ["drained", "up", "up"], "a probe of a dead server keeps it drained"
            hang[0] = False
            await asyncio.to_thread(a.restart)
            assert [s.state for s in await pool.check()] == ["up", "up", "up"]
            again = await asyncio.gather(*(pool.complete(Q) for _ in range(3)))
            assert sorted(x.text for x in again) == ["A", "B", "C"]
            assert pool.describe()[0].served == 1


async def test_a_health_probe_drains_an_idle_dead_replica_before_a_request_goes_there() -> None:
    with FaultServer(then="A", model="m") as a, FaultServer(then="B", model="m") as b:
        async with ReplicaPool.from_urls([a.url, b.url], "m", probe_interval_s=NEVER) as pool:
            await asyncio.to_thread(b.kill)
            stats = await pool.check()
            assert [s.state for s in stats] == ["up", "drained"]
            assert stats[1].last_error.startswith("health probe: GET /models failed")
            texts = [(await pool.complete(Q)).text for _ in range(3)]
            assert texts == ["A"] * 3 and b.hits == 0 and stats[1].failures == 0


async def test_a_probe_that_times_out_behind_requests_in_flight_does_not_drain() -> None:
    farm = Farm(2)
    farm.busy_models.add("r0.test")
    farm.gates["r0.test"].clear()
    async with farm.pool() as pool:
        held = asyncio.create_task(pool.complete(Q))
        await until(lambda: farm.in_flight["r0.test"] == 1)
        await pool.check()
        assert states(pool) == ["up", "up"], "its request in flight tells, not the probe"
        farm.gates["r0.test"].set()
        assert (await held).text == "r0.test"
        await pool.check()  # idle now: a probe that times out drains it
        assert states(pool) == ["drained", "up"]
        assert "did not answer within" in pool.describe()[0].last_error


async def test_a_probe_that_started_idle_and_timed_out_behind_a_new_request_does_not_drain() -> None:
    farm = Farm(2)
    farm.busy_models.add("r0.test")
    farm.models_gate.clear()
    farm.gates["r0.test"].clear()
    async with farm.pool() as pool:
        probing = asyncio.create_task(pool.check())
        await until(lambda: ("r0.test", "/v1/models", None) in farm.gets)
        held = asyncio.create_task(pool.complete(Q))  # arrives while the probe waits
        await until(lambda: farm.in_flight["r0.test"] == 1)
        farm.models_gate.set()  # the probe times out, with a request in flight there
        await probing
        assert states(pool) == ["up", "up"]
        farm.gates["r0.test"].set()
        assert (await held).text == "r0.test"


async def test_an_open_circuit_drains_the_replica_until_the_circuit_lets_a_probe_through() -> None:
    now = [1000.0]

    def clock() -> float:
        return now[0]

    with FaultServer([Fault.status(503)], then="A", model="m") as a, FaultServer(then="B", model="m") as b:
        breaker = CircuitBreaker(failures=1, cooldown_s=30.0)
        ca = ModelClient(a.url, "m", retry=NO_RETRY, circuit=breaker, clock=clock)
        cb = ModelClient(b.url, "m", retry=NO_RETRY, circuit=breaker, clock=clock)
        async with ca, cb:
            with pytest.raises(ServerError):
                await ca.complete(Q)  # its circuit opens
            pool = ReplicaPool([ca, cb], probe_interval_s=NEVER, clock=clock)
            assert (await pool.complete(Q)).text == "B"
            stats = await pool.check()
            assert [s.state for s in stats] == ["drained", "up"] and stats[0].circuit == "open"
            assert "circuit is open" in stats[0].last_error and a.hits == 1
            now[0] += 31.0
            assert [s.state for s in await pool.check()] == ["up", "up"]
            assert sorted([x.text for x in await asyncio.gather(pool.complete(Q), pool.complete(Q))]) == ["A", "B"]
            assert pool.describe()[0].circuit == "closed"
            await pool.aclose()
            assert (await ca.complete(Q)).text == "A", "the pool does not close clients it was given"


# --- all replicas down, and the on-demand probes ------------------------------------------------


async def test_all_replicas_down_is_one_clear_error_then_due_probes_let_them_rejoin() -> None:
    now = [1000.0]

    def clock() -> float:
        return now[0]

    with FaultServer(then="A", model="m") as a, FaultServer(then="B", model="m") as b:
        async with ReplicaPool.from_urls([a.url, b.url], "m", probe_interval_s=10.0, clock=clock) as pool:
            await asyncio.to_thread(a.kill)
            await asyncio.to_thread(b.kill)
            with pytest.raises(ServerUnavailableError) as info:
                await pool.complete(Q)
            message = str(info.value)
            for part in (a.url, b.url, "no replica of model 'm' could answer", "2 tried", "2 of 2 drained"):
                assert part in message
            assert "Fix:" in message and "agentflow serve m" in message and "await pool.check()" in message
            assert info.value.usage == Usage(), "refused connections cost nothing"
            with pytest.raises(ServerUnavailableError, match=r"0 tried, 2 of 2 drained.*is drained \(Server"):
                await pool.complete(Q)

            await asyncio.to_thread(a.restart)
            await asyncio.to_thread(b.restart)
            now[0] += 10.0  # the probes are due: with no replica up, the request waits for them
            assert (await pool.complete(Q)).text in ("A", "B")
            assert states(pool) == ["up", "up"]


# --- settings and secrets -----------------------------------------------------------------------


async def test_probes_carry_the_api_key_and_no_repr_log_or_error_shows_it(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="agentflow")
    farm = Farm(2)
    urls = [f"http://user:{SECRET}@r0.test/v1", farm.urls[1]]
    farm.script["r0.test"].append(httpx.Response(500, json={"error": {"message": f"bad key Bearer {SECRET}"}}))
    farm.down.add("r1.test")
    pool = ReplicaPool.from_urls(urls, "m", api_key=SECRET, transport=farm.transport, probe_interval_s=NEVER)
    async with pool:
        farm.down.clear()
        await pool.check()
        assert ("r1.test", "/v1/models", f"Bearer {SECRET}") in farm.gets  # a probe passes where requests do
        farm.down.add("r1.test")
        with pytest.raises(ServerUnavailableError) as info:
            await pool.complete(Q)
        outputs = [repr(pool), str(pool.describe()), str(info.value), caplog.text]
    assert "drained" in caplog.text and "http://r0.test/v1" in repr(pool)
    for text in outputs:
        assert SECRET not in text


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: ReplicaPool([]), "one or more ModelClients"),
        (lambda: ReplicaPool.from_urls("http://a.test/v1", "m"), "pass a list of URLs"),
        (lambda: ReplicaPool.from_urls(["http://a.test/v1", "http://a.test/v1/"], "m"), "listed twice"),
        (
            lambda: ReplicaPool([ModelClient("http://a.test/v1", "x"), ModelClient("http://b.test/v1", "y")]),
            "one model",
        ),
        (lambda: ReplicaPool.from_urls(["http://a.test/v1"], "m", probe_interval_s=0), "probe_interval_s=0"),
    ],
    ids=["empty", "one-string", "twice", "two-models", "interval"],
)
def test_bad_settings_are_rejected_with_the_fix(make: Callable[[], object], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        make()
