"""Atomic writes: a reader never sees a half-written file or folder (all notebooks).

Everything is written to a temporary sibling and renamed into place; ``os.replace`` is
atomic on POSIX within one file system. A temporary sibling is named
``.<name>.<pid>.<random>.tmp`` after the process that makes it, so that one a killed process
left behind can be told from one still being written: :func:`sweep_stale` removes the former.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _temp_prefix(path: Path) -> str:
    """``.<name>.<pid>.``: a temporary sibling of ``path`` names the process that makes it."""
    return f".{path.name}.{os.getpid()}."


def _check_parent(path: Path) -> None:
    parent = path.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OSError(f"cannot create output folder {parent}: {e.strerror}") from e
    if not os.access(parent, os.W_OK):
        raise PermissionError(f"output folder {parent} is not writable")


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w", **kwargs) -> Iterator[Any]:
    """Open a temporary file next to ``path``; on clean exit rename it onto ``path``.

    On an exception the temporary file is removed and ``path`` is left as it was.
    """
    path = Path(path)
    _check_parent(path)
    fd, tmp = tempfile.mkstemp(prefix=_temp_prefix(path), suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode, **kwargs) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        # mkstemp makes 0600 files; give the result the permissions a plain open() would
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` atomically."""
    with atomic_open(path, "w", encoding="utf-8") as f:
        f.write(text)


def write_json(path: str | os.PathLike, obj: Any, indent: int | None = 2) -> None:
    """Write ``obj`` as JSON to ``path`` atomically."""
    with atomic_open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=indent, ensure_ascii=False)
        f.write("\n")


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike, keep_existing: bool = False) -> Iterator[Path]:
    """Build a folder in a temporary sibling; rename it onto ``path`` on clean exit.

    An existing ``path`` is replaced only after the new one is complete; with ``keep_existing`` it is
    kept and the new one discarded (a cache entry another process finished first wins).
    """
    path = Path(path)
    _check_parent(path)
    tmp = Path(tempfile.mkdtemp(prefix=_temp_prefix(path), suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700 folders
        if path.exists() and keep_existing:
            shutil.rmtree(tmp, ignore_errors=True)
        elif path.exists():
            old = Path(tempfile.mkdtemp(prefix=_temp_prefix(path), suffix=".tmp", dir=path.parent))
            os.rmdir(old)  # a unique name for the replaced folder, swept like any temporary if we die here
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


# ``.<name>.<pid>.<random>.tmp`` as :func:`atomic_open` and :func:`atomic_dir` name their temporaries
# (tempfile's random part: 8 of [a-z0-9_]).
_TEMP_NAME = re.compile(r"^\..+\.(?P<pid>[1-9][0-9]{0,9})\.[a-z0-9_]{8}\.tmp$")


def temp_owner(name: str) -> int | None:
    """The PID in a temporary sibling's name, or None for any other name."""
    m = _TEMP_NAME.match(name)
    return int(m["pid"]) if m else None


def pid_alive(pid: int) -> bool:
    """Whether a process ``pid`` exists (one of another user's counts; so does a zombie)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True  # it exists but is not ours; or no such PID can exist: not ours to judge
    return True


def sweep_stale(root: str | os.PathLike) -> list[Path]:
    """Remove the temporary files and folders under ``root`` whose creating process is gone.

    These are what a killed build leaves (``kill -9``, a crash, a timeout): never renamed into
    place, never cleaned up. One whose process is alive is an atomic write in progress and is
    kept, and its contents are not looked into; symbolic links are neither followed nor removed.
    Returns what was removed; a missing ``root`` is nothing to sweep.
    """
    removed: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        descend = []
        for name in dirnames:
            path = here / name
            pid = temp_owner(name)
            if pid is None or path.is_symlink():
                descend.append(name)
            elif not pid_alive(pid):
                shutil.rmtree(path, ignore_errors=True)
                if not path.exists():
                    removed.append(path)
        dirnames[:] = descend
        for name in filenames:
            path = here / name
            pid = temp_owner(name)
            if pid is not None and not path.is_symlink() and not pid_alive(pid):
                try:
                    os.unlink(path)
                except FileNotFoundError:
                    pass  # gone meanwhile
                except OSError:
                    continue  # not ours to remove (permissions): left as it is
                removed.append(path)
    return removed
