"""agentflow: large-model answers from small models.

The simple path needs no graph: `ModelClient(url, model).chat("question")`. Workflows are typed graphs
(`GraphBuilder`); a `Router` escalates from a small model to a larger one only when confidence is low
and is itself a model; a `Budget` caps what any run may spend and shows the bill.
"""

from ._bill import Bill, ModelBill
from ._budget import Budget, BudgetedModel, BudgetLimits
from ._calibration import Thresholds, calibrate
from ._calibration_data import calibrate_file, collect_examples
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
    estimator,
)
from ._config import DEFAULT_RETRY, NO_RETRY, RetryPolicy
from ._data import Example, Paragraph, from_hf_dataset, from_records, load_dataset
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
from ._mermaid import load_graph
from ._metrics import (
    bootstrap_ci,
    exact_match,
    f1_score,
    normalize_answer,
    numeric_match,
    paired_bootstrap_diff,
    score,
    yes_no_match,
)
from ._report import ArmResult, QuestionRecord, write_report
from ._retrieval import top_paragraphs
from ._router import RouteDecision, Router
from ._store import installed_models, model_path
from ._store_runs import CachedModel, ResponseCache, RunStore
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
    "NO_RETRY",
    "START",
    "Agreement",
    "Append",
    "ArmResult",
    "Bill",
    "Budget",
    "BudgetLimits",
    "BudgetedModel",
    "CachedModel",
    "Checkpoint",
    "ChatRequest",
    "CheckpointStore",
    "ChoiceOutput",
    "Completion",
    "Confidence",
    "ConfidenceState",
    "Ctx",
    "ErrorEvent",
    "Estimator",
    "Event",
    "Example",
    "Graph",
    "GraphBuilder",
    "JsonOutput",
    "JsonlTraceWriter",
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
    "Paragraph",
    "PyPISource",
    "QuestionRecord",
    "Reducer",
    "RegexOutput",
    "ResponseCache",
    "RetryPolicy",
    "RouteDecision",
    "Router",
    "RunFinished",
    "RunRecord",
    "RunResult",
    "RunStore",
    "SqliteCheckpointer",
    "StateUpdated",
    "StepRecord",
    "Thresholds",
    "TokenLogprob",
    "TokenProb",
    "Usage",
    "Verifier",
    "bootstrap_ci",
    "calibrate",
    "calibrate_file",
    "collect_examples",
    "emit",
    "estimator",
    "exact_match",
    "f1_score",
    "from_hf_dataset",
    "from_records",
    "get_model",
    "installed_models",
    "list_models",
    "load_dataset",
    "load_graph",
    "model_path",
    "normalize_answer",
    "numeric_match",
    "observe",
    "paired_bootstrap_diff",
    "register_model",
    "score",
    "top_paragraphs",
    "write_report",
    "yes_no_match",
]
