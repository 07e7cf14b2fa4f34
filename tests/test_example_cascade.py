"""examples/cascade.py runs as a user would run it, on the real small and large local models, and prints
each question's answer, every cascade decision and a bill that agrees with them."""

from __future__ import annotations

import json
import re

import pytest
from test_examples import run_example

pytestmark = pytest.mark.real_model


def test_cascade_example() -> None:
    out = run_example("cascade.py", roles=("small", "large"))
    answers = re.findall(r"^  -> '.*' from (\S+) \(gold: '.*'\)$", out, re.M)
    assert len(answers) == 2 and set(answers) <= {"sc@qwen2.5-coder-0.5b", "direct@qwen2.5-coder-1.5b"}
    lines = out.splitlines()
    decisions = [json.loads(line.removeprefix("decision: ")) for line in lines if line.startswith("decision: ")]
    escalated = [d for d in decisions if d["escalated"]]
    assert len(decisions) == 2 + len(escalated)  # one decision per rung tried
    assert len(escalated) == answers.count("direct@qwen2.5-coder-1.5b")  # the top answers only when escalated to
    for d in decisions:
        if d["rung"] == 0:
            assert 0.0 < d["score"] <= 1.0 and d["threshold"] == 0.6  # the samples' agreement, from the final state
            assert 2 <= d["usage"]["requests"] <= 5  # sc stops once two agree, and never samples past k=5
            assert d["escalated"] == (d["score"] < 0.6)
    bill = json.loads(next(line for line in lines if line.startswith("bill: ")).removeprefix("bill: "))
    assert bill["escalations"] == len(escalated)
    assert bill["requests"] == sum(d["usage"]["requests"] for d in decisions)  # every call is on a decision
    assert bill["flops"] > 0 and bill["overshoots"] == 0
