"""ModelClient against a scripted OpenAI-compatible server (httpx.MockTransport): retries, errors, wire format."""

from __future__ import annotations

import asyncio
import email.utils
import math
import time

import httpx
import pytest
from tenacity import AsyncRetrying, RetryCallState, stop_before_delay

from agentflow import Budget, ChatRequest, ChoiceOutput, Message, Usage
from agentflow._client import ModelClient
from agentflow._config import NO_RETRY, RetryPolicy
from agentflow._exceptions import (
    BadResponseError,
    ConfigError,
    ModelTimeoutError,
    RateLimitedError,
    RequestRejectedError,
    ServerError,
    ServerUnavailableError,
)
from agentflow._types import Model
from agentflow._wire import excerpt, parse_retry_after, redact
from agentflow.testing import FakeOpenAIServer, FakeResponse, garbage, http_error

URL = "http://fake.test/v1"


class FakeTime:
    """A clock and a sleep that advances it: retries wait no real time."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def make(server: FakeOpenAIServer, t: FakeTime | None = None, **kwargs: object) -> ModelClient:
    t = t or FakeTime()
    return ModelClient(URL, "m", transport=server.transport, sleep=t.sleep, clock=t.clock, **kwargs)  # type: ignore[arg-type]


# --- the basics ----------------------------------------------------------------------------------


async def test_chat_returns_text_finish_reason_usage_and_sends_the_request() -> None:
    server = FakeOpenAIServer([FakeResponse("Paris", usage=(12, 3))])
    async with make(server) as client:
        done = await client.chat([Message.system("Be brief."), Message.user("Capital of France?")], max_tokens=5)
    assert isinstance(client, Model)
    assert (done.text, done.finish_reason, done.model) == ("Paris", "stop", "m")
    assert done.usage == Usage(1, 12, 3)
    assert done.logprobs is None and done.parsed is None
    assert server.paths == ["/v1/chat/completions"]
    assert server.requests[0] == {
        "model": "m",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Capital of France?"},
        ],
        "max_tokens": 5,
        "temperature": 0.0,
    }


async def test_optional_sampling_params_are_sent_only_when_set() -> None:
    server = FakeOpenAIServer(["ok"])
    async with make(server) as client:
        await client.complete(ChatRequest.of("hi", top_p=0.5, seed=7, stop=("\n",), temperature=0.3))
    body = server.requests[0]
    assert (body["top_p"], body["seed"], body["stop"], body["temperature"]) == (0.5, 7, ["\n"], 0.3)
    assert "logprobs" not in body and "response_format" not in body


async def test_missing_usage_counts_zero_tokens_and_says_so_in_meta() -> None:
    server = FakeOpenAIServer([FakeResponse("x", usage=None)])
    async with make(server) as client:
        done = await client.chat("hi")
    assert done.usage == Usage(requests=1)
    assert done.meta["usage_missing"] is True


async def test_chat_logprobs_with_top_k_alternatives() -> None:
    lps = (("Hel", -0.1, (("Hel", -0.1), ("Hi", -2.5), ("Yo", -3.0))), ("lo", -0.2, (("lo", -0.2), ("p", -4.0))))
    server = FakeOpenAIServer([FakeResponse("Hello", logprobs=lps)])
    async with make(server) as client:
        done = await client.chat("hi", logprobs=True, top_logprobs=2)
    assert server.requests[0]["logprobs"] is True and server.requests[0]["top_logprobs"] == 2
    assert done.logprobs is not None
    assert [t.token for t in done.logprobs] == ["Hel", "lo"]
    assert done.logprobs[0].logprob == pytest.approx(-0.1)
    assert done.logprobs[0].top == (("Hel", -0.1), ("Hi", -2.5))  # trimmed to the 2 asked for
    assert done.logprobs[1].top == (("lo", -0.2), ("p", -4.0))
    assert done.logprobs[0].prob == pytest.approx(math.exp(-0.1))


async def test_chat_logprobs_without_top_k_has_no_alternatives() -> None:
    server = FakeOpenAIServer([FakeResponse("a b", prob=0.5)])
    async with make(server) as client:
        done = await client.chat("hi", logprobs=True)
    assert "top_logprobs" not in server.requests[0]
    assert done.logprobs is not None and len(done.logprobs) == 2
    assert all(t.top == () and t.logprob == pytest.approx(math.log(0.5)) for t in done.logprobs)


async def test_llama_cpp_gets_top_logprobs_one_so_it_sends_logprobs_at_all() -> None:
    lps = (("a", -0.1, (("a", -0.1),)), ("b", -0.2, (("b", -0.2),)))
    server = FakeOpenAIServer([FakeResponse("a b", logprobs=lps)])
    async with ModelClient("http://127.0.0.1:9/v1", "m", dialect="llama_cpp", transport=server.transport) as client:
        done = await client.chat("hi", logprobs=True)
    assert server.requests[0]["logprobs"] is True and server.requests[0]["top_logprobs"] == 1
    assert done.logprobs is not None and [t.top for t in done.logprobs] == [(), ()]  # none were asked for


async def test_null_logprob_becomes_minus_infinity() -> None:
    body = {
        "choices": [
            {
                "message": {"content": "x"},
                "finish_reason": "stop",
                "logprobs": {"content": [{"token": "x", "logprob": None, "top_logprobs": []}]},
            }
        ]
    }
    server = FakeOpenAIServer([FakeResponse(json_body=body)])
    async with make(server) as client:
        done = await client.chat("hi", logprobs=True)
    assert done.logprobs is not None and done.logprobs[0].logprob == -math.inf
    assert done.logprobs[0].prob == 0.0


async def test_text_complete_uses_completions_endpoint_and_its_logprob_shape() -> None:
    lps = (("The", -0.3, (("The", -0.3), ("A", -1.5), ("An", -2.0))), (" end", -0.7, ((" end", -0.7), (" cat", -1.0))))
    server = FakeOpenAIServer([FakeResponse("The end", logprobs=lps, finish_reason="length", usage=(4, 2))])
    async with make(server) as client:
        done = await client.text_complete("Once upon", max_tokens=2, logprobs=True, top_logprobs=2, stop=["."])
    assert server.paths == ["/v1/completions"]
    assert server.requests[0] == {
        "model": "m",
        "prompt": "Once upon",
        "max_tokens": 2,
        "temperature": 0.0,
        "stop": ["."],
        "logprobs": 2,
    }
    assert (done.text, done.finish_reason, done.usage) == ("The end", "length", Usage(1, 4, 2))
    assert done.logprobs is not None
    assert [(t.token, t.logprob) for t in done.logprobs] == [("The", -0.3), (" end", -0.7)]
    assert done.logprobs[0].top == (("The", -0.3), ("A", -1.5))
    assert done.logprobs[1].top == ((" end", -0.7), (" cat", -1.0))


async def test_text_complete_logprobs_without_top_k_asks_for_one() -> None:
    server = FakeOpenAIServer([FakeResponse("a b")])
    async with make(server) as client:
        done = await client.text_complete("x", logprobs=True)
    assert server.requests[0]["logprobs"] == 1
    assert done.logprobs is not None and [t.top for t in done.logprobs] == [(), ()]


# --- retries -------------------------------------------------------------------------------------

RETRYABLE = [
    pytest.param(FakeResponse(raise_=httpx.ConnectError("refused")), ServerUnavailableError, id="connect"),
    pytest.param(FakeResponse(raise_=httpx.RemoteProtocolError("closed")), ServerUnavailableError, id="dropped"),
    pytest.param(FakeResponse(raise_=httpx.ProxyError("proxy down")), ServerUnavailableError, id="proxy"),
    pytest.param(FakeResponse(raise_=httpx.ConnectTimeout("no answer")), ServerUnavailableError, id="connect-timeout"),
    pytest.param(FakeResponse(raise_=httpx.ReadTimeout("slow")), ModelTimeoutError, id="timeout"),
    pytest.param(http_error(503, "overloaded"), ServerError, id="503"),
    pytest.param(http_error(500, "boom"), ServerError, id="500"),
    pytest.param(http_error(429, "slow down", retry_after="3"), RateLimitedError, id="429"),
]


@pytest.mark.parametrize(("failure", "error"), RETRYABLE)
async def test_retryable_failure_then_success(failure: FakeResponse, error: type[Exception]) -> None:
    t = FakeTime()
    server = FakeOpenAIServer([failure, failure, "finally"])
    async with make(server, t) as client:
        done = await client.chat("hi")
    assert done.text == "finally"
    assert server.calls == 3
    assert len(t.sleeps) == 2


@pytest.mark.parametrize(("failure", "error"), RETRYABLE)
async def test_retryable_failure_gives_up_after_max_attempts(failure: FakeResponse, error: type[Exception]) -> None:
    t = FakeTime()
    server = FakeOpenAIServer([failure], repeat_last=True)
    async with make(server, t, retry=RetryPolicy(max_attempts=3, max_total_s=1000)) as client:
        with pytest.raises(error) as info:
            await client.chat("hi")
    assert server.calls == 3
    assert "gave up after 3 attempt(s)" in str(info.value)
    assert info.value.retryable  # type: ignore[attr-defined]


async def test_backoff_is_exponential_and_capped() -> None:
    t = FakeTime()
    server = FakeOpenAIServer([http_error(502)], repeat_last=True)
    policy = RetryPolicy(max_attempts=5, max_total_s=1000, initial_backoff_s=1, multiplier=2, max_backoff_s=3)
    async with make(server, t, retry=policy) as client:
        with pytest.raises(ServerError):
            await client.chat("hi")
    assert t.sleeps == [1, 2, 3, 3]


async def test_retry_after_seconds_is_honoured_when_longer_than_backoff() -> None:
    t = FakeTime()
    server = FakeOpenAIServer([http_error(429, retry_after="7"), "ok"])
    async with make(server, t) as client:
        done = await client.chat("hi")
    assert done.text == "ok"
    assert t.sleeps == [7.0]


async def test_retry_after_http_date_is_honoured() -> None:
    t = FakeTime()
    when = email.utils.formatdate(time.time() + 20, usegmt=True)
    server = FakeOpenAIServer([http_error(429, retry_after=when), "ok"])
    async with make(server, t) as client:
        await client.chat("hi")
    assert len(t.sleeps) == 1 and 18 <= t.sleeps[0] <= 21


async def test_rate_limited_error_carries_retry_after_and_status() -> None:
    server = FakeOpenAIServer([http_error(429, "too many", retry_after="2")])
    async with make(server, retry=NO_RETRY) as client:
        with pytest.raises(RateLimitedError) as info:
            await client.chat("hi")
    err = info.value
    assert (err.retry_after, err.status_code, err.server_message) == (2.0, 429, "too many")
    assert server.calls == 1


async def test_retry_after_longer_than_allowed_is_not_waited_for() -> None:
    t = FakeTime()
    server = FakeOpenAIServer([http_error(429, retry_after="3600"), "ok"])
    async with make(server, t) as client:
        with pytest.raises(RateLimitedError) as info:
            await client.chat("hi")
    assert t.sleeps == [] and server.calls == 1
    assert info.value.retry_after == 3600


async def test_total_time_bound_stops_retries_before_max_attempts() -> None:
    t = FakeTime()
    server = FakeOpenAIServer([http_error(500)], repeat_last=True)
    policy = RetryPolicy(max_attempts=100, max_total_s=10, initial_backoff_s=4, multiplier=1, max_backoff_s=4)
    async with make(server, t, retry=policy) as client:
        with pytest.raises(ServerError) as info:
            await client.chat("hi")
    assert t.sleeps == [4, 4]  # a third wait would end at 12 s > 10 s
    assert server.calls == 3
    assert "within 10 s" in str(info.value)


async def test_slow_attempts_count_against_the_total_time() -> None:
    t = FakeTime()

    async def handler(request: httpx.Request) -> httpx.Response:
        t.now += 30  # every attempt takes 30 s of (fake) time
        return httpx.Response(503, json={"error": {"message": "busy"}})

    policy = RetryPolicy(max_attempts=10, max_total_s=60)
    client = ModelClient(URL, "m", transport=httpx.MockTransport(handler), sleep=t.sleep, clock=t.clock, retry=policy)
    async with client:
        with pytest.raises(ServerError):
            await client.chat("hi")
    assert len(t.sleeps) == 1  # after 2 attempts (60 s) no retry fits any more


async def test_unavailable_server_error_says_how_to_fix() -> None:
    server = FakeOpenAIServer([FakeResponse(raise_=httpx.ConnectError("refused"))], repeat_last=True)
    async with make(server) as client:
        with pytest.raises(ServerUnavailableError) as info:
            await client.chat("hi")
    msg = str(info.value)
    assert "http://fake.test/v1" in msg and "agentflow serve m" in msg and "is the server running" in msg


@pytest.mark.parametrize(
    ("script", "error", "reached"),
    [
        pytest.param([httpx.ConnectError("refused")] * 2, ServerUnavailableError, 0, id="refused-every-time"),
        pytest.param([httpx.ConnectTimeout("no")] * 2, ServerUnavailableError, 0, id="connect-timeout"),
        pytest.param([httpx.PoolTimeout("no free connection")] * 2, ModelTimeoutError, 0, id="pool-timeout"),
        pytest.param([httpx.ConnectError("refused"), 503], ServerError, 1, id="refused-then-503"),
        pytest.param([httpx.ReadError("reset")] * 2, ServerUnavailableError, 2, id="reset-after-sending"),
        pytest.param([httpx.ReadTimeout("slow")] * 2, ModelTimeoutError, 2, id="read-timeout"),
        pytest.param([503, 400], RequestRejectedError, 2, id="503-then-4xx"),
        pytest.param([400], RequestRejectedError, 1, id="4xx"),
        pytest.param([FakeResponse(body="<html>x</html>")], BadResponseError, 1, id="2xx-not-json"),
        pytest.param([503, FakeResponse(json_body={"no": "choices"})], BadResponseError, 2, id="2xx-not-a-completion"),
    ],
)
async def test_an_error_counts_the_attempts_that_reached_the_server(
    script: list[BaseException | int | FakeResponse], error: type[Exception], reached: int
) -> None:
    # a budget charges a failed call what its error says it spent: every attempt that reached the server, once
    replies = [
        x if isinstance(x, FakeResponse) else http_error(x) if isinstance(x, int) else FakeResponse(raise_=x)
        for x in script
    ]
    async with make(FakeOpenAIServer(replies), retry=RetryPolicy(max_attempts=2), circuit=None) as client:
        with pytest.raises(error) as info:
            await client.chat("hi")
    assert getattr(info.value, "usage", "missing") == Usage(requests=reached)


async def test_an_answer_after_retries_counts_every_attempt_once_and_the_tokens_of_the_answer() -> None:
    replies = [http_error(503), FakeResponse(raise_=httpx.ReadError("reset")), FakeResponse("ok", usage=(7, 3))]
    budget = Budget()
    async with make(FakeOpenAIServer(replies), retry=RetryPolicy(max_attempts=3), circuit=None) as client:
        done = await budget.wrap(client).complete(ChatRequest.of("hi"))
    assert done.text == "ok" and done.usage == Usage(requests=3, prompt_tokens=7, completion_tokens=3)
    bill = budget.bill()
    assert (bill.requests, bill.prompt_tokens, bill.completion_tokens) == (3, 7, 3)


async def test_a_failed_structured_call_counts_its_earlier_answers_and_the_failed_attempts() -> None:
    replies = [FakeResponse("maybe", usage=(5, 1)), http_error(503), http_error(400)]
    retry = RetryPolicy(max_attempts=2)
    async with make(FakeOpenAIServer(replies), retry=retry, circuit=None, dialect="vllm") as client:
        with pytest.raises(RequestRejectedError) as info:
            await client.parse("yes or no?", ChoiceOutput(("yes", "no")), structured_retries=1)
    assert info.value.usage == Usage(requests=3, prompt_tokens=5, completion_tokens=1)


async def test_one_constant_decides_the_default_answer_length() -> None:
    import inspect

    from agentflow import DEFAULT_ANSWER_TOKENS, DEFAULT_REASONING_TOKENS

    assert (DEFAULT_ANSWER_TOKENS, DEFAULT_REASONING_TOKENS) == (32, 160)  # the README's short answers, reasoning
    assert ChatRequest.of("hi").max_tokens == DEFAULT_ANSWER_TOKENS
    assert inspect.signature(ModelClient.text_complete).parameters["max_tokens"].default == DEFAULT_ANSWER_TOKENS
    server = FakeOpenAIServer(["ok"])
    async with make(server) as client:
        await client.chat("hi")
    assert server.requests[0]["max_tokens"] == DEFAULT_ANSWER_TOKENS


async def test_timeout_error_names_the_timeout() -> None:
    server = FakeOpenAIServer([FakeResponse(raise_=httpx.ReadTimeout("slow"))], repeat_last=True)
    async with make(server, timeout=42.0) as client:
        with pytest.raises(ModelTimeoutError, match=r"within 42\.0 s"):
            await client.chat("hi")


async def test_real_connection_refused_maps_to_server_unavailable() -> None:
    t = FakeTime()
    # port 9 (discard) on loopback: nothing listens there in a test environment
    async with ModelClient("http://127.0.0.1:9/v1", "m", sleep=t.sleep, clock=t.clock, retry=NO_RETRY) as client:
        with pytest.raises(ServerUnavailableError, match=r"127\.0\.0\.1:9"):
            await client.chat("hi")


# --- errors that are not retried -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "hint"),
    [(400, "fix the request"), (401, "api_key"), (404, "base_url"), (422, "parameter")],
)
async def test_client_errors_raise_at_once_with_status_and_message(status: int, hint: str) -> None:
    t = FakeTime()
    server = FakeOpenAIServer([http_error(status, f"server says {status}"), "never"])
    async with make(server, t) as client:
        with pytest.raises(RequestRejectedError) as info:
            await client.chat("hi")
    err = info.value
    assert server.calls == 1 and t.sleeps == []
    assert err.status_code == status and err.server_message == f"server says {status}"
    assert not err.retryable
    assert f"HTTP {status}" in str(err) and f"server says {status}" in str(err) and hint in str(err)


async def test_fastapi_validation_detail_becomes_the_server_message() -> None:
    detail = {"detail": [{"loc": ["body", "max_tokens"], "msg": "Input should be a valid integer", "type": "x"}]}
    server = FakeOpenAIServer([FakeResponse(status=422, json_body=detail)])
    async with make(server) as client:
        with pytest.raises(RequestRejectedError) as info:
            await client.chat("hi")
    assert info.value.server_message == "max_tokens: Input should be a valid integer"


async def test_plain_text_error_body_is_the_server_message() -> None:
    server = FakeOpenAIServer([FakeResponse(status=400, body="bad things", headers=(("Content-Type", "text/plain"),))])
    async with make(server) as client:
        with pytest.raises(RequestRejectedError) as info:
            await client.chat("hi")
    assert info.value.server_message == "bad things"


# --- garbage -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("reply", "words"),
    [
        pytest.param(garbage("<html><body>Welcome to nginx</body></html>"), "HTML page", id="html"),
        pytest.param(garbage(""), "empty body", id="empty"),
        pytest.param(garbage('{"choices": [', content_type="application/json"), "not JSON", id="truncated-json"),
        pytest.param(FakeResponse(json_body={"object": "list", "data": []}), "without a `choices`", id="no-choices"),
        pytest.param(FakeResponse(json_body={"choices": []}), "without a `choices`", id="empty-choices"),
        pytest.param(FakeResponse(json_body=[1, 2]), "not an object", id="json-list"),
        pytest.param(FakeResponse(json_body={"choices": [{"finish_reason": "stop"}]}), "`message`", id="no-message"),
        pytest.param(
            FakeResponse(json_body={"choices": [{"message": {"content": 5}}]}), "non-text", id="non-text-content"
        ),
    ],
)
async def test_garbage_raises_bad_response_without_retrying(reply: FakeResponse, words: str) -> None:
    server = FakeOpenAIServer([reply, "never"])
    async with make(server) as client:
        with pytest.raises(BadResponseError) as info:
            await client.chat("hi")
    assert words in str(info.value)
    assert "base_url" in str(info.value)
    assert server.calls == 1


async def test_text_completion_without_text_is_bad_response() -> None:
    server = FakeOpenAIServer([FakeResponse(json_body={"choices": [{"message": {"content": "chat shape"}}]})])
    async with make(server) as client:
        with pytest.raises(BadResponseError, match="without `text`"):
            await client.text_complete("hi")


async def test_null_content_is_empty_text() -> None:
    server = FakeOpenAIServer([FakeResponse(json_body={"choices": [{"message": {"content": None}}]})])
    async with make(server) as client:
        done = await client.chat("hi")
    assert done.text == "" and done.finish_reason is None


async def test_undecodable_body_is_a_bad_response() -> None:
    server = FakeOpenAIServer([FakeResponse(raise_=httpx.DecodingError("bad gzip")), "never"])
    async with make(server) as client:
        with pytest.raises(BadResponseError, match="could not be decoded"):
            await client.chat("hi")
    assert server.calls == 1


async def test_redirect_is_a_bad_response() -> None:
    server = FakeOpenAIServer([FakeResponse(status=301, body="", headers=(("Location", "http://x/v2"),))])
    async with make(server) as client:
        with pytest.raises(BadResponseError, match="HTTP 301"):
            await client.chat("hi")


# --- in-flight cap, pooling, secrets -------------------------------------------------------------


async def test_max_in_flight_caps_concurrent_requests() -> None:
    server = FakeOpenAIServer([FakeResponse("x", delay=0.02)], repeat_last=True)
    async with make(server, max_in_flight=2) as client:
        results = await asyncio.gather(*(client.chat(f"q{i}") for i in range(8)))
    assert [r.text for r in results] == ["x"] * 8
    assert server.max_in_flight_seen == 2


async def test_without_a_cap_requests_do_overlap() -> None:
    server = FakeOpenAIServer([FakeResponse("x", delay=0.02)], repeat_last=True)
    async with make(server, max_in_flight=8) as client:
        await asyncio.gather(*(client.chat(f"q{i}") for i in range(8)))
    assert server.max_in_flight_seen > 2


async def test_api_key_is_sent_as_bearer_but_never_shown() -> None:
    key = "sk-secret-123456"
    server = FakeOpenAIServer([http_error(401, f"Invalid API key: {key}")])
    client = make(server, api_key=key)
    assert key not in repr(client) and "***" in repr(client)
    with pytest.raises(RequestRejectedError) as info:
        await client.chat("hi")
    assert server.headers[0]["authorization"] == f"Bearer {key}"
    assert key not in str(info.value) and key not in (info.value.server_message or "")
    assert key not in repr(info.value)
    await client.aclose()


async def test_no_authorization_header_without_api_key() -> None:
    server = FakeOpenAIServer(["ok"])
    async with make(server) as client:
        await client.chat("hi")
    assert "authorization" not in server.headers[0]


async def test_credentials_in_base_url_never_reach_messages() -> None:
    server = FakeOpenAIServer([http_error(500)], repeat_last=True)
    client = ModelClient("http://user:pw@fake.test/v1?key=abc", "m", transport=server.transport, retry=NO_RETRY)
    with pytest.raises(ServerError) as info:
        await client.chat("hi")
    assert "pw" not in str(info.value) and "abc" not in str(info.value) and "pw" not in repr(client)
    await client.aclose()


async def test_a_passed_in_http_client_is_not_closed() -> None:
    server = FakeOpenAIServer(["a", "b"])
    http = httpx.AsyncClient(transport=server.transport)
    async with ModelClient(URL, "m", http=http) as client:
        await client.chat("hi")
    assert not http.is_closed
    async with ModelClient(URL, "m", http=http) as client:
        assert (await client.chat("again")).text == "b"
    await http.aclose()


async def test_owned_http_client_is_closed() -> None:
    server = FakeOpenAIServer(["a"])
    client = make(server)
    await client.aclose()
    with pytest.raises(RuntimeError):
        await client.chat("hi")


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_in_flight": 0},
        {"timeout": 0},
        {"structured_retries": -1},
        {"dialect": "tgi"},
        {"http": httpx.AsyncClient(), "transport": httpx.MockTransport(lambda r: httpx.Response(200))},
    ],
)
def test_bad_settings_raise_config_error(kwargs: dict[str, object]) -> None:
    with pytest.raises(ConfigError):
        ModelClient(URL, "m", **kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize("url", ["localhost:8080", "ftp://x/v1", "http://", "http://[::1"])
def test_base_url_must_be_http(url: str) -> None:
    with pytest.raises(ConfigError, match="not an http"):
        ModelClient(url, "m")


def test_retry_policy_validates() -> None:
    with pytest.raises(ConfigError, match="max_attempts"):
        RetryPolicy(max_attempts=0)
    with pytest.raises(ConfigError, match="multiplier"):
        RetryPolicy(multiplier=0.5)
    with pytest.raises(ConfigError, match=r"max_retry_after_s=-1\) must not be negative"):
        RetryPolicy(max_retry_after_s=-1)


def test_tenacity_times_stop_before_delay_by_the_fields_the_client_sets() -> None:
    # ModelClient puts its own clock's times on tenacity's state (start_time, outcome_timestamp), so that the total
    # bound counts on the clock it was given: a tenacity that measured elapsed time otherwise must fail here
    state = RetryCallState(AsyncRetrying(), None, (), {})
    state.start_time, state.outcome_timestamp, state.upcoming_sleep = 100.0, 103.0, 2.0
    assert stop_before_delay(5)(state) and not stop_before_delay(5.5)(state)


def test_retry_policy_backoff_is_tenacitys_wait_exponential() -> None:
    state = RetryCallState(AsyncRetrying(), None, (), {})
    policy = RetryPolicy(initial_backoff_s=1, multiplier=3, max_backoff_s=5)
    waits = []
    for attempt in (1, 2, 3, 10):
        state.attempt_number = attempt
        waits.append(policy.backoff()(state))
    assert waits == [1, 3, 5, 5]


def test_parse_retry_after() -> None:
    assert parse_retry_after("5", now=0) == 5.0
    assert parse_retry_after("1.5", now=0) == 1.5
    assert parse_retry_after("-3", now=0) == 0.0
    assert parse_retry_after(None, now=0) is None
    assert parse_retry_after("soon", now=0) is None
    date = email.utils.formatdate(1_000_000 + 30, usegmt=True)
    assert parse_retry_after(date, now=1_000_000) == pytest.approx(30, abs=1)


async def test_llama_cpp_style_500_validation_error_is_rejected_not_retried() -> None:
    # llama-cpp-python 0.3.36 answers a bad parameter with HTTP 500, the pydantic error and a traceback
    message = (
        "1 validation error:\n  {'type': 'greater_than_equal', 'loc': ('body', 'max_tokens'), "
        "'msg': 'Input should be greater than or equal to 0', 'input': -5}\n\n"
        '  File "/venv/lib/python3.11/site-packages/llama_cpp/server/app.py", line 264, in create_completion\n'
    )
    t = FakeTime()
    server = FakeOpenAIServer([http_error(500, message), "never"])
    async with make(server, t) as client:
        with pytest.raises(RequestRejectedError) as info:
            await client.text_complete("x", max_tokens=-5)
    assert server.calls == 1 and t.sleeps == []
    assert info.value.status_code == 500
    assert "greater than or equal to 0" in str(info.value)
    assert "app.py" not in str(info.value)  # the traceback is cut off


async def test_unknown_parameter_is_a_config_error_naming_the_known_ones() -> None:
    server = FakeOpenAIServer(["never"])
    async with make(server) as client:
        with pytest.raises(ConfigError, match=r"parameter\(s\) max_token: .*max_tokens"):
            await client.chat("hi", max_token=5)
    assert server.calls == 0


# --- hostile answers: size, depth, echoed secrets ------------------------------------------------


async def test_an_answer_over_max_response_bytes_is_a_bad_response_naming_the_cap() -> None:
    big = FakeResponse(body='{"choices": [{"message": {"content": "' + "x" * 5000 + '"}}]}')
    server = FakeOpenAIServer([big, "never"])
    async with make(server, max_response_bytes=1000) as client:
        with pytest.raises(BadResponseError, match=r"larger than the 1000 bytes limit.*max_response_bytes=") as info:
            await client.chat("hi")
    assert info.value.usage == Usage(requests=1) and server.calls == 1
    async with make(FakeOpenAIServer([big]), max_response_bytes=6000) as client:
        assert (await client.chat("hi")).text == "x" * 5000


async def test_an_error_body_over_the_cap_is_cut_not_refused() -> None:
    server = FakeOpenAIServer([FakeResponse(status=400, body="bad " * 1000)])
    async with make(server, max_response_bytes=100) as client:
        with pytest.raises(RequestRejectedError, match="HTTP 400: bad bad") as info:
            await client.chat("hi")
    assert len(info.value.server_message or "") <= 203


def test_max_response_bytes_must_be_positive() -> None:
    with pytest.raises(ConfigError, match="max_response_bytes=0 must be at least 1"):
        ModelClient(URL, "m", max_response_bytes=0)


async def test_a_deeply_nested_body_is_a_bad_response_not_a_recursion_error() -> None:
    server = FakeOpenAIServer([FakeResponse(body="[" * 100_000 + "]" * 100_000)])
    async with make(server) as client:
        with pytest.raises(BadResponseError, match=r"nested too deeply.*check that base_url"):
            await client.chat("hi")


async def test_a_connection_dropped_mid_answer_says_so_not_that_nothing_listens() -> None:
    server = FakeOpenAIServer([FakeResponse(raise_=httpx.RemoteProtocolError("peer closed"))] * 2)
    async with make(server, retry=RetryPolicy(max_attempts=2), circuit=None) as client:
        with pytest.raises(ServerUnavailableError) as info:
            await client.chat("hi")
    message = str(info.value)
    assert "closed the connection before it finished answering" in message and "check the server's log" in message
    assert "agentflow serve" not in message and "could not reach" not in message


@pytest.mark.parametrize(
    "reply",
    [
        pytest.param(FakeResponse(body="<html>Authorization: Bearer {key}</html>"), id="html"),
        pytest.param(FakeResponse(json_body={"error": {"message": "bad key {key}"}}), id="no-choices"),
        pytest.param(FakeResponse(json_body={"detail": "Bearer {key}"}), id="bearer-no-choices"),
        pytest.param(FakeResponse(status=500, body="echo: Bearer {key}"), id="5xx-text"),
    ],
)
async def test_a_key_echoed_in_a_body_is_redacted_from_message_and_server_message(reply: FakeResponse) -> None:
    key = "sk-echoed-987654"
    body = reply.body.replace("{key}", key) if isinstance(reply.body, str) else reply.body
    json_body = _fill(reply.json_body, key)
    server = FakeOpenAIServer([FakeResponse(status=reply.status, body=body, json_body=json_body)])
    async with make(server, api_key=key, retry=NO_RETRY) as client:
        with pytest.raises((BadResponseError, ServerError)) as info:
            await client.chat("hi")
    said = f"{info.value} {info.value.server_message} {info.value!r}"
    assert key not in said and "***" in said


def _fill(value: object, key: str) -> object:
    if isinstance(value, str):
        return value.replace("{key}", key)
    if isinstance(value, dict):
        return {k: _fill(v, key) for k, v in value.items()}
    return value


def test_redact_hides_the_secret_and_any_bearer_token_and_excerpt_is_bounded() -> None:
    assert redact("key sk-1 and Bearer abc.def-ghi, bearer XYZ", "sk-1") == "key *** and Bearer ***, Bearer ***"
    assert redact("nothing here", None) == "nothing here"
    cut = excerpt("a\n b " * 500, 50, secret="b")
    assert len(cut) == 53 and cut.endswith("...") and "b" not in cut


async def test_get_sends_the_key_only_to_its_own_server_and_never_retries() -> None:
    seen: list[tuple[str, str | None]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append((str(request.url), request.headers.get("authorization")))
        return httpx.Response(503)

    client = ModelClient("http://127.0.0.1:9/v1", "m", api_key="sk-probe", transport=httpx.MockTransport(handler))
    assert (await client.get("/models")).status_code == 503  # an answer, not retried or raised
    assert (await client.get("http://127.0.0.1:9/metrics", http_timeout=1.0)).status_code == 503
    assert seen == [
        ("http://127.0.0.1:9/v1/models", "Bearer sk-probe"),
        ("http://127.0.0.1:9/metrics", "Bearer sk-probe"),
    ]
    for elsewhere in ("http://127.0.0.1:10/metrics", "https://127.0.0.1:9/metrics", "http://example.com:9/v1"):
        with pytest.raises(ConfigError, match="not on this client's server") as info:
            await client.get(elsewhere)
        assert "sk-probe" not in str(info.value)
    assert len(seen) == 2  # nothing was sent to another server
    await client.aclose()
