"""Bad actors and secrets: nothing a model or a dataset produced is executed; an API key never leaks; servers
bind loopback unless told otherwise; huge or deeply nested answers end in a clear error; no dataset field
writes outside the output folder. A defect found here is marked xfail(strict=True) naming it until fixed."""

from __future__ import annotations

import ast
import inspect
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

import serving
from agentflow import (
    AgentFlowError,
    BadResponseError,
    Budget,
    ChatRequest,
    JsonlTraceWriter,
    JsonOutput,
    ModelClient,
    ModelError,
    NodeFailedError,
    RetryPolicy,
    Router,
    StructuredOutputError,
)
from agentflow.eval import CompareConfig, Comparison, Example, Paragraph
from agentflow.testing import Fault, FaultServer, FunctionModel, Reply, SeenRequest
from workflows import QADeps, QAState, build, rung

ROOT = Path(__file__).resolve().parent.parent
SOURCES = [
    p
    for folder in ("agentflow", "serving", "workflows", "benchmarks", "examples")
    for p in sorted((ROOT / folder).rglob("*.py"))
]
QUICK = RetryPolicy(max_attempts=2, initial_backoff_s=0.01, max_backoff_s=0.01, max_total_s=5)


# --- nothing a model or a dataset produced is executed ------------------------------------------------

FORBIDDEN_CALLS = {"eval", "exec", "compile", "__import__", "breakpoint"}
FORBIDDEN_MODULES = {"pickle", "cPickle", "_pickle", "marshal", "shelve", "dill", "cloudpickle", "joblib", "yaml"}
# `importlib.import_module(<not a literal>)`: only where the name is the user's own (a CLI argument) or one of
# the module's constants, never text from a model or a dataset.
DYNAMIC_IMPORTS_ALLOWED = {("_mermaid.py", "load_graph"), ("_learned.py", "_sklearn")}


def _calls(tree: ast.AST) -> Iterator[tuple[ast.Call, str]]:
    """Every call with the name of the function (def) it sits in."""

    def walk(node: ast.AST, where: str) -> Iterator[tuple[ast.Call, str]]:
        for child in ast.iter_child_nodes(node):
            inner = child.name if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef) else where
            if isinstance(child, ast.Call):
                yield child, where
            yield from walk(child, inner)

    yield from walk(tree, "<module>")


def _dotted(node: ast.expr) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    return "?"


def test_the_sources_are_walked() -> None:
    names = {p.name for p in SOURCES}
    assert {"_client.py", "_wire.py", "_structured.py", "_checkpoint.py", "_stores.py", "_process.py"} <= names
    assert len(SOURCES) > 40


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_eval_exec_pickle_or_shell_anywhere_in_the_code(path: Path) -> None:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    problems: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            problems += [f"imports {a.name}" for a in node.names if a.name.split(".")[0] in FORBIDDEN_MODULES]
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in FORBIDDEN_MODULES:
            problems.append(f"imports from {node.module}")
    for call, where in _calls(tree):
        name = _dotted(call.func)
        line = f"line {call.lineno} in {where}()"
        if name in FORBIDDEN_CALLS or name.startswith("builtins."):
            problems.append(f"calls {name} at {line}")
        if name in ("os.system", "os.popen") or name.startswith("os.exec") or name.startswith("os.spawn"):
            problems.append(f"calls {name} at {line}")
        for kw in call.keywords:
            if kw.arg == "shell" and not (isinstance(kw.value, ast.Constant) and kw.value.value is False):
                problems.append(f"passes shell= to {name} at {line}")
        if name.endswith("import_module") and call.args and not isinstance(call.args[0], ast.Constant):
            if (path.name, where) not in DYNAMIC_IMPORTS_ALLOWED:
                problems.append(f"imports a module named at run time at {line}: review, then allow it here")
    assert problems == [], f"{path.relative_to(ROOT)}: {problems}"


# --- an API key never leaks -------------------------------------------------------------------------

KEY = "sk-planted-0123456789abcdefSECRET"


def _echo_key(kind: str) -> Fault:
    """A bad actor's answer that puts the caller's key in what it sends back."""
    said = f"invalid api key {KEY} (Authorization: Bearer {KEY})"
    if kind == "401":
        return Fault.status(401, said)
    if kind == "500":
        return Fault.status(500, said)
    if kind == "429":
        return Fault.rate_limited(retry_after="0", message=said)
    if kind == "html":
        return Fault(body=f"<html><body>Bearer {KEY}</body></html>".encode(), headers=(("Content-Type", "text/html"),))
    if kind == "no choices":
        return Fault(body=('{"error": {"message": "' + said + '"}}').encode())
    raise AssertionError(kind)


def _strings(exc: BaseException | None) -> list[str]:
    """Everything an error says: str, repr, its attributes, and the same for the causes a traceback shows."""
    out: list[str] = []
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        out += [str(exc), repr(exc), *(repr(v) for v in vars(exc).values())]
        exc = exc.__cause__ or (None if exc.__suppress_context__ else exc.__context__)
    return out


@pytest.mark.parametrize(
    "kind",
    [
        "401",
        "500",
        "429",
        "html",
        "no choices",
    ],
)
async def test_a_key_echoed_by_a_bad_server_appears_in_no_error_trace_log_or_repr(
    kind: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    trace = tmp_path / "trace.jsonl"
    async with FaultServer(then=_echo_key(kind)) as server:
        client = ModelClient(server.url, "m", api_key=KEY, retry=QUICK, timeout=5)
        big = ModelClient(server.url, "big", api_key=KEY, retry=QUICK, timeout=5)
        budget = Budget()
        router = Router([client, big], budget=budget)
        state = QAState(question="q", paragraphs=[Paragraph("t", "p")])
        with JsonlTraceWriter(trace) as writer, pytest.raises(NodeFailedError) as err:
            await build("direct").run(state, deps=QADeps(model=router), listeners=[writer])
        await client.aclose()
        await big.aclose()
    assert server.seen[0].headers["authorization"] == f"Bearer {KEY}"  # the key was sent, and echoed
    outputs = {
        "error": "\n".join(_strings(err.value)),
        "trace": trace.read_text(encoding="utf-8"),
        "logs": caplog.text,
        "reprs": "\n".join(repr(x) for x in (client, budget, router, budget.bill().to_dict())),
    }
    assert isinstance(err.value.__cause__, ModelError)
    leaked = [where for where, text in outputs.items() if KEY in text]
    assert leaked == [], f"the key leaked into {leaked}"


async def test_a_key_in_the_url_stays_out_of_errors_reprs_and_logs(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    with FaultServer() as server:  # started and stopped: nothing listens on its port any more
        port = server.port
    client = ModelClient(f"http://user:{KEY}@127.0.0.1:{port}/v1", "m", retry=QUICK, timeout=2)
    with pytest.raises(AgentFlowError) as err:
        await client.chat("hi", max_tokens=2)
    await client.aclose()
    text = "\n".join([*_strings(err.value), repr(client), caplog.text])
    assert "could not reach" in str(err.value) and f"127.0.0.1:{port}" in str(err.value)
    assert KEY not in text


async def test_the_reports_of_a_comparison_hold_no_key(tmp_path: Path) -> None:
    """A comparison whose servers echo the key in some answers: its stores and reports never hold it."""

    def handler(seen: SeenRequest) -> Fault | str:
        return _echo_key("500") if seen.n % 3 == 0 else "Paris"

    examples = [
        Example(f"q{i}", f"Capital of France {i}?", "Paris", paragraphs=(Paragraph("t", "x"),)) for i in range(4)
    ]
    config = CompareConfig("mini", tuple(e.id for e in examples), arms=("small", "large"), retrieve_k=1)
    out = tmp_path / "out"
    async with FaultServer(handler=handler) as server:
        small = ModelClient(server.url, config.small_model, api_key=KEY, retry=RetryPolicy(max_attempts=1))
        large = ModelClient(server.url, config.large_model, api_key=KEY, retry=RetryPolicy(max_attempts=1))
        await Comparison(config, examples, small, large, out, rung, QAState).run()
        await small.aclose()
        await large.aclose()
    written = sorted(p for p in out.rglob("*") if p.is_file())
    assert {p.name for p in written} >= {"report.json", "report.md", "answers.sqlite"}
    assert any(b"HTTP 500" in p.read_bytes() for p in written)  # the failures are recorded...
    assert [p.name for p in written if KEY.encode() in p.read_bytes()] == []  # ...without the key


# --- servers bind loopback unless told otherwise ------------------------------------------------------


def test_servers_bind_127_0_0_1_unless_a_host_is_passed() -> None:
    argv = serving.llama_cpp_argv(Path("m.gguf"), alias="m", port=8080)
    assert argv[argv.index("--host") + 1] == "127.0.0.1"
    argv = serving.llama_cpp_argv(Path("m.gguf"), alias="m", port=8080, host="0.0.0.0")
    assert argv[argv.index("--host") + 1] == "0.0.0.0"
    vllm = serving.QWEN25_7B_AWQ.argv(8000)
    assert vllm[vllm.index("--host") + 1] == "127.0.0.1"
    for fn in (serving.LlamaCppServer.__init__, serving.VLLMServer.__init__, serving.server_for, serving.free_port):
        assert inspect.signature(fn).parameters["host"].default == "127.0.0.1", fn.__qualname__
    assert serving.HOST == "127.0.0.1"


def test_the_fault_server_listens_on_loopback_only() -> None:
    with FaultServer() as server:
        assert server.url.startswith("http://127.0.0.1:")
        sock = server._server.sockets[0]  # type: ignore[union-attr]
        assert sock.getsockname()[0] == "127.0.0.1"


# --- huge and deeply nested answers -------------------------------------------------------------------

HUGE = 48 * 1024 * 1024


async def test_megabytes_of_json_are_cut_off_with_a_clear_error() -> None:
    async with FaultServer([Fault.huge_body(HUGE)]) as server:
        async with ModelClient(server.url, "m", retry=QUICK, timeout=30) as client:
            with pytest.raises(BadResponseError, match=r"(?i)(too large|larger than|limit).*(MB|bytes)"):
                await client.chat("hi", max_tokens=8)
    assert server.body_bytes_sent[0] < HUGE, "the client read the whole body before giving up"


async def test_a_deeply_nested_body_is_a_bad_response() -> None:
    async with FaultServer([Fault.deep_json(100_000)]) as server:
        async with ModelClient(server.url, "m", retry=QUICK) as client:
            with pytest.raises(BadResponseError, match="check that base_url"):
                await client.chat("hi", max_tokens=8)


async def test_deeply_nested_structured_output_is_retried_then_refused() -> None:
    spec = JsonOutput({"type": "array"})
    deep = Fault.deep_json(100_000, in_text=True)
    async with FaultServer([deep, deep]) as server:
        async with ModelClient(server.url, "m", dialect="vllm", retry=QUICK, structured_retries=1) as client:
            with pytest.raises(StructuredOutputError):
                await client.complete(ChatRequest.of("a list", max_tokens=8, output=spec))


async def test_a_moderately_nested_structured_answer_is_refused_as_invalid_not_crashing() -> None:
    """Nested 500 deep (json.loads copes): validated against the schema and refused, with its raw text."""
    spec = JsonOutput({"type": "object"})
    nested = Fault.deep_json(500, in_text=True)
    async with FaultServer([nested, nested]) as server:
        async with ModelClient(server.url, "m", dialect="vllm", retry=QUICK, structured_retries=1) as client:
            with pytest.raises(StructuredOutputError, match="does not fit the JSON schema") as err:
                await client.complete(ChatRequest.of("an object", max_tokens=8, output=spec))
    assert err.value.attempts == 2 and err.value.raw_text.startswith("[[[")


# --- no dataset field writes outside the output folder -------------------------------------------------


async def test_dataset_fields_cannot_write_outside_the_output_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    evil = ["../../escaped", "/tmp/agentflow-escaped", "..", "a/../../b", "q\x00nul", "C:\\evil", "~/.bashrc"]
    examples = [
        Example(
            ident,
            f"Question {i} ../../../etc/passwd?",
            "../../answer",
            paragraphs=(Paragraph(f"../../title{i}", "/etc/passwd ../../x"),),
            type="../../type",
        )
        for i, ident in enumerate(evil)
    ]
    config = CompareConfig("../../dataset", tuple(e.id for e in examples), arms=("small", "large"), retrieve_k=1)
    model = FunctionModel(lambda req: Reply("../../../escaped-answer"), name=config.small_model)
    large = FunctionModel(lambda req: Reply("/tmp/agentflow-escaped-answer"), name=config.large_model)
    out = work / "out"
    await Comparison(config, examples, model, large, out, rung, QAState).run()
    _assert_all_inside(tmp_path, out)


def _assert_all_inside(root: Path, out: Path) -> None:
    created = sorted(str(p.relative_to(root)) for p in root.rglob("*"))
    assert all(c == "work" or c.startswith("work/out") for c in created), created
    assert not Path("/tmp/agentflow-escaped").exists()
    assert {p.name for p in out.iterdir()} >= {"report.json", "answers.sqlite"}
