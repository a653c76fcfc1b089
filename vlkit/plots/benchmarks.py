"""Benchmark figures: ScienceQA accuracy per column, LLaVA-Bench relative scores (notebook 03)."""
from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np

from vlkit.benchmarks.scienceqa import COLUMNS


def scienceqa_columns(results: dict[str, dict], baselines: dict[str, float] | None = None,
                      title: str = "ScienceQA-format accuracy per column"):
    """Grouped bars: one group per column (NAT ... Avg), one bar per method (notebook 03).

    ``results``: method name -> :func:`vlkit.benchmarks.scienceqa.score` output;
    ``baselines``: name -> accuracy drawn as horizontal lines (e.g. chance).
    """
    if not results:
        raise ValueError("scienceqa_columns: no results to plot")
    fig, ax = plt.subplots(figsize=(max(6.0, 1.1 * len(COLUMNS) + 0.4 * len(results)), 3.8))
    x = np.arange(len(COLUMNS))
    w = 0.8 / len(results)
    for i, (name, s) in enumerate(results.items()):
        vals = [np.nan if s.get(c) is None else s[c] for c in COLUMNS]
        ax.bar(x + (i - (len(results) - 1) / 2) * w, vals, w, label=name)
    for j, (name, v) in enumerate((baselines or {}).items()):
        ax.axhline(v, color="0.3", ls=("--", ":", "-.")[j % 3], lw=1, label=name)
    ax.set_xticks(x, COLUMNS)
    ax.set_ylim(0, 100)
    ax.set_ylabel("accuracy (%)")
    ax.set_title(title)
    ax.legend(fontsize=8, ncol=2, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    return fig


def relative_scores(results: dict[str, dict], title: str = "LLaVA-Bench-style relative score"):
    """Bars of relative score (model / reference x 100) per type, one bar per method (notebook 03).

    ``results``: method name -> :func:`vlkit.benchmarks.llava_bench.relative_scores` output.
    """
    if not results:
        raise ValueError("relative_scores: no results to plot")
    types = ["conversation", "detail", "reasoning", "overall"]
    fig, ax = plt.subplots(figsize=(6.5, 3.6))
    x = np.arange(len(types))
    w = 0.8 / len(results)
    for i, (name, s) in enumerate(results.items()):
        vals = [s[t]["relative"] if t in s else np.nan for t in types]
        bars = ax.bar(x + (i - (len(results) - 1) / 2) * w, vals, w, label=name)
        ax.bar_label(bars, fmt="%.0f", fontsize=7)
    ax.axhline(100, color="0.3", ls="--", lw=1, label="reference (teacher)")
    ax.set_xticks(x, types)
    ax.set_ylabel("relative score (%)")
    ax.set_ylim(0, 110)
    ax.set_title(title)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    return fig
