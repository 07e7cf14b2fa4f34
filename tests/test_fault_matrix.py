"""Fault matrix: the client, a workflow and the router, each through every fault of a real loopback server.

One row per fault (the TABLE below) with its expected outcome: the answer, or a typed error whose message
names the problem and the fix; how many requests reach the server (its retry bounds); and the bill, which
must count every attempt that reached the server exactly once and the tokens of every answer received.
Outcome and bill are checked separately, so a row whose bill is wrong still shows whether it survived.
Where a client misbehaves, the row carries the defect (`outcome_defect` / `bill_defect`) and that check is
`xfail(strict=True)`; every row passes today.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Literal

import pytest

from agentflow import (
    BadResponseError,
    Budget,
    ChatRequest,
    ChoiceOutput,
    CircuitBreaker,
    CircuitOpenError,
    JsonOutput,
    ModelClient,
    ModelError,
    ModelTimeoutError,
    NodeFailedError,
    RateLimitedError,
    RequestRejectedError,
    RetryPolicy,
    Router,
    ServerError,
    ServerUnavailableError,
    StructuredOutputError,
    TokenProb,
)
from agentflow.eval import Paragraph
from agentflow.testing import Fault, FaultServer
from workflows import QADeps, QAState, build

Subject = Literal["client", "workflow", "router"]
SUBJECTS: tuple[Subject, ...] = ("client", "workflow", "router")

ATTEMPTS = 3  # RetryPolicy.max_attempts of every client below
STRUCTURED_RETRIES = 1  # so a structured call makes at most 2 attempts
POLICY = RetryPolicy(
    max_attempts=ATTEMPTS, initial_backoff_s=0.05, max_backoff_s=0.05, max_total_s=10.0, max_retry_after_s=5.0
)
TIMEOUT_S = 0.6  # well above the slow replies below, so a busy machine does not turn them into timeouts
CHOICE = ChoiceOutput(("yes", "no"))
ANSWER_SCHEMA = JsonOutput({"type": "object", "properties": {"answer": {"type": "string"}}, "required": ["answer"]})


@dataclass(frozen=True)
class Row:
    """One fault. `hits`: completion requests that reach the server for the client alone."""

    id: str
    script: tuple[Fault | str, ...]
    hits: int
    error: type[ModelError | StructuredOutputError] | None = None
    match: str = ""  # a regex the error message must contain: what went wrong and the fix
    output: ChoiceOutput | JsonOutput | None = None
    min_wait_s: float = 0.0  # the client must have waited at least this long (Retry-After)
    escalates: bool = False  # the router escalates to its second rung (which answers "Paris")
    subjects: tuple[Subject, ...] = SUBJECTS
    outcome_defect: str | None = None
    bill_defect: str | None = None

    @property
    def falls_back(self) -> bool:
        """The router falls back to its next rung on a server that is down (Router.fallback_on)."""
        return self.error is not None and issubclass(self.error, ServerUnavailableError)


OK = "Paris"
YES = "yes"
GOOD_JSON = '{"answer": "Paris"}'

TABLE: list[Row] = [
    Row("slow reply", (Fault.slow(0.1, OK),), hits=1),
    Row("timeout, then an answer", (Fault.hang(), OK), hits=2),
    Row(
        "timeout every time",
        (Fault.hang(),) * ATTEMPTS,
        hits=ATTEMPTS,
        error=ModelTimeoutError,
        match=r"did not answer within 0\.6 s.*raise ModelClient\(timeout=\.\.\.\).*gave up after 3 attempt",
    ),
    Row(
        "429 with Retry-After",
        (Fault.rate_limited(retry_after="1"), OK),
        hits=2,
        min_wait_s=1.0,
    ),
    Row("429 without Retry-After", (Fault.rate_limited(), OK), hits=2),
    Row(
        "429 with a Retry-After past the policy",
        (Fault.rate_limited(retry_after="60"),),
        hits=1,
        error=RateLimitedError,
        match=r"HTTP 429.*Retry-After: 60 s.*Lower max_in_flight, or wait",
    ),
    Row(
        "429 every time",
        (Fault.rate_limited(),) * ATTEMPTS,
        hits=ATTEMPTS,
        error=RateLimitedError,
        match=r"HTTP 429.*Lower max_in_flight.*gave up after 3 attempt",
    ),
    Row("burst of 500 and 503", (Fault.status(500), Fault.status(503), OK), hits=3),
    Row(
        "503 every time",
        (Fault.status(503, "overloaded"),) * ATTEMPTS,
        hits=ATTEMPTS,
        error=ServerError,
        match=r"HTTP 503: overloaded.*check its log.*gave up after 3 attempt",
    ),
    Row("reset mid-body, then an answer", (Fault.reset_mid_body(), OK), hits=2),
    Row(
        "reset mid-body every time",
        (Fault.reset_mid_body(),) * ATTEMPTS,
        hits=ATTEMPTS,
        error=ServerUnavailableError,
        match=r"(?i)(reset|closed the connection).*(mid|before|answer)",
    ),
    Row(
        "connection closed without an answer",
        (Fault.drop(),) * ATTEMPTS,
        hits=ATTEMPTS,
        error=ServerUnavailableError,
        match=r"(?i)(reset|closed the connection).*(mid|before|answer)",
    ),
    Row(
        "HTML page",
        (Fault.html(),),
        hits=1,
        error=BadResponseError,
        match=r"HTTP 200 with an HTML page.*check that base_url points at an OpenAI-compatible API",
    ),
    Row(
        "empty body",
        (Fault.empty(),),
        hits=1,
        error=BadResponseError,
        match=r"with an empty body.*check that base_url",
    ),
    Row(
        "truncated JSON",
        (Fault.truncated_json(),),
        hits=1,
        error=BadResponseError,
        match=r"a body that is not JSON.*check that base_url",
    ),
    Row("choice not among the choices, then valid", ("maybe", YES), hits=2, output=CHOICE),
    Row(
        "choice invalid every time",
        ("maybe",) * (STRUCTURED_RETRIES + 1),
        hits=STRUCTURED_RETRIES + 1,
        output=CHOICE,
        error=StructuredOutputError,
        match=r"gave no valid choice of \['yes', 'no'\] in 2 attempt.*is not one of.*Fix: .*raise structured_retries",
    ),
    Row(
        "JSON that does not fit the schema, then valid",
        ('{"answer": 42}', GOOD_JSON),
        hits=2,
        output=ANSWER_SCHEMA,
        subjects=("client", "router"),
    ),
    Row(
        "JSON that never fits the schema",
        ('{"name": "Paris"}',) * (STRUCTURED_RETRIES + 1),
        hits=STRUCTURED_RETRIES + 1,
        output=ANSWER_SCHEMA,
        error=StructuredOutputError,
        match=r"gave no valid JSON in 2 attempt.*does not fit the JSON schema.*Fix: ",
        subjects=("client", "router"),
    ),
    Row(
        "endless structured output",
        (Fault.endless(),) * (STRUCTURED_RETRIES + 1),
        hits=STRUCTURED_RETRIES + 1,
        output=CHOICE,
        error=StructuredOutputError,
        match=r"cut off at max_tokens.*raise max_tokens",
    ),
    Row("logprobs missing when asked", (Fault.no_logprobs(OK),), hits=1, escalates=True),
    Row("server killed, restarted", (Fault.kill(restart_after_s=0.0), OK), hits=2),
    Row(
        "server killed, stays down",
        (Fault.kill(restart_after_s=None),),
        hits=1,
        error=ServerUnavailableError,
        match=r"could not reach the model server.*\(ConnectError\).*Start one with `agentflow serve",
        # the router falls back to its second rung, refused too: that call reached nothing and costs nothing
    ),
]


@dataclass
class Case:
    """What one run through a subject produced."""

    answer: str | None = None
    error: BaseException | None = None
    waits: list[float] = field(default_factory=list)
    escalated: bool = False


def _client(server: FaultServer, name: str, waits: list[float]) -> ModelClient:
    async def sleep(seconds: float) -> None:
        waits.append(seconds)
        await asyncio.sleep(min(seconds, 0.05))  # recorded in full, slept briefly

    return ModelClient(
        server.url,
        name,
        dialect="vllm",
        retry=POLICY,
        timeout=TIMEOUT_S,
        sleep=sleep,
        structured_retries=STRUCTURED_RETRIES,
    )


def _question(row: Row) -> ChatRequest:
    return ChatRequest.of("What is the capital of France?", max_tokens=8, output=row.output)


def _text(value: object) -> str:
    return str(value)


async def _run_client(server: FaultServer, budget: Budget, row: Row, case: Case) -> None:
    async with _client(server, "small", case.waits) as client:
        out = await budget.wrap(client).complete(_question(row))
        case.answer = out.text


async def _run_router(server: FaultServer, budget: Budget, row: Row, case: Case) -> None:
    async with _client(server, "small", case.waits) as small, _client(server, "large", case.waits) as large:
        router = Router([small, large], estimator=TokenProb("mean"), thresholds=[0.5], budget=budget)
        out = await router.complete(_question(row))
        case.answer = out.text
        case.escalated = out.model == "large"


async def _run_workflow(server: FaultServer, budget: Budget, row: Row, case: Case) -> None:
    """Plain rows: the `direct` workflow. Structured rows: `verify`, whose judge is a constrained yes/no."""
    paras = [Paragraph("France", "Paris is the capital of France.")]
    state = QAState(question="What is the capital of France?", paragraphs=paras)
    async with _client(server, "small", case.waits) as client:
        model = budget.wrap(client)
        if row.output is None:
            out, _ = await build("direct").run(state, deps=QADeps(model=model))
        else:
            out, _ = await build("verify").run(state, deps=QADeps(model=model, verifier=model))
            assert out.accepted is True
        case.answer = out.answer


RUNNERS: dict[Subject, Callable[[FaultServer, Budget, Row, Case], Awaitable[None]]] = {
    "client": _run_client,
    "router": _run_router,
    "workflow": _run_workflow,
}


def _script(row: Row, subject: Subject) -> tuple[Fault | str, ...]:
    # the verify workflow answers first ("Paris"), then its judge call meets the row's faults
    return (OK, *row.script) if subject == "workflow" and row.output is not None else row.script


def _router_answers(row: Row) -> bool:
    """The router falls back to its second rung, which answers unless the whole server is down."""
    return row.falls_back and not any(isinstance(f, Fault) and f.kill_server for f in row.script)


def _expected_hits(row: Row, subject: Subject) -> int:
    if subject == "workflow" and row.output is not None:
        return row.hits + 1
    if subject == "router" and (row.escalates or _router_answers(row)):
        return row.hits + 1
    return row.hits


def _expected_answer(row: Row, subject: Subject) -> str:
    if subject == "workflow":
        return OK  # the workflow's answer; its judge said "yes"
    if row.output is ANSWER_SCHEMA:
        return GOOD_JSON
    return YES if row.output is not None else OK


async def _play(row: Row, subject: Subject) -> tuple[Case, FaultServer, Budget]:
    then = YES if row.output is CHOICE else GOOD_JSON if row.output is ANSWER_SCHEMA else OK
    case = Case()
    budget = Budget(name=f"{subject}:{row.id}")
    async with FaultServer(_script(row, subject), then=Fault.ok(then)) as server:
        try:
            await asyncio.wait_for(RUNNERS[subject](server, budget, row, case), timeout=20)
        except (ModelError, StructuredOutputError, NodeFailedError) as exc:
            case.error = exc
    return case, server, budget


def _params(aspect: Literal["outcome", "bill"]) -> list[object]:
    out = []
    for row in TABLE:
        for subject in row.subjects:
            if aspect == "bill":
                defect = row.bill_defect
            else:  # a message defect matters only where the error reaches the caller
                defect = None if subject == "router" and _router_answers(row) else row.outcome_defect
            marks = [pytest.mark.xfail(strict=True, reason=defect)] if defect else []
            out.append(pytest.param(row, subject, id=f"{row.id}-{subject}", marks=marks))
    return out


@pytest.mark.parametrize(("row", "subject"), _params("outcome"))
async def test_each_fault_is_survived_or_ends_in_a_typed_error_naming_the_fix(row: Row, subject: Subject) -> None:
    case, server, _ = await _play(row, subject)
    assert server.hits == _expected_hits(row, subject), "requests that reached the server (retry bounds)"
    assert sum(case.waits) <= 2 * POLICY.max_total_s  # the router's fallback may retry on its second rung
    if row.min_wait_s:
        assert max(case.waits) >= row.min_wait_s, f"Retry-After was not honoured: waits {case.waits}"
    if row.error is None or (subject == "router" and _router_answers(row)):
        assert case.error is None, f"expected an answer, got {case.error!r}"
        assert case.answer == _expected_answer(row, subject)
        if subject == "router":
            assert case.escalated == (row.escalates or row.falls_back)
        return
    error = case.error
    assert error is not None, f"expected {row.error.__name__}, got the answer {case.answer!r}"
    if subject == "workflow":  # the engine names the node and keeps the model's error as the cause
        assert isinstance(error, NodeFailedError), repr(error)
        assert "node 'answer'" in str(error) or "node 'verify'" in str(error)
        error = error.__cause__
    assert isinstance(error, row.error), repr(error)
    assert_matches(row.match, str(error))


@pytest.mark.parametrize(("row", "subject"), _params("bill"))
async def test_the_bill_counts_every_attempt_that_reached_the_server_once(row: Row, subject: Subject) -> None:
    _, server, budget = await _play(row, subject)
    bill = budget.bill()
    assert bill.requests == server.hits, f"bill {bill.requests} request(s), server saw {server.hits}"
    delivered = server.delivered
    assert bill.prompt_tokens == sum(p for p, _ in delivered)
    assert bill.completion_tokens == sum(c for _, c in delivered)
    assert budget.reserved.requests == 0


def assert_matches(pattern: str, message: str) -> None:
    import re

    assert re.search(pattern, message, re.DOTALL), f"{pattern!r} not in {message!r}"
    assert "Traceback" not in message


# --- beyond one request at a time -----------------------------------------------------------------


async def test_calls_in_flight_when_the_server_is_killed_all_finish_after_its_restart() -> None:
    """Twelve slow calls are in flight when the server dies; it comes back and every call is answered."""
    waits: list[float] = []
    async with FaultServer(then=Fault.slow(0.15, OK)) as server:
        budget = Budget()
        async with _client(server, "small", waits) as client:
            model = budget.wrap(client)
            calls = [asyncio.ensure_future(model.complete(ChatRequest.of(f"q{i}", max_tokens=8))) for i in range(12)]
            await server.wait_for_hits(4)  # the client keeps 4 in flight (its default max_in_flight)
            server.kill()
            server.restart()
            done = await asyncio.wait_for(asyncio.gather(*calls), timeout=20)
    assert [c.text for c in done] == [OK] * 12
    assert server.kills == 1
    assert 12 < server.hits <= 12 + 4  # the killed ones were sent again
    assert len(server.delivered) == 12


async def test_the_bill_of_a_kill_during_concurrent_calls_counts_the_killed_attempts() -> None:
    async with FaultServer(then=Fault.slow(0.15, OK)) as server:
        budget = Budget()
        async with _client(server, "small", []) as client:
            model = budget.wrap(client)
            calls = [asyncio.ensure_future(model.complete(ChatRequest.of(f"q{i}", max_tokens=8))) for i in range(8)]
            await server.wait_for_hits(4)
            server.kill()
            server.restart()
            await asyncio.wait_for(asyncio.gather(*calls), timeout=20)
    assert budget.bill().requests == server.hits


async def test_the_fault_server_is_a_real_loopback_server_that_records_what_it_saw() -> None:
    async with FaultServer(["first", Fault.status(418, "teapot")], model="m") as server:
        assert server.url.startswith("http://127.0.0.1:") and server.url.endswith("/v1")
        async with ModelClient(server.url, "m", api_key="k", retry=POLICY) as client:
            assert (await client.chat("hi", max_tokens=3)).text == "first"
            with pytest.raises(ModelError, match="HTTP 418: teapot"):
                await client.chat("again", max_tokens=3)
            with pytest.raises(ServerError, match=r"HTTP 599.*script ran out at request \d"):
                await client.chat("more", max_tokens=3)
    assert server.hits == 2 + ATTEMPTS
    first = server.seen[0]
    assert first.path == "/v1/chat/completions"
    assert first.headers["authorization"] == "Bearer k"
    assert first.body["messages"][-1]["content"] == "hi"
    assert server.delivered[0] == (10, 1)


# --- the circuit breaker: a server that keeps failing is not hammered ------------------------------


@dataclass(frozen=True)
class BreakerRow:
    """A server that answers every request with `fault`. With a circuit that opens after one failed call,
    the first call fails and opens it (unless `opens` is False: a 4xx is the request's fault); then the
    client fails fast and the workflow with it, without reaching the server, and the router falls back to
    its second rung (another server), recording why."""

    id: str
    fault: Fault
    error: type[ModelError]
    opens: bool = True


BREAKER_TABLE = [
    BreakerRow("503 every time", Fault.status(503), ServerError),
    BreakerRow("429 every time", Fault.rate_limited(), RateLimitedError),
    BreakerRow("timeout every time", Fault.hang(), ModelTimeoutError),
    BreakerRow("connection closed without an answer", Fault.drop(), ServerUnavailableError),
    BreakerRow("server killed, stays down", Fault.kill(restart_after_s=None), ServerUnavailableError),
    BreakerRow("a 4xx does not open the circuit", Fault.status(400), RequestRejectedError, opens=False),
]


def _breaker_client(server: FaultServer, name: str) -> ModelClient:
    breaker = CircuitBreaker(failures=1, cooldown_s=600.0)  # no test waits out the cool-down
    return ModelClient(server.url, name, dialect="vllm", retry=POLICY, timeout=TIMEOUT_S, circuit=breaker)


@pytest.mark.parametrize("subject", SUBJECTS)
@pytest.mark.parametrize("row", BREAKER_TABLE, ids=[r.id for r in BREAKER_TABLE])
async def test_once_the_circuit_is_open_calls_fail_fast_or_fall_back(row: BreakerRow, subject: Subject) -> None:
    question = ChatRequest.of("What is the capital of France?", max_tokens=8)
    async with FaultServer(then=row.fault) as small_server, FaultServer(then=Fault.ok(OK)) as large_server:
        async with _breaker_client(small_server, "small") as small, _breaker_client(large_server, "large") as large:
            with pytest.raises(row.error):
                await asyncio.wait_for(small.complete(question), timeout=20)
            assert small.circuit is not None
            assert small.circuit.state == ("open" if row.opens else "closed")
            hits = small_server.hits
            error: BaseException | None = None
            answer = None
            try:
                if subject == "client":
                    answer = (await small.complete(question)).text
                elif subject == "workflow":
                    state = QAState(question=question.messages[0].content)
                    answer = (await build("direct").run(state, deps=QADeps(model=small)))[0].answer
                else:
                    router = Router([small, large], estimator=TokenProb("mean"), thresholds=[0.5])
                    out = await router.complete(question)
                    answer = out.text
                    reason = router.decisions[0].reason
            except (ModelError, NodeFailedError) as exc:
                error = exc.__cause__ if isinstance(exc, NodeFailedError) else exc
    if not row.opens:  # the second call reached the server, and failed the same way
        assert small_server.hits > hits and isinstance(error, row.error), repr(error)
        return
    assert small_server.hits == hits, "an open circuit fails fast, without reaching the server"
    if subject == "router":
        assert answer == OK and error is None and large_server.hits == 1
        assert "CircuitOpenError" in reason and "falling back to the next rung" in reason
        return
    assert isinstance(error, CircuitOpenError), repr(error)
    assert_matches(r"circuit to the model server at .* is open.*1 call\(s\) in a row failed.*Fix: ", str(error))
