"""What compute costs: `Spend` (an amount: requests, tokens, FLOPs, dollars) and the `Bill` of a budget scope.

This is the one account of what a call cost. `spend_for` is the only place where tokens become FLOPs
(2 x active parameters x tokens, `ModelSpec.flops`) and dollars (`ModelSpec.cost_usd`); `_budget.Budget`
books every call through it into a `Bill`, and the evaluation report builds its per-question and per-arm
figures from those bills, so a number in a report and the same number in a bill cannot disagree.

FLOPs count what was computed: the completion tokens (decode) and the prompt tokens the server did not take
from its prefix cache (prefill). Cached prompt tokens (`Usage.cached_prompt_tokens`, as the server reports
them) are counted apart and cost no FLOPs; a server that reports none (llama-cpp-python's) has its prompts
counted in full, even when it reused the previous request's prompt. Dollars count every prompt token at the
catalog's price (it has no price for cached tokens).

A call answered from a response cache costs nothing now; its bill counts it in `cached` and keeps what it
cost when it was made in `from_cache` (`original_usage` reads that from the completion).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from ._catalog import ModelSpec
from ._energy import EnergyReading, energy_for

# DEFAULT_ANSWER_TOKENS is defined in _types (exported as agentflow.DEFAULT_ANSWER_TOKENS); it is re-exported
# here only until eval/_compare.py, cli/_eval.py and their tests import it from there: then drop it.
from ._types import DEFAULT_ANSWER_TOKENS as DEFAULT_ANSWER_TOKENS
from ._types import Completion, Usage

__all__ = [
    "CHECKED",
    "ORIGINAL_USAGE",
    "Bill",
    "ModelBill",
    "Spend",
    "astuple",
    "cache_hit_bill",
    "original_usage",
    "spend_for",
    "usage_spend",
]

ORIGINAL_USAGE = "original_usage"
"""The Completion.meta key where a response cache keeps what a cached answer cost when it was made."""


def original_usage(completion: Completion) -> Usage:
    """What a completion cost when it was made (for a cache hit, the usage of the original call)."""
    orig = completion.meta.get(ORIGINAL_USAGE)
    return orig if isinstance(orig, Usage) else completion.usage


@dataclass(frozen=True, slots=True)
class Spend:
    """An amount of compute: counted requests and tokens, estimated FLOPs and dollars. Adds with `+`.

    `cached_prompt_tokens` is the part of `prompt_tokens` served from a server's prefix cache (no FLOPs)."""

    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    flops: float = 0.0
    cost_usd: float = 0.0
    cached_prompt_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def __add__(self, other: Spend) -> Spend:
        return Spend(*(a + b for a, b in zip(_amounts(self), _amounts(other), strict=True)))

    def __sub__(self, other: Spend) -> Spend:
        return Spend(*(a - b for a, b in zip(_amounts(self), _amounts(other), strict=True)))

    def scaled(self, n: int) -> Spend:
        return Spend(*(a * n for a in _amounts(self)))

    def as_dict(self) -> dict[str, float]:
        return {
            "requests": self.requests,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.total_tokens,
            "flops": self.flops,
            "cost_usd": self.cost_usd,
            "cached_prompt_tokens": self.cached_prompt_tokens,
        }

    @staticmethod
    def from_dict(data: Mapping[str, Any]) -> Spend:
        """The inverse of `as_dict` (`total_tokens` is derived, so it is not read; amounts written before
        cached prompt tokens were counted read as none)."""
        return Spend(
            int(data.get("requests", 0)),
            int(data.get("prompt_tokens", 0)),
            int(data.get("completion_tokens", 0)),
            float(data.get("flops", 0.0)),
            float(data.get("cost_usd", 0.0)),
            int(data.get("cached_prompt_tokens", 0)),
        )

    def usage(self) -> Usage:
        """The counted part of this amount (requests and tokens)."""
        return Usage(self.requests, self.prompt_tokens, self.completion_tokens, self.cached_prompt_tokens)


def astuple(s: Spend) -> tuple[int, int, int, float, float, int]:
    """Every amount of `s`, in field order: also the first fields of a `ModelBill` (`ModelBill(*astuple(s))`)."""
    return (s.requests, s.prompt_tokens, s.completion_tokens, s.flops, s.cost_usd, s.cached_prompt_tokens)


def _amounts(s: Spend) -> tuple[Any, ...]:
    return astuple(s)


CHECKED = ("requests", "prompt_tokens", "completion_tokens", "total_tokens", "flops", "cost_usd")


def spend_for(spec: ModelSpec | None, prompt: int, completion: int, requests: int = 1, cached_prompt: int = 0) -> Spend:
    """What `requests` calls with these token counts cost on `spec`: the one place tokens become FLOPs and
    dollars. `cached_prompt` of the `prompt` tokens came from the server's prefix cache: they cost no FLOPs
    (nothing was computed for them), and are kept apart. A model missing from the catalog (`spec=None`) is
    counted in requests and tokens only."""
    cached = max(0, min(cached_prompt, prompt))
    if spec is None:
        return Spend(requests, prompt, completion, cached_prompt_tokens=cached)
    flops = spec.flops(prompt - cached + completion)
    return Spend(requests, prompt, completion, flops, spec.cost_usd(prompt, completion), cached)


def usage_spend(spec: ModelSpec | None, usage: Usage, requests: int | None = None) -> Spend:
    """`spend_for` of a Usage (its requests unless `requests` is given), cached prompt tokens included."""
    n = usage.requests if requests is None else requests
    return spend_for(spec, usage.prompt_tokens, usage.completion_tokens, n, usage.cached_prompt_tokens)


@dataclass(frozen=True, slots=True)
class ModelBill:
    """What one model cost in a scope. `overshoots` counts calls whose actual usage exceeded their
    reservation (e.g. a server that ignored max_tokens); `failed` counts calls that raised.
    `cached_prompt_tokens` is the part of `prompt_tokens` the server took from its prefix cache (not in
    `flops`).

    `cached` counts calls answered from a response cache: they cost nothing now and are not in `requests`
    or the tokens; `from_cache` is what they cost when they were made (what this scope would have spent
    without the cache is the sum of both, `with_cache()`)."""

    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    flops: float = 0.0
    cost_usd: float = 0.0
    cached_prompt_tokens: int = 0  # sixth, as in Spend: `ModelBill(*astuple(spend))` is that spend's bill
    cached: int = 0
    failed: int = 0
    overshoots: int = 0
    from_cache: Spend = field(default_factory=Spend)

    def __add__(self, other: ModelBill) -> ModelBill:
        return ModelBill(*(getattr(self, f.name) + getattr(other, f.name) for f in fields(ModelBill)))

    @property
    def spent(self) -> Spend:
        """What was spent now (cache hits excluded)."""
        return Spend(*(getattr(self, f.name) for f in fields(Spend)))

    def with_cache(self) -> Spend:
        """What these calls cost, counting cache hits at their original cost ("would have cost")."""
        return self.spent + self.from_cache

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {f.name: getattr(self, f.name) for f in fields(ModelBill) if f.name != "from_cache"}
        out["from_cache"] = self.from_cache.as_dict()
        return out

    @staticmethod
    def from_dict(data: Mapping[str, Any]) -> ModelBill:
        known = {f.name for f in fields(ModelBill)} - {"from_cache"}
        return ModelBill(
            **{k: v for k, v in data.items() if k in known},
            from_cache=Spend.from_dict(data.get("from_cache") or {}),
        )


def cache_hit_bill(spec: ModelSpec | None, completion: Completion) -> ModelBill:
    """The bill of one call answered from a response cache: nothing spent now, its original cost kept."""
    orig = original_usage(completion)
    return ModelBill(cached=1, from_cache=usage_spend(spec, orig, max(1, orig.requests)))


@dataclass(frozen=True)
class Bill:
    """The bill of a budget scope: per-model tokens, requests, FLOPs and dollars; wall time;
    escalations and degradations; energy (measured when a meter read it, else estimated from the FLOPs
    and wall time, and labelled so). JSON-serialisable with `to_dict()`; adds with `+`."""

    models: Mapping[str, ModelBill] = field(default_factory=dict)
    wall_time_s: float = 0.0
    escalations: int = 0
    degradations: tuple[str, ...] = ()
    energy: EnergyReading | None = None  # None: estimated from this bill's FLOPs and wall time
    escalation_routes: Mapping[str, int] = field(default_factory=dict)  # "from -> to": how many

    @property
    def energy_reading(self) -> EnergyReading:
        """What this bill's work used: the metered reading, or an estimate that says how it was made."""
        return self.energy if self.energy is not None else energy_for(self.wall_time_s, self.flops)

    @property
    def energy_j(self) -> float:
        return self.energy_reading.joules

    def _sum(self, name: str) -> Any:
        return sum(getattr(m, name) for m in self.models.values())

    @property
    def requests(self) -> int:
        return int(self._sum("requests"))

    @property
    def prompt_tokens(self) -> int:
        return int(self._sum("prompt_tokens"))

    @property
    def completion_tokens(self) -> int:
        return int(self._sum("completion_tokens"))

    @property
    def cached_prompt_tokens(self) -> int:
        """The part of `prompt_tokens` servers took from their prefix caches (computed before: no FLOPs)."""
        return int(self._sum("cached_prompt_tokens"))

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    @property
    def flops(self) -> float:
        return float(self._sum("flops"))

    @property
    def cost_usd(self) -> float:
        return float(self._sum("cost_usd"))

    @property
    def overshoots(self) -> int:
        return int(self._sum("overshoots"))

    def __add__(self, other: Bill) -> Bill:
        models = dict(self.models)
        for name, mb in other.models.items():
            models[name] = models[name] + mb if name in models else mb
        return Bill(
            models,
            self.wall_time_s + other.wall_time_s,
            self.escalations + other.escalations,
            self.degradations + other.degradations,
            None if self.energy is None and other.energy is None else self.energy_reading + other.energy_reading,
            {
                route: self.escalation_routes.get(route, 0) + other.escalation_routes.get(route, 0)
                for route in {**self.escalation_routes, **other.escalation_routes}
            },
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.total_tokens,
            "cached_prompt_tokens": self.cached_prompt_tokens,
            "flops": self.flops,
            "cost_usd": self.cost_usd,
            "wall_time_s": self.wall_time_s,
            "escalations": self.escalations,
            "escalation_routes": dict(sorted(self.escalation_routes.items())),
            "degradations": list(self.degradations),
            "overshoots": self.overshoots,
            "energy_j": self.energy_j,
            "energy": self.energy_reading.to_dict(),
            "models": {name: mb.to_dict() for name, mb in sorted(self.models.items())},
        }

    @staticmethod
    def from_dict(data: Mapping[str, Any]) -> Bill:
        models = {name: ModelBill.from_dict(m) for name, m in dict(data.get("models", {})).items()}
        return Bill(
            models,
            float(data.get("wall_time_s", 0.0)),
            int(data.get("escalations", 0)),
            tuple(data.get("degradations", ())),
            EnergyReading.from_dict(data["energy"]) if data.get("energy", {}).get("measured") else None,
            {str(k): int(v) for k, v in dict(data.get("escalation_routes", {})).items()},
        )
