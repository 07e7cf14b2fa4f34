"""ModelClient against a real llama.cpp server (llama-cpp-python) with SmolLM2-135M: the dialect really works.

Checks the request shapes the fakes cannot prove: GBNF grammars for regexes and choices, json_object with a
schema, logprobs on both endpoints, truncation, and what llama.cpp does with the other dialects' fields.
Skipped (saying how to enable them) without `pip install 'agentflow[local,smoke-model]'`.
"""

from __future__ import annotations

import enum
from typing import Any, Literal

import pytest
from pydantic import BaseModel, Field

import serving
from agentflow._client import ModelClient
from agentflow._config import NO_RETRY
from agentflow._exceptions import RequestRejectedError, StructuredOutputError
from agentflow._types import ChoiceOutput

pytestmark = pytest.mark.real_model


class Colour(enum.Enum):
    RED = "red"
    GREEN = "green"


class Town(BaseModel):
    name: str = Field(max_length=24)
    founded: int = Field(ge=0, le=2100)


async def test_choices_literal_and_enum(smoke_client: Any) -> None:
    assert await smoke_client.parse("Is the sky blue?", Literal["yes", "no"], max_tokens=4) in ("yes", "no")
    assert await smoke_client.parse("Pick a colour.", Colour, max_tokens=4) in (Colour.RED, Colour.GREEN)
    odd = ChoiceOutput(('say "x"', "naïve"))
    assert await smoke_client.parse("Pick one.", odd, max_tokens=8) in odd.choices


async def test_json_object_schema_fills_a_model(smoke_client: Any) -> None:
    town = await smoke_client.parse("A town as JSON with name and founded year.", Town, max_tokens=64)
    assert isinstance(town, Town)


async def test_truncated_json_raises_structured_output_error(smoke_client: Any) -> None:
    with pytest.raises(StructuredOutputError) as info:
        await smoke_client.parse("A town as JSON.", Town, max_tokens=3, structured_retries=1)
    assert info.value.finish_reason == "length" and info.value.attempts == 2 and info.value.raw_text


async def test_text_completion_logprobs_with_top_k(smoke_client: Any) -> None:
    done = await smoke_client.text_complete("The capital of France is", max_tokens=4, logprobs=True, top_logprobs=2)
    assert done.text and done.usage.completion_tokens > 0
    assert done.logprobs and all(len(t.top) == 2 and t.logprob <= 0 for t in done.logprobs)


async def test_a_bad_parameter_is_rejected_at_once(smoke_client: Any) -> None:
    with pytest.raises(RequestRejectedError, match="greater than or equal to 0") as info:
        await smoke_client.text_complete("x", max_tokens=-5)
    assert info.value.status_code == 500  # llama-cpp-python's status for a request it cannot validate


async def test_other_dialects_fail_loudly_on_llama_cpp(smoke_server: serving.LlamaCppServer) -> None:
    url, name = smoke_server.url, smoke_server.model_name
    # "openai" sends response_format json_schema, which llama-cpp-python rejects
    async with ModelClient(url, name, dialect="openai", retry=NO_RETRY) as client:
        with pytest.raises(RequestRejectedError, match="json_object"):
            await client.parse("A town.", Town, max_tokens=32)
    # "vllm" sends structured_outputs, which llama-cpp-python ignores: validation catches the free text
    async with ModelClient(url, name, dialect="vllm", structured_retries=0) as client:
        with pytest.raises(StructuredOutputError):
            await client.parse("Say hello at length.", ChoiceOutput(("yes", "no")), max_tokens=12)
