"""BM25 backends for paragraph retrieval: `rank-bm25` (what agentflow uses) against `bm25s`.

    .venv/bin/python benchmarks/retrieval.py [--repeats 5]

Both rank the bundled HotpotQA rows 0-39 (bridge) and 250-289 (comparison), the tuning split (rows
100-129 and 350-379 are held out and never read here), and are scored on supporting-paragraph
recall@2 and @3: the share of questions whose two gold paragraphs are both among the top k. Each
backend is measured as plain BM25 (no title weight, no bonuses) and with agentflow's defaults (title
weight and the title/link bonuses), only the BM25 scorer changing. Time per query is the median over
`--repeats` interleaved passes of ranking every question's ten paragraphs: BM25 alone (building the
index and scoring), and the whole ranking (tokenising, BM25, bonuses). The last lines count the
questions whose top-k set differs between the backends (a workflow that retrieves would send those
questions a different prompt).

Needs `pip install 'agentflow[eval]' bm25s`.
"""

from __future__ import annotations

import argparse
import importlib
import platform
import statistics
import time
from collections.abc import Sequence
from dataclasses import replace

from agentflow.eval import Example, RetrievalSettings, bm25_scores, load_dataset, rank_paragraphs, supporting_recall

TUNING_ROWS = [*range(40), *range(250, 290)]


def bm25s_scores(documents: Sequence[Sequence[str]], query: Sequence[str], k1: float, b: float) -> list[float]:
    """BM25 with `bm25s` (its default, Lucene's variant: idf = ln(1 + (N - n + 0.5) / (n + 0.5)))."""
    try:
        bm25s = importlib.import_module("bm25s")
    except ImportError:
        raise SystemExit("this benchmark compares with bm25s: pip install bm25s") from None
    index = bm25s.BM25(k1=k1, b=b, method="lucene", dtype="float64")
    index.index([list(doc) for doc in documents], show_progress=False)
    ids = index.get_tokens_ids(list(query))  # bm25s fails on a query with no indexed word
    return [0.0] * len(documents) if not ids else [float(s) for s in index.get_scores(ids)]


BACKENDS = {"rank-bm25": bm25_scores, "bm25s": bm25s_scores}
DEFAULTS = RetrievalSettings()
PLAIN = RetrievalSettings(title_weight=0, title_bonus=0.0, link_bonus=0.0)
RANKINGS = (("plain BM25", PLAIN), ("defaults", DEFAULTS))


def _one_pass_ms(examples: list[Example], settings: RetrievalSettings) -> tuple[float, float]:
    """(BM25 alone, the whole ranking) in milliseconds per question, over one pass of every question."""
    scorer_s: list[float] = []

    def timed(documents: Sequence[Sequence[str]], query: Sequence[str], k1: float, b: float) -> Sequence[float]:
        start = time.perf_counter()
        out = settings.scorer(documents, query, k1, b)
        scorer_s.append(time.perf_counter() - start)
        return out

    counted = replace(settings, scorer=timed)
    start = time.perf_counter()
    for ex in examples:
        rank_paragraphs(ex.question, ex.paragraphs, counted)
    total_s = time.perf_counter() - start
    return sum(scorer_s) / len(examples) * 1000, total_s / len(examples) * 1000


def _top_sets(examples: list[Example], settings: RetrievalSettings, k: int) -> list[frozenset[str]]:
    return [frozenset(p.title for p, _ in rank_paragraphs(ex.question, ex.paragraphs, settings)[:k]) for ex in examples]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=7, help="timing passes over the questions (median kept)")
    args = parser.parse_args()
    examples = load_dataset("hotpotqa", rows=TUNING_ROWS)
    for scorer in BACKENDS.values():  # warm up: imports and first-call costs stay out of the timings
        rank_paragraphs(examples[0].question, examples[0].paragraphs, replace(DEFAULTS, scorer=scorer))

    print(f"HotpotQA rows 0-39 + 250-289 ({len(examples)} questions); Python {platform.python_version()}")
    print()
    arms = {
        (name, label): replace(base, scorer=scorer) for name, scorer in BACKENDS.items() for label, base in RANKINGS
    }
    passes: dict[tuple[str, str], list[tuple[float, float]]] = {arm: [] for arm in arms}
    for _ in range(args.repeats):  # interleaved, so a busy moment of the machine hits every arm alike
        for arm, settings in arms.items():
            passes[arm].append(_one_pass_ms(examples, settings))
    print("| backend | ranking | recall@2 | recall@3 | BM25 ms/query | ranking ms/query |")
    print("| --- | --- | ---: | ---: | ---: | ---: |")
    for (name, label), settings in arms.items():
        r2 = supporting_recall(examples, 2, settings)
        r3 = supporting_recall(examples, 3, settings)
        bm25_ms = statistics.median(p[0] for p in passes[name, label])
        total_ms = statistics.median(p[1] for p in passes[name, label])
        print(f"| {name} | {label} | {r2:.3f} | {r3:.3f} | {bm25_ms:.2f} | {total_ms:.2f} |")
    print()
    for k in (2, 3):
        ours = _top_sets(examples, replace(DEFAULTS, scorer=bm25_scores), k)
        other = _top_sets(examples, replace(DEFAULTS, scorer=bm25s_scores), k)
        changed = sum(a != b for a, b in zip(ours, other, strict=True))
        print(f"top-{k} set differs between the backends (defaults) on {changed} of {len(examples)} questions")


if __name__ == "__main__":
    main()
