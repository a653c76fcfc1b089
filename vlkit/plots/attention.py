"""Figures of where a model looks (notebooks 06, 07; the attention explorer, :mod:`vlkit.widgets`).

Pure functions: arrays in, a matplotlib Figure out. Each draws into ``ax`` when given (the explorer and its
snapshot grid place several on one figure) and otherwise makes its own figure. Nothing to draw (no values,
all of them missing) is an error, never an empty picture.
"""
from __future__ import annotations

from typing import Sequence

import matplotlib.pyplot as plt
import numpy as np
from PIL import Image

from vlkit.plots.compression import draw_plan

CMAP = "magma"


def _axes(ax, figsize=(4.5, 4.0)):
    if ax is None:
        _, ax = plt.subplots(figsize=figsize)
    return ax


def _rgb(image) -> np.ndarray:
    """[H, W, 3] floats in [0, 1] from a PIL image or an array (uint8 or float)."""
    arr = np.asarray(image.convert("RGB") if hasattr(image, "convert") else image)
    if arr.ndim != 3 or arr.shape[-1] != 3:
        raise ValueError(f"an RGB image is [H, W, 3], got shape {arr.shape}")
    return arr / 255.0 if arr.dtype == np.uint8 else arr.astype(float)


def _checked(values, what: str) -> np.ndarray:
    v = np.asarray(values, dtype=float)
    if v.size == 0 or np.isnan(v).all():
        raise ValueError(f"{what}: no values to draw")
    return v


def _finish(ax, im, title: str | None, colorbar: str | None):
    """Title and colour bar of a heat map, and its figure."""
    if title:
        ax.set_title(title, fontsize=9)
    if colorbar:
        ax.figure.colorbar(im, ax=ax, fraction=0.046, pad=0.03, label=colorbar)
    return ax.figure


def patch_heatmap(image, values, grid: tuple[int, int], ax=None, title: str | None = None,
                  vmax: float | None = None, colorbar: str | None = "attention"):
    """``values`` [rows * cols] (row-major over the patch grid; NaN = no value, e.g. a dropped patch, drawn grey) as a
    heat map over ``image``, each patch one cell (notebooks 06, 07)."""
    rows, cols = grid
    v = _checked(values, "patch_heatmap")
    if v.size != rows * cols:
        raise ValueError(f"patch_heatmap: {v.size} values for a {rows}x{cols} patch grid")
    ax = _axes(ax)
    rgb = _rgb(image)
    h, w = rgb.shape[:2]
    ax.imshow(rgb, interpolation="nearest")
    cmap = plt.get_cmap(CMAP).with_extremes(bad=(0.5, 0.5, 0.5, 0.85))
    im = ax.imshow(np.ma.masked_invalid(v.reshape(rows, cols)), cmap=cmap, alpha=0.65, interpolation="nearest",
                   extent=(-0.5, w - 0.5, h - 0.5, -0.5), vmin=0, vmax=vmax if vmax is not None else np.nanmax(v))
    ax.set_xticks([])
    ax.set_yticks([])
    return _finish(ax, im, title, colorbar)


def token_strip(values, ax=None, title: str | None = None, xlabel: str = "visual token",
                colorbar: str | None = "attention"):
    """``values`` [V] as one row of cells, for visual tokens that are not on the patch grid (ToMe's merged
    tokens, a [cls]-per-layer connector's) (notebooks 06, 07)."""
    v = _checked(values, "token_strip")
    ax = _axes(ax, figsize=(max(3.0, 0.35 * v.size), 1.6))
    im = ax.imshow(v[None, :], cmap=CMAP, aspect="auto", interpolation="nearest", vmin=0)
    ax.set_yticks([])
    if v.size <= 32:  # one tick per token while they stay readable; matplotlib's own beyond
        ax.set_xticks(range(v.size))
    ax.set_xlabel(xlabel, fontsize=8)
    return _finish(ax, im, title, colorbar)


def image_share_bars(tokens: Sequence[str], shares, ax=None, highlight: int | None = None,
                     title: str | None = None):
    """One bar per answer token: the share of that step's attention that went to the image (notebooks 06, 07).

    ``highlight``: the index of a token to mark (the explorer's selected one)."""
    v = _checked(shares, "image_share_bars")
    if len(tokens) != v.size:
        raise ValueError(f"image_share_bars: {len(tokens)} tokens but {v.size} shares")
    ax = _axes(ax, figsize=(max(3.5, 0.5 * v.size), 3.0))
    colours = ["tab:orange" if i == highlight else "tab:blue" for i in range(v.size)]
    ax.bar(range(v.size), v, color=colours)
    ax.set_xticks(range(v.size), list(tokens), rotation=60, fontsize=7, ha="right")
    ax.set_ylim(0, 1)
    ax.set_ylabel("attention on the image")
    ax.set_xlabel("answer token (generation step)")
    if title:
        ax.set_title(title, fontsize=9)
    return ax.figure


def plan_overlay(image, assignment, kept, ax=None, title: str | None = None):
    """What a plan compressor (VMTC and its peers) did with each patch, over ``image`` (notebook 06): kept
    (white outline), merged (tinted by the token it joined), dropped (dark)."""
    assignment, kept = np.asarray(assignment), np.asarray(kept, dtype=bool)
    if assignment.size == 0 or assignment.shape != kept.shape:
        raise ValueError(f"plan_overlay: assignment {assignment.shape} and kept {kept.shape} must be one value "
                         "per patch")
    ax = _axes(ax)
    if not hasattr(image, "convert"):  # draw_plan takes a PIL image
        image = Image.fromarray((_rgb(image) * 255).round().astype(np.uint8))
    draw_plan(ax, image, assignment, kept)
    if title:
        ax.set_title(title, fontsize=9)
    return ax.figure
