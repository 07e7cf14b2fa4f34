"""Structured output on a real llama.cpp server (llama-cpp-python 0.3.36, SmolLM2-135M): what the fakes cannot prove.

A regex goes to llama.cpp as the JSON schema of a string, which the server turns into its own grammar: every
pattern agentflow lets through must be one the server takes (a grammar it cannot parse kills its process), and
the match it writes between quotes must come back matched. A choice stays a GBNF grammar, so its first token is
the choice itself. Skipped (saying how to enable them) without `pip install 'agentflow[local,smoke-model]'`.
"""

from __future__ import annotations

import re
from typing import Any

import pytest
from test_structured import LLAMA_CPP_PATTERNS

from agentflow import ChatRequest, ChoiceOutput, RegexOutput

pytestmark = pytest.mark.real_model


async def test_a_regex_is_enforced_through_a_string_schema(smoke_client: Any) -> None:
    value = await smoke_client.parse("Give a date.", RegexOutput(r"[0-9]{4}-[0-9]{2}-[0-9]{2}"), max_tokens=16)
    assert re.fullmatch(r"\d{4}-\d{2}-\d{2}", value)


@pytest.mark.parametrize(("pattern", "sent"), LLAMA_CPP_PATTERNS)
async def test_every_pattern_sent_is_taken_and_its_match_comes_back(smoke_client: Any, pattern: str, sent: str) -> None:
    value = await smoke_client.parse("Answer.", RegexOutput(pattern), max_tokens=24, structured_retries=0)
    assert re.fullmatch(pattern, value), value
    assert (await smoke_client.chat("Still there?", max_tokens=2)).text is not None  # the server survived


async def test_a_choice_is_a_grammar_whose_first_token_is_the_choice(smoke_client: Any) -> None:
    # what a Verifier sends: two tokens at most, P(yes) read from the first one
    request = ChatRequest.of(
        "Is the sky blue?", max_tokens=2, logprobs=True, top_logprobs=3, output=ChoiceOutput(("yes", "no"))
    )
    done = await smoke_client.complete(request)
    assert done.parsed in ("yes", "no")
    assert done.logprobs and done.logprobs[0].token.strip() in ("yes", "no", "y", "n", "ye")
