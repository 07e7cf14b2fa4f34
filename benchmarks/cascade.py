"""The claim to test: an agent of small models reaches at least the large model's exact match at no more
than half its FLOPs.

    .venv/bin/python benchmarks/cascade.py            # first run ~45 min on 2 cores; reruns are free
    .venv/bin/python benchmarks/cascade.py --quick    # 4 + 4 questions, to check the plumbing

It runs `agentflow compare` arms on 40 HotpotQA questions (rows 0-19 bridge and 250-269 comparison of
../shared/data) and the first 50 StrategyQA questions, on the local CPU servers (Qwen2.5-Coder 0.5B
small, 1.5B large). Arms: the small model alone behind retrieval; the large model on the full context
and behind the same retrieval (so the saving from small models is not confused with the saving from
shorter prompts); at a sweep of thresholds, the router from small to large behind retrieval (`agent`) and
the cascade that escalates to the large model on the full context (`cascade`). The single arms ask for
the same logprobs the router does, so the router's and the cascade's calls are answered from the shared
response cache: the sweeps cost no model time, and a rerun costs nothing. Prints the table and writes
it into benchmarks/README.md between the cascade markers.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import platform
import re
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import serving
from agentflow import ModelClient, get_model
from agentflow.eval import CompareConfig, Comparison, load_dataset
from serving import DEFAULT_CACHE_DIR
from workflows import solve

ROOT = Path(__file__).resolve().parent
THRESHOLDS = (0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95)


async def run_set(
    name: str,
    examples: list[Any],
    arms: tuple[str, ...],
    out: Path,
    clients: Any,
    cache: Path,
    workflow: str,
    estimator: str,
    retrieve_k: int = 2,
) -> list[dict[str, Any]]:
    small, large = clients
    rows: list[dict[str, Any]] = []
    tag = workflow if estimator == "mean" else f"{workflow}-{estimator.replace(':', '-')}"
    tag += "" if retrieve_k == 2 else f"-k{retrieve_k}"
    base = CompareConfig(
        dataset=name,
        question_ids=tuple(e.id for e in examples),
        arms=arms,  # type: ignore[arg-type]
        workflow=workflow,
        estimator=estimator,
        retrieve_k=retrieve_k,
        small_model=small.name,
        large_model=large.name,
    )
    report = await Comparison(base, examples, small, large, out / f"{name}-{tag}-base", solve).run(cache)
    rows.extend(_rows(name, report, workflow))
    for t in THRESHOLDS:
        cfg = replace(base, arms=("agent",), threshold=t)
        report = await Comparison(cfg, examples, small, large, out / f"{name}-{tag}-t{t}", solve).run(cache)
        rows.extend(_rows(name, report, workflow, label=f"agent t={t}"))
        print(f"  {name} agent t={t}: em={report['arms'][0]['em']:.3f}", flush=True)
    for t in THRESHOLDS:  # small behind retrieval, escalating to the large model on the full context
        cfg = replace(base, arms=("cascade",), threshold=t)
        report = await Comparison(cfg, examples, small, large, out / f"{name}-{tag}-cascade-t{t}", solve).run(cache)
        rows.extend(_rows(name, report, workflow, label=f"cascade t={t}"))
        print(f"  {name} cascade t={t}: em={report['arms'][0]['em']:.3f}", flush=True)
    return rows


def _rows(dataset: str, report: dict[str, Any], workflow: str, label: str | None = None) -> list[dict[str, Any]]:
    out = []
    for a in report["arms"]:
        out.append(
            {
                "dataset": dataset,
                "arm": label or a["name"],
                "workflow": workflow if (label or a["name"]) not in ("large",) else "direct, full context",
                "n": a["n"],
                "em": a["em"],
                "em_ci95": a["em_ci95"],
                "flops_per_q": a["flops_per_question"],
                "escalation_rate": a["escalation_rate"],
                "wall_s": a["wall_s"],
            }
        )
    return out


def table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| dataset | arm | workflow | n | EM | 95% CI | FLOPs/q | vs large FLOPs | escalated | wall s (first run) |",
        "|---|---|---|---:|---:|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        ref = next((x for x in rows if x["dataset"] == r["dataset"] and x["arm"] == "large"), None)
        ratio = f"{r['flops_per_q'] / ref['flops_per_q']:.2f}" if ref and ref["flops_per_q"] else "-"
        lo, hi = r["em_ci95"]
        lines.append(
            f"| {r['dataset']} | {r['arm']} | {r['workflow']} | {r['n']} | {r['em']:.3f} | {lo:.2f}-{hi:.2f} | "
            f"{r['flops_per_q']:.2e} | {ratio} | {r['escalation_rate']:.0%} | {r['wall_s']:.0f} |"
        )
    return "\n".join(lines)


def verdict(rows: list[dict[str, Any]]) -> str:
    """Whether any agent or cascade setting reached the large model's EM at no more than half its FLOPs."""
    out = []
    for dataset in dict.fromkeys(r["dataset"] for r in rows):
        mine = [r for r in rows if r["dataset"] == dataset]
        ref = next(r for r in mine if r["arm"] == "large")
        tries = [r for r in mine if r["arm"].startswith(("agent", "cascade"))]
        cheap = [r for r in tries if r["flops_per_q"] <= 0.5 * ref["flops_per_q"]]
        won = [r for r in cheap if r["em"] >= ref["em"]]
        if won:
            best = min(won, key=lambda r: r["flops_per_q"])
            line = (
                f"- {dataset}: the claim holds: `{best['arm']}` reached EM {best['em']:.3f} (large: {ref['em']:.3f}) "
                f"at {best['flops_per_q'] / ref['flops_per_q']:.2f} of the large model's FLOPs, with the threshold "
                "picked on these same questions (an optimistic estimate)."
            )
            lr = next((r for r in mine if r["arm"] == "large-retrieval"), None)
            if lr is not None and lr["em"] >= best["em"] and lr["flops_per_q"] <= best["flops_per_q"]:
                line += (
                    f" But the large model behind the same retrieval, alone, reached {lr['em']:.3f} at "
                    f"{lr['flops_per_q'] / ref['flops_per_q']:.2f}: the saving comes from retrieval, not from "
                    "the small model."
                )
            out.append(line)
            continue
        line = (
            f"- {dataset}: the claim fails: no setting at half the large model's FLOPs reached its EM {ref['em']:.3f}."
        )
        if cheap:
            best = max(cheap, key=lambda r: (r["em"], -r["flops_per_q"]))
            line += (
                f" Closest within half the FLOPs: `{best['arm']}`, EM {best['em']:.3f} "
                f"at {best['flops_per_q'] / ref['flops_per_q']:.2f} of the FLOPs."
            )
        top = max(tries, key=lambda r: (r["em"], -r["flops_per_q"]), default=None)
        if top is not None:
            line += (
                f" Best EM of any agent or cascade setting: `{top['arm']}`, {top['em']:.3f} "
                f"at {top['flops_per_q'] / ref['flops_per_q']:.2f} of the FLOPs."
            )
        out.append(line)
    return "\n".join(out)


def write_readme(text: str, marker: str, title: str) -> None:
    path = ROOT / "README.md"
    doc = path.read_text(encoding="utf-8") if path.exists() else "# Benchmarks\n"
    begin, end = f"<!-- {marker}:start -->", f"<!-- {marker}:end -->"
    block = f"{begin}\n{text}\n{end}"
    if begin in doc:
        doc = re.sub(re.escape(begin) + ".*" + re.escape(end), lambda _: block, doc, flags=re.S)
    else:
        doc += f"\n## {title}\n\n{block}\n"
    path.write_text(doc, encoding="utf-8")


async def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="4 + 4 questions, no README update")
    p.add_argument("--workflow", default="direct", help="the workflow of the small arms (direct, cot, verify, ...)")
    p.add_argument("--estimator", default="mean", help="confidence estimator, as `agentflow compare --estimator`")
    p.add_argument("--retrieve-k", type=int, default=2, help="paragraphs the small arms read")
    p.add_argument("--out", type=Path, default=Path("runs/cascade"))
    p.add_argument("--skip-hotpotqa", action="store_true")
    p.add_argument("--skip-strategyqa", action="store_true")
    args = p.parse_args()
    hp_rows = [0, 1, 250, 251] if args.quick else [*range(20), *range(250, 270)]
    hotpot = load_dataset("hotpotqa", rows=hp_rows)
    strat = load_dataset("strategyqa", limit=4 if args.quick else 50)
    cache = DEFAULT_CACHE_DIR.parent / "responses.sqlite"
    small_name, large_name = get_model("small").name, get_model("large").name
    rows: list[dict[str, Any]] = []
    sets: list[tuple[str, list[Any], tuple[str, ...]]] = []
    if not args.skip_hotpotqa:
        sets.append(("hotpotqa", hotpot, ("small", "large-retrieval", "large")))
    if not args.skip_strategyqa:  # closed book: the set has no paragraphs
        sets.append(("strategyqa", strat, ("small", "large")))
    async with serving.start_servers([small_name, large_name]) as (s, l_):
        async with (
            ModelClient(s.url, small_name, dialect="llama_cpp") as small,
            ModelClient(l_.url, large_name, dialect="llama_cpp", timeout=600) as large,
        ):
            for name, examples, arms in sets:
                print(f"{name}: {len(examples)} questions", flush=True)
                rows += await run_set(
                    name,
                    examples,
                    arms,
                    args.out,
                    (small, large),
                    cache,
                    args.workflow,
                    args.estimator,
                    args.retrieve_k,
                )
    text = table(rows) + "\n\n" + verdict(rows)
    print(text)
    tag = f"{args.workflow}-{args.estimator.replace(':', '-')}-k{args.retrieve_k}"
    (args.out / f"cascade-{tag}.json").write_text(json.dumps(rows, indent=1))
    if not args.quick:
        command = " ".join(["`.venv/bin/python benchmarks/cascade.py", *sys.argv[1:]]) + "`"
        stamp = (
            f"Measured {dt.date.today()} on {platform.machine()}, Python {sys.version.split()[0]}, 2 cores, "
            f"llama.cpp CPU servers, Qwen2.5-Coder 0.5B / 1.5B Q4_K_M, temperature 0, retrieval k={args.retrieve_k}, "
            f"workflow `{args.workflow}`, estimator `{args.estimator}`. Command: {command}."
        )
        default = (
            args.workflow == "direct" and args.estimator == "mean" and not (args.skip_hotpotqa or args.skip_strategyqa)
        )
        marker = "cascade" if default else f"cascade-{tag}"
        title = "Cascade: agent of small models vs the large model"
        write_readme(stamp + "\n\n" + text, marker, title if default else f"{title} ({tag})")


if __name__ == "__main__":
    asyncio.run(main())
