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

__all__ = ["plot_pareto", "render_markdown", "render_table"]


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}"


def _sci(x: float | None) -> str:
    return "-" if x is None else f"{x:.3g}"


_COLUMNS = ("arm", "n", "EM %", "95% CI", "F1 %", "prompt tok", "compl tok", "FLOPs/q", "calls", "escal %", "wall s")


def _table_rows(report: Mapping[str, Any]) -> list[tuple[str, ...]]:
    rows: list[tuple[str, ...]] = []
    for a in report["arms"]:
        lo, hi = a["em_ci95"]
        rows.append(
            (
                str(a["name"]),
                str(a["n"]),
                _pct(a["em"]),
                "-" if lo is None or hi is None else f"{_pct(lo)}-{_pct(hi)}",
                _pct(a["f1"]),
                str(a["prompt_tokens"]),
                str(a["completion_tokens"]),
                _sci(a["flops_per_question"]),
                str(a["calls"]),
                _pct(a["escalation_rate"]),
                f"{a['wall_s']:.1f}",
            )
        )
    return rows


def render_table(report: Mapping[str, Any]) -> Table:
    """The arms of a report as a rich Table (for the CLI)."""
    from rich.table import Table

    table = Table(title="agentflow comparison")
    for i, col in enumerate(_COLUMNS):
        table.add_column(col, justify="left" if i == 0 else "right")
    for row in _table_rows(report):
        table.add_row(*row)
    return table


def render_markdown(report: Mapping[str, Any]) -> str:
    """report.md: the arms table, the paired differences and the token use per model."""
    lines = ["# agentflow comparison", ""]
    meta = report.get("meta") or {}
    for k, v in meta.items():
        lines.append(f"- {k}: {v}")
    if meta:
        lines.append("")
    lines += ["| " + " | ".join(_COLUMNS) + " |", "|" + "---|" * len(_COLUMNS)]
    lines += ["| " + " | ".join(r) + " |" for r in _table_rows(report)]
    if report["comparisons"]:
        lines += ["", "## Paired differences (EM, b - a, 95% bootstrap interval)", ""]
        lines += [
            "| a | b | n | diff (points) | 95% CI | b right, a wrong | a right, b wrong |",
            "|---|---|---|---|---|---|---|",
        ]
        for c in report["comparisons"]:
            lo, hi = c["ci95"]
            lines.append(
                f"| {c['a']} | {c['b']} | {c['n']} | {_pct(c['diff'])} | {_pct(lo)} to {_pct(hi)} "
                f"| {c['b_better']} | {c['a_better']} |"
            )
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
        "FLOPs: 2 x active parameters x tokens.",
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
        (float(a["flops_per_question"]), float(a["em"]), a["em_ci95"], str(a["name"]))
        for a in report["arms"]
        if a["flops_per_question"] and a["em"] is not None
    ]
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
        ax.set_title(f"Accuracy against compute ({n} questions, 95% bootstrap intervals)")
        ax.grid(True, which="both", alpha=0.3)
        fig.tight_layout()
        out = Path(path)
        fig.savefig(out)
    finally:
        plt.close(fig)
    return out
