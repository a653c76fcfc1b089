"""Content fingerprints of checkpoints, so cache keys follow the weights, not the path (notebooks 02-08).

A checkpoint retrained in place keeps its path, its config and often its file sizes; only the
bytes change. So a checkpoint's key is a hash of every file's bytes. Hashing a 7B checkpoint
takes a while, so each file's hash is remembered by (path, size, mtime) in
``artifacts/fingerprints.json`` and computed once.
"""
from __future__ import annotations

import hashlib
import json
import os
import threading
from pathlib import Path

from vlkit import atomic, paths

_LOCK = threading.Lock()
_MEMO: dict[str, str] = {}
CHUNK = 1 << 20


def _index_path() -> Path:
    return paths.artifacts_root() / "fingerprints.json"


def _load_index() -> dict[str, str]:
    try:
        return json.loads(_index_path().read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {}


def file_hash(path: Path) -> str:
    """sha256 of one file's bytes, remembered by (absolute path, size, mtime)."""
    st = path.stat()
    memo_key = f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}"
    with _LOCK:
        if memo_key in _MEMO:
            return _MEMO[memo_key]
        index = _load_index()
    if memo_key in index:
        digest = index[memo_key]
    else:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            while block := f.read(CHUNK):
                h.update(block)
        digest = h.hexdigest()
        with _LOCK:
            index = _load_index()
            index[memo_key] = digest
            try:
                atomic.write_json(_index_path(), index, indent=None)
            except OSError:
                pass  # a read-only artifacts folder only costs recomputing next time
    with _LOCK:
        _MEMO[memo_key] = digest
    return digest


def fingerprint(name_or_path: str | os.PathLike) -> dict:
    """``{"sha256": ...}`` over a local checkpoint's files (a folder, recursively, or one file);
    ``{"name": ...}`` for a hub name that is not a local path (its content cannot be seen here)."""
    path = Path(os.path.expanduser(str(name_or_path)))  # as the loaders read it
    if not path.exists():
        return {"name": str(name_or_path)}
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    files = [p for p in files if not any(part.startswith(".") for part in p.relative_to(path).parts)] \
        if path.is_dir() else files
    h = hashlib.sha256()
    for p in files:
        rel = p.relative_to(path).as_posix() if path.is_dir() else p.name
        h.update(f"{rel}\0{file_hash(p)}\0".encode())
    return {"sha256": h.hexdigest(), "files": len(files)}
