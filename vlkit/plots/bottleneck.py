"""Figures of notebook 04: where the adapters sit, training loss, and accuracy per context category over rank x groups."""
from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.patches import FancyBboxPatch


def adapter_diagram():
    """A transformer block with the Bottleneck Adapter after its input norm, and the adapter itself."""
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(10, 3.6))
    boxes = [("input norm", "#dddddd"), ("Bottleneck Adapter", "#f4a261"), ("self-attention", "#8ecae6"),
             ("norm", "#dddddd"), ("MLP", "#8ecae6")]
    for i, (label, colour) in enumerate(boxes):
        ax.add_patch(FancyBboxPatch((0.15, 0.86 - i * 0.19), 0.7, 0.12, boxstyle="round,pad=0.01", fc=colour, ec="k"))
        ax.text(0.5, 0.92 - i * 0.19, label, ha="center", va="center", fontsize=9)
        if i:
            ax.annotate("", (0.5, 0.98 - i * 0.19), (0.5, 0.86 - (i - 1) * 0.19), arrowprops={"arrowstyle": "->"})
    ax.set_title("one block (every LLM block; every vision block)", fontsize=9)
    for i, (label, colour) in enumerate([("down: dim -> rank (dense)", "#f4a261"), ("dropout (no activation)", "#eeeeee"),
                                         ("up: rank -> dim, groups (zero init)", "#f4a261")]):
        bx.add_patch(FancyBboxPatch((0.2, 0.75 - i * 0.25), 0.6, 0.14, boxstyle="round,pad=0.01", fc=colour, ec="k"))
        bx.text(0.5, 0.82 - i * 0.25, label, ha="center", va="center", fontsize=9)
    bx.text(0.5, 0.08, "output = x + scale * up(dropout(down(x)))", ha="center", fontsize=9)
    bx.set_title("the adapter: linear, so it folds into q/k/v", fontsize=9)
    for a in (ax, bx):
        a.set_xlim(0, 1)
        a.set_ylim(0, 1)
        a.axis("off")
    fig.tight_layout()
    return fig


def category_heatmaps(table: pd.DataFrame, rows: str = "rank", cols: str = "groups"):
    """One seaborn heat map per context category: accuracy (%) over the (rank, groups) cells trained;
    cells not trained are blank. ``table``: :func:`vlkit.eval.tables.category_table` with tuple cells."""
    import seaborn as sns
    if table.empty:
        raise ValueError("category_heatmaps: empty table")
    cats = list(dict.fromkeys(table["category"]))
    fig, axes = plt.subplots(1, len(cats), figsize=(2.6 * len(cats), 2.8), squeeze=False)
    t = table.assign(**{rows: table["cell"].map(lambda c: c[0]), cols: table["cell"].map(lambda c: c[1])})
    lo, hi = float(np.nanmin(t["accuracy"])), float(np.nanmax(t["accuracy"]))
    for ax, cat in zip(axes[0], cats):
        grid = t[t["category"] == cat].pivot_table(index=rows, columns=cols, values="accuracy")
        sns.heatmap(grid, ax=ax, annot=True, fmt=".0f", vmin=lo, vmax=hi, cmap="viridis", cbar=False,
                    annot_kws={"fontsize": 8})
        ax.set_title(cat, fontsize=9)
        ax.set_xlabel(cols)
        ax.set_ylabel(rows if ax is axes[0][0] else "")
    fig.suptitle("ScienceQA accuracy (%) per context category, adapter rank x groups", fontsize=10)
    fig.tight_layout()
    return fig


def loss_curves(histories: dict[str, list[list[float]]], smooth: int = 5):
    """Training loss per optimizer step, one line per row, its stages one after another (notebook 04).

    ``histories``: row name -> the loss of each of its stages (one for MMT, two for the modular row,
    whose switch from the neck to the adapters is marked). Smoothed with a ``smooth``-step mean."""
    from vlkit.plots.llava import _smooth
    if not histories:
        raise ValueError("loss_curves: no histories")
    fig, ax = plt.subplots(figsize=(8, 3.8))
    ax.set_prop_cycle(color=plt.cm.tab20.colors)  # a dozen rows: one colour each
    for name, stages in histories.items():
        loss = [x for stage in stages for x in stage]
        line, = ax.plot(np.arange(len(_smooth(loss, smooth))) + 1, _smooth(loss, smooth), label=name, lw=1.2)
        for end in np.cumsum([len(st) for st in stages])[:-1]:
            ax.axvline(end + 0.5, color=line.get_color(), ls="--", lw=0.8)
    ax.set_title("one stage, 320 x 16: adapters + neck train, both towers frozen (dashed: modular's switch)")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss (answer tokens)")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    return fig
