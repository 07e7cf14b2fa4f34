from __future__ import annotations

import itertools
import json
import math
import random
from collections.abc import Sequence
from pathlib import Path

import pytest

from agentflow._calibration import (
    DEFAULT_THRESHOLD,
    ScoredExample,
    Thresholds,
    _cascade,
    _Rung,
    calibrate,
)
from agentflow._confidence import TokenProb
from agentflow._exceptions import ConfigError, DatasetError
from agentflow._intervals import bootstrap_intervals, wilson_interval
from agentflow._types import ChatRequest, Completion, Usage
from agentflow.eval._calibration_data import calibrate_file, collect_examples, load_examples, write_examples
from agentflow.testing import Reply, ScriptedModel


def synthetic(n: int, seed: int, rung: int = 0, cost: float = 1.0) -> list[ScoredExample]:
    """Scores uniform in [0, 1]; an answer with score s is right with probability s.

    The accuracy of the answers accepted at threshold t is E[s | s >= t] = (1 + t) / 2, so the least
    threshold reaching accuracy a is t* = 2a - 1.
    """
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        s = rng.random()
        out.append(ScoredExample(s, rng.random() < s, rung, cost))
    return out


def test_target_accuracy_finds_the_known_best_threshold() -> None:
    cal = calibrate(synthetic(20_000, seed=1), target_accuracy=0.9, bootstrap=0)
    [t] = cal.thresholds.values
    assert t == pytest.approx(0.8, abs=0.02)
    [r] = cal.report.rungs
    assert r.accepted_accuracy is not None and r.accepted_accuracy.value >= 0.9
    assert r.escalation_rate.value == pytest.approx(0.8, abs=0.02)
    assert r.escalation_rate.low < r.escalation_rate.value < r.escalation_rate.high


def test_target_accuracy_with_a_clean_cut() -> None:
    # right exactly when score >= 0.6: at target 1.0 the threshold is the least score >= 0.6
    rng = random.Random(3)
    scores = [rng.random() for _ in range(500)]
    exs = [ScoredExample(s, s >= 0.6) for s in scores]
    cal = calibrate(exs, target_accuracy=1.0, bootstrap=0)
    assert cal.thresholds.values == (min(s for s in scores if s >= 0.6),)


def test_unreachable_target_always_escalates() -> None:
    exs = [ScoredExample(0.9, False), ScoredExample(0.5, False), ScoredExample(0.2, True)]
    cal = calibrate(exs, target_accuracy=0.99, bootstrap=0)
    assert cal.thresholds.values == (math.inf,)
    assert cal.report.rungs[0].escalation_rate.value == 1.0
    assert cal.thresholds.to_dict()["thresholds"] == [None]


def test_target_cost_maximises_accuracy_under_the_cap() -> None:
    small = synthetic(400, seed=2, rung=0, cost=1.0)
    top = [ScoredExample(0.5, i % 10 != 0, 1, 10.0) for i in range(200)]  # 90% right, 10x the cost
    target = 5.0
    cal = calibrate(small + top, target_cost=target, bootstrap=200, seed=7)
    [t] = cal.thresholds.values
    rungs = [
        _Rung(tuple(e.score for e in small), tuple(e.correct for e in small), 1.0),
        _Rung(tuple(e.score for e in top), tuple(e.correct for e in top), 10.0),
    ]
    acc, cost = _cascade(rungs, [t])
    assert cost <= target
    # brute force: no candidate threshold is more accurate within the cost cap
    for cand in [*sorted({e.score for e in small}), math.inf]:
        a2, c2 = _cascade(rungs, [cand])
        if c2 <= target:
            assert a2 <= acc + 1e-12
    rep = cal.report
    assert rep.expected_accuracy is not None and rep.expected_cost is not None
    assert rep.expected_accuracy.value == pytest.approx(acc)
    assert rep.expected_accuracy.low <= acc <= rep.expected_accuracy.high
    assert rep.expected_cost.value == pytest.approx(cost)


def test_three_rung_cost_mode_beats_every_pair_of_candidates() -> None:
    a = synthetic(60, seed=4, rung=0, cost=1.0)
    b = [ScoredExample(e.score, e.correct, 1, 3.0) for e in synthetic(60, seed=5)]
    c = [ScoredExample(0.5, i % 5 != 0, 2, 9.0) for i in range(50)]
    cal = calibrate(a + b + c, target_cost=4.0, bootstrap=0)
    rungs = [_Rung(tuple(e.score for e in g), tuple(e.correct for e in g), g[0].cost) for g in (a, b, c)]
    acc, cost = _cascade(rungs, list(cal.thresholds.values))
    assert cost <= 4.0
    best = max(
        _cascade(rungs, [x, y])[0]
        for x, y in itertools.product(rungs[0].candidates(), rungs[1].candidates())
        if _cascade(rungs, [x, y])[1] <= 4.0
    )
    assert acc >= best - 0.02  # coordinate search gets (close to) the exhaustive optimum


def test_bootstrap_is_seeded_and_report_serialises() -> None:
    exs = synthetic(300, seed=8) + [ScoredExample(0.5, i % 4 != 0, 1) for i in range(100)]
    one = calibrate(exs, target_accuracy=0.85, seed=11, bootstrap=300)
    two = calibrate(exs, target_accuracy=0.85, seed=11, bootstrap=300)
    three = calibrate(exs, target_accuracy=0.85, seed=12, bootstrap=300)
    assert one.report == two.report
    assert one.report.expected_accuracy != three.report.expected_accuracy
    d = json.loads(json.dumps(one.report.to_dict()))
    assert d["target"] == {"accuracy": 0.85} and d["rungs"][0]["threshold"] == one.thresholds.values[0]


def test_wilson_interval_known_values() -> None:
    iv = wilson_interval(8, 10)
    assert iv.value == 0.8
    assert iv.low == pytest.approx(0.4902, abs=1e-4) and iv.high == pytest.approx(0.9433, abs=1e-4)
    assert wilson_interval(0, 0).low == 0.0
    with pytest.raises(ConfigError, match="confidence must be between 0 and 1"):
        wilson_interval(1, 2, confidence=95)


def test_the_cascade_intervals_come_from_the_core_bootstrap() -> None:
    exs = synthetic(200, seed=4) + [ScoredExample(0.5, i % 3 != 0, 1, cost=4.0) for i in range(60)]
    cal = calibrate(exs, target_accuracy=0.8, seed=5, bootstrap=120)
    rungs = [[e for e in exs if e.rung == i] for i in range(2)]

    def cascade(by_rung: Sequence[Sequence[ScoredExample]]) -> tuple[float, float]:
        built = [_Rung([e.score for e in g], [e.correct for e in g], sum(e.cost for e in g) / len(g)) for g in by_rung]
        return _cascade(built, cal.thresholds.values)

    acc, cost = bootstrap_intervals(rungs, cascade, resamples=120, seed=5)
    assert (cal.report.expected_accuracy, cal.report.expected_cost) == (acc, cost)
    assert acc.low <= acc.value <= acc.high and cost.low < cost.value < cost.high
    with pytest.raises(ConfigError, match=r"resamples .* must be >= 0, got -1"):
        calibrate(exs, bootstrap=-1)


def test_calibrate_bad_arguments() -> None:
    exs = [ScoredExample(0.5, True)]
    with pytest.raises(ConfigError, match="not both"):
        calibrate(exs, target_accuracy=0.9, target_cost=1.0)
    with pytest.raises(ConfigError, match="at least one example"):
        calibrate([])
    with pytest.raises(ConfigError, match="target_accuracy"):
        calibrate(exs, target_accuracy=1.5)
    with pytest.raises(ConfigError, match="top rung"):
        calibrate(exs, target_cost=2.0)
    with pytest.raises(ConfigError, match="only 2 rungs"):
        calibrate([ScoredExample(0.5, True, rung=3)], n_rungs=2)
    with pytest.raises(ConfigError, match="below the cheapest"):
        calibrate([ScoredExample(0.5, True, 0, 5.0), ScoredExample(0.5, True, 1, 9.0)], target_cost=1.0)


# --- thresholds files -----------------------------------------------------------------------------


def test_thresholds_save_load_round_trip(tmp_path: Path) -> None:
    t = Thresholds((0.6, math.inf), ("a", "b", "c"), {"target": {"accuracy": 0.9}})
    path = tmp_path / "th.json"
    t.save(path)
    assert json.loads(path.read_text())["thresholds"] == [0.6, None]
    back = Thresholds.load(path)
    assert back == t
    assert back.for_ladder(["a", "b", "c"]) == (0.6, math.inf)
    assert Thresholds.default(3).values == (DEFAULT_THRESHOLD, DEFAULT_THRESHOLD)


def test_thresholds_load_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="agentflow calibrate"):
        Thresholds.load(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        Thresholds.load(bad)
    bad.write_text(json.dumps({"thresholds": ["high"]}))
    with pytest.raises(ConfigError, match="threshold 0"):
        Thresholds.load(bad)
    bad.write_text(json.dumps({"thresholds": [0.5], "models": ["only-one"]}))
    with pytest.raises(ConfigError, match="one threshold per rung"):
        Thresholds.load(bad)


def test_calibrate_file_writes_thresholds_the_router_can_load(tmp_path: Path) -> None:
    data = tmp_path / "scores.jsonl"
    rows: list[dict[str, object]] = [{"score": e.score, "correct": e.correct} for e in synthetic(2000, seed=9)]
    rows += [{"score": 0.5, "correct": True, "rung": "large", "cost": 4} for _ in range(20)]
    data.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    cal = calibrate_file(data, models=["small", "large"], target_accuracy=0.8, bootstrap=50)
    written = cal.path
    assert written == tmp_path / "scores.thresholds.json"
    loaded = Thresholds.load(written)
    assert loaded.values == cal.thresholds.values and loaded.models == ("small", "large")
    assert loaded.values[0] == pytest.approx(0.6, abs=0.05)
    assert loaded.info["report"]["expected_accuracy"]["value"] >= 0.8
    out = tmp_path / "custom.json"
    assert calibrate_file(data, out, models=["small", "large"], bootstrap=0).path == out and out.exists()


def test_calibrate_file_reads_the_ladder_that_compare_writes(tmp_path: Path) -> None:
    data = tmp_path / "calibration.jsonl"
    ladder = ["qwen2.5-coder-0.5b", "qwen2.5-coder-1.5b"]
    scored = synthetic(500, seed=3)
    rows = [{"score": e.score, "correct": e.correct, "rung": ladder[0], "ladder": ladder} for e in scored]
    data.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    cal = calibrate_file(data, bootstrap=0)
    assert Thresholds.load(cal.path).models == tuple(ladder)
    rows[0]["ladder"] = "not a list"  # no usable ladder: the names cannot be mapped, and the error says so
    data.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    with pytest.raises(DatasetError, match="pass the ladder's models"):
        calibrate_file(data, bootstrap=0)


@pytest.mark.parametrize(
    ("line", "match"),
    [
        ("{not json", "invalid JSON at column 2: Expecting property name"),
        ("[1, 2]", "JSON object"),
        ('{"score": 1.5, "correct": true}', "'score' must be a number in"),
        ('{"score": "high", "correct": true}', "'score'"),
        ('{"correct": true}', "'score'"),
        ('{"score": 0.5, "correct": "yes"}', "'correct' must be true or false"),
        ('{"score": 0.5, "correct": true, "rung": -1}', "'rung'"),
        ('{"score": 0.5, "correct": true, "rung": "mystery"}', "model name 'mystery'"),
        ('{"score": 0.5, "correct": true, "cost": -2}', "'cost'"),
    ],
)
def test_bad_dataset_lines_name_the_line(tmp_path: Path, line: str, match: str) -> None:
    path = tmp_path / "d.jsonl"
    path.write_text('{"score": 0.5, "correct": true}\n\n' + line + "\n")
    with pytest.raises(DatasetError, match=match) as e:
        load_examples(path, models=["small", "large"])
    assert e.value.line == 3 and f"{path}:3:" in str(e.value)


def test_empty_or_missing_dataset(tmp_path: Path) -> None:
    empty = tmp_path / "e.jsonl"
    empty.write_text("\n")
    with pytest.raises(DatasetError, match="empty"):
        calibrate_file(empty)
    with pytest.raises(DatasetError, match="not found"):
        calibrate_file(tmp_path / "nope.jsonl")
    named = tmp_path / "n.jsonl"
    named.write_text('{"score": 0.5, "correct": true, "rung": "small"}\n')
    with pytest.raises(DatasetError, match="pass the ladder's models"):
        load_examples(named)


async def test_collect_examples_scores_and_labels_every_rung(tmp_path: Path) -> None:
    small = ScriptedModel([Reply("4", prob=0.9), Reply("7", prob=0.4)], name="small")
    large = ScriptedModel([Reply("4", prob=0.8), Reply("6", prob=0.7)], name="large")
    items = [
        (ChatRequest.of("2 + 2?"), lambda text: text.strip() == "4"),
        (ChatRequest.of("3 + 3?"), lambda text: text.strip() == "6"),
    ]
    exs = await collect_examples([small, large], TokenProb("mean"), items)
    assert [(e.rung, e.correct) for e in exs] == [(0, True), (0, False), (1, True), (1, True)]
    assert [e.score for e in exs] == pytest.approx([0.9, 0.4, 0.8, 0.7])
    assert all(r.logprobs for r in small.requests)
    path = tmp_path / "ex.jsonl"
    write_examples(path, exs, models=["small", "large"])
    assert load_examples(path, models=["small", "large"]) == exs
    cal = calibrate(exs, models=["small", "large"], target_accuracy=1.0, bootstrap=10)
    assert cal.thresholds.values == (0.9,)
    text = cal.report.summary()
    assert "small: threshold 0.9000" in text and "expected accuracy" in text


async def test_collect_examples_unscorable_answer_scores_zero() -> None:
    bare = Completion("4", "m", "stop", Usage(1, 1, 1))
    exs = await collect_examples(
        [ScriptedModel([bare], name="a"), ScriptedModel([bare], name="b")],
        TokenProb(),
        [(ChatRequest.of("q"), lambda t: True)],
        cost=lambda c: float(c.usage.total_tokens),
    )
    assert [(e.score, e.cost) for e in exs] == [(0.0, 2.0), (0.0, 2.0)]
