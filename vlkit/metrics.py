"""``record(name, value)``: the one call a notebook makes to report a metric (every notebook).

Kept apart from :mod:`vlkit.runs` so that ``import vlkit`` stays light.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from vlkit import atomic

# Set by the pipeline runner (vlkit.runs) for each notebook it executes.
RUN_DIR_ENV = "VLKIT_RUN_DIR"
NOTEBOOK_ENV = "VLKIT_NOTEBOOK"


def _jsonable(value: Any) -> Any:
    """Turn numpy/torch scalars and arrays into plain JSON values."""
    if hasattr(value, "tolist"):  # numpy arrays/scalars, torch tensors
        return value.tolist()
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    raise TypeError(f"record(): {type(value).__name__} is not a JSON value")


def record(name: str, value: Any) -> Any:
    """Record a metric of the running notebook and show it (every notebook).

    Inside ``vlkit run`` the value also goes to ``<run>/<notebook>.metrics.json`` and from
    there into ``run.json``; in an interactive session it is only shown. Returns ``value``.
    """
    value = _jsonable(value)
    print(f"[metric] {name} = {value}")
    run_dir, notebook = os.environ.get(RUN_DIR_ENV), os.environ.get(NOTEBOOK_ENV)
    if run_dir and notebook:
        path = Path(run_dir) / f"{notebook}.metrics.json"
        metrics = json.loads(path.read_text()) if path.exists() else {}
        metrics[name] = value
        atomic.write_json(path, metrics)
    return value
