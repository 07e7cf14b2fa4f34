"""Kill -9 at random, then resume: nothing finished is lost or asked again, and the result is the same.

Two parts, each `--trials` times (default 10), with scripted servers so a trial takes seconds:

1. `agentflow compare` (arms small, large and cascade on six bundled HotpotQA questions) runs as a child
   process against a fault-injection server on 127.0.0.1 that answers after a short delay; the child is
   SIGKILLed at a random moment and run again with the same command. Checked: every answer stored before
   the kill is still stored, none of those questions is asked of the server again, and the final
   report.json equals an uninterrupted run's (timings aside).
2. A checkpointed graph with a ten-way fan-out (`SqliteCheckpointer`) runs as a child process and is
   SIGKILLed mid-fan-out; `Graph.resume` finishes it. Checked: no branch that finished before the kill
   runs again, and the final state equals an uninterrupted run's.

    python benchmarks/kill_resume.py [--trials 10] [--seed 0]

It prints one line per trial and a summary, and exits non-zero if any check fails.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

from agentflow import get_model
from agentflow.eval import load_dataset
from agentflow.testing import Fault, FaultServer, SeenRequest

ROWS = "0-2,250-252"
VOLATILE = {"wall_s", "wall_s_p50", "wall_s_p95", "energy_j", "energy_j_per_answer", "energy_wh_per_1000"}
VOLATILE |= {"energy_j_spent_now", "energy_basis", "seconds", "created", "elapsed_s"}


def _answer(seen: SeenRequest, gold: dict[str, str]) -> Fault:
    """Right for questions whose id sorts even, wrong otherwise; a short delay so a kill lands mid-run."""
    body = seen.body if isinstance(seen.body, dict) else {}
    text = json.dumps(body.get("messages", ""))
    for i, (question, answer) in enumerate(sorted(gold.items())):
        if question[:60] in text:
            return Fault.slow(0.4, answer if i % 2 == 0 else "nobody")
    return Fault.slow(0.4, "nobody")


def _strip(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _strip(v) for k, v in value.items() if k not in VOLATILE}
    if isinstance(value, list):
        return [_strip(v) for v in value]
    return value


def _stored(out: Path) -> set[tuple[str, str]]:
    db = out / "answers.sqlite"
    if not db.exists():
        return set()
    with sqlite3.connect(db) as con:
        try:
            rows = con.execute("SELECT arm, question_id, record FROM answers").fetchall()
        except sqlite3.OperationalError:  # killed before the table existed
            return set()
    return {(arm, qid) for arm, qid, record in rows if json.loads(record).get("error") is None}


def _compare_cmd(url: str, out: Path, cache: Path) -> list[str]:
    return [
        sys.executable, "-m", "agentflow.cli", "compare", "--dataset", "hotpotqa", "--rows", ROWS,
        "--arms", "small,large,cascade", "--small-url", url, "--large-url", url, "--dialect", "llama_cpp",
        "--out", str(out), "--cache", str(cache),
    ]  # fmt: skip


def compare_trials(trials: int, rng: random.Random, work: Path) -> list[str]:
    examples = load_dataset("hotpotqa", rows=[0, 1, 2, 250, 251, 252])
    gold = {ex.question: ex.answer for ex in examples}
    question = {ex.id: json.dumps(ex.question)[1:-1][:60] for ex in examples}
    models = {"small": get_model("small").name, "large": get_model("large").name}
    failures: list[str] = []
    with FaultServer(handler=lambda seen: _answer(seen, gold)) as server:
        base = work / "uninterrupted"
        subprocess.run(_compare_cmd(server.url, base, work / "base-cache.sqlite"), check=True, capture_output=True)
        expected = _strip(json.loads((base / "report.json").read_text()))
        uninterrupted_calls = server.hits
        for trial in range(trials):
            out, cache = work / f"trial{trial}", work / f"trial{trial}-cache.sqlite"
            before_hits = server.hits
            child = subprocess.Popen(
                _compare_cmd(server.url, out, cache), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
            )
            delay = rng.uniform(2.0, 7.0)  # start-up takes ~2 s; the 12 calls ~5 s more
            try:
                child.wait(delay)
            except subprocess.TimeoutExpired:
                child.send_signal(signal.SIGKILL)
                child.wait()
            kept = _stored(out)
            killed_at = server.hits
            resumed = subprocess.run(_compare_cmd(server.url, out, cache), capture_output=True, text=True)
            asked_again = [
                (str(s.body.get("model")), json.dumps(s.body.get("messages", "")))
                for s in server.seen[killed_at:]
                if isinstance(s.body, dict)
            ]
            again = [
                (arm, qid)
                for arm, qid in kept
                if arm != "cascade"  # the cascade's calls are the small and large arms' (answered from the cache)
                and any(m == models[arm] and question[qid] in text for m, text in asked_again)
            ]
            report = _strip(json.loads((out / "report.json").read_text())) if (out / "report.json").exists() else {}
            same = report == expected
            lost = kept - _stored(out)
            ok = resumed.returncode == 0 and same and not lost and not again
            calls = server.hits - before_hits
            print(
                f"compare trial {trial}: killed after {delay:.2f} s with {len(kept)} answers stored; "
                f"resumed exit {resumed.returncode}; report identical: {same}; lost: {len(lost)}; "
                f"finished answers asked again: {len(again)}; "
                f"server calls {calls} (uninterrupted run: {uninterrupted_calls})"
            )
            if not ok:
                failures.append(
                    f"compare trial {trial}: identical={same} lost={sorted(lost)} again={again} "
                    f"exit={resumed.returncode}"
                )
    return failures


GRAPH = textwrap.dedent(
    """
    import asyncio, os, sys
    from pathlib import Path
    from typing import Annotated
    from pydantic import BaseModel
    from agentflow import END, START, Append, GraphBuilder, SqliteCheckpointer

    SIDE = Path(os.environ["SIDE_FILE"])

    class S(BaseModel):
        done: Annotated[list[str], Append()] = []

    def branch(name: str, seconds: float):
        async def run(state: S) -> dict[str, list[str]]:
            await asyncio.sleep(seconds)
            with SIDE.open("a") as f:
                f.write(name + "\\n")
            return {"done": [name]}
        return run

    def build():
        g = GraphBuilder(S, name="fanout")
        names = [f"b{i}" for i in range(10)]
        for i, name in enumerate(names):
            g.add_node(name, branch(name, 0.2 + 0.25 * i))
            g.add_edge(START, name)
        g.add_node("join", lambda s: {"done": ["join"]})
        for name in names:
            g.add_edge(name, "join")
        g.add_edge("join", END)
        return g.compile()

    async def main(db: str, mode: str) -> None:
        store = SqliteCheckpointer(db)
        graph = build()
        if mode == "resume":
            state, _ = await graph.resume(run_id="r1", checkpointer=store)
        else:
            state, _ = await graph.run(S(), run_id="r1", checkpointer=store)
        print(sorted(state.done))

    asyncio.run(main(sys.argv[1], sys.argv[2]))
    """
)


def graph_trials(trials: int, rng: random.Random, work: Path) -> list[str]:
    script = work / "fanout_flow.py"
    script.write_text(GRAPH)
    failures: list[str] = []
    base_side = work / "base-side.txt"
    env = {**os.environ, "SIDE_FILE": str(base_side)}
    base = subprocess.run(
        [sys.executable, str(script), str(work / "base.sqlite"), "run"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    expected = base.stdout.strip()
    for trial in range(trials):
        side, db = work / f"side{trial}.txt", work / f"graph{trial}.sqlite"
        env = {**os.environ, "SIDE_FILE": str(side)}
        child = subprocess.Popen([sys.executable, str(script), str(db), "run"], env=env, stdout=subprocess.DEVNULL)
        delay = rng.uniform(1.0, 3.0)  # the branches finish between ~1.2 s and ~3.5 s after start-up
        try:
            child.wait(delay)
        except subprocess.TimeoutExpired:
            child.send_signal(signal.SIGKILL)
            child.wait()
        finished = side.read_text().split() if side.exists() else []
        resumed = subprocess.run(
            [sys.executable, str(script), str(db), "resume"], env=env, capture_output=True, text=True
        )
        after = side.read_text().split() if side.exists() else []
        reruns = [b for b in finished if after.count(b) > 1]
        same = resumed.stdout.strip() == expected
        print(
            f"graph trial {trial}: killed after {delay:.2f} s with {len(finished)} of 10 branches done; "
            f"resumed exit {resumed.returncode}; final state identical: {same}; branches run twice: {len(reruns)}"
        )
        if resumed.returncode != 0 or not same or reruns:
            failures.append(f"graph trial {trial}: identical={same} reruns={reruns} exit={resumed.returncode}")
    return failures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    began = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="agentflow-kill-") as tmp:
        work = Path(tmp)
        failures = compare_trials(args.trials, rng, work) + graph_trials(args.trials, rng, work)
    print(f"{2 * args.trials} trials in {time.monotonic() - began:.0f} s: {len(failures)} failed")
    for line in failures:
        print("FAILED", line)
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
