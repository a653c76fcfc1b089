"""Figures of notebook 06: accuracy against visual tokens and prefill FLOPs, latency beside them, what each
method kept drawn over an image, and the fine-tuned comparison."""
from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd


def _method_lines(ax, table: pd.DataFrame, x: str, y: str, reference: pd.Series | None):
    """One line per method, its points in order of ``x``; the reference as a black star and a dotted level."""
    for method, part in table.groupby("method", sort=False):
        part = part.sort_values(x)
        ax.plot(part[x], part[y], marker="o", ms=4, lw=1.3, label=method)
    if reference is not None:
        ax.plot([reference[x]], [reference[y]], marker="*", ms=11, color="k", ls="none", label="uncompressed")
        ax.axhline(reference[y], color="k", lw=0.8, ls=":")


def accuracy_curves(table: pd.DataFrame, reference: str, metric: str = "IMG", chance: float | None = None):
    """Three panels from :func:`vlkit.eval.compression.grid_table` (notebook 06): ``metric`` against the visual
    tokens reaching the LLM, ``metric`` against prefill GFLOPs (this model, analytic), and the prefill latency
    ratio to the uncompressed model against the tokens (all methods interleaved in one process).
    One line per method; ``reference`` names the uncompressed row; ``chance`` draws a dashed level."""
    if table.empty:
        raise ValueError("accuracy_curves: empty table")
    ref = table.loc[reference]
    rest = table.drop(index=reference)
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    _method_lines(axes[0], rest, "tokens", metric, ref)
    axes[0].set_xlabel("visual tokens reaching the LLM (mean per image)")
    _method_lines(axes[1], rest, "GFLOPs", metric, ref)
    axes[1].set_xlabel("prefill GFLOPs per sequence (analytic)")
    for ax in axes[:2]:
        ax.set_ylabel(f"{metric} accuracy (%)")
        if chance is not None:
            ax.axhline(chance, color="grey", lw=0.8, ls="--")
    _method_lines(axes[2], rest, "tokens", "latency x", ref)
    axes[2].set_xlabel("visual tokens reaching the LLM (mean per image)")
    axes[2].set_ylabel("prefill latency / uncompressed")
    axes[0].set_title(f"{metric} vs tokens", fontsize=10)
    axes[1].set_title(f"{metric} vs prefill FLOPs", fontsize=10)
    axes[2].set_title("latency, same process (median)", fontsize=10)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    return fig


def metric_panels(table: pd.DataFrame, reference: str, chance: dict[str, float] | None = None,
                  metrics: tuple[str, ...] = ("IMG", "Binding", "Counting", "Short VQA")):
    """One panel per metric against the visual tokens reaching the LLM, one line per method (notebook 06);
    ``chance``: metric -> a dashed level."""
    if table.empty:
        raise ValueError("metric_panels: empty table")
    ref, rest = table.loc[reference], table.drop(index=reference)
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.2 * len(metrics), 3.8), squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        _method_lines(ax, rest, "tokens", metric, ref)
        if chance and chance.get(metric) is not None:
            ax.axhline(chance[metric], color="grey", lw=0.8, ls="--")
        ax.set_title(metric, fontsize=10)
        ax.set_xlabel("visual tokens reaching the LLM")
        ax.set_ylabel("accuracy (%)")
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    return fig


def draw_plan(ax, image, assignment: np.ndarray, kept: np.ndarray):
    """``image`` with its patch grid on ``ax``: a kept token outlined in white, a merged patch tinted by its
    slot's colour, a dropped patch darkened (notebook 06; the attention explorer's VMTC view draws it too)."""
    arr = np.asarray(image.convert("RGB"), dtype=float) / 255
    n = len(assignment)
    side = int(round(n ** 0.5))
    if side * side != n:
        raise ValueError(f"a drawing needs the square patch grid, got {n} tokens")
    p = arr.shape[0] / side
    ax.imshow(arr, interpolation="nearest")
    colours = plt.cm.tab20(np.linspace(0, 1, 20))
    for i, (slot, k) in enumerate(zip(assignment, kept)):
        y, x = divmod(i, side)
        box = dict(xy=(x * p - 0.5, y * p - 0.5), width=p, height=p)
        if slot < 0:
            ax.add_patch(plt.Rectangle(**box, color="black", alpha=0.75, lw=0))
        elif not k:
            ax.add_patch(plt.Rectangle(**box, color=colours[int(slot) % 20], alpha=0.55, lw=0))
        if k:
            ax.add_patch(plt.Rectangle(**box, fill=False, ec="white", lw=1.0))
    ax.set_xticks([])
    ax.set_yticks([])


def token_overlays(image, overlays: dict[tuple[str, float], dict | None], methods: list[str], ratios: list[float]):
    """A grid over one image, methods down, keep ratios across (notebook 06): what each method kept
    (white outline), merged (tinted by the slot it joins) and dropped (dark).

    ``overlays``: (method, ratio) -> :func:`vlkit.eval.compression.overlay`'s arrays; a missing or None
    cell (ToMe merges inside the tower; a ratio a method does not reach) says so instead."""
    if not methods or not ratios:
        raise ValueError("token_overlays: no methods or no ratios")
    fig, axes = plt.subplots(len(methods), len(ratios), figsize=(1.9 * len(ratios) + 0.6, 1.9 * len(methods) + 0.4),
                             squeeze=False)
    for i, method in enumerate(methods):
        for j, ratio in enumerate(ratios):
            ax = axes[i][j]
            cell = overlays.get((method, ratio))
            if cell is None:
                ax.imshow(image, interpolation="nearest", alpha=0.25)
                ax.text(0.5, 0.5, "not drawn", ha="center", va="center", transform=ax.transAxes, fontsize=8)
                ax.set_xticks([])
                ax.set_yticks([])
            else:
                draw_plan(ax, image, cell["assignment"], cell["kept"])
            if i == 0:
                ax.set_title(f"keep {ratio:.0%}", fontsize=9)
            if j == 0:
                ax.set_ylabel(method, fontsize=9)
    fig.suptitle("kept (white outline), merged (tint = the slot it joins), dropped (dark)", fontsize=9)
    fig.tight_layout()
    return fig


def finetune_comparison(values: dict[str, dict[str, list[float]]], chance: dict[str, float] | None = None):
    """One panel per metric: each arm's seeds as dots and their mean as a bar (notebook 06).

    ``values``: metric -> arm -> one value per training seed."""
    if not values:
        raise ValueError("finetune_comparison: no values")
    fig, axes = plt.subplots(1, len(values), figsize=(4.8 * len(values), 3.8), squeeze=False)
    for ax, (metric, arms) in zip(axes[0], values.items()):
        names = list(arms)
        for k, name in enumerate(names):
            v = np.asarray(arms[name], dtype=float)
            ax.bar(k, v.mean(), color="#cfd8e3", width=0.6)
            ax.plot(np.full(len(v), k), v, "o", color="tab:blue", ms=5)
        if chance and chance.get(metric) is not None:
            ax.axhline(chance[metric], color="grey", lw=0.8, ls="--", label="chance")
            ax.legend(fontsize=7)
        ax.set_xticks(range(len(names)), [n.replace(", ", ",\n") for n in names], fontsize=7)
        ax.set_ylabel(f"{metric} accuracy (%)")
        ax.set_xlabel("arm (dots: training seeds)")
        ax.set_title(metric, fontsize=10)
    fig.tight_layout()
    return fig
