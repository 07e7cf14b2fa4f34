"""Structured output: the exact request body per dialect, validation, structured retries, unsupported constraints."""

from __future__ import annotations

import enum
import json
from typing import Any, Literal

import pytest
from pydantic import BaseModel, Field

from agentflow import ChatRequest, ChoiceOutput, JsonOutput, RegexOutput, Usage
from agentflow._client import ModelClient
from agentflow._exceptions import ConfigError, StructuredOutputError, UnsupportedConstraintError
from agentflow._structured import (
    Dialect,
    choices_gbnf,
    constraint_body,
    schema_problem,
    structured_for,
)
from agentflow.testing import FakeOpenAIServer, FakeResponse


class City(BaseModel):
    name: str
    population: int = Field(ge=0, le=100_000_000)


class Colour(enum.Enum):
    RED = "red"
    BLUE = "blue"


CITY_SCHEMA = City.model_json_schema()


async def _noop_sleep(seconds: float) -> None:
    return None


def make(server: FakeOpenAIServer, dialect: Dialect, **kwargs: Any) -> ModelClient:
    return ModelClient(
        "http://fake.test/v1", "m", dialect=dialect, transport=server.transport, sleep=_noop_sleep, **kwargs
    )


def constraint_of(body: dict[str, object]) -> dict[str, object]:
    return {k: v for k, v in body.items() if k in ("response_format", "structured_outputs", "guided_json", "grammar")}


# --- the exact JSON sent, per dialect ------------------------------------------------------------


async def test_pydantic_model_on_llama_cpp_sends_json_object_with_schema() -> None:
    server = FakeOpenAIServer(['{"name": "Paris", "population": 2100000}'])
    async with make(server, "llama_cpp") as client:
        city = await client.parse("Biggest city in France?", City, max_tokens=64)
    assert city == City(name="Paris", population=2_100_000)
    assert constraint_of(server.requests[0]) == {"response_format": {"type": "json_object", "schema": CITY_SCHEMA}}


@pytest.mark.parametrize("dialect", ["vllm", "openai"])
async def test_pydantic_model_on_vllm_and_openai_sends_json_schema_response_format(dialect: Dialect) -> None:
    server = FakeOpenAIServer(['{"name": "Paris", "population": 2100000}'])
    async with make(server, dialect) as client:
        city = await client.parse("Biggest city in France?", City)
    assert city.name == "Paris"
    assert constraint_of(server.requests[0]) == {
        "response_format": {"type": "json_schema", "json_schema": {"name": "City", "schema": CITY_SCHEMA}}
    }


async def test_regex_on_vllm_sends_structured_outputs_regex() -> None:
    server = FakeOpenAIServer(["2024-05-01"])
    async with make(server, "vllm") as client:
        value = await client.parse("A date?", RegexOutput(r"\d{4}-\d{2}-\d{2}"))
    assert value == "2024-05-01"
    assert constraint_of(server.requests[0]) == {"structured_outputs": {"regex": r"\d{4}-\d{2}-\d{2}"}}


async def test_regex_on_llama_cpp_is_a_string_schema_whose_quotes_are_taken_off() -> None:
    # llama.cpp writes the match between quotes, unescaped: '"say "hi""' is the answer 'say "hi"'
    server = FakeOpenAIServer(['"2024-05-01"', ' "say "hi"" '])
    async with make(server, "llama_cpp") as client:
        assert await client.parse("A date?", RegexOutput(r"^[0-9]{4}-[0-9]{2}-[0-9]{2}$")) == "2024-05-01"
        assert await client.parse("Say hi.", RegexOutput(r'say "hi"')) == 'say "hi"'
    schema = {"type": "string", "pattern": "^([0-9]{4}-[0-9]{2}-[0-9]{2})$"}
    assert constraint_of(server.requests[0]) == {"response_format": {"type": "json_object", "schema": schema}}


async def test_regex_answer_on_llama_cpp_must_be_quoted_and_match_inside_the_quotes() -> None:
    server = FakeOpenAIServer(["42", '" 42"', '"42"'])
    async with make(server, "llama_cpp") as client:
        assert await client.parse("x", RegexOutput("[0-9]+")) == "42"
    assert server.calls == 3


async def test_choices_on_vllm_send_structured_outputs_choice() -> None:
    server = FakeOpenAIServer(["no"])
    async with make(server, "vllm") as client:
        value = await client.parse("Is 9 prime?", ChoiceOutput(("yes", "no")))
    assert value == "no"
    assert constraint_of(server.requests[0]) == {"structured_outputs": {"choice": ["yes", "no"]}}


async def test_choices_on_llama_cpp_are_a_gbnf_alternation() -> None:
    server = FakeOpenAIServer(["yes"])
    async with make(server, "llama_cpp") as client:
        value = await client.parse("Is 7 prime?", Literal["yes", "no"])
    assert value == "yes"
    assert constraint_of(server.requests[0]) == {"grammar": 'root ::= "yes" | "no"\n'}


@pytest.mark.parametrize("dialect", ["openai", "llama_cpp", "vllm"])
@pytest.mark.parametrize("spec", [JsonOutput(CITY_SCHEMA), RegexOutput("a+"), ChoiceOutput(("a", "b"))])
def test_llama_cpp_never_gets_json_schema_guided_json_or_structured_outputs(
    dialect: Dialect, spec: JsonOutput | RegexOutput | ChoiceOutput
) -> None:
    try:
        body = constraint_body(spec, dialect)
    except UnsupportedConstraintError:
        assert dialect == "openai" and not isinstance(spec, JsonOutput)
        return
    text = json.dumps(body)
    if dialect == "llama_cpp":
        assert body.get("response_format", {"type": "json_object"})["type"] == "json_object"
        assert "json_schema" not in text and "guided_" not in text and "structured_outputs" not in text
    assert "guided_json" not in text  # removed in vLLM 0.12, ignored by llama.cpp


# --- unsupported constraints ---------------------------------------------------------------------


@pytest.mark.parametrize("spec", [RegexOutput(r"\d+"), ChoiceOutput(("a", "b"))])
async def test_openai_dialect_rejects_regex_and_choices_before_sending(spec: RegexOutput | ChoiceOutput) -> None:
    server = FakeOpenAIServer(["never"])
    async with make(server, "openai") as client:
        with pytest.raises(UnsupportedConstraintError) as info:
            await client.parse("x", spec)
    assert server.calls == 0
    assert "vllm" in str(info.value) and "llama_cpp" in str(info.value)


async def test_complete_with_output_spec_also_rejects_unsupported() -> None:
    server = FakeOpenAIServer(["never"])
    async with make(server, "openai") as client:
        with pytest.raises(UnsupportedConstraintError):
            await client.complete(ChatRequest.of("x", output=ChoiceOutput(("a",))))
    assert server.calls == 0


@pytest.mark.parametrize("dialect", ["llama_cpp", "vllm"])
def test_lookarounds_and_backreferences_are_unsupported_everywhere(dialect: Dialect) -> None:
    for pattern in (r"(?=a)a", r"(a)\1", r"(?<!b)a"):
        with pytest.raises(UnsupportedConstraintError, match="lookaround or a backreference"):
            constraint_body(RegexOutput(pattern), dialect)


LLAMA_CPP_PATTERNS = [
    ("^(yes|no)$", "^((yes|no))$"),
    ("yes|no", "^(yes|no)$"),
    (r"[^0-9,a-c]{1,3}[\x30-\x39\]\[^-]{2}", r"^([^0-9,a-c]{1,3}[\x30-\x39\]\[^-]{2})$"),
    (r'say "hi"\\\(\n', r'^(say "hi"\\\(\n)$'),
    ("é{2,3}ü{,3}.{0,2}", "^(é{2,3}ü{,3}.{0,2})$"),
    ("", "^()$"),
]


@pytest.mark.parametrize(("pattern", "sent"), LLAMA_CPP_PATTERNS)
def test_regex_for_llama_cpp_is_anchored_and_grouped(pattern: str, sent: str) -> None:
    # tests/test_client_real.py sends these to a real llama-cpp-python 0.3.36 server, which takes them
    schema = {"type": "string", "pattern": sent}
    assert constraint_body(RegexOutput(pattern), "llama_cpp") == {
        "response_format": {"type": "json_object", "schema": schema}
    }


def test_choices_gbnf_escapes_quotes_and_non_ascii() -> None:
    assert choices_gbnf(("a", 'say "x"', "naïve", "日")) == 'root ::= "a" | "say \\"x\\"" | "na\\xEFve" | "\\u65E5"\n'


@pytest.mark.parametrize(
    ("pattern", "what"),
    [
        (r"\d{4}", r"'\\\\d'"),
        (r"[0-9]\.[0-9]", r"'\\\\\.'"),  # this one made a grammar that killed the server
        (r"\bword", r"'\\\\b'"),
        (r"(?:ab)+", r"'\(\?'"),
        (r"(?i)yes", r"'\(\?'"),
        (r"x+?", r"'\+\?'"),
        (r"\x41", r"'\\\\x'"),
        (r"[\d.]", r"'\[\\\\'"),
        (r"a$b", r"'\$b'"),
    ],
)
def test_regex_that_llama_cpp_mistranslates_is_unsupported_there(pattern: str, what: str) -> None:
    with pytest.raises(UnsupportedConstraintError, match=rf"has {what}, which llama.cpp.*write \\d as \[0-9\]"):
        constraint_body(RegexOutput(pattern), "llama_cpp")
    assert constraint_body(RegexOutput(pattern), "vllm")  # vLLM takes it


@pytest.mark.parametrize("pattern", [r"^\d+$", r"[0-9]+", r"^a\w$", r"^[0-9]\.[0-9]$", "^a|b$"])
def test_llama_cpp_refuses_schema_patterns_its_converter_mistranslates(pattern: str) -> None:
    class Code(BaseModel):
        code: str = Field(pattern=pattern)

    with pytest.raises(UnsupportedConstraintError, match=r"pattern at \$\.properties\.code .*write \\d as \[0-9\]"):
        constraint_body(JsonOutput.of(Code), "llama_cpp")
    assert "response_format" in constraint_body(JsonOutput.of(Code), "vllm")


def test_llama_cpp_accepts_anchored_plain_schema_patterns() -> None:
    class Code(BaseModel):
        code: str = Field(pattern=r"^[0-9]{3}$")

    body = constraint_body(JsonOutput.of(Code), "llama_cpp")
    assert body["response_format"]["schema"]["properties"]["code"]["pattern"] == "^[0-9]{3}$"


def test_invalid_regex_and_empty_choices_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="not a valid regex"):
        constraint_body(RegexOutput("(unclosed"), "vllm")
    with pytest.raises(ConfigError, match="no choices"):
        constraint_body(ChoiceOutput(()), "vllm")


def test_anchors_are_stripped_for_vllm_but_an_escaped_dollar_is_kept() -> None:
    assert constraint_body(RegexOutput(r"^cost \$$"), "vllm") == {"structured_outputs": {"regex": r"cost \$"}}
    assert constraint_body(RegexOutput(r"cost \$"), "vllm") == {"structured_outputs": {"regex": r"cost \$"}}


# --- truncated and invalid output ---------------------------------------------------------------


async def test_truncated_output_is_retried_then_succeeds() -> None:
    server = FakeOpenAIServer(
        [
            FakeResponse('{"name": "Paris", "population": 21000000000', finish_reason="length", usage=(10, 64)),
            FakeResponse('{"name": "Paris", "population": 2100000}', usage=(10, 12)),
        ]
    )
    async with make(server, "llama_cpp") as client:
        done = await client.complete(ChatRequest.of("city?", output=JsonOutput.of(City)))
    assert done.parsed == City(name="Paris", population=2_100_000)
    assert done.usage == Usage(2, 20, 76)  # both attempts are paid for
    assert done.meta["structured_attempts"] == 2
    assert server.calls == 2


async def test_length_is_a_failure_even_when_the_prefix_parses() -> None:
    # an unbounded number cut off at max_tokens is still a valid number: it must not count as an answer
    server = FakeOpenAIServer([FakeResponse("123456789", finish_reason="length")], repeat_last=True)
    async with make(server, "vllm") as client:
        with pytest.raises(StructuredOutputError) as info:
            await client.parse("a number", int)
    err = info.value
    assert err.raw_text == "123456789" and err.finish_reason == "length" and err.attempts == 3
    assert "max_tokens" in str(err)
    assert server.calls == 3


async def test_invalid_output_retried_within_bound_then_error_with_raw_text() -> None:
    server = FakeOpenAIServer(['{"name": "Paris"}'], repeat_last=True)
    async with make(server, "llama_cpp", structured_retries=1) as client:
        with pytest.raises(StructuredOutputError) as info:
            await client.parse("city?", City)
    assert server.calls == 2
    assert info.value.raw_text == '{"name": "Paris"}'
    assert info.value.attempts == 2
    assert "population" in str(info.value)
    usage = info.value.usage
    assert usage is not None and usage.requests == 2 and usage.completion_tokens > 0  # both attempts were paid for


async def test_structured_retries_per_call_overrides_the_client() -> None:
    server = FakeOpenAIServer(["not json"], repeat_last=True)
    async with make(server, "vllm", structured_retries=5) as client:
        with pytest.raises(StructuredOutputError, match="not valid JSON"):
            await client.parse("x", City, structured_retries=0)
    assert server.calls == 1


async def test_invalid_choice_and_regex_are_retried() -> None:
    server = FakeOpenAIServer(["maybe", "yes", "abc", "42"])
    async with make(server, "vllm") as client:
        assert await client.parse("x", ChoiceOutput(("yes", "no"))) == "yes"
        assert await client.parse("x", RegexOutput(r"\d+")) == "42"
    assert server.calls == 4


async def test_surrounding_whitespace_is_tolerated_for_choices_and_regex() -> None:
    server = FakeOpenAIServer([" yes\n", "  42 "])
    async with make(server, "vllm") as client:
        assert await client.parse("x", ChoiceOutput(("yes", "no"))) == "yes"
        assert await client.parse("x", RegexOutput(r"\d+")) == "42"


async def test_plain_chat_is_not_validated_or_retried() -> None:
    server = FakeOpenAIServer([FakeResponse("cut", finish_reason="length")])
    async with make(server, "llama_cpp") as client:
        done = await client.chat("x")
    assert done.text == "cut" and done.finish_reason == "length" and server.calls == 1


# --- output types --------------------------------------------------------------------------------


async def test_enum_becomes_choices_and_returns_the_member() -> None:
    server = FakeOpenAIServer(["blue"])
    async with make(server, "vllm") as client:
        assert await client.parse("x", Colour) is Colour.BLUE
    assert server.requests[0]["structured_outputs"] == {"choice": ["red", "blue"]}


async def test_other_types_use_pydantic_schema_and_validation() -> None:
    server = FakeOpenAIServer(['["a", "b"]', '{"x": 1}'])
    async with make(server, "llama_cpp") as client:
        assert await client.parse("x", list[str]) == ["a", "b"]
        assert await client.parse("x", dict[str, int]) == {"x": 1}
    assert server.requests[0]["response_format"] == {
        "type": "json_object",
        "schema": {"type": "array", "items": {"type": "string"}},
    }


async def test_json_output_without_model_checks_the_schema() -> None:
    schema = {"type": "object", "properties": {"n": {"type": "integer", "maximum": 10}}, "required": ["n"]}
    server = FakeOpenAIServer(['{"n": 99}', '{"m": 1}', '{"n": 3}'])
    async with make(server, "vllm") as client:
        done = await client.complete(ChatRequest.of("x", output=JsonOutput(schema)))
    assert done.parsed == {"n": 3}
    assert server.calls == 3


def test_unusable_output_type_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="cannot build an output constraint"):
        structured_for(object())


def test_parse_refuses_output_keyword() -> None:
    client = ModelClient("http://fake.test/v1", "m")
    with pytest.raises(ConfigError, match="output_type"):
        import asyncio

        asyncio.run(client.parse("x", City, output=JsonOutput(CITY_SCHEMA)))


def test_schema_problem_is_jsonschema_validation() -> None:
    schema = {
        "$defs": {"P": {"type": "object", "properties": {"age": {"type": "integer", "minimum": 0}}}},
        "type": "object",
        "properties": {
            "people": {"type": "array", "items": {"$ref": "#/$defs/P"}, "maxItems": 2},
            "tag": {"anyOf": [{"type": "string", "maxLength": 3}, {"type": "null"}]},
            "kind": {"enum": ["a", "b"]},
            "n": {"oneOf": [{"type": "integer"}, {"type": "number"}]},
        },
        "required": ["people"],
        "additionalProperties": False,
    }
    assert schema_problem({"people": [{"age": 3}], "tag": None, "kind": "a", "n": 1.5}, schema) is None
    assert schema_problem({}, schema) == "$: 'people' is a required property"
    assert schema_problem({"people": [{"age": -1}]}, schema) == "$.people[0].age: -1 is less than the minimum of 0"
    assert "too long" in (schema_problem({"people": [{}, {}, {}]}, schema) or "")
    assert "$.tag: 'long' is too long" == schema_problem({"people": [], "tag": "long"}, schema)
    assert "is not one of ['a', 'b']" in (schema_problem({"people": [], "kind": "c"}, schema) or "")
    assert "'extra' was unexpected" in (schema_problem({"people": [], "extra": 1}, schema) or "")
    assert "True is not of type 'integer'" in (schema_problem({"people": [{"age": True}]}, schema) or "")
    # oneOf is not anyOf: 2 is an integer and a number, so it fits both alternatives and fails
    assert "is valid under each of" in (schema_problem({"people": [], "n": 2}, schema) or "")


def test_a_json_output_schema_that_is_no_json_schema_is_refused_before_sending() -> None:
    with pytest.raises(ConfigError, match=r"not a valid JSON schema .*at \$\.type"):
        constraint_body(JsonOutput({"type": "integr"}), "vllm")
