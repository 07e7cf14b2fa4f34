"""Retrieve-then-read over the paragraphs that come with a question, ranked with BM25.

A small model only sees the k paragraphs chosen here, so the ranking matters. Each paragraph is
indexed as its text plus its title (repeated `title_weight` times: titles name the entity the
paragraph is about, which is what multi-hop questions mention). On top of BM25, a paragraph whose
title appears verbatim in the question gets a bonus (`title_bonus` x the best score), which
catches the "first hop" paragraph of bridge questions and both entities of comparisons (a title
contained in a longer matched title gets no bonus: "Esma Sultan" loses to "Esma Sultan Mansion"). Then the
ranking is built greedily: a paragraph whose title is named in an already chosen paragraph gets
`link_bonus` x the best score (the second hop: "the director of film X" is named in X's paragraph).

Recall of both supporting paragraphs on HotpotQA dev (rows 0-19 + 250-269 / all 500 rows):
plain BM25 0.33 / 0.32 at k=2 and 0.50 / 0.48 at k=3; with these defaults 0.75 / 0.74 at k=2
and 0.85 / 0.88 at k=3 (the bonuses were tuned on those 500 rows, so expect a little less elsewhere;
2WikiMultihopQA, 164 rows: 0.25 -> 0.65 at k=2, 0.45 -> 0.90 at k=4).

`top_paragraphs` returns the chosen paragraphs best first (rank order); pass `keep_order=True`
to get them in their original order instead.

The BM25 scores come from `rank_bm25` (Okapi). `benchmarks/retrieval.py` compares it with `bm25s`
on the tuning split (rows 0-39 + 250-289): with these defaults recall@2 0.738 against 0.750 and
recall@3 0.900 against 0.925 (one and two questions of 80; plain BM25 goes the other way), while
rank_bm25 scores a ten-paragraph question 1.3 to 1.9 times faster. So it stays, and every ranking
stays what it was. `RetrievalSettings(scorer=...)` takes any other BM25 of the `Scorer` shape.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from .._config import check_k
from .._exceptions import MissingDependencyError
from ._data import Example, Paragraph

__all__ = [
    "DEFAULT_RETRIEVAL",
    "STOP_WORDS",
    "RetrievalSettings",
    "Scorer",
    "bm25_scores",
    "rank_paragraphs",
    "supporting_recall",
    "tokenize",
    "top_paragraphs",
]

STOP_WORDS = frozenset(
    """a about above after again against all am an and any are as at be because been before being below
    between both but by can could did do does doing down during each few for from further had has have
    having he her here hers herself him himself his how i if in into is it its itself just me more most my
    myself no nor not of off on once only or other our ours ourselves out over own same she should so some
    such than that the their theirs them themselves then there these they this those through to too under
    until up very was we were what when where which while who whom why will with would you your yours
    yourself yourselves also which whose""".split()
)

_WORD = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")


def tokenize(text: str) -> list[str]:
    """Lowercased word tokens without stop words (possessive 's dropped)."""
    out = []
    for tok in _WORD.findall(text.lower()):
        if tok.endswith("'s"):
            tok = tok[:-2]
        tok = tok.replace("'", "")
        if tok and tok not in STOP_WORDS:
            out.append(tok)
    return out


Scorer = Callable[[Sequence[Sequence[str]], Sequence[str], float, float], Sequence[float]]
"""`(documents as tokens, query tokens, k1, b) -> one BM25 score per document`."""


def bm25_scores(documents: Sequence[Sequence[str]], query: Sequence[str], k1: float, b: float) -> list[float]:
    """One BM25 score per document for the query tokens: Okapi BM25 as `rank_bm25` computes it (a term
    in more than half of the documents gets a small positive idf, 0.25 x the mean, instead of a
    negative one). A repeated query token counts each time."""
    try:
        from rank_bm25 import BM25Okapi
    except ImportError:
        raise MissingDependencyError("rank_bm25 (paragraph retrieval)", "pip install 'agentflow[eval]'") from None
    okapi = BM25Okapi([list(doc) for doc in documents], k1=k1, b=b)
    return [float(s) for s in okapi.get_scores(list(query))]


@dataclass(frozen=True, slots=True)
class RetrievalSettings:
    """How paragraphs are ranked. `title_weight` repeats the title tokens in the index; `title_bonus`
    (a fraction of the best BM25 score) is added when a paragraph's title occurs in the question;
    `link_bonus` when its title is named in a paragraph already chosen. `scorer` computes the BM25
    scores (`bm25_scores` by default; any function of the same shape can replace it)."""

    title_weight: int = 2
    title_bonus: float = 1.0
    link_bonus: float = 0.75
    k1: float = 1.5
    b: float = 0.75
    scorer: Scorer = bm25_scores


DEFAULT_RETRIEVAL = RetrievalSettings()


def _norm_title(title: str) -> str:
    # "Dmitri Varfolomeyev (footballer, born 1978)" -> "dmitri varfolomeyev"
    return " ".join(re.sub(r"\([^)]*\)", " ", title).lower().split())


def _phrase(text: str) -> str:
    return " " + " ".join(re.findall(r"[a-z0-9]+", text.lower())) + " "


def _ranked(question: str, paragraphs: Sequence[Paragraph], settings: RetrievalSettings) -> list[tuple[int, float]]:
    """(index, score) of every paragraph, best first."""
    if not paragraphs:
        return []
    query = tokenize(question)
    corpus = [tokenize(p.text) + tokenize(p.title) * settings.title_weight for p in paragraphs]
    # BM25 divides by the average document length: guard against an all-empty corpus.
    corpus = [doc or ["\x00"] for doc in corpus]
    raw = list(settings.scorer(corpus, query, settings.k1, settings.b))
    best = max(max(raw), 1e-9)
    q_phrase = _phrase(question)
    titles = [_phrase(_norm_title(p.title)) for p in paragraphs]
    matched = {t for t in titles if t.strip() and tokenize(t) and t in q_phrase}
    scores = []
    for t, s in zip(titles, raw, strict=True):
        # A title named in the question, unless a longer matched title contains it ("Esma Sultan" in
        # "Esma Sultan Mansion").
        if t in matched and not any(t != m and t in m for m in matched):
            s += settings.title_bonus * best
        scores.append(s)
    if settings.link_bonus <= 0:
        return [(i, scores[i]) for i in sorted(range(len(paragraphs)), key=lambda i: (-scores[i], i))]
    # Greedy second hop: a paragraph whose title is named in an already chosen paragraph gets a bonus
    # (the bridge entity of "the director of the film X" is named in X's paragraph).
    left = list(range(len(paragraphs)))
    ranked: list[tuple[int, float]] = []
    chosen_text = " "
    while left:
        eff = {
            i: scores[i] + (settings.link_bonus * best if titles[i].strip() and titles[i] in chosen_text else 0.0)
            for i in left
        }
        i = min(left, key=lambda j: (-eff[j], j))
        left.remove(i)
        ranked.append((i, eff[i]))
        chosen_text += _phrase(paragraphs[i].text)
    return ranked


def rank_paragraphs(
    question: str,
    paragraphs: Sequence[Paragraph],
    settings: RetrievalSettings = DEFAULT_RETRIEVAL,
) -> list[tuple[Paragraph, float]]:
    """Every paragraph with its score, best first (ties keep the original order)."""
    return [(paragraphs[i], s) for i, s in _ranked(question, paragraphs, settings)]


def top_paragraphs(
    question: str,
    paragraphs: Sequence[Paragraph],
    k: int = 2,
    *,
    keep_order: bool = False,
    settings: RetrievalSettings = DEFAULT_RETRIEVAL,
) -> list[Paragraph]:
    """The k paragraphs most relevant to the question, best first (or in original order with keep_order)."""
    check_k(k)
    chosen = [i for i, _ in _ranked(question, paragraphs, settings)[:k]]
    if keep_order:
        chosen.sort()
    return [paragraphs[i] for i in chosen]


def supporting_recall(examples: Iterable[Example], k: int, settings: RetrievalSettings = DEFAULT_RETRIEVAL) -> float:
    """Share of examples whose supporting paragraphs are all in the top k (examples without any are skipped)."""
    hits = total = 0
    for ex in examples:
        gold = {(p.title, p.text) for p in ex.supporting}
        if not gold:
            continue
        total += 1
        got = {(p.title, p.text) for p in top_paragraphs(ex.question, ex.paragraphs, k, settings=settings)}
        hits += gold <= got
    return hits / total if total else float("nan")
