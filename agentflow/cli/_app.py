"""The `agentflow` application: the Typer app, the one sync entry into async code, and the error rule.

The environment is read here and only here: AGENTFLOW_CACHE overrides the model cache directory.
Errors from agentflow print one red line and exit with code 1. Commands are registered with
`Command` (in `agentflow.cli`), so that `--help` shows flags as plain flags.
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Coroutine, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.text import Text
from typer._click import Context, Parameter
from typer.core import TyperCommand, TyperGroup, TyperOption

from .._exceptions import AgentFlowError

__all__ = ["Command", "app", "cache_dir", "main", "one_red_line", "run"]

T = TypeVar("T")


def _plain_flags(params: list[Parameter]) -> list[Parameter]:
    """Flags (`--json`, `--dry-run`, `--version`, `--help`) take no value, so their help shows no `<bool>`.

    Typer's rich help prints a type placeholder for every option, flags included; an empty metavar
    leaves the type column of a flag blank. Options that take a value keep their `<int>`, `<str>`.
    """
    for param in params:
        if isinstance(param, TyperOption) and param.is_flag and param.metavar is None:
            param.metavar = ""
    return params


class Command(TyperCommand):
    """A command whose `--help` shows flags as plain flags (register commands with `cls=Command`)."""

    def get_params(self, ctx: Context) -> list[Parameter]:
        return _plain_flags(super().get_params(ctx))


class _Group(TyperGroup):
    def get_params(self, ctx: Context) -> list[Parameter]:
        return _plain_flags(super().get_params(ctx))


app = typer.Typer(
    name="agentflow",
    help="Large-model answers from small models: serve local models, ask them, run workflows.",
    cls=_Group,
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _print_version(value: bool) -> None:
    if value:
        from .. import __version__

        typer.echo(f"agentflow {__version__}")
        raise typer.Exit()


@app.callback()
def _options(
    version: Annotated[
        bool, typer.Option("--version", callback=_print_version, is_eager=True, help="print the version and exit")
    ] = False,
) -> None:
    """Large-model answers from small models: serve local models, ask them, run workflows."""


def cache_dir() -> Path | None:
    value = os.environ.get("AGENTFLOW_CACHE")
    return Path(value).expanduser() if value else None


@contextmanager
def one_red_line() -> Iterator[None]:
    """An AgentFlowError becomes one red line on stderr and exit code 1, with no traceback."""
    try:
        yield
    except AgentFlowError as exc:
        Console(stderr=True, soft_wrap=True).print(Text(f"error: {exc}", style="red"))
        raise typer.Exit(1) from None


def run(coro: Coroutine[Any, Any, T]) -> T:
    """The one sync entry into async code, for each command.

    SIGTERM (`kill PID`) cancels the command as Ctrl-C does, so that the servers it started are stopped by
    their PIDs and what it stored is closed before it exits (code 143, naming the way to resume), instead
    of Python dying at once and leaving its servers to the kernel's parent-death signal.
    """
    terminated = False

    async def main() -> T:
        task = asyncio.current_task()

        def on_sigterm() -> None:
            nonlocal terminated
            terminated = True
            if task is not None:
                task.cancel()

        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, on_sigterm)
        return await coro

    with one_red_line():
        try:
            return asyncio.run(main())
        except asyncio.CancelledError:
            if not terminated:
                raise
            Console(stderr=True, soft_wrap=True).print(
                "stopped by SIGTERM: the servers it started are stopped and what it stored is kept (compare resumes)",
                style="yellow",
            )
            raise typer.Exit(128 + signal.SIGTERM) from None


def main() -> None:
    """Console-script entry point (`agentflow = agentflow.cli:main`)."""
    app()
