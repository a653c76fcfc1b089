"""Figures of notebook 02: pretraining curves, retrieval examples, the attribute probe.

Pure functions: data in, ``matplotlib.figure.Figure`` out.
"""
from __future__ import annotations

import textwrap

import matplotlib.pyplot as plt
import numpy as np


def loss_curves(clip_history: list[dict], llm_history: list[dict]):
    """CLIP losses (contrastive, dense patch loss) and the LLM's loss against step (notebook 02)."""
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 3.8))
    steps = [r["step"] for r in clip_history]
    for key, label in (("contrastive", "contrastive (image-caption)"),
                       ("dense", "dense: patch -> colour + shape"),
                       ("global", "image-level colour-shape pairs")):
        if key in clip_history[0]:
            a.plot(steps, [r[key] for r in clip_history], label=label)
    a.set(title="Tiny CLIP pretraining", xlabel="step", ylabel="loss")
    handles, labels = a.get_legend_handles_labels()
    if "patch_acc" in clip_history[0]:  # the dense head's accuracy on object patches
        t = a.twinx()
        t.plot(steps, [r["patch_acc"] for r in clip_history], color="C2", ls="--", lw=1)
        t.set(ylabel="object-patch accuracy (40 classes)", ylim=(0, 1))
        h, l = t.get_legend_handles_labels()
        handles += t.lines[-1:]
        labels += ["dense head accuracy on object patches"]
    a.legend(handles, labels, fontsize=8)
    b.plot([r["step"] for r in llm_history], [r["loss"] for r in llm_history], color="C3")
    b.set(title="Tiny Llama pretraining", xlabel="step", ylabel="next-token loss (nats)")
    for ax in (a, b):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def retrieval_grid(images: list, texts: list[str], topk: list[list[int]], n: int = 6, k: int = 3):
    """For ``n`` query images, the ``k`` captions CLIP ranks first; the true one in green (notebook 02).

    ``texts[i]`` is image ``i``'s caption; ``topk[i]`` the caption indices ranked for image ``i``.
    """
    fig, axes = plt.subplots(2, n // 2 if n > 1 else 1, figsize=(4.4 * max(1, n // 2), 10))
    for i, ax in enumerate(np.atleast_1d(axes).ravel()[:n]):
        ax.imshow(images[i])
        ax.set_xticks([])
        ax.set_yticks([])
        lines = []
        for rank, j in enumerate(topk[i][:k]):
            mark = "OK " if j == i else f"{rank + 1}. "
            lines.append((mark + textwrap.shorten(texts[j], 150), "green" if j == i else "black"))
        y = -0.04
        for text, color in lines:
            text = textwrap.fill(text, 46)
            ax.text(0, y, text, transform=ax.transAxes, va="top", fontsize=7.5, color=color)
            y -= 0.062 * (text.count("\n") + 1) + 0.02
    fig.suptitle("Image -> caption retrieval among 100 held-out captions (top 3; green = the image's own)")
    fig.subplots_adjust(hspace=1.05, wspace=0.25)
    return fig


def probe_results(probe: dict, threshold: float = 0.9):
    """Accuracy of "what colour is the <shape>?" per shape, against the baselines (notebook 02)."""
    fig, ax = plt.subplots(figsize=(10, 3.8))
    shapes = list(probe["per_shape"])
    accs = [probe["per_shape"][s] for s in shapes]
    ax.bar(shapes + ["all"], accs + [probe["accuracy"]],
           color=["C0"] * len(shapes) + ["C2"])
    for y, label, style, color in (
            (threshold, f"quality bar ({threshold:.0%})", "-", "black"),
            (probe["mean_pool_accuracy"], "linear probe on mean-pooled tokens", "--", "C3"),
            (probe["chance_present"], "guess among the colours present", ":", "C1"),
            (probe["chance"], "uniform chance", "-.", "gray")):
        ax.axhline(y, ls=style, color=color, lw=1.2, label=f"{label}: {y:.2f}")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=8)
    ax.set(ylim=(0, 1.05), ylabel="held-out accuracy",
           title="Attentive probe on penultimate-layer patch tokens: colour of each shape")
    fig.tight_layout()
    return fig
