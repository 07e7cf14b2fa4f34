"""The one error tree of agentflow.

Every error says what was wrong and how to fix it.

    AgentFlowError
    ├── ConfigError                 bad input from the user: fix the call or the file
    │   ├── UnknownModelError       a model name missing from the catalog
    │   │   └── UncountableModelError  ... put under a FLOPs or dollar limit, which cannot count it
    │   ├── RunConfigMismatchError  an answer store written by a run with other settings
    │   ├── MissingDependencyError  an optional extra is not installed (names the pip command)
    │   └── DatasetError            a dataset file or line that does not parse (names the line)
    ├── ModelError                  a model server call failed (status_code, server_message, retryable)
    │   ├── ServerUnavailableError  nothing answers at that URL (retryable)
    │   │   └── CircuitOpenError    the server failed too often: calls fail fast until its cool-down ends
    │   ├── ModelTimeoutError       the request took longer than its timeout (retryable)
    │   ├── RateLimitedError        HTTP 429, honours Retry-After (retryable)
    │   ├── ServerError             HTTP 5xx (retryable)
    │   ├── RequestRejectedError    any other HTTP 4xx (not retryable)
    │   └── BadResponseError        the server answered with something that is not a completion
    ├── ConfidenceError             an estimator could not score an answer (no logprobs, failed verifier)
    ├── StructuredOutputError       output that stayed truncated or invalid after its retries (holds raw text)
    ├── UnsupportedConstraintError  the server cannot honour the requested output constraint
    ├── ModelFileError              a model file is missing, or its sha256 does not match
    ├── ServingError                a model server could not be started or stopped
    ├── GraphValidationError        a graph that is wrong before anything runs (build time)
    ├── GraphRunError               a graph that went wrong while running
    │   ├── RoutingError            a conditional edge returned an undeclared node
    │   ├── NodeFailedError         a node raised, timed out or ran out of retries (holds what completed)
    │   ├── CycleLimitError         a bounded node reached past max_visits with no on_exhausted
    │   └── CheckpointError         a checkpoint could not be written or read back
    └── BudgetExceeded              a call would break a budget limit (spent, asked, limit)

`http_error(status, ...)` is the one place an HTTP answer that is not a completion becomes its error.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ._types import Usage

__all__ = [
    "AgentFlowError",
    "BadResponseError",
    "BudgetExceeded",
    "CheckpointError",
    "CircuitOpenError",
    "ConfidenceError",
    "ConfigError",
    "CycleLimitError",
    "DatasetError",
    "GraphRunError",
    "GraphValidationError",
    "MissingDependencyError",
    "ModelError",
    "ModelFileError",
    "ModelTimeoutError",
    "NodeFailedError",
    "RateLimitedError",
    "RequestRejectedError",
    "RoutingError",
    "RunConfigMismatchError",
    "ServerError",
    "ServerUnavailableError",
    "ServingError",
    "StructuredOutputError",
    "UncountableModelError",
    "UnknownModelError",
    "UnsupportedConstraintError",
]


class AgentFlowError(Exception):
    """Base of every error agentflow raises."""


class ConfigError(AgentFlowError):
    """Bad input from the user: a setting, a name, a file."""


class UnknownModelError(ConfigError):
    """A model name missing from the catalog; the message lists the known names."""

    def __init__(self, name: str, known: list[str]) -> None:
        self.name = name
        super().__init__(
            f"unknown model {name!r}: known models are {', '.join(sorted(known))}. "
            "Use one of those names, or register your model with agentflow.register_model(ModelSpec(...))."
        )


class MissingDependencyError(ConfigError):
    """An optional extra is not installed; `install` is the pip command that fixes it."""

    def __init__(self, what: str, install: str) -> None:
        self.install = install
        super().__init__(f"{what} is not installed: install it with `{install}`")


class UncountableModelError(UnknownModelError):
    """A model missing from the catalog was put under a FLOPs or dollar limit, which cannot count it."""

    def __init__(self, name: str, known: list[str], limit: str) -> None:
        super().__init__(name, known)
        self.limit = limit
        self.args = (
            f"model {name!r} is not in the catalog, so a budget with a {limit} limit cannot count its "
            f"{'FLOPs' if limit == 'flops' else 'price'}: register it with agentflow.register_model(ModelSpec(...)), "
            f"pass spec=... to Budget.wrap, or drop the {limit} limit. {self.args[0]}",
        )


class RunConfigMismatchError(ConfigError):
    """The answer store was written by a run with other settings."""


class DatasetError(ConfigError):
    """A dataset file or line that does not parse; `path` and `line` say where."""

    def __init__(self, message: str, *, path: str | None = None, line: int | None = None) -> None:
        self.path = path
        self.line = line
        where = ""
        if path is not None:
            where = f"{path}:{line}: " if line is not None else f"{path}: "
        super().__init__(where + message)


class ModelError(AgentFlowError):
    """A model server call failed.

    `usage` is what the failed call is known to have spent, charged by a budget exactly as it says: a
    `ModelClient` counts every attempt that reached the server (`requests`; a structured call adds the tokens of
    its earlier answers); `Usage()` when none reached it (a refused connection, an open circuit), so it costs
    nothing; None when unknown (a budget then charges one request).
    """

    retryable: bool = False

    def __init__(
        self,
        message: str,
        *,
        status_code: int | None = None,
        server_message: str | None = None,
        url: str | None = None,
        usage: Usage | None = None,
    ) -> None:
        self.status_code = status_code
        self.server_message = server_message
        self.url = url
        self.usage = usage
        super().__init__(message)


class ServerUnavailableError(ModelError):
    """Nothing answers at the server's URL (retried)."""

    retryable = True


class CircuitOpenError(ServerUnavailableError):
    """The client's circuit to a server is open: it failed `failures` calls in a row, so calls fail at once,
    without reaching it, until `retry_at` (on the client's clock; `retry_in_s` from when this was raised).

    Not `retryable`: a retry now fails the same way. A `Router` or `Cascade` falls back to its next rung.
    """

    retryable = False

    def __init__(self, message: str, *, failures: int, retry_at: float, retry_in_s: float, url: str) -> None:
        self.failures = failures
        self.retry_at = retry_at
        self.retry_in_s = retry_in_s
        super().__init__(message, url=url, usage=Usage())


class ModelTimeoutError(ModelError):
    """The request took longer than its timeout (retried)."""

    retryable = True


class RateLimitedError(ModelError):
    """HTTP 429; `retry_after` holds the server's Retry-After in seconds (retried, honouring it)."""

    retryable = True

    def __init__(self, message: str, *, retry_after: float | None = None, **kwargs: object) -> None:
        self.retry_after = retry_after
        super().__init__(message, **kwargs)  # type: ignore[arg-type]


class ServerError(ModelError):
    """HTTP 5xx from the server (retried)."""

    retryable = True


class RequestRejectedError(ModelError):
    """Any other HTTP 4xx: the request itself is wrong (not retried)."""

    retryable = False


class BadResponseError(ModelError):
    """The server answered with something that is not a completion (HTML, empty, missing fields)."""

    retryable = False


class ConfidenceError(AgentFlowError):
    """An estimator could not score an answer (missing logprobs, no budget, a failed verifier)."""


class StructuredOutputError(AgentFlowError):
    """Output that stayed truncated or invalid after its retries; `raw_text` holds the last answer."""

    def __init__(
        self, message: str, *, raw_text: str, attempts: int, finish_reason: str | None, usage: Usage | None = None
    ) -> None:
        self.raw_text = raw_text
        self.attempts = attempts
        self.finish_reason = finish_reason
        self.usage = usage  # what the failed attempts cost: budgets and run records still count it
        super().__init__(message)


class UnsupportedConstraintError(AgentFlowError):
    """The server cannot honour the output constraint; never silently dropped."""


class ModelFileError(AgentFlowError):
    """A model file is missing, or its content does not match its sha256."""


class ServingError(AgentFlowError):
    """A model server could not be started, did not become healthy, or could not be stopped."""


class GraphValidationError(AgentFlowError):
    """A graph that is wrong before anything runs. `node` names the culprit, `fix` says what to do."""

    def __init__(self, message: str, *, node: str | None = None, fix: str | None = None) -> None:
        self.node = node
        self.fix = fix
        super().__init__(message if fix is None else f"{message}. Fix: {fix}")


class GraphRunError(AgentFlowError):
    """A graph that went wrong while running."""


class RoutingError(GraphRunError):
    """A conditional edge returned a node it did not declare; names both."""

    def __init__(self, source: str, target: str, declared: list[str]) -> None:
        self.source = source
        self.target = target
        super().__init__(
            f"conditional edge from {source!r} returned {target!r}, which is not one of its declared "
            f"targets {declared}: declare it in the edge's targets, or return one of those"
        )


class NodeFailedError(GraphRunError):
    """A node raised, timed out or ran out of retries. `node` names it; `record` and `state` hold what
    completed before."""

    def __init__(self, node: str, message: str, *, record: Any = None, state: Any = None) -> None:
        super().__init__(f"node {node!r}: {message}")
        self.node = node
        self.record = record
        self.state = state


class CycleLimitError(GraphRunError):
    """A bounded node was reached once more than its `max_visits` and has no `on_exhausted` target."""

    def __init__(self, node: str, limit: int) -> None:
        self.node = node
        self.limit = limit
        super().__init__(
            f"node {node!r} was reached for visit {limit + 1} but max_visits={limit}: raise max_visits, make its "
            f"loop's condition exit earlier, or give it on_exhausted='next_node' (or END) to leave the loop"
        )


class CheckpointError(GraphRunError):
    """A checkpoint could not be written or read back."""


class BudgetExceeded(AgentFlowError):
    """A model call would break a budget limit. Nothing already spent is lost."""

    def __init__(
        self,
        message: str,
        *,
        limit: str,
        spent: Mapping[str, float],
        asked: Mapping[str, float],
        allowed: float,
    ) -> None:
        self.limit = limit
        self.spent = dict(spent)
        self.asked = dict(asked)
        self.allowed = allowed
        super().__init__(message)


# --- the error for an HTTP answer ----------------------------------------------------------------

_HINTS = {
    400: "fix the request (its parameters, or a prompt longer than the server's context window)",
    401: "pass the right api_key to ModelClient",
    403: "pass an api_key that is allowed to use this model",
    404: "check base_url (it usually ends in /v1) and the model name",
    413: "shorten the prompt",
    422: "fix the parameter the server names (this server may not support it)",
}


def http_error(
    status: int,
    message: str,
    *,
    url: str,
    model: str,
    retry_after: float | None = None,
    validation: bool = False,
) -> ModelError:
    """The typed error for a model server's HTTP answer that is not a completion: `message` is the server's
    (redacted), `retry_after` a 429's Retry-After in seconds, `validation` a 5xx that is really a request
    the server could not validate (llama-cpp-python answers a bad parameter so)."""
    where = f"the model server at {url} answered HTTP {status}"
    fields: dict[str, Any] = {"status_code": status, "server_message": message, "url": url}
    if status == 429:
        after = f" (Retry-After: {retry_after:g} s)" if retry_after is not None else ""
        return RateLimitedError(
            f"{where} Too Many Requests{after}: {message}. Lower max_in_flight, or wait and try again",
            retry_after=retry_after,
            **fields,
        )
    if status >= 500 and validation:
        return RequestRejectedError(
            f"{where} for a request it could not validate: {message}. Fix: {_HINTS[422]}", **fields
        )
    if status >= 500:
        return ServerError(
            f"{where}: {message}. The server failed on its side: check its log; if it keeps failing, "
            "the request may use a feature this server does not support",
            **fields,
        )
    if 400 <= status < 500:
        hint = _HINTS.get(status, "fix the request") + (f" ({model!r})" if status == 404 else "")
        return RequestRejectedError(f"{where}: {message}. Fix: {hint}", **fields)
    return BadResponseError(
        f"{where} ({message}), which is not a completion: check that base_url is the API itself "
        "(a redirect means it moved: use the new address)",
        **fields,
    )
