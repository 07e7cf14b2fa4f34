"""Confidence read from a final state, the learned estimator (trained with scikit-learn, saved as JSON,
predicting without it) and AUROC."""

from __future__ import annotations

import json
import math
import random
import sys
from pathlib import Path

import pytest

from agentflow import (
    FEATURE_NAMES,
    AgreementShare,
    AnswerTokenProb,
    ConfidenceError,
    ConfigError,
    LearnedConfidence,
    MissingDependencyError,
    Signals,
    StateMax,
    StateMean,
    StateMin,
    VerifierYes,
    auroc,
    features,
    signals_of,
)
from agentflow.eval import Paragraph
from workflows import QAState

CONTEXT = "Alpha is a city founded in 1901 by Jane Roe."


def sig(answer: str = "Jane Roe", **kw: object) -> Signals:
    return Signals(question="Who founded Alpha?", answer=answer, context=CONTEXT, **kw)  # type: ignore[arg-type]


# --- hand-made confidences ----------------------------------------------------------------------


def test_each_confidence_reads_its_signal_and_none_when_absent() -> None:
    s = sig(token_logprobs=(math.log(0.9), math.log(0.5)), agreement=0.6, samples=5, verifier_p_yes=0.8)
    assert AgreementShare()(s) == 0.6
    assert VerifierYes()(s) == 0.8
    assert AnswerTokenProb("mean")(s) == pytest.approx(0.7)
    assert AnswerTokenProb("min")(s) == pytest.approx(0.5)
    assert AnswerTokenProb("joint")(s) == pytest.approx(0.45)
    assert AnswerTokenProb("geomean")(s) == pytest.approx(math.sqrt(0.45))
    bare = sig()
    assert AgreementShare()(bare) is None and VerifierYes()(bare) is None and AnswerTokenProb()(bare) is None
    assert AnswerTokenProb.needs_logprobs and not AgreementShare.needs_logprobs


def test_combinations_min_max_mean() -> None:
    s = sig(agreement=0.6, verifier_p_yes=0.8)
    both = AgreementShare() & VerifierYes()
    assert isinstance(both, StateMin) and both(s) == 0.6
    assert (AgreementShare() | VerifierYes())(s) == 0.8
    assert StateMean([AgreementShare(), VerifierYes()], weights=[1, 3])(s) == pytest.approx(0.75)
    only_agreement = sig(agreement=0.6)
    assert both(only_agreement) is None  # cannot confirm both: escalate
    assert StateMax([AgreementShare(), VerifierYes()])(only_agreement) == 0.6
    assert StateMean([AgreementShare(), VerifierYes()])(only_agreement) == 0.6
    assert (AgreementShare() & AnswerTokenProb()).needs_logprobs
    with pytest.raises(ConfigError, match="weight"):
        StateMean([AgreementShare()], weights=[1, 2])
    with pytest.raises(ConfigError, match="'mean', 'geomean'"):
        AnswerTokenProb("median")  # type: ignore[arg-type]


def test_signals_come_from_the_state_and_a_state_without_them_is_a_clear_error() -> None:
    state = QAState(
        question="Who founded Alpha?",
        paragraphs=[Paragraph("Alpha", CONTEXT), Paragraph("Beta", "Beta is a river.")],
        context=[Paragraph("Alpha", CONTEXT)],
        answer="Jane Roe",
        samples=["Jane Roe", "jane roe", "Bob"],
        agreement=2 / 3,
        answer_logprobs=[-0.1, -0.2],
        verifier_p_yes=0.7,
        accepted=True,
    )
    s = signals_of(state)
    assert (s.answer, s.samples, s.agreement, s.verifier_p_yes, s.accepted) == ("Jane Roe", 3, 2 / 3, 0.7, True)
    assert s.token_logprobs == (-0.1, -0.2) and s.context == CONTEXT  # what the model read, not every paragraph
    assert Signals.from_dict(json.loads(json.dumps(s.to_dict()))) == s
    with pytest.raises(ConfidenceError, match="signals"):
        AgreementShare()(object())
    with pytest.raises(ConfigError, match=r"Signals\.to_dict"):
        Signals.from_dict({"answer": "x"})


def test_features_are_cheap_named_and_complete() -> None:
    f = features(sig("Jane Roe", token_logprobs=(math.log(0.5),), agreement=1.0, samples=2, accepted=False))
    assert list(f) == list(FEATURE_NAMES)
    assert f["has_logprobs"] == 1 and f["tok_mean_p"] == pytest.approx(0.5) and f["agreement"] == 1.0
    assert f["answer_in_context"] == 1 and f["answer_capitalized"] == 1 and f["answer_words"] == 2
    assert f["accepted_no"] == 1 and f["accepted_yes"] == 0 and f["has_verifier"] == 0
    assert f["q_who"] == 1 and f["q_yes_no"] == 0
    g = features(Signals("Is Beta a river or a lake?", "yes", retrieval_scores=(3.0, 5.0)))
    assert g["answer_yes_no"] == 1 and g["q_yes_no"] == 1 and g["q_or"] == 1 and g["answer_in_context"] == 0
    assert (g["has_retrieval"], g["retrieval_top"], g["retrieval_margin"]) == (1, 5.0, 2.0)
    assert g["has_logprobs"] == 0 and g["tok_mean_p"] == 0


# --- the learned estimator ----------------------------------------------------------------------


def labelled(n: int, seed: int = 0) -> tuple[list[Signals], list[bool]]:
    """Answers whose correctness depends (noisily) on their token probability and on being in the context."""
    rng = random.Random(seed)
    out, labels = [], []
    for i in range(n):
        p = rng.uniform(0.05, 0.99)
        in_ctx = rng.random() < 0.6
        answer = "Jane Roe" if in_ctx else f"Person {i}"
        correct = rng.random() < (0.15 + 0.5 * p + 0.3 * in_ctx)
        out.append(sig(answer, token_logprobs=(math.log(p), math.log(min(0.99, p + 0.05))), samples=1))
        labels.append(correct)
    return out, labels


def test_learned_confidence_saves_as_json_and_predicts_like_sklearn(tmp_path: Path) -> None:
    sk_pre = pytest.importorskip("sklearn.preprocessing", reason="pip install 'agentflow[learn]' to train")
    sk_lm = pytest.importorskip("sklearn.linear_model", reason="pip install 'agentflow[learn]' to train")
    train, labels = labelled(200)
    model = LearnedConfidence.fit(train, labels, c=0.5)
    assert model.info["n"] == 200 and 0.6 < model.info["train_auroc"] <= 1.0
    assert model.needs_logprobs  # it reads token-probability features
    path = tmp_path / "confidence.json"
    model.save(path)
    data = json.loads(path.read_text())  # plain JSON: names, scaler, coefficients; no pickle
    assert data["features"] == list(FEATURE_NAMES) and len(data["coef"]) == len(FEATURE_NAMES)
    assert set(data["scaler"]) == {"mean", "scale"}
    loaded = LearnedConfidence.load(path)
    assert loaded == model

    # the same pipeline in scikit-learn: predict_proba equals the dot product and sigmoid
    x = [[features(s)[n] for n in FEATURE_NAMES] for s in train]
    scaler = sk_pre.StandardScaler().fit(x)
    clf = sk_lm.LogisticRegression(C=0.5, max_iter=1000).fit(scaler.transform(x), labels)
    test, _ = labelled(50, seed=1)
    expected = clf.predict_proba(scaler.transform([[features(s)[n] for n in FEATURE_NAMES] for s in test]))[:, 1]
    for s, want in zip(test, expected, strict=True):
        assert abs(loaded.predict(s) - float(want)) < 1e-9
        assert loaded(s) == loaded.predict(s)

    # ...and it separates right from wrong on unseen answers
    held, held_labels = labelled(300, seed=2)
    assert auroc([loaded.predict(s) for s in held], held_labels) > 0.6


def test_a_loaded_model_predicts_without_sklearn_and_training_without_it_names_the_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = LearnedConfidence(("agreement", "answer_in_context"), (0.5, 0.5), (0.25, 0.5), (2.0, 1.0), -0.5)
    model.save(tmp_path / "m.json")
    for name in [m for m in sys.modules if m == "sklearn" or m.startswith("sklearn.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "sklearn", None)  # importing sklearn now fails
    loaded = LearnedConfidence.load(tmp_path / "m.json")
    s = sig(agreement=1.0)
    z = -0.5 + 2.0 * (1.0 - 0.5) / 0.25 + 1.0 * (1.0 - 0.5) / 0.5
    assert loaded.predict(s) == pytest.approx(1 / (1 + math.exp(-z)), abs=1e-12)
    assert not loaded.needs_logprobs
    with pytest.raises(MissingDependencyError, match=r"pip install 'agentflow\[learn\]'"):
        LearnedConfidence.fit([sig(), sig("x")], [True, False])


def test_bad_models_and_training_data_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        LearnedConfidence.load(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{nope")
    with pytest.raises(ConfigError, match="not valid JSON"):
        LearnedConfidence.load(tmp_path / "bad.json")
    (tmp_path / "thresholds.json").write_text(json.dumps({"thresholds": [0.5]}))
    with pytest.raises(ConfigError, match="not a learned confidence"):
        LearnedConfidence.load(tmp_path / "thresholds.json")
    with pytest.raises(ConfigError, match="does not compute"):
        LearnedConfidence(("shoe_size",), (0.0,), (1.0,), (1.0,), 0.0)
    with pytest.raises(ConfigError, match="one mean, scale and coefficient per feature"):
        LearnedConfidence(("agreement",), (0.0, 1.0), (1.0,), (1.0,), 0.0)
    with pytest.raises(ConfigError, match="zero scale"):
        LearnedConfidence(("agreement",), (0.0,), (0.0,), (1.0,), 0.0)
    with pytest.raises(ConfigError, match="right and wrong"):
        LearnedConfidence.fit([sig(), sig()], [True, True])
    with pytest.raises(ConfigError, match="one label per answer"):
        LearnedConfidence.fit([sig()], [True, False])


# --- AUROC --------------------------------------------------------------------------------------


def test_auroc_known_values_ties_and_errors() -> None:
    assert auroc([0.9, 0.8, 0.2, 0.1], [True, True, False, False]) == 1.0
    assert auroc([0.1, 0.2, 0.8, 0.9], [True, True, False, False]) == 0.0
    assert auroc([0.5, 0.5, 0.5, 0.5], [True, False, True, False]) == 0.5
    assert auroc([0.9, 0.5, 0.5, 0.1], [True, True, False, False]) == pytest.approx(0.875)  # one tie counts half
    with pytest.raises(ConfigError, match="right and wrong"):
        auroc([0.1, 0.2], [True, True])
    with pytest.raises(ConfigError, match="one label per score"):
        auroc([0.1], [True, False])


def test_auroc_matches_sklearn_on_random_data() -> None:
    metrics = pytest.importorskip("sklearn.metrics", reason="pip install 'agentflow[learn]' to compare")
    rng = random.Random(3)
    scores = [round(rng.random(), 2) for _ in range(300)]  # rounded: many ties
    labels = [rng.random() < s for s in scores]
    assert auroc(scores, labels) == pytest.approx(metrics.roc_auc_score(labels, scores), abs=1e-12)
