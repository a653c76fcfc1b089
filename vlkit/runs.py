"""The papermill pipeline: run notebooks headless, record metrics (see README, all notebooks).

Placeholder: filled in by the lead. ``record(name, value)`` is the one API notebooks use.
"""
from __future__ import annotations


def record(name: str, value):
    """Record a metric of the running notebook (shown in the notebook, saved in the run)."""
    print(f"{name} = {value}")
    return value
