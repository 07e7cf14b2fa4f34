"""The OpenAI-compatible wire format: turn HTTP answers into completions, or into the right error.

Robust to garbage: an HTML page, an empty body, invalid JSON, a JSON body without `choices`, or a choice
without text raise `BadResponseError` (never a KeyError or a half-filled Completion).

Decisions:
- A response without `usage` (some proxies drop it) is not an error: the completion counts 0 tokens and
  `meta["usage_missing"]` is True, so budgets can tell "free" from "unknown".
- A chat choice whose `message.content` is null (a refusal or a tool call) has the text "".
- A logprob the server sends as null (vLLM does for tokens it could not score) is `-inf`.
"""

from __future__ import annotations

import email.utils
import json
import math
from dataclasses import dataclass, field
from typing import Any

import httpx

from ._exceptions import BadResponseError
from ._types import TokenLogprob, Usage

__all__ = [
    "WireCompletion",
    "decode_json",
    "is_request_validation_error",
    "parse_chat",
    "parse_retry_after",
    "parse_text_completion",
    "server_message",
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


def _snippet(text: str, limit: int = 200) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit] + "..."


def decode_json(response: httpx.Response, url: str) -> Any:
    """The JSON body of a 2xx response, or BadResponseError saying what came instead."""
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
    except ValueError:
        what = "an HTML page" if "html" in ctype or text.lstrip()[:1] == "<" else "a body that is not JSON"
        raise BadResponseError(
            f"the server at {url} answered HTTP {response.status_code} with {what} ({_snippet(text, 120)!r}): "
            f"{_FIX_URL}",
            status_code=response.status_code,
            server_message=_snippet(text),
            url=url,
        ) from None


def server_message(response: httpx.Response) -> str:
    """The server's own words about an error: the JSON error message if there is one, else the body text."""
    text = response.text
    try:
        data = json.loads(text)
    except ValueError:
        return _snippet(text) if text.strip() else f"(empty body, HTTP {response.status_code})"
    message = _message_of(data) or text
    # llama-cpp-python appends a traceback to its messages; the first part is what the user needs
    return _snippet(message.split('\n\n  File "')[0])


def is_request_validation_error(message: str) -> bool:
    """True for a pydantic validation error of the request body that a server sent as HTTP 5xx.

    llama-cpp-python answers a bad parameter (max_tokens=-5, response_format type json_schema) with HTTP 500
    and the validation error: that is the request's fault, and retrying it cannot help.
    """
    return "validation error" in message and "'loc': ('body'" in message


def _message_of(data: Any) -> str | None:
    if isinstance(data, str):
        return data
    if not isinstance(data, dict):
        return None
    for key in ("error", "detail", "message"):
        if key not in data:
            continue
        value = data[key]
        if isinstance(value, str):
            return value
        if isinstance(value, dict):
            inner = _message_of(value)
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


def _first_choice(data: Any, url: str) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise BadResponseError(
            f"the server at {url} answered with JSON that is not an object ({_snippet(json.dumps(data), 80)}): "
            f"{_FIX_URL}",
            url=url,
        )
    choices = data.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        keys = ", ".join(sorted(data)) or "none"
        raise BadResponseError(
            f"the server at {url} answered without a `choices` list (keys: {keys}): {_FIX_URL}",
            server_message=_message_of(data),
            url=url,
        )
    return choices[0]


def _usage(data: dict[str, Any], meta: dict[str, Any]) -> Usage:
    usage = data.get("usage")
    if not isinstance(usage, dict):
        meta["usage_missing"] = True
        return Usage(requests=1)
    return Usage(
        requests=1,
        prompt_tokens=_int(usage.get("prompt_tokens")),
        completion_tokens=_int(usage.get("completion_tokens")),
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


def parse_chat(data: Any, url: str, *, top_logprobs: int = 0) -> WireCompletion:
    """Parse a /chat/completions response body."""
    choice = _first_choice(data, url)
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
    meta = _meta(data)
    usage = _usage(data, meta)
    return WireCompletion(
        text=content or "",
        finish_reason=_finish(choice),
        usage=usage,
        logprobs=_chat_logprobs(choice.get("logprobs"), top_logprobs),
        meta=meta,
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


def parse_text_completion(data: Any, url: str, *, top_logprobs: int = 0) -> WireCompletion:
    """Parse a /completions response body (`text`, and logprobs as `tokens`/`token_logprobs`/`top_logprobs`)."""
    choice = _first_choice(data, url)
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
