"""Does retrieving again with the first hop's answer find the second paragraph? Supporting-paragraph recall per hop.

    .venv/bin/python benchmarks/multihop_recall.py              # 80 tuning questions, 160 model calls
    .venv/bin/python benchmarks/multihop_recall.py --no-model   # BM25 and the oracle only, seconds

On HotpotQA's tuning rows (0-39 bridge, 250-289 comparison; rows 100-129 and 350-379 are held out and
only read with `--split heldout`, which never starts a model), for a total of k = 2, 3, 4 paragraphs read:

- single-shot BM25: `top_paragraphs(question, k)` (with the title and link bonuses);
- two hops, oracle bridge: hop 1 reads k1 paragraphs, hop 2 reads k - k1 more for the question plus
  the gold bridge title (`bridge_title`: the supporting paragraph the question does not name);
- two hops, model bridge: the same, with the small model (Qwen2.5-Coder 0.5B on a local llama.cpp
  server) naming the bridge after reading hop 1's paragraphs: `workflows.multihop.retriever`, run as is.

Recall@k is the share of questions whose supporting paragraphs were all read; "partial" the mean share of
them read. The first run took 53 min on 2 busy cores (about 20 s a call); model responses go to a response
cache (`--out`/responses.sqlite), so a rerun takes seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from agentflow import Model, ModelClient, get_model
from agentflow.eval import (
    CachedModel,
    Example,
    HopRecall,
    ResponseCache,
    bridge_title,
    hop_recall,
    load_dataset,
    top_paragraphs,
)
from agentflow.testing import FunctionModel
from workflows import QADeps, QAState
from workflows.multihop import hop_findings, hops_read, retriever

SPLITS = {"tuning": [*range(40), *range(250, 290)], "heldout": [*range(100, 130), *range(350, 380)]}
# (k1, k2) per total k: hop 1 reads k1 paragraphs, hop 2 reads k2 more.
HOPS = {2: [(1, 1)], 3: [(1, 2), (2, 1)], 4: [(1, 3), (2, 2)]}

Reads = list[list[list[str]]]


def single_shot(examples: Sequence[Example], k: int) -> Reads:
    return [[[p.title for p in top_paragraphs(e.question, e.paragraphs, k)]] for e in examples]


async def two_hops(examples: Sequence[Example], k1: int, k2: int, bridge: Model | None) -> tuple[Reads, list[str]]:
    """Run `workflows.multihop.retriever` on every question; `bridge=None` answers with the oracle title."""
    graph = retriever(k=k1, next_k=k2, hops=2)
    reads: Reads = []
    found: list[str] = []
    for i, e in enumerate(examples):
        model = bridge or oracle(e)
        state, _ = await graph.run(
            QAState(question=e.question, paragraphs=list(e.paragraphs)), deps=QADeps(model=model)
        )
        reads.append(hops_read(state))
        found.extend(hop_findings(state))
        if isinstance(bridge, CachedModel) and (i + 1) % 20 == 0:
            print(
                f"    {k1}+{k2}: {i + 1}/{len(examples)} (cache hits {bridge.hits}, calls {bridge.misses})", flush=True
            )
    return reads, found


def oracle(example: Example) -> Model:
    """A 'model' that answers the bridge question with the gold bridge title of this example."""
    title = bridge_title(example) or ""
    return FunctionModel(lambda _: title, name="oracle-bridge")


def row(method: str, k: int, split: str, examples: Sequence[Example], reads: Reads) -> dict[str, Any]:
    def last(sub: Sequence[HopRecall]) -> float:
        return sub[-1].recall if sub else float("nan")

    per_hop = hop_recall(examples, reads)
    kinds = {}
    for kind in ("bridge", "comparison"):
        idx = [i for i, e in enumerate(examples) if e.type == kind]
        kinds[kind] = last(hop_recall([examples[i] for i in idx], [reads[i] for i in idx]))
    return {
        "method": method,
        "k": k,
        "split": split,
        "recall_per_hop": [h.recall for h in per_hop],
        "read_per_hop": [h.read for h in per_hop],
        "partial_per_hop": [h.partial for h in per_hop],
        "bridge": kinds["bridge"],
        "comparison": kinds["comparison"],
        "n": per_hop[-1].n,
    }


def table(rows: list[dict[str, Any]]) -> str:
    out = [
        "| method | k | read per hop | hop 1 recall (partial) | recall@k (partial) | bridge q. | comparison q. |",
        "|---|---:|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        rec, part = r["recall_per_hop"], r["partial_per_hop"]
        hop1 = f"{rec[0]:.3f} ({part[0]:.3f})" if len(rec) > 1 else "-"
        out.append(
            f"| {r['method']} | {r['k']} | {r['split']} | {hop1} | {rec[-1]:.3f} ({part[-1]:.3f}) | "
            f"{r['bridge']:.3f} | {r['comparison']:.3f} |"
        )
    return "\n".join(out)


def bridge_hits(examples: Sequence[Example], found: Sequence[str]) -> float:
    """Share of model bridge answers that name the gold bridge title (or are named by it)."""
    gold = [(bridge_title(e) or "").lower() for e in examples]
    hits = sum(bool(f) and (f.lower() in g or g.split(" (")[0] in f.lower()) for f, g in zip(found, gold, strict=True))
    return hits / max(1, len(found))


async def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--split", choices=list(SPLITS), default="tuning")
    p.add_argument("--no-model", action="store_true", help="BM25 and the oracle bridge only")
    p.add_argument("--out", type=Path, default=Path("runs/multihop"))
    args = p.parse_args()
    use_model = not args.no_model
    if use_model and args.split != "tuning":
        sys.exit("the model runs on the tuning split only; pass --no-model with --split heldout")
    examples = load_dataset("hotpotqa", rows=SPLITS[args.split])
    args.out.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    for k, splits in HOPS.items():
        rows.append(row("single-shot BM25", k, f"{k}", examples, single_shot(examples, k)))
        for k1, k2 in splits:
            reads, _ = await two_hops(examples, k1, k2, None)
            rows.append(row("two hops, oracle bridge", k, f"{k1}+{k2}", examples, reads))
    notes: list[str] = []
    if use_model:
        import serving

        name = get_model("small").name
        t0 = time.monotonic()
        async with serving.start_servers([name]) as (server,):
            async with ModelClient(server.url, name, dialect="llama_cpp", timeout=600) as client:
                model = CachedModel(client, ResponseCache(args.out / "responses.sqlite"))
                for k, splits in HOPS.items():
                    for k1, k2 in splits:
                        print(f"  model bridge, k={k} ({k1}+{k2})", flush=True)
                        reads, found = await two_hops(examples, k1, k2, model)
                        rows.append(row("two hops, small-model bridge", k, f"{k1}+{k2}", examples, reads))
                        hits = bridge_hits(examples, found)
                        notes.append(f"k1={k1}: the small model's bridge names the gold bridge title in {hits:.0%}")
                notes.append(f"model calls {model.misses}, cache hits {model.hits}, {time.monotonic() - t0:.0f} s")
    rows.sort(key=lambda r: (r["k"], r["method"] != "single-shot BM25", r["method"], r["split"]))
    text = table(rows)
    print(f"\nHotpotQA {args.split} rows ({len(examples)} questions), recall of both supporting paragraphs:\n")
    print(text)
    for n in dict.fromkeys(notes):
        print("-", n)
    print("command:", " ".join([".venv/bin/python benchmarks/multihop_recall.py", *sys.argv[1:]]))
    (args.out / f"recall-{args.split}.json").write_text(json.dumps({"rows": rows, "notes": notes}, indent=1))


if __name__ == "__main__":
    asyncio.run(main())
