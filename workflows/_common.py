"""What every ready-made workflow shares: the question state, its dependencies, prompts, answer parsing.

Prompts put the long, shared part first (instructions, then paragraphs) and the question last, so a
server's prefix cache reuses the paragraphs across the calls one question makes. Outputs are short.

The final state records the evidence a cascade decides on (`QAState.signals()`): the agreement share
of self-consistency's samples, the verifier's P(yes), and the logprobs of the final answer's tokens
(when the model returns them: `QADeps(logprobs=1)` asks for them; the default sends no such field).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated

from pydantic import BaseModel, ConfigDict

from agentflow import (
    DEFAULT_ANSWER_TOKENS,
    DEFAULT_REASONING_TOKENS,
    Append,
    Budget,
    ChatRequest,
    Completion,
    Message,
    Model,
    Signals,
)
from agentflow.eval import Paragraph

__all__ = [
    "ANSWER_RULES",
    "QADeps",
    "QAState",
    "Rule",
    "answer_logprobs",
    "answer_request",
    "as_asked",
    "ask",
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
    retrieval step chose fewer); `notes` collects intermediate findings (samples, sub-answers, feedback).

    Evidence about the final answer: `agreement` (share of samples behind it), `verifier_p_yes` (a
    verifier model's P(yes) for it), `answer_logprobs` (its tokens' logprobs, when the model returned
    them), `retrieval_scores` (the scores of the paragraphs read, when the retrieval step records them)."""

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
    agreement: float | None = None
    verifier_p_yes: float | None = None
    answer_logprobs: list[float] | None = None
    sample_logprobs: Annotated[list[list[float]], Append()] = []
    retrieval_scores: list[float] | None = None

    def signals(self) -> Signals:
        """What this state tells about its answer, for a cascade's confidence (`agentflow.Signals`)."""
        paras = self.context if self.context is not None else self.paragraphs
        return Signals(
            question=self.question,
            answer=self.answer,
            token_logprobs=tuple(self.answer_logprobs or ()),
            agreement=self.agreement,
            samples=len(self.samples),
            verifier_p_yes=self.verifier_p_yes,
            accepted=self.accepted,
            retrieval_scores=tuple(self.retrieval_scores or ()),
            context="\n".join(p.text for p in paras),
        )


@dataclass(frozen=True, slots=True)
class QADeps:
    """What the nodes call. `model` may be a plain model or a Router (a router is a model too).

    `logprobs`: how many top logprobs to ask the answering model for (0, the default, asks for none and
    leaves requests as they were; 1 is what a router with `TokenProb` asks, so both share cache entries)."""

    model: Model
    verifier: Model | None = None
    rule: Rule | None = None
    budget: Budget | None = None
    max_tokens: int = DEFAULT_ANSWER_TOKENS
    reasoning_tokens: int = DEFAULT_REASONING_TOKENS
    logprobs: int = 0


async def ask(deps: QADeps, request: ChatRequest) -> Completion:
    """Ask `deps.model`, with the logprobs `deps.logprobs` asks for (none by default: the request as is)."""
    return await deps.model.complete(as_asked(deps, request))


def as_asked(deps: QADeps, request: ChatRequest) -> ChatRequest:
    """`request` with the logprobs `deps.logprobs` asks for (none by default: the request as is)."""
    if deps.logprobs > 0:
        request = request.with_(logprobs=True, top_logprobs=max(request.top_logprobs, deps.logprobs))
    return request


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


def answer_logprobs(completion: Completion, answer: str) -> list[float] | None:
    """The logprobs of the tokens that spell `answer` in the completion (the last place it occurs), so
    a reasoning chain before 'Answer:' is not scored; all tokens when it cannot be located; None
    without logprobs."""
    lps = completion.logprobs
    if not lps:
        return None
    text = completion.text
    start = text.rfind(answer) if answer else -1
    if start < 0 or "".join(t.token for t in lps) != text:
        return [t.logprob for t in lps]
    end = start + len(answer)
    out: list[float] = []
    pos = 0
    for t in lps:
        if pos < end and pos + len(t.token) > start:
            out.append(t.logprob)
        pos += len(t.token)
    return out or [t.logprob for t in lps]


def finished(completion: Completion) -> dict[str, object]:
    """The state update for a model's final answer (carrying the router's confidence and degradation,
    and the answer's token logprobs when the model returned them)."""
    score = completion.meta.get("confidence")
    answer = clean_answer(completion.text)
    return {
        "answer": answer,
        "confidence": score if isinstance(score, float) else None,
        "degraded": bool(completion.meta.get("degraded", False)),
        "answer_logprobs": answer_logprobs(completion, answer),
    }
