r"""Structured output: output types -> constraints -> each server's own dialect -> validated values.

A caller asks for a pydantic model, a `Literal[...]` or `Enum` of strings (-> a choice), any other type
pydantic can describe (`int`, `list[str]`, a TypedDict: -> a JSON schema), or an explicit `JsonOutput`,
`RegexOutput` or `ChoiceOutput`. The server is asked to constrain decoding in its own dialect:

- JSON: "openai" and "vllm" get `response_format: {"type": "json_schema", "json_schema": {name, schema}}`;
  "llama_cpp" gets `response_format: {"type": "json_object", "schema": ...}`.
- regex: "vllm" gets `structured_outputs: {"regex": ...}` (vLLM >= 0.12); "llama_cpp" gets a GBNF `grammar`
  translated here from the regex as Python's own `re` parser reads it (llama-cpp-python's request models
  have `grammar: Optional[str]`, for chat and text completions alike); "openai" cannot.
- choices: "vllm" gets `structured_outputs: {"choice": [...]}` (vLLM >= 0.12); "llama_cpp" gets the GBNF
  grammar `root ::= "a" | "b"`; "openai" cannot.

Why GBNF and not a JSON-schema string with "pattern" for llama.cpp: llama-cpp-python's schema-to-grammar
converter mistranslates escapes (`-\d{2}` becomes the literal `"-\d-\d"`, `\w+` becomes `" \w"+`), and a
grammar that fails to parse killed the llama-cpp-python 0.3.36 server process. For the same reason a JSON
schema sent to llama.cpp may not hold a "pattern" with a backslash class (`\d`, `\w`, `\s`) or an unanchored
pattern: that raises UnsupportedConstraintError (write `[0-9]` and anchor with ^...$).

Never sent to llama.cpp: `json_schema` response_format (HTTP 500), `guided_json` and `structured_outputs`
(silently ignored). Nothing is ever silently dropped: what a dialect cannot honour raises
UnsupportedConstraintError naming a dialect that can.

Every answer is then validated here (pydantic, `re.fullmatch`, membership, or a JSON-schema subset), and an
answer cut off at max_tokens (`finish_reason == "length"`) is a failure even when it happens to parse: an
unbounded number in a schema lets a small model write digits until max_tokens runs out, and the truncated
prefix is still a valid number. Bound numbers in schemas (`Field(ge=..., le=...)`) and give max_tokens room.

outlines is not used: pydantic already validates JSON, `re` validates a regex, turning a `Literal`/`Enum` into
choices is a few lines, and outlines has no regex-to-GBNF translation (its regex tooling builds token automata
for its own decoder); it would add a heavy dependency for none of what is needed here.
"""

from __future__ import annotations

import enum
import importlib
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
    "regex_gbnf",
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


def _check_llama_cpp_schema(schema: Any, path: str = "$") -> None:
    """Refuse schema patterns that llama-cpp-python's converter mistranslates (or crashes the server on)."""
    if isinstance(schema, dict):
        pattern = schema.get("pattern")
        if isinstance(pattern, str):
            if not (pattern.startswith("^") and pattern.endswith("$")) or re.search(r"\\[dDwWsSbB]", pattern):
                raise UnsupportedConstraintError(
                    f"the JSON schema has the pattern {pattern!r} at {path}, which llama.cpp's schema-to-grammar "
                    "converter mistranslates (it needs ^...$ anchors and no \\d, \\w or \\s classes): write it "
                    "like '^[0-9]+$', or use a vLLM server (dialect='vllm')"
                )
        for key, value in schema.items():
            if key != "pattern":
                _check_llama_cpp_schema(value, f"{path}.{key}")
    elif isinstance(schema, list):
        for i, value in enumerate(schema):
            _check_llama_cpp_schema(value, f"{path}[{i}]")


def gbnf_literal(text: str) -> str:
    """A GBNF string literal for `text`."""
    return '"' + "".join(_gbnf_char(c, '"\\') for c in text) + '"'


def _gbnf_char(c: str, special: str) -> str:
    # llama.cpp's grammar parser knows only the escapes \\ \" \[ \] \n \r \t \xHH \uHHHH \UHHHHHHHH, and an
    # unknown escape (or any grammar that does not parse) crashed the llama-cpp-python 0.3.36 server: so
    # everything else that could be special ("^", "-" in a class) goes out as a hex escape.
    code = ord(c)
    if c in special and c in '\\"[]':
        return "\\" + c
    if 0x20 <= code < 0x7F and c not in special:
        return c
    if code <= 0xFF:
        return f"\\x{code:02X}"
    if code <= 0xFFFF:
        return f"\\u{code:04X}"
    return f"\\U{code:08X}"


def choices_gbnf(choices: tuple[str, ...]) -> str:
    """A GBNF grammar whose language is exactly `choices`."""
    return "root ::= " + " | ".join(gbnf_literal(c) for c in choices) + "\n"


_CATEGORIES: dict[str, tuple[bool, tuple[tuple[int, int], ...]]] = {
    "CATEGORY_DIGIT": (False, ((48, 57),)),
    "CATEGORY_NOT_DIGIT": (True, ((48, 57),)),
    "CATEGORY_WORD": (False, ((48, 57), (65, 90), (95, 95), (97, 122))),
    "CATEGORY_NOT_WORD": (True, ((48, 57), (65, 90), (95, 95), (97, 122))),
    "CATEGORY_SPACE": (False, ((9, 13), (32, 32))),
    "CATEGORY_NOT_SPACE": (True, ((9, 13), (32, 32))),
}


def regex_gbnf(pattern: str) -> str:
    """A GBNF grammar for the full matches of `pattern` (a regular subset: no lookarounds, backreferences,
    word boundaries or case-insensitivity). Raises UnsupportedConstraintError for what it cannot translate."""
    parser: Any = importlib.import_module("re._parser")
    parsed = parser.parse(pattern)
    flags = int(parsed.state.flags)
    if flags & re.IGNORECASE:
        raise UnsupportedConstraintError(
            f"RegexOutput pattern {pattern!r} is case-insensitive, which agentflow cannot translate into a llama.cpp "
            "grammar: spell the cases out ([Yy]es), or use a vLLM server (dialect='vllm')"
        )
    return "root ::= " + _gbnf_seq(list(parsed), pattern, bool(flags & re.DOTALL)) + "\n"


def _gbnf_seq(items: list[Any], pattern: str, dotall: bool) -> str:
    out: list[str] = []
    run: list[str] = []
    for op, arg in items:
        name = str(op)
        if name == "LITERAL":
            run.append(chr(arg))
            continue
        if run:
            out.append(gbnf_literal("".join(run)))
            run = []
        out.append(_gbnf_item(name, arg, pattern, dotall))
    if run:
        out.append(gbnf_literal("".join(run)))
    out = [o for o in out if o]
    return " ".join(out) if out else '""'


def _gbnf_unsupported(pattern: str, what: str) -> UnsupportedConstraintError:
    return UnsupportedConstraintError(
        f"RegexOutput pattern {pattern!r} uses {what}, which agentflow cannot translate into a llama.cpp grammar: "
        "rewrite the pattern without it, or use a vLLM server (dialect='vllm')"
    )


def _gbnf_item(name: str, arg: Any, pattern: str, dotall: bool) -> str:
    if name == "AT":
        if str(arg) in ("AT_BEGINNING", "AT_BEGINNING_STRING", "AT_END", "AT_END_STRING"):
            return ""  # the answer must match whole anyway
        raise _gbnf_unsupported(pattern, "a word boundary")
    if name == "NOT_LITERAL":
        return "[^" + _gbnf_char(chr(arg), "\\]^-[") + "]"
    if name == "ANY":
        return "[\\U00000000-\\U0010FFFF]" if dotall else "[^\\n]"
    if name == "IN":
        return _gbnf_class(arg, pattern)
    if name == "BRANCH":
        return "(" + " | ".join(_gbnf_seq(list(alt), pattern, dotall) for alt in arg[1]) + ")"
    if name == "SUBPATTERN":
        return "(" + _gbnf_seq(list(arg[3]), pattern, dotall) + ")"
    if name in ("MAX_REPEAT", "MIN_REPEAT"):
        low, high, sub = arg
        inner = "(" + _gbnf_seq(list(sub), pattern, dotall) + ")"
        unbounded = high >= 65535  # sre's MAXREPEAT
        if (low, unbounded) == (0, True):
            return inner + "*"
        if (low, unbounded) == (1, True):
            return inner + "+"
        if (low, high) == (0, 1):
            return inner + "?"
        if unbounded:
            return f"{inner}{{{low},}}"
        return f"{inner}{{{low}}}" if low == high else f"{inner}{{{low},{high}}}"
    what = {
        "GROUPREF": "a backreference",
        "ASSERT": "a lookaround",
        "ASSERT_NOT": "a lookaround",
        "POSSESSIVE_REPEAT": "a possessive repeat",
        "ATOMIC_GROUP": "an atomic group",
    }.get(name, f"the regex construct {name}")
    raise _gbnf_unsupported(pattern, what)


def _gbnf_class(items: list[Any], pattern: str) -> str:
    negate = False
    ranges: list[tuple[int, int]] = []
    for op, arg in items:
        name = str(op)
        if name == "NEGATE":
            negate = True
        elif name == "LITERAL":
            ranges.append((arg, arg))
        elif name == "RANGE":
            ranges.append((arg[0], arg[1]))
        elif name == "CATEGORY" and str(arg) in _CATEGORIES:
            cat_negated, cat_ranges = _CATEGORIES[str(arg)]
            if cat_negated:
                if len(items) != 1 or negate:
                    raise _gbnf_unsupported(pattern, "a negated class (\\D, \\W, \\S) inside [...]")
                negate = True
            ranges.extend(cat_ranges)
        else:
            raise _gbnf_unsupported(pattern, f"the character-class item {name}")
    body = "".join(
        _gbnf_char(chr(lo), "\\]^-[")
        if lo == hi
        else _gbnf_char(chr(lo), "\\]^-[") + "-" + _gbnf_char(chr(hi), "\\]^-[")
        for lo, hi in ranges
    )
    return ("[^" if negate else "[") + body + "]"


def constraint_body(spec: OutputSpec, dialect: Dialect) -> dict[str, Any]:
    """The request-body fields that ask `dialect` to constrain decoding to `spec`."""
    if dialect not in DIALECTS:
        raise ConfigError(f"unknown dialect {dialect!r}: use one of {', '.join(DIALECTS)}")
    if isinstance(spec, ChoiceOutput) and not spec.choices:
        raise ConfigError("ChoiceOutput has no choices: give it at least one")
    if isinstance(spec, RegexOutput):
        _check_regex(spec.pattern, dialect)
    if dialect == "llama_cpp":
        if isinstance(spec, JsonOutput):
            _check_llama_cpp_schema(spec.schema)
            return {"response_format": {"type": "json_object", "schema": spec.schema}}
        if isinstance(spec, RegexOutput):
            return {"grammar": regex_gbnf(spec.pattern)}
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
            value = json.loads(text)
        except ValueError as exc:
            raise InvalidOutput(f"not valid JSON ({exc})") from None
        if spec.model is not None:
            try:
                value = spec.model.model_validate(value)
            except ValidationError as exc:
                raise InvalidOutput(f"does not fit {spec.model.__name__}: {_short(exc)}") from None
        else:
            problem = schema_problem(value, spec.schema)
            if problem is not None:
                raise InvalidOutput(f"does not fit the JSON schema: {problem}")
    else:
        raw = text
        candidates = (raw, raw.strip())
        if isinstance(spec, RegexOutput):
            found = next((c for c in candidates if re.fullmatch(spec.pattern, c)), None)
            if found is None:
                raise InvalidOutput(f"{raw[:80]!r} does not match the regex {spec.pattern!r}")
        else:
            found = next((c for c in candidates if c in spec.choices), None)
            if found is None:
                raise InvalidOutput(f"{raw[:80]!r} is not one of {list(spec.choices)}")
        value = found
    if convert is not None:
        try:
            value = convert(value)
        except (ValidationError, ValueError, KeyError) as exc:
            msg = _short(exc) if isinstance(exc, ValidationError) else str(exc)
            raise InvalidOutput(f"does not convert to the requested type: {msg}") from None
    return value


def _short(exc: ValidationError) -> str:
    errs = exc.errors()
    parts = [f"{'.'.join(str(p) for p in e['loc']) or '(root)'}: {e['msg']}" for e in errs[:3]]
    more = f" (+{len(errs) - 3} more)" if len(errs) > 3 else ""
    return "; ".join(parts) + more


_TYPES: dict[str, Callable[[Any], bool]] = {
    "object": lambda v: isinstance(v, dict),
    "array": lambda v: isinstance(v, list),
    "string": lambda v: isinstance(v, str),
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "number": lambda v: isinstance(v, int | float) and not isinstance(v, bool),
    "boolean": lambda v: isinstance(v, bool),
    "null": lambda v: v is None,
}


def schema_problem(value: Any, schema: Any, root: Any = None, path: str = "$") -> str | None:
    """A subset of JSON-schema validation (for JsonOutput without a model): the first problem, or None.

    Checks $ref (local), anyOf/oneOf/allOf, enum, const, type, properties/required/additionalProperties,
    items, string length and pattern, number bounds, array length. Pass a pydantic model for full validation.
    """
    root = schema if root is None else root
    if not isinstance(schema, dict):
        return None
    ref = schema.get("$ref")
    if isinstance(ref, str) and ref.startswith("#/"):
        target: Any = root
        for part in ref[2:].split("/"):
            target = target.get(part) if isinstance(target, dict) else None
        return schema_problem(value, target, root, path)
    for key in ("anyOf", "oneOf"):
        if isinstance(schema.get(key), list):
            if all(schema_problem(value, s, root, path) is not None for s in schema[key]):
                return f"{path}: matches none of the {key} alternatives"
    for sub in schema.get("allOf", []) if isinstance(schema.get("allOf"), list) else []:
        problem = schema_problem(value, sub, root, path)
        if problem:
            return problem
    if "enum" in schema and value not in schema["enum"]:
        return f"{path}: {value!r} is not one of {schema['enum']}"
    if "const" in schema and value != schema["const"]:
        return f"{path}: {value!r} is not {schema['const']!r}"
    types = schema.get("type")
    if types is not None:
        names = types if isinstance(types, list) else [types]
        if not any(_TYPES.get(t, lambda v: True)(value) for t in names):
            return f"{path}: expected {' or '.join(map(str, names))}, got {type(value).__name__}"
    if isinstance(value, dict):
        raw_props = schema.get("properties")
        props: dict[str, Any] = raw_props if isinstance(raw_props, dict) else {}
        for name in schema.get("required", []):
            if name not in value:
                return f"{path}: missing required property {name!r}"
        if schema.get("additionalProperties") is False:
            extra = sorted(set(value) - set(props))
            if extra:
                return f"{path}: unexpected properties {extra}"
        for name, sub in props.items():
            if name in value:
                problem = schema_problem(value[name], sub, root, f"{path}.{name}")
                if problem:
                    return problem
    if isinstance(value, list):
        if isinstance(schema.get("minItems"), int) and len(value) < schema["minItems"]:
            return f"{path}: fewer than {schema['minItems']} items"
        if isinstance(schema.get("maxItems"), int) and len(value) > schema["maxItems"]:
            return f"{path}: more than {schema['maxItems']} items"
        for i, item in enumerate(value):
            problem = schema_problem(item, schema.get("items"), root, f"{path}[{i}]")
            if problem:
                return problem
    if isinstance(value, str):
        if isinstance(schema.get("minLength"), int) and len(value) < schema["minLength"]:
            return f"{path}: shorter than {schema['minLength']} characters"
        if isinstance(schema.get("maxLength"), int) and len(value) > schema["maxLength"]:
            return f"{path}: longer than {schema['maxLength']} characters"
        if isinstance(schema.get("pattern"), str) and re.search(schema["pattern"], value) is None:
            return f"{path}: {value!r} does not match {schema['pattern']!r}"
    if _TYPES["number"](value):
        low, high = schema.get("minimum"), schema.get("maximum")
        if _TYPES["number"](low) and value < low:
            return f"{path}: {value} is below the minimum {low}"
        if _TYPES["number"](high) and value > high:
            return f"{path}: {value} is above the maximum {high}"
    return None
