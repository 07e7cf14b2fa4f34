"""Samples that share their prompt: one request with `n` where the server can (vLLM), the same request in turn
where it cannot (llama.cpp, whose server keeps the last prompt's state), and a bill that counts what was computed
(prompt tokens served from a prefix cache cost no prefill FLOPs)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import TypeAdapter

from agentflow import Budget, BudgetLimits, ChatRequest, Completion, JsonOutput, Message, ModelBill, Usage, get_model
from agentflow._bill import Bill, Spend, spend_for
from agentflow._checkpoint import Checkpoint
from agentflow._client import ModelClient
from agentflow._exceptions import BadResponseError, ConfigError, NodeFailedError
from agentflow._types import Sampler
from agentflow._wire import parse_chat
from agentflow.eval import Paragraph
from agentflow.eval._report import QuestionRecord
from agentflow.eval._stores import RunStore, completion_from_json
from agentflow.testing import FakeOpenAIServer, FakeResponse, FunctionModel, ScriptedModel
from workflows import QADeps, QAState
from workflows.self_consistency import build as sc_build

URL = "http://127.0.0.1:9/v1"
SMALL = "qwen2.5-coder-0.5b"
REQUEST = ChatRequest.of(
    [Message.system("Answer briefly."), Message.user("Capital of France?")], temperature=0.7, seed=2
)


class VLLMish:
    """A vLLM-like server behind httpx.MockTransport. It answers by seed, as vLLM samples: a request with `n`
    and seed s gets the answers of seeds s, s + 1, ..., s + n - 1 (vLLM's parallel sampling seeds its child
    requests so), sent in reverse index order as a server may; its usage counts the prompt once and reports
    `cached` prompt tokens. `ignores_n` answers one choice whatever `n` says. Records every body as sent."""

    def __init__(
        self, by_seed: dict[int, str], *, prompt: int = 100, cached: int | None = None, ignores_n: bool = False
    ) -> None:
        self.by_seed = by_seed
        self.prompt, self.cached, self.ignores_n = prompt, cached, ignores_n
        self.raw: list[bytes] = []
        self.transport = httpx.MockTransport(self.handle)

    @property
    def bodies(self) -> list[dict[str, Any]]:
        return [json.loads(b) for b in self.raw]

    def handle(self, request: httpx.Request) -> httpx.Response:
        self.raw.append(request.content)
        body = json.loads(request.content)
        n = 1 if self.ignores_n else int(body.get("n", 1))
        texts = [self.by_seed[body["seed"] + i] for i in range(n)]
        choices = [
            {"index": i, "message": {"role": "assistant", "content": t}, "finish_reason": "stop"}
            for i, t in enumerate(texts)
        ]
        usage: dict[str, Any] = {
            "prompt_tokens": self.prompt,
            "completion_tokens": 2 * n,
            "total_tokens": self.prompt + 2 * n,
        }
        if self.cached is not None:
            usage["prompt_tokens_details"] = {"cached_tokens": self.cached}
        return httpx.Response(200, json={"model": "m", "choices": choices[::-1], "usage": usage})


def recording(server: FakeOpenAIServer) -> list[bytes]:
    """Record the exact bytes of every body `server` receives."""
    raw: list[bytes] = []
    inner = server.handler

    async def handle(request: httpx.Request) -> httpx.Response:
        raw.append(request.content)
        return await inner(request)

    server.transport = httpx.MockTransport(handle)
    return raw


# --- one request with n, or n requests in turn -------------------------------------------------------------


async def test_n_samples_on_vllm_are_one_request_whose_usage_counts_the_prompt_once() -> None:
    server = VLLMish({2: "Paris", 3: "Lyon", 4: "Nice"}, prompt=100, cached=64)
    async with ModelClient(URL, "m", dialect="vllm", transport=server.transport) as client:
        assert isinstance(client, Sampler) and client.samples_at_once
        answers = await client.sample(REQUEST, 3)
        single = VLLMish({2: "Paris"})
        async with ModelClient(URL, "m", dialect="vllm", transport=single.transport) as one:
            await one.complete(REQUEST)
    assert len(server.raw) == 1
    assert server.bodies[0] == {**single.bodies[0], "n": 3}  # the request complete() sends, plus n
    assert [a.text for a in answers] == ["Paris", "Lyon", "Nice"]  # in the order of their index
    assert [a.meta["sample"] for a in answers] == [0, 1, 2]
    assert answers[0].usage == Usage(requests=1, prompt_tokens=100, completion_tokens=6, cached_prompt_tokens=64)
    assert answers[1].usage == answers[2].usage == Usage()
    total = sum((a.usage for a in answers), Usage())
    assert total.prompt_tokens == 100 and total.requests == 1  # the prompt once, not three times


async def test_n_samples_on_llama_cpp_are_n_requests_each_as_complete_sends_it() -> None:
    server = FakeOpenAIServer([FakeResponse("Paris", usage=(100, 2))], repeat_last=True)
    raw = recording(server)
    async with ModelClient(URL, "m", dialect="llama_cpp", transport=server.transport) as client:
        assert not client.samples_at_once
        answers = await client.sample(REQUEST, 3)
        unseeded = await client.sample(REQUEST.with_(seed=None), 2)
    expected = FakeOpenAIServer(["Paris"], repeat_last=True)
    expected_raw = recording(expected)
    async with ModelClient(URL, "m", dialect="llama_cpp", transport=expected.transport) as client:
        for seed in (2, 3, 4):  # vLLM seeds its n samples seed, seed + 1, ...: the same here
            await client.complete(REQUEST.with_(seed=seed))
        for _ in range(2):
            await client.complete(REQUEST.with_(seed=None))
    assert raw == expected_raw  # byte for byte what complete() sends today, and never an "n"
    assert all(b'"n"' not in body for body in raw)
    # llama.cpp does not say what it reused of the previous prompt: each answer counts its prompt in full
    assert [a.usage for a in answers] == [Usage(1, 100, 2)] * 3
    assert len(unseeded) == 2


async def test_one_sample_is_exactly_a_complete_call() -> None:
    for dialect in ("vllm", "llama_cpp", "openai"):
        server = FakeOpenAIServer(["Paris", "Paris"])
        raw = recording(server)
        async with ModelClient(URL, "m", dialect=dialect, transport=server.transport) as client:  # type: ignore[arg-type]
            [answer] = await client.sample(REQUEST, 1)
            await client.complete(REQUEST)
        assert raw[0] == raw[1] and answer.text == "Paris"


async def test_a_server_that_ignores_n_is_an_error_that_counts_the_request() -> None:
    server = VLLMish({2: "Paris", 3: "Lyon"}, ignores_n=True)
    async with ModelClient(URL, "m", dialect="vllm", transport=server.transport) as client:
        with pytest.raises(BadResponseError, match=r"1 choice\(s\) to a request for n=2.*dialect='llama_cpp'") as err:
            await client.sample(REQUEST, 2)
    assert err.value.usage == Usage(requests=1) and len(server.raw) == 1


async def test_a_structured_sample_is_asked_in_turn_each_answer_validated() -> None:
    server = FakeOpenAIServer(['{"city": "Paris"}', '{"city": "Lyon"}'])
    schema = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
    async with ModelClient(URL, "m", dialect="vllm", transport=server.transport) as client:
        answers = await client.sample(REQUEST.with_(output=JsonOutput(schema)), 2)
    assert [a.parsed for a in answers] == [{"city": "Paris"}, {"city": "Lyon"}]
    assert [b.get("seed") for b in server.requests] == [2, 3] and all("n" not in b for b in server.requests)


async def test_sample_refuses_a_count_below_one() -> None:
    async with ModelClient(URL, "m", dialect="vllm", transport=VLLMish({}).transport) as client:
        for bad in (0, -1, True):
            with pytest.raises(ConfigError, match="n >= 1"):
                await client.sample(REQUEST, bad)


# --- cached prompt tokens: read, counted, billed --------------------------------------------------------------


def _body(usage: dict[str, Any]) -> dict[str, Any]:
    return {"choices": [{"message": {"content": "x"}, "finish_reason": "stop"}], "usage": usage}


def test_cached_prompt_tokens_are_read_from_prompt_tokens_details() -> None:
    usage = {"prompt_tokens": 90, "completion_tokens": 3, "prompt_tokens_details": {"cached_tokens": 64}}
    assert parse_chat(_body(usage), URL).usage == Usage(1, 90, 3, 64)
    # llama-cpp-python sends only these three counts: nothing is cached as far as anyone can tell
    assert parse_chat(_body({"prompt_tokens": 90, "completion_tokens": 3, "total_tokens": 93}), URL).usage == Usage(
        1, 90, 3
    )
    for details in (None, {}, {"cached_tokens": None}, {"cached_tokens": "64"}, {"cached_tokens": -5}, "64"):
        assert parse_chat(_body({**usage, "prompt_tokens_details": details}), URL).usage == Usage(1, 90, 3)
    more = {**usage, "prompt_tokens_details": {"cached_tokens": 500}}
    assert parse_chat(_body(more), URL).usage.cached_prompt_tokens == 90  # a part of the prompt, never more


def test_usage_adds_cached_prompt_tokens_and_writes_them_only_when_there_are_some() -> None:
    assert Usage(1, 90, 3, 64) + Usage(1, 10, 1) == Usage(2, 100, 4, 64)
    assert Usage(1, 90, 3).to_dict() == {"requests": 1, "prompt_tokens": 90, "completion_tokens": 3}
    assert Usage(1, 90, 3, 64).to_dict() == {
        "requests": 1,
        "prompt_tokens": 90,
        "completion_tokens": 3,
        "cached_prompt_tokens": 64,
    }
    adapter = TypeAdapter(Usage)
    assert adapter.validate_json(adapter.dump_json(Usage(1, 90, 3, 64))) == Usage(1, 90, 3, 64)
    assert adapter.dump_json(Usage(1, 90, 3)) == b'{"requests":1,"prompt_tokens":90,"completion_tokens":3}'


def test_stores_keep_cached_prompt_tokens_and_read_what_was_written_before(tmp_path: Path) -> None:
    cp = Checkpoint("r", "g", 1, {}, (), {}, usage=Usage(2, 200, 6, 128))
    assert Checkpoint.from_json(cp.to_json(), ()).usage == Usage(2, 200, 6, 128)
    plain = Checkpoint("r", "g", 1, {}, (), {}, usage=Usage(2, 200, 6)).to_json()
    assert "cached_prompt_tokens" not in plain  # checkpoints without cached tokens keep their shape
    rec = QuestionRecord("q1", "Paris", True, usage={SMALL: Usage(2, 200, 6, 128)})
    with RunStore(tmp_path / "runs.sqlite") as store:
        store.save("arm", rec)
        assert store.get("arm", "q1") == rec
    # a response cached before cached prompt tokens were counted (three numbers of usage) still loads
    old = {"text": "4", "model": "small", "finish_reason": "stop", "usage": [1, 20, 1]}
    assert completion_from_json(old).usage == Usage(1, 20, 1)


def test_cached_prompt_tokens_cost_no_prefill_flops() -> None:
    spec = get_model(SMALL)
    full, cached = spend_for(spec, 1000, 10), spend_for(spec, 1000, 10, cached_prompt=960)
    assert full.flops == pytest.approx(2 * spec.active_params * 1010)
    assert cached.flops == pytest.approx(2 * spec.active_params * 50)  # 40 prompt tokens computed, 10 decoded
    assert full.flops - cached.flops == pytest.approx(spec.flops(960))
    assert (cached.prompt_tokens, cached.cached_prompt_tokens, cached.cost_usd) == (1000, 960, full.cost_usd)
    assert cached.usage() == Usage(1, 1000, 10, 960)
    assert Spend.from_dict(json.loads(json.dumps(cached.as_dict()))) == cached


async def test_the_budget_settles_cached_prompt_tokens_without_flops_and_reserves_the_worst_case() -> None:
    spec = get_model(SMALL)

    def answer(cached: int) -> Completion:
        return Completion("Paris", SMALL, "stop", Usage(1, 1000, 10, cached))

    long = ChatRequest.of("word " * 400, max_tokens=10)  # estimated above 1000 prompt tokens: no overshoot
    bills = []
    for cached in (0, 960):
        budget = Budget(BudgetLimits(flops=1e15))
        model = budget.wrap(ScriptedModel([answer(cached)], name=SMALL))
        worst = budget.estimate(long, model)
        res = budget.reserve(long, model)
        assert budget.reserved == worst  # the reservation does not bet on a cache hit
        budget.settle(res, answer(cached))
        assert budget.spent.flops == pytest.approx(spec.flops(1010 - cached))
        bills.append(budget.bill())
    plain, hit = bills
    assert plain.flops - hit.flops == pytest.approx(spec.flops(960))
    assert (plain.prompt_tokens, hit.prompt_tokens) == (1000, 1000)  # the same prompt, counted either way
    assert hit.cached_prompt_tokens == 960 and hit.models[SMALL].cached_prompt_tokens == 960
    assert hit.to_dict()["cached_prompt_tokens"] == 960 and plain.to_dict()["cached_prompt_tokens"] == 0
    assert hit.models[SMALL].overshoots == 0


async def test_a_budgeted_vllm_client_bills_what_the_server_computed() -> None:
    spec = get_model(SMALL)
    budget = Budget()
    server = VLLMish({2: "Paris"}, prompt=100, cached=64)
    async with ModelClient(URL, SMALL, dialect="vllm", transport=server.transport) as client:
        await budget.wrap(client).complete(REQUEST)
    mb = budget.bill().models[SMALL]
    assert (mb.prompt_tokens, mb.cached_prompt_tokens, mb.completion_tokens) == (100, 64, 2)
    assert mb.flops == pytest.approx(spec.flops(100 - 64 + 2))


def test_a_failed_call_is_charged_what_it_computed() -> None:
    spec = get_model(SMALL)
    budget = Budget()
    res = budget.reserve(REQUEST, SMALL)
    budget.fail(res, Usage(2, 200, 6, 100))
    mb = budget.bill().models[SMALL]
    assert (mb.failed, mb.cached_prompt_tokens, mb.flops) == (1, 100, pytest.approx(spec.flops(106)))


def test_bills_written_before_cached_prompt_tokens_were_counted_still_load() -> None:
    old = {"requests": 1, "prompt_tokens": 10, "completion_tokens": 2, "flops": 1.5e10, "cost_usd": 0.0}
    assert Bill.from_dict({"models": {SMALL: old}}).models[SMALL] == ModelBill(1, 10, 2, 1.5e10, 0.0)
    assert Spend.from_dict(old) == Spend(1, 10, 2, 1.5e10, 0.0)


# --- self-consistency drawing its samples at once -------------------------------------------------------------

QUESTION = QAState(question="Capital of France?", paragraphs=[Paragraph("France", "Paris is its capital.")])


async def _sc(client: ModelClient, **params: Any) -> tuple[QAState, Any]:
    return await sc_build(**params).run(QUESTION, deps=QADeps(model=client))


async def test_sc_in_a_batch_on_vllm_asks_twice_and_keeps_the_samples_the_loop_would_have_drawn() -> None:
    answers = {1: "Paris", 2: "Rome", 3: "Paris", 4: "Oslo", 5: "Bern"}  # the loop stops at the third
    batched, loop = VLLMish(answers), VLLMish(answers)
    async with ModelClient(URL, "m", dialect="vllm", transport=batched.transport) as client:
        state, record = await _sc(client, batch=True)
    async with ModelClient(URL, "m", dialect="vllm", transport=loop.transport) as client:
        alone, alone_record = await _sc(client)
    assert len(loop.raw) == 3 and len(batched.raw) == 2
    greedy, at_once = sorted(batched.bodies, key=lambda b: b.get("n", 1))
    assert greedy == loop.bodies[0]  # the greedy answer, as the loop asks for it
    assert at_once == {**loop.bodies[1], "n": 4}  # the sampled ones: seeds 2..5 in one request
    assert state.samples == alone.samples == ["Paris", "Rome", "Paris"]  # what the loop needed, not all 5
    assert (state.answer, state.agreement) == (alone.answer, alone.agreement) == ("Paris", 2 / 3)
    assert state.notes == ["drew 5 samples at once (4 in one request); 3 needed for 2 to agree"]
    assert record.usage.requests == 2 and alone_record.usage.requests == 3
    assert record.usage.prompt_tokens == 200 < alone_record.usage.prompt_tokens == 300  # one prompt per request


async def test_sc_in_a_batch_with_no_agreement_keeps_every_sample() -> None:
    server = VLLMish({1: "Paris", 2: "Rome", 3: "Oslo", 4: "Bern", 5: "Kyiv"})
    async with ModelClient(URL, "m", dialect="vllm", transport=server.transport) as client:
        state, _ = await _sc(client, batch=True)
    assert state.samples == ["Paris", "Rome", "Oslo", "Bern", "Kyiv"] and len(server.raw) == 2
    assert (state.answer, state.agreement) == ("Paris", 1 / 5)  # the earliest on a tie, as the loop votes
    assert state.notes == ["drew 5 samples at once (4 in one request); none agreed"]


async def test_sc_in_a_batch_draws_fewer_when_the_budget_affords_fewer() -> None:
    server = VLLMish({1: "Paris", 2: "Rome", 3: "Oslo"})
    async with ModelClient(URL, "m", dialect="vllm", transport=server.transport) as client:
        deps = QADeps(model=client, budget=Budget(BudgetLimits(requests=3), policy="degrade"))
        state, _ = await sc_build(batch=True).run(QUESTION, deps=deps)
    assert [b.get("n") for b in server.bodies if "n" in b] == [2]
    assert state.samples == ["Paris", "Rome", "Oslo"] and state.degraded
    assert state.notes[-1] == "drew 3 of 5 samples: budget"


async def test_sc_in_a_batch_on_llama_cpp_sends_what_the_loop_sends() -> None:
    raws = []
    for batch in (False, True):
        server = FakeOpenAIServer(["Paris", "Rome", "Paris"])
        raws.append(recording(server))
        async with ModelClient(URL, "m", dialect="llama_cpp", transport=server.transport) as client:
            state, _ = await _sc(client, batch=batch)
        assert state.samples == ["Paris", "Rome", "Paris"] and state.notes == []
    assert raws[0] == raws[1] and len(raws[0]) == 3  # byte for byte, one sample at a time, stopping at agreement


async def test_sc_in_a_batch_on_a_model_that_cannot_sample_at_once_runs_the_loop() -> None:
    model = FunctionModel(lambda r: {1: "Paris", 2: "Rome", 3: "Paris"}[r.seed or 0], name="f")
    state, _ = await sc_build(batch=True).run(QUESTION, deps=QADeps(model=model))
    assert [r.seed for r in model.requests] == [1, 2, 3] and state.samples == ["Paris", "Rome", "Paris"]


async def test_sc_in_a_batch_fails_with_the_error_of_the_request_that_failed() -> None:
    server = VLLMish({1: "Paris", 2: "Rome", 3: "Oslo", 4: "Bern", 5: "Kyiv"}, ignores_n=True)
    async with ModelClient(URL, "m", dialect="vllm", transport=server.transport) as client:
        with pytest.raises(NodeFailedError, match="sample") as err:
            await _sc(client, batch=True)
    assert isinstance(err.value.__cause__, BadResponseError)  # not wrapped in an exception group


async def test_the_response_cache_keeps_what_the_original_call_computed() -> None:
    from agentflow.eval import CachedModel, ResponseCache

    answer = Completion(text="Paris", model=SMALL, finish_reason="stop", usage=Usage(1, 300, 2, 256))
    inner = FunctionModel(lambda request: answer, name=SMALL)
    cache = ResponseCache(":memory:")
    model = CachedModel(inner, cache)
    request = ChatRequest.of("capital of France?", max_tokens=4)
    first = await model.complete(request)
    again = await model.complete(request)
    cache.close()
    assert first.usage.cached_prompt_tokens == 256  # the first call's own usage, read back from the server
    assert again.cached and again.usage == Usage()  # a cache hit costs nothing now ...
    original = again.meta["original_usage"]
    assert original == Usage(1, 300, 2, 256)  # ... and keeps what the call computed when it was made
