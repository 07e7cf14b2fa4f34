"""The evaluation path a user runs, on real models: `agentflow compare`, then `calibrate`, then a cached rerun.

The small role is played by SmolLM2-135M and the large by Qwen2.5-Coder-0.5B so that the test takes about a
minute; the README's main job runs the same command with the 0.5B and 1.5B models.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import real_model_skip_reason
from test_ledger import _shared_figures

from agentflow import Bill

pytestmark = pytest.mark.real_model

AGENTFLOW = [sys.executable, "-m", "agentflow.cli"]
MODELS = ["--small-model", "smollm2-135m", "--large-model", "qwen2.5-coder-0.5b"]


@pytest.fixture(autouse=True)
def _needs_models() -> None:
    for role in ("smoke", "small"):
        reason = real_model_skip_reason(role)  # type: ignore[arg-type]
        if reason is not None:
            pytest.skip(reason)


def _run(*args: str, timeout: float = 900) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "150"}
    return subprocess.run([*AGENTFLOW, *args], capture_output=True, text=True, timeout=timeout, env=env)


def test_compare_calibrate_and_a_free_rerun(tmp_path: Path) -> None:
    cache = str(tmp_path / "responses.sqlite")
    first = tmp_path / "first"
    proc = _run("compare", "--rows", "0,250", *MODELS, "--arms", "agent,large,small,cascade", "--out", str(first),
                "--cache", cache)  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "starting local llama.cpp servers" in proc.stdout
    assert "agent vs large: exact match" in proc.stdout and "the FLOPs" in proc.stdout  # the verdict line
    marks = proc.stdout.count("✓") + proc.stdout.count("✗")
    assert marks == 2 * 4, proc.stdout  # a short run prints every answer of every arm, marked right or wrong
    report = json.loads((first / "report.json").read_text())
    arms = {a["name"]: a for a in report["arms"]}
    assert set(arms) == {"agent", "large", "small", "cascade"}
    # The cascade's rungs are the small and large arms' own calls: all from the cache, and its curve is drawn.
    assert arms["cascade"]["flops_spent_now"] == 0 and arms["cascade"]["errors"] == 0
    assert report["deferral"]["curves"]["cascade"]["available"] and (first / "deferral.png").stat().st_size > 1000
    assert "deferral (estimator mean): cascade: area over random" in proc.stdout
    for arm in arms.values():
        assert arm["n"] == 2 and arm["errors"] == 0
        assert arm["flops"] > 0 and arm["prompt_tokens"] > 0 and arm["wall_s"] > 0
    # The small arm only ever calls the small model; the large arm reads the full context.
    assert set(arms["small"]["tokens"]) == {"smollm2-135m"}
    assert arms["large"]["prompt_tokens"] > arms["small"]["prompt_tokens"]
    assert "| agent |" in (first / "report.md").read_text()
    # One ledger: on a real run, every figure the report and the arm's bill both hold is the same number.
    for name, arm in arms.items():
        _shared_figures(arm, Bill.from_dict(report["bills_this_run"][name]))
    assert (first / "pareto.png").stat().st_size > 1000

    labelled = first / "calibration.jsonl"
    lines = [json.loads(line) for line in labelled.read_text().splitlines()]
    assert len(lines) == 2 and all({"score", "correct", "rung"} <= set(line) for line in lines)
    thresholds = tmp_path / "thresholds.json"
    proc = _run("calibrate", str(labelled), "--out", str(thresholds))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    saved = json.loads(thresholds.read_text())
    assert saved["models"] == ["smollm2-135m", "qwen2.5-coder-0.5b"] and len(saved["thresholds"]) == 1

    # The same questions with the calibrated threshold: every answer the router needs is in the cache.
    second = tmp_path / "second"
    proc = _run("compare", "--rows", "0,250", *MODELS, "--arms", "agent,small", "--thresholds", str(thresholds),
                "--out", str(second), "--cache", cache)  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    again = {a["name"]: a for a in json.loads((second / "report.json").read_text())["arms"]}
    assert again["small"]["flops_spent_now"] == 0
    assert again["small"]["em"] == arms["small"]["em"]
