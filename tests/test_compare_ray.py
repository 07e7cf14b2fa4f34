"""`compare` on a local Ray instance: the report of a local run, killed workers and drivers that lose nothing
and spend nothing twice, a run budget shared by every worker. Scripted models only."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import textwrap
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pytest
import test_compare
import test_shared_budget
from test_compare import GOLD, LARGE, SMALL, _config, _examples, _question, oracle
from test_shared_budget import CAP, CHECKED, _hammer, _within

from agentflow import BudgetExceeded, BudgetLimits, ChatRequest, ConfigError, MissingDependencyError
from agentflow._shared_budget import SharedBudget
from agentflow.eval import Comparison, RunStore
from agentflow.eval._ray import RayExecutor, import_ray, ray_ledger
from agentflow.testing import FunctionModel, Reply
from workflows import QAState, rung

try:
    import ray
except ImportError:  # the tests that need it are skipped, saying how to install it
    ray = None

needs_ray = pytest.mark.skipif(
    ray is None,
    reason="Ray is not installed: `pip install 'agentflow[ray]'` (in a clone: .venv/bin/pip install -e '.[ray]')",
)


@pytest.fixture(scope="module")
def local_ray() -> Iterator[str]:
    """A Ray instance on this machine for the module (2 CPUs, no dashboard); its address."""
    ray.init(num_cpus=2, include_dashboard=False)
    modules = (sys.modules[__name__], test_compare, test_shared_budget)  # the workers cannot import tests/
    for module in modules:
        ray.cloudpickle.register_pickle_by_value(module)
    try:
        yield str(ray.get_runtime_context().gcs_address)
    finally:
        for module in modules:
            ray.cloudpickle.unregister_pickle_by_value(module)
        ray.shutdown()


def test_agentflow_imports_no_ray_and_a_ray_run_without_it_names_the_extra(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    code = "import sys, agentflow, agentflow.eval, agentflow.eval._ray, agentflow.cli; print('ray' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=os.environ)
    assert out.stdout.strip() == "False", out.stderr
    monkeypatch.setitem(sys.modules, "ray", None)  # as if it were not installed
    with pytest.raises(MissingDependencyError, match=r"pip install 'agentflow\[ray\]'"):
        import_ray()
    examples = _examples()
    comparison = Comparison(
        _config(examples, arms=("small",)), examples, None, None, tmp_path, rung, QAState, executor=RayExecutor()
    )
    with pytest.raises(MissingDependencyError, match="agentflow"):
        asyncio.run(comparison.run())


def test_models_next_to_an_executor_and_an_executor_without_models_are_refused(tmp_path: Path) -> None:
    examples = _examples()
    cfg = _config(examples, arms=("small", "large"))
    small = oracle(SMALL, right=set(), prob=0.9)
    with pytest.raises(ConfigError, match="run compare on a node of the cluster"):
        RayExecutor({"small": lambda: small}, address="ray://head:10001")
    with pytest.raises(ConfigError, match="small=None and large=None"):
        Comparison(cfg, examples, small, None, tmp_path, rung, QAState, executor=RayExecutor({"small": lambda: small}))
    if ray is not None:  # checked before any connection to a cluster
        lacking = Comparison(
            cfg, examples, None, None, tmp_path, rung, QAState, executor=RayExecutor({"small": lambda: small})
        )
        with pytest.raises(ConfigError, match="the large model but RayExecutor has no source for it"):
            asyncio.run(lacking.run())
        assert not ray.is_initialized()


def _steady(report: Any) -> Any:
    """The report without what depends on the clock: wall times, and the energy estimated from them (where no
    FLOPs were spent, e.g. answers from the cache)."""
    if isinstance(report, dict):
        return {k: _steady(v) for k, v in report.items() if "wall" not in k and "energy" not in k}
    if isinstance(report, list):
        return [_steady(v) for v in report]
    return report


def _records(path: Path, arm: str) -> list[dict[str, Any]]:
    """The stored records of `arm`, in question order, without their wall times."""
    with RunStore(path / "answers.sqlite") as store:
        return sorted((_steady(asdict(r)) for r in store.records(arm)), key=lambda r: str(r["question_id"]))


@needs_ray
async def test_a_ray_run_reports_what_a_local_run_reports(local_ray: str, tmp_path: Path) -> None:
    examples = _examples()
    cfg = _config(examples, arms=("agent", "cascade", "large", "small"), threshold=0.8)

    def models() -> tuple[FunctionModel, FunctionModel]:
        return oracle(SMALL, right={"enslaved worlds", "Scott Derrickson"}, prob=0.5), oracle(
            LARGE, right={"Kiss and Tell", "enslaved worlds", "Big Stone Gap", "Scott Derrickson"}, prob=0.95
        )

    small, large = models()
    here = await Comparison(cfg, examples, small, large, tmp_path / "here", rung, QAState, concurrency=2).run(
        tmp_path / "here.sqlite"
    )
    remote_small, remote_large = models()
    executor = RayExecutor({"small": lambda: remote_small, "large": lambda: remote_large})
    on_ray = Comparison(cfg, examples, None, None, tmp_path / "ray", rung, QAState, concurrency=2, executor=executor)
    there = await on_ray.run(tmp_path / "ray.sqlite")

    assert _steady(there) == _steady(here)
    assert {a["name"]: a["em"] for a in there["arms"]} == {"agent": 0.8, "cascade": 0.8, "large": 0.8, "small": 0.4}
    for arm in cfg.arms:
        assert _records(tmp_path / "ray", arm) == _records(tmp_path / "here", arm)
    assert remote_small.requests == [] and remote_large.requests == []  # asked in the workers, not here


def _asked_log(log: Path) -> list[tuple[str, str]]:
    return [tuple(line.split("|")) for line in log.read_text().splitlines()]  # type: ignore[misc]


def _dying_models(log: Path, marker: Path, kill: str) -> tuple[FunctionModel, FunctionModel]:
    """Right everywhere; the small model unsure (every question escalates). The large model kills the process
    it runs in (`kill`: "worker", or the pid of a driver, then the worker) the first time it is asked about
    Big Stone Gap. Every answer given is logged as model|question."""

    def model(name: str, prob: float) -> FunctionModel:
        def answer(req: ChatRequest) -> Reply:
            key = next(k for k in GOLD if k in _question(req))
            if name == LARGE and key == "Big Stone Gap" and not marker.exists():
                marker.write_text(str(os.getpid()))
                if kill != "worker":
                    os.kill(int(kill), signal.SIGKILL)
                os.kill(os.getpid(), signal.SIGKILL)
            with log.open("a") as f:
                f.write(f"{name}|{key}\n")
            return Reply(GOLD[key], prob=prob)

        return FunctionModel(answer, name=name)

    return model(SMALL, 0.5), model(LARGE, 0.99)


@needs_ray
async def test_a_killed_worker_loses_no_answer_and_re_spends_nothing(local_ray: str, tmp_path: Path) -> None:
    log, marker = tmp_path / "asked.txt", tmp_path / "killed"
    small, large = _dying_models(log, marker, "worker")
    examples = _examples()
    executor = RayExecutor({"small": lambda: small, "large": lambda: large})
    comparison = Comparison(
        _config(examples, arms=("cascade",), threshold=0.8),
        examples,
        None,
        None,
        tmp_path / "out",
        rung,
        QAState,
        run_limits=BudgetLimits(requests=50),  # the run budget is a shared ledger: the dead worker's part is charged
        concurrency=2,
        executor=executor,
    )
    report = await comparison.run()

    assert marker.exists(), "a worker was killed mid-question"
    (arm,) = report["arms"]
    assert (arm["n"], arm["errors"], arm["em"], arm["escalation_rate"]) == (5, 0, 1.0, 1.0)
    asked = Counter(_asked_log(log))
    # every call answered once: the killed question's small call, made before the kill, came from the cache
    assert asked == Counter({(m, k): 1 for m in (SMALL, LARGE) for k in GOLD})
    killed = next(q for q in report["questions"] if "Big Stone Gap" in q["question"])["arms"]["cascade"]
    assert killed["correct"] and killed["model"] == LARGE
    bill = comparison.bills["cascade"]
    assert bill.models[SMALL].cached == 1 and bill.models[SMALL].requests == 4
    assert bill.models[LARGE].requests == 5


@needs_ray
async def test_a_question_whose_worker_keeps_dying_is_stored_as_failed_and_asked_again_next_run(
    local_ray: str, tmp_path: Path
) -> None:
    log, fatal = tmp_path / "asked.txt", tmp_path / "fatal"
    fatal.touch()

    def answer(req: ChatRequest) -> Reply:
        key = next(k for k in GOLD if k in _question(req))
        if key == "Laleli Mosque" and fatal.exists():  # its worker dies whenever it is asked, while `fatal` exists
            os.kill(os.getpid(), signal.SIGKILL)
        with log.open("a") as f:
            f.write(f"{SMALL}|{key}\n")
        return Reply(GOLD[key], prob=0.9)

    examples = _examples()
    cfg = _config(examples, arms=("small",))
    small = FunctionModel(answer, name=SMALL)
    executor = RayExecutor({"small": lambda: small}, retries=1)
    first = await Comparison(cfg, examples, None, None, tmp_path, rung, QAState, executor=executor).run()
    (arm,) = first["arms"]
    assert (arm["n"], arm["errors"]) == (5, 1)
    assert "WorkerLost: the Ray worker answering this question died 2 times" in arm["first_error"]["error"]

    fatal.unlink()
    again = await Comparison(cfg, examples, None, None, tmp_path, rung, QAState, executor=executor).run()
    assert (again["arms"][0]["errors"], again["arms"][0]["em"]) == (0, 1.0)
    assert Counter(_asked_log(log)) == Counter({(SMALL, k): 1 for k in GOLD})  # only the failed one asked again


DRIVER = textwrap.dedent(
    """
    import asyncio, os, sys
    from pathlib import Path
    sys.path.insert(0, {tests!r})
    import ray
    from test_compare import _config, _examples
    from test_compare_ray import _dying_models
    from agentflow.eval import Comparison
    from agentflow.eval._ray import RayExecutor
    from workflows import QAState, rung

    import test_compare, test_compare_ray
    ray.init(address={address!r})
    for module in (test_compare, test_compare_ray):
        ray.cloudpickle.register_pickle_by_value(module)
    small, large = _dying_models(Path({log!r}), Path({marker!r}), str(os.getpid()))
    examples = _examples()
    executor = RayExecutor({{"small": lambda: small, "large": lambda: large}})
    cfg = _config(examples, arms=("cascade",), threshold=0.8)
    comparison = Comparison(cfg, examples, None, None, Path({out!r}), rung, QAState, executor=executor)
    asyncio.run(comparison.run())
    """
)


@needs_ray
def test_a_killed_driver_resumes_without_asking_anything_again(local_ray: str, tmp_path: Path) -> None:
    log, marker, out = tmp_path / "asked.txt", tmp_path / "killed", tmp_path / "out"
    script = DRIVER.format(
        tests=str(Path(__file__).parent), address=local_ray, log=str(log), marker=str(marker), out=str(out)
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, env=os.environ)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    before = Counter(_asked_log(log))
    assert before == Counter(
        {(m, k): 1 for m in (SMALL, LARGE) for k in ("Kiss and Tell", "enslaved worlds")}
    ) + Counter(
        {(SMALL, "Big Stone Gap"): 1}
    )  # two questions answered and stored, the third's small call made and cached when the driver died

    small, large = _dying_models(log, marker, "worker")
    examples = _examples()
    executor = RayExecutor({"small": lambda: small, "large": lambda: large})
    cfg = _config(examples, arms=("cascade",), threshold=0.8)
    report = asyncio.run(Comparison(cfg, examples, None, None, out, rung, QAState, executor=executor).run())
    (arm,) = report["arms"]
    assert (arm["n"], arm["errors"], arm["em"]) == (5, 0, 1.0)
    assert Counter(_asked_log(log)) == Counter({(m, k): 1 for m in (SMALL, LARGE) for k in GOLD})


@needs_ray
async def test_a_run_budget_on_ray_caps_every_worker_together(local_ray: str, tmp_path: Path) -> None:
    log = tmp_path / "asked.txt"

    def logged(name: str) -> FunctionModel:
        def answer(req: ChatRequest) -> Reply:
            key = next(k for k in GOLD if k in _question(req))
            with log.open("a") as f:
                f.write(f"{name}|{key}\n")
            return Reply(GOLD[key], prob=0.9)

        return FunctionModel(answer, name=name)

    small, large = logged(SMALL), logged(LARGE)
    examples = _examples()
    comparison = Comparison(
        _config(examples, arms=("small", "large")),
        examples,
        None,
        None,
        tmp_path / "out",
        rung,
        QAState,
        run_limits=BudgetLimits(requests=3),
        concurrency=3,
        executor=RayExecutor({"small": lambda: small, "large": lambda: large}),
    )
    report = await comparison.run()
    assert len(log.read_text().splitlines()) == 3
    arms = {a["name"]: a for a in report["arms"]}
    assert (arms["small"]["errors"], arms["large"]["errors"]) == (2, 5)
    assert "BudgetExceeded" in arms["large"]["first_error"]["error"]
    assert comparison.bills["small"].requests == 3 and comparison.bills["large"].requests == 0


def _reserve_and_die(ledger: Any) -> None:
    async def go() -> None:
        budget = SharedBudget(ledger, owner="doomed")
        await budget.reserve(ChatRequest.of("q", max_tokens=60), SMALL)
        os.kill(os.getpid(), signal.SIGKILL)

    asyncio.run(go())


def _hammer_on(ledger: Any, seed: int) -> tuple[int, list[str]]:
    budget = SharedBudget(ledger, owner=f"task{seed}", wait_s=0.2)
    answered, refusals = asyncio.run(_hammer(budget, seed, 40))
    assert all(isinstance(e, BudgetExceeded) for e in refusals)
    return answered, [e.limit for e in refusals]


@needs_ray
async def test_the_ray_ledger_holds_one_cap_across_workers_and_charges_a_dead_one(local_ray: str) -> None:
    ledger = ray_ledger(CAP)
    outcomes = await asyncio.gather(*(ray.remote(_hammer_on).remote(ledger, seed) for seed in range(4)))
    snap = await ledger.snapshot()
    assert _within(CAP, snap.spent) == [] and snap.in_flight == 0
    assert sum(a for a, _ in outcomes) == snap.spent.requests
    limits = [x for _, r in outcomes for x in r]
    assert limits and set(limits) <= set(CHECKED)  # the cap was reached, and every refusal names its limit

    small = ray_ledger(BudgetLimits(completion_tokens=100))
    with pytest.raises(ray.exceptions.WorkerCrashedError):
        await ray.remote(_reserve_and_die).options(max_retries=0).remote(small)
    assert (await small.snapshot()).reserved.completion_tokens == 60
    assert await small.reclaim("doomed") == 1
    snap = await small.snapshot()
    assert (snap.spent.completion_tokens, snap.in_flight, snap.models[SMALL].failed) == (60, 0, 1)


@needs_ray
def test_compare_dash_dash_ray_runs_the_questions_on_the_cluster(local_ray: str, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from agentflow import cli
    from agentflow.testing import Fault, FaultServer

    with FaultServer(then=Fault.ok("Chief of Protocol")) as server:
        base = ["compare", "--data-dir", str(test_compare.DATA), "--rows", "0,1", "--dialect", "openai"]
        base += ["--cache", str(tmp_path / "cache.sqlite"), "--out", str(tmp_path / "out")]
        result = CliRunner().invoke(
            cli.app, [*base, "--arms", "small", "--small-url", server.url, "--ray", local_ray], env={"COLUMNS": "200"}
        )
        assert server.hits == 2  # the two questions, asked from the workers
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["arms"][0]["n"] == 2 and report["arms"][0]["errors"] == 0
