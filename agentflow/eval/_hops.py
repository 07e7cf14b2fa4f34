"""Supporting-paragraph recall hop by hop, for retrieval that reads in several rounds.

A multi-hop retriever (IRCoT, self-ask, `workflows.multihop`) reads a few paragraphs for the question,
finds the bridge entity in them, then reads more with what it found. `hop_recall` says, after each
hop, how many of the gold (`is_supporting`) paragraphs have been read so far:

    reads = [[["Kiss and Tell (1945 film)"], ["Shirley Temple"]], ...]   # per example, per hop: titles
    for r in hop_recall(examples, reads):
        print(r.hop, r.read, r.recall, r.partial)

`bridge_title(example)` is the oracle answer to the first hop: the title of the supporting paragraph
the question does not name (the one a second retrieval must find), for measuring the second hop
without a model.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from .._exceptions import ConfigError
from ._data import Example, Paragraph
from ._retrieval import _norm_title, _phrase, rank_paragraphs

__all__ = ["HopRecall", "bridge_title", "hop_recall"]


@dataclass(frozen=True, slots=True)
class HopRecall:
    """Recall after hop `hop` (1-based), counting everything read in hops 1..hop.

    `recall` is the share of examples whose supporting paragraphs were all read (recall@k in the
    multi-hop literature, with k = `read`); `partial` the mean share of supporting paragraphs read;
    `read` the mean number of distinct paragraphs read so far; `n` the examples counted (those
    with supporting paragraphs)."""

    hop: int
    read: float
    recall: float
    partial: float
    n: int


def _title(item: Paragraph | str) -> str:
    return item if isinstance(item, str) else item.title


def hop_recall(
    examples: Sequence[Example],
    reads: Sequence[Sequence[Sequence[Paragraph | str]]],
) -> list[HopRecall]:
    """Recall of supporting paragraphs after each hop, over all examples.

    `reads[i][h]` is what hop h+1 read for `examples[i]` (paragraphs, or their titles: paragraphs
    are matched by title). An example that stopped after fewer hops keeps what it had read.
    Examples without supporting paragraphs are skipped."""
    if len(reads) != len(examples):
        raise ConfigError(
            f"hop_recall got {len(examples)} examples but {len(reads)} retrieval records: "
            "pass one list of hops (each a list of paragraphs or titles) per example, in the same order"
        )
    hops = max((len(r) for r in reads), default=0)
    counted = 0
    read_sum = [0.0] * hops
    full = [0] * hops
    part = [0.0] * hops
    for ex, per_hop in zip(examples, reads, strict=True):
        gold = {p.title for p in ex.supporting}
        if not gold:
            continue
        counted += 1
        seen: set[str] = set()
        for h in range(hops):
            if h < len(per_hop):
                seen.update(_title(p) for p in per_hop[h])
            read_sum[h] += len(seen)
            full[h] += gold <= seen
            part[h] += len(gold & seen) / len(gold)
    if not counted:
        return []
    return [HopRecall(h + 1, read_sum[h] / counted, full[h] / counted, part[h] / counted, counted) for h in range(hops)]


def bridge_title(example: Example) -> str | None:
    """The oracle first-hop answer: the supporting paragraph a second retrieval has to find.

    Among the supporting paragraphs, those whose title the question does not name; of these, those
    named in another supporting paragraph (the link a reader follows); if several remain (or the
    question names every one, as in comparisons), the one BM25 ranks lowest for the question alone.
    None when the example has no supporting paragraphs."""
    gold = list(example.supporting)
    if not gold:
        return None
    question = _phrase(example.question)

    def named(p: Paragraph, text: str) -> bool:
        title = _phrase(_norm_title(p.title))
        return bool(title.strip()) and title in text

    pool = [p for p in gold if not named(p, question)] or gold
    linked = [p for p in pool if any(named(p, _phrase(q.text)) for q in gold if q is not p)]
    pool = linked or pool
    if len(pool) == 1:
        return pool[0].title
    order = {id(p): i for i, (p, _) in enumerate(rank_paragraphs(example.question, example.paragraphs))}
    return max(pool, key=lambda p: order.get(id(p), -1)).title
