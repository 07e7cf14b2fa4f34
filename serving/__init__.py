"""Serving: start and stop local model servers (llama.cpp on a CPU, vLLM on GPUs) for agentflow.

    async with serving.LlamaCppServer("smoke") as server:
        client = ModelClient(server.url, server.model_name, dialect="llama_cpp")

    async with serving.start_servers(["small", "large"]) as (small, large):
        ...

Every server binds 127.0.0.1 (unless you pass `host=`) on a free port, writes its output to a log
file, and is stopped by its PID (SIGTERM, then SIGKILL) when the block ends or, at the latest, when
the interpreter exits. Start-up waits until the server answers or its process exits; the time limits
are upper bounds for a hung server, so a busy machine makes a start slow, not failed.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from pathlib import Path

from agentflow import ModelSpec, get_model

from ._llamacpp import LLAMA_CPP_INSTALL, LlamaCppServer, llama_cpp_argv, require_llama_cpp
from ._model_files import DEFAULT_CACHE_DIR, ModelStatus, installed_models, model_path
from ._process import DEFAULT_LOG_DIR, DEFAULT_STARTUP_TIMEOUT_S, HOST, ManagedServer, free_port, log_tail
from ._vllm import QUANTIZATIONS, QWEN25_7B_AWQ, QWEN25_72B_AWQ, VLLM_SPECS, VLLMServer, VLLMSpec

__all__ = [
    "DEFAULT_CACHE_DIR",
    "DEFAULT_LOG_DIR",
    "DEFAULT_STARTUP_TIMEOUT_S",
    "HOST",
    "LLAMA_CPP_INSTALL",
    "QUANTIZATIONS",
    "QWEN25_7B_AWQ",
    "QWEN25_72B_AWQ",
    "VLLM_SPECS",
    "LlamaCppServer",
    "ManagedServer",
    "ModelStatus",
    "VLLMServer",
    "VLLMSpec",
    "free_port",
    "installed_models",
    "llama_cpp_argv",
    "log_tail",
    "model_path",
    "require_llama_cpp",
    "server_for",
    "start_servers",
]


def server_for(
    model: ModelSpec | str,
    *,
    port: int | None = None,
    host: str = HOST,
    n_ctx: int = 4096,
    n_threads: int = 2,
    log_dir: Path | None = None,
    cache_dir: Path | None = None,
) -> ManagedServer:
    """The right server for a catalog model: its ready vLLM spec if it has one, else llama.cpp."""
    spec = get_model(model) if isinstance(model, str) else model
    if spec.name in VLLM_SPECS:
        return VLLMServer(VLLM_SPECS[spec.name], port=port, host=host, log_dir=log_dir)
    return LlamaCppServer(
        spec, port=port, host=host, n_ctx=n_ctx, n_threads=n_threads, log_dir=log_dir, cache_dir=cache_dir
    )


@asynccontextmanager
async def start_servers(
    models: Iterable[ManagedServer | ModelSpec | str],
    *,
    n_ctx: int = 4096,
    log_dir: Path | None = None,
    cache_dir: Path | None = None,
) -> AsyncIterator[list[ManagedServer]]:
    """Start one server per model, all at once; yield them in order; stop them all on exit.

    If any fails to start, the ones that did start are stopped and the first error is raised.
    """
    servers = [
        m if isinstance(m, ManagedServer) else server_for(m, n_ctx=n_ctx, log_dir=log_dir, cache_dir=cache_dir)
        for m in models
    ]
    results = await asyncio.gather(*(s.start() for s in servers), return_exceptions=True)
    try:
        for r in results:
            if isinstance(r, BaseException):
                raise r
        yield servers
    finally:
        await asyncio.gather(*(s.stop() for s in servers), return_exceptions=True)
