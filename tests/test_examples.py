"""Every script in examples/ runs as a user would run it, on real local models, and prints what it promises."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import real_model_skip_reason

pytestmark = pytest.mark.real_model
EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def run_example(name: str, *args: str, roles: tuple[str, ...] = ("smoke",)) -> str:
    for role in roles:
        reason = real_model_skip_reason(role)  # type: ignore[arg-type]
        if reason is not None:
            pytest.skip(reason)
    proc = subprocess.run(
        [sys.executable, str(EXAMPLES / name), *args], capture_output=True, text=True, timeout=600, cwd=EXAMPLES.parent
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def _line(out: str, prefix: str) -> Any:
    """The JSON printed after `prefix` on its line of `out`."""
    return json.loads(next(line for line in out.splitlines() if line.startswith(prefix)).removeprefix(prefix))


def _line_text(out: str, prefix: str) -> str:
    """The rest of the one line of `out` that starts with `prefix`."""
    lines = [line.removeprefix(prefix) for line in out.splitlines() if line.startswith(prefix)]
    assert len(lines) == 1, out
    return lines[0]


def _bill(out: str) -> dict[str, Any]:
    return _line(out, "bill: ")  # type: ignore[no-any-return]


def test_every_example_has_a_test() -> None:
    tested = {"ask.py", "verify_loop.py", "router_budget.py", "my_workflow.py", "cascade.py"}
    assert {p.name for p in EXAMPLES.glob("*.py")} == tested


def test_ask() -> None:
    out = run_example("ask.py")
    assert re.search(r"^answer: '.+' \(\d+ tokens?, [\d.]+s\)$", out, re.M), out
    city = re.search(r"^structured: City\(name='(.+)', country='(.+)'\)$", out, re.M)
    assert city, out
    # the example asks what its default model knows, so the structured answer is right, not only well-formed
    assert (city.group(1).lower(), city.group(2).lower()) == ("paris", "france"), out


def test_verify_loop() -> None:
    out = run_example("verify_loop.py")
    match = re.search(r"^answer: '(.*)' accepted=(True|False) attempts=(\d)$", out, re.M)
    assert match, out
    accepted, attempts = match.group(2) == "True", int(match.group(3))
    assert 1 <= attempts <= 3
    rejected = re.findall(r"^attempt (\d): rejected '.*': (.+)$", out, re.M)
    assert [int(n) for n, _ in rejected] == list(range(1, len(rejected) + 1)), out  # every rejection, in order
    assert all(feedback.strip() for _, feedback in rejected)  # each with the rule's feedback
    assert len(rejected) == attempts - accepted, out
    shows = _line_text(out, "shows: ")
    if accepted:
        assert re.search(rf"^attempt {attempts}: accepted '.+'$", out, re.M), out
        assert f"accepted attempt {attempts}" in shows
    else:
        assert attempts == 3, "an answer that is never accepted is retried up to the bound"
        assert "rejected all 3 answers" in shows and "accepted=False" in shows
    bill = _bill(out)
    assert bill["requests"] == attempts  # one model call per attempt, each on the bill
    assert bill["flops"] > 0 and bill["escalations"] == 0


def test_router_budget() -> None:
    out = run_example("router_budget.py", roles=("smoke", "small"))
    blocks = re.findall(
        r"^  -> '(.*)' from (\S+)\n((?:     \S+: score=.*\n)+)"
        r"     (right|WRONG) \(expected '(.+)'; (kept|escalated)\)$",
        out,
        re.M,
    )
    assert len(blocks) == 3, out
    escalated = 0
    for answer, model, route, verdict, expected, path in blocks:
        assert model in {"smollm2-135m", "qwen2.5-coder-0.5b"}
        assert (verdict == "right") == (expected.lower() in answer.lower())  # the verdict says what it shows
        steps = route.strip().splitlines()
        assert (path == "kept") == (len(steps) == 1) == (model == "smollm2-135m")
        escalated += path == "escalated"
    right = sum(verdict == "right" for _, _, _, verdict, _, _ in blocks)
    assert _line_text(out, "shows: ").startswith(f"{right} of 3 right")
    bill = _bill(out)
    assert bill["escalations"] == escalated and bill["requests"] == 3 + escalated


def test_my_workflow() -> None:
    out = run_example("my_workflow.py")
    assert out.startswith("flowchart TD")
    samples = json.loads(
        next(line for line in out.splitlines() if line.startswith("samples: ")).removeprefix("samples: ")
    )
    assert len(samples) == 3
    match = re.search(r"^answer: '(.*)' agreement=([\d.]+)$", out, re.M)
    assert match and match.group(1) in samples
    assert float(match.group(2)) == pytest.approx(samples.count(match.group(1)) / 3, abs=0.01)
    nodes = _line(out, "nodes: ")
    assert nodes == {"sample0": 1, "sample1": 1, "sample2": 1, "vote": 0}  # each sample's call is on its node
    assert _bill(out)["requests"] == 3


def test_cascade() -> None:
    out = run_example("cascade.py", roles=("small", "large"))
    blocks = re.findall(r"^  -> '(.*)' from (\S+) \(gold: '.*'\)\n((?:decision: .*\n?)+)", out, re.M)
    assert len(blocks) == 2, out  # two HotpotQA questions
    requests = 0
    for _answer, name, lines in blocks:
        decisions = [json.loads(line.removeprefix("decision: ")) for line in lines.strip().splitlines()]
        assert [d["rung"] for d in decisions] == list(range(len(decisions)))  # every rung tried, in order
        tried = [d for d in decisions if d["started"]]
        assert tried and all(d["escalated"] for d in tried[:-1])  # each rung before the answer handed it on
        assert tried[-1]["name"] == name  # the rung that answered is the last one tried
        assert all(d["why"] for d in decisions)
        requests += sum(d["usage"]["requests"] for d in decisions)
        first = decisions[0]  # the small rung: sc, judged by the agreement of its samples
        assert 0.0 < first["score"] <= 1.0 and first["escalated"] == (first["score"] < first["threshold"])
        assert 2 <= first["usage"]["requests"] <= 5  # sc stops once two agree, and never samples past k=5
    bill = _bill(out)
    assert bill["requests"] == requests  # every call of every rung is on the bill
    assert bill["escalations"] == sum(name.startswith("direct@") for _a, name, _l in blocks)
    assert bill["flops"] > 0 and bill["overshoots"] == 0


def test_the_readme_simple_path_runs_as_written(tmp_path: Path) -> None:
    readme = (EXAMPLES.parent / "README.md").read_text(encoding="utf-8")
    start = readme.index("```python", readme.index("## The simple path")) + len("```python\n")
    code = readme[start : readme.index("```", start)]
    assert 'LlamaCppServer("small")' in code
    script = tmp_path / "readme_simple_path.py"
    script.write_text(code.replace('LlamaCppServer("small")', 'LlamaCppServer("smoke")'), encoding="utf-8")
    out = run_example(str(script))
    lines = out.strip().splitlines()
    assert "Usage(requests=1" in lines[0] and float(lines[0].rsplit(" ", 1)[1]) <= 0  # text, usage, a logprob
    assert lines[1].startswith("name=") and "country=" in lines[1]  # the pydantic model, filled
