"""`agentflow compare` on the command line tells the truth: dead servers, failed arms, cache-only replays.

The servers are `agentflow.testing.FaultServer`s (real HTTP on 127.0.0.1) or a loopback port nobody
listens on; no llama.cpp server is ever started here.
"""

from __future__ import annotations

import asyncio
import json
import socket
from pathlib import Path

from typer.testing import CliRunner, Result

from agentflow import cli
from agentflow.eval import CompareConfig, Comparison, ResponseCache, load_dataset
from agentflow.testing import Fault, FaultServer, FunctionModel, Reply
from workflows import QAState, rung

DATA = Path(__file__).parent / "data"
SMALL, LARGE = "qwen2.5-coder-0.5b", "qwen2.5-coder-1.5b"
runner = CliRunner()


def _dead_url() -> str:
    """A loopback URL where nothing listens (the port was free a moment ago)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"


def _compare(tmp_path: Path, *args: str) -> Result:
    base = ["compare", "--data-dir", str(DATA), "--rows", "0,1", "--dialect", "openai"]
    base += ["--cache", str(tmp_path / "cache.sqlite"), "--out", str(tmp_path / "out")]
    return runner.invoke(cli.app, [*base, *args], env={"COLUMNS": "200"})


def _report(tmp_path: Path) -> dict:  # type: ignore[type-arg]
    return dict(json.loads((tmp_path / "out" / "report.json").read_text()))


def test_a_dead_server_fails_before_any_question_naming_the_url_and_the_fix(tmp_path: Path) -> None:
    dead = _dead_url()
    result = _compare(tmp_path, "--arms", "small", "--small-url", dead)
    assert result.exit_code == 1, result.output
    assert f"nothing answers at --small-url {dead}" in result.output
    assert "--replay" in result.output  # the way to a cache-only run is named
    assert "starting local llama.cpp" not in result.output
    assert not (tmp_path / "out" / "answers.sqlite").exists()  # no question was asked, nothing stored


def test_each_server_the_arms_call_is_checked(tmp_path: Path) -> None:
    dead = _dead_url()
    with FaultServer(then=Fault.ok("yes")) as small:
        result = _compare(tmp_path, "--arms", "agent", "--small-url", small.url, "--large-url", dead)
        assert small.hits == 0  # checked, but not asked a question
    assert result.exit_code == 1, result.output
    assert f"nothing answers at --large-url {dead}" in result.output


def test_only_the_servers_the_chosen_arms_call_are_used(tmp_path: Path) -> None:
    with FaultServer(then=Fault.ok("yes")) as small:
        result = _compare(tmp_path, "--arms", "small", "--small-url", small.url)  # no --large-url: not needed
        assert small.hits == 2
    assert result.exit_code == 0, result.output
    assert "starting local llama.cpp" not in result.output
    report = _report(tmp_path)
    assert [a["name"] for a in report["arms"]] == ["small"] and report["arms"][0]["errors"] == 0
    assert "small vs" not in result.output  # one arm: nothing to compare


def test_an_arm_whose_every_call_failed_exits_1_with_the_first_error_in_full(tmp_path: Path) -> None:
    refusal = "the model qwen2.5-coder-0.5b is not loaded on this server, load it first"
    with FaultServer(then=Fault.status(400, refusal)) as broken:
        result = _compare(tmp_path, "--arms", "small", "--small-url", broken.url)
    assert result.exit_code == 1, result.output
    assert "small: 2 of 2 questions failed; the first (question" in result.output
    assert refusal in result.output  # in full, not cut to the table's width
    assert "no successful answer from small (2 of 2 failed)" in result.output
    report = _report(tmp_path)
    assert report["arms"][0]["errors"] == 2 and refusal in report["arms"][0]["first_error"]["error"]
    assert refusal in (tmp_path / "out" / "report.md").read_text()

    # Once the server is fixed, the same command asks the failed questions again and succeeds.
    with FaultServer(then=Fault.ok("yes")) as fixed:
        again = _compare(tmp_path, "--arms", "small", "--small-url", fixed.url)
        assert fixed.hits == 2
    assert again.exit_code == 0, again.output
    assert _report(tmp_path)["arms"][0]["errors"] == 0


def _warm_cache(tmp_path: Path) -> None:
    """Answer rows 0 and 1 for the small and large arms once, with the CLI's default settings."""

    def model(name: str) -> FunctionModel:
        return FunctionModel(lambda req: Reply("yes", prob=0.9), name=name)

    examples = load_dataset("hotpotqa", rows=[0, 1], data_dir=DATA)
    cfg = CompareConfig("hotpotqa", tuple(e.id for e in examples), arms=("small", "large"), small_model=SMALL)
    comparison = Comparison(cfg, examples, model(SMALL), model(LARGE), tmp_path / "warm", rung, QAState)
    asyncio.run(comparison.run(tmp_path / "cache.sqlite"))


def test_a_warm_cache_does_not_hide_a_dead_server_and_replay_says_what_it_did(tmp_path: Path) -> None:
    _warm_cache(tmp_path)
    dead = _dead_url()
    refused = _compare(tmp_path, "--arms", "small,large", "--small-url", dead, "--large-url", dead)
    assert refused.exit_code == 1, refused.output
    assert dead in refused.output and not (tmp_path / "out" / "answers.sqlite").exists()

    replayed = _compare(tmp_path, "--arms", "small,large", "--replay")
    assert replayed.exit_code == 0, replayed.output
    assert "replaying from the response cache" in replayed.output
    assert "small: 2 of 2 answers came from the response cache" in replayed.output
    assert "large: 2 of 2 answers came from the response cache" in replayed.output
    arms = {a["name"]: a for a in _report(tmp_path)["arms"]}
    assert arms["small"]["answers_from_cache"] == 2 and arms["small"]["flops_spent_now"] == 0
    assert arms["small"]["wall_mostly_from_cache"] is True


def test_a_replay_with_a_cold_cache_fails_every_question_and_exits_1(tmp_path: Path) -> None:
    ResponseCache(tmp_path / "cache.sqlite").close()  # exists, but empty
    result = _compare(tmp_path, "--arms", "small", "--replay")
    assert result.exit_code == 1, result.output
    assert "is not in the response cache" in result.output
    assert "no successful answer from small" in result.output


def test_replay_refuses_what_it_cannot_honour(tmp_path: Path) -> None:
    with_url = _compare(tmp_path, "--arms", "small", "--replay", "--small-url", _dead_url())
    assert with_url.exit_code == 1 and "drop --small-url" in with_url.output
    no_cache = _compare(tmp_path, "--arms", "small", "--replay")
    assert no_cache.exit_code == 1 and "there is none at" in no_cache.output


def test_a_reversed_range_of_rows_is_named(tmp_path: Path) -> None:
    result = runner.invoke(cli.app, ["compare", "--rows", "0,5-2", "--out", str(tmp_path / "out")])
    assert result.exit_code == 1
    assert "the range 5-2 is reversed" in result.output and "2-5" in result.output
    assert not (tmp_path / "out").exists()


def test_a_per_question_flops_limit_reaches_the_budget(tmp_path: Path) -> None:
    with FaultServer(then=Fault.ok("yes")) as server:
        result = _compare(tmp_path, "--arms", "small", "--small-url", server.url, "--max-flops-per-question", "1")
        assert server.hits == 0  # no call fits one FLOP: none is made
    assert result.exit_code == 1, result.output
    assert "BudgetExceeded" in result.output and "flops" in result.output
    assert "- budget per question: flops 1" in (tmp_path / "out" / "report.md").read_text()


def test_the_report_lists_the_rows_as_ranges(tmp_path: Path) -> None:
    with FaultServer(then=Fault.ok("yes")) as server:
        result = runner.invoke(
            cli.app,
            ["compare", "--data-dir", str(DATA), "--rows", "0-2,4", "--arms", "small", "--small-url", server.url,
             "--dialect", "openai", "--cache", str(tmp_path / "c.sqlite"), "--out", str(tmp_path / "out")],
        )  # fmt: skip
    assert result.exit_code == 0, result.output
    md = (tmp_path / "out" / "report.md").read_text()
    assert "- questions: 4 (rows 0-2, 4)\n" in md and "question_ids" not in md


def test_one_constant_decides_the_answer_length_of_compare() -> None:
    import inspect

    from agentflow._bill import DEFAULT_ANSWER_TOKENS
    from agentflow.cli._eval import CompareOptions, compare

    assert DEFAULT_ANSWER_TOKENS == 32  # the README's "short answers (32 tokens)"
    assert inspect.signature(compare).parameters["max_tokens"].default == DEFAULT_ANSWER_TOKENS
    assert CompareOptions().max_tokens == CompareConfig("x", ()).max_tokens == DEFAULT_ANSWER_TOKENS


def test_token_and_seconds_limits_the_split_and_concurrency_reach_the_run(tmp_path: Path) -> None:
    with FaultServer(then=Fault.ok("yes")) as server:
        result = _compare(
            tmp_path, "--arms", "small", "--small-url", server.url, "--split", "evaluation", "--concurrency", "2",
            "--max-tokens-per-question", "100000", "--max-seconds-per-question", "600",
            "--max-tokens-per-run", "1000000", "--max-seconds-per-run", "3600",
        )  # fmt: skip
    assert result.exit_code == 0, result.output
    md = (tmp_path / "out" / "report.md").read_text()
    assert md.startswith("# agentflow comparison (evaluation split)\n") and "- split: evaluation\n" in md
    assert "- budget per question: total_tokens 100000, wall_time_s 600\n" in md
    assert "- budget per run: total_tokens 1e+06, wall_time_s 3600\n" in md
    assert "- questions at once: 2\n" in md
    assert _report(tmp_path)["meta"]["config"]["split"] == "evaluation"


def test_a_per_question_token_limit_refuses_what_does_not_fit_and_the_report_counts_it(tmp_path: Path) -> None:
    with FaultServer(then=Fault.ok("yes")) as server:
        result = _compare(tmp_path, "--arms", "small", "--small-url", server.url, "--max-tokens-per-question", "1")
        assert server.hits == 0
    assert result.exit_code == 1, result.output
    assert "small: 2 of 2 questions cut short by the budget" in result.output and "total_tokens" in result.output
    assert _report(tmp_path)["arms"][0]["degraded"] == 2


def test_servers_given_by_url_answer_eight_questions_at_once_by_default(tmp_path: Path) -> None:
    with FaultServer(then=Fault.ok("yes")) as server:
        result = _compare(tmp_path, "--arms", "small", "--small-url", server.url)
    assert result.exit_code == 0, result.output
    assert _report(tmp_path)["meta"]["questions at once"] == 8
    bad = _compare(tmp_path, "--arms", "small", "--small-url", _dead_url(), "--concurrency", "0")
    assert bad.exit_code == 1 and "--concurrency 0: give 1 or more" in bad.output
    helped = runner.invoke(cli.app, ["compare", "--help"], env={"COLUMNS": "300"})
    assert "1 when a local llama.cpp server answers" in helped.output and "8 when every server is" in helped.output


def test_the_console_prints_the_deferral_line_and_the_picture(tmp_path: Path) -> None:
    with FaultServer(then=Fault.ok("yes")) as small, FaultServer(then=Fault.ok("no")) as large:
        result = _compare(tmp_path, "--arms", "small,large,cascade", "--small-url", small.url, "--large-url", large.url)
    assert result.exit_code == 0, result.output
    assert "deferral (estimator mean): cascade: area over random" in result.output
    assert str(tmp_path / "out" / "deferral.png") in result.output.replace("\n", "")
    assert _report(tmp_path)["deferral"]["curves"]["cascade"]["n"] == 2


def test_a_bad_learned_confidence_is_refused_before_any_server_starts(tmp_path: Path) -> None:
    result = _compare(tmp_path, "--arms", "cascade", "--estimator", f"learned:{tmp_path / 'missing.json'}")
    assert result.exit_code == 1 and "does not exist" in result.output
    assert "starting local llama.cpp" not in result.output
    wrong = _compare(tmp_path, "--arms", "cascade", "--estimator", "agreement")
    assert wrong.exit_code == 1 and "use workflow 'sc'" in wrong.output
