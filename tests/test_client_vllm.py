"""ModelClient against a real vLLM server: the `vllm` dialect's request shapes, proven on the server itself.

There is no GPU here, so these run only against a server you point them at, e.g. vLLM's CPU build serving
SmolLM2 (see ../shared/MODELS.md, "vLLM on a CPU"):

    AGENTFLOW_VLLM_URL=http://127.0.0.1:8000/v1 AGENTFLOW_VLLM_MODEL=smollm2-135m pytest tests/test_client_vllm.py

Without AGENTFLOW_VLLM_URL they are skipped, saying so. The URL must be on loopback: tests send no traffic
anywhere else.
"""

from __future__ import annotations

import enum
import os
import re
from collections.abc import AsyncIterator
from typing import Literal
from urllib.parse import urlparse

import pytest
from pydantic import BaseModel, Field

from agentflow import ChatRequest, ModelClient, RegexOutput, StructuredOutputError

URL = os.environ.get("AGENTFLOW_VLLM_URL")
MODEL = os.environ.get("AGENTFLOW_VLLM_MODEL", "smollm2-135m")

pytestmark = [
    pytest.mark.real_model,
    pytest.mark.skipif(
        URL is None,
        reason="needs a running vLLM server: start one (../shared/MODELS.md, 'vLLM on a CPU') and set "
        "AGENTFLOW_VLLM_URL=http://127.0.0.1:PORT/v1 (and AGENTFLOW_VLLM_MODEL to its served model name)",
    ),
]


class Colour(enum.Enum):
    RED = "red"
    GREEN = "green"


class Town(BaseModel):
    name: str = Field(max_length=24)
    founded: int = Field(ge=0, le=2100)


@pytest.fixture
async def client() -> AsyncIterator[ModelClient]:
    assert URL is not None
    assert urlparse(URL).hostname in ("127.0.0.1", "localhost", "::1"), "tests talk to loopback servers only"
    async with ModelClient(URL, MODEL, dialect="vllm", timeout=300) as c:
        yield c


async def test_chat_with_usage_and_logprobs(client: ModelClient) -> None:
    done = await client.complete(ChatRequest.of("Name a colour.", max_tokens=8, logprobs=True, top_logprobs=3))
    assert done.text and done.finish_reason in ("stop", "length")
    assert done.usage.prompt_tokens > 0 and 0 < done.usage.completion_tokens <= 8
    assert done.logprobs is not None and all(t.logprob <= 0 for t in done.logprobs)
    assert all(1 <= len(t.top) <= 3 for t in done.logprobs)


async def test_json_schema_fills_a_pydantic_model(client: ModelClient) -> None:
    town = await client.parse("A town as JSON with its name and founding year.", Town, max_tokens=64)
    assert isinstance(town, Town)


async def test_choices_and_regex_are_enforced(client: ModelClient) -> None:
    assert await client.parse("Is the sky blue?", Literal["yes", "no"], max_tokens=4) in ("yes", "no")
    assert await client.parse("Pick a colour.", Colour, max_tokens=4) in (Colour.RED, Colour.GREEN)
    value = await client.parse("Give a date.", RegexOutput(r"\d{4}-\d{2}-\d{2}"), max_tokens=16)
    assert re.fullmatch(r"\d{4}-\d{2}-\d{2}", value)


async def test_truncated_json_is_a_structured_output_error(client: ModelClient) -> None:
    with pytest.raises(StructuredOutputError) as info:
        await client.parse("A town as JSON.", Town, max_tokens=3, structured_retries=0)
    assert info.value.finish_reason == "length"


async def test_samples_share_one_prompt_and_a_repeated_prompt_is_reported_cached(client: ModelClient) -> None:
    # a prompt longer than a few KV-cache blocks, so that its prefix can be served from vLLM's prefix cache
    prompt = "Facts: " + " ".join(f"item {i} is number {i * 7}." for i in range(60)) + " Name one item."
    request = ChatRequest.of(prompt, max_tokens=8, temperature=1.0, seed=3)
    samples = await client.sample(request, 3)
    assert len(samples) == 3 and all(s.text for s in samples)
    first, *rest = samples
    assert first.usage.requests == 1 and first.usage.prompt_tokens > 100  # one request, its prompt counted once
    assert all(s.usage.requests == 0 and s.usage.prompt_tokens == 0 for s in rest)
    assert first.usage.completion_tokens >= 3  # the three answers' tokens, billed on the first
    again = await client.complete(request)  # the same prompt again: vLLM (--enable-prompt-tokens-details) says
    assert 0 < again.usage.cached_prompt_tokens <= again.usage.prompt_tokens  # how much of it came from cache
