"""Figures of notebook 01: scenes beside their contexts and dataset statistics (pure: data in, Figure out)."""
from __future__ import annotations

import textwrap

import matplotlib.pyplot as plt


def scenes_with_contexts(images, contexts, width: int = 70):
    """One row per scene: the rendered image, then the symbolic context the teacher reads."""
    n = len(images)
    fig, axes = plt.subplots(n, 2, figsize=(11, 2.3 * n), gridspec_kw={"width_ratios": [1, 3.5]},
                             squeeze=False)
    for (ax_img, ax_txt), img, ctx in zip(axes, images, contexts):
        ax_img.imshow(img, interpolation="nearest")
        ax_img.set_axis_off()
        lines = [w for line in ctx.strip().splitlines() for w in (textwrap.wrap(line, width) or [""])]
        ax_txt.text(0, 1, "\n".join(lines), va="top", ha="left", family="monospace", fontsize=7.5)
        ax_txt.set_axis_off()
    axes[0][0].set_title("image (what the student sees)", fontsize=9)
    axes[0][1].set_title("symbolic context (what the language-only teacher sees)", fontsize=9, loc="left")
    fig.tight_layout()
    return fig


def type_mix(stats: dict, target: dict | None = None):
    """Share of each instruction type, next to LLaVA's 58 : 23 : 77 mix."""
    types = list(stats["type_shares"])
    fig, ax = plt.subplots(figsize=(5.5, 3.2))
    x = range(len(types))
    ax.bar([i - 0.2 for i in x], [stats["type_shares"][t] for t in types], width=0.4, label="generated")
    if target:
        total = sum(target.values())
        ax.bar([i + 0.2 for i in x], [target.get(t, 0) / total for t in types], width=0.4,
               label="LLaVA-Instruct-158K", alpha=0.6)
    ax.set_xticks(list(x), types)
    ax.set_ylabel("share of records")
    ax.set_title(f"Instruction types ({stats['records']} records)")
    ax.legend(frameon=False)
    fig.tight_layout()
    return fig


def question_kinds(stats: dict):
    """How many questions of each kind (count, colour, position, ...) the data asks."""
    kinds = stats["question_kinds"]
    names = list(kinds)[::-1]
    fig, ax = plt.subplots(figsize=(5.5, 0.35 * len(names) + 1.2))
    ax.barh(names, [kinds[k] for k in names], color="tab:green")
    ax.set_xlabel("questions")
    ax.set_title("Question kinds (by wording)")
    fig.tight_layout()
    return fig


def answer_lengths(stats: dict):
    """Histogram of answer lengths in words (from the binned counts in the statistics)."""
    h = stats["answer_length_hist"]
    edges = h["edges"]
    labels = [f"{a}-{b}" if b != "inf" else f"{a}+" for a, b in zip(edges[:-1], edges[1:])]
    fig, ax = plt.subplots(figsize=(6.5, 3.2))
    ax.bar(labels, h["counts"], color="tab:purple")
    ax.set_xlabel("answer length (words)")
    ax.set_ylabel("answers")
    ax.set_title(f"Answer lengths (mean {stats['answer_words_mean']} words)")
    ax.tick_params(axis="x", rotation=45)
    fig.tight_layout()
    return fig
