"""The claim to test, on questions nobody tuned on: a cascade of small-model workflows reaches at least the
large model's exact match (full context, direct) at no more than half its FLOPs, and its confidence beats
the random router with an interval above zero.

    .venv/bin/python benchmarks/cascade.py collect --split tuning      # small rungs and large arms, resumable
    .venv/bin/python benchmarks/cascade.py tune                         # choose workflow, estimator, threshold
    .venv/bin/python benchmarks/cascade.py collect --split evaluation   # the held-out rows
    .venv/bin/python benchmarks/cascade.py collect --split transfer     # 2WikiMultihopQA, never tuned on
    .venv/bin/python benchmarks/cascade.py evaluate                     # the chosen configuration, once

Splits (bundled data): tuning = HotpotQA rows 0-39 and 250-289; evaluation = HotpotQA rows 100-129 and
350-379; transfer = the first 40 of 2WikiMultihopQA. Nothing is chosen on the evaluation or transfer rows:
not the prompts, not BM25's settings (tuned earlier on rows 0-19 and 250-269), not the thresholds, not the
learned estimator's weights.

`collect` answers each question of a split with every small rung (the workflows `direct`, `sc`
(self-consistency, k=5, stop at 2 agreeing) and `verify` (the small model judging its own answer), each
behind BM25 retrieval of 2 paragraphs, each asking for token logprobs) and with the large model alone on
the full context and behind the same retrieval. It appends one JSON line per question to
runs/cascade/<split>.jsonl (a killed run resumes) with each answer, its exact match, FLOPs (cache hits at
their original cost), seconds (as first measured) and the final state's signals. Model calls go through
the shared response cache, so reruns are free.

`tune` reads the tuning lines. For each workflow x estimator (token probability mean/min, agreement share,
verifier P(yes), and a learned logistic regression over cheap features, scored by 5-fold cross-fitting on
the tuning rows) it reports AUROC for "the small answer is right", the deferral curve's area over random,
and the threshold sweep of a cascade that escalates to the large model on the full context. The chosen
configuration is the cheapest one whose tuning EM reaches the large model's at no more than half its
FLOPs; if none does, the most accurate one within half the FLOPs. It writes runs/cascade/chosen.json
(and learned.json, trained on all tuning rows).

`evaluate` applies that one configuration to the evaluation and transfer lines and prints, with the large
model on the full context and behind retrieval: EM with its 95% interval, FLOPs per question, share
escalated, AUROC, area over random with its interval, seconds per question, and the verdict.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import serving
from agentflow import (
    AgreementShare,
    AnswerTokenProb,
    Budget,
    BudgetLimits,
    ChatRequest,
    Completion,
    LearnedConfidence,
    Model,
    ModelClient,
    Signals,
    StateConfidence,
    VerifierYes,
    auroc,
    get_model,
)
from agentflow.eval import (
    CachedModel,
    Deferred,
    Example,
    ResponseCache,
    bootstrap_ci,
    deferral_curve,
    load_dataset,
    score,
)
from serving import DEFAULT_CACHE_DIR
from workflows import QADeps, QAState, build, short_span_rule

OUT = Path("runs/cascade")
SPLITS: dict[str, tuple[str, list[int]]] = {
    "tuning": ("hotpotqa", [*range(40), *range(250, 290)]),
    "evaluation": ("hotpotqa", [*range(100, 130), *range(350, 380)]),
    "transfer": ("2wikimultihopqa", list(range(40))),
}
WORKFLOWS = ("direct", "sc", "verify")
RETRIEVE_K = 2
MAX_TOKENS = 32
ESTIMATORS: dict[str, StateConfidence] = {
    "tokenprob-mean": AnswerTokenProb("mean"),
    "tokenprob-min": AnswerTokenProb("min"),
    "agreement": AgreementShare(),
    "verifier": VerifierYes(),
}
APPLIES = {"agreement": {"sc"}, "verifier": {"verify"}}  # estimators that read one workflow's evidence


class Clocked:
    """A model that adds up the seconds its calls took when first made (cache hits at their original time)."""

    def __init__(self, model: Model) -> None:
        self._model = model
        self.seconds = 0.0

    @property
    def name(self) -> str:
        return self._model.name

    async def complete(self, request: ChatRequest) -> Completion:
        c = await self._model.complete(request)
        self.seconds += float(c.meta.get("original_latency_s", c.latency_s)) if c.cached else c.latency_s
        return c


async def _answer(
    workflow: str, model: Model, ex: Example, *, retrieve_k: int | None, verifier: Model | None
) -> dict[str, Any]:
    budget = Budget(BudgetLimits(), name=f"{workflow}:{ex.id}")
    clocked = Clocked(model)
    judge = None if verifier is None else budget.wrap(verifier)
    deps = QADeps(
        model=budget.wrap(clocked),
        verifier=judge,
        rule=None if judge is not None else short_span_rule,
        budget=budget,
        max_tokens=MAX_TOKENS,
        logprobs=1,
    )
    state, _ = await build(workflow, retrieve_k=retrieve_k).run(
        QAState(question=ex.question, paragraphs=list(ex.paragraphs)), deps=deps
    )
    s = score(ex, state.answer)
    flops = sum(mb.with_cache().flops for mb in budget.bill().models.values())
    return {
        "answer": state.answer,
        "em": s.em,
        "f1": s.f1,
        "flops": flops,
        "seconds": round(clocked.seconds, 3),
        "signals": state.signals().to_dict(),
    }


def _interleaved(rows: list[int]) -> list[int]:
    """Bridge and comparison rows alternately (HotpotQA rows < 250 are bridge), so that a partly
    collected split is still balanced between the two kinds."""
    low, high = [r for r in rows if r < 250], [r for r in rows if r >= 250]
    out = [r for pair in zip(low, high, strict=False) for r in pair]
    return out + low[len(high) :] + high[len(low) :]


async def collect(split: str, *, reverse: bool = False) -> Path:
    dataset, rows = SPLITS[split]
    order = _interleaved(rows)
    examples = load_dataset(dataset, rows=order[::-1] if reverse else order)
    path = OUT / f"{split}.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    done = {json.loads(line)["id"] for line in path.read_text().splitlines()} if path.exists() else set()
    todo = [ex for ex in examples if ex.id not in done]
    print(f"{split}: {len(done)} questions already collected, {len(todo)} to go", flush=True)
    if not todo:
        return path
    cache = ResponseCache(DEFAULT_CACHE_DIR.parent / "responses.sqlite")
    small_name, large_name = get_model("small").name, get_model("large").name
    try:
        async with (
            serving.start_servers([small_name, large_name]) as (s_server, l_server),
            ModelClient(s_server.url, small_name, dialect="llama_cpp", timeout=600) as s_client,
            ModelClient(l_server.url, large_name, dialect="llama_cpp", timeout=900) as l_client,
        ):
            small, large = CachedModel(s_client, cache), CachedModel(l_client, cache)
            for i, ex in enumerate(todo, 1):
                began = time.monotonic()
                line: dict[str, Any] = {"id": ex.id, "split": split, "gold": ex.answer, "small": {}}
                for w in WORKFLOWS:
                    verifier = small if w == "verify" else None
                    line["small"][w] = await _answer(w, small, ex, retrieve_k=RETRIEVE_K, verifier=verifier)
                line["large"] = await _answer("direct", large, ex, retrieve_k=None, verifier=None)
                line["large_retrieval"] = await _answer("direct", large, ex, retrieve_k=RETRIEVE_K, verifier=None)
                with path.open("a", encoding="utf-8") as f:
                    f.write(json.dumps(line) + "\n")
                ems = " ".join(f"{w}={line['small'][w]['em']:.0f}" for w in WORKFLOWS)
                print(
                    f"{split} {i}/{len(todo)} {ex.id}: {ems} large={line['large']['em']:.0f} "
                    f"({time.monotonic() - began:.0f} s)",
                    flush=True,
                )
    finally:
        cache.close()
    return path


def _lines(split: str) -> list[dict[str, Any]]:
    path = OUT / f"{split}.jsonl"
    if not path.exists():
        sys.exit(f"{path} is missing: run `benchmarks/cascade.py collect --split {split}` first")
    by_id: dict[str, dict[str, Any]] = {}
    for text in path.read_text().splitlines():  # two collectors meeting halfway may both write a question
        line = json.loads(text)
        by_id.setdefault(line["id"], line)
    return list(by_id.values())


def _scores(
    lines: Sequence[dict[str, Any]], workflow: str, estimator: str, learned: LearnedConfidence | None
) -> list[float]:
    out = []
    for line in lines:
        signals = Signals.from_dict(line["small"][workflow]["signals"])
        est = learned if estimator == "learned" else ESTIMATORS[estimator]
        value = est.score(signals) if est is not None else None
        out.append(0.0 if value is None else float(value))  # nothing to read: escalate first
    return out


def _crossfit(lines: Sequence[dict[str, Any]], workflow: str, folds: int = 5) -> list[float]:
    """Learned-estimator scores on the tuning rows, each from a model that never saw that row."""
    order = list(range(len(lines)))
    random.Random(0).shuffle(order)
    scores = [0.0] * len(lines)
    for f in range(folds):
        held = set(order[f::folds])
        train = [lines[i] for i in order if i not in held]
        model = LearnedConfidence.fit(
            [Signals.from_dict(x["small"][workflow]["signals"]) for x in train],
            [bool(x["small"][workflow]["em"]) for x in train],
        )
        for i in held:
            scores[i] = model.predict(Signals.from_dict(lines[i]["small"][workflow]["signals"]))
    return scores


def _items(lines: Sequence[dict[str, Any]], workflow: str, scores: Sequence[float]) -> list[Deferred]:
    return [
        Deferred(s, x["small"][workflow]["em"], x["large"]["em"], x["small"][workflow]["flops"], x["large"]["flops"])
        for x, s in zip(lines, scores, strict=True)
    ]


def _cascade(lines: Sequence[dict[str, Any]], workflow: str, scores: Sequence[float], t: float) -> dict[str, Any]:
    """The cascade at threshold t: each question's answer, exact match, FLOPs and seconds."""
    ems, flops, secs, up = [], [], [], 0
    for x, s in zip(lines, scores, strict=True):
        small = x["small"][workflow]
        escalate = s < t
        up += escalate
        ems.append(x["large"]["em"] if escalate else small["em"])
        flops.append(small["flops"] + (x["large"]["flops"] if escalate else 0.0))
        secs.append(small["seconds"] + (x["large"]["seconds"] if escalate else 0.0))
    return {"ems": ems, "flops": flops, "seconds": secs, "escalated": up / len(lines)}


def _mean(xs: Sequence[float]) -> float:
    return sum(xs) / len(xs)


def tune() -> None:
    lines = _lines("tuning")
    n = len(lines)
    large_em = _mean([x["large"]["em"] for x in lines])
    large_flops = _mean([x["large"]["flops"] for x in lines])
    print(f"tuning split: {n} questions; large (full context) EM {large_em:.3f} at {large_flops:.3g} FLOPs/q")
    rows, candidates = [], []
    for w in WORKFLOWS:
        for est in [*ESTIMATORS, "learned"]:
            if w not in APPLIES.get(est, {w}):
                continue
            scores = _crossfit(lines, w) if est == "learned" else _scores(lines, w, est, None)
            labels = [bool(x["small"][w]["em"]) for x in lines]
            curve = deferral_curve(_items(lines, w, scores))
            a = auroc(scores, labels) if 0 < sum(labels) < n else float("nan")
            rows.append((w, est, _mean([x["small"][w]["em"] for x in lines]), a, curve))
            for t in sorted({*scores, 1.01}):
                c = _cascade(lines, w, scores, t)
                candidates.append((w, est, t, _mean(c["ems"]), _mean(c["flops"]) / large_flops, c["escalated"]))
    print("| workflow | estimator | small EM | AUROC | area over random [95% CI] | best cascade, <= half the FLOPs |")
    print("|---|---|---|---|---|---|")
    for w, est, em, a, curve in rows:
        ci = curve.area_interval
        ci_text = f"[{ci[0]:+.3f}, {ci[1]:+.3f}]" if ci else "(too few)"
        # the sweep over this estimator's thresholds: its most accurate cascade that stays within half
        mine = [c for c in candidates if c[0] == w and c[1] == est and c[4] <= 0.5]
        best = max(mine, key=lambda c: (c[3], -c[4]), default=None)
        sweep = "none" if best is None else f"EM {best[3]:.3f} at {best[4]:.2f} of the FLOPs, {best[5]:.0%} escalated"
        print(f"| {w} | {est} | {em:.3f} | {a:.3f} | {curve.area_over_random:+.3f} {ci_text} | {sweep} |")
    within = [c for c in candidates if c[4] <= 0.5]
    reaching = [c for c in within if c[3] >= large_em]
    if reaching:
        chosen, why = (
            min(reaching, key=lambda c: (c[4], -c[3])),
            "cheapest that reaches the large EM within half its FLOPs",
        )
    elif within:
        chosen, why = (
            max(within, key=lambda c: (c[3], -c[4])),
            "none reaches the large EM within half its FLOPs: the most accurate within half",
        )
    else:
        sys.exit("no configuration stays within half the large model's FLOPs on the tuning split")
    w, est, t, em, ratio, up = chosen
    print(
        f"chosen ({why}): workflow {w}, estimator {est}, threshold {t:.4f}: "
        f"tuning EM {em:.3f} at {ratio:.2f} of the large FLOPs, {up:.0%} escalated"
    )
    (OUT / "chosen.json").write_text(
        json.dumps(
            {
                "workflow": w,
                "estimator": est,
                "threshold": t,
                "why": why,
                "tuning_em": em,
                "tuning_flops_ratio": ratio,
                "tuning_escalated": up,
                "large_em": large_em,
            },
            indent=2,
        )
    )
    if est == "learned":
        model = LearnedConfidence.fit(
            [Signals.from_dict(x["small"][w]["signals"]) for x in lines], [bool(x["small"][w]["em"]) for x in lines]
        )
        model.save(OUT / "learned.json")


def _auroc_interval(scores: Sequence[float], labels: Sequence[bool], draws: int = 2000) -> tuple[float, float]:
    """A 95% percentile-bootstrap interval of the AUROC, resampling questions (seeded: reruns agree)."""
    rng = random.Random(0)
    n, values = len(scores), []
    for _ in range(draws):
        pick = [rng.randrange(n) for _ in range(n)]
        ys = [labels[i] for i in pick]
        if 0 < sum(ys) < n:
            values.append(auroc([scores[i] for i in pick], ys))
    values.sort()
    return values[int(0.025 * len(values))], values[int(0.975 * len(values)) - 1]


def evaluate() -> None:
    chosen = json.loads((OUT / "chosen.json").read_text())
    w, est, t = chosen["workflow"], chosen["estimator"], chosen["threshold"]
    learned = LearnedConfidence.load(OUT / "learned.json") if est == "learned" else None
    print(f"configuration chosen on the tuning split: workflow {w}, estimator {est}, threshold {t:.4f}")
    for split in ("evaluation", "transfer"):
        path = OUT / f"{split}.jsonl"
        if not path.exists():
            print(f"{split}: not collected")
            continue
        lines = _lines(split)
        n = len(lines)
        scores = _scores(lines, w, est, learned)
        c = _cascade(lines, w, scores, t)
        labels = [bool(x["small"][w]["em"]) for x in lines]
        curve = deferral_curve(_items(lines, w, scores))
        large_flops = _mean([x["large"]["flops"] for x in lines])
        print(f"\n{split} ({n} questions)")
        print("| arm | EM | 95% CI | FLOPs/q | vs large FLOPs | escalated | s/q |")
        print("|---|---|---|---|---|---|---|")
        arms = {
            "cascade": (c["ems"], c["flops"], c["seconds"], c["escalated"]),
            f"small {w}": (
                [x["small"][w]["em"] for x in lines],
                [x["small"][w]["flops"] for x in lines],
                [x["small"][w]["seconds"] for x in lines],
                0.0,
            ),
            "large": (
                [x["large"]["em"] for x in lines],
                [x["large"]["flops"] for x in lines],
                [x["large"]["seconds"] for x in lines],
                1.0,
            ),
            "large-retrieval": (
                [x["large_retrieval"]["em"] for x in lines],
                [x["large_retrieval"]["flops"] for x in lines],
                [x["large_retrieval"]["seconds"] for x in lines],
                1.0,
            ),
        }
        for name, (ems, flops, secs, up) in arms.items():
            em_ci = bootstrap_ci(ems)
            print(
                f"| {name} | {_mean(ems):.3f} | {em_ci.low:.3f}-{em_ci.high:.3f} | {_mean(flops):.3g} | "
                f"{_mean(flops) / large_flops:.2f} | {up:.0%} | {_mean(secs):.1f} |"
            )
        a = auroc(scores, labels) if 0 < sum(labels) < n else float("nan")
        a_lo, a_hi = _auroc_interval(scores, labels)
        ci = curve.area_interval
        print(
            f"AUROC {a:.3f} [{a_lo:.3f}, {a_hi:.3f}]; area over random {curve.area_over_random:+.3f} "
            + (f"[{ci[0]:+.3f}, {ci[1]:+.3f}]" if ci else "(too few for an interval)")
        )
        # what limits it: the oracle escalates exactly the small rung's wrong answers; the ceiling is
        # every question answered by whichever of the small rung and the large model got it right
        small_ok = [bool(x["small"][w]["em"]) for x in lines]
        large_ok = [bool(x["large"]["em"]) for x in lines]
        print(
            f"small {w} right {sum(small_ok)}/{n}, large right {sum(large_ok)}/{n}, both "
            f"{sum(a and b for a, b in zip(small_ok, large_ok, strict=True))}, either "
            f"{sum(a or b for a, b in zip(small_ok, large_ok, strict=True))}; the oracle escalates "
            f"{n - sum(small_ok)}/{n} ({1 - sum(small_ok) / n:.0%}) for EM "
            f"{sum(a or b for a, b in zip(small_ok, large_ok, strict=True)) / n:.3f}"
        )
        holds_em = _mean(c["ems"]) >= _mean(arms["large"][0])
        holds_flops = _mean(c["flops"]) <= 0.5 * large_flops
        beats_random = ci is not None and ci[0] > 0
        print(
            f"claim on {split}: EM >= large: {holds_em}; FLOPs <= half: {holds_flops}; "
            f"router beats random (interval above 0): {beats_random}"
        )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("collect")
    c.add_argument("--split", choices=list(SPLITS), required=True)
    c.add_argument("--reverse", action="store_true", help="from the last question (to meet another run halfway)")
    sub.add_parser("tune")
    sub.add_parser("evaluate")
    args = p.parse_args()
    if args.cmd == "collect":
        asyncio.run(collect(args.split, reverse=args.reverse))
    elif args.cmd == "tune":
        tune()
    else:
        evaluate()


if __name__ == "__main__":
    main()
