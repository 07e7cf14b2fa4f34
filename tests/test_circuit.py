"""Circuit breaking: a server that keeps failing is not hammered, and a router or cascade falls back.

Every test talks to a real loopback server (`FaultServer`) and drives the circuit's cool-down with a fake
clock, so `server.hits` shows exactly which calls reached the server and no test waits for a cool-down.
"""

from __future__ import annotations

import asyncio

import pytest

from agentflow import (
    DEFAULT_CIRCUIT,
    AgreementShare,
    Budget,
    Cascade,
    ChatRequest,
    CircuitBreaker,
    CircuitOpenError,
    ConfigError,
    ModelClient,
    ModelTimeoutError,
    NodeFailedError,
    RequestRejectedError,
    RetryPolicy,
    Router,
    ServerError,
    ServerUnavailableError,
    TokenProb,
)
from agentflow.eval import Paragraph
from agentflow.testing import Fault, FaultServer
from workflows import QAState, rung

OK = "Paris"
Q = ChatRequest.of("What is the capital of France?", max_tokens=8)
COOLDOWN = 10.0


class FakeClock:
    """The clock the client's circuit reads; a test moves it forward instead of waiting."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def no_wait(seconds: float) -> None:
    await asyncio.sleep(0)


def make(
    server: FaultServer,
    clock: FakeClock,
    *,
    name: str = "small",
    failures: int = 3,
    attempts: int = 1,
    circuit: CircuitBreaker | bool | None = True,
) -> ModelClient:
    policy = RetryPolicy(max_attempts=attempts, initial_backoff_s=0.0, max_backoff_s=0.0)
    breaker = CircuitBreaker(failures=failures, cooldown_s=COOLDOWN) if circuit is True else circuit
    assert not isinstance(breaker, bool)
    return ModelClient(server.url, name, retry=policy, sleep=no_wait, clock=clock, timeout=5.0, circuit=breaker)


def state_of(client: ModelClient) -> str:
    """The circuit's state, read afresh (mypy would narrow `client.circuit.state` after a first assert)."""
    assert client.circuit is not None
    return client.circuit.state


async def open_circuit(client: ModelClient, failures: int) -> None:
    """Fail `failures` calls (the server answers 503) so that the client's circuit opens."""
    for _ in range(failures):
        with pytest.raises(ServerError):
            await client.chat("warm-up", max_tokens=4)
    assert client.circuit is not None and client.circuit.state == "open"


# --- the client's circuit -----------------------------------------------------------------------


async def test_the_circuit_opens_after_n_failed_calls_fails_fast_then_a_probe_closes_it() -> None:
    clock = FakeClock()
    async with FaultServer([Fault.status(503, "overloaded")] * 6, then=Fault.ok(OK)) as server:
        async with make(server, clock, failures=3, attempts=2) as llm:
            circuit = llm.circuit
            assert circuit is not None
            for n in range(3):
                assert (circuit.state, circuit.failures) == ("closed", n)
                with pytest.raises(ServerError, match="gave up after 2 attempt"):
                    await llm.chat("q", max_tokens=4)
            assert server.hits == 6  # each failed call counted once, after its retries
            assert (circuit.state, circuit.failures) == ("open", 3)

            clock.now += 4.0
            with pytest.raises(CircuitOpenError) as info:
                await llm.chat("q", max_tokens=4)
            assert server.hits == 6, "an open circuit fails fast, without touching the server"
            err = info.value
            assert isinstance(err, ServerUnavailableError) and not err.retryable
            assert (err.failures, err.retry_in_s, err.retry_at, err.url) == (3, 6.0, 1010.0, server.url)
            message = str(err)
            for part in (server.url, "3 call(s) in a row failed", "ServerError HTTP 503", "half-opens in 6.0 s"):
                assert part in message
            assert "Fix:" in message and "agentflow serve small" in message and "circuit=None" in message

            clock.now += 6.0  # the cool-down is over: one probe goes through
            assert circuit.state == "half-open"
            done = await llm.chat("q", max_tokens=4)
            assert done.text == OK and server.hits == 7
            assert (circuit.state, circuit.failures) == ("closed", 0)


async def test_a_failed_probe_gets_one_attempt_and_opens_the_circuit_for_another_cool_down() -> None:
    clock = FakeClock()
    async with FaultServer([Fault.status(503)] * 7, then=Fault.ok(OK)) as server:
        async with make(server, clock, failures=2, attempts=3) as llm:
            await open_circuit(llm, 2)
            assert server.hits == 6
            clock.now += COOLDOWN
            with pytest.raises(ServerError, match=r"gave up after 1 attempt.*a circuit's probe gets one.*10 s"):
                await llm.chat("probe", max_tokens=4)
            assert server.hits == 7, "the probe is not retried"
            assert llm.circuit is not None and llm.circuit.state == "open"
            assert llm.circuit.retry_at == clock.now + COOLDOWN
            with pytest.raises(CircuitOpenError, match=r"3 call\(s\) in a row failed"):
                await llm.chat("q", max_tokens=4)
            assert server.hits == 7
            clock.now += COOLDOWN
            assert (await llm.chat("probe again", max_tokens=4)).text == OK
            assert state_of(llm) == "closed" and server.hits == 8


async def test_a_4xx_is_the_requests_fault_it_does_not_count_and_resets_the_count() -> None:
    clock = FakeClock()
    script = [Fault.status(503), Fault.status(400, "bad parameter"), Fault.status(503), Fault.status(503)]
    async with FaultServer(script, then=Fault.ok(OK)) as server:
        async with make(server, clock, failures=2) as llm:
            circuit = llm.circuit
            assert circuit is not None
            with pytest.raises(ServerError):
                await llm.chat("q", max_tokens=4)
            assert circuit.failures == 1
            with pytest.raises(RequestRejectedError, match="bad parameter"):
                await llm.chat("q", max_tokens=4)
            assert (circuit.state, circuit.failures) == ("closed", 0)
            with pytest.raises(ServerError):
                await llm.chat("q", max_tokens=4)
            assert (circuit.state, circuit.failures) == ("closed", 1)
            with pytest.raises(ServerError):
                await llm.chat("q", max_tokens=4)
            assert circuit.state == "open" and server.hits == 4


async def test_connection_errors_count_and_a_restarted_server_closes_the_circuit() -> None:
    clock = FakeClock()
    async with FaultServer([Fault.kill(restart_after_s=None)], then=Fault.ok(OK)) as server:
        async with make(server, clock, failures=2, attempts=2) as llm:
            for _ in range(2):
                with pytest.raises(ServerUnavailableError, match="gave up after 2 attempt"):
                    await llm.chat("q", max_tokens=4)
            assert llm.circuit is not None and llm.circuit.state == "open"
            connections = server.connections
            with pytest.raises(CircuitOpenError, match="ServerUnavailableError"):
                await llm.chat("q", max_tokens=4)
            assert server.connections == connections and server.hits == 1
            server.restart()
            clock.now += COOLDOWN
            assert (await llm.chat("q", max_tokens=4)).text == OK
            assert state_of(llm) == "closed"


async def test_timeouts_count_as_server_failures() -> None:
    clock = FakeClock()
    async with FaultServer([Fault.hang()], then=Fault.ok(OK)) as server:
        policy = RetryPolicy(max_attempts=1)
        async with ModelClient(
            server.url, "m", retry=policy, clock=clock, timeout=0.2, circuit=CircuitBreaker(failures=1)
        ) as llm:
            with pytest.raises(ModelTimeoutError):
                await llm.chat("q", max_tokens=4)
            with pytest.raises(CircuitOpenError, match="ModelTimeoutError"):
                await llm.chat("q", max_tokens=4)
    assert server.hits == 1


async def test_while_the_probe_is_in_flight_other_calls_fail_fast() -> None:
    clock = FakeClock()
    async with FaultServer([Fault.status(503), Fault.slow(0.3, OK)], then=Fault.ok("later")) as server:
        async with make(server, clock, failures=1) as llm:
            await open_circuit(llm, 1)
            clock.now += COOLDOWN
            probe = asyncio.ensure_future(llm.chat("probe", max_tokens=4))
            await server.wait_for_hits(2)
            with pytest.raises(CircuitOpenError, match="probe call") as info:
                await llm.chat("q", max_tokens=4)
            assert info.value.retry_in_s == 0.0
            assert (await probe).text == OK
            assert server.hits == 2 and llm.circuit is not None and llm.circuit.state == "closed"


async def test_without_a_circuit_every_call_reaches_the_server() -> None:
    clock = FakeClock()
    async with FaultServer([Fault.status(503)] * 6) as server:
        async with make(server, clock, circuit=None) as llm:
            assert llm.circuit is None
            for _ in range(6):
                with pytest.raises(ServerError):
                    await llm.chat("q", max_tokens=4)
    assert server.hits == 6


async def test_the_default_policy_and_bad_settings() -> None:
    assert DEFAULT_CIRCUIT == CircuitBreaker(failures=5, cooldown_s=30.0, probes=1)
    async with ModelClient("http://127.0.0.1:9/v1", "m") as client:
        assert client.circuit is not None and client.circuit.policy is DEFAULT_CIRCUIT
        assert client.circuit.state == "closed" and "closed" in repr(client.circuit)
    for bad, match in [
        ({"failures": 0}, r"failures=0\) must be a whole number >= 1"),
        ({"probes": 0}, r"probes=0\) must be a whole number >= 1"),
        ({"cooldown_s": -1.0}, r"cooldown_s=-1\.0\) must be a finite number of seconds >= 0: pass e\.g\. 30"),
        ({"cooldown_s": float("inf")}, "must be a finite number"),
    ]:
        with pytest.raises(ConfigError, match=match):
            CircuitBreaker(**bad)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="circuit must be a CircuitBreaker or None, got int"):
        ModelClient("http://127.0.0.1:9/v1", "m", circuit=3)  # type: ignore[arg-type]


# --- a router falls back to its next rung -------------------------------------------------------


async def test_a_router_falls_back_past_an_open_circuit_with_the_reason_and_without_waiting() -> None:
    clock = FakeClock()
    async with FaultServer([Fault.status(503)]) as small_server, FaultServer(then=Fault.ok(OK)) as large_server:
        async with (
            make(small_server, clock, failures=1) as small,
            make(large_server, clock, name="large") as large,
        ):
            router = Router([small, large], estimator=TokenProb("mean"), thresholds=[0.5])
            with pytest.raises(ServerError):  # a 5xx is not a fallback by default: the circuit counts it
                await router.complete(Q)
            out = await router.complete(Q)
    assert (out.text, out.model) == (OK, "large")
    assert small_server.hits == 1 and large_server.hits == 1
    first, top = router.decisions[-2:]
    assert first.model == "small" and first.escalated and first.score is None
    assert "CircuitOpenError" in first.reason and first.reason.endswith("falling back to the next rung")
    assert "open" in first.reason and small_server.url in first.reason
    assert top.model == "large" and "final" in top.reason
    assert out.meta["route"][0]["reason"] == first.reason


async def test_a_router_falls_back_past_a_server_that_is_down() -> None:
    clock = FakeClock()
    async with FaultServer() as down, FaultServer(then=Fault.ok(OK)) as large_server:
        down.kill()
        async with make(down, clock, attempts=2) as small, make(large_server, clock, name="large") as large:
            out = await Router([small, large], thresholds=[0.5]).complete(Q)
            assert out.model == "large"
            [first, _] = out.meta["route"]
            assert "ServerUnavailableError" in first["reason"] and "could not reach" in first["reason"]
            assert small.circuit is not None and small.circuit.failures == 1


async def test_a_router_raises_when_the_top_rung_fails_or_fallback_is_off() -> None:
    clock = FakeClock()
    async with FaultServer([Fault.status(503)], then=Fault.ok(OK)) as small_server, FaultServer() as down:
        down.kill()
        async with make(small_server, clock, failures=1) as small, make(down, clock, name="large") as large:
            await open_circuit(small, 1)
            with pytest.raises(CircuitOpenError):
                await Router([small, large], fallback_on=()).complete(Q)
            with pytest.raises(ServerUnavailableError, match="could not reach"):  # the top rung is down too
                await Router([small, large]).complete(Q)
            clock.now += COOLDOWN
            out = await Router([large, small], thresholds=[0.5]).complete(Q)  # down below, fine on top
            assert out.model == "small" and small.circuit is not None and small.circuit.state == "closed"
    with pytest.raises(ConfigError, match="fallback_on must be a tuple of ModelError classes"):
        Router([small, large], fallback_on=(ValueError,))  # type: ignore[arg-type]


async def test_the_bill_counts_only_attempts_that_reached_the_server() -> None:
    clock = FakeClock()
    budget = Budget()
    async with FaultServer([Fault.status(503)]) as small_server, FaultServer(then=Fault.ok(OK)) as large_server:
        async with make(small_server, clock, failures=1) as small, make(large_server, clock, name="large") as large:
            router = Router([small, large], thresholds=[0.5], budget=budget)
            with pytest.raises(ServerError):
                await router.complete(Q)
            for _ in range(3):  # the small rung fails fast, the large one answers
                assert (await router.complete(Q)).model == "large"
    bill = budget.bill()
    assert (small_server.hits, large_server.hits) == (1, 3)
    assert bill.models["large"].requests == 3
    assert bill.models["small"].requests == small_server.hits


# --- a cascade falls back to its next rung ------------------------------------------------------


async def test_a_cascade_falls_back_past_an_open_circuit_whatever_on_error_says() -> None:
    clock = FakeClock()
    state = QAState(question="Capital of France?", paragraphs=[Paragraph("France", "Paris is the capital.")])
    async with FaultServer([Fault.status(503)]) as small_server, FaultServer(then=Fault.ok(OK)) as large_server:
        async with make(small_server, clock, failures=1) as small, make(large_server, clock, name="large") as large:
            await open_circuit(small, 1)
            rungs = [rung("direct", small, confidence=AgreementShare()), rung("direct", large)]
            result = await Cascade(rungs).run(state)  # on_error="raise" by default
            assert (result.rung, result.state.answer) == (1, OK)
            first = result.decisions[0]
            assert first.escalated and first.started and first.score is None
            assert "CircuitOpenError" in first.why and first.why.endswith("falling back to the next rung")
            assert small_server.hits == 1 and large_server.hits == 1
            with pytest.raises(NodeFailedError) as info:
                await Cascade(rungs, fallback_on=()).run(state)
            assert isinstance(info.value.__cause__, CircuitOpenError)
            with pytest.raises(NodeFailedError):  # the top rung's failure is the question's
                await Cascade([rung("direct", large, confidence=AgreementShare()), rung("direct", small)]).run(
                    state.model_copy(update={"question": "again"})
                )
    with pytest.raises(ConfigError, match="fallback_on"):
        Cascade(rungs, fallback_on=(Exception,))  # type: ignore[arg-type]
