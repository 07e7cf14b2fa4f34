"""agentflow: large-model answers from small models."""

from ._catalog import ModelSpec, PyPISource, get_model, list_models, register_model
from ._exceptions import *  # noqa: F403
from ._exceptions import __all__ as _errors
from ._types import (
    ChatRequest,
    ChoiceOutput,
    Completion,
    JsonOutput,
    Message,
    Model,
    RegexOutput,
    TokenLogprob,
    Usage,
)

__version__ = "0.1.0"

__all__ = [
    *_errors,
    "ChatRequest",
    "ChoiceOutput",
    "Completion",
    "JsonOutput",
    "Message",
    "Model",
    "ModelSpec",
    "PyPISource",
    "RegexOutput",
    "TokenLogprob",
    "Usage",
    "get_model",
    "list_models",
    "register_model",
]
