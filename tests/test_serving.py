"""The launcher (ports, argv, start, health, stop by PID, start-up failures) with a stand-in server process."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
import time
from pathlib import Path

import pytest
from conftest import pid_gone

import serving
from agentflow._exceptions import ConfigError, MissingDependencyError, ServingError
from serving import _process


def test_free_port_is_bindable_on_loopback() -> None:
    port = serving.free_port()
    assert 1024 <= port <= 65535
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))  # would raise if it were taken


def test_llama_cpp_argv_renders_the_documented_command() -> None:
    argv = serving.llama_cpp_argv(Path("/m/x.gguf"), alias="smoke", port=8123, python="py")
    assert argv == [
        "py", "-m", "llama_cpp.server", "--model", "/m/x.gguf", "--model_alias", "smoke",
        "--host", "127.0.0.1", "--port", "8123", "--n_threads", "2", "--n_ctx", "4096",
    ]  # fmt: skip


def test_llama_cpp_server_argv_uses_catalog_name_and_settings(fake_model_file: Path) -> None:
    server = serving.LlamaCppServer("smoke", port=9001, n_ctx=2048, n_threads=4, model_file=fake_model_file)
    argv = server.argv()
    assert server.model_name == "smollm2-135m"
    assert argv[argv.index("--model_alias") + 1] == "smollm2-135m"
    assert argv[argv.index("--n_ctx") + 1] == "2048"
    assert argv[argv.index("--n_threads") + 1] == "4"
    assert argv[argv.index("--port") + 1] == "9001"
    assert server.url == "http://127.0.0.1:9001/v1"


def test_llama_cpp_server_rejects_non_gguf_models_and_bad_settings() -> None:
    with pytest.raises(ConfigError, match="VLLMServer"):
        serving.LlamaCppServer("qwen2.5-7b-instruct-awq")
    with pytest.raises(ConfigError, match="positive"):
        serving.LlamaCppServer("smoke", n_ctx=0)


async def test_missing_llama_cpp_names_the_pip_command(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        "serving._llamacpp.importlib.util.find_spec", lambda n, *a: None if n == "llama_cpp" else real(n, *a)
    )
    with pytest.raises(MissingDependencyError, match=r"pip install 'agentflow\[local\]'"):
        await serving.LlamaCppServer("smoke", log_dir=tmp_path).start()


def _fake(fake_python: Path, model_file: Path, log_dir: Path, **kw: object) -> serving.LlamaCppServer:
    return serving.LlamaCppServer("smoke", python=str(fake_python), model_file=model_file, log_dir=log_dir, **kw)  # type: ignore[arg-type]


async def test_start_health_and_stop_by_pid(fake_python: Path, fake_model_file: Path, tmp_path: Path) -> None:
    server = _fake(fake_python, fake_model_file, tmp_path)
    async with server:
        pid = server.pid
        assert pid is not None and server.running
        assert server.port > 0 and server.url == f"http://127.0.0.1:{server.port}/v1"
        assert server.startup_s is not None and server.startup_s > 0
        assert pid in _process._LIVE
        assert "fake server for smollm2-135m" in server.log_path.read_text()
    assert not server.running
    assert pid_gone(pid)
    assert pid not in _process._LIVE
    await server.stop()  # a second stop is a no-op


async def test_stop_escalates_to_sigkill_after_the_grace_period(
    fake_python: Path, fake_model_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_SERVER_MODE", "ignore_term")
    server = _fake(fake_python, fake_model_file, tmp_path, stop_grace=0.5)
    await server.start()
    pid = server.pid
    assert pid is not None
    proc = server._proc
    began = time.monotonic()
    await server.stop()
    assert time.monotonic() - began >= 0.45  # the grace period was given before the SIGKILL
    assert proc is not None and proc.returncode == -signal.SIGKILL
    assert pid_gone(pid)


async def test_process_dying_at_start_up_raises_with_log_tail_and_fix(
    fake_python: Path, fake_model_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_SERVER_MODE", "die")
    server = _fake(fake_python, fake_model_file, tmp_path)
    with pytest.raises(ServingError) as info:
        await server.start()
    message = str(info.value)
    assert "exited with code 3" in message
    assert "failed to load model" in message  # the log tail
    assert "Fix: the model file did not load" in message
    assert str(server.log_path) in message
    assert not server.running


async def test_port_in_use_is_reported_with_its_fix(fake_python: Path, fake_model_file: Path, tmp_path: Path) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        port = holder.getsockname()[1]
        server = _fake(fake_python, fake_model_file, tmp_path, port=port)
        with pytest.raises(ServingError, match="another process holds that port"):
            await server.start()


async def test_start_up_timeout_stops_the_process(
    fake_python: Path, fake_model_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_SERVER_MODE", "slow")
    server = _fake(fake_python, fake_model_file, tmp_path, startup_timeout=0.5)
    with pytest.raises(ServingError, match="did not answer"):
        await server.start()
    assert server.pid is not None and pid_gone(server.pid)


async def test_a_foreign_server_on_the_port_is_not_mistaken_for_ours(
    fake_python: Path, fake_model_file: Path, tmp_path: Path
) -> None:
    async with _fake(fake_python, fake_model_file, tmp_path) as first:
        other = serving.VLLMServer(
            serving.VLLMSpec(model="m", served_model_name="other", cpu=True),
            port=first.port,
            python=str(fake_python),
            log_dir=tmp_path,
        )
        with pytest.raises(ServingError, match="port"):
            await other.start()
        assert first.running


async def test_start_servers_runs_several_at_once_and_stops_them_all(
    fake_python: Path, fake_model_file: Path, tmp_path: Path
) -> None:
    small = _fake(fake_python, fake_model_file, tmp_path)
    large = serving.LlamaCppServer("large", python=str(fake_python), model_file=fake_model_file, log_dir=tmp_path)
    async with serving.start_servers([small, large]) as (a, b):
        assert a is small and b is large
        assert a.running and b.running and a.port != b.port
        pids = [a.pid, b.pid]
    assert all(p is not None and pid_gone(p) for p in pids)


async def test_start_servers_stops_the_started_ones_when_one_fails(
    fake_python: Path, fake_model_file: Path, tmp_path: Path
) -> None:
    good = _fake(fake_python, fake_model_file, tmp_path)
    bad = serving.LlamaCppServer("large", python="/nonexistent/python", model_file=fake_model_file, log_dir=tmp_path)
    with pytest.raises(ServingError, match="could not run"):
        async with serving.start_servers([good, bad]):
            pytest.fail("must not get here")
    assert not good.running
    assert good.pid is not None and pid_gone(good.pid)


async def test_atexit_safety_net_stops_live_servers(
    fake_python: Path, fake_model_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Only this test's server is in the registry the safety net sweeps: the session's real model servers
    # (started by other tests in this process) must outlive it.
    monkeypatch.setattr(_process, "_LIVE", {})
    server = await _fake(fake_python, fake_model_file, tmp_path).start()
    pid = server.pid
    assert pid is not None and pid in _process._LIVE
    await asyncio.to_thread(_process._stop_all)
    assert pid_gone(pid)
    assert not _process._LIVE


async def test_start_up_waits_for_the_server_to_answer_however_long_it_takes(
    fake_python: Path, fake_model_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_SERVER_MODE", "late")  # listens only after 3 s, as a model loading on a busy CPU
    async with _fake(fake_python, fake_model_file, tmp_path) as server:
        assert server.running and server.startup_s is not None and server.startup_s >= 2.9
        assert "listening late" in server.log_path.read_text()


def test_servers_bind_loopback_unless_a_host_is_passed(fake_model_file: Path) -> None:
    def host_of(argv: list[str]) -> str:
        return argv[argv.index("--host") + 1]

    assert serving.HOST == "127.0.0.1"
    local = serving.LlamaCppServer("smoke", port=9001, model_file=fake_model_file)
    assert host_of(local.argv()) == "127.0.0.1" and local.url == "http://127.0.0.1:9001/v1"
    assert host_of(serving.server_for("qwen2.5-7b-instruct-awq", port=9002).argv()) == "127.0.0.1"
    assert host_of(serving.VLLMSpec(model="m", served_model_name="m").argv(9003)) == "127.0.0.1"

    opened = serving.LlamaCppServer("smoke", port=9001, host="0.0.0.0", model_file=fake_model_file)
    assert host_of(opened.argv()) == "0.0.0.0"
    assert opened.url == "http://127.0.0.1:9001/v1"  # a wildcard bind is reached on loopback from here
    vllm = serving.server_for("qwen2.5-7b-instruct-awq", port=9002, host="10.0.0.5")
    assert host_of(vllm.argv()) == "10.0.0.5" and vllm.url == "http://10.0.0.5:9002/v1"
    assert "--host ::1" in serving.QWEN25_7B_AWQ.command(9004, host="::1")
    assert serving.LlamaCppServer("smoke", port=1, host="::", model_file=fake_model_file).url == "http://[::1]:1/v1"
    with pytest.raises(ConfigError, match="host must be an address"):
        serving.LlamaCppServer("smoke", host="")


def test_log_tail_keeps_the_last_lines(tmp_path: Path) -> None:
    log = tmp_path / "x.log"
    log.write_text("".join(f"line {i}\n" for i in range(100)))
    tail = serving.log_tail(log, lines=3)
    assert tail == "line 97\nline 98\nline 99"
    assert serving.log_tail(tmp_path / "missing.log") == ""


def test_server_for_picks_vllm_for_gpu_models_and_llama_cpp_otherwise() -> None:
    assert isinstance(serving.server_for("qwen2.5-72b-instruct-awq"), serving.VLLMServer)
    assert isinstance(serving.server_for("small"), serving.LlamaCppServer)


def test_servers_are_started_with_this_interpreter_by_default() -> None:
    assert serving.LlamaCppServer("smoke").python == sys.executable
    assert os.path.isabs(sys.executable)


def test_real_model_skip_reasons_say_how_to_enable(monkeypatch: pytest.MonkeyPatch) -> None:
    from conftest import real_model_skip_reason

    monkeypatch.setattr("conftest._LLAMA_MODULES", ())
    monkeypatch.setattr("conftest.find_in_site_packages", lambda relpath: None)
    reason = real_model_skip_reason("small")
    assert reason is not None and "pip install 'agentflow[small-model]'" in reason
    monkeypatch.setattr("conftest._LLAMA_MODULES", ("llama_cpp",))
    monkeypatch.setattr("conftest.importlib.util.find_spec", lambda name, *a: None)
    reason = real_model_skip_reason("smoke")
    assert reason is not None and "pip install 'agentflow[local]'" in reason


def test_serving_public_names_are_locked() -> None:
    assert serving.__all__ == [
        "DEFAULT_CACHE_DIR", "DEFAULT_LOG_DIR", "DEFAULT_STARTUP_TIMEOUT_S", "HOST", "LLAMA_CPP_INSTALL",
        "QUANTIZATIONS", "QWEN25_7B_AWQ", "QWEN25_72B_AWQ", "VLLM_SPECS", "LlamaCppServer", "ManagedServer",
        "ModelStatus", "VLLMServer", "VLLMSpec", "free_port", "installed_models", "llama_cpp_argv", "log_tail",
        "model_path", "require_llama_cpp", "server_for", "start_servers",
    ]  # fmt: skip
    assert all(hasattr(serving, name) for name in serving.__all__)


@pytest.mark.skipif(sys.platform != "linux", reason="the parent-death signal is Linux's (prctl PR_SET_PDEATHSIG)")
def test_a_killed_parent_leaves_no_server_behind(fake_python: Path, fake_model_file: Path, tmp_path: Path) -> None:
    import subprocess

    script = f"""
import asyncio, serving
from pathlib import Path
async def main():
    server = serving.LlamaCppServer("smoke", python={str(fake_python)!r}, model_file=Path({str(fake_model_file)!r}),
                                    log_dir=Path({str(tmp_path)!r}))
    await server.start()
    print(server.pid, flush=True)
    await asyncio.sleep(600)
asyncio.run(main())
"""
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert parent.stdout is not None
    child = int(parent.stdout.readline())
    assert not pid_gone(child)
    parent.send_signal(signal.SIGKILL)  # no atexit, no finally: only the kernel can stop the server now
    parent.wait()
    deadline = time.monotonic() + 300  # only ends a hung test: the loop stops as soon as the server is gone
    while not _exited(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    gone = _exited(child)
    if not gone:
        os.kill(child, signal.SIGKILL)  # by its PID, so a failure leaves nothing running either
    assert gone, "the server outlived the process that started it"


def _exited(pid: int) -> bool:
    """Gone, or a zombie waiting for init to reap it (it no longer runs or holds its port)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ")[1].startswith("Z")
    except FileNotFoundError:
        return True
