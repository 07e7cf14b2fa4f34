"""The `agentflow` command line through typer's CliRunner (a stand-in server where one is needed)."""

from __future__ import annotations

import functools
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

import serving
from agentflow import cli

runner = CliRunner()


def test_models_lists_the_catalog_with_roles_and_install_state(tmp_path: Path) -> None:
    result = runner.invoke(cli.app, ["models"], env={"AGENTFLOW_CACHE": str(tmp_path), "COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    for name in ("smollm2-135m", "qwen2.5-coder-0.5b", "qwen2.5-coder-1.5b", "qwen2.5-72b-instruct-awq"):
        assert name in result.output
    assert "smoke" in result.output and "small-model" in result.output


@pytest.mark.parametrize("args", [["ask", "hi", "--model", "no-such-model"], ["serve", "no-such-model"]])
def test_unknown_model_prints_one_red_line_and_exits_1(args: list[str]) -> None:
    result = runner.invoke(cli.app, args, env={"FORCE_COLOR": "1"})
    assert result.exit_code == 1
    assert "unknown model 'no-such-model'" in result.stderr
    assert "\x1b[31m" in result.stderr  # red
    assert len(result.stderr.strip().splitlines()) == 1
    assert "Traceback" not in result.output


def test_serving_a_gpu_model_without_vllm_names_the_pip_command(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("serving._vllm.importlib.util.find_spec", lambda name, *a: None)
    result = runner.invoke(cli.app, ["serve", "qwen2.5-7b-instruct-awq"])
    assert result.exit_code == 1
    assert "pip install 'agentflow[vllm]'" in result.stderr


def test_serve_dry_run_prints_the_vllm_command_line() -> None:
    result = runner.invoke(cli.app, ["serve", "qwen2.5-72b-instruct-awq", "--dry-run", "--port", "8011"])
    assert result.exit_code == 0, result.output
    line = result.stdout.strip()
    assert line.startswith("vllm serve Qwen/Qwen2.5-72B-Instruct-AWQ ")
    assert "--tensor-parallel-size 4" in line and "--port 8011" in line and "--host 127.0.0.1" in line


@pytest.mark.usefixtures("fake_llama")
def test_serve_dry_run_prints_the_llama_cpp_command_line(fake_model_file: Path) -> None:
    result = runner.invoke(cli.app, ["serve", "smoke", "--dry-run", "--n-ctx", "1024"])
    assert result.exit_code == 0, result.output
    line = result.stdout.strip()
    assert "-m llama_cpp.server --model " in line and "--n_ctx 1024" in line
    assert "--model_alias smollm2-135m" in line and "--port 8000" in line


def test_no_arguments_shows_help_with_the_commands() -> None:
    result = runner.invoke(cli.app, [])
    for command in ("models", "serve", "ask"):
        assert command in result.output


@pytest.fixture
def fake_llama(monkeypatch: pytest.MonkeyPatch, fake_python: Path, fake_model_file: Path, tmp_path: Path) -> None:
    """Make the CLI start the stand-in server instead of llama.cpp."""
    fake = functools.partial(
        serving.LlamaCppServer, python=str(fake_python), model_file=fake_model_file, log_dir=tmp_path
    )
    monkeypatch.setattr(serving, "LlamaCppServer", fake)


@pytest.mark.usefixtures("fake_llama")
def test_ask_json_prints_one_object_with_answer_tokens_and_seconds() -> None:
    result = runner.invoke(cli.app, ["ask", "What is 2+2?", "--model", "smoke", "--json", "--max-tokens", "8"])
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    assert payload["model"] == "smollm2-135m"
    assert payload["answer"] == "fake answer to What is 2+2?"
    assert payload["prompt_tokens"] == 5 and payload["completion_tokens"] == 4
    assert payload["seconds"] >= 0 and payload["startup_s"] > 0
    assert payload["finish_reason"] == "stop"


@pytest.mark.usefixtures("fake_llama")
def test_ask_prints_the_answer_then_a_summary_line() -> None:
    result = runner.invoke(cli.app, ["ask", "Name a colour", "--model", "large"])
    assert result.exit_code == 0, result.output
    lines = result.stdout.strip().splitlines()
    assert lines[0] == "fake answer to Name a colour"
    assert "qwen2.5-coder-1.5b: 4 tokens in" in lines[-1]


def test_ask_defaults_to_the_small_role() -> None:
    import inspect

    from agentflow.cli._core import ask

    default = inspect.signature(ask).parameters["model"].default
    assert default == "qwen2.5-coder-0.5b"


def test_main_exits_1_on_agentflow_errors(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr("sys.argv", ["agentflow", "ask", "x", "--model", "nope"])
    with pytest.raises(SystemExit) as info:
        cli.main()
    assert info.value.code == 1
    assert "unknown model 'nope'" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("args", "fix"),
    [
        (["--rows", "0,x"], "0-19,250-269"),
        (["--rows", "0", "--limit", "2"], "not both"),
        (["--workflow", "magic"], "choose one of"),
        (["--arms", "agent,huge"], "huge"),
        (["--dataset", "nosuchset"], "nosuchset"),
        (["--estimator", "median"], "mean:variants"),
        (["--thresholds", "/nonexistent/thresholds.json"], "agentflow calibrate"),
    ],
)
def test_compare_refuses_bad_options_before_starting_anything(args: list[str], fix: str, tmp_path: Path) -> None:
    result = runner.invoke(cli.app, ["compare", *args, "--out", str(tmp_path / "out")])
    assert result.exit_code == 1, result.output
    assert fix in result.output
    assert "starting local llama.cpp" not in result.output and not (tmp_path / "out").exists()


def test_graph_prints_the_mermaid_diagram_of_a_ready_made_workflow() -> None:
    result = runner.invoke(cli.app, ["graph", "workflows.verify:build"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0] == "flowchart TD"
    assert any('"answer (max 3)"' in line for line in lines)  # the retry bound is on the diagram


def test_graph_with_a_bad_spec_names_the_form() -> None:
    result = runner.invoke(cli.app, ["graph", "no_such_module_xyz:g"])
    assert result.exit_code == 1
    assert "cannot import module 'no_such_module_xyz'" in result.output


def test_version_prints_the_package_version() -> None:
    import agentflow

    result = runner.invoke(cli.app, ["--version"])
    assert result.exit_code == 0
    assert result.output.strip() == f"agentflow {agentflow.__version__}"
