"""The OpenAI-compatible wire format: turn HTTP answers into completions, or into the right error.

Robust to garbage: an HTML page, an empty body, invalid JSON, a JSON body without `choices`, or a choice
without text raise `BadResponseError` (never a KeyError or a half-filled Completion).

Decisions:
- A response without `usage` (some proxies drop it) is not an error: the completion counts 0 tokens and
  `meta["usage_missing"]` is True, so budgets can tell "free" from "unknown".
- A chat choice whose `message.content` is null (a refusal or a tool call) has the text "".
- Cached prompt tokens are read from `usage.prompt_tokens_details.cached_tokens` (OpenAI; vLLM when started
  with `--enable-prompt-tokens-details`, which leaves the field out when nothing was cached), capped at
  `prompt_tokens`; absent (llama-cpp-python never sends it), they are 0.
- A logprob the server sends as null (vLLM does for tokens it could not score) is `-inf`.
- Nothing from a server's body reaches a message unredacted or unbounded: `secret` (the client's API key) and
  any `Bearer ...` token become `***`, and excerpts are cut to a few hundred characters (`excerpt`).
- Untrusted depth is never recursed over: a body nested deeper than json.loads copes with is a
  BadResponseError, and error messages are looked for a few levels deep at most.
"""

from __future__ import annotations

import email.utils
import json
import math
import re
from dataclasses import dataclass, field
from typing import Any, Protocol

import httpx

from ._exceptions import BadResponseError, ModelError, ModelTimeoutError, ServerUnavailableError
from ._types import TokenLogprob, Usage

__all__ = [
    "Answer",
    "HTTPAnswer",
    "WireChoices",
    "WireCompletion",
    "decode_json",
    "excerpt",
    "is_request_validation_error",
    "parse_chat",
    "parse_chat_choices",
    "parse_retry_after",
    "parse_text_completion",
    "read_answer",
    "redact",
    "server_message",
    "transport_error",
]

_FIX_URL = "check that base_url points at an OpenAI-compatible API (it usually ends in /v1)"


@dataclass(frozen=True, slots=True)
class WireCompletion:
    """One parsed choice of a completion response."""

    text: str
    finish_reason: str | None
    usage: Usage
    logprobs: tuple[TokenLogprob, ...] | None
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class WireChoices:
    """Every choice of a response to a request for several (`n`), and the usage of that one request (each
    choice's own `usage` is `Usage()`: the server counts tokens per request, not per choice)."""

    usage: Usage
    choices: tuple[WireCompletion, ...]


EXCERPT_CHARS = 200
"""The most characters of a server's body that go into an error message."""

_BEARER = re.compile(r"(?i)\bbearer\s+[^\s\"'<>,;]+")
_MESSAGE_DEPTH = 4  # how deep an error message is looked for in a JSON error body ({"error": {"message": ...}})


class HTTPAnswer(Protocol):
    """What is read of an HTTP answer: an `httpx.Response` read in full, or an `Answer` read within a cap."""

    @property
    def status_code(self) -> int: ...
    @property
    def headers(self) -> httpx.Headers: ...
    @property
    def content(self) -> bytes: ...
    @property
    def text(self) -> str: ...


@dataclass(frozen=True, slots=True)
class Answer:
    """An HTTP answer whose body was read (decoded) by the client, within its size cap."""

    status_code: int
    headers: httpx.Headers
    content: bytes

    @property
    def text(self) -> str:
        match = re.search(r"charset=[\"']?([\w.:-]+)", self.headers.get("content-type", ""))
        try:
            return self.content.decode(match.group(1) if match else "utf-8", errors="replace")
        except LookupError:  # a charset Python does not know
            return self.content.decode("utf-8", errors="replace")


def redact(text: str, secret: str | None = None) -> str:
    """`text` with `secret` (an API key) and every `Bearer ...` token replaced by `***`."""
    if secret:
        text = text.replace(secret, "***")
    return _BEARER.sub("Bearer ***", text)


def excerpt(text: str, limit: int = EXCERPT_CHARS, *, secret: str | None = None) -> str:
    """A redacted, one-line excerpt of a server's words for a message: at most `limit` characters (and "...")."""
    text = " ".join(redact(text, secret).split())
    return text if len(text) <= limit else text[:limit] + "..."


async def read_answer(response: httpx.Response, url: str, cap: int) -> Answer:
    """The (decoded) body of a streamed `response`, read no further than `cap` bytes: a 2xx answer over the cap
    raises BadResponseError naming it; an error's body is cut there (only its first words are shown anyway)."""
    ok = 200 <= response.status_code < 300
    declared = response.headers.get("content-length", "")
    if ok and declared.isdigit() and int(declared) > cap:
        raise _too_large(response.status_code, url, cap, f"it declares {int(declared)} bytes")
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.aiter_bytes():
        if size + len(chunk) > cap:
            if ok:
                raise _too_large(response.status_code, url, cap, f"more than {cap} bytes were sent")
            chunks.append(chunk[: cap - size])
            break
        chunks.append(chunk)
        size += len(chunk)
    return Answer(response.status_code, response.headers, b"".join(chunks))


def _too_large(status: int, url: str, cap: int, what: str) -> BadResponseError:
    limit = f"{cap / 2**20:g} MB" if cap >= 2**20 else f"{cap} bytes"
    return BadResponseError(
        f"the server at {url} answered HTTP {status} with a body larger than the {limit} limit ({what}), far "
        "more than any completion: check that base_url points at an OpenAI-compatible API; if its answers really "
        "are this large, raise ModelClient(max_response_bytes=...)",
        status_code=status,
        url=url,
    )


def transport_error(
    exc: httpx.TransportError | httpx.DecodingError, url: str, model: str, timeout_s: float | None, secret: str | None
) -> ModelError:
    """The typed error for an httpx failure of one attempt; `usage=Usage()` when it cannot have reached the server
    (no connection, no free connection, a proxy refused), None when it did or may have."""
    name = type(exc).__name__
    if isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout):  # no connection: nothing was sent
        return ServerUnavailableError(
            f"could not reach the model server at {url} ({name}): is the server running there? Start one with "
            f"`agentflow serve {model}`, or fix base_url",
            url=url,
            usage=Usage(),
        )
    if isinstance(exc, httpx.ReadError | httpx.WriteError | httpx.CloseError | httpx.RemoteProtocolError):
        return ServerUnavailableError(
            f"the model server at {url} closed the connection before it finished answering ({name}: the request "
            "reached it, then the connection was reset or dropped mid-answer): check the server's log, it may have "
            "crashed, run out of memory or been restarted; if it is overloaded, lower max_in_flight or max_tokens",
            url=url,
        )
    if isinstance(exc, httpx.TimeoutException):
        return ModelTimeoutError(
            f"the model server at {url} did not answer within {timeout_s} s ({name}): raise "
            "ModelClient(timeout=...), lower max_tokens, or lower max_in_flight on a busy server",
            url=url,
            usage=Usage() if isinstance(exc, httpx.PoolTimeout) else None,  # no free connection: nothing sent
        )
    if isinstance(exc, httpx.TransportError):  # a proxy or protocol failure on the way
        return ServerUnavailableError(
            f"could not talk to the model server at {url} ({name}: {excerpt(str(exc), secret=secret)}): check "
            "base_url, and any HTTP(S)_PROXY setting between you and the server",
            url=url,
            usage=Usage() if isinstance(exc, httpx.ProxyError | httpx.UnsupportedProtocol) else None,
        )
    return BadResponseError(
        f"the server at {url} sent a body that could not be decoded ({excerpt(str(exc), secret=secret)}): "
        f"check that base_url points at an OpenAI-compatible API",
        url=url,
    )


def decode_json(response: HTTPAnswer, url: str, *, secret: str | None = None) -> Any:
    """The JSON body of a 2xx response, or BadResponseError saying what came instead (its excerpts redacted)."""
    body = response.content
    if not body.strip():
        raise BadResponseError(
            f"the server at {url} answered HTTP {response.status_code} with an empty body: {_FIX_URL}",
            status_code=response.status_code,
            url=url,
        )
    text = response.text
    ctype = response.headers.get("content-type", "")
    try:
        return json.loads(text)
    except RecursionError:  # C json recurses once per level: a hostile body must not crash the caller
        raise BadResponseError(
            f"the server at {url} answered HTTP {response.status_code} with JSON nested too deeply to read "
            f"({excerpt(text, 40, secret=secret)!r}): {_FIX_URL}",
            status_code=response.status_code,
            server_message=excerpt(text, secret=secret),
            url=url,
        ) from None
    except ValueError:
        what = "an HTML page" if "html" in ctype or text.lstrip()[:1] == "<" else "a body that is not JSON"
        raise BadResponseError(
            f"the server at {url} answered HTTP {response.status_code} with {what} "
            f"({excerpt(text, 120, secret=secret)!r}): {_FIX_URL}",
            status_code=response.status_code,
            server_message=excerpt(text, secret=secret),
            url=url,
        ) from None


def server_message(response: HTTPAnswer, *, secret: str | None = None) -> str:
    """The server's own words about an error (redacted, bounded): the JSON error message if there is one, else
    the body text."""
    text = response.text
    try:
        data = json.loads(text)
    except (ValueError, RecursionError):
        return excerpt(text, secret=secret) if text.strip() else f"(empty body, HTTP {response.status_code})"
    message = _message_of(data) or text
    # llama-cpp-python appends a traceback to its messages; the first part is what the user needs
    return excerpt(message.split('\n\n  File "')[0], secret=secret)


def is_request_validation_error(message: str) -> bool:
    """True for a pydantic validation error of the request body that a server sent as HTTP 5xx.

    llama-cpp-python answers a bad parameter (max_tokens=-5, response_format type json_schema) with HTTP 500
    and the validation error: that is the request's fault, and retrying it cannot help.
    """
    return "validation error" in message and "'loc': ('body'" in message


def _message_of(data: Any, depth: int = _MESSAGE_DEPTH) -> str | None:
    if isinstance(data, str):
        return data
    if not isinstance(data, dict) or depth <= 0:
        return None
    for key in ("error", "detail", "message"):
        if key not in data:
            continue
        value = data[key]
        if isinstance(value, str):
            return value
        if isinstance(value, dict):
            inner = _message_of(value, depth - 1)
            if inner:
                return inner
        if isinstance(value, list):  # FastAPI validation errors: [{"loc": [...], "msg": "..."}]
            parts = []
            for item in value:
                if isinstance(item, dict) and "msg" in item:
                    loc = ".".join(str(p) for p in item.get("loc", []) if p != "body")
                    parts.append(f"{loc}: {item['msg']}" if loc else str(item["msg"]))
                else:
                    parts.append(str(item))
            return "; ".join(parts)
    return None


def parse_retry_after(value: str | None, now: float) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or an HTTP-date); None if absent or unreadable."""
    if value is None:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            seconds = email.utils.parsedate_to_datetime(value).timestamp() - now
        except (TypeError, ValueError, IndexError, OverflowError, AttributeError):
            return None
    if math.isnan(seconds) or math.isinf(seconds):
        return None
    return max(0.0, seconds)


def _first_choice(data: Any, url: str, secret: str | None) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise BadResponseError(
            f"the server at {url} answered with JSON that is not an object (a {_json_type(data)}): {_FIX_URL}",
            url=url,
        )
    choices = data.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        keys = excerpt(", ".join(sorted(str(k) for k in data)), 120, secret=secret) or "none"
        said = _message_of(data)
        raise BadResponseError(
            f"the server at {url} answered without a `choices` list (keys: {keys}): {_FIX_URL}",
            server_message=None if said is None else excerpt(said, secret=secret),
            url=url,
        )
    return choices[0]


def _json_type(value: Any) -> str:
    names = {list: "list", str: "string", bool: "boolean", int: "number", float: "number", type(None): "null"}
    return names.get(type(value), type(value).__name__)


def _usage(data: dict[str, Any], meta: dict[str, Any]) -> Usage:
    usage = data.get("usage")
    if not isinstance(usage, dict):
        meta["usage_missing"] = True
        return Usage(requests=1)
    prompt = _int(usage.get("prompt_tokens"))
    details = usage.get("prompt_tokens_details")
    cached = _int(details.get("cached_tokens")) if isinstance(details, dict) else 0
    return Usage(
        requests=1,
        prompt_tokens=prompt,
        completion_tokens=_int(usage.get("completion_tokens")),
        cached_prompt_tokens=min(cached, prompt),  # a part of the prompt, never more
    )


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0


def _float(value: Any) -> float:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    return -math.inf


def _finish(choice: dict[str, Any]) -> str | None:
    reason = choice.get("finish_reason")
    return reason if isinstance(reason, str) else None


def _meta(data: dict[str, Any]) -> dict[str, Any]:
    meta: dict[str, Any] = {}
    if isinstance(data.get("model"), str):
        meta["server_model"] = data["model"]
    if isinstance(data.get("id"), str):
        meta["id"] = data["id"]
    return meta


def parse_chat(data: Any, url: str, *, top_logprobs: int = 0, secret: str | None = None) -> WireCompletion:
    """Parse a /chat/completions response body."""
    choice = _first_choice(data, url, secret)
    meta = _meta(data)
    usage = _usage(data, meta)
    return _chat_choice(choice, url, usage, meta, top_logprobs)


def parse_chat_choices(data: Any, url: str, *, n: int, top_logprobs: int = 0, secret: str | None = None) -> WireChoices:
    """Parse a /chat/completions response body to a request for `n` choices: all n, in the order of their
    `index`, and the usage of the one request (the prompt once, the completion tokens of every choice). A
    server that answered another number of choices did not honour `n`: BadResponseError."""
    _first_choice(data, url, secret)  # a dict with a non-empty `choices` list, or the error that says what came
    raw = data["choices"]
    if len(raw) != n or not all(isinstance(c, dict) for c in raw):
        raise BadResponseError(
            f"the server at {url} answered {len(raw)} choice(s) to a request for n={n}: it does not honour `n` "
            "(llama.cpp's server ignores it): use dialect='llama_cpp' for such a server, which asks n times in turn",
            url=url,
        )
    indexes = [c.get("index") for c in raw]
    if sorted(i for i in indexes if isinstance(i, int) and not isinstance(i, bool)) == list(range(n)):
        raw = sorted(raw, key=lambda c: int(c["index"]))
    meta = _meta(data)
    usage = _usage(data, meta)
    return WireChoices(usage, tuple(_chat_choice(c, url, Usage(), meta, top_logprobs) for c in raw))


def _chat_choice(
    choice: dict[str, Any], url: str, usage: Usage, meta: dict[str, Any], top_logprobs: int
) -> WireCompletion:
    message = choice.get("message")
    if not isinstance(message, dict):
        raise BadResponseError(
            f"the server at {url} answered with a choice without a `message` object: {_FIX_URL}", url=url
        )
    content = message.get("content")
    if content is not None and not isinstance(content, str):
        raise BadResponseError(
            f"the server at {url} answered with a non-text message content ({type(content).__name__}): {_FIX_URL}",
            url=url,
        )
    return WireCompletion(
        text=content or "",
        finish_reason=_finish(choice),
        usage=usage,
        logprobs=_chat_logprobs(choice.get("logprobs"), top_logprobs),
        meta=dict(meta),
    )


def _chat_logprobs(raw: Any, top_k: int) -> tuple[TokenLogprob, ...] | None:
    if not isinstance(raw, dict) or not isinstance(raw.get("content"), list):
        return None
    out: list[TokenLogprob] = []
    for item in raw["content"]:
        if not isinstance(item, dict) or not isinstance(item.get("token"), str):
            continue
        top: list[tuple[str, float]] = []
        alts = item.get("top_logprobs")
        if top_k > 0 and isinstance(alts, list):
            for alt in alts:
                if isinstance(alt, dict) and isinstance(alt.get("token"), str):
                    top.append((alt["token"], _float(alt.get("logprob"))))
        top.sort(key=lambda t: -t[1])
        out.append(TokenLogprob(item["token"], _float(item.get("logprob")), tuple(top[:top_k])))
    return tuple(out)


def parse_text_completion(data: Any, url: str, *, top_logprobs: int = 0, secret: str | None = None) -> WireCompletion:
    """Parse a /completions response body (`text`, and logprobs as `tokens`/`token_logprobs`/`top_logprobs`)."""
    choice = _first_choice(data, url, secret)
    text = choice.get("text")
    if not isinstance(text, str):
        raise BadResponseError(
            f"the server at {url} answered with a completion choice without `text`: {_FIX_URL}", url=url
        )
    meta = _meta(data)
    usage = _usage(data, meta)
    return WireCompletion(
        text=text,
        finish_reason=_finish(choice),
        usage=usage,
        logprobs=_text_logprobs(choice.get("logprobs"), top_logprobs),
        meta=meta,
    )


def _text_logprobs(raw: Any, top_k: int) -> tuple[TokenLogprob, ...] | None:
    if not isinstance(raw, dict) or not isinstance(raw.get("tokens"), list):
        return None
    tokens = raw["tokens"]
    lps = raw.get("token_logprobs")
    tops = raw.get("top_logprobs")
    lps = lps if isinstance(lps, list) else []
    tops = tops if isinstance(tops, list) else []
    out: list[TokenLogprob] = []
    for i, token in enumerate(tokens):
        if not isinstance(token, str):
            continue
        lp = _float(lps[i]) if i < len(lps) else -math.inf
        top: list[tuple[str, float]] = []
        alts = tops[i] if i < len(tops) else None
        if top_k > 0 and isinstance(alts, dict):
            top = [(str(t), _float(v)) for t, v in alts.items()]
            top.sort(key=lambda t: -t[1])
        out.append(TokenLogprob(token, lp, tuple(top[:top_k])))
    return tuple(out)
