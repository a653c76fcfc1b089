"""A build cache keyed by the config that produced an artifact (all notebooks).

Each notebook can run alone: what it needs and is missing, it builds through
:func:`cached`, and a second call with the same config finds the folder already there.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from collections import Counter
from pathlib import Path
from typing import Any, Callable

from vlkit import atomic


def config_key(config: Any) -> str:
    """A short stable hash of a (dataclass or JSON-able) config."""
    if dataclasses.is_dataclass(config):
        config = dataclasses.asdict(config)
    blob = json.dumps(config, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:12]


def key_dict(obj: Any) -> Any:
    """What a spec's result depends on, as JSON-able data (notebooks 03-08).

    ``dataclasses.asdict``, recursively, except that fields declared with
    :func:`vlkit.specs.runtime` (``metadata={"key": False}``) are left out and fields declared with
    :func:`vlkit.specs.checkpoint` are replaced by their files' content fingerprint, and each dataclass
    says its class
    (:func:`vlkit.fingerprint.fingerprint`), so a retrained checkpoint at the same path changes the
    key and a moved one does not. Never a hand-listed set of fields.
    """
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        out = {"__type__": type(obj).__qualname__}  # two specs of the same shape but other kinds differ
        for f in dataclasses.fields(obj):
            if not f.metadata.get("key", True):
                continue
            value = getattr(obj, f.name)
            if f.metadata.get("checkpoint") and value is not None:
                from vlkit.fingerprint import fingerprint
                out[f.name] = {"checkpoint": fingerprint(value)}
            else:
                out[f.name] = key_dict(value)
        return out
    if isinstance(obj, dict):
        return {str(k): key_dict(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [key_dict(v) for v in obj]
    return obj


def spec_key(*specs: Any) -> str:
    """The cache key of whatever ``specs`` produce together (a hash of :func:`key_dict`)."""
    return config_key([key_dict(s) for s in specs])


# How many times each artifact kind was really built in this process (tests check that a cached
# artifact is reused, and that a changed input rebuilds it).
BUILDS: Counter = Counter()


def cache_path(root: str | Path, name: str, config: Any, key: str | None = None) -> Path:
    """Where :func:`cached` keeps the artifact ``name`` of ``config`` (built or not)."""
    return Path(root) / f"{name}-{key or config_key(config)}"


def is_cached(path: Path) -> bool:
    """Whether :func:`cached` has finished building ``path``."""
    return (Path(path) / "config.json").is_file()


def cached(root: str | Path, name: str, config: Any, build: Callable[[Path], None],
           key: str | None = None) -> Path:
    """Return ``root/<name>-<key>``; build it with ``build(tmp_dir)`` first if it is missing.

    ``key`` defaults to :func:`config_key` of ``config``; specs pass :func:`spec_key`. ``build``
    writes into a temporary folder that is renamed into place only when it returns, so an
    interrupted build leaves no half-made artifact behind. The config is saved beside the result
    as ``config.json``.
    """
    path = cache_path(root, name, config, key)
    if is_cached(path):
        return path
    with atomic.atomic_dir(path, keep_existing=True) as tmp:  # another process finished first: its copy wins
        BUILDS[name] += 1
        build(tmp)
        atomic.write_json(tmp / "config.json", key_dict(config))
    return path
