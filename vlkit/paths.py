"""Where things live: the repository root, per-profile artifacts, figures (all notebooks)."""
from __future__ import annotations

import os
from pathlib import Path


def repo_root() -> Path:
    """The checkout's root: ``$VLKIT_HOME`` if set, else the nearest parent with pyproject.toml.

    Notebooks run with ``notebooks/`` as working directory, tests from anywhere; both find
    the same root this way.
    """
    if os.environ.get("VLKIT_HOME"):
        return Path(os.environ["VLKIT_HOME"]).resolve()
    for start in (Path.cwd(), Path(__file__).resolve().parent):
        for p in (start, *start.parents):
            if (p / "pyproject.toml").is_file() and (p / "vlkit").is_dir():
                return p
    return Path.cwd()


def artifacts_root() -> Path:
    """``artifacts/`` (``$VLKIT_ARTIFACTS`` overrides): everything built, per profile (gitignored)."""
    return Path(os.environ.get("VLKIT_ARTIFACTS", repo_root() / "artifacts"))


def artifacts_dir(profile: str) -> Path:
    """``artifacts/<profile>/``: every file passed between notebooks (gitignored)."""
    path = artifacts_root() / profile
    path.mkdir(parents=True, exist_ok=True)
    return path


def figures_dir() -> Path:
    """``figures/``: PNGs written by the notebooks (``$VLKIT_FIGURES`` overrides, e.g. in tests)."""
    path = Path(os.environ.get("VLKIT_FIGURES", repo_root() / "figures"))
    path.mkdir(parents=True, exist_ok=True)
    return path
