"""Property tests: the wire parsers survive any JSON a server might send, and Retry-After never goes negative."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from agentflow._exceptions import BadResponseError
from agentflow._wire import parse_chat, parse_retry_after, parse_text_completion

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=12,
)
keys = st.sampled_from(["choices", "message", "content", "text", "logprobs", "usage", "finish_reason", "tokens"])
choice_like = st.dictionaries(keys, json_values, max_size=5)
bodies = json_values | st.fixed_dictionaries(
    {"choices": st.lists(choice_like, max_size=2)}, optional={"usage": json_values}
)


@given(bodies, st.integers(min_value=0, max_value=5))
def test_parsers_return_a_completion_or_raise_bad_response(body: Any, top_k: int) -> None:
    json.dumps(body)  # it is a JSON value
    for parse in (parse_chat, parse_text_completion):
        try:
            out = parse(body, "http://x/v1", top_logprobs=top_k)
        except BadResponseError as exc:
            assert "http://x/v1" in str(exc)
            continue
        assert isinstance(out.text, str)
        assert out.usage.requests == 1 and out.usage.prompt_tokens >= 0 and out.usage.completion_tokens >= 0
        for token in out.logprobs or ():
            assert isinstance(token.token, str) and len(token.top) <= top_k


@given(st.text(max_size=40), st.floats(min_value=0, max_value=4e9))
def test_retry_after_is_none_or_not_negative(value: str, now: float) -> None:
    seconds = parse_retry_after(value, now)
    assert seconds is None or seconds >= 0
