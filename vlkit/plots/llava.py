"""Figures of notebook 03: loss curves of both stages, image use and binding, qualitative grid."""
from __future__ import annotations

import textwrap

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd


def _smooth(y: list[float], k: int) -> np.ndarray:
    y = np.asarray(y, dtype=float)
    if k <= 1 or len(y) < k:
        return y
    return np.convolve(y, np.ones(k) / k, mode="valid")


def loss_curves(histories: dict[str, dict[str, list[float]]], smooth: int = 5):
    """Two panels, stage 1 and stage 2: training loss per optimizer step, one line per variant (notebook 03).

    ``histories``: variant name -> ``{"stage1": [...], "stage2": [...]}`` (as :func:`vlkit.recipes.llava.loss_histories`).
    Variants sharing a stage-1 run show it once. Curves are smoothed with a ``smooth``-step mean.
    """
    if not histories:
        raise ValueError("loss_curves: no histories")
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.6))
    seen = {}
    for name, h in histories.items():
        s1 = tuple(h.get("stage1") or ())
        if s1 and s1 not in seen:
            seen[s1] = name
            axes[0].plot(np.arange(len(_smooth(s1, smooth))) + 1, _smooth(s1, smooth), label=name)
        s2 = h.get("stage2") or []
        axes[1].plot(np.arange(len(_smooth(s2, smooth))) + 1, _smooth(s2, smooth), label=name)
    axes[0].set_title("stage 1: connector only, captions")
    axes[1].set_title("stage 2: connector + LLM, instructions + ScienceQA")
    for ax in axes:
        ax.set_xlabel("optimizer step")
        ax.set_ylabel("loss (answer tokens)")
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def image_use(table: pd.DataFrame, columns: tuple[str, ...] = ("IMG", "Binding")):
    """Grouped bars of IMG accuracy and binding-subset accuracy per row of the results table,
    baselines (image blind, chance, bag of attributes) included (notebook 03)."""
    if table.empty:
        raise ValueError("image_use: empty table")
    fig, ax = plt.subplots(figsize=(max(6.0, 1.0 * len(table) + 2), 3.8))
    x = np.arange(len(table))
    w = 0.8 / len(columns)
    for i, col in enumerate(columns):
        vals = table[col].astype(float).to_numpy()
        bars = ax.bar(x + (i - (len(columns) - 1) / 2) * w, vals, w, label=col)
        ax.bar_label(bars, labels=["" if np.isnan(v) else f"{v:.0f}" for v in vals], fontsize=7)
    ax.set_xticks(x, [textwrap.fill(str(n), 14) for n in table.index], fontsize=8)
    ax.set_ylim(0, 105)
    ax.set_ylabel("accuracy (%)")
    ax.set_title("Does the model use the image and bind attributes to objects?")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def qualitative_grid(examples: list[dict], ncols: int = 4):
    """Image, question with choices, model answer (green right / red wrong) and reference (notebook 03).

    ``examples``: dicts with ``image`` (PIL), ``question``, ``choices``, ``answer``, ``reference``,
    ``correct`` (as :func:`vlkit.eval.scienceqa.qualitative_examples`).
    """
    if not examples:
        raise ValueError("qualitative_grid: no examples")
    nrows = -(-len(examples) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.2 * ncols, 4.3 * nrows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, ex in zip(axes.flat, examples):
        ax.imshow(ex["image"], interpolation="nearest")
        q = textwrap.fill(ex["question"], 34) + "\n" + textwrap.fill(ex["choices"], 34)
        ax.set_title(q, fontsize=7.5, loc="left")
        color = "tab:green" if ex.get("correct") else "tab:red"
        ax.text(0, -0.04, textwrap.fill(f"model: {ex['answer'] or '(empty)'}", 38), transform=ax.transAxes,
                fontsize=7.5, va="top", color=color)
        ax.text(0, -0.16, textwrap.fill(f"reference: {ex['reference']}", 38), transform=ax.transAxes,
                fontsize=7.5, va="top")
    fig.tight_layout()
    return fig
