"""Figures of notebook 05: the EMA x AIO ablation per task, and IAS against accuracy over phrasings."""
from __future__ import annotations

from typing import Sequence

import matplotlib.pyplot as plt
import numpy as np


def ablation_bars(values: dict[str, dict[str, Sequence[float]]], metrics: dict[str, str], chance: dict[str, float]):
    """One panel per task: each cell's metric per training seed (dots) and its mean (bar), chance dashed.

    ``values``: ``task -> cell -> per-seed values``; ``metrics``: ``task -> metric name`` (the y label)."""
    if not values:
        raise ValueError("ablation_bars: no task to draw")
    fig, axes = plt.subplots(1, len(values), figsize=(4.6 * len(values), 3.4), squeeze=False)
    for ax, (task, cells) in zip(axes[0], values.items()):
        names = list(cells)
        for i, name in enumerate(names):
            v = np.asarray(cells[name], float)
            ax.bar(i, v.mean(), color="#8ecae6" if "AIO" not in name else "#f4a261", edgecolor="k", width=0.6)
            ax.scatter(np.full(v.size, i) + np.linspace(-0.12, 0.12, v.size), v, color="k", s=12, zorder=3)
        ax.axhline(chance[task], ls="--", color="grey", lw=1, label=f"chance ({chance[task]:.0f})")
        ax.set_xticks(range(len(names)), names, rotation=25, ha="right", fontsize=8)
        ax.set_ylabel(f"{metrics[task]} (%)")
        ax.set_title(task, fontsize=10)
        lo = min(min(cells[n]) for n in names)
        ax.set_ylim(max(0, min(lo, chance[task]) - 10), None)
        ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    return fig


def ias_scatter(sweeps: dict[str, list[dict]], metrics: dict[str, str], correlations: dict[str, dict]):
    """One panel per task: every phrasing's mean IAS (x; lower = the model finds it better aligned) against
    the metric obtained with it (y), the pool's first phrasing (POPE-like: the training data's own) ringed, Spearman's rho in the title."""
    if not sweeps:
        raise ValueError("ias_scatter: no task to draw")
    fig, axes = plt.subplots(1, len(sweeps), figsize=(4.4 * len(sweeps), 3.4), squeeze=False)
    for ax, (task, rows) in zip(axes[0], sweeps.items()):
        x = [r["ias"] for r in rows]
        y = [r[metrics[task]] for r in rows]
        ax.scatter(x, y, s=18, color="#219ebc")
        ax.scatter(x[:1], y[:1], s=80, facecolors="none", edgecolors="#fb8500", label="phrasing 0")
        c = correlations[task]
        ax.set_title(f"{task}: Spearman rho {c['rho']:+.2f} (p {c['p']:.2f}, n {c['n']})", fontsize=9)
        ax.set_xlabel("mean IAS (nats per token, lower = better aligned)")
        ax.set_ylabel(f"{metrics[task]} (%)")
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig
