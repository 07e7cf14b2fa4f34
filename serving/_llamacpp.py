"""A llama.cpp server (from llama-cpp-python) for a GGUF model of the catalog, on a CPU."""

from __future__ import annotations

import asyncio
import importlib.util
import sys
from pathlib import Path

from agentflow import ConfigError, MissingDependencyError, ModelSpec, get_model

from ._model_files import model_path
from ._process import DEFAULT_STARTUP_TIMEOUT_S, HOST, ManagedServer

__all__ = ["LLAMA_CPP_INSTALL", "LlamaCppServer", "llama_cpp_argv", "require_llama_cpp"]

LLAMA_CPP_INSTALL = "pip install 'agentflow[local]'"
_SERVER_MODULES = ("llama_cpp", "uvicorn", "fastapi", "sse_starlette", "pydantic_settings", "starlette_context")


def require_llama_cpp() -> None:
    """MissingDependencyError naming the pip command when llama-cpp-python's server is not importable."""
    missing = [m for m in _SERVER_MODULES if importlib.util.find_spec(m) is None]
    if missing:
        raise MissingDependencyError(f"llama-cpp-python's server (missing {', '.join(missing)})", LLAMA_CPP_INSTALL)


def llama_cpp_argv(
    model_file: Path,
    *,
    alias: str,
    port: int,
    host: str = HOST,
    n_ctx: int = 4096,
    n_threads: int = 2,
    python: str = sys.executable,
    extra_args: tuple[str, ...] = (),
) -> list[str]:
    """The `python -m llama_cpp.server` command line, bound to `host` (127.0.0.1 unless you pass another)."""
    return [
        python, "-m", "llama_cpp.server",
        "--model", str(model_file),
        "--model_alias", alias,
        "--host", host,
        "--port", str(port),
        "--n_threads", str(n_threads),
        "--n_ctx", str(n_ctx),
        *extra_args,
    ]  # fmt: skip


class LlamaCppServer(ManagedServer):
    """`python -m llama_cpp.server` for one catalog model (name, alias or ModelSpec).

    The model file comes from the offline store (`agentflow._store.model_path`) unless `model_file`
    is given. The server answers to the catalog name (`model_name`) and binds 127.0.0.1 unless `host`
    says otherwise.
    """

    def __init__(
        self,
        spec_or_name: ModelSpec | str,
        *,
        port: int | None = None,
        host: str = HOST,
        n_ctx: int = 4096,
        n_threads: int = 2,
        log_dir: Path | None = None,
        model_file: Path | None = None,
        cache_dir: Path | None = None,
        python: str = sys.executable,
        extra_args: tuple[str, ...] = (),
        startup_timeout: float = DEFAULT_STARTUP_TIMEOUT_S,
        stop_grace: float = 10.0,
    ) -> None:
        spec = get_model(spec_or_name) if isinstance(spec_or_name, str) else spec_or_name
        if spec.format != "gguf":
            raise ConfigError(
                f"model {spec.name!r} is {spec.format}, and llama.cpp serves GGUF files only: "
                "serve it with serving.VLLMServer, or pick a GGUF model from `agentflow models`"
            )
        if n_ctx <= 0 or n_threads <= 0:
            raise ConfigError(f"n_ctx and n_threads must be positive (got {n_ctx}, {n_threads})")
        super().__init__(port=port, host=host, log_dir=log_dir, startup_timeout=startup_timeout, stop_grace=stop_grace)
        self.spec = spec
        self.n_ctx = n_ctx
        self.n_threads = n_threads
        self.model_file = model_file
        self.cache_dir = cache_dir
        self.python = python
        self.extra_args = extra_args

    @property
    def model_name(self) -> str:
        return self.spec.name

    async def prepare(self) -> None:
        if self.python == sys.executable:
            require_llama_cpp()
        if self.model_file is None:
            self.model_file = await asyncio.to_thread(model_path, self.spec, cache_dir=self.cache_dir)

    def argv(self) -> list[str]:
        if self.model_file is None:
            raise ConfigError(f"no model file yet for {self.spec.name!r}: call start(), or pass model_file=")
        return llama_cpp_argv(
            self.model_file,
            alias=self.model_name,
            port=self.port,
            host=self.host,
            n_ctx=self.n_ctx,
            n_threads=self.n_threads,
            python=self.python,
            extra_args=self.extra_args,
        )
