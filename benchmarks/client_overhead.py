"""Per-request overhead of `ModelClient` (retries, a budget and a JSONL trace on) next to the `openai` SDK.

    .venv/bin/python benchmarks/client_overhead.py [--quick]

One stub OpenAI-compatible server (`agentflow.testing.FaultServer`, answering every request at once) runs in
its own process on 127.0.0.1; this process sends it chat completions from three clients in turn:

- `httpx`: a bare `httpx.AsyncClient.post` and `json.loads` behind a semaphore of the pool's size (the floor:
  what any client must pay),
- `ModelClient`: `budget.wrap(ModelClient(...))` with the default RetryPolicy, a Budget with limits, inside a
  graph run whose JSONL trace writer receives every call's event,
- `openai`: `AsyncOpenAI(...).chat.completions.create` (its default retries).

All three get the same connection pool (64 connections, all kept alive, none expiring), so the figures are
the clients' own cost, not their pool defaults'; `ModelClient` gets `max_in_flight=min(level, 64)`. (A pool
as large as the level is no fair test: httpcore's pool spends time quadratic in its connections and queued
requests on every request, about 0.3 s of CPU per request at 512 connections here.) At each level (1, 64,
512 requests in flight) every client keeps that many requests in flight (closed loop) for a fixed number of
requests; the clients' batches are interleaved, several rounds, so load from other processes hits them
alike. Reported per client and level: p50 and p99 latency per request; the overhead over the bare httpx
floor at the same percentile (meaningful at 1 in flight; with many in flight the latency is queueing, set by
how fast each side gets through requests); and this process's CPU time per request (the stub runs
elsewhere, so this is the client's whole cost), with its excess over the floor: the per-request overhead
that does not depend on the load.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from pydantic import BaseModel

from agentflow import (
    END,
    START,
    Budget,
    BudgetLimits,
    ChatRequest,
    Ctx,
    Graph,
    GraphBuilder,
    JsonlTraceWriter,
    ModelClient,
)

LEVELS = (1, 64, 512)
POOL = 64
LIMITS = httpx.Limits(max_connections=POOL, max_keepalive_connections=POOL, keepalive_expiry=None)
MESSAGES = [{"role": "user", "content": "What is the capital of France? One word."}]
STUB = """
import sys
from agentflow.testing import Fault, FaultServer
server = FaultServer(then=Fault.ok("Paris"), model="stub").start()
print(server.port, flush=True)
sys.stdin.read()
"""

Send = Callable[[], Awaitable[Any]]


def percentile(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(q * len(s)))]


async def closed_loop(send: Send, concurrency: int, total: int) -> list[float]:
    """`concurrency` workers, each sending one request after the other, `total` requests in all."""
    latencies: list[float] = []
    left = [total]

    async def worker() -> None:
        while left[0] > 0:
            left[0] -= 1
            t0 = time.perf_counter()
            await send()
            latencies.append(time.perf_counter() - t0)

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return latencies


@dataclass
class Figures:
    latencies: list[float]
    cpu_s: float = 0.0
    wall_s: float = 0.0


class Run(BaseModel):
    done: int = 0


@dataclass(frozen=True)
class Deps:
    send: Send
    concurrency: int
    total: int
    out: list[float]


async def _calls(state: Run, ctx: Ctx[Run, Deps]) -> dict[str, int]:
    ctx.deps.out.extend(await closed_loop(ctx.deps.send, ctx.deps.concurrency, ctx.deps.total))
    return {"done": len(ctx.deps.out)}


def _one_node_graph() -> Graph[Run, Deps]:
    g: GraphBuilder[Run, Deps] = GraphBuilder(Run, deps=Deps, name="calls")
    g.add_node("calls", _calls)
    g.add_sequence(START, "calls", END)
    return g.compile()


async def traced(graph: Graph[Run, Deps], send: Send, concurrency: int, total: int, trace: Path) -> list[float]:
    """`closed_loop` inside a one-node graph run with a JSONL trace: every ModelCallEvent is written."""
    out: list[float] = []
    with JsonlTraceWriter(trace) as writer:
        deps = Deps(send=send, concurrency=concurrency, total=total, out=out)
        await graph.run(Run(), deps=deps, listeners=[writer])
    return out


async def bench(url: str, quick: bool) -> dict[int, dict[str, Figures]]:
    from openai import AsyncOpenAI

    rounds = 2 if quick else 3
    per_batch = {1: 20, 64: 128, 512: 1024} if quick else {1: 100, 64: 640, 512: 2048}
    graph = _one_node_graph()
    raw_http = httpx.AsyncClient(limits=LIMITS, timeout=60, trust_env=False)
    af_http = httpx.AsyncClient(limits=LIMITS, timeout=60, trust_env=False)
    oa_http = httpx.AsyncClient(limits=LIMITS, timeout=60, trust_env=False)
    sdk = AsyncOpenAI(base_url=url, api_key="not-used", http_client=oa_http)
    results = {c: {name: Figures([]) for name in ("httpx", "ModelClient", "openai")} for c in LEVELS}
    body = {"model": "stub", "messages": MESSAGES, "max_tokens": 8, "temperature": 0.0}

    gate = asyncio.Semaphore(POOL)

    async def raw() -> Any:
        async with gate:
            r = await raw_http.post(url + "/chat/completions", json=body)
            return json.loads(r.content)

    async def via_sdk() -> Any:
        return await sdk.chat.completions.create(model="stub", messages=MESSAGES, max_tokens=8, temperature=0.0)  # type: ignore[arg-type]

    with tempfile.TemporaryDirectory() as tmp:
        for c in LEVELS:
            budget = Budget(BudgetLimits(requests=10**9, completion_tokens=10**12))
            client = ModelClient(url, "stub", http=af_http, max_in_flight=min(c, POOL))
            model = budget.wrap(client)
            request = ChatRequest.of(MESSAGES[0]["content"], max_tokens=8)

            async def via_agentflow(model: Any = model, request: ChatRequest = request) -> Any:
                return await model.complete(request)

            for send in (raw, via_agentflow, via_sdk):  # warm up connections and code paths
                await closed_loop(send, c, max(c, 20))
            for r in range(rounds):
                order = [("httpx", raw), ("ModelClient", via_agentflow), ("openai", via_sdk)]
                for name, send in order[r % 3 :] + order[: r % 3]:
                    n = per_batch[c]
                    cpu0, wall0 = time.process_time(), time.perf_counter()
                    if name == "ModelClient":
                        lat = await traced(graph, send, c, n, Path(tmp) / f"trace-{c}-{r}.jsonl")
                    else:
                        lat = await closed_loop(send, c, n)
                    fig = results[c][name]
                    fig.latencies.extend(lat)
                    fig.cpu_s += time.process_time() - cpu0
                    fig.wall_s += time.perf_counter() - wall0
            assert budget.reserved.requests == 0 and budget.spent.requests > 0
    await raw_http.aclose()
    await af_http.aclose()
    await sdk.close()
    return results


def report(results: dict[int, dict[str, Figures]]) -> str:
    lines = [
        "| in flight | client | p50 ms | p99 ms | p50 - floor ms | p99 - floor ms | CPU µs/req | - floor µs | req/s |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for c, by in results.items():
        floor = by["httpx"]
        f50, f99 = percentile(floor.latencies, 0.5), percentile(floor.latencies, 0.99)
        f_cpu = floor.cpu_s / len(floor.latencies)
        for name, fig in by.items():
            n = len(fig.latencies)
            p50, p99, cpu = percentile(fig.latencies, 0.5), percentile(fig.latencies, 0.99), fig.cpu_s / n
            if name == "httpx":
                over = "(floor) | (floor)"
                extra = "(floor)"
            else:
                over = f"{(p50 - f50) * 1e3:.2f} | {(p99 - f99) * 1e3:.2f}"
                extra = f"{(cpu - f_cpu) * 1e6:.0f}"
            lines.append(
                f"| {c} | {name} | {p50 * 1e3:.2f} | {p99 * 1e3:.2f} | {over} | {cpu * 1e6:.0f} | {extra} "
                f"| {n / fig.wall_s:.0f} |"
            )
    for c, by in results.items():
        af, oa = by["ModelClient"], by["openai"]
        ratio50 = percentile(af.latencies, 0.5) / percentile(oa.latencies, 0.5)
        ratio99 = percentile(af.latencies, 0.99) / percentile(oa.latencies, 0.99)
        cpu = (af.cpu_s / len(af.latencies)) / (oa.cpu_s / len(oa.latencies))
        verdict = "no slower" if max(ratio50, ratio99) <= 1.0 else "SLOWER at " + ("p50" if ratio50 > 1 else "p99")
        lines.append(
            f"- {c} in flight: ModelClient's p50 is {ratio50:.2f}x, p99 {ratio99:.2f}x, CPU per request {cpu:.2f}x "
            f"the SDK's: {verdict}"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer requests (a smoke run)")
    args = parser.parse_args()
    stub = subprocess.Popen([sys.executable, "-c", STUB], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert stub.stdout is not None
        port = int(stub.stdout.readline())
        url = f"http://127.0.0.1:{port}/v1"
        import openai

        print(f"{platform.machine()}, Python {platform.python_version()}, httpx {httpx.__version__}, "
              f"openai {openai.__version__}; stub at {url} (its own process)")  # fmt: skip
        t0 = time.perf_counter()
        results = asyncio.run(bench(url, args.quick))
        print(report(results))
        print(f"({time.perf_counter() - t0:.0f} s)")
    finally:
        if stub.stdin is not None:
            stub.stdin.close()
        stub.wait(timeout=30)


if __name__ == "__main__":
    main()
