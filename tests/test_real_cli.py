"""The real `agentflow` command line with the smoke model: `ask --json` and `serve` until interrupted."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from conftest import pid_gone, real_model_skip_reason

pytestmark = pytest.mark.real_model

ROOT = Path(__file__).resolve().parent.parent
CLI = [sys.executable, "-m", "agentflow.cli"]


@pytest.fixture(autouse=True)
def _needs_smoke() -> None:
    if (reason := real_model_skip_reason("smoke")) is not None:
        pytest.skip(reason)


def _env(tmp_path: Path) -> dict[str, str]:
    return {**os.environ, "AGENTFLOW_CACHE": str(tmp_path / "cache"), "NO_COLOR": "1"}


def test_ask_json_with_the_smoke_model(tmp_path: Path) -> None:
    out = subprocess.run(
        [*CLI, "ask", "What is 2 + 2?", "--model", "smoke", "--json", "--max-tokens", "16"],
        cwd=ROOT, env=_env(tmp_path), capture_output=True, text=True, timeout=180, check=False,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    payload = json.loads(out.stdout)
    assert payload["model"] == "smollm2-135m"
    assert payload["answer"].strip()
    assert 0 < payload["completion_tokens"] <= 16 and payload["prompt_tokens"] > 0
    assert payload["seconds"] > 0 and payload["startup_s"] > 0
    assert (tmp_path / "cache" / "smollm2-135m.verified.json").exists()


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_serve_prints_the_url_and_stops_the_server_on_interrupt(tmp_path: Path, sig: signal.Signals) -> None:
    proc = subprocess.Popen(
        [*CLI, "serve", "smoke", "--n-ctx", "1024"],
        cwd=ROOT, env=_env(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        lines: list[str] = []
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not any(line.startswith("pid ") for line in lines):
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
        text = "".join(lines)
        url = re.search(r"at (http://127\.0\.0\.1:\d+/v1)", text)
        pid = re.search(r"pid (\d+)", text)
        assert url and pid, text + (proc.stderr.read() if proc.stderr and proc.poll() is not None else "")
        ids = [m["id"] for m in httpx.get(url.group(1) + "/models", trust_env=False).json()["data"]]
        assert ids == ["smollm2-135m"]
        proc.send_signal(sig)
        assert proc.wait(timeout=30) == 0
        assert pid_gone(int(pid.group(1)))
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
