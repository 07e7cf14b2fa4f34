"""The arms of compare send byte-identical requests to the ones they sent before they became rungs.

A response cache is keyed on the exact request (`request_key`), and runs made before the change filled one:
the `large`, `small` and `large-retrieval` arms, and the cascades' rungs that are those arms' calls, must
send the same requests so that their answers still come from it. "Before" is rebuilt here as it was: the
model wrapped so that every call gets the estimator's `prepare` (the logprobs it reads), then
`workflows.solve` on the question.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from agentflow import Budget, ChatRequest, Completion, Model, TokenProb
from agentflow.eval import CompareConfig, Comparison, Example, load_dataset
from agentflow.eval._stores import request_key
from agentflow.testing import FunctionModel, Reply
from workflows import QAState, rung, solve

DATA = Path(__file__).parent / "data"
SMALL, LARGE = "qwen2.5-coder-0.5b", "qwen2.5-coder-1.5b"


class _BeforeRungs:
    """What an arm's model was before the arms became rungs: the estimator's `prepare` on every call."""

    def __init__(self, model: Model, estimator: TokenProb) -> None:
        self._model = model
        self._estimator = estimator

    @property
    def name(self) -> str:
        return self._model.name

    async def complete(self, request: ChatRequest) -> Completion:
        return await self._model.complete(self._estimator.prepare(request))


def _recorder(name: str, prob: float) -> FunctionModel:
    return FunctionModel(lambda req: Reply("Chief of Protocol", prob=prob), name=name)


async def _before(ex: Example, name: str, workflow: str, retrieve_k: int | None, estimator: TokenProb) -> list[str]:
    """The request keys the arm sent for `ex` before: solve() on the wrapped model, in a budget."""
    model = _recorder(name, 0.5)
    budget = Budget(policy="degrade")
    wrapped = budget.wrap(_BeforeRungs(model, estimator))
    await solve(
        workflow, wrapped, question=ex.question, paragraphs=ex.paragraphs, retrieve_k=retrieve_k, budget=budget,
        max_tokens=32,
    )  # fmt: skip
    return [request_key(name, r) for r in model.requests]


async def _now(tmp_path: Path, ex: Example, arm: str, workflow: str, estimator: str) -> dict[str, list[str]]:
    """The request keys each model got from `arm` now, on `ex` alone (a fresh cache: every call is made).
    The small model is unsure (0.5 < 0.8), so a cascade always escalates."""
    models = {SMALL: _recorder(SMALL, 0.5), LARGE: _recorder(LARGE, 0.9)}
    cfg = CompareConfig(
        "hotpotqa", (ex.id,), arms=(arm,), workflow=workflow, threshold=0.8, estimator=estimator,  # type: ignore[arg-type]
        small_model=SMALL, large_model=LARGE,
    )  # fmt: skip
    out = tmp_path / f"{arm}-{workflow}-{estimator.replace(':', '-')}"
    report = await Comparison(cfg, [ex], models[SMALL], models[LARGE], out, rung, QAState).run()
    assert report["arms"][0]["errors"] == 0, report["arms"][0]["first_error"]
    return {name: [request_key(name, r) for r in m.requests] for name, m in models.items()}


def _estimator(name: str) -> TokenProb:
    how, _, variants = name.partition(":")
    return TokenProb(how, variants=bool(variants))  # type: ignore[arg-type]


@pytest.mark.parametrize("estimator", ["mean", "min:variants"])
async def test_the_large_arm_and_the_cascades_large_rung_send_the_requests_they_sent_before(
    tmp_path: Path, estimator: str
) -> None:
    ex = load_dataset(DATA / "hotpotqa_dev.jsonl")[0]
    before = await _before(ex, LARGE, "direct", None, _estimator(estimator))
    assert len(before) == 1
    large = await _now(tmp_path, ex, "large", "direct", estimator)
    assert large[LARGE] == before and large[SMALL] == []
    cascade = await _now(tmp_path, ex, "cascade", "direct", estimator)
    assert cascade[LARGE] == before  # escalated: the large rung's request is the large arm's, to the byte


@pytest.mark.parametrize("workflow", ["direct", "cot", "verify", "decompose"])
@pytest.mark.parametrize("estimator", ["mean", "min:variants"])
async def test_the_small_and_large_retrieval_arms_and_the_rungs_send_the_requests_they_sent_before(
    tmp_path: Path, workflow: str, estimator: str
) -> None:
    ex = load_dataset(DATA / "hotpotqa_dev.jsonl")[0]
    before_small = await _before(ex, SMALL, workflow, 2, _estimator(estimator))
    before_large = await _before(ex, LARGE, workflow, 2, _estimator(estimator))
    assert before_small and before_large
    assert (await _now(tmp_path, ex, "small", workflow, estimator))[SMALL] == before_small
    assert (await _now(tmp_path, ex, "large-retrieval", workflow, estimator))[LARGE] == before_large
    cascade = await _now(tmp_path, ex, "cascade", workflow, estimator)
    assert cascade[SMALL] == before_small  # the cascade's small rung is the small arm
    agent = await _now(tmp_path, ex, "agent", workflow, estimator)
    assert agent[SMALL] == before_small and agent[LARGE] == before_large  # the agent's large rung: large-retrieval


async def test_every_estimator_asks_for_the_default_logprobs(tmp_path: Path) -> None:
    """Estimators that do not read token probabilities still ask for the default's logprobs, so their
    single arms share the cache with a default run."""
    ex = load_dataset(DATA / "hotpotqa_dev.jsonl")[0]
    before = await _before(ex, SMALL, "sc", 2, TokenProb("mean"))
    got: dict[str, Any] = await _now(tmp_path, ex, "small", "sc", "agreement")
    assert got[SMALL] == before
