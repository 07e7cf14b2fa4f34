"""Labelled confidence scores: collected from models, kept as JSONL, and calibrated from a file.

examples = await collect_examples([small, large], TokenProb(), items)   # (request, check) pairs
write_examples("scores.jsonl", examples, models=["small", "large"])
calibrate_file("scores.jsonl", "thresholds.json")                      # what `agentflow calibrate` runs
"""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

from .._calibration import Calibration, ScoredExample, calibrate
from .._confidence import ConfidenceError, ConfidenceState, Estimator
from .._exceptions import DatasetError
from .._types import ChatRequest, Completion, Model
from ._data import read_jsonl

__all__ = ["calibrate_file", "collect_examples", "load_examples", "write_examples"]


async def collect_examples(
    ladder: Sequence[Model],
    estimator: Estimator,
    items: Iterable[tuple[ChatRequest, Callable[[str], bool]]],
    *,
    cost: Callable[[Completion], float] | None = None,
    concurrency: int = 4,
) -> list[ScoredExample]:
    """Ask every rung every question, score each answer with `estimator` and label it with `check(text)`.

    `items` are (request, check) pairs; `cost(completion)` prices an answer (default 1.0 per call).
    An answer the estimator cannot score gets score 0.0, as the router would escalate it.
    """
    sem = asyncio.Semaphore(concurrency)
    todo = list(items)

    async def one(rung: int, model: Model, request: ChatRequest, check: Callable[[str], bool]) -> ScoredExample:
        req = estimator.prepare(request)  # the logprobs the estimator reads, as the router asks for them
        async with sem:
            out = await model.complete(req)
            try:
                score = (await estimator(ConfidenceState(req, out, model))).score
            except ConfidenceError:
                score = 0.0
        return ScoredExample(score, bool(check(out.text)), rung, 1.0 if cost is None else float(cost(out)))

    jobs = [one(i, m, r, c) for i, m in enumerate(ladder) for r, c in todo]
    return list(await asyncio.gather(*jobs))


def write_examples(path: str | Path, examples: Iterable[ScoredExample], *, models: Sequence[str] | None = None) -> None:
    """Write examples as the JSONL that `calibrate_file` reads (rungs as model names when given)."""
    with Path(path).open("w", encoding="utf-8") as f:
        for e in examples:
            rung: int | str = models[e.rung] if models is not None else e.rung
            f.write(json.dumps({"score": e.score, "correct": e.correct, "rung": rung, "cost": e.cost}) + "\n")


def load_examples(path: str | Path, *, models: Sequence[str] | None = None) -> list[ScoredExample]:
    """Read a JSONL of {"score", "correct", "rung"?, "cost"?}; DatasetError names the bad line (and column).

    `rung` is a ladder index or (with `models`) a model name; missing means rung 0."""
    p = Path(path)
    if not p.is_file():
        raise DatasetError("file not found: pass the path of a JSONL file of labelled scores", path=str(p))
    out: list[ScoredExample] = []
    for no, row in read_jsonl(p):

        def bad(msg: str, no: int = no) -> DatasetError:
            return DatasetError(msg, path=str(p), line=no)

        if not isinstance(row, dict):
            raise bad('each line must be a JSON object like {"score": 0.8, "correct": true}')
        score = row.get("score")
        if isinstance(score, bool) or not isinstance(score, int | float) or not 0.0 <= score <= 1.0:
            raise bad(f"'score' must be a number in [0, 1], got {score!r}")
        correct = row.get("correct")
        if correct not in (True, False, 0, 1) or isinstance(correct, float):
            raise bad(f"'correct' must be true or false, got {correct!r}")
        rung_raw = row.get("rung", 0)
        if isinstance(rung_raw, str):
            if models is None or rung_raw not in models:
                raise bad(
                    f"'rung' is the model name {rung_raw!r}: pass the ladder's models (in order) so names can be "
                    f"mapped to rungs{'' if models is None else f'; known: {list(models)}'}, or use rung indices"
                )
            rung = list(models).index(rung_raw)
        elif isinstance(rung_raw, int) and not isinstance(rung_raw, bool) and rung_raw >= 0:
            rung = rung_raw
        else:
            raise bad(f"'rung' must be a non-negative ladder index or a model name, got {rung_raw!r}")
        cost = row.get("cost", 1.0)
        if isinstance(cost, bool) or not isinstance(cost, int | float) or cost < 0 or math.isnan(cost):
            raise bad(f"'cost' must be a non-negative number, got {cost!r}")
        out.append(ScoredExample(float(score), bool(correct), rung, float(cost)))
    if not out:
        raise DatasetError("no examples: the file is empty", path=str(p))
    return out


def calibrate_file(
    path: str | Path,
    out: str | Path | None = None,
    *,
    models: Sequence[str] | None = None,
    n_rungs: int | None = None,
    target_accuracy: float | None = None,
    target_cost: float | None = None,
    confidence: float = 0.95,
    bootstrap: int = 1000,
    seed: int = 0,
) -> Calibration:
    """Calibrate from a JSONL file and write the thresholds JSON to `out` (default:
    `<path stem>.thresholds.json` next to it). The result's `.path` is where they were written.

    Without `models`, the ladder is read from the file's `"ladder"` field when it has one (the
    calibration.jsonl that `agentflow compare` writes does)."""
    if models is None:
        models = _ladder_in(Path(path))
    exs = load_examples(path, models=models)
    cal = calibrate(
        exs,
        models=models,
        n_rungs=n_rungs,
        target_accuracy=target_accuracy,
        target_cost=target_cost,
        confidence=confidence,
        bootstrap=bootstrap,
        seed=seed,
    )
    p = Path(path)
    dest = Path(out) if out is not None else p.with_name(p.stem + ".thresholds.json")
    cal.thresholds.save(dest)
    return Calibration(cal.thresholds, cal.report, dest)


def _ladder_in(path: Path) -> tuple[str, ...] | None:
    """The `"ladder"` of the file's first line (a list of model names), if it has one; bad lines are left
    for `load_examples` to report."""
    try:
        first = next(read_jsonl(path), None)
    except (OSError, DatasetError):
        return None
    ladder = first[1].get("ladder") if first is not None and isinstance(first[1], dict) else None
    if isinstance(ladder, list) and len(ladder) >= 2 and all(isinstance(m, str) for m in ladder):
        return tuple(ladder)
    return None
