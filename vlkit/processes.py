"""Stopping a notebook with everything it started, and signals recorded where stopping is safe (README; all notebooks).

jupyter_client starts the kernel in a session of its own, so killing papermill's process group
leaves the kernel (and whatever the notebook started) running: :func:`stop_process_tree` finds
papermill's descendants and stops each of their groups, SIGTERM first, SIGKILL after ``grace``.
"""
from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from typing import Any

# Seconds a stopped notebook's processes get between SIGTERM and SIGKILL.
GRACE_SECONDS = 3.0


class Signals:
    """While entered (in the main thread), SIGINT and SIGTERM are recorded instead of acted on.

    The runner looks at :attr:`signum` where stopping is safe (while a notebook runs, and
    between notebooks), so that no signal lands in the middle of writing ``run.json``. The
    handlers in place before are put back on exit.
    """

    HANDLED = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.received: list[int] = []
        self._previous: dict[int, Any] = {}

    @property
    def signum(self) -> int | None:
        """The first signal received, or None."""
        return self.received[0] if self.received else None

    def _handle(self, signum, frame) -> None:
        self.received.append(signum)

    def __enter__(self) -> Signals:
        if threading.current_thread() is threading.main_thread():
            for sig in self.HANDLED:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            # None: a handler not installed from Python; the default is the nearest we can restore
            signal.signal(sig, signal.SIG_DFL if handler is None else handler)
        self._previous.clear()


def _processes() -> dict[int, tuple[int, int, str]]:
    """Every process as pid -> (parent pid, process group, state), from /proc; {} without it."""
    out = {}
    try:
        entries = os.listdir("/proc")
    except OSError:
        return out
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read().decode(errors="replace")
            # "pid (comm) state ppid pgrp ...": comm may hold spaces and parentheses
            fields = stat[stat.rindex(")") + 2:].split()
            out[int(entry)] = (int(fields[1]), int(fields[2]), fields[0])
        except (OSError, ValueError, IndexError):
            continue  # gone meanwhile
    return out


def _process_groups(pid: int) -> set[int]:
    """The process groups of ``pid`` and of all its descendants.

    Papermill runs in its own session (hence group), but jupyter_client starts the kernel in a
    session of its own too, and a notebook may start more; each of their groups is stopped.
    """
    groups = {pid}
    table = _processes()
    if not table:
        try:
            import psutil
            children = psutil.Process(pid).children(recursive=True)
            groups |= {os.getpgid(c.pid) for c in children}
        except Exception:  # no psutil, or the process is gone: papermill's own group only
            pass
        return groups
    children: dict[int, list[int]] = {}
    for child, (parent, _, _) in table.items():
        children.setdefault(parent, []).append(child)
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            groups.add(table[child][1])
            todo.append(child)
    return groups


def _live_groups(groups: set[int]) -> set[int]:
    """Those of ``groups`` in which a process runs (a zombie does not)."""
    table = _processes()
    if table:
        return {g for _, g, state in table.values() if state != "Z"} & groups
    live = set()
    for g in groups:
        try:
            os.killpg(g, 0)
        except ProcessLookupError:
            continue
        except PermissionError:
            pass
        live.add(g)
    return live


def stop_process_tree(proc: subprocess.Popen, grace: float = GRACE_SECONDS,
                      signals: Signals | None = None) -> None:
    """End ``proc`` and every process it started, group by group: SIGTERM, then SIGKILL.

    The groups are those of ``proc`` (started with ``start_new_session``) and of its descendants,
    taken before anything is signalled (a kernel whose papermill is gone has no parent to be
    found by). The runner's own group is never one of them. Those still running ``grace``
    seconds after SIGTERM, or at a second signal to the runner, get SIGKILL. Returns once none
    runs (SIGKILL cannot be refused, so that is soon), or :data:`GRACE_SECONDS` after SIGKILL
    at the latest (a process of another user's is beyond reach).
    """
    own = os.getpgrp()
    groups = {g for g in _process_groups(proc.pid) if g > 1 and g != own}
    first = len(signals.received) if signals else 0

    def send(sig, to):
        for g in to:
            try:
                os.killpg(g, sig)
            except (ProcessLookupError, PermissionError):
                pass

    send(signal.SIGTERM, groups)
    deadline, killed = time.monotonic() + grace, False
    while True:
        proc.poll()  # reap papermill, which is our child: a zombie is not running
        alive = _live_groups(groups)
        if not alive:
            break
        hurry = signals is not None and len(signals.received) > first
        if not killed and (time.monotonic() >= deadline or hurry):
            send(signal.SIGKILL, alive)
            deadline, killed = time.monotonic() + GRACE_SECONDS, True
        elif killed and time.monotonic() >= deadline:
            break
        time.sleep(0.05)
    if proc.poll() is None:
        proc.kill()
    proc.wait()
