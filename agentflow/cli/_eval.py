"""Commands for graphs and evaluation: `graph`, `calibrate`, `compare` (registered on the app in `agentflow.cli`)."""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Annotated, Any, cast

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from serving import DEFAULT_CACHE_DIR

from .._catalog import ROLES, get_model
from .._exceptions import ConfigError
from ._app import cache_dir as _cache_dir
from ._app import one_red_line as _one_red_line
from ._app import run as _run

__all__ = ["calibrate", "compare", "graph"]


def graph(spec: Annotated[str, typer.Argument(help="MODULE:NAME of a Graph (or a function returning one)")]) -> None:
    """Print the Mermaid diagram of a graph."""
    from .._mermaid import load_graph

    with _one_red_line():
        typer.echo(load_graph(spec).to_mermaid())


def calibrate(
    examples: Annotated[Path, typer.Argument(help="JSONL of {score, correct, rung, cost} (compare writes one)")],
    out: Annotated[Path, typer.Option(help="where to write the thresholds (JSON)")] = Path("thresholds.json"),
    models: Annotated[
        str | None, typer.Option(help="the ladder, small to large, comma-separated (rungs named in the file)")
    ] = None,
    target_accuracy: Annotated[
        float | None, typer.Option(help="accuracy each rung's accepted answers must reach")
    ] = None,
    target_cost: Annotated[
        float | None, typer.Option(help="best accuracy under this expected cost per question")
    ] = None,
) -> None:
    """Pick each rung's escalation threshold from labelled answers and write them for `compare --thresholds`."""
    from ..eval._calibration_data import calibrate_file

    ladder = [m.strip() for m in models.split(",")] if models else None
    with _one_red_line():
        result = calibrate_file(examples, out, models=ladder, target_accuracy=target_accuracy, target_cost=target_cost)
    typer.echo(result.report.summary())
    typer.echo(f"thresholds written to {out}")


def _rows(text: str) -> list[int]:
    rows: list[int] = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        try:
            if "-" in part:
                a, b = part.split("-", 1)
                rows.extend(range(int(a), int(b) + 1))
            else:
                rows.append(int(part))
        except ValueError:
            raise ConfigError(f"--rows {text!r}: use row numbers and ranges like 0-19,250-269") from None
    return rows


def compare(
    dataset: Annotated[
        str, typer.Option(help="a name in the data folder (hotpotqa, ...) or a JSONL path")
    ] = "hotpotqa",
    limit: Annotated[int | None, typer.Option(help="the first N questions")] = None,
    rows: Annotated[str | None, typer.Option(help="row numbers, e.g. 0-19,250-269 (instead of --limit)")] = None,
    workflow: Annotated[str, typer.Option(help="the agent's workflow: direct, cot, sc, verify, decompose")] = "direct",
    arms: Annotated[
        str, typer.Option(help="comma-separated: agent, large, large-retrieval, small, large-cot, cascade")
    ] = "agent,cascade,large",
    retrieve_k: Annotated[int, typer.Option(help="paragraphs the agent reads")] = 2,
    threshold: Annotated[float | None, typer.Option(help="escalate when the small model's confidence is below")] = None,
    thresholds: Annotated[Path | None, typer.Option(help="thresholds file written by `agentflow calibrate`")] = None,
    estimator: Annotated[
        str,
        typer.Option(
            help="confidence from token probabilities: mean, geomean, min, joint; "
            "add :variants to count 'Yes' and 'yes' as one answer"
        ),
    ] = "mean",
    out: Annotated[Path, typer.Option(help="folder for answers.sqlite, report.json, report.md, pareto.png")] = Path(
        "runs/compare"
    ),
    small_url: Annotated[str | None, typer.Option(help="a running server for the small model (OpenAI API)")] = None,
    large_url: Annotated[str | None, typer.Option(help="a running server for the large model (OpenAI API)")] = None,
    small_model: Annotated[str, typer.Option(help="catalog name of the small model")] = ROLES["small"],
    large_model: Annotated[str, typer.Option(help="catalog name of the large model")] = ROLES["large"],
    dialect: Annotated[
        str, typer.Option(help="dialect of --small-url/--large-url servers: vllm, llama_cpp, openai")
    ] = "vllm",
    data_dir: Annotated[Path | None, typer.Option(help="folder of the evaluation JSONL files")] = None,
    cache: Annotated[
        Path | None,
        typer.Option(help="response cache shared by runs (default: responses.sqlite in the model cache folder)"),
    ] = None,
) -> None:
    """Agent of small models against the single large model, on the same questions: table, report, picture."""
    _run(
        _compare(
            dataset=dataset,
            limit=limit,
            rows=rows,
            workflow=workflow,
            arms=arms,
            retrieve_k=retrieve_k,
            threshold=threshold,
            thresholds=thresholds,
            estimator=estimator,
            out=out,
            small_url=small_url,
            large_url=large_url,
            small_model=small_model,
            large_model=large_model,
            dialect=dialect,
            data_dir=data_dir,
            cache=cache,
        )
    )


async def _compare(**o: Any) -> None:
    from workflows import WORKFLOWS, solve

    from .._client import ModelClient
    from ..eval._compare import CompareConfig, Comparison
    from ..eval._data import load_dataset
    from ..eval._report_render import render_table

    if o["workflow"] not in WORKFLOWS:
        raise ConfigError(f"unknown workflow {o['workflow']!r}: choose one of {', '.join(WORKFLOWS)}")
    if o["limit"] is not None and o["rows"] is not None:
        raise ConfigError("give --limit or --rows, not both")
    env_dir = os.environ.get("AGENTFLOW_DATA_DIR")
    data_dir = o["data_dir"] or (Path(env_dir) if env_dir else None)  # None: the bundled sets
    rows = _rows(o["rows"]) if o["rows"] else None
    examples = load_dataset(o["dataset"], limit=o["limit"], rows=rows, data_dir=data_dir)
    if not examples:
        raise ConfigError(f"no questions selected from {o['dataset']!r}: check --limit/--rows")
    small_name, large_name = get_model(o["small_model"]).name, get_model(o["large_model"]).name
    config = CompareConfig(
        dataset=str(o["dataset"]),
        question_ids=tuple(ex.id for ex in examples),
        arms=cast(Any, tuple(a.strip() for a in o["arms"].split(",") if a.strip())),
        workflow=o["workflow"],
        retrieve_k=o["retrieve_k"],
        threshold=o["threshold"],
        thresholds_file=str(o["thresholds"]) if o["thresholds"] else None,
        estimator=o["estimator"],
        small_model=small_name,
        large_model=large_name,
    )
    if o["thresholds"] is not None:  # a missing or mismatched file is refused before any server starts
        from .._calibration import Thresholds

        Thresholds.load(o["thresholds"]).for_ladder([small_name, large_name])
    console = Console(width=None if sys.stdout.isatty() else 150)
    cache_path = o["cache"] or (_cache_dir() or DEFAULT_CACHE_DIR.parent) / "responses.sqlite"
    async with AsyncExitStack() as stack:
        urls: dict[str, str] = {}
        dialects: dict[str, str] = {}
        to_start = []
        for name, url in ((small_name, o["small_url"]), (large_name, o["large_url"])):
            if url:
                urls[name], dialects[name] = url, o["dialect"]
            else:
                to_start.append(name)
        if to_start:
            import serving

            console.print(f"starting local llama.cpp servers for {', '.join(to_start)} on 127.0.0.1 ...")
            servers = await stack.enter_async_context(serving.start_servers(to_start, cache_dir=_cache_dir()))
            for name, server in zip(to_start, servers, strict=True):
                urls[name], dialects[name] = server.url, "llama_cpp"
        small = await stack.enter_async_context(
            ModelClient(urls[small_name], small_name, dialect=cast(Any, dialects[small_name]))
        )
        large = await stack.enter_async_context(
            ModelClient(urls[large_name], large_name, dialect=cast(Any, dialects[large_name]))
        )
        with Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=console
        ) as progress:
            tasks = {arm: progress.add_task(arm, total=len(examples)) for arm in config.arms}

            def advance(arm: Any, _record: object) -> None:
                progress.advance(tasks[arm])

            comparison = Comparison(config, examples, small, large, o["out"], solve, on_question=advance)
            for arm in config.arms:  # answers already stored (a resumed run) count as done
                progress.update(tasks[arm], completed=len(comparison.stored_ids(arm)))
            report = await comparison.run(cache_path)
    if len(report["questions"]) <= _SHOW_ANSWERS:
        console.print(_answers_table(report))
    console.print(render_table(report))
    for line in _verdicts(report):
        console.print(line)
    console.print(f"report: {o['out'] / 'report.json'}, {o['out'] / 'report.md'}, {o['out'] / 'pareto.png'}")
    if (o["out"] / "calibration.jsonl").exists():
        console.print(f"labelled confidences for `agentflow calibrate`: {o['out'] / 'calibration.jsonl'}")


_SHOW_ANSWERS = 12  # a short run also prints every answer


def _answers_table(report: Mapping[str, Any]) -> Table:
    """One row per question: the gold answer and each arm's answer, marked right or wrong, with its model."""
    arms = [a["name"] for a in report["arms"]]
    table = Table(title="answers", show_lines=True)
    table.add_column("question", ratio=3)
    table.add_column("gold", ratio=1)
    for arm in arms:
        table.add_column(arm, ratio=2)
    for q in report["questions"]:
        cells = []
        for arm in arms:
            a = q["arms"].get(arm)
            if a is None:
                cells.append("")
            elif a["error"]:
                cells.append(f"[red]error[/red] {escape(a['error'][:80])}")
            else:
                mark = "[green]✓[/green]" if a["correct"] else "[red]✗[/red]"
                cells.append(f"{mark} {escape(a['answer'][:80])} [dim]({a['model']})[/dim]")
        table.add_row(escape(q["question"]), escape(q["gold"]), *cells)
    return table


def _verdicts(report: Mapping[str, Any]) -> list[str]:
    """A sentence per paired comparison: the exact-match difference with its interval, and the compute ratio."""
    arms = {a["name"]: a for a in report["arms"]}
    lines = []
    for c in report["comparisons"]:
        a, b = arms[c["a"]], arms[c["b"]]
        # The report holds b - a; say it as a - b (adding 0.0 turns -0.0 into 0.0).
        diff, lo, hi = (round(-100 * x, 1) + 0.0 for x in (c["diff"], c["ci95"][1], c["ci95"][0]))
        ratio = f"{a['flops'] / b['flops']:.2f}x" if b["flops"] else "n/a"
        lines.append(
            f"{c['a']} vs {c['b']}: exact match {diff:+.1f} points "
            f"(95% CI {lo:+.1f} to {hi:+.1f} on {c['n']} questions), at {ratio} the FLOPs"
        )
    return lines
