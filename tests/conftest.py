"""Shared fixtures.

Real model servers (session-scoped, started once and stopped at the end of the run):
    smoke_server   llama.cpp + SmolLM2-135M  (needs `pip install 'agentflow[local,smoke-model]'`)
    small_server   llama.cpp + Qwen2.5-Coder-0.5B (needs 'agentflow[local,small-model]')
    large_server   llama.cpp + Qwen2.5-Coder-1.5B (needs 'agentflow[local,large-model]')
and `smoke_client` / `small_client` / `large_client`: a ModelClient on each (function-scoped).
Each skips, saying what to install, when llama-cpp-python or the model packages are missing.

For launcher tests without a model: `fake_python` is an executable that stands in for the Python
interpreter a server is started with; it serves GET /v1/models and POST /v1/chat/completions on
the --port it is given, under the --model_alias / --served-model-name it is given, and prints each
request body to its log as a line `request {json}`. The environment
variable FAKE_SERVER_MODE changes what it does: ok (default), die, slow (never answers in time),
late (answers after 3 s), ignore_term.

Real servers are waited for by event (health answered, process exited), with generous upper bounds
that only end a hung test: a busy machine makes these tests slow, not red.
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import stat
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any, Literal

import pytest

import serving
from agentflow._catalog import ROLES, get_model
from serving._model_files import find_in_site_packages

Role = Literal["smoke", "small", "large"]
_LLAMA_MODULES = ("llama_cpp", "uvicorn", "fastapi", "sse_starlette", "pydantic_settings", "starlette_context")


def real_model_skip_reason(role: Role) -> str | None:
    """Why the real `role` model cannot be served here (with how to enable it), or None when it can."""
    missing = [m for m in _LLAMA_MODULES if importlib.util.find_spec(m) is None]
    if missing:
        return (
            f"llama-cpp-python's server is not installed (missing {', '.join(missing)}): "
            "run `pip install 'agentflow[local]'` (in a clone: `.venv/bin/pip install -e '.[local]'`; "
            "compiles llama.cpp, ~8 min) to run the real_model tests"
        )
    spec = get_model(ROLES[role])
    assert spec.pypi is not None
    if any(find_in_site_packages(f) is None for f in spec.pypi.files):
        return (
            f"model {spec.name!r} is not installed: run `{spec.pypi.install}` "
            f"(in a clone: `.venv/bin/pip install -e '.[{spec.pypi.extra}]'`) to run this test"
        )
    return None


def _real_server(role: Role, tmp_path_factory: pytest.TempPathFactory) -> Iterator[serving.LlamaCppServer]:
    reason = real_model_skip_reason(role)
    if reason is not None:
        pytest.skip(reason)
    server = serving.LlamaCppServer(ROLES[role], log_dir=tmp_path_factory.mktemp(f"{role}-logs"))
    asyncio.run(server.start())
    try:
        yield server
    finally:
        asyncio.run(server.stop())


@pytest.fixture(scope="session")
def smoke_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[serving.LlamaCppServer]:
    """A real llama.cpp server with SmolLM2-135M for the whole session (.url, .model_name, .pid)."""
    yield from _real_server("smoke", tmp_path_factory)


@pytest.fixture(scope="session")
def small_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[serving.LlamaCppServer]:
    yield from _real_server("small", tmp_path_factory)


@pytest.fixture(scope="session")
def large_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[serving.LlamaCppServer]:
    yield from _real_server("large", tmp_path_factory)


async def _client_for(server: serving.LlamaCppServer) -> AsyncIterator[Any]:
    from agentflow._client import ModelClient

    # A busy 2-core machine can take minutes for one long answer: the timeout only ends a hung server.
    async with ModelClient(server.url, server.model_name, dialect="llama_cpp", timeout=900) as client:
        yield client


@pytest.fixture
async def smoke_client(smoke_server: serving.LlamaCppServer) -> AsyncIterator[Any]:
    """A ModelClient on the session's SmolLM2 server."""
    async for client in _client_for(smoke_server):
        yield client


@pytest.fixture
async def small_client(small_server: serving.LlamaCppServer) -> AsyncIterator[Any]:
    async for client in _client_for(small_server):
        yield client


@pytest.fixture
async def large_client(large_server: serving.LlamaCppServer) -> AsyncIterator[Any]:
    async for client in _client_for(large_server):
        yield client


# --- a stand-in server process for launcher tests ------------------------------------------------

_FAKE_SERVER = """
import json, os, signal, sys, time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

args = sys.argv[1:]
def opt(*names):
    for n in names:
        if n in args:
            return args[args.index(n) + 1]
    return None

mode = os.environ.get("FAKE_SERVER_MODE", "ok")
port = int(opt("--port"))
name = opt("--model_alias", "--served-model-name")
print(f"fake server for {name} on port {port}, argv {args}", flush=True)
if mode == "die":
    print("llama_load_model_from_file: failed to load model", flush=True)
    sys.exit(3)
if mode == "slow":
    time.sleep(60)
if mode == "late":
    time.sleep(3)
    print("listening late", flush=True)
if mode == "ignore_term":
    signal.signal(signal.SIGTERM, signal.SIG_IGN)

class Handler(BaseHTTPRequestHandler):
    def _send(self, code, payload):
        body = json.dumps(payload).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        if self.path == "/v1/models":
            owner = os.environ.get("VLLM_CPU_KVCACHE_SPACE", "fake")
            self._send(200, {"object": "list", "data": [{"id": name, "object": "model", "owned_by": owner}]})
        else:
            self._send(404, {"error": {"message": "not found"}})

    def do_POST(self):
        request = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        print("request " + json.dumps(request), flush=True)  # to the log, for tests of what was sent
        if self.path != "/v1/chat/completions":
            return self._send(404, {"error": {"message": "not found"}})
        question = request["messages"][-1]["content"]
        self._send(200, {
            "id": "chatcmpl-1", "object": "chat.completion", "created": 0, "model": name,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "fake answer to " + question},
                         "finish_reason": "stop", "logprobs": None}],
            "usage": {"prompt_tokens": 5, "completion_tokens": 4, "total_tokens": 9},
        })

    def log_message(self, *a):
        pass

ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever()
"""


@pytest.fixture(scope="session")
def fake_python(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An executable to pass as `python=`: it ignores `-m module` and serves a fake OpenAI API."""
    path = tmp_path_factory.mktemp("fake") / "fake_python"
    path.write_text(f"#!{sys.executable}\n{_FAKE_SERVER}")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


@pytest.fixture
def fake_model_file(tmp_path: Path) -> Path:
    path = tmp_path / "fake.gguf"
    path.write_bytes(b"GGUF fake")
    return path


def pid_gone(pid: int) -> bool:
    """True when no process has this PID (ours were reaped by the launcher)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False
