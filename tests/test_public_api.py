"""The curated public API: what `import agentflow` offers is deliberate, documented and typed."""

from __future__ import annotations

import inspect

import agentflow
import workflows
from agentflow import AgentFlowError


def test_every_public_name_exists_once_and_is_documented() -> None:
    names = agentflow.__all__
    assert len(names) == len(set(names))
    for name in names:
        obj = getattr(agentflow, name)
        assert not name.startswith("_"), name
        if inspect.isclass(obj) or inspect.isfunction(obj):
            assert obj.__doc__ and obj.__doc__.strip(), f"{name} has no docstring"


def test_nothing_private_leaks_into_the_namespace() -> None:
    public = {n for n in vars(agentflow) if not n.startswith("_")}
    modules = {n for n in public if inspect.ismodule(getattr(agentflow, n))}
    # Subpackages that Python binds on import (cli, eval, testing) are the only public names outside __all__.
    assert public - set(agentflow.__all__) - modules == set()
    assert modules <= {"cli", "eval", "testing"}


def test_every_error_is_in_one_tree() -> None:
    errors = [getattr(agentflow, n) for n in agentflow.__all__ if n.endswith(("Error", "Exceeded"))]
    assert len(errors) > 10
    for err in errors:
        assert issubclass(err, AgentFlowError), err.__name__


def test_workflows_use_the_public_api_only() -> None:
    import ast
    from pathlib import Path

    for path in Path(workflows.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("agentflow"):
                assert node.module in ("agentflow", "agentflow.eval"), f"{path.name} imports from {node.module}"


def test_the_evaluation_namespace_is_curated_and_documented() -> None:
    import agentflow.eval

    names = agentflow.eval.__all__
    assert len(names) == len(set(names))
    assert not set(names) & set(agentflow.__all__), "a name belongs to one namespace"
    for name in names:
        obj = getattr(agentflow.eval, name)
        if inspect.isclass(obj) or inspect.isfunction(obj):
            assert obj.__doc__ and obj.__doc__.strip(), f"agentflow.eval.{name} has no docstring"
    # datasets, metrics, retrieval, stores, compare and report live here, not in the core
    for name in ("load_dataset", "exact_match", "top_paragraphs", "RunStore", "ResponseCache", "Comparison"):
        assert name in names and name not in agentflow.__all__


# The two namespaces, pinned: a name added or removed is a decision, made here as well.
CORE_NAMES = [
    "AgentFlowError", "Agreement", "AgreementShare", "AnswerTokenProb", "Append", "BadResponseError", "Bill",
    "Budget", "BudgetExceeded", "BudgetLimits", "BudgetedModel", "Cascade", "CascadeResult", "ChatRequest",
    "Checkpoint", "CheckpointError", "CheckpointStore", "ChoiceOutput", "Circuit", "CircuitBreaker",
    "CircuitOpenError", "Completion", "Confidence", "ConfidenceError", "ConfidenceState", "ConfigError", "Ctx",
    "CycleLimitError", "DEFAULT_ANSWER_TOKENS", "DEFAULT_CIRCUIT", "DEFAULT_REASONING_TOKENS", "DEFAULT_RETRY",
    "DatasetError", "END", "ErrorEvent", "Estimator", "Event", "FEATURE_NAMES", "Graph", "GraphBuilder",
    "GraphRunError", "GraphValidationError", "HasSignals", "JsonOutput", "JsonlTraceWriter", "LearnedConfidence",
    "Ledger", "LedgerSnapshot", "Listener", "LocalLedger", "MaxOf", "Mean", "MemoryCheckpointer", "Message", "MinOf",
    "MissingDependencyError", "Model", "ModelBill", "ModelCallEvent", "ModelClient", "ModelError", "ModelFileError",
    "ModelSpec", "ModelTimeoutError", "NO_RETRY", "NodeFailedError", "NodeFinished", "NodeRetry", "NodeStarted",
    "PyPISource", "RateLimitedError", "Reducer", "RegexOutput", "ReplicaLoad", "ReplicaPool", "ReplicaStats",
    "RequestRejectedError", "RetryPolicy", "RouteDecision", "Router", "RoutingError", "RunConfigMismatchError",
    "RunFinished", "RunRecord", "RunResult", "Rung", "RungDecision", "START", "Sampler", "ServerError",
    "ServerUnavailableError", "ServingError", "SharedBudget", "SharedBudgetedModel", "Signals", "SqliteCheckpointer",
    "SqliteLedger", "StateConfidence", "StateMax", "StateMean", "StateMin", "StateScore", "StateUpdated",
    "StepRecord", "StructuredOutputError", "Thresholds", "TokenLogprob", "TokenProb", "UncountableModelError",
    "UnknownModelError", "UnsupportedConstraintError", "Usage", "Verifier", "VerifierYes", "answers_agree", "auroc",
    "calibrate", "check_k", "emit", "estimator", "features", "get_model", "list_models", "load_graph",
    "normalize_answer", "observe", "register_model", "signals_of", "yes_probability",
]  # fmt: skip
EVAL_NAMES = [
    "ARMS", "ArmResult", "CachedModel", "CompareConfig", "Comparison", "DeferralCurve", "Deferred", "Example",
    "HopRecall", "Paragraph", "QuestionRecord", "RayExecutor", "RayLedger", "ResponseCache", "RetrievalSettings",
    "RunStore", "RungFactory", "RungRecord", "StateFactory", "bm25_scores", "bootstrap_ci", "bridge_title",
    "calibrate_file", "collect_examples", "deferral_curve", "exact_match", "f1_score", "from_hf_dataset",
    "from_records", "hop_recall", "load_dataset", "numeric_match", "paired_bootstrap_diff", "plot_deferral",
    "rank_paragraphs", "ray_ledger", "score", "supporting_recall", "top_paragraphs", "write_report", "yes_no_match",
]  # fmt: skip


def test_both_namespaces_are_pinned() -> None:
    import agentflow.eval

    assert sorted(agentflow.__all__) == CORE_NAMES
    assert sorted(agentflow.eval.__all__) == EVAL_NAMES
