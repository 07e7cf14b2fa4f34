"""`ModelClient`: an async client for any OpenAI-compatible server (llama.cpp, vLLM, or a generic one).

One pooled `httpx.AsyncClient` per client (or yours, which is then never closed here); at most
`max_in_flight` requests in flight at once; every request retried through tenacity on connection errors,
timeouts, HTTP 429 (honouring Retry-After) and 5xx, bounded in attempts and in total time (`RetryPolicy`);
other 4xx raise at once with the status and the server's message. Every attempt that reached the server is
counted once in the answer's `usage.requests` (its tokens are those of the attempt that answered), and an error
raised after them carries the same count in `ModelError.usage`, so a budget bills what the server saw. An answer
is read within `max_response_bytes`, and nothing a server sends reaches a message unredacted (the API key and
any `Bearer ...` token become `***`). A server that keeps failing is not
hammered: after `CircuitBreaker.failures` failed calls in a row, calls raise CircuitOpenError at once for a
cool-down, then one probe call checks whether the server is back (`circuit=`; see `_config.py`).

    async with ModelClient("http://127.0.0.1:8080/v1", "qwen-0.5b", dialect="llama_cpp") as llm:
        done = await llm.chat("Name a colour.", max_tokens=8, logprobs=True, top_logprobs=3)
        city = await llm.parse("Where is the Eiffel Tower?", City)       # a validated City instance
        yes = await llm.parse("Is 7 prime?", Literal["yes", "no"])         # "yes" or "no"

Structured output (see `_structured.py`) is asked for in the server's own dialect, validated, and retried
`structured_retries` times when it comes back truncated or invalid; then StructuredOutputError.

`sample(request, n)` gets n answers to one prompt without paying for the prompt n times where the server can:
one request with `n` on vLLM and OpenAI, n requests in turn on llama.cpp (which reuses the prompt it has just
computed, and ignores `n`). What a server took from its prefix cache is in `usage.cached_prompt_tokens`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import replace
from typing import Any, TypeVar, overload

import httpx
from pydantic import SecretStr
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception
from tenacity.stop import stop_base

from ._config import (
    DEFAULT_CIRCUIT,
    DEFAULT_CONNECT_TIMEOUT_S,
    DEFAULT_MAX_IN_FLIGHT,
    DEFAULT_MAX_RESPONSE_BYTES,
    DEFAULT_POOL_LIMITS,
    DEFAULT_RETRY,
    DEFAULT_STRUCTURED_RETRIES,
    DEFAULT_TIMEOUT_S,
    Circuit,
    CircuitBreaker,
    RetryPolicy,
)
from ._events import ModelCallEvent, emit
from ._exceptions import (
    ConfigError,
    ModelError,
    RateLimitedError,
    StructuredOutputError,
    http_error,
)
from ._structured import DIALECTS, Dialect, InvalidOutput, Structured, constraint_body, structured_for, validate_output
from ._types import (
    DEFAULT_ANSWER_TOKENS,
    ChatRequest,
    ChoiceOutput,
    Completion,
    JsonOutput,
    Message,
    OutputSpec,
    RegexOutput,
    Usage,
)
from ._wire import (
    Answer,
    WireChoices,
    WireCompletion,
    decode_json,
    excerpt,
    is_request_validation_error,
    parse_chat,
    parse_chat_choices,
    parse_retry_after,
    parse_text_completion,
    read_answer,
    server_message,
    transport_error,
)

__all__ = ["ModelClient"]

T = TypeVar("T")
W = TypeVar("W", WireCompletion, WireChoices)  # what one response is parsed into: one answer, or several
_NOTHING = Usage()


def _retryable(exc: BaseException) -> bool:
    return isinstance(exc, ModelError) and exc.retryable


def _retry_after(state: RetryCallState) -> float:
    """The Retry-After (seconds) of the HTTP 429 that ended the last attempt; 0 for any other failure."""
    exc = state.outcome.exception() if state.outcome is not None else None
    return exc.retry_after if isinstance(exc, RateLimitedError) and exc.retry_after else 0.0


class _RetryAfterOver(stop_base):
    """A tenacity stop: the server asks to wait (Retry-After) longer than `limit` seconds."""

    def __init__(self, limit: float) -> None:
        self.limit = limit

    def __call__(self, retry_state: RetryCallState) -> bool:
        return _retry_after(retry_state) > self.limit


class ModelClient:
    """An async client for one model on one OpenAI-compatible server; itself a `Model`.

    `circuit`: when to stop calling a server that keeps failing (`CircuitBreaker`; None: never), on `clock`.
    `max_response_bytes`: the largest answer body read (decoded); a larger one raises BadResponseError.
    """

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        dialect: Dialect = "openai",
        http: httpx.AsyncClient | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        api_key: str | None = None,
        timeout: float = DEFAULT_TIMEOUT_S,
        retry: RetryPolicy = DEFAULT_RETRY,
        max_in_flight: int = DEFAULT_MAX_IN_FLIGHT,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        clock: Callable[[], float] = time.monotonic,
        structured_retries: int = DEFAULT_STRUCTURED_RETRIES,
        circuit: CircuitBreaker | None = DEFAULT_CIRCUIT,
        max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
    ) -> None:
        try:
            url = httpx.URL(base_url)
        except (httpx.InvalidURL, TypeError):
            url = httpx.URL()
        if url.scheme not in ("http", "https") or not url.host:
            raise ConfigError(
                f"base_url {_display(base_url)!r} is not an http(s) URL: pass one like 'http://127.0.0.1:8080/v1'"
            )
        if dialect not in DIALECTS:
            raise ConfigError(f"unknown dialect {dialect!r}: use one of {', '.join(DIALECTS)}")
        if http is not None and transport is not None:
            raise ConfigError(
                "pass either http (your own AsyncClient) or transport, not both: "
                "give the transport to your AsyncClient instead"
            )
        if max_in_flight < 1:
            raise ConfigError(f"max_in_flight={max_in_flight} must be at least 1: pass 1 or more")
        if timeout <= 0:
            raise ConfigError(f"timeout={timeout} must be positive (seconds): pass e.g. 120.0")
        if structured_retries < 0:
            raise ConfigError(f"structured_retries={structured_retries} must not be negative: pass 0 or more")
        if max_response_bytes < 1:
            raise ConfigError(
                f"max_response_bytes={max_response_bytes} must be at least 1: pass a size in bytes, e.g. 8 * 2**20"
            )
        if circuit is not None and not isinstance(circuit, CircuitBreaker):
            raise ConfigError(
                f"circuit must be a CircuitBreaker or None, got {type(circuit).__name__}: pass CircuitBreaker(...)"
            )
        self._base = base_url.rstrip("/")
        self._url = _display(self._base)
        self._model = model
        self._dialect: Dialect = dialect
        self._api_key = SecretStr(api_key) if api_key else None
        self._timeout = httpx.Timeout(timeout, connect=min(timeout, DEFAULT_CONNECT_TIMEOUT_S))
        self._retry = retry
        self._max_in_flight = max_in_flight
        self._sleep = sleep
        self._clock = clock
        self._structured_retries = structured_retries
        self._max_response_bytes = max_response_bytes
        self._semaphore = asyncio.Semaphore(max_in_flight)
        self._circuit = None if circuit is None else Circuit(circuit, clock, url=self._url, model=model)
        self._owns_http = http is None
        # a server on this machine is never reached through a proxy from the environment
        loopback = url.host in ("127.0.0.1", "localhost", "::1")
        self._http = http or httpx.AsyncClient(
            transport=transport, limits=DEFAULT_POOL_LIMITS, timeout=self._timeout, trust_env=not loopback
        )

    # --- identity --------------------------------------------------------------------------------

    @property
    def name(self) -> str:
        return self._model

    @property
    def base_url(self) -> str:
        return self._base

    @property
    def dialect(self) -> Dialect:
        return self._dialect

    @property
    def circuit(self) -> Circuit | None:
        """This client's circuit to its server (`.state`: "closed", "open" or "half-open"), or None."""
        return self._circuit

    def __repr__(self) -> str:
        key = ", api_key='***'" if self._api_key is not None else ""
        return f"ModelClient({self._url!r}, {self._model!r}, dialect={self._dialect!r}{key})"

    # --- lifecycle -------------------------------------------------------------------------------

    async def aclose(self) -> None:
        """Close the connection pool (not an AsyncClient you passed in: that one is yours)."""
        if self._owns_http:
            await self._http.aclose()

    async def __aenter__(self) -> ModelClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def get(self, url: str, *, http_timeout: httpx.Timeout | float | None = None) -> httpx.Response:
        """GET `url` on this client's server (health probes, `/models`, `/metrics`), through the same connection
        pool, transport and API key as its requests, with no retries (`http_timeout`: this client's timeout by
        default). `url` is a path under the base URL
        ("/models") or an absolute URL on the same scheme, host and port (the server's root `/metrics`): the key
        goes nowhere else."""
        target = httpx.URL(self._base + url if url.startswith("/") else url)
        base = httpx.URL(self._base)
        if (target.scheme, target.host, target.port) != (base.scheme, base.host, base.port):
            raise ConfigError(
                f"ModelClient.get: {_display(url)!r} is not on this client's server {_display(self._url)!r}: "
                'pass a path ("/models") or a URL on the same host and port'
            )
        key = self._secret()
        headers = {"Authorization": f"Bearer {key}"} if key else None
        limit = self._timeout if http_timeout is None else http_timeout
        return await self._http.get(target, headers=headers, timeout=limit)

    # --- the Model protocol and conveniences -----------------------------------------------------

    async def complete(self, request: ChatRequest) -> Completion:
        """Answer one chat request; a request with `output` returns the validated value in `.parsed`."""
        structured = Structured(request.output) if request.output is not None else None
        return await self._complete_reported(request, structured, self._structured_retries)

    @property
    def samples_at_once(self) -> bool:
        """Whether `sample` asks for all its answers in one request (vllm, openai: `n`) or in turn (llama_cpp)."""
        return self._dialect != "llama_cpp"

    async def sample(self, request: ChatRequest, n: int) -> list[Completion]:
        """`n` answers to `request`, without paying for its prompt `n` times where the server can avoid it.

        vllm and openai: one request with `"n": n`; the prompt is computed once, and the usage of that request
        (the prompt once, the completion tokens of all `n` answers, the cached prompt tokens the server reports)
        is on the first answer, the others carrying `Usage()`, so that adding them up counts the request once.
        Each answer's `meta["sample"]` is its index. llama_cpp (its server ignores `n` and answers once): `n`
        requests in turn, each as `complete` would send it, so the server reuses the prompt it has just
        computed (llama-cpp-python keeps the previous request's state and computes only what differs; it does
        not report that, so each answer's usage counts its prompt in full). A request with a `seed` gets seeds
        `seed`, `seed + 1`, ... for its answers on every dialect (vLLM seeds its `n` samples so). A structured
        request (`output`) is answered in turn on every dialect: each answer is validated, and retried, alone.
        """
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ConfigError(f"sample(n={n!r}) needs a whole number of answers n >= 1: pass n=1 or more")
        if n == 1:
            return [await self.complete(request)]
        if not self.samples_at_once or request.output is not None:
            return [await self.complete(_nth(request, i)) for i in range(n)]
        body = {**self._chat_body(request), "n": n}
        top_k = request.top_logprobs if request.logprobs else 0
        secret = self._secret()
        start = self._clock()
        wires = await self._call(
            "/chat/completions",
            body,
            lambda data: parse_chat_choices(data, self._url, n=n, top_logprobs=top_k, secret=secret),
        )
        out = []
        for i, wire in enumerate(wires.choices):
            completion = self._completion(wire, wires.usage if i == 0 else Usage(), None, start)
            completion.meta["sample"] = i
            out.append(completion)
        emit(ModelCallEvent(self.name, wires.usage, out[0].latency_s, False))
        return out

    async def chat(self, messages: Sequence[Message] | str, **params: Any) -> Completion:
        """`complete(ChatRequest.of(messages, **params))`: params are ChatRequest fields (max_tokens, logprobs...)."""
        return await self.complete(_request(messages, params))

    @overload
    async def parse(
        self,
        messages: Sequence[Message] | str,
        output_type: type[T],
        *,
        structured_retries: int | None = None,
        **params: Any,
    ) -> T: ...

    @overload
    async def parse(
        self,
        messages: Sequence[Message] | str,
        output_type: OutputSpec | object,
        *,
        structured_retries: int | None = None,
        **params: Any,
    ) -> Any: ...

    async def parse(
        self,
        messages: Sequence[Message] | str,
        output_type: object,
        *,
        structured_retries: int | None = None,
        **params: Any,
    ) -> Any:
        """The answer as a validated value of `output_type`.

        `output_type`: a pydantic model, a `Literal[...]` or `Enum` of strings, any type pydantic can describe,
        or a JsonOutput / RegexOutput / ChoiceOutput. Raises StructuredOutputError (with the raw text) when the
        answer stays truncated or invalid after `structured_retries` more attempts.
        """
        if "output" in params:
            raise ConfigError("parse() takes the constraint as output_type, not output=: drop the output argument")
        structured = structured_for(output_type)
        request = _request(messages, params).with_(output=structured.spec)
        retries = self._structured_retries if structured_retries is None else structured_retries
        if retries < 0:
            raise ConfigError(f"structured_retries={retries} must not be negative: pass 0 or more")
        completion = await self._complete_reported(request, structured, retries)
        return completion.parsed

    async def text_complete(
        self,
        prompt: str,
        *,
        max_tokens: int = DEFAULT_ANSWER_TOKENS,
        temperature: float = 0.0,
        top_p: float | None = None,
        seed: int | None = None,
        stop: Sequence[str] = (),
        logprobs: bool = False,
        top_logprobs: int = 0,
    ) -> Completion:
        """A raw text completion (POST /completions): no chat template, the prompt is continued as it is."""
        body: dict[str, Any] = {
            "model": self._model,
            "prompt": prompt,
            "max_tokens": max_tokens,
            "temperature": temperature,
        }
        _sampling(body, top_p, seed, stop)
        if logprobs:
            body["logprobs"] = max(top_logprobs, 1)  # some servers read 0 as "no logprobs"
        start = self._clock()
        top_k = top_logprobs if logprobs else 0
        secret = self._secret()
        wire = await self._call(
            "/completions", body, lambda data: parse_text_completion(data, self._url, top_logprobs=top_k, secret=secret)
        )
        out = self._completion(wire, wire.usage, None, start)
        emit(ModelCallEvent(out.model or self.name, out.usage, out.latency_s, out.cached))
        return out

    # --- internals -------------------------------------------------------------------------------

    def _chat_body(self, request: ChatRequest) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self._model,
            "messages": [{"role": m.role, "content": m.content} for m in request.messages],
            "max_tokens": request.max_tokens,
            "temperature": request.temperature,
        }
        _sampling(body, request.top_p, request.seed, request.stop)
        if request.logprobs:
            body["logprobs"] = True
            # llama.cpp's server sends no logprobs at all unless top_logprobs >= 1; alternatives the request
            # did not ask for are dropped again when the answer is parsed.
            top = max(request.top_logprobs, 1) if self._dialect == "llama_cpp" else request.top_logprobs
            if top > 0:
                body["top_logprobs"] = top
        if request.output is not None:
            body.update(constraint_body(request.output, self._dialect))
        return body

    async def _complete_reported(self, request: ChatRequest, structured: Structured | None, retries: int) -> Completion:
        """`_complete`, reporting what it spent to the current graph run (a no-op outside one)."""
        start = self._clock()
        try:
            out = await self._complete(request, structured, retries)
        except StructuredOutputError as e:  # the failed attempts were paid for: the run record counts them
            if e.usage is not None:
                emit(ModelCallEvent(self.name, e.usage, self._clock() - start, False))
            raise
        emit(ModelCallEvent(out.model or self.name, out.usage, out.latency_s, out.cached))
        return out

    async def _complete(self, request: ChatRequest, structured: Structured | None, retries: int) -> Completion:
        body = self._chat_body(request)  # raises UnsupportedConstraintError before anything is sent
        top_k = request.top_logprobs if request.logprobs else 0
        start = self._clock()
        usage = Usage()
        attempts = retries + 1 if structured is not None else 1
        secret = self._secret()
        for attempt in range(1, attempts + 1):
            wire = await self._call(
                "/chat/completions",
                body,
                lambda data: parse_chat(data, self._url, top_logprobs=top_k, secret=secret),
                spent=usage,
            )
            usage = usage + wire.usage
            if structured is None:
                return self._completion(wire, usage, None, start)
            try:
                parsed = validate_output(
                    structured.spec,
                    wire.text,
                    dialect=self._dialect,
                    finish_reason=wire.finish_reason,
                    convert=structured.convert,
                )
            except InvalidOutput as exc:
                problem = str(exc)
                continue
            completion = self._completion(wire, usage, parsed, start)
            completion.meta["structured_attempts"] = attempt
            return completion
        assert structured is not None
        raise StructuredOutputError(
            f"model {self._model!r} at {self._url} gave no valid {_kind(structured.spec)} in {attempts} attempt(s); "
            f"the last answer {problem}. Last answer: {excerpt(wire.text, secret=secret)!r}. "
            "Fix: say in the prompt what to answer, "
            "raise max_tokens, use a larger model, or raise structured_retries",
            raw_text=wire.text,
            attempts=attempts,
            finish_reason=wire.finish_reason,
            usage=usage,
        )

    def _completion(self, wire: WireCompletion, usage: Usage, parsed: Any, start: float) -> Completion:
        return Completion(
            text=wire.text,
            model=self._model,
            finish_reason=wire.finish_reason,
            usage=usage,
            logprobs=wire.logprobs,
            parsed=parsed,
            latency_s=max(0.0, self._clock() - start),
            meta=dict(wire.meta),
        )

    async def _call(self, path: str, body: dict[str, Any], parse: Callable[[Any], W], spent: Usage = _NOTHING) -> W:
        """POST `body` to `path` and `parse` the answer, whose usage counts every attempt that reached the
        server. An error carries what was spent: those attempts, plus `spent` (earlier answers of this call)."""
        try:
            data, reached = await self._post(path, body)
        except ModelError as exc:
            exc.usage = spent + (exc.usage or Usage())
            raise
        try:
            wire = parse(data)
        except ModelError as exc:  # a 2xx answer that is not a completion: the server was reached all the same
            exc.usage = spent + Usage(requests=reached)
            raise
        return replace(wire, usage=replace(wire.usage, requests=reached))

    async def _post(self, path: str, body: dict[str, Any]) -> tuple[Any, int]:
        """POST `body` to `path` with retries: the decoded JSON body of the answer, and how many attempts
        reached the server (the one that answered among them). An error raised carries those attempts as its
        `usage` (`Usage()`: none reached the server, e.g. a refused connection or an open circuit)."""
        url = self._base + path
        policy = self._retry
        clock = self._clock
        start = clock()
        attempts = 0
        backoff = policy.backoff()
        probe = [False]  # whether the attempt under way is a half-open circuit's probe (it gets one attempt)
        reached = 0  # attempts that reached the server (a refused connection, an open circuit do not)

        def on_this_clock(state: RetryCallState) -> None:
            # tenacity times attempts with time.monotonic; stop_before_delay is to count on the clock given here
            state.start_time, state.outcome_timestamp = start, clock()

        retrying = AsyncRetrying(
            stop=policy.stop() | _RetryAfterOver(policy.max_retry_after_s),
            wait=lambda state: max(_retry_after(state), backoff(state)),
            retry=retry_if_exception(lambda e: _retryable(e) and not probe[0]),
            after=on_this_clock,
            sleep=self._sleep,
            reraise=True,
        )
        try:
            async for attempt in retrying:
                with attempt:
                    attempts = attempt.retry_state.attempt_number
                    try:
                        data = await self._attempt(url, body, probe)
                    except ModelError as exc:
                        reached += exc.usage is None  # _send marks what never reached the server with Usage()
                        raise
                    return data, reached + 1
        except ModelError as exc:
            exc.usage = Usage(requests=reached)  # token counts of failed attempts are unknown: requests only
            if not exc.retryable:
                raise
            if self._circuit is not None:
                self._circuit.gave_up(exc)
            raise self._gave_up(exc, attempts, self._clock() - start, probe=probe[0]) from exc
        raise AssertionError("unreachable: tenacity ended without a result or an error")  # pragma: no cover

    async def _attempt(self, url: str, body: dict[str, Any], probe: list[bool]) -> Any:
        """One attempt, under the cap on requests in flight, through the circuit: a call that waited for a
        slot while the circuit opened fails fast too."""
        async with self._semaphore:
            if self._circuit is None:
                return await self._send(url, body)
            return await self._circuit.call(lambda: self._send(url, body), probe)

    async def _send(self, url: str, body: dict[str, Any]) -> Any:
        """One HTTP request. An error that is known not to have reached the server carries `usage=Usage()`."""
        headers = {"Authorization": f"Bearer {self._api_key.get_secret_value()}"} if self._api_key else None
        try:
            async with self._http.stream("POST", url, json=body, headers=headers, timeout=self._timeout) as response:
                answer = await read_answer(response, self._url, self._max_response_bytes)
        except (httpx.TransportError, httpx.DecodingError) as exc:
            raise transport_error(exc, self._url, self._model, self._timeout.read, self._secret()) from None
        return self._answer(answer)

    def _answer(self, answer: Answer) -> Any:
        status = answer.status_code
        secret = self._secret()
        if 200 <= status < 300:
            return decode_json(answer, self._url, secret=secret)
        message = server_message(answer, secret=secret)
        retry_after = parse_retry_after(answer.headers.get("retry-after"), time.time()) if status == 429 else None
        validation = status >= 500 and is_request_validation_error(message)
        raise http_error(
            status, message, url=self._url, model=self._model, retry_after=retry_after, validation=validation
        )

    def _secret(self) -> str | None:
        """The API key, for redaction only (None without one)."""
        return self._api_key.get_secret_value() if self._api_key is not None else None

    def _gave_up(self, exc: ModelError, attempts: int, elapsed: float, *, probe: bool) -> ModelError:
        policy = self._retry
        if probe:  # a half-open circuit's probe gets one attempt; it failed, so the circuit is open again
            assert self._circuit is not None
            bounds = f"a circuit's probe gets one; the circuit is open again for {self._circuit.policy.cooldown_s:g} s"
        else:
            bounds = f"RetryPolicy allows {policy.max_attempts} attempts within {policy.max_total_s:g} s"
        message = f"{exc} [gave up after {attempts} attempt(s) in {elapsed:.1f} s; {bounds}]"
        kwargs: dict[str, Any] = {
            "status_code": exc.status_code,
            "server_message": exc.server_message,
            "url": exc.url,
            "usage": exc.usage,
        }
        if isinstance(exc, RateLimitedError):
            return RateLimitedError(message, retry_after=exc.retry_after, **kwargs)
        return type(exc)(message, **kwargs)


def _request(messages: Sequence[Message] | str, params: dict[str, Any]) -> ChatRequest:
    known = set(ChatRequest.__dataclass_fields__) - {"messages"}
    unknown = sorted(set(params) - known)
    if unknown:
        raise ConfigError(
            f"unknown request parameter(s) {', '.join(unknown)}: use ChatRequest's fields ({', '.join(sorted(known))})"
        )
    return ChatRequest.of(messages, **params)


def _nth(request: ChatRequest, i: int) -> ChatRequest:
    """The request for the `i`-th of several answers: the same, with seed `seed + i` when it has a seed."""
    return request if i == 0 or request.seed is None else request.with_(seed=request.seed + i)


def _sampling(body: dict[str, Any], top_p: float | None, seed: int | None, stop: Sequence[str]) -> None:
    if top_p is not None:
        body["top_p"] = top_p
    if seed is not None:
        body["seed"] = seed
    if stop:
        body["stop"] = list(stop)


def _display(url: str) -> str:
    """A URL for messages: no user:password, no query string (either may hold a secret)."""
    try:
        u = httpx.URL(url)
    except (httpx.InvalidURL, TypeError):
        return "<invalid url>"
    port = f":{u.port}" if u.port else ""
    return f"{u.scheme}://{u.host}{port}{u.path}".rstrip("/")


def _kind(spec: OutputSpec) -> str:
    if isinstance(spec, JsonOutput):
        return spec.model.__name__ if spec.model is not None else "JSON"
    if isinstance(spec, RegexOutput):
        return f"match of {spec.pattern!r}"
    assert isinstance(spec, ChoiceOutput)
    return f"choice of {list(spec.choices)}"
