"""Load: 1,000 concurrent workflow runs against a loopback stub server that misbehaves now and then.

    .venv/bin/python benchmarks/load.py [--runs 1000] [--workflow verify] [--faults 1] [--trace]

The stub (`agentflow.testing.FaultServer`, in its own process on 127.0.0.1, so its memory is not counted)
answers most requests at once, and, seeded per request, hangs past the client's timeout (2%), answers 503
(3%), resets the connection mid-body (1%) or answers without logprobs (2%: the router escalates); `--faults 5`
makes each fault five times as frequent. Every run
is the ready-made workflow behind a `Router` of two `ModelClient`s on the stub (TokenProb estimator), all
under one shared `Budget`, all started at once. Reported: how many runs finished, how many failed and with
which error (each must be an agentflow error naming the problem), the wall time, this process's RSS before
and at its peak (sampled every 20 ms, and `ru_maxrss`), and the budget's books (nothing left reserved).
Nothing may deadlock: the whole batch has a deadline.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from agentflow import (
    AgentFlowError,
    Budget,
    BudgetLimits,
    JsonlTraceWriter,
    ModelClient,
    NodeFailedError,
    RetryPolicy,
    Router,
    TokenProb,
)
from agentflow.eval import Paragraph
from workflows import QADeps, QAState, build, short_span_rule

STUB = """
import random, sys
from agentflow.testing import Fault, FaultServer

x = float(sys.argv[1])

def handler(seen):
    r = random.Random(seen.n).random() / x
    if r < 0.02:
        return Fault.hang()
    if r < 0.05:
        return Fault.status(503, "overloaded")
    if r < 0.06:
        return Fault.reset_mid_body("Paris")
    if r < 0.08:
        return Fault.no_logprobs("Paris")
    return Fault.ok("Paris", prob=0.9)

server = FaultServer(handler=handler, model="stub").start()
print(server.port, flush=True)
sys.stdin.read()
print(server.hits, len(server.delivered), server.max_in_flight_seen, flush=True)
"""

POLICY = RetryPolicy(max_attempts=3, initial_backoff_s=0.05, max_backoff_s=0.2, max_total_s=20.0)


def rss_mb() -> float:
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


async def sample_rss(peak: list[float], stop: asyncio.Event) -> None:
    while not stop.is_set():
        peak[0] = max(peak[0], rss_mb())
        try:
            await asyncio.wait_for(stop.wait(), 0.02)
        except TimeoutError:
            pass


async def load(url: str, runs: int, workflow: str, trace: Path | None, deadline_s: float) -> dict[str, object]:
    budget = Budget(BudgetLimits(requests=100 * runs), name="load")
    small = ModelClient(url, "small", timeout=2.0, retry=POLICY, max_in_flight=64)
    large = ModelClient(url, "large", timeout=2.0, retry=POLICY, max_in_flight=64)
    router = Router([small, large], estimator=TokenProb("mean"), thresholds=[0.5], budget=budget)
    graph = build(workflow)
    paras = [Paragraph("France", "Paris is the capital and largest city of France.")]
    deps = QADeps(model=router, rule=short_span_rule, budget=budget)
    writer = JsonlTraceWriter(trace) if trace is not None else None

    async def one(i: int) -> str:
        state = QAState(question=f"What is the capital of France? ({i})", paragraphs=paras)
        out, _ = await graph.run(state, deps=deps, listeners=[writer] if writer else [])
        return out.answer

    base = rss_mb()
    peak = [base]
    stop = asyncio.Event()
    sampler = asyncio.create_task(sample_rss(peak, stop))
    t0 = time.perf_counter()
    try:
        results = await asyncio.wait_for(asyncio.gather(*(one(i) for i in range(runs)), return_exceptions=True),
                                         deadline_s)  # fmt: skip
    finally:
        wall = time.perf_counter() - t0
        stop.set()
        await sampler
        await small.aclose()
        await large.aclose()
        if writer is not None:
            writer.close()
    outcomes: collections.Counter[str] = collections.Counter()
    unclear: list[str] = []
    for r in results:
        if isinstance(r, str):
            outcomes["ok" if r == "Paris" else f"ok, answered {r!r}"] += 1
            continue
        cause = r.__cause__ if isinstance(r, NodeFailedError) else r
        outcomes[f"failed: {type(r).__name__} <- {type(cause).__name__}"] += 1
        if not isinstance(r, AgentFlowError) or not isinstance(cause, AgentFlowError):
            unclear.append(repr(r))
    bill = budget.bill()
    return {
        "runs": runs,
        "wall_s": wall,
        "outcomes": dict(outcomes.most_common()),
        "unclear": unclear,
        "rss_base_mb": base,
        "rss_peak_mb": peak[0],
        "ru_maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "bill_requests": bill.requests,
        "bill_failed": sum(m.failed for m in bill.models.values()),
        "escalations": bill.escalations,
        "left_reserved": budget.reserved.requests,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=1000)
    parser.add_argument("--workflow", default="verify", help="direct, cot, sc, verify or decompose")
    parser.add_argument("--trace", action="store_true", help="also write a JSONL trace of every run")
    parser.add_argument("--faults", type=float, default=1.0, help="scale every fault's frequency by this")
    parser.add_argument("--deadline", type=float, default=900.0, help="seconds before the batch counts as hung")
    args = parser.parse_args()
    argv = [sys.executable, "-c", STUB, str(args.faults)]
    stub = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert stub.stdin is not None and stub.stdout is not None
    try:
        port = int(stub.stdout.readline())
        url = f"http://127.0.0.1:{port}/v1"
        print(f"{platform.machine()}, Python {platform.python_version()}; stub at {url} (its own process)")
        with tempfile.TemporaryDirectory() as tmp:
            trace = Path(tmp) / "trace.jsonl" if args.trace else None
            out = asyncio.run(load(url, args.runs, args.workflow, trace, args.deadline))
            if trace is not None:
                out["trace_mb"] = trace.stat().st_size / 1e6
    finally:
        stub.stdin.close()
        hits, delivered, max_in_flight = stub.stdout.read().split()
        stub.wait(timeout=30)
    out.update(server_hits=int(hits), server_delivered=int(delivered), server_max_in_flight=int(max_in_flight))
    width = max(len(k) for k in out)
    for key, value in out.items():
        print(f"{key:<{width}}  {value:.1f}" if isinstance(value, float) else f"{key:<{width}}  {value}")
    if out["unclear"] or out["left_reserved"]:
        raise SystemExit("FAILED: a run failed without a clear agentflow error, or the budget kept a reservation")


if __name__ == "__main__":
    main()
