"""Public test fakes: deterministic models and fake servers for unit tests and fault injection.

Never for the main job: the CLI and the README's commands always talk to a real model server.

- `ScriptedModel(["a", "b"])` answers with its script in order (and says so when it runs out).
- `FunctionModel(fn)` answers with `fn(request)` (a plain or async function).
- Replies may be a `str`, a `Reply` (text plus logprobs, finish reason, usage), or a full `Completion`.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass

from ._types import ChatRequest, Completion, TokenLogprob, Usage

__all__ = ["FunctionModel", "Reply", "ScriptedModel", "reply_to_completion"]


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
        logprobs = tuple(
            TokenLogprob(t, lp, ((t, lp),) if request.top_logprobs else ()) for t in toks
        )
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
