r"""Structured output: output types -> constraints -> each server's own dialect -> validated values.

A caller asks for a pydantic model, a `Literal[...]` or `Enum` of strings (-> a choice), any other type
pydantic can describe (`int`, `list[str]`, a TypedDict: -> a JSON schema), or an explicit `JsonOutput`,
`RegexOutput` or `ChoiceOutput`. The server is asked to constrain decoding in its own dialect:

- JSON: "openai" and "vllm" get `response_format: {"type": "json_schema", "json_schema": {name, schema}}`;
  "llama_cpp" gets `response_format: {"type": "json_object", "schema": ...}`.
- regex: "vllm" gets `structured_outputs: {"regex": ...}` (vLLM >= 0.12); "llama_cpp" gets `response_format:
  {"type": "json_object", "schema": {"type": "string", "pattern": "^(...)$"}}`: llama.cpp turns the pattern into
  its own grammar and writes the match between quotes (unescaped: `"say "hi""`), which are taken off again;
  "openai" cannot.
- choices: "vllm" gets `structured_outputs: {"choice": [...]}` (vLLM >= 0.12); "llama_cpp" gets the GBNF
  grammar `root ::= "a" | "b"` (not a JSON enum: the answer's first token is then the choice itself, whose
  probability a `Verifier` reads, and "yes" fits in max_tokens=2 where '"yes"' does not); "openai" cannot.

llama.cpp's schema-to-grammar converter (llama-cpp-python 0.3.36, checked on the real server) reads only part
of the regex syntax: an escape other than \n \r \t \\ \" and those of ()[]{}|*+? is mistranslated or, like
`\.` or `\d`, makes a grammar the server cannot parse, which killed its process; `(?:`, or a pattern without
^...$, makes it fall back to any JSON. So a pattern (of a RegexOutput or inside a JSON schema) outside that
syntax raises UnsupportedConstraintError naming the rewrite (`[0-9]` for `\d`, `[.]` for `\.`, ...).

Never sent to llama.cpp: `json_schema` response_format (HTTP 500), `guided_json` and `structured_outputs`
(silently ignored). Nothing is ever silently dropped: what a dialect cannot honour raises
UnsupportedConstraintError naming a dialect that can.

Every answer is then validated here (pydantic, `re.fullmatch`, membership, or jsonschema for a bare JSON
schema), and an answer cut off at max_tokens (`finish_reason == "length"`) is a failure even when it happens to
parse: an unbounded number in a schema lets a small model write digits until max_tokens runs out, and the
truncated prefix is still a valid number. Bound numbers in schemas (`Field(ge=..., le=...)`) and give max_tokens
room.

outlines is not used: pydantic already validates JSON, `re` validates a regex, turning a `Literal`/`Enum` into
choices is a few lines, and the servers build their own grammars; it would add a heavy dependency for none of
what is needed here.
"""

from __future__ import annotations

import enum
import json
import re
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, PydanticSchemaGenerationError, TypeAdapter, ValidationError

from ._exceptions import ConfigError, UnsupportedConstraintError
from ._types import ChoiceOutput, JsonOutput, OutputSpec, RegexOutput

__all__ = [
    "DIALECTS",
    "Dialect",
    "InvalidOutput",
    "Structured",
    "choices_gbnf",
    "constraint_body",
    "schema_problem",
    "structured_for",
    "validate_output",
]

Dialect = Literal["openai", "llama_cpp", "vllm"]
DIALECTS: tuple[Dialect, ...] = ("openai", "llama_cpp", "vllm")


class InvalidOutput(Exception):
    """One structured answer that failed validation (internal: retried, then StructuredOutputError)."""


@dataclass(frozen=True, slots=True)
class Structured:
    """A resolved output request: the constraint to send, and how to turn the validated value into the type."""

    spec: OutputSpec
    convert: Callable[[Any], Any] | None = None


def structured_for(output_type: object) -> Structured:
    """Resolve what `parse(..., output_type)` was given into a constraint (and a converter to the type)."""
    if isinstance(output_type, JsonOutput | RegexOutput | ChoiceOutput):
        return Structured(output_type)
    if isinstance(output_type, type) and issubclass(output_type, BaseModel):
        return Structured(JsonOutput.of(output_type))
    if isinstance(output_type, type) and issubclass(output_type, enum.Enum):
        members = {str(m.value): m for m in output_type}
        if not members:
            raise ConfigError(f"enum {output_type.__name__} has no members: give it at least one")
        return Structured(ChoiceOutput(tuple(members)), members.__getitem__)
    if typing.get_origin(output_type) is Literal:
        values = typing.get_args(output_type)
        if values and all(isinstance(v, str) for v in values):
            return Structured(ChoiceOutput(tuple(values)))
    try:
        adapter: TypeAdapter[Any] = TypeAdapter(typing.cast(Any, output_type))
        schema = adapter.json_schema()
    except (PydanticSchemaGenerationError, TypeError) as exc:
        raise ConfigError(
            f"cannot build an output constraint for {output_type!r} ({exc}): pass a pydantic model, a Literal or "
            "Enum of strings, a type pydantic can describe, or a JsonOutput / RegexOutput / ChoiceOutput"
        ) from None
    return Structured(JsonOutput(schema), adapter.validate_python)


# --- request side -------------------------------------------------------------------------------


def _schema_name(schema: dict[str, Any]) -> str:
    title = schema.get("title")
    name = re.sub(r"[^A-Za-z0-9_-]", "_", title)[:64] if isinstance(title, str) and title else ""
    return name or "output"


def _unsupported(kind: str, dialect: str) -> UnsupportedConstraintError:
    return UnsupportedConstraintError(
        f"the {dialect!r} dialect (a generic OpenAI-compatible server) cannot constrain output to {kind}, and "
        "agentflow will not fall back to unconstrained text: use dialect='vllm' or dialect='llama_cpp' if the "
        "server is one of those, or ask for JSON (a pydantic model or JsonOutput) instead"
    )


def _check_regex(pattern: str, dialect: Dialect) -> None:
    try:
        re.compile(pattern)
    except re.error as exc:
        raise ConfigError(f"RegexOutput pattern {pattern!r} is not a valid regex ({exc}): fix the pattern") from None
    if re.search(r"\(\?<?[=!]|\\[1-9]", pattern):
        raise UnsupportedConstraintError(
            f"RegexOutput pattern {pattern!r} uses a lookaround or a backreference, which no constrained decoder "
            "supports (they need a regular language): rewrite the pattern without them"
        )


def _strip_anchors(pattern: str) -> str:
    core = pattern[1:] if pattern.startswith("^") else pattern
    if core.endswith("$"):
        backslashes = len(core[:-1]) - len(core[:-1].rstrip("\\"))
        if backslashes % 2 == 0:
            core = core[:-1]
    return core


# What llama.cpp's JSON-schema-to-grammar converter (llama-cpp-python 0.3.36's `SchemaConverter._visit_pattern`)
# translates faithfully, one token at a time. It copies a backslash and the next character into the grammar as
# they are, so any other escape (\d, \., \-, \x41 outside [...]) is either mistranslated or an escape the grammar
# parser does not know, which killed the server; `(?` and a missing ^...$ make it fall back to any JSON at all.
_CLASS_ITEM = r"[^\\\]]|\\[\\\]\[nrt]|\\x[0-9A-Fa-f]{2}|\\u[0-9A-Fa-f]{4}"
_LLAMA_CPP_TOKEN = re.compile(
    r'[^\\^$\[\](){}|.*+?]|\\[\[\](){}|*+?\\"nrt]'  # a character, or an escape both read alike
    rf"|\[\^?(?:{_CLASS_ITEM})+\]"  # a class of characters, ranges and those escapes
    r"|\((?!\?)|\)|\||\.|[*+?](?!\?)|\{[0-9]*(?:,[0-9]*)?\}(?!\?)"  # groups, alternatives, greedy repeats
)


def _llama_cpp_pattern_problem(pattern: str) -> str | None:
    """Why llama.cpp's converter cannot take the JSON-schema `pattern` as it is (None when it can)."""
    if not (pattern.startswith("^") and pattern.endswith("$")):
        return "is not anchored with ^...$"
    core, pos, depth = pattern[1:-1], 0, 0
    while pos < len(core):
        token = _LLAMA_CPP_TOKEN.match(core, pos)
        if token is None:
            return f"has {core[pos : pos + 2]!r}"
        depth += {"(": 1, ")": -1}.get(token.group(), 0)
        if token.group() == "|" and depth == 0:
            return "has a | outside (...)"
        pos = token.end()
    return None


def _llama_cpp_pattern_error(pattern: str, problem: str, where: str) -> UnsupportedConstraintError:
    return UnsupportedConstraintError(
        f"{where} {pattern!r} {problem}, which llama.cpp's schema-to-grammar converter mistranslates (it reads "
        'characters, [...] classes, (...) groups, | . * + ? {m,n}, and the escapes \\n \\r \\t \\\\ \\" and of '
        "()[]{}|*+?): write \\d as [0-9], \\w as [0-9A-Za-z_], \\s as [ \\t\\n], \\. as [.], (?:...) as (...), "
        "drop a lazy ?, anchor a JSON-schema pattern as ^(...)$, or use a vLLM server (dialect='vllm')"
    )


def _check_llama_cpp_schema(schema: Any, path: str = "$") -> None:
    """Refuse schema patterns that llama.cpp's converter mistranslates (or crashes the server on)."""
    if isinstance(schema, dict):
        pattern = schema.get("pattern")
        if isinstance(pattern, str):
            problem = _llama_cpp_pattern_problem(pattern)
            if problem is not None:
                raise _llama_cpp_pattern_error(pattern, problem, f"the JSON schema's pattern at {path}")
        for key, value in schema.items():
            if key != "pattern":
                _check_llama_cpp_schema(value, f"{path}.{key}")
    elif isinstance(schema, list):
        for i, value in enumerate(schema):
            _check_llama_cpp_schema(value, f"{path}[{i}]")


def _llama_cpp_regex_schema(pattern: str) -> dict[str, Any]:
    """A RegexOutput as the JSON schema of a string, for llama.cpp to turn into its own grammar."""
    anchored = f"^({_strip_anchors(pattern)})$"
    problem = _llama_cpp_pattern_problem(anchored)
    if problem is not None:
        raise _llama_cpp_pattern_error(pattern, problem, "RegexOutput pattern")
    return {"type": "string", "pattern": anchored}


def gbnf_literal(text: str) -> str:
    """A GBNF string literal for `text`."""
    return '"' + "".join(_gbnf_char(c) for c in text) + '"'


def _gbnf_char(c: str) -> str:
    # llama.cpp's grammar parser knows only the escapes \\ \" \[ \] \n \r \t \xHH \uHHHH \UHHHHHHHH, and an
    # unknown escape (or any grammar that does not parse) crashed the llama-cpp-python 0.3.36 server: so
    # everything but printable ASCII goes out as a hex escape.
    code = ord(c)
    if c in '"\\':
        return "\\" + c
    if 0x20 <= code < 0x7F:
        return c
    if code <= 0xFF:
        return f"\\x{code:02X}"
    if code <= 0xFFFF:
        return f"\\u{code:04X}"
    return f"\\U{code:08X}"


def choices_gbnf(choices: tuple[str, ...]) -> str:
    """A GBNF grammar whose language is exactly `choices`."""
    return "root ::= " + " | ".join(gbnf_literal(c) for c in choices) + "\n"


def constraint_body(spec: OutputSpec, dialect: Dialect) -> dict[str, Any]:
    """The request-body fields that ask `dialect` to constrain decoding to `spec`."""
    if dialect not in DIALECTS:
        raise ConfigError(f"unknown dialect {dialect!r}: use one of {', '.join(DIALECTS)}")
    if isinstance(spec, ChoiceOutput) and not spec.choices:
        raise ConfigError("ChoiceOutput has no choices: give it at least one")
    if isinstance(spec, RegexOutput):
        _check_regex(spec.pattern, dialect)
    if isinstance(spec, JsonOutput) and spec.model is None:
        _check_schema(spec.schema)
    if dialect == "llama_cpp":
        if isinstance(spec, JsonOutput):
            _check_llama_cpp_schema(spec.schema)
            return {"response_format": {"type": "json_object", "schema": spec.schema}}
        if isinstance(spec, RegexOutput):
            return {"response_format": {"type": "json_object", "schema": _llama_cpp_regex_schema(spec.pattern)}}
        return {"grammar": choices_gbnf(spec.choices)}
    if isinstance(spec, JsonOutput):
        return {
            "response_format": {
                "type": "json_schema",
                "json_schema": {"name": _schema_name(spec.schema), "schema": spec.schema},
            }
        }
    if dialect == "openai":
        raise _unsupported("a regex" if isinstance(spec, RegexOutput) else "a list of choices", dialect)
    if isinstance(spec, RegexOutput):
        return {"structured_outputs": {"regex": _strip_anchors(spec.pattern)}}
    return {"structured_outputs": {"choice": list(spec.choices)}}


# --- response side ------------------------------------------------------------------------------


def validate_output(
    spec: OutputSpec,
    text: str,
    *,
    dialect: Dialect,
    finish_reason: str | None,
    convert: Callable[[Any], Any] | None = None,
) -> Any:
    """The validated value of one answer, or InvalidOutput saying why not."""
    if finish_reason == "length":
        raise InvalidOutput(
            "the answer was cut off at max_tokens (finish_reason 'length'): raise max_tokens, or bound the "
            "schema (numbers with ge/le, strings with max_length, lists with max_length)"
        )
    value: Any
    if isinstance(spec, JsonOutput):
        try:
            value = _validate_json(spec, text)
        except RecursionError:  # json.loads, pydantic and jsonschema recurse once per level of the answer
            raise InvalidOutput(
                "is nested too deeply to read or validate: ask for a flatter shape in the prompt and the schema"
            ) from None
    elif isinstance(spec, RegexOutput):
        candidates: tuple[str, ...] = (text, text.strip())
        if dialect == "llama_cpp":  # the match, as llama.cpp's grammar writes it: between quotes, unescaped
            quoted = text.strip()
            candidates = (quoted[1:-1],) if len(quoted) > 1 and quoted[0] == quoted[-1] == '"' else ()
        value = next((c for c in candidates if re.fullmatch(spec.pattern, c)), None)
        if value is None:
            raise InvalidOutput(f"{text[:80]!r} does not match the regex {spec.pattern!r}")
    else:
        value = next((c for c in (text, text.strip()) if c in spec.choices), None)
        if value is None:
            raise InvalidOutput(f"{text[:80]!r} is not one of {list(spec.choices)}")
    if convert is not None:
        try:
            value = convert(value)
        except RecursionError:
            raise InvalidOutput("is nested too deeply to convert to the requested type") from None
        except (ValidationError, ValueError, KeyError) as exc:
            msg = _short(exc) if isinstance(exc, ValidationError) else str(exc)
            raise InvalidOutput(f"does not convert to the requested type: {msg}") from None
    return value


def _validate_json(spec: JsonOutput, text: str) -> Any:
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise InvalidOutput(f"not valid JSON ({exc})") from None
    if spec.model is not None:
        try:
            return spec.model.model_validate(value)
        except ValidationError as exc:
            raise InvalidOutput(f"does not fit {spec.model.__name__}: {_short(exc)}") from None
    problem = schema_problem(value, spec.schema)
    if problem is not None:
        raise InvalidOutput(f"does not fit the JSON schema: {problem}")
    return value


def _short(exc: ValidationError) -> str:
    errs = exc.errors()
    parts = [f"{'.'.join(str(p) for p in e['loc']) or '(root)'}: {e['msg']}" for e in errs[:3]]
    more = f" (+{len(errs) - 3} more)" if len(errs) > 3 else ""
    return "; ".join(parts) + more


def _validator(schema: dict[str, Any]) -> Any:
    """A jsonschema validator for `schema` (of the draft its `$schema` names; 2020-12, pydantic's, by default)."""
    import jsonschema  # type: ignore[import-untyped]  # imported when a bare JSON schema is used, not before

    cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)
    return cls(schema)


def _check_schema(schema: dict[str, Any]) -> None:
    """Refuse a JsonOutput schema that is not a JSON schema, before anything is sent."""
    import jsonschema

    try:
        type(_validator(schema)).check_schema(schema)
    except jsonschema.SchemaError as exc:
        raise ConfigError(
            f"JsonOutput's schema is not a valid JSON schema ({exc.message} at {exc.json_path}): fix it, or pass a "
            "pydantic model instead"
        ) from None


def schema_problem(value: Any, schema: dict[str, Any]) -> str | None:
    """The most relevant reason `value` does not fit the JSON schema (jsonschema's validation), or None."""
    import jsonschema

    error = jsonschema.exceptions.best_match(_validator(schema).iter_errors(value))
    return None if error is None else f"{error.json_path}: {error.message}"
