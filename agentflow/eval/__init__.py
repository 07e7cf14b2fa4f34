"""agentflow.eval: measure workflows and routers on labelled questions.

Datasets (the bundled HotpotQA, 2WikiMultihopQA, StrategyQA and GSM8K sets, your own JSONL, or a
Hugging Face `datasets.Dataset`), metrics with bootstrap intervals, BM25 retrieval, the answer store
and the response cache that make a killed run resumable and a rerun free, labelled confidences for
calibration, and `Comparison`: an agent of small models against a single large model, with a report
and the deferral curves of its cascades.

It imports the core (`agentflow`) and is never imported by it.
"""

from ._arms import ARMS, RungFactory, StateFactory
from ._calibration_data import calibrate_file, collect_examples
from ._compare import CompareConfig, Comparison
from ._data import Example, Paragraph, from_hf_dataset, from_records, load_dataset
from ._deferral import DeferralCurve, Deferred, deferral_curve, plot_deferral
from ._hops import HopRecall, bridge_title, hop_recall
from ._metrics import (
    bootstrap_ci,
    exact_match,
    f1_score,
    numeric_match,
    paired_bootstrap_diff,
    score,
    yes_no_match,
)
from ._ray import RayExecutor, RayLedger, ray_ledger
from ._report import ArmResult, QuestionRecord, RungRecord, write_report
from ._retrieval import RetrievalSettings, bm25_scores, rank_paragraphs, supporting_recall, top_paragraphs
from ._stores import CachedModel, ResponseCache, RunStore

__all__ = [
    "ARMS",
    "ArmResult",
    "CachedModel",
    "CompareConfig",
    "Comparison",
    "DeferralCurve",
    "Deferred",
    "Example",
    "HopRecall",
    "Paragraph",
    "QuestionRecord",
    "RayExecutor",
    "RayLedger",
    "ResponseCache",
    "RetrievalSettings",
    "RunStore",
    "RungFactory",
    "RungRecord",
    "StateFactory",
    "bm25_scores",
    "bootstrap_ci",
    "bridge_title",
    "calibrate_file",
    "collect_examples",
    "deferral_curve",
    "exact_match",
    "f1_score",
    "from_hf_dataset",
    "from_records",
    "hop_recall",
    "load_dataset",
    "numeric_match",
    "paired_bootstrap_diff",
    "plot_deferral",
    "rank_paragraphs",
    "ray_ledger",
    "score",
    "supporting_recall",
    "top_paragraphs",
    "write_report",
    "yes_no_match",
]
