"""Temporary siblings of atomic writes carry their creator's PID; a dead creator's are swept."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

from vlkit import atomic, paths, runs


def dead_pid() -> int:
    """The PID of a process that has ended (and been reaped)."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def killed_build(target: Path) -> Path:
    """What a build killed inside :func:`atomic.atomic_dir` leaves: its temporary folder."""
    code = textwrap.dedent(f"""
        import os
        from vlkit import atomic
        with atomic.atomic_dir({str(target)!r}) as tmp:
            (tmp / "weights.bin").write_bytes(b"half")
            print(tmp, flush=True)
            os._exit(9)  # as SIGKILL: no clean-up runs
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=paths.repo_root())
    assert out.returncode == 9, out.stderr
    left = Path(out.stdout.strip())
    assert left.is_dir() and left.parent == target.parent
    return left


def test_temporaries_are_named_after_their_process(tmp_path):
    with atomic.atomic_dir(tmp_path / "model") as tmp:
        assert atomic.temp_owner(tmp.name) == os.getpid()
    with atomic.atomic_open(tmp_path / "a.json"):
        (temp,) = tmp_path.glob(".a.json.*")
        assert atomic.temp_owner(temp.name) == os.getpid()
    assert atomic.temp_owner("model-1a2b3c") is None and atomic.temp_owner(".keep.tmp") is None


def test_sweep_removes_what_dead_processes_left_and_keeps_live_ones(tmp_path):
    root = tmp_path / "artifacts"
    killed = killed_build(root / "smoke" / "model-abc123")
    dead = dead_pid()
    stale_file = root / "smoke" / f".run.json.{dead}.abcd_123.tmp"
    stale_file.write_text("{")
    done = root / "smoke" / "data-123456"
    done.mkdir()
    (done / "config.json").write_text("{}")
    unrelated = root / ".notes.tmp"
    unrelated.write_text("mine")
    with atomic.atomic_dir(root / "smoke" / "other-999") as live:  # a build in progress: ours
        (live / "part").write_text("x")
        removed = atomic.sweep_stale(root)
        assert sorted(removed) == sorted([killed, stale_file])
        assert not killed.exists() and not stale_file.exists()
        assert (live / "part").exists()
    assert (root / "smoke" / "other-999" / "part").exists()
    assert (done / "config.json").exists() and unrelated.exists()
    assert atomic.sweep_stale(tmp_path / "missing") == []


def test_runner_sweeps_artifacts_when_it_starts(tmp_path, monkeypatch):
    artifacts = tmp_path / "artifacts"
    monkeypatch.setenv("VLKIT_ARTIFACTS", str(artifacts))
    stale = artifacts / "smoke" / f".model-abc.{dead_pid()}.x1y2z3w4.tmp"
    (stale / "sub").mkdir(parents=True)
    live = artifacts / "smoke" / f".data-def.{os.getpid()}.a1b2c3d4.tmp"
    live.mkdir()
    nbdir = tmp_path / "notebooks"
    nbdir.mkdir()
    import nbformat
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    cell = nbformat.v4.new_code_cell('profile = "full"\n')
    cell.metadata["tags"] = ["parameters"]
    nb.cells = [cell]
    nbformat.write(nb, nbdir / "01_x.ipynb")
    ran = []
    monkeypatch.setattr(runs, "execute", lambda nb, *a, **k: ran.append(nb) or ("ok", 0.01))
    _, record = runs.run_pipeline("smoke", None, {}, nbdir, tmp_path / "runs")
    assert record["status"] == "ok" and ran
    assert not stale.exists() and live.exists()
