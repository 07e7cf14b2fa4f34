"""Paragraph retrieval: BM25 through rank_bm25 (or another scorer), title and link bonuses, order, and recall."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import rank_bm25

from agentflow._exceptions import ConfigError, MissingDependencyError
from agentflow.eval._data import Paragraph, load_dataset
from agentflow.eval._retrieval import (
    DEFAULT_RETRIEVAL,
    RetrievalSettings,
    bm25_scores,
    rank_paragraphs,
    supporting_recall,
    tokenize,
    top_paragraphs,
)

DATA = Path(__file__).parent / "data"

PARAS = [
    Paragraph("Apple pie", "Apple pie is a dessert made with apples and pastry."),
    Paragraph("Mount Everest", "Mount Everest is the highest mountain above sea level, in the Himalayas."),
    Paragraph("Python (language)", "Python is a programming language created by Guido van Rossum."),
    Paragraph("Tea", "Tea is a drink made by pouring hot water over cured leaves."),
]


def test_tokenize_lowercases_and_drops_stop_words() -> None:
    assert tokenize("What is the Highest mountain of Nepal's range?") == ["highest", "mountain", "nepal", "range"]


def test_picks_the_obviously_relevant_paragraph() -> None:
    [best] = top_paragraphs("Which mountain is the highest above sea level?", PARAS, k=1)
    assert best.title == "Mount Everest"
    assert top_paragraphs("Who created the Python programming language?", PARAS, k=1)[0].title.startswith("Python")


def test_rank_order_by_default_and_original_order_on_request() -> None:
    q = "Is tea made from leaves, and who created Python?"
    ranked = [p.title for p, _ in rank_paragraphs(q, PARAS)]
    two = top_paragraphs(q, PARAS, k=2)
    assert [p.title for p in two] == ranked[:2]
    kept = top_paragraphs(q, PARAS, k=2, keep_order=True)
    assert [p.title for p in kept] == sorted(ranked[:2], key=[p.title for p in PARAS].index)
    scores = [s for _, s in rank_paragraphs(q, PARAS)]
    assert scores == sorted(scores, reverse=True)


def test_rank_bm25_is_really_used(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[list[list[str]]] = []
    real = rank_bm25.BM25Okapi

    def spy(corpus: list[list[str]], **kw: Any) -> Any:
        seen.append(corpus)
        return real(corpus, **kw)

    monkeypatch.setattr(rank_bm25, "BM25Okapi", spy)
    top_paragraphs("highest mountain", PARAS, k=1)
    assert len(seen) == 1 and len(seen[0]) == len(PARAS)
    assert "everest" in seen[0][1]  # the title is indexed with the text


def test_missing_rank_bm25_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "rank_bm25", None)
    with pytest.raises(MissingDependencyError, match=r"pip install 'agentflow\[eval\]'"):
        top_paragraphs("q", PARAS)


def test_title_in_question_and_second_hop_link_bonuses() -> None:
    paras = [
        Paragraph("Big Stone Gap (film)", "Big Stone Gap is a 2014 romantic comedy directed by Adriana Trigiani."),
        Paragraph("Adriana Trigiani", "Adriana Trigiani is a best-selling author based in Greenwich Village."),
        Paragraph("Stone Age", "The Stone Age was a broad prehistoric period; director of many gap years."),
        Paragraph("Comedy film", "A romantic comedy is a genre; the director of a comedy is often based in a city."),
    ]
    q = 'The director of the romantic comedy "Big Stone Gap" is based in what New York city?'
    plain = RetrievalSettings(title_weight=0, title_bonus=0.0, link_bonus=0.0)
    assert {p.title for p in top_paragraphs(q, paras, k=2)} == {"Big Stone Gap (film)", "Adriana Trigiani"}
    assert "Adriana Trigiani" not in {p.title for p in top_paragraphs(q, paras, k=2, settings=plain)}
    no_link = RetrievalSettings(link_bonus=0.0)
    assert "Adriana Trigiani" not in {p.title for p in top_paragraphs(q, paras, k=2, settings=no_link)}


def test_longer_matched_title_wins_over_its_prefix() -> None:
    paras = [
        Paragraph("Esma Sultan", "Esma Sultan was an Ottoman princess, daughter of a sultan, located nowhere."),
        Paragraph("Laleli Mosque", "The Laleli Mosque is an 18th-century Ottoman imperial mosque in Laleli, Istanbul."),
        Paragraph("Esma Sultan Mansion", "The Esma Sultan Mansion is a historical yali located in Ortaköy, Istanbul."),
    ]
    q = "Are the Laleli Mosque and Esma Sultan Mansion located in the same neighborhood?"
    assert {p.title for p in top_paragraphs(q, paras, k=2)} == {"Laleli Mosque", "Esma Sultan Mansion"}


def test_edge_cases() -> None:
    assert top_paragraphs("anything", [], k=2) == []
    assert len(top_paragraphs("anything", PARAS, k=10)) == len(PARAS)
    assert top_paragraphs("q", [Paragraph("", "")], k=1) == [Paragraph("", "")]
    with pytest.raises(ConfigError, match="k must be >= 1, got 0: pass how many paragraphs"):
        top_paragraphs("q", PARAS, k=0)


def test_supporting_recall_on_fixture_rows() -> None:
    examples = load_dataset("hotpotqa", data_dir=DATA)
    r2 = supporting_recall(examples, 2)
    r10 = supporting_recall(examples, 10)
    assert r10 == 1.0
    assert 0.0 <= r2 <= r10
    assert supporting_recall(examples, 2) >= supporting_recall(
        examples, 2, RetrievalSettings(title_weight=0, title_bonus=0.0, link_bonus=0.0)
    )


def test_recall_on_the_bundled_hotpotqa_rows() -> None:
    """Rows 0-19 (bridge) and 250-269 (comparison): both gold paragraphs in the top 2 / top 3."""
    examples = load_dataset("hotpotqa", rows=[*range(20), *range(250, 270)])
    assert supporting_recall(examples, 2) >= 0.70
    assert supporting_recall(examples, 3) >= 0.80
    plain = RetrievalSettings(title_weight=0, title_bonus=0.0, link_bonus=0.0)
    assert supporting_recall(examples, 3, plain) <= 0.55  # what the bonuses add


def test_the_default_scorer_is_rank_bm25_okapi_unchanged() -> None:
    """Rankings stay what they were: the scores are BM25Okapi's own, for the tokens the ranking builds."""
    [ex] = load_dataset("hotpotqa", rows=[3])
    docs = [tokenize(p.text) + tokenize(p.title) * 2 for p in ex.paragraphs]
    query = tokenize(ex.question)
    okapi = rank_bm25.BM25Okapi(docs, k1=1.5, b=0.75).get_scores(query)
    assert bm25_scores(docs, query, 1.5, 0.75) == [float(s) for s in okapi]
    assert DEFAULT_RETRIEVAL.scorer is bm25_scores
    plain = RetrievalSettings(title_weight=2, title_bonus=0.0, link_bonus=0.0)
    ranked = [s for _, s in rank_paragraphs(ex.question, ex.paragraphs, plain)]
    assert ranked == sorted((float(s) for s in okapi), reverse=True)


def test_another_scorer_can_replace_bm25() -> None:
    seen: list[tuple[int, list[str]]] = []

    def by_length(documents: Sequence[Sequence[str]], query: Sequence[str], k1: float, b: float) -> list[float]:
        seen.append((len(documents), list(query)))
        return [float(len(doc)) for doc in documents]

    settings = RetrievalSettings(title_weight=0, title_bonus=0.0, link_bonus=0.0, scorer=by_length)
    longest = max(PARAS, key=lambda p: len(tokenize(p.text)))
    assert top_paragraphs("Who created Python?", PARAS, k=1, settings=settings) == [longest]
    assert seen == [(len(PARAS), ["created", "python"])]
