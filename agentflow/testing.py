"""Public test fakes: deterministic models and fake servers for unit tests and fault injection.

Never for the main job: the CLI and the README's commands always talk to a real model server.

- `ScriptedModel(["a", "b"])` answers with its script in order (and says so when it runs out).
- `FunctionModel(fn)` answers with `fn(request)` (a plain or async function).
- Replies may be a `str`, a `Reply` (text plus logprobs, finish reason, usage), or a full `Completion`.
- `FakeOpenAIServer([...])` is a scripted OpenAI-compatible server behind an `httpx.MockTransport`, for
  `ModelClient(..., transport=server.transport)`: completions, HTTP errors (`http_error(429, retry_after="2")`),
  garbage bodies (`garbage("<html>")`), connection errors and timeouts (any httpx exception in the script).
- `FaultServer([Fault.status(503), Fault.ok("x")])` is a real OpenAI-compatible server on 127.0.0.1 (a free
  port, a background thread) that injects faults per request: slow answers and hangs, 429 with and without
  Retry-After, 5xx, connection resets mid-body, HTML, empty and truncated bodies, output that runs to
  max_tokens, missing logprobs, megabyte and deeply nested bodies, and the server killed and restarted.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import math
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass

import httpx

from ._fault_server import Fault, FaultServer, SeenRequest
from ._types import ChatRequest, Completion, TokenLogprob, Usage

__all__ = [
    "FakeOpenAIServer",
    "FakeResponse",
    "Fault",
    "FaultServer",
    "FunctionModel",
    "Reply",
    "ScriptedModel",
    "SeenRequest",
    "garbage",
    "http_error",
    "reply_to_completion",
]


@dataclass(frozen=True, slots=True)
class Reply:
    """A scripted answer. `prob` gives every token that probability in the logprobs."""

    text: str
    prob: float = 0.9
    finish_reason: str = "stop"
    prompt_tokens: int | None = None
    completion_tokens: int | None = None


ReplyLike = str | Reply | Completion


def _tokens(text: str) -> list[str]:
    words = text.split(" ")
    return [w if i == 0 else " " + w for i, w in enumerate(words)] if text else []


def reply_to_completion(reply: ReplyLike, request: ChatRequest, model: str) -> Completion:
    """Turn a scripted reply into a Completion with plausible usage and (if asked) logprobs."""
    if isinstance(reply, Completion):
        return reply
    r = Reply(reply) if isinstance(reply, str) else reply
    toks = _tokens(r.text)
    prompt = r.prompt_tokens if r.prompt_tokens is not None else max(1, request.prompt_chars() // 4)
    completion = r.completion_tokens if r.completion_tokens is not None else len(toks)
    logprobs = None
    if request.logprobs:
        lp = math.log(max(r.prob, 1e-12))
        logprobs = tuple(TokenLogprob(t, lp, ((t, lp),) if request.top_logprobs else ()) for t in toks)
    return Completion(
        text=r.text,
        model=model,
        finish_reason=r.finish_reason,
        usage=Usage(1, prompt, completion),
        logprobs=logprobs,
    )


class ScriptedModel:
    """Answers from a fixed script, in order. Records every request in `.requests`."""

    def __init__(self, script: Iterable[ReplyLike], *, name: str = "scripted", cycle: bool = False) -> None:
        self._script = list(script)
        self._cycle = cycle
        self._i = 0
        self._name = name
        self.requests: list[ChatRequest] = []

    @property
    def name(self) -> str:
        return self._name

    async def complete(self, request: ChatRequest) -> Completion:
        self.requests.append(request)
        if self._i >= len(self._script):
            if not self._cycle or not self._script:
                raise AssertionError(
                    f"ScriptedModel {self._name!r} ran out of replies after {len(self._script)} calls: "
                    "add more replies to its script or pass cycle=True"
                )
            self._i = 0
        reply = self._script[self._i]
        self._i += 1
        return reply_to_completion(reply, request, self._name)


class FunctionModel:
    """Answers with `fn(request)`; `fn` may be sync or async and return any ReplyLike."""

    def __init__(
        self,
        fn: Callable[[ChatRequest], ReplyLike | Awaitable[ReplyLike]],
        *,
        name: str = "function",
    ) -> None:
        self._fn = fn
        self._name = name
        self.requests: list[ChatRequest] = []

    @property
    def name(self) -> str:
        return self._name

    async def complete(self, request: ChatRequest) -> Completion:
        self.requests.append(request)
        out = self._fn(request)
        if inspect.isawaitable(out):
            out = await out
        return reply_to_completion(out, request, self._name)


# --- a fake OpenAI-compatible server (for ModelClient tests and fault injection) -----------------


@dataclass(frozen=True, slots=True)
class FakeResponse:
    """One scripted answer of `FakeOpenAIServer`.

    By default a 200 completion of `text` (shaped for the endpoint that was called, with usage and, when
    the request asked for them, logprobs). `status` != 200 answers an OpenAI-style error body carrying
    `error_message`; `body` (bytes or str) replaces the whole body (garbage: HTML, empty, invalid JSON);
    `json_body` replaces it with any JSON value (e.g. a dict without `choices`). `headers` are added
    (e.g. {"Retry-After": "2"}). `raise_` raises that httpx error instead of answering (e.g.
    `httpx.ConnectError("refused")`, `httpx.ReadTimeout("slow")`). `delay` sleeps first (for concurrency
    tests). `logprobs`, when given, are the exact (token, logprob, ((alt, logprob), ...)) to send.
    """

    text: str = ""
    status: int = 200
    finish_reason: str = "stop"
    headers: tuple[tuple[str, str], ...] = ()
    body: bytes | str | None = None
    json_body: object = None
    error_message: str = "scripted error"
    raise_: Exception | None = None
    delay: float = 0.0
    prob: float = 0.9
    logprobs: tuple[tuple[str, float, tuple[tuple[str, float], ...]], ...] | None = None
    usage: tuple[int, int] | None = (7, -1)


def http_error(status: int, message: str = "scripted error", *, retry_after: str | None = None) -> FakeResponse:
    """A scripted HTTP error with an OpenAI-style JSON body (and a Retry-After header if given)."""
    headers = (("Retry-After", retry_after),) if retry_after is not None else ()
    return FakeResponse(status=status, error_message=message, headers=headers)


def garbage(body: bytes | str, *, status: int = 200, content_type: str = "text/html") -> FakeResponse:
    """A scripted answer whose body is not a completion (HTML, empty, truncated JSON...)."""
    return FakeResponse(status=status, body=body, headers=(("Content-Type", content_type),))


FakeReplyLike = str | FakeResponse | Exception


class FakeOpenAIServer:
    """A scripted OpenAI-compatible server behind an `httpx.MockTransport`; no socket is opened.

        server = FakeOpenAIServer(["first answer", http_error(429, retry_after="1"), "after the 429"])
        client = ModelClient("http://fake/v1", "m", transport=server.transport)

    Answers POST .../chat/completions and .../completions from the script, in order (then the last
    entry again if `repeat_last`, else an AssertionError reply of HTTP 599 saying the script ran out), and
    GET .../models with the model name. Records what it saw: `requests` (JSON bodies), `paths`, `headers`,
    and the most requests it had in flight at once (`max_in_flight_seen`).
    """

    def __init__(self, script: Iterable[FakeReplyLike], *, model: str = "fake-model", repeat_last: bool = False):
        self._script = list(script)
        self._repeat_last = repeat_last
        self._i = 0
        self.model = model
        self.requests: list[dict[str, object]] = []
        self.paths: list[str] = []
        self.headers: list[dict[str, str]] = []
        self.in_flight = 0
        self.max_in_flight_seen = 0
        self.transport = httpx.MockTransport(self.handler)

    @property
    def calls(self) -> int:
        return len(self.requests)

    def _next(self) -> FakeReplyLike | None:
        if self._i < len(self._script):
            item = self._script[self._i]
            self._i += 1
            return item
        if self._repeat_last and self._script:
            return self._script[-1]
        return None

    async def handler(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        if request.method == "GET" and path.endswith("/models"):
            return httpx.Response(200, json={"object": "list", "data": [{"id": self.model, "object": "model"}]})
        body = json.loads(request.content) if request.content else {}
        self.requests.append(body)
        self.paths.append(path)
        self.headers.append(dict(request.headers))
        self.in_flight += 1
        self.max_in_flight_seen = max(self.max_in_flight_seen, self.in_flight)
        try:
            item = self._next()
            if item is None:
                return httpx.Response(
                    599, json={"error": {"message": f"FakeOpenAIServer script ran out after {len(self._script)}"}}
                )
            reply = FakeResponse(item) if isinstance(item, str) else item
            if isinstance(reply, Exception):
                raise reply
            if reply.delay:
                await asyncio.sleep(reply.delay)
            if reply.raise_ is not None:
                raise reply.raise_
            return self._respond(reply, path, body)
        finally:
            self.in_flight -= 1

    def _respond(self, reply: FakeResponse, path: str, body: dict[str, object]) -> httpx.Response:
        headers = dict(reply.headers)
        if reply.body is not None:
            return httpx.Response(reply.status, content=reply.body, headers=headers)
        if reply.json_body is not None:
            return httpx.Response(reply.status, json=reply.json_body, headers=headers)
        if reply.status != 200:
            err = {"error": {"message": reply.error_message, "type": "scripted", "code": reply.status}}
            return httpx.Response(reply.status, json=err, headers=headers)
        chat = path.endswith("/chat/completions")
        choice: dict[str, object] = {"index": 0, "finish_reason": reply.finish_reason}
        if chat:
            choice["message"] = {"role": "assistant", "content": reply.text}
        else:
            choice["text"] = reply.text
        wants = body.get("logprobs")
        if wants is not None and wants is not False:
            top_n = body.get("top_logprobs", 0) if chat else wants
            choice["logprobs"] = _fake_logprobs(reply, int(top_n) if isinstance(top_n, int) else 0, chat)
        out: dict[str, object] = {
            "id": f"fake-{len(self.requests)}",
            "object": "chat.completion" if chat else "text_completion",
            "model": self.model,
            "choices": [choice],
        }
        if reply.usage is not None:
            prompt, completion = reply.usage
            completion = completion if completion >= 0 else len(_tokens(reply.text))
            out["usage"] = {
                "prompt_tokens": prompt,
                "completion_tokens": completion,
                "total_tokens": prompt + completion,
            }
        return httpx.Response(200, json=out, headers=headers)


def _fake_logprobs(reply: FakeResponse, top_n: int, chat: bool) -> dict[str, object]:
    if reply.logprobs is not None:
        items = list(reply.logprobs)
    else:
        lp = math.log(max(reply.prob, 1e-12))
        items = [
            (t, lp, ((t, lp), *((f"<alt{k}>", lp - k) for k in range(1, max(top_n, 1))))) for t in _tokens(reply.text)
        ]
    if chat:
        content = [
            {
                "token": t,
                "logprob": lp,
                "bytes": list(t.encode()),
                "top_logprobs": [{"token": a, "logprob": alp, "bytes": list(a.encode())} for a, alp in top[:top_n]],
            }
            for t, lp, top in items
        ]
        return {"content": content, "refusal": None}
    return {
        "tokens": [t for t, _, _ in items],
        "token_logprobs": [lp for _, lp, _ in items],
        "top_logprobs": [dict(top[:top_n]) for _, _, top in items],
        "text_offset": [0 for _ in items],
    }
