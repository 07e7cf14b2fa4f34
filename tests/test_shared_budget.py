"""One budget shared by many workers: no cap passed whatever the interleaving, across tasks and processes;
a worker killed between reserve and settle leaves a reservation that is charged its worst case."""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import random
import signal
from dataclasses import replace
from pathlib import Path

import pytest

from agentflow import BudgetExceeded, ChatRequest, ConfigError, Usage
from agentflow._bill import Spend
from agentflow._budget import Budget, BudgetLimits
from agentflow._ledger import LocalLedger, Refusal, SqliteLedger
from agentflow._shared_budget import SharedBudget
from agentflow.testing import FunctionModel, Reply, reply_to_completion

MODELS = ("qwen2.5-coder-0.5b", "qwen2.5-coder-1.5b")
CAP = BudgetLimits(requests=150, completion_tokens=4_000, total_tokens=9_000, flops=4e13)
CHECKED = ("requests", "prompt_tokens", "completion_tokens", "total_tokens", "flops", "cost_usd")


def _within(limits: BudgetLimits, amount: object) -> list[str]:
    """The limits `amount` passes (none, when the cap held)."""
    return [k for k in CHECKED if getattr(limits, k) is not None and getattr(amount, k) > getattr(limits, k)]


async def _hammer(budget: SharedBudget, seed: int, calls: int) -> tuple[int, list[BudgetExceeded]]:
    """`calls` concurrent calls of random worst cases (and random real usage up to them) on `budget`:
    (answered, refusals)."""
    rng = random.Random(seed)

    async def answer(req: ChatRequest) -> Reply:
        await asyncio.sleep(rng.random() * 0.003)  # settle in any order
        return Reply("x", completion_tokens=rng.randint(0, req.max_tokens))

    models = [budget.wrap(FunctionModel(answer, name=m)) for m in MODELS]
    refusals: list[BudgetExceeded] = []
    answered = 0

    async def one() -> None:
        nonlocal answered
        await asyncio.sleep(rng.random() * 0.003)
        request = ChatRequest.of("y" * rng.randint(0, 200), max_tokens=rng.randint(1, 200))
        try:
            await rng.choice(models).complete(request)
            answered += 1
        except BudgetExceeded as e:
            refusals.append(e)

    await asyncio.gather(*(one() for _ in range(calls)))
    return answered, refusals


@pytest.mark.parametrize("backend", ["local", "sqlite"])
async def test_concurrent_workers_never_pass_the_cap_and_refusals_are_budget_errors(
    backend: str, tmp_path: Path
) -> None:
    ledger = LocalLedger(CAP) if backend == "local" else SqliteLedger(tmp_path / "budget.sqlite", CAP)
    workers = [SharedBudget(ledger, owner=f"w{i}", wait_s=0.2) for i in range(4)]
    results = await asyncio.gather(*(_hammer(w, seed, 60) for seed, w in enumerate(workers)))
    snap = await ledger.snapshot()
    assert _within(CAP, snap.spent) == [], snap.spent
    assert (snap.in_flight, snap.reserved.requests) == (0, 0)
    answered = sum(a for a, _ in results)
    refusals = [e for _, rs in results for e in rs]
    assert answered == snap.spent.requests and answered + len(refusals) == 240
    assert refusals, "240 calls of up to 200 tokens cannot all fit 4,000 completion tokens"
    for e in refusals:
        assert e.limit in CHECKED and "would break the" in str(e) and "Fix: " in str(e)


def _process(path: str, seed: int, calls: int) -> None:
    """One worker process: its own connection to the ledger, `calls` concurrent calls."""
    ledger = SqliteLedger(path, CAP)
    answered, refusals = asyncio.run(_hammer(SharedBudget(ledger, owner=f"p{seed}", wait_s=0.2), seed, calls))
    Path(f"{path}.{seed}").write_text(f"{answered} {len(refusals)} {sorted({e.limit for e in refusals})}")


def test_many_processes_share_one_cap(tmp_path: Path) -> None:
    path = str(tmp_path / "budget.sqlite")
    SqliteLedger(path, CAP).close()
    spawn = multiprocessing.get_context("spawn")
    procs = [spawn.Process(target=_process, args=(path, seed, 50)) for seed in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=300)
    assert [p.exitcode for p in procs] == [0, 0, 0, 0]
    outcomes = [Path(f"{path}.{seed}").read_text().split(" ", 2) for seed in range(4)]
    snap = asyncio.run(SqliteLedger(path, CAP).snapshot())
    assert _within(CAP, snap.spent) == [] and snap.in_flight == 0
    assert sum(int(a) for a, _, _ in outcomes) == snap.spent.requests
    assert sum(int(a) + int(r) for a, r, _ in outcomes) == 200
    assert sum(int(r) for _, r, _ in outcomes) > 0  # the cap was reached, and held


def _reserve_then_die(path: str, max_tokens: int) -> None:
    async def go() -> None:
        budget = SharedBudget(SqliteLedger(path, BudgetLimits(completion_tokens=100)), owner="doomed")
        await budget.reserve(ChatRequest.of("q", max_tokens=max_tokens), MODELS[0])
        os.kill(os.getpid(), signal.SIGKILL)  # between reserve and settle

    asyncio.run(go())


def test_a_worker_killed_between_reserve_and_settle_is_charged_its_worst_case(tmp_path: Path) -> None:
    path = str(tmp_path / "budget.sqlite")
    limits = BudgetLimits(completion_tokens=100)
    proc = multiprocessing.get_context("spawn").Process(target=_reserve_then_die, args=(path, 60))
    proc.start()
    proc.join(timeout=120)
    assert proc.exitcode == -signal.SIGKILL

    async def after() -> None:
        ledger = SqliteLedger(path, limits)
        survivor = SharedBudget(ledger, owner="survivor", wait_s=0)
        snap = await ledger.snapshot()
        assert (snap.in_flight, snap.reserved.completion_tokens) == (1, 60)  # the dead call still holds its worst case
        with pytest.raises(BudgetExceeded, match="completion_tokens"):
            await survivor.reserve(ChatRequest.of("q", max_tokens=50), MODELS[0])
        assert await ledger.reclaim("doomed") == 1
        snap = await ledger.snapshot()
        # charged, not released: the dead call may have reached the server
        assert (snap.in_flight, snap.spent.completion_tokens, snap.expired) == (0, 60, 1)
        assert snap.models[MODELS[0]].failed == 1
        res = await survivor.reserve(ChatRequest.of("q", max_tokens=40), MODELS[0])  # what is left fits
        await survivor.settle(res, Usage(1, 5, 40))
        with pytest.raises(BudgetExceeded):
            await survivor.reserve(ChatRequest.of("q", max_tokens=1), MODELS[0])
        assert (await ledger.snapshot()).spent.completion_tokens == 100

    asyncio.run(after())


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.now += seconds
        await asyncio.sleep(0)


async def test_a_lease_that_runs_out_is_charged_its_worst_case_and_a_waiter_stops_waiting() -> None:
    clock = _Clock()
    ledger = LocalLedger(BudgetLimits(completion_tokens=100), lease_s=30, clock=clock)
    dead = SharedBudget(ledger, owner="dead", clock=clock, sleep=clock.sleep)
    waiter = SharedBudget(ledger, owner="waiter", wait_s=600, clock=clock, sleep=clock.sleep)
    held = await dead.reserve(ChatRequest.of("q", max_tokens=60), MODELS[0])
    # fits only if the dead call settles: waits, then fails once the lease runs out (it can never fit after)
    with pytest.raises(BudgetExceeded, match="completion_tokens would reach 120"):
        await waiter.acquire(ChatRequest.of("q", max_tokens=60), MODELS[0])
    assert 30 <= clock.now < 600
    snap = await ledger.snapshot()
    assert (snap.spent.completion_tokens, snap.in_flight, snap.expired) == (60, 0, 1)
    # the call comes back after all: its worst case was charged and stands
    assert await dead.settle(held, Usage(1, 5, 3)) == held.ask
    assert (await ledger.snapshot()).spent.completion_tokens == 60


async def test_a_waiter_is_booked_when_a_call_in_flight_settles() -> None:
    ledger = LocalLedger(BudgetLimits(completion_tokens=100))
    a, b = SharedBudget(ledger, owner="a"), SharedBudget(ledger, owner="b", wait_s=5)
    held = await a.reserve(ChatRequest.of("q", max_tokens=80), MODELS[0])
    waiting = asyncio.ensure_future(b.acquire(ChatRequest.of("q", max_tokens=50), MODELS[0]))
    await asyncio.sleep(0.05)
    assert not waiting.done()
    await a.settle(held, Usage(1, 5, 20))
    got = await asyncio.wait_for(waiting, 5)
    assert got.ask.completion_tokens == 50
    assert not await b.can_afford(ChatRequest.of("q", max_tokens=31), MODELS[0])
    assert await b.can_afford(ChatRequest.of("q", max_tokens=30), MODELS[0])


class _SlowAnswer(LocalLedger):
    """Books at once, but its answer takes until `answered` is set to come back (a slow network)."""

    def __init__(self) -> None:
        super().__init__()
        self.answered = asyncio.Event()

    async def reserve(self, ask: Spend, max_tokens: int, *, model: str, owner: str) -> int | Refusal:
        got = await super().reserve(ask, max_tokens, model=model, owner=owner)
        await self.answered.wait()
        return got


async def test_a_reservation_booked_as_its_caller_is_cancelled_is_released() -> None:
    ledger = _SlowAnswer()
    call = asyncio.ensure_future(SharedBudget(ledger).acquire(ChatRequest.of("q"), MODELS[0]))
    await asyncio.sleep(0.01)
    assert (await ledger.snapshot()).in_flight == 1  # booked, the answer on its way
    call.cancel()
    ledger.answered.set()
    with pytest.raises(asyncio.CancelledError):
        await call
    for _ in range(5):
        await asyncio.sleep(0)
    snap = await ledger.snapshot()
    assert (snap.in_flight, snap.spent) == (0, Spend())


async def test_a_shared_budget_charges_what_the_in_process_budget_charges() -> None:
    rng = random.Random(7)
    requests = [ChatRequest.of("z" * rng.randint(0, 99), max_tokens=rng.randint(1, 64)) for _ in range(30)]
    replies = [
        replace(
            reply_to_completion(Reply("a b"), r, MODELS[i % 2]), cached=i % 5 == 0, meta={"usage_missing": i % 7 == 0}
        )
        for i, r in enumerate(requests)
    ]
    local, shared = Budget(), SharedBudget(LocalLedger())
    for i, (request, completion) in enumerate(zip(requests, replies, strict=True)):
        model = MODELS[i % 2]
        res = local.reserve(request, model)
        local.settle(res, completion)
        sres = await shared.reserve(request, model)
        await shared.settle(sres, completion)
    failed, sfailed = local.reserve(requests[0], MODELS[0]), await shared.reserve(requests[0], MODELS[0])
    local.fail(failed, Usage(2, 10, 0))
    await shared.fail(sfailed, Usage(2, 10, 0))
    assert (await shared.bill()).models == local.bill().models
    assert await shared.spent() == local.spent


async def test_each_reservation_is_settled_once_and_a_ledger_keeps_its_limits(tmp_path: Path) -> None:
    shared = SharedBudget(LocalLedger())
    res = await shared.reserve(ChatRequest.of("q"), MODELS[0])
    await shared.cancel(res)
    with pytest.raises(ConfigError, match="exactly once"):
        await shared.settle(res, Usage(1, 1, 1))
    SqliteLedger(tmp_path / "b.sqlite", BudgetLimits(requests=3)).close()
    with pytest.raises(ConfigError, match="other limits"):
        SqliteLedger(tmp_path / "b.sqlite", BudgetLimits(requests=4))
    with pytest.raises(ConfigError, match="lease_s"):
        LocalLedger(lease_s=0)
