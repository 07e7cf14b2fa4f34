"""The values every part of agentflow speaks: messages, requests, completions, usage, and the Model protocol.

A `Model` is anything with a `name` and `async complete(ChatRequest) -> Completion`: the HTTP client,
the router, a budgeted or cached model, and the scripted fakes in `agentflow.testing` all are. A `Sampler`
also answers one request n times (`sample(request, n)`), in one request where its server can.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal, Protocol, cast, runtime_checkable

from pydantic import BaseModel, GetCoreSchemaHandler
from pydantic_core import CoreSchema, core_schema

__all__ = [
    "DEFAULT_ANSWER_TOKENS",
    "DEFAULT_REASONING_TOKENS",
    "ChatRequest",
    "ChoiceOutput",
    "Completion",
    "JsonOutput",
    "Message",
    "Model",
    "OutputSpec",
    "RegexOutput",
    "Role",
    "Sampler",
    "TokenLogprob",
    "Usage",
]

Role = Literal["system", "user", "assistant"]

DEFAULT_ANSWER_TOKENS = 32
"""The `max_tokens` of a short answer (a name, a date, a number, yes/no): the default of a `ChatRequest`, and
what compare, the CLI and the ready-made workflows ask for (so what a budget reserves for each answer)."""

DEFAULT_REASONING_TOKENS = 160
"""The `max_tokens` of a short chain of thought before its answer (`QADeps.reasoning_tokens`): on a CPU every
generated token costs, and small models ramble."""


@dataclass(frozen=True, slots=True)
class Message:
    role: Role
    content: str

    @staticmethod
    def system(content: str) -> Message:
        return Message("system", content)

    @staticmethod
    def user(content: str) -> Message:
        return Message("user", content)

    @staticmethod
    def assistant(content: str) -> Message:
        return Message("assistant", content)


# --- output constraints --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class JsonOutput:
    """Constrain the output to JSON matching `schema`; `model`, when given, validates and builds the value."""

    schema: dict[str, Any]
    model: type[BaseModel] | None = None

    @staticmethod
    def of(model: type[BaseModel]) -> JsonOutput:
        return JsonOutput(schema=model.model_json_schema(), model=model)


@dataclass(frozen=True, slots=True)
class RegexOutput:
    """Constrain the output to a full match of `pattern`."""

    pattern: str


@dataclass(frozen=True, slots=True)
class ChoiceOutput:
    """Constrain the output to exactly one of `choices`."""

    choices: tuple[str, ...]


OutputSpec = JsonOutput | RegexOutput | ChoiceOutput


# --- requests and results ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ChatRequest:
    """One chat completion request. Defaults are conservative: a short answer (`DEFAULT_ANSWER_TOKENS`),
    greedy, no logprobs."""

    messages: tuple[Message, ...]
    max_tokens: int = DEFAULT_ANSWER_TOKENS
    temperature: float = 0.0
    top_p: float | None = None
    seed: int | None = None
    stop: tuple[str, ...] = ()
    logprobs: bool = False
    top_logprobs: int = 0
    output: OutputSpec | None = None

    @staticmethod
    def of(messages: Sequence[Message] | str, **params: Any) -> ChatRequest:
        msgs = (Message.user(messages),) if isinstance(messages, str) else tuple(messages)
        return ChatRequest(messages=msgs, **params)

    def with_(self, **changes: Any) -> ChatRequest:
        return replace(self, **changes)

    def prompt_chars(self) -> int:
        return sum(len(m.content) for m in self.messages)


@dataclass(frozen=True, slots=True)
class TokenLogprob:
    token: str
    logprob: float
    top: tuple[tuple[str, float], ...] = ()

    @property
    def prob(self) -> float:
        return math.exp(self.logprob)


@dataclass(frozen=True, slots=True)
class Usage:
    """Counted usage. Adds with `+`; `Usage()` is zero.

    `cached_prompt_tokens` is the part of `prompt_tokens` the server served from its prefix cache (computed
    for an earlier request, not for this one), as the server reports it in `usage.prompt_tokens_details.
    cached_tokens` (vLLM started with `--enable-prompt-tokens-details`, OpenAI). A server that does not report
    it (llama-cpp-python's, which reuses the previous prompt's state all the same) leaves it 0: the prompt is
    then counted as computed in full."""

    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_prompt_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            self.requests + other.requests,
            self.prompt_tokens + other.prompt_tokens,
            self.completion_tokens + other.completion_tokens,
            self.cached_prompt_tokens + other.cached_prompt_tokens,
        )

    def to_dict(self) -> dict[str, int]:
        """`{"requests": ..., "prompt_tokens": ..., "completion_tokens": ...}`, for JSON records and metadata,
        with `"cached_prompt_tokens"` only when there are some: records of servers that report none (and
        records written before it was counted) keep their shape."""
        out = {
            "requests": self.requests,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
        }
        if self.cached_prompt_tokens:
            out["cached_prompt_tokens"] = self.cached_prompt_tokens
        return out

    @classmethod
    def __get_pydantic_core_schema__(cls, source: type[Any], handler: GetCoreSchemaHandler) -> CoreSchema:
        """Read as any dataclass (a record without `cached_prompt_tokens` reads as 0); written as `to_dict()`, so
        checkpoints and answer stores written by pydantic have the same shape as before when nothing was cached."""
        schema = handler(source)
        # set on the dataclass schema itself, which pydantic reuses (by its ref) wherever Usage appears again
        cast(dict[str, Any], schema)["serialization"] = core_schema.plain_serializer_function_ser_schema(Usage.to_dict)
        return schema


@dataclass(frozen=True, slots=True)
class Completion:
    """A model's answer: text, why it stopped, what it cost, and per-token logprobs when asked.

    `parsed` holds the validated value of a structured request (a pydantic model instance, a dict,
    or the matched string). `model` names the model that produced it (the router sets the rung
    that answered). `cached` is true when it came from a response cache and cost nothing now.
    """

    text: str
    model: str
    finish_reason: str | None
    usage: Usage
    logprobs: tuple[TokenLogprob, ...] | None = None
    parsed: Any = None
    latency_s: float = 0.0
    cached: bool = False
    meta: dict[str, Any] = field(default_factory=dict)


@runtime_checkable
class Model(Protocol):
    """Anything that answers a ChatRequest."""

    @property
    def name(self) -> str: ...

    async def complete(self, request: ChatRequest) -> Completion: ...


@runtime_checkable
class Sampler(Model, Protocol):
    """A model that answers one request `n` times (`ModelClient` is one).

    `samples_at_once` says whether `sample` asks for all n in one request, the prompt computed once (vLLM's and
    OpenAI's `n`), or asks n times in turn (llama.cpp, whose server ignores `n`)."""

    @property
    def samples_at_once(self) -> bool: ...

    async def sample(self, request: ChatRequest, n: int) -> list[Completion]: ...
