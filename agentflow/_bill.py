"""What compute costs: `Spend` (an amount: requests, tokens, FLOPs, dollars) and the `Bill` of a budget scope.

FLOPs are estimated as 2 x active parameters x tokens and dollars from the catalog's prices
(`ModelSpec.flops`, `ModelSpec.cost_usd`); `_budget.Budget` books and charges them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from ._catalog import ModelSpec

__all__ = ["CHECKED", "Bill", "ModelBill", "Spend", "astuple", "spend_for"]


@dataclass(frozen=True, slots=True)
class Spend:
    """An amount of compute: counted requests and tokens, estimated FLOPs and dollars. Adds with `+`."""

    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    flops: float = 0.0
    cost_usd: float = 0.0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def __add__(self, other: Spend) -> Spend:
        return Spend(*(a + b for a, b in zip(astuple(self), astuple(other), strict=True)))

    def __sub__(self, other: Spend) -> Spend:
        return Spend(*(a - b for a, b in zip(astuple(self), astuple(other), strict=True)))

    def scaled(self, n: int) -> Spend:
        return Spend(*(a * n for a in astuple(self)))

    def as_dict(self) -> dict[str, float]:
        return {
            "requests": self.requests,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.total_tokens,
            "flops": self.flops,
            "cost_usd": self.cost_usd,
        }


def astuple(s: Spend) -> tuple[Any, ...]:
    return (s.requests, s.prompt_tokens, s.completion_tokens, s.flops, s.cost_usd)


CHECKED = ("requests", "prompt_tokens", "completion_tokens", "total_tokens", "flops", "cost_usd")


def spend_for(spec: ModelSpec | None, prompt: int, completion: int, requests: int = 1) -> Spend:
    if spec is None:
        return Spend(requests, prompt, completion)
    return Spend(requests, prompt, completion, spec.flops(prompt + completion), spec.cost_usd(prompt, completion))


@dataclass(frozen=True, slots=True)
class ModelBill:
    """What one model cost in a scope. `overshoots` counts calls whose actual usage exceeded their
    reservation (e.g. a server that ignored max_tokens); `failed` counts calls that raised."""

    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    flops: float = 0.0
    cost_usd: float = 0.0
    cached: int = 0
    failed: int = 0
    overshoots: int = 0

    def __add__(self, other: ModelBill) -> ModelBill:
        return ModelBill(*(getattr(self, f.name) + getattr(other, f.name) for f in fields(ModelBill)))

    def to_dict(self) -> dict[str, float]:
        return {f.name: getattr(self, f.name) for f in fields(ModelBill)}


@dataclass(frozen=True)
class Bill:
    """The bill of a budget scope: per-model tokens, requests, FLOPs and dollars; wall time;
    escalations and degradations. JSON-serialisable with `to_dict()`; adds with `+`."""

    models: Mapping[str, ModelBill] = field(default_factory=dict)
    wall_time_s: float = 0.0
    escalations: int = 0
    degradations: tuple[str, ...] = ()

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
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.total_tokens,
            "flops": self.flops,
            "cost_usd": self.cost_usd,
            "wall_time_s": self.wall_time_s,
            "escalations": self.escalations,
            "degradations": list(self.degradations),
            "overshoots": self.overshoots,
            "models": {name: mb.to_dict() for name, mb in sorted(self.models.items())},
        }

    @staticmethod
    def from_dict(data: Mapping[str, Any]) -> Bill:
        models = {name: ModelBill(**m) for name, m in dict(data.get("models", {})).items()}
        return Bill(
            models,
            float(data.get("wall_time_s", 0.0)),
            int(data.get("escalations", 0)),
            tuple(data.get("degradations", ())),
        )
