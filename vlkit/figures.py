"""Saving figures where the README expects them (all notebooks)."""
from __future__ import annotations

from pathlib import Path

from vlkit import atomic, paths


def save(fig, name: str, dpi: int = 120) -> Path:
    """Write ``fig`` to ``figures/<name>.png`` atomically and return the path.

    Notebooks call this right after plotting, so the figure in the notebook and the file
    the README shows are the same picture.
    """
    path = paths.figures_dir() / f"{name}.png"
    with atomic.atomic_open(path, "wb") as f:
        fig.savefig(f, format="png", dpi=dpi, bbox_inches="tight")
    return path
