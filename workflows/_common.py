"""What every ready-made workflow shares: the question state, its dependencies, prompts, answer parsing.

Prompts put the long, shared part first (instructions, then paragraphs) and the question last, so a
server's prefix cache reuses the paragraphs across the calls one question makes. Outputs are short.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated

from pydantic import BaseModel, ConfigDict

from agentflow import Append, Budget, ChatRequest, Completion, Message, Model
from agentflow.eval import Paragraph

__all__ = [
    "ANSWER_RULES",
    "QADeps",
    "QAState",
    "Rule",
    "answer_request",
    "clean_answer",
    "context_block",
    "finished",
    "short_span_rule",
]

ANSWER_RULES = "Reply with only the answer: a short span (a name, a date, a number, or yes/no), not a sentence."

# A rule verifier: (question, answer) -> None when accepted, or feedback saying what is wrong.
Rule = Callable[[str, str], str | None]


class QAState(BaseModel):
    """A question on its way to an answer. `context` is what the model reads (all paragraphs unless a
    retrieval step chose fewer); `notes` collects intermediate findings (samples, sub-answers, feedback)."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    question: str
    paragraphs: list[Paragraph] = []
    context: list[Paragraph] | None = None
    answer: str = ""
    samples: Annotated[list[str], Append()] = []
    notes: Annotated[list[str], Append()] = []
    accepted: bool | None = None
    subquestions: list[str] = []
    confidence: float | None = None
    degraded: bool = False


@dataclass(frozen=True, slots=True)
class QADeps:
    """What the nodes call. `model` may be a plain model or a Router (a router is a model too)."""

    model: Model
    verifier: Model | None = None
    rule: Rule | None = None
    budget: Budget | None = None
    max_tokens: int = 32
    reasoning_tokens: int = 160


def context_block(state: QAState) -> str:
    paras = state.context if state.context is not None else state.paragraphs
    return "\n\n".join(f"Title: {p.title}\n{p.text}" for p in paras)


def answer_request(
    state: QAState, instructions: str, *, max_tokens: int, extra: str = "", **params: object
) -> ChatRequest:
    """System instructions, then the paragraphs, then the question: shared prefix first."""
    ctx = context_block(state)
    body = f"{ctx}\n\n" if ctx else ""
    body += f"Question: {state.question}"
    if extra:
        body += f"\n{extra}"
    return ChatRequest.of(
        [Message.system(instructions), Message.user(body + "\nAnswer:")],
        max_tokens=max_tokens,
        **params,
    )


_PREFIX = re.compile(r"^\s*(?:final answer|answer)\s*[:\-]\s*", re.IGNORECASE)


def clean_answer(text: str) -> str:
    """The short answer in a reply: after the last 'Answer:' if any, first line, no trailing period."""
    parts = re.split(r"(?i)\banswer\s*:", text)
    tail = parts[-1] if len(parts) > 1 else text
    line = next((ln for ln in tail.strip().splitlines() if ln.strip()), "")
    line = _PREFIX.sub("", line).strip().strip('"').strip()
    return line[:-1] if line.endswith(".") else line


def short_span_rule(question: str, answer: str) -> str | None:
    """A cheap rule verifier: an answer must be a short, non-empty span."""
    if not answer.strip():
        return "the answer was empty; give a short span"
    if len(answer.split()) > 8:
        return "the answer was a sentence; give only the short span that answers the question"
    return None


def finished(completion: Completion) -> dict[str, object]:
    """The state update for a model's final answer (carrying the router's confidence and degradation)."""
    score = completion.meta.get("confidence")
    return {
        "answer": clean_answer(completion.text),
        "confidence": score if isinstance(score, float) else None,
        "degraded": bool(completion.meta.get("degraded", False)),
    }
