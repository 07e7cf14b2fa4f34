"""vLLM launch specs: command-line rendering, validation, catalog entries, and the shared launcher."""

from __future__ import annotations

from pathlib import Path

import pytest

import serving
from agentflow._catalog import get_model
from agentflow._exceptions import ConfigError, MissingDependencyError
from serving import QWEN25_7B_AWQ, QWEN25_72B_AWQ, VLLMServer, VLLMSpec


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
        "--enable-prefix-caching",
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
