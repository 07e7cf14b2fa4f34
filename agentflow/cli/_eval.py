"""Commands for graphs and evaluation: `graph`, `calibrate`, `compare` (registered on the app in `agentflow.cli`)."""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from serving import DEFAULT_CACHE_DIR

from .._bill import DEFAULT_ANSWER_TOKENS
from .._catalog import ROLES, get_model
from .._exceptions import ConfigError, ServerUnavailableError
from .._structured import DIALECTS, Dialect
from ._app import cache_dir as _cache_dir
from ._app import one_red_line as _one_red_line
from ._app import run as _run

if TYPE_CHECKING:
    from .._budget import BudgetLimits
    from .._client import ModelClient
    from ..eval._arms import ArmName, Role
    from ..eval._compare import Executor

__all__ = ["CompareOptions", "calibrate", "compare", "graph"]


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


def _parse_row_ranges(text: str) -> list[int]:
    """`--rows`: row numbers and inclusive ranges, low to high ("0-19,250-269") -> [0, ..., 19, 250, ..., 269]."""
    rows: list[int] = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        try:
            a, b = (int(x) for x in part.split("-", 1)) if "-" in part else (int(part), int(part))
        except ValueError:
            raise ConfigError(f"--rows {text!r}: use row numbers and ranges like 0-19,250-269") from None
        if a > b:
            raise ConfigError(f"--rows {text!r}: the range {part} is reversed; write it low to high, {b}-{a}")
        rows.extend(range(a, b + 1))
    return rows


def _parse_arms(text: str) -> tuple[ArmName, ...]:
    from ..eval._arms import ARMS

    by_name: dict[str, ArmName] = {a: a for a in ARMS}
    names = [a.strip() for a in text.split(",") if a.strip()]
    unknown = [a for a in names if a not in by_name]
    if unknown or not names:
        raise ConfigError(f"--arms {text!r}: unknown arms {unknown or '(none)'}: choose from {', '.join(ARMS)}")
    return tuple(by_name[a] for a in names)


def _parse_dialect(text: str) -> Dialect:
    for d in DIALECTS:
        if d == text:
            return d
    raise ConfigError(f"--dialect {text!r}: use one of {', '.join(DIALECTS)}")


@dataclass(frozen=True, slots=True)
class CompareOptions:
    """Every option of `agentflow compare`, typed (the command fills it from its flags)."""

    dataset: str = "hotpotqa"
    limit: int | None = None
    rows: str | None = None
    workflow: str = "direct"
    arms: tuple[ArmName, ...] = ("agent", "cascade", "large")
    retrieve_k: int = 2
    threshold: float | None = None
    thresholds: Path | None = None
    estimator: str = "mean"
    max_tokens: int = DEFAULT_ANSWER_TOKENS
    out: Path = Path("runs/compare")
    small_url: str | None = None
    large_url: str | None = None
    small_model: str = ROLES["small"]
    large_model: str = ROLES["large"]
    dialect: Dialect = "vllm"
    data_dir: Path | None = None
    cache: Path | None = None
    replay: bool = False
    max_flops_per_question: float | None = None
    max_flops_per_run: float | None = None
    max_tokens_per_question: int | None = None
    max_tokens_per_run: int | None = None
    max_seconds_per_question: float | None = None
    max_seconds_per_run: float | None = None
    concurrency: int | None = None  # None: 1 when a local llama.cpp server answers, else URL_CONCURRENCY
    split: str | None = None
    ray: str | None = None  # None: answer here; else the Ray cluster ("auto", "local", HEAD:PORT)


URL_CONCURRENCY = 8
"""Questions at once when every server is given by URL (or none is asked): a vLLM server batches them."""


def _limits(flops: float | None, tokens: int | None, seconds: float | None) -> BudgetLimits | None:
    """The budget limits of the `--max-*-per-question` (or `-per-run`) flags; None when none is set."""
    from .._budget import BudgetLimits

    if flops is None and tokens is None and seconds is None:
        return None
    return BudgetLimits(flops=flops, total_tokens=tokens, wall_time_s=seconds)


def _concurrency(o: CompareOptions, roles: Sequence[Role]) -> int:
    """`--concurrency`, or its default: 1 when a local llama.cpp server answers (it serves one request at a
    time), else URL_CONCURRENCY."""
    if o.concurrency is not None:
        if o.concurrency < 1:
            raise ConfigError(f"--concurrency {o.concurrency}: give 1 or more questions at once")
        return o.concurrency
    urls = {"small": o.small_url, "large": o.large_url}
    local = not o.replay and any(not urls[role] for role in roles)
    return 1 if local else URL_CONCURRENCY


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
            help="the cascades' confidence, read from the small rung's final state: mean, geomean, min, joint "
            "(token probability of the answer; add :variants to count 'Yes' and 'yes' as one answer), agreement "
            "(with --workflow sc), verifier (with --workflow verify: each rung's own model judges its answer), "
            "learned:PATH (a LearnedConfidence saved as JSON)"
        ),
    ] = "mean",
    max_tokens: Annotated[int, typer.Option(help="the length limit of an answer, in tokens")] = DEFAULT_ANSWER_TOKENS,
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
    replay: Annotated[
        bool,
        typer.Option(
            "--replay", help="answer only from the response cache: start and ask no server (a miss fails that question)"
        ),
    ] = False,
    max_flops_per_question: Annotated[
        float | None,
        typer.Option(help="budget: FLOPs one question may spend (the cascade then keeps the small answer)"),
    ] = None,
    max_flops_per_run: Annotated[float | None, typer.Option(help="budget: FLOPs the whole run may spend")] = None,
    max_tokens_per_question: Annotated[
        int | None, typer.Option(help="budget: prompt + completion tokens one question may spend")
    ] = None,
    max_tokens_per_run: Annotated[
        int | None, typer.Option(help="budget: prompt + completion tokens the whole run may spend")
    ] = None,
    max_seconds_per_question: Annotated[
        float | None, typer.Option(help="budget: seconds one question may take (no call starts after)")
    ] = None,
    max_seconds_per_run: Annotated[float | None, typer.Option(help="budget: seconds the whole run may take")] = None,
    concurrency: Annotated[
        int | None,
        typer.Option(
            help="questions answered at once (results are the same as one at a time). Default: 1 when a local "
            f"llama.cpp server answers (it serves one request at a time), {URL_CONCURRENCY} when every server is "
            "given by URL (a vLLM server batches them) or with --replay"
        ),
    ] = None,
    split: Annotated[
        str | None, typer.Option(help="the split these rows are (e.g. tuning, evaluation): the report says it")
    ] = None,
    ray: Annotated[
        str | None,
        typer.Option(
            metavar="ADDRESS",
            help="answer the questions on a Ray cluster this machine is a node of: auto (the running one), local "
            "(start one here), or the head's address (HEAD:6379). Same answers and report; this process writes the "
            "stores. Needs `pip install 'agentflow[ray]'`",
        ),
    ] = None,
) -> None:
    """Agent of small models against the single large model, on the same questions: table, report, pictures.

    Per-question and per-run limits degrade: a cascade that cannot afford its large rung keeps the small
    answer, a question that cannot be afforded is not answered; the report counts both. Exits 1 when a
    server given by URL does not answer (before any question), and when an arm answered no question at all."""
    with _one_red_line():
        options = CompareOptions(
            dataset=dataset,
            limit=limit,
            rows=rows,
            workflow=workflow,
            arms=_parse_arms(arms),
            retrieve_k=retrieve_k,
            threshold=threshold,
            thresholds=thresholds,
            estimator=estimator,
            max_tokens=max_tokens,
            out=out,
            small_url=small_url,
            large_url=large_url,
            small_model=small_model,
            large_model=large_model,
            dialect=_parse_dialect(dialect),
            data_dir=data_dir,
            cache=cache,
            replay=replay,
            max_flops_per_question=max_flops_per_question,
            max_flops_per_run=max_flops_per_run,
            max_tokens_per_question=max_tokens_per_question,
            max_tokens_per_run=max_tokens_per_run,
            max_seconds_per_question=max_seconds_per_question,
            max_seconds_per_run=max_seconds_per_run,
            concurrency=concurrency,
            split=split,
            ray=ray,
        )
    if _run(_compare(options)):
        raise typer.Exit(1)


async def _check_server(url: str, flag: str, model: str, *, timeout_s: float = 10.0) -> None:
    """Fail before the first question when nothing answers at `url` (any HTTP answer counts as alive)."""
    import httpx

    loopback = httpx.URL(url).host in ("127.0.0.1", "localhost", "::1")
    async with httpx.AsyncClient(timeout=httpx.Timeout(timeout_s, connect=5.0), trust_env=not loopback) as http:
        try:
            await http.get(url.rstrip("/") + "/models")
        except httpx.HTTPError as e:
            raise ServerUnavailableError(
                f"nothing answers at {flag} {url} ({type(e).__name__}), so compare stopped before the first "
                f"question: start the {model} server there, fix {flag}, or leave {flag} out and compare starts a "
                "local llama.cpp server for it. To answer only from the response cache, without any server, "
                "pass --replay",
                url=url,
            ) from None


async def _compare(o: CompareOptions) -> bool:
    """Run the comparison and print it; True when some arm answered no question (the command then exits 1)."""
    from workflows import WORKFLOWS, QAState, rung

    from .._client import ModelClient
    from ..eval._arms import estimator_kind, roles_needed
    from ..eval._compare import CompareConfig, Comparison
    from ..eval._data import load_dataset
    from ..eval._report_render import deferral_line, notes, render_table, verdicts

    if o.workflow not in WORKFLOWS:
        raise ConfigError(f"unknown workflow {o.workflow!r}: choose one of {', '.join(WORKFLOWS)}")
    if o.limit is not None and o.rows is not None:
        raise ConfigError("give --limit or --rows, not both")
    if o.replay and (o.small_url or o.large_url):
        raise ConfigError(
            "--replay answers only from the response cache and asks no server: drop --small-url/--large-url, "
            "or drop --replay to ask those servers"
        )
    env_dir = os.environ.get("AGENTFLOW_DATA_DIR")
    data_dir = o.data_dir or (Path(env_dir) if env_dir else None)  # None: the bundled sets
    rows = _parse_row_ranges(o.rows) if o.rows else None
    examples = load_dataset(o.dataset, limit=o.limit, rows=rows, data_dir=data_dir)
    if not examples:
        raise ConfigError(f"no questions selected from {o.dataset!r}: check --limit/--rows")
    names: dict[Role, str] = {"small": get_model(o.small_model).name, "large": get_model(o.large_model).name}
    config = CompareConfig(
        dataset=o.dataset,
        question_ids=tuple(ex.id for ex in examples),
        arms=o.arms,
        workflow=o.workflow,
        retrieve_k=o.retrieve_k,
        threshold=o.threshold,
        thresholds_file=str(o.thresholds) if o.thresholds else None,
        estimator=o.estimator,
        max_tokens=o.max_tokens,
        small_model=names["small"],
        large_model=names["large"],
        split=o.split,
    )
    if o.thresholds is not None:  # a missing or mismatched file is refused before any server starts
        from .._calibration import Thresholds

        Thresholds.load(o.thresholds).for_ladder([names["small"], names["large"]])
    kind, path = estimator_kind(o.estimator)
    if kind == "learned":  # likewise a missing or bad learned confidence
        from .._learned import LearnedConfidence

        LearnedConfidence.load(path)
    question_limits = _limits(o.max_flops_per_question, o.max_tokens_per_question, o.max_seconds_per_question)
    run_limits = _limits(o.max_flops_per_run, o.max_tokens_per_run, o.max_seconds_per_run)
    cache_path = o.cache or (_cache_dir() or DEFAULT_CACHE_DIR.parent) / "responses.sqlite"
    if o.replay and not cache_path.exists():
        raise ConfigError(
            f"--replay answers only from the response cache, and there is none at {cache_path}: "
            "point --cache at one, or drop --replay"
        )
    console = Console(width=None if sys.stdout.isatty() else 150)
    urls: dict[Role, str | None] = {"small": o.small_url, "large": o.large_url}
    roles = roles_needed(config.arms)  # start and check only the servers the chosen arms call
    concurrency = _concurrency(o, roles)
    if o.ray is not None:  # a missing extra or an empty address is refused before any server starts
        from ..eval._ray import check_address, import_ray

        check_address(o.ray)
        import_ray()
    async with AsyncExitStack() as stack:
        clients: dict[Role, ModelClient] = {}
        if o.replay:
            console.print(f"replaying from the response cache {cache_path}: no server is started or asked")
        else:
            for role in roles:
                given = urls[role]
                if given:
                    clients[role] = await stack.enter_async_context(ModelClient(given, names[role], dialect=o.dialect))
                    await _check_server(given, f"--{role}-url", names[role])
            to_start = [role for role in roles if not urls[role]]
            if to_start:
                import serving

                models = [names[role] for role in to_start]
                console.print(f"starting local llama.cpp servers for {', '.join(models)} on 127.0.0.1 ...")
                servers = await stack.enter_async_context(serving.start_servers(models, cache_dir=_cache_dir()))
                for role, server in zip(to_start, servers, strict=True):
                    clients[role] = await stack.enter_async_context(
                        ModelClient(server.url, names[role], dialect="llama_cpp")
                    )
        executor = None if o.ray is None else _ray_executor(o.ray, clients, console, stack)
        with Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=console
        ) as progress:
            # Each bar's clock starts when its arm starts: the time shown is that arm's own.
            tasks: dict[str, TaskID] = {
                arm: progress.add_task(arm, total=len(examples), start=False) for arm in config.arms
            }
            left: dict[str, int] = dict.fromkeys(config.arms, len(examples))

            def arm_started(arm: str) -> None:
                if left[arm]:
                    progress.start_task(tasks[arm])

            def advance(arm: str, _record: object) -> None:
                progress.advance(tasks[arm])

            comparison = Comparison(
                config,
                examples,
                None if executor else clients.get("small"),
                None if executor else clients.get("large"),
                o.out,
                rung,
                QAState,
                question_limits=question_limits,
                run_limits=run_limits,
                cache_only=o.replay,
                concurrency=concurrency,
                rows=rows if rows is not None and len(rows) == len(examples) else range(len(examples)),
                on_arm=arm_started,
                on_question=advance,
                executor=executor,
            )
            for arm in config.arms:  # answers already stored (a resumed run) count as done
                stored = len(comparison.stored_ids(arm))
                left[arm] -= stored
                progress.update(tasks[arm], completed=stored)
            report = await comparison.run(cache_path)
    if len(report["questions"]) <= _SHOW_ANSWERS:
        console.print(_answers_table(report))
    console.print(render_table(report))
    for line in verdicts(report):
        console.print(line)
    for line in notes(report):
        console.print(escape(line), soft_wrap=True)
    deferral = deferral_line(report)
    if deferral is not None:
        console.print(escape(deferral), soft_wrap=True)
    pictures = [o.out / name for name in ("pareto.png", "deferral.png") if (o.out / name).exists()]
    console.print(f"report: {', '.join(str(p) for p in [o.out / 'report.json', o.out / 'report.md', *pictures])}")
    if (o.out / "calibration.jsonl").exists():
        console.print(f"labelled confidences for `agentflow calibrate`: {o.out / 'calibration.jsonl'}")
    failed = [a for a in report["arms"] if a["n"] and a["errors"] == a["n"]]
    if failed:
        which = ", ".join(f"{a['name']} ({a['errors']} of {a['n']} failed)" for a in failed)
        Console(stderr=True, soft_wrap=True).print(
            Text(
                f"error: no successful answer from {which}; the first error of each is printed above. "
                "Fix its cause and run the same command again: failed questions are asked again, answered ones "
                "are kept",
                style="red",
            )
        )
    return bool(failed)


_SHOW_ANSWERS = 12  # a short run also prints every answer


def _ray_executor(
    address: str, clients: Mapping[Role, ModelClient], console: Console, stack: AsyncExitStack
) -> Executor:
    """`--ray`: connect (disconnecting when `stack` closes), and make each model in the workers from its server's
    URL (a local llama.cpp server started here listens on this machine's loopback: a cluster of more than one
    node is refused then)."""
    from functools import partial

    from .._client import ModelClient
    from ..eval._ray import RayExecutor, import_ray

    ray = import_ray()
    if not ray.is_initialized():
        try:
            ray.init(address=address)
        except ConnectionError as e:
            raise ConfigError(
                f"--ray {address}: no Ray cluster answers there ({e}). Start one with `ray start --head` (and "
                "`ray start --address HEAD:6379` on the other machines), fix the address, or use --ray local"
            ) from None
        stack.callback(ray.shutdown)
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    loopback = [c.base_url for c in clients.values() if _is_loopback(c.base_url)]
    if loopback and len(nodes) > 1:
        raise ConfigError(
            f"--ray {address}: the cluster has {len(nodes)} nodes, but {', '.join(loopback)} answers only on this "
            "machine's loopback: give --small-url/--large-url servers every node reaches (e.g. vLLM on a GPU host)"
        )
    console.print(f"answering on Ray ({len(nodes)} node(s), {ray.cluster_resources().get('CPU', 0):g} CPUs)")
    return RayExecutor(
        {role: partial(ModelClient, c.base_url, c.name, dialect=c.dialect) for role, c in clients.items()}
    )


def _is_loopback(url: str) -> bool:
    import httpx

    return httpx.URL(url).host in ("127.0.0.1", "localhost", "::1")


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
