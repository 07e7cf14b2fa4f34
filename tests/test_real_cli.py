"""The real `agentflow` command line with the smoke model: `ask --json` and `serve` until interrupted.

Every wait here ends on an event (a line printed, a process exit) and has a generous upper bound
(`HUNG_S`) that only ends a hung test, so a machine busy with other work makes these tests slow, not red.
"""

from __future__ import annotations

import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import IO

import httpx
import pytest
from conftest import pid_gone, real_model_skip_reason

pytestmark = pytest.mark.real_model

ROOT = Path(__file__).resolve().parent.parent
CLI = [sys.executable, "-m", "agentflow.cli"]
HUNG_S = 600.0  # no step takes this long unless it hangs; each wait returns as soon as its event happens


@pytest.fixture(autouse=True)
def _needs_smoke() -> None:
    if (reason := real_model_skip_reason("smoke")) is not None:
        pytest.skip(reason)


def _env(tmp_path: Path) -> dict[str, str]:
    return {**os.environ, "AGENTFLOW_CACHE": str(tmp_path / "cache"), "NO_COLOR": "1"}


def test_ask_json_with_the_smoke_model(tmp_path: Path) -> None:
    out = subprocess.run(
        [*CLI, "ask", "What is 2 + 2?", "--model", "smoke", "--json", "--max-tokens", "16"],
        cwd=ROOT, env=_env(tmp_path), capture_output=True, text=True, timeout=HUNG_S, check=False,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    payload = json.loads(out.stdout)
    assert payload["model"] == "smollm2-135m"
    assert payload["answer"].strip()
    assert 0 < payload["completion_tokens"] <= 16 and payload["prompt_tokens"] > 0
    assert payload["seconds"] > 0 and payload["startup_s"] > 0
    assert (tmp_path / "cache" / "smollm2-135m.verified.json").exists()


class _Lines:
    """The lines a process prints on stdout, read by a thread, so a wait for a line can have an upper bound."""

    def __init__(self, stream: IO[str]) -> None:
        self.seen: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._thread = threading.Thread(target=self._pump, args=(stream,), daemon=True)
        self._thread.start()

    def _pump(self, stream: IO[str]) -> None:
        for line in stream:
            self._queue.put(line)
        self._queue.put(None)

    def until(self, prefix: str, limit: float = HUNG_S) -> bool:
        """Wait for a line starting with `prefix`; False if the stream ends (or `limit` passes) first."""
        deadline = time.monotonic() + limit
        while not any(line.startswith(prefix) for line in self.seen):
            try:
                line = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                return False
            if line is None:
                return False
            self.seen.append(line)
        return True

    def rest(self) -> str:
        """Everything printed, once the stream has ended."""
        self._thread.join(timeout=HUNG_S)
        while not self._queue.empty():
            line = self._queue.get()
            if line is not None:
                self.seen.append(line)
        return "".join(self.seen)


def _ignore_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)


@pytest.mark.parametrize(
    ("sig", "inherit_ignored"),
    [(signal.SIGINT, False), (signal.SIGTERM, False), (signal.SIGINT, True)],
    # the last: started as a script's background job is (SIGINT ignored), and `kill -INT` still stops it
    ids=["SIGINT", "SIGTERM", "SIGINT-ignored-by-parent"],
)
def test_serve_prints_the_url_and_stops_the_server_on_interrupt(
    tmp_path: Path, sig: signal.Signals, inherit_ignored: bool
) -> None:
    stderr_path = tmp_path / "stderr.txt"
    with stderr_path.open("w") as stderr:  # a file, not a pipe: nothing the CLI writes can block it
        proc = subprocess.Popen(
            [*CLI, "serve", "smoke", "--n-ctx", "1024"],
            cwd=ROOT, env=_env(tmp_path), stdout=subprocess.PIPE, stderr=stderr, text=True,
            preexec_fn=_ignore_sigint if inherit_ignored else None,
        )  # fmt: skip
    try:
        assert proc.stdout is not None
        lines = _Lines(proc.stdout)
        started = lines.until("pid ")
        text = "".join(lines.seen)
        assert started, f"no 'pid' line; exit code {proc.poll()}\n{text}{stderr_path.read_text()}"
        url = re.search(r"at (http://127\.0\.0\.1:\d+/v1)", text)
        pid = re.search(r"^pid (\d+)", text, re.M)
        assert url and pid, text
        models = httpx.get(url.group(1) + "/models", trust_env=False, timeout=HUNG_S).json()
        assert [m["id"] for m in models["data"]] == ["smollm2-135m"]
        proc.send_signal(sig)
        assert proc.wait(timeout=HUNG_S) == 0, stderr_path.read_text()
        assert "stopped" in lines.rest().splitlines()[-1]
        assert pid_gone(int(pid.group(1)))  # the CLI stopped its server (and reaped it) before exiting
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _server_children(pid: int) -> list[tuple[int, int]]:
    """(pid, port) of the llama.cpp servers process `pid` started (Linux /proc)."""
    found = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        for child in (task / "children").read_text().split():
            try:
                argv = Path(f"/proc/{child}/cmdline").read_bytes().split(b"\0")
            except FileNotFoundError:
                continue
            if b"llama_cpp.server" in argv and b"--port" in argv:
                found.append((int(child), int(argv[argv.index(b"--port") + 1])))
    return found


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="reads a process's children from Linux's /proc")
def test_sigterm_stops_compare_and_the_servers_it_started_before_it_exits(tmp_path: Path) -> None:
    stderr_path = tmp_path / "stderr.txt"
    args = ["compare", "--rows", "0-49", "--arms", "small", "--small-model", "smoke", "--out", str(tmp_path / "out")]
    with stderr_path.open("w") as stderr:
        proc = subprocess.Popen(
            [*CLI, *args, "--cache", str(tmp_path / "responses.sqlite")],
            cwd=ROOT, env=_env(tmp_path), stdout=subprocess.PIPE, stderr=stderr, text=True,
        )  # fmt: skip
    try:
        assert proc.stdout is not None
        lines = _Lines(proc.stdout)
        assert lines.until("starting local llama.cpp"), lines.rest() + stderr_path.read_text()
        deadline = time.monotonic() + HUNG_S
        servers: list[tuple[int, int]] = []
        while not servers and time.monotonic() < deadline and proc.poll() is None:
            servers = _server_children(proc.pid)
            time.sleep(0.1)
        assert servers, f"no server started; exit code {proc.poll()}\n{stderr_path.read_text()}"
        (server_pid, port), *_ = servers
        while time.monotonic() < deadline:  # until the server answers: the run is under way
            try:
                if httpx.get(f"http://127.0.0.1:{port}/v1/models", trust_env=False, timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=HUNG_S) == 143, stderr_path.read_text()  # not -15: it did not die at once
        assert pid_gone(server_pid)  # stopped and reaped by the CLI before it exited, not left to the kernel
        assert "stopped by SIGTERM" in stderr_path.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
