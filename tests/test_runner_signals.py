"""Ctrl-C and SIGTERM to ``vlkit run``: the notebook stops with all it started, run.json says so.

Each test runs a real runner on a tiny notebook that writes the PIDs of its kernel and of a child
process it starts, then sleeps; the runner is signalled once both PIDs are on disk.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import nbformat
import pytest

from vlkit import paths, processes, runs

STARTUP_S = 120  # papermill + a kernel on a busy 2-core machine
PARAMS = 'profile = "smoke"\nseed = 0\n'


def make_notebook(path: Path, params: str, *cells: str) -> Path:
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    first = nbformat.v4.new_code_cell(params)
    first.metadata["tags"] = ["parameters"]
    nb.cells = [first, *(nbformat.v4.new_code_cell(c) for c in cells)]
    nbformat.write(nb, path)
    return path


def sleeping_notebook(nbdir: Path, pidfile: Path, child_ignores_sigterm: bool = False) -> Path:
    """``01_sleep.ipynb``: starts a child (in the kernel's group), writes both PIDs, sleeps 60 s."""
    child = ("import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(60)"
             if child_ignores_sigterm else "import time; time.sleep(60)")
    cell = (f"import os, subprocess, sys, time\n"
            f"child = subprocess.Popen([sys.executable, '-c', {child!r}])\n"
            f"time.sleep(0.5)  # let the child install its handler first\n"
            f"open({str(pidfile)!r} + '.part', 'w').write(f'{{os.getpid()}} {{child.pid}}')\n"
            f"os.replace({str(pidfile)!r} + '.part', {str(pidfile)!r})\n"
            f"time.sleep(60)\n")
    nbdir.mkdir(exist_ok=True)
    return make_notebook(nbdir / "01_sleep.ipynb", PARAMS, cell)


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie, dead but not yet reaped by its parent, does not)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False
    except OSError:  # no /proc
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True


def wait_for_pids(pidfile: Path, proc: subprocess.Popen | None = None) -> list[int]:
    deadline = time.monotonic() + STARTUP_S
    while not pidfile.exists():
        if proc is not None and proc.poll() is not None:
            pytest.fail(f"the runner ended before the notebook started: {proc.communicate()}")
        if time.monotonic() > deadline:
            pytest.fail("the notebook did not start")
        time.sleep(0.1)
    return [int(p) for p in pidfile.read_text().split()]


def kill_leftovers(pids):
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


def run_json(runs_dir: Path) -> dict:
    (run_dir,) = runs_dir.iterdir()
    return json.loads((run_dir / "run.json").read_text())


@pytest.mark.slow
@pytest.mark.timeout(STARTUP_S + 60)
@pytest.mark.parametrize("sig, code, child_ignores_sigterm", [
    (signal.SIGINT, 130, False),
    # the child ignores SIGTERM: it is gone only if the runner follows up with SIGKILL
    (signal.SIGTERM, 143, True),
], ids=["SIGINT", "SIGTERM"])
def test_signal_stops_the_notebook_and_marks_the_run_interrupted(tmp_path, sig, code,
                                                                 child_ignores_sigterm):
    nbdir, runs_dir, pidfile = tmp_path / "notebooks", tmp_path / "runs", tmp_path / "pids"
    sleeping_notebook(nbdir, pidfile, child_ignores_sigterm)
    env = dict(os.environ, VLKIT_ARTIFACTS=str(tmp_path / "artifacts"))
    proc = subprocess.Popen(
        [sys.executable, "-m", "vlkit.cli", "run", "--profile", "smoke", "--notebooks", str(nbdir),
         "--runs-dir", str(runs_dir)],
        cwd=paths.repo_root(), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    pids = []
    try:
        pids = wait_for_pids(pidfile, proc)
        assert run_json(runs_dir)["status"] == "running"
        assert all(alive(p) for p in pids)
        proc.send_signal(sig)
        sent = time.monotonic()
        out, err = proc.communicate(timeout=30)
        took = time.monotonic() - sent
    finally:
        if proc.poll() is None:
            proc.kill()
        kill_leftovers(pids)
    assert proc.returncode == code, (out, err)
    assert took < processes.GRACE_SECONDS + 7, f"the runner took {took:.1f} s to stop"
    # nothing the notebook started survives: its kernel, nor the kernel's child
    assert not [p for p in pids if alive(p)]
    record = run_json(runs_dir)
    assert record["status"] == "interrupted"
    assert record["interrupted"]["notebook"] == "01_sleep.ipynb"
    assert record["interrupted"]["signal"] == signal.Signals(sig).name
    assert 0 < record["interrupted"]["seconds"] < STARTUP_S + 30
    assert record["ended"] and record["notebooks"][0]["status"] == "interrupted"
    # one line on stderr, naming what was interrupted; no traceback
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if "interrupted" in line]
    assert len(lines) == 1 and "01_sleep.ipynb" in lines[0] and signal.Signals(sig).name in lines[0]


@pytest.mark.slow
@pytest.mark.timeout(STARTUP_S + 60)
def test_in_process_run_raises_interrupted_and_restores_the_signal_handlers(tmp_path, monkeypatch):
    monkeypatch.setenv("VLKIT_ARTIFACTS", str(tmp_path / "artifacts"))
    nbdir, runs_dir, pidfile = tmp_path / "notebooks", tmp_path / "runs", tmp_path / "pids"
    sleeping_notebook(nbdir, pidfile)

    def on_int(signum, frame):
        raise AssertionError("the runner's handler should have had this signal")

    def on_term(signum, frame):
        pass

    previous = signal.signal(signal.SIGINT, on_int), signal.signal(signal.SIGTERM, on_term)
    pids: list[int] = []

    def interrupt():
        try:
            pids.extend(wait_for_pids(pidfile))
        except BaseException:  # pytest.fail in a thread: the run below times out instead
            return
        os.kill(os.getpid(), signal.SIGINT)

    sender = threading.Thread(target=interrupt, daemon=True)
    try:
        sender.start()
        with pytest.raises(runs.Interrupted) as caught:
            runs.run_pipeline("smoke", None, {}, nbdir, runs_dir, timeout=STARTUP_S)
        assert signal.getsignal(signal.SIGINT) is on_int
        assert signal.getsignal(signal.SIGTERM) is on_term
    finally:
        signal.signal(signal.SIGINT, previous[0])
        signal.signal(signal.SIGTERM, previous[1])
        sender.join(timeout=5)
        kill_leftovers(pids)
    assert caught.value.signum == signal.SIGINT and caught.value.exit_code == 130
    assert caught.value.record["status"] == "interrupted"
    assert run_json(runs_dir)["interrupted"]["notebook"] == "01_sleep.ipynb"
    assert pids and not [p for p in pids if alive(p)]
