"""A capacity model on paper: how many questions an hour one GPU, eight, and a Ray cluster of them answer,
with and without the cascade, from measured tokens per question and escalation rate.

    .venv/bin/python benchmarks/capacity.py                        # reads runs/cascade (benchmarks/cascade.py)
    .venv/bin/python benchmarks/capacity.py --mfu 0.4 --gpu-tflops 312   # another GPU (A100: 312)

Inputs, every one printed with the result:
- tokens per question of each arm, measured: the FLOPs `benchmarks/cascade.py collect` recorded for the local
  models (2 x active parameters x tokens, the bill's rule) divided back by 2 x the local model's parameters;
- the share of questions the cascade escalates, measured: the configuration `benchmarks/cascade.py tune`
  chose, applied to the evaluation lines;
- a GPU's dense FP16 throughput (default 989 TFLOP/s, an H100 SXM) and the share of it serving achieves
  (model FLOPs utilisation, default 0.25: an assumption, shown with 0.10 and 0.40 beside it);
- the GPU models of the catalog (Qwen2.5-7B-Instruct-AWQ small, Qwen2.5-72B-Instruct-AWQ large): the same
  tokens per question, their own parameters.

The arithmetic: FLOPs per question = 2 x params x tokens, summed over the models a question reaches (the
cascade: the small workflow always, the large model on the escalated share); questions per hour =
GPUs x peak x MFU x 3600 / FLOPs per question. Prompts dominate these tokens (answers are capped at 32),
and prefill is compute-bound, which is what makes a FLOPs model fair here; it ignores memory limits
(the 72B AWQ needs ~41 GB of weights: one 80 GB GPU, or tensor parallel across smaller ones) and
batching inefficiency beyond what the MFU stands for.

One point is checked against a measured run. `--measure N` starts the small and the large model here (llama.cpp
on 127.0.0.1), asks both the same N evaluation questions with their full context (no cache: every call is
computed), one at a time, one model after the other; fits this machine's effective FLOP/s on the small model
and predicts the large model's questions per hour from its FLOPs per question, next to what it measured.
That is the model's own arithmetic (throughput / FLOPs per question) moved from one model to another
four times its size. Without `--measure`, the check reuses the seconds `collect` recorded, which were
measured while other work shared the two cores and are a weaker check.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Any

from agentflow import LearnedConfidence, Signals, get_model

RUNS = Path("runs/cascade")
GPU_COUNTS = {"one GPU": 1, "eight GPUs (one node)": 8, "Ray cluster, 8 nodes x 8": 64}
MFUS = (0.10, 0.25, 0.40)


def _mean(xs: list[float]) -> float:
    return sum(xs) / len(xs) if xs else float("nan")


def _escalated(lines: list[dict[str, Any]], chosen: dict[str, Any]) -> list[bool]:
    """Which questions the chosen configuration escalates (as benchmarks/cascade.py evaluate decides)."""
    sys.path.insert(0, str(Path(__file__).parent))
    from cascade import ESTIMATORS  # the benchmark's own estimator table

    w, est, t = chosen["workflow"], chosen["estimator"], float(chosen["threshold"])
    model = LearnedConfidence.load(RUNS / "learned.json") if est == "learned" else ESTIMATORS[est]
    out = []
    for x in lines:
        score = model.score(Signals.from_dict(x["small"][w]["signals"]))
        out.append((0.0 if score is None else float(score)) < t)
    return out


async def _measure(n: int) -> None:
    """Ask the small and the large model the same `n` full-context questions, timed, and check the arithmetic."""
    import time

    import serving
    from agentflow import ModelClient
    from agentflow.eval import load_dataset

    examples = load_dataset("hotpotqa", rows=list(range(100, 100 + n)))
    prompts = [
        "\n\n".join(f"{p.title}: {p.text}" for p in x.paragraphs)
        + f"\n\nQuestion: {x.question}\nAnswer with a short phrase only."
        for x in examples
    ]
    rows: dict[str, tuple[float, float, int]] = {}  # role -> (seconds, FLOPs, tokens) summed
    for role in ("small", "large"):
        spec = get_model(role)
        async with serving.start_servers([role]) as (server,):
            async with ModelClient(server.url, server.model_name, dialect="llama_cpp") as client:
                await client.chat("Say OK.", max_tokens=2)  # the first call loads the weights: not timed
                secs = flops = 0.0
                tokens = 0
                for prompt in prompts:
                    began = time.perf_counter()
                    done = await client.chat(prompt, max_tokens=32, temperature=0.0)
                    secs += time.perf_counter() - began
                    used = done.usage.prompt_tokens + done.usage.completion_tokens
                    tokens += used
                    flops += spec.flops(used)
        rows[role] = (secs, flops, tokens)
        print(f"{role} ({spec.name}): {n} questions, {tokens / n:,.0f} tokens/q, {secs / n:.1f} s/q, "
              f"{flops / secs / 1e9:.1f} GFLOP/s")  # fmt: skip
    fit = rows["small"][1] / rows["small"][0]
    secs, flops, _ = rows["large"]
    predicted_qph, measured_qph = 3600 * fit / (flops / n), 3600 * n / secs
    print(f"\ncheck: this machine's {fit / 1e9:.1f} GFLOP/s (fitted on the small model) / the large model's "
          f"{flops / n:.3g} FLOPs per question")  # fmt: skip
    print("| large model, full context | predicted questions/h | measured questions/h | measured / predicted |")
    print("|---|---:|---:|---:|")
    ratio = measured_qph / predicted_qph
    print(f"| {n} HotpotQA rows 100-{99 + n} | {predicted_qph:.0f} | {measured_qph:.0f} | {ratio:.2f} |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--split", default="evaluation")
    p.add_argument("--gpu-tflops", type=float, default=989.0, help="dense FP16 peak per GPU (H100 SXM: 989)")
    p.add_argument("--mfu", type=float, default=0.25, help="share of the peak serving achieves (assumed)")
    p.add_argument("--measure", type=int, metavar="N", help="time N questions on both local models (see above)")
    args = p.parse_args()
    if args.measure is not None and not 1 <= args.measure <= 400:
        p.error("--measure N: N questions, 1 to 400 (the evaluation rows start at 100 of the bundled 500)")
    if args.measure:
        import asyncio

        asyncio.run(_measure(args.measure))
        return
    path, chosen_path = RUNS / f"{args.split}.jsonl", RUNS / "chosen.json"
    if not path.exists() or not chosen_path.exists():
        sys.exit(f"{path} or {chosen_path} is missing: run benchmarks/cascade.py collect, tune and evaluate first")
    by_id: dict[str, dict[str, Any]] = {}
    for text in path.read_text().splitlines():
        line = json.loads(text)
        by_id.setdefault(line["id"], line)
    lines = list(by_id.values())
    chosen = json.loads(chosen_path.read_text())
    w = chosen["workflow"]
    small_cpu, large_cpu = get_model("small"), get_model("large")
    small_gpu, large_gpu = get_model("qwen2.5-7b-instruct-awq"), get_model("qwen2.5-72b-instruct-awq")
    up = _escalated(lines, chosen)
    share = sum(up) / len(up)

    small_tokens = _mean([x["small"][w]["flops"] / small_cpu.flops(1) for x in lines])
    large_tokens = _mean([x["large"]["flops"] / large_cpu.flops(1) for x in lines])
    print(f"inputs: {len(lines)} {args.split} questions from {path}; chosen workflow {w!r}, estimator")
    print(f"  {chosen['estimator']!r}, threshold {float(chosen['threshold']):.4f}: escalates {share:.1%}")
    print(f"  tokens/question: small {w} behind retrieval {small_tokens:,.0f}; large, full context {large_tokens:,.0f}")
    print(f"  GPU: {args.gpu_tflops:g} TFLOP/s dense peak, MFU {args.mfu:g} (assumed)")

    f_large = large_gpu.flops(round(large_tokens))
    f_cascade = small_gpu.flops(round(small_tokens)) + share * f_large
    print(f"\nFLOPs/question on the GPU models: large alone 2 x {large_gpu.active_params:,} x {large_tokens:,.0f}")
    print(f"  = {f_large:.3g}; cascade 2 x {small_gpu.active_params:,} x {small_tokens:,.0f} + {share:.3f} x large")
    print(f"  = {f_cascade:.3g} ({f_cascade / f_large:.2f} of the large model's)")

    print("\n| GPUs | MFU | large alone, questions/h | cascade, questions/h | ratio |")
    print("|---|---:|---:|---:|---:|")
    for name, gpus in GPU_COUNTS.items():
        for mfu in sorted({*MFUS, args.mfu}):
            per_s = gpus * args.gpu_tflops * 1e12 * mfu
            q_large, q_cascade = per_s * 3600 / f_large, per_s * 3600 / f_cascade
            print(f"| {name} | {mfu:.2f} | {q_large:,.0f} | {q_cascade:,.0f} | {q_cascade / q_large:.1f}x |")

    # the check: fit this CPU's FLOP/s on the small direct rung, predict the others' seconds per question
    # medians: seconds are as first measured, and a call first made on a loaded machine took longer
    fit = statistics.median(x["small"]["direct"]["flops"] / x["small"]["direct"]["seconds"] for x in lines)
    arms = {
        "large, full context": ([x["large"]["flops"] for x in lines], [x["large"]["seconds"] for x in lines]),
        f"cascade ({w}, escalating {share:.0%})": (
            [x["small"][w]["flops"] + (x["large"]["flops"] if u else 0.0) for x, u in zip(lines, up, strict=True)],
            [x["small"][w]["seconds"] + (x["large"]["seconds"] if u else 0.0) for x, u in zip(lines, up, strict=True)],
        ),
    }
    print(f"\ncheck on this machine: {fit / 1e9:.1f} GFLOP/s, fitted on the small direct rung (median per question)")
    print("| arm | predicted s/q (median) | measured s/q (median) | measured / predicted |")
    print("|---|---:|---:|---:|")
    for name, (flops, secs) in arms.items():
        predicted, measured = statistics.median(flops) / fit, statistics.median(secs)
        print(f"| {name} | {predicted:.1f} | {measured:.1f} | {measured / predicted:.2f} |")


if __name__ == "__main__":
    main()
