"""A build cache keyed by the config that produced an artifact (all notebooks).

Each notebook can run alone: what it needs and is missing, it builds through
:func:`cached`, and a second call with the same config finds the folder already there.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any, Callable

from vlkit import atomic


def config_key(config: Any) -> str:
    """A short stable hash of a (dataclass or JSON-able) config."""
    if dataclasses.is_dataclass(config):
        config = dataclasses.asdict(config)
    blob = json.dumps(config, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:12]


def cached(root: str | Path, name: str, config: Any, build: Callable[[Path], None]) -> Path:
    """Return ``root/<name>-<key>``; build it with ``build(tmp_dir)`` first if it is missing.

    ``build`` writes into a temporary folder that is renamed into place only when it
    returns, so an interrupted build leaves no half-made artifact behind. The config is
    saved beside the result as ``config.json``.
    """
    path = Path(root) / f"{name}-{config_key(config)}"
    if (path / "config.json").is_file():
        return path
    with atomic.atomic_dir(path) as tmp:
        build(tmp)
        cfg = dataclasses.asdict(config) if dataclasses.is_dataclass(config) else config
        atomic.write_json(tmp / "config.json", cfg)
    return path
