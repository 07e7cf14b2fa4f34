"""How a comparison report is shown: the table for the terminal, report.md, and pareto.png.

Each takes the report.json content (a dict) that `_report.build_report` makes, so a report written by an
earlier run renders the same way.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .._exceptions import MissingDependencyError

if TYPE_CHECKING:
    from rich.table import Table

__all__ = ["CACHE_MARK", "deferral_line", "notes", "plot_pareto", "render_markdown", "render_table", "verdicts"]


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}"


def _sci(x: float | None) -> str:
    return "-" if x is None else f"{x:.3g}"


def _secs(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}"


_COLUMNS = (
    "arm",
    "n",
    "EM %",
    "95% CI",
    "F1 %",
    "prompt tok",
    "compl tok",
    "FLOPs/q",
    "J/q",
    "calls",
    "escal %",
    "errors",
    "wall s",
    "s/q p50",
    "s/q p95",
)

CACHE_MARK = "*"
"""Marks a wall time that comes mostly from the response cache (not comparable with the other arms)."""


ESTIMATE_MARK = "~"
"""Marks an energy figure that is estimated (see the note under the table for how), not measured."""


def _joules(value: float | None, measured: bool | None) -> str:
    return "-" if value is None else f"{'' if measured else ESTIMATE_MARK}{value:.0f}"


def _interval(a: Mapping[str, Any]) -> str:
    note = a.get("interval_note")
    if note:
        return str(note)
    lo, hi = a["em_ci95"]
    return "-" if lo is None or hi is None else f"{_pct(lo)}-{_pct(hi)}"


def _table_rows(report: Mapping[str, Any]) -> list[tuple[str, ...]]:
    rows: list[tuple[str, ...]] = []
    for a in report["arms"]:
        cached = CACHE_MARK if a.get("wall_mostly_from_cache") else ""
        rows.append(
            (
                str(a["name"]),
                str(a["n"]),
                _pct(a["em"]),
                _interval(a),
                _pct(a["f1"]),
                str(a["prompt_tokens"]),
                str(a["completion_tokens"]),
                _sci(a["flops_per_question"]),
                _joules(a.get("energy_j_per_answer"), a.get("energy_measured")),
                str(a["calls"]),
                _pct(a["escalation_rate"]),
                str(a["errors"]),
                f"{a['wall_s']:.1f}{cached}",
                _secs(a.get("wall_s_p50")),
                _secs(a.get("wall_s_p95")),
            )
        )
    return rows


def notes(report: Mapping[str, Any]) -> list[str]:
    """Sentences that qualify the table: answers served by the response cache (and wall times that are
    therefore not comparable), and failed questions with the first error in full."""
    lines = []
    for a in report["arms"]:
        from_cache = int(a.get("answers_from_cache", 0))
        if from_cache:
            line = f"{a['name']}: {from_cache} of {a['n']} answers came from the response cache"
            if a.get("wall_mostly_from_cache"):
                line += f" ({CACHE_MARK} its wall time is mostly cache reads, not comparable with the other arms)"
            lines.append(line)
        elif a.get("wall_mostly_from_cache"):
            lines.append(
                f"{a['name']}: {a['cached_calls']} of {a['calls']} calls came from the response cache "
                f"({CACHE_MARK} its wall time is not comparable with the other arms)"
            )
    for method in sorted({str(a["energy_method"]) for a in report["arms"] if a.get("energy_method")}):
        arms = [a for a in report["arms"] if a.get("energy_method") == method]
        per_1000 = ", ".join(
            f"{a['name']} {a['energy_wh_per_1000']:.2f}" for a in arms if a.get("energy_wh_per_1000") is not None
        )
        label = "measured" if arms[0].get("energy_measured") else f"estimated ({ESTIMATE_MARK})"
        how = method.split(":", 1)[-1]  # "estimated:flops" -> "flops": the label above says which kind
        basis = str(arms[0].get("energy_basis") or "").removeprefix("estimate: ").removeprefix("measured: ")
        lines.append(f"energy {label} from {how} (e.g. {arms[0]['name']}: {basis}); Wh per 1,000 questions: {per_1000}")
    for a in report["arms"]:
        if a["errors"]:
            first = a.get("first_error") or {}
            lines.append(
                f"{a['name']}: {a['errors']} of {a['n']} questions failed; the first "
                f"(question {first.get('question_id')}): {first.get('error')}"
            )
    for a in report["arms"]:
        if a.get("degraded"):
            cut = a.get("first_degradation") or {}
            lines.append(
                f"{a['name']}: {a['degraded']} of {a['n']} questions cut short by the budget (a cheaper answer "
                f"kept, or none); the first (question {cut.get('question_id')}): {cut.get('why')}"
            )
    return lines


def _curve_text(arm: str, c: Mapping[str, Any]) -> str:
    if not c.get("available"):
        return f"{arm}: no curve ({c.get('why')})"
    lo_hi = c.get("area_interval")
    spread = f"95% CI {lo_hi[0]:+.3f} to {lo_hi[1]:+.3f}" if lo_hi else f"n={c['n']}: too few for an interval"
    recovered = c.get("recovered")
    share = "" if recovered is None else f", {100 * recovered:.0f}% of the oracle's"
    roc = f"AUROC {c['auroc']:.2f}" if c.get("auroc") is not None else f"no AUROC ({c.get('auroc_note')})"
    return (
        f"{arm}: area over random {c['area_over_random']:+.3f} ({spread}){share}; {roc} on {c['auroc_n']} "
        f"scored of {c['n']} questions (large rung from the {c['reference']} arm)"
    )


def deferral_line(report: Mapping[str, Any]) -> str | None:
    """One line: how well the estimator's score picks the questions to escalate, per cascade arm (None for a
    report without a deferral section)."""
    section = report.get("deferral")
    if section is None:
        return None
    head = f"deferral (estimator {section.get('estimator')})"
    curves = section.get("curves") or {}
    if not curves:
        return f"{head}: no curve ({section.get('why')})"
    return f"{head}: " + "; ".join(_curve_text(arm, c) for arm, c in curves.items())


def _deferral_markdown(section: Mapping[str, Any]) -> list[str]:
    lines = ["", f"## Deferral (estimator {section.get('estimator')})", ""]
    lines.append(
        "Escalating the questions whose small-rung score is lowest, against escalating the same share at random "
        "(the straight line between the small and the large rung) and the oracle (escalating exactly the small "
        "rung's wrong answers). Area over random: how much better than chance the score ranks the questions; "
        "AUROC: how well it separates the small rung's right answers from its wrong ones (0.5: not at all)."
    )
    lines.append("")
    curves = section.get("curves") or {}
    if not curves:
        lines.append(f"- no curve: {section.get('why')}")
    for arm, c in curves.items():
        lines.append(f"- {_curve_text(arm, c)}")
    if any(c.get("available") for c in curves.values()):
        lines += ["", "![deferral curves](deferral.png)"]
    return lines


def verdicts(report: Mapping[str, Any]) -> list[str]:
    """A sentence per paired comparison: the exact-match difference (a - b) with its interval, or why there is
    none, and the compute ratio."""
    arms = {a["name"]: a for a in report["arms"]}
    lines = []
    for c in report["comparisons"]:
        a, b = arms[c["a"]], arms[c["b"]]
        # The report holds b - a; say it as a - b (adding 0.0 turns -0.0 into 0.0).
        ratio = f"{a['flops'] / b['flops']:.2f}x" if b["flops"] else "n/a"
        silent = [x["name"] for x in (a, b) if x["errors"] and x["errors"] == x["n"]]
        if silent:
            lines.append(f"{c['a']} vs {c['b']}: not compared ({' and '.join(silent)} answered no question)")
            continue
        if c["diff"] is None:
            lines.append(f"{c['a']} vs {c['b']}: not compared (no question answered by both)")
            continue
        diff = round(-100 * c["diff"], 1) + 0.0
        if c.get("interval_note"):
            spread = f"({c['interval_note']})"
        else:
            lo, hi = (round(-100 * x, 1) + 0.0 for x in (c["ci95"][1], c["ci95"][0]))
            spread = f"(95% CI {lo:+.1f} to {hi:+.1f} on {c['n']} questions)"
        lines.append(f"{c['a']} vs {c['b']}: exact match {diff:+.1f} points {spread}, at {ratio} the FLOPs")
    return lines


def render_table(report: Mapping[str, Any]) -> Table:
    """The arms of a report as a rich Table (for the CLI)."""
    from rich.table import Table

    table = Table(title="agentflow comparison")
    for i, col in enumerate(_COLUMNS):
        table.add_column(col, justify="left" if i == 0 else "right")
    for row in _table_rows(report):
        table.add_row(*row)
    return table


def _meta_value(value: Any) -> str:
    if isinstance(value, Mapping):
        return ", ".join(f"{k} {_meta_value(v)}" for k, v in value.items())
    if isinstance(value, list | tuple):
        return ", ".join(_meta_value(v) for v in value)
    return str(value)


def render_markdown(report: Mapping[str, Any]) -> str:
    """report.md: the settings as a short list, the arms table with its notes (cache, errors), the paired
    differences and the token use per model. The full config stays in report.json."""
    meta = {k: v for k, v in (report.get("meta") or {}).items() if k != "config"}
    split = meta.get("split")
    lines = [f"# agentflow comparison{'' if split is None else f' ({split} split)'}", ""]
    if split is not None:
        lines += [f"Every number below comes from the {split} split.", ""]
    for k, v in meta.items():
        lines.append(f"- {k}: {_meta_value(v)}")
    if meta:
        lines.append("")
    lines += ["| " + " | ".join(_COLUMNS) + " |", "|" + "---|" * len(_COLUMNS)]
    lines += ["| " + " | ".join(r) + " |" for r in _table_rows(report)]
    lines += [
        "",
        "s/q p50, p95: seconds per question, median and 95th percentile. "
        f"{CACHE_MARK}: wall time mostly from the response cache.",
    ]
    qualified = notes(report)
    if qualified:
        lines += ["", "## Notes", ""]
        lines += [f"- {line}" for line in qualified]
    if report["comparisons"]:
        lines += ["", "## Paired differences (EM, b - a, 95% bootstrap interval)", ""]
        lines += [
            "| a | b | n | diff (points) | 95% CI | b right, a wrong | a right, b wrong |",
            "|---|---|---|---|---|---|---|",
        ]
        for c in report["comparisons"]:
            lo, hi = c["ci95"]
            interval = c.get("interval_note") or f"{_pct(lo)} to {_pct(hi)}"
            lines.append(
                f"| {c['a']} | {c['b']} | {c['n']} | {_pct(c['diff'])} | {interval} "
                f"| {c['b_better']} | {c['a_better']} |"
            )
    if report.get("deferral") is not None:
        lines += _deferral_markdown(report["deferral"])
    lines += ["", "## Tokens per model", "", "| arm | model | calls | prompt | completion | from cache |"]
    lines.append("|---|---|---|---|---|---|")
    for a in report["arms"]:
        for model, u in a["tokens"].items():
            c = a["cached_tokens"].get(model, {})
            cached = c.get("prompt_tokens", 0) + c.get("completion_tokens", 0)
            cells = [a["name"], model, u["requests"], u["prompt_tokens"], u["completion_tokens"], cached]
            lines.append("| " + " | ".join(str(x) for x in cells) + " |")
    lines += [
        "",
        "EM: exact match after SQuAD normalisation (numbers and yes/no compared as values). "
        "FLOPs: 2 x active parameters x tokens, counted as the budget's bill counts them; a call from the "
        "response cache is counted at its original cost (`flops_spent_now` in report.json: what this run spent).",
        "",
    ]
    return "\n".join(lines)


def plot_pareto(report: Mapping[str, Any], path: Path | str) -> Path:
    """pareto.png: EM (with its 95% interval) against FLOPs per question (log scale), one labelled point per arm."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise MissingDependencyError("matplotlib (for pareto.png)", "pip install 'agentflow[eval]'") from None
    points = [
        (float(a["flops_per_question"]), float(a["em"]), [None, None] if a.get("interval_note") else a["em_ci95"],
         str(a["name"]))
        for a in report["arms"]
        if a["flops_per_question"] and a["em"] is not None
    ]  # fmt: skip
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    try:
        placed: list[tuple[float, float]] = []
        for x, y, (lo, hi), name in sorted(points, key=lambda p: p[0]):
            below = 100 * (y - (lo if lo is not None else y))
            above = 100 * ((hi if hi is not None else y) - y)
            bar = ax.errorbar(
                [x],
                [100 * y],
                yerr=[[max(below, 0.0)], [max(above, 0.0)]],
                fmt="o",
                capsize=4,
                ms=7,
                elinewidth=1,
                alpha=0.9,
            )
            # Points close to an already labelled one get their label below instead of above.
            near = any(abs(math.log10(x / px)) < 0.25 and abs(100 * y - py) < 8 for px, py in placed)
            ax.annotate(
                f"{name}\n{100 * y:.1f}%",
                (x, 100 * y),
                textcoords="offset points",
                xytext=(8, -22 if near else 6),
                fontsize=9,
                color=bar.lines[0].get_color(),
            )
            placed.append((x, 100 * y))
        frontier: list[tuple[float, float]] = []
        for x, y, _, _ in sorted(points, key=lambda p: (p[0], -p[1])):
            if not frontier or y > frontier[-1][1]:
                frontier.append((x, y))
        if len(frontier) > 1:
            ax.plot(
                [p[0] for p in frontier],
                [100 * p[1] for p in frontier],
                "--",
                color="grey",
                lw=1,
                label="Pareto frontier",
            )
            ax.legend(loc="lower right", fontsize=8)
        if points:
            ax.set_xscale("log")
            xs = [p[0] for p in points]
            ax.set_xlim(min(xs) / 2, max(xs) * 3)
        ax.set_ylim(0, 100)
        ax.set_xlabel("compute per question (FLOPs, log scale)")
        ax.set_ylabel("exact match (%)")
        n = max((int(a["n"]) for a in report["arms"]), default=0)
        few = [bool(a.get("interval_note")) for a in report["arms"]]
        spread = (
            "too few for intervals"
            if few and all(few)
            else "95% bootstrap intervals where n is large enough"
            if any(few)
            else "95% bootstrap intervals"
        )
        ax.set_title(f"Accuracy against compute ({n} questions, {spread})")
        ax.grid(True, which="both", alpha=0.3)
        fig.tight_layout()
        out = Path(path)
        fig.savefig(out)
    finally:
        plt.close(fig)
    return out
