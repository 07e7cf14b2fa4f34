"""agentflow: large-model answers from small models.

The simple path needs no graph: `ModelClient(url, model).chat("question")`. Workflows are typed graphs
(`GraphBuilder`); a `Router` escalates from a small model to a larger one only when confidence is low
and is itself a model; a `Budget` caps what any run may spend and shows the bill.
"""

from ._bill import Bill, ModelBill
from ._budget import Budget, BudgetedModel, BudgetLimits
from ._calibration import Thresholds, calibrate
from ._cascade import Cascade, CascadeResult, Rung, RungDecision, StateScore
from ._catalog import ModelSpec, PyPISource, get_model, list_models, register_model
from ._checkpoint import Checkpoint, CheckpointStore, MemoryCheckpointer, SqliteCheckpointer
from ._client import ModelClient
from ._confidence import (
    Agreement,
    Confidence,
    ConfidenceState,
    Estimator,
    MaxOf,
    Mean,
    MinOf,
    TokenProb,
    Verifier,
    answers_agree,
    estimator,
    normalize_answer,
    yes_probability,
)
from ._config import DEFAULT_RETRY, NO_RETRY, RetryPolicy
from ._events import (
    ErrorEvent,
    Event,
    JsonlTraceWriter,
    Listener,
    ModelCallEvent,
    NodeFinished,
    NodeStarted,
    RunFinished,
    RunRecord,
    StateUpdated,
    StepRecord,
    emit,
    observe,
)
from ._exceptions import *  # noqa: F403
from ._exceptions import __all__ as _errors
from ._graph import END, START, Append, Graph, GraphBuilder, Reducer, RunResult
from ._graph_plan import Ctx, NodeRetry
from ._learned import (
    FEATURE_NAMES,
    AgreementShare,
    AnswerTokenProb,
    HasSignals,
    LearnedConfidence,
    Signals,
    StateConfidence,
    StateMax,
    StateMean,
    StateMin,
    VerifierYes,
    auroc,
    features,
    signals_of,
)
from ._mermaid import load_graph
from ._router import RouteDecision, Router
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
    "DEFAULT_RETRY",
    "END",
    "FEATURE_NAMES",
    "NO_RETRY",
    "START",
    "Agreement",
    "AgreementShare",
    "AnswerTokenProb",
    "Append",
    "Bill",
    "Budget",
    "BudgetLimits",
    "BudgetedModel",
    "Cascade",
    "CascadeResult",
    "ChatRequest",
    "Checkpoint",
    "CheckpointStore",
    "ChoiceOutput",
    "Completion",
    "Confidence",
    "ConfidenceState",
    "Ctx",
    "ErrorEvent",
    "Estimator",
    "Event",
    "Graph",
    "GraphBuilder",
    "HasSignals",
    "JsonOutput",
    "JsonlTraceWriter",
    "LearnedConfidence",
    "Listener",
    "MaxOf",
    "Mean",
    "MemoryCheckpointer",
    "Message",
    "MinOf",
    "Model",
    "ModelBill",
    "ModelCallEvent",
    "ModelClient",
    "ModelSpec",
    "NodeFinished",
    "NodeRetry",
    "NodeStarted",
    "PyPISource",
    "Reducer",
    "RegexOutput",
    "RetryPolicy",
    "RouteDecision",
    "Router",
    "RunFinished",
    "RunRecord",
    "RunResult",
    "Rung",
    "RungDecision",
    "Signals",
    "SqliteCheckpointer",
    "StateConfidence",
    "StateMax",
    "StateMean",
    "StateMin",
    "StateScore",
    "StateUpdated",
    "StepRecord",
    "Thresholds",
    "TokenLogprob",
    "TokenProb",
    "Usage",
    "Verifier",
    "VerifierYes",
    "answers_agree",
    "auroc",
    "calibrate",
    "emit",
    "estimator",
    "features",
    "get_model",
    "list_models",
    "load_graph",
    "normalize_answer",
    "observe",
    "register_model",
    "signals_of",
    "yes_probability",
]
