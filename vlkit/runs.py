"""The papermill pipeline: run every notebook headless, record metrics (README; all notebooks).

``vlkit run`` executes ``notebooks/NN_*.ipynb`` in order, each in its own papermill process
(kernel ``python3``, working directory ``notebooks/``, a wall-clock limit per notebook), into
a new folder ``papermill_runs/<run_id>/`` that holds

- the executed notebooks (a failing one is kept with its error),
- ``<notebook>.metrics.json``: what the notebook passed to :func:`vlkit.record`,
- ``run.json``: git commit, profile, parameters, start/end, seconds per notebook, status,
  metrics, and for a failure the notebook and cell that failed.

Ctrl-C (SIGINT) or SIGTERM to the runner stops the notebook that is running, with every process
it started (SIGTERM, then SIGKILL after :data:`GRACE_SECONDS`), marks ``run.json``
``"interrupted"`` with that notebook and its seconds so far, and raises :class:`Interrupted`
(``vlkit run`` exits 130 or 143). Temporary build folders that killed processes left under
``artifacts/`` are removed when a run starts (:func:`vlkit.atomic.sweep_stale`).
"""
from __future__ import annotations

import ast
import dataclasses
import datetime as dt
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import nbformat

from vlkit import atomic, paths
from vlkit.errors import UserError
from vlkit.parameters import check_parameters, declared_parameters, with_profile
from vlkit.processes import Signals, stop_process_tree
from vlkit.metrics import NOTEBOOK_ENV, RUN_DIR_ENV

NOTEBOOK_PATTERN = re.compile(r"^(\d\d)_[\w-]+\.ipynb$")
# How often a running notebook is checked for its end, its time limit and a signal to the runner.
POLL_SECONDS = 0.2


# --------------------------------------------------------------------------- discovery

def discover(notebooks_dir: Path, only: list[str] | None = None) -> list[Path]:
    """``NN_*.ipynb`` in ``notebooks_dir`` in numeric order, filtered by ``only`` (e.g. ["01", "03"])."""
    found = sorted(p for p in Path(notebooks_dir).glob("*.ipynb") if NOTEBOOK_PATTERN.match(p.name))
    if only:
        wanted = {o.zfill(2) for o in only}
        unknown = wanted - {p.name[:2] for p in found}
        if unknown:
            raise ValueError(f"--only names no notebook: {', '.join(sorted(unknown))} "
                             f"(have {', '.join(p.name[:2] for p in found)})")
        found = [p for p in found if p.name[:2] in wanted]
    if not found:
        raise FileNotFoundError(f"no NN_*.ipynb notebooks in {notebooks_dir}")
    return found


# --------------------------------------------------------------------------- running

@dataclasses.dataclass
class NotebookResult:
    notebook: str
    status: str  # "ok" | "failed" | "timeout" | "interrupted"
    seconds: float
    parameters: dict[str, Any]
    metrics: dict[str, Any]
    error: dict[str, Any] | None = None


def _git_commit(root: Path) -> dict[str, Any]:
    def git(*args):
        out = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True)
        return out.stdout.strip() if out.returncode == 0 else None
    commit = git("rev-parse", "HEAD")
    return {"commit": commit, "dirty": bool(git("status", "--porcelain", "--untracked-files=no"))}


def check_runs_dir(runs_dir: Path) -> None:
    """``runs_dir`` is a folder or can become one: neither it nor a parent is a file."""
    for p in (runs_dir, *runs_dir.parents):
        if p.exists():
            if not p.is_dir():
                what = "is" if p == runs_dir else f"is inside {p}, which is"
                raise UserError(f"--runs-dir {runs_dir} {what} a file, not a folder")
            return


def check_timeout(timeout: float) -> None:
    """A per-notebook time limit is a positive number of seconds (``inf``: none)."""
    if not timeout > 0:  # also refuses nan
        raise UserError(f"--timeout {timeout:g}: must be a positive number of seconds")


def new_run_dir(runs_dir: Path, profile: str) -> Path:
    """A fresh ``<runs_dir>/<timestamp>-<profile>[-N]``: an existing run is never overwritten."""
    check_runs_dir(runs_dir)
    runs_dir.mkdir(parents=True, exist_ok=True)
    stem = f"{dt.datetime.now():%Y%m%d-%H%M%S}-{profile}"
    for n in range(1000):
        path = runs_dir / (stem if n == 0 else f"{stem}-{n}")
        try:
            path.mkdir()
            return path
        except FileExistsError:
            continue
    raise RuntimeError(f"could not create a new run folder under {runs_dir}")


def first_error(executed: Path) -> dict[str, Any] | None:
    """The first cell of an executed notebook whose output is an error: index, name, value."""
    if not executed.exists():
        return None
    nb = nbformat.read(executed, as_version=4)
    code_index = 0
    for index, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            continue
        code_index += 1
        for out in cell.get("outputs", []):
            if out.get("output_type") == "error":
                return {"cell_index": index, "code_cell": code_index,
                        "ename": out.get("ename"), "evalue": out.get("evalue"),
                        "source": cell.source[:500]}
    return None


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM stopped a run; ``run.json`` of ``run_dir`` says ``"interrupted"``.

    A KeyboardInterrupt, so that a caller that does not look for it stops as on Ctrl-C.
    """

    def __init__(self, signum: int, run_dir: Path, record: dict[str, Any]):
        self.signum, self.run_dir, self.record = signum, run_dir, record
        info = record.get("interrupted") or {}
        if info.get("notebook"):
            where = f"while {info['notebook']} ran ({info.get('seconds', 0):.1f} s); it was stopped"
        else:
            where = f"before {info.get('next', 'the next notebook')} started"
        super().__init__(f"interrupted by {signal.Signals(signum).name} {where}; "
                         f"run marked interrupted in {run_dir / 'run.json'}")

    @property
    def exit_code(self) -> int:
        """128 + the signal number, as a shell reports a process the signal ended: 130, 143."""
        return 128 + self.signum


def execute(notebook: Path, output: Path, parameters: dict[str, Any], run_dir: Path,
            timeout: float, cwd: Path, signals: Signals | None = None) -> tuple[str, float]:
    """Run one notebook with papermill in a child process; return (status, seconds).

    A child process (in its own session, so that the terminal's Ctrl-C reaches the runner
    only) gives a real wall-clock limit per notebook, which papermill's per-cell timeout does
    not. Over the limit, or on a signal :class:`Signals` recorded, the notebook's processes are
    stopped (:func:`stop_process_tree`) and the status is ``"timeout"`` or ``"interrupted"``.
    """
    env = dict(os.environ, **{RUN_DIR_ENV: str(run_dir), NOTEBOOK_ENV: notebook.stem,
                              "VLKIT_HOME": str(paths.repo_root())})
    if parameters.get("profile") != "full" and "VLKIT_FIGURES" not in os.environ:
        # figures/ holds the reference figures of the default (full) profile that the README
        # shows; other profiles keep theirs inside the run folder.
        env["VLKIT_FIGURES"] = str(run_dir / "figures")
    cmd = [sys.executable, "-m", "papermill", str(notebook), str(output),
           "-k", "python3", "--cwd", str(cwd), "-y", json.dumps(parameters),
           "--progress-bar" if sys.stderr.isatty() else "--no-progress-bar"]
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, start_new_session=True, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, errors="replace")
    # the log is read by a thread, so that waiting below can look up every POLL_SECONDS
    chunks: list[str] = []
    reader = threading.Thread(target=lambda: chunks.extend(proc.stdout), daemon=True)
    reader.start()
    deadline = start + timeout
    while True:
        try:
            proc.wait(timeout=max(0.0, min(POLL_SECONDS, deadline - time.perf_counter())))
            status = "ok" if proc.returncode == 0 else "failed"
            break
        except subprocess.TimeoutExpired:
            if signals is not None and signals.signum is not None:
                status = "interrupted"
            elif time.perf_counter() >= deadline:
                status = "timeout"
            else:
                continue
            stop_process_tree(proc, signals=signals)
            break
    seconds = time.perf_counter() - start
    reader.join(timeout=5)  # a process that escaped its group could hold the pipe open
    if not reader.is_alive():
        proc.stdout.close()
    atomic.write_text(run_dir / f"{notebook.stem}.log", "".join(chunks))
    return status, seconds


def dry_run(profile: str = "full", only: list[str] | None = None, params: dict[str, Any] | None = None,
            notebooks_dir: Path | None = None) -> list[str]:
    """What each selected notebook would build, train and evaluate, and what of it is cached.

    Parameters are checked as for a real run; nothing is built and no run folder is made.
    """
    from vlkit import plans
    merged = with_profile(params, profile)
    notebooks = discover(Path(notebooks_dir or paths.repo_root() / "notebooks").resolve(), only)
    per_notebook = check_parameters(notebooks, merged)
    lines = []
    for nb in notebooks:
        defaults = {k: ast.literal_eval(v) for k, v in declared_parameters(nb).items()}
        lines.append(f"{nb.name}:")
        lines += plans.describe(nb.name, {**defaults, **per_notebook[nb]})
    return lines


def run_pipeline(profile: str = "full", only: list[str] | None = None,
                 params: dict[str, Any] | None = None, notebooks_dir: Path | None = None,
                 runs_dir: Path | None = None, timeout: float = 7200) -> tuple[Path, dict]:
    """Execute the notebooks in order; return (run folder, run record).

    Parameters are checked against every selected notebook before anything runs. The
    pipeline stops at the first failing notebook, since later ones read its artifacts. On
    SIGINT or SIGTERM it stops the running notebook, records the run as interrupted and
    raises :class:`Interrupted`; the signal handlers it replaced are back by then.
    """
    merged = with_profile(params, profile)
    check_timeout(timeout)
    root = paths.repo_root()
    notebooks_dir = Path(notebooks_dir or root / "notebooks").resolve()
    runs_dir = Path(runs_dir or root / "papermill_runs").resolve()
    check_runs_dir(runs_dir)
    notebooks = discover(notebooks_dir, only)
    per_notebook = check_parameters(notebooks, merged)

    swept = atomic.sweep_stale(paths.artifacts_root())
    if swept:
        print(f"removed {len(swept)} temporary build folder(s) that killed processes left "
              f"under {paths.artifacts_root()}", flush=True)
    with Signals() as signals:
        run_dir = new_run_dir(runs_dir, profile)
        record_ = {"run_id": run_dir.name, "profile": profile, "parameters": params or {},
                   "git": _git_commit(root), "python": sys.version.split()[0],
                   "started": dt.datetime.now().isoformat(timespec="seconds"), "ended": None,
                   "status": "running", "notebooks": []}
        atomic.write_json(run_dir / "run.json", record_)
        for i, nb in enumerate(notebooks, 1):
            if signals.signum is not None:  # a signal between two notebooks
                record_["status"] = "interrupted"
                record_["interrupted"] = {"notebook": None, "next": nb.name}
                break
            print(f"[{i}/{len(notebooks)}] {nb.name} ({profile}) ...", flush=True)
            output = run_dir / nb.name
            status, seconds = execute(nb, output, per_notebook[nb], run_dir, timeout,
                                      notebooks_dir, signals)
            metrics_file = run_dir / f"{nb.stem}.metrics.json"
            if status == "ok":
                error = None
            elif status == "interrupted":
                error = {"ename": "interrupted",
                         "evalue": f"{signal.Signals(signals.signum).name} after {seconds:.1f} s"}
            else:
                error = first_error(output) or {"ename": status, "evalue": f"see {nb.stem}.log"}
            result = NotebookResult(
                notebook=nb.name, status=status, seconds=round(seconds, 2),
                parameters=per_notebook[nb],
                metrics=json.loads(metrics_file.read_text()) if metrics_file.exists() else {},
                error=error)
            record_["notebooks"].append(dataclasses.asdict(result))
            print(f"[{i}/{len(notebooks)}] {nb.name}: {status} in {seconds:.1f} s", flush=True)
            if status == "interrupted":
                record_["status"] = "interrupted"
                record_["interrupted"] = {"notebook": nb.name, "seconds": round(seconds, 2)}
                break
            if status != "ok":
                print(f"    {error.get('ename')}: {error.get('evalue')} "
                      f"(cell {error.get('cell_index', '?')}; executed copy: {output})",
                      file=sys.stderr)
                record_["status"] = "failed"
                record_["failed"] = {"notebook": nb.name, **error}
                break
            atomic.write_json(run_dir / "run.json", record_)
        else:
            record_["status"] = "ok"
        if record_["status"] == "interrupted":
            record_["interrupted"]["signal"] = signal.Signals(signals.signum).name
        record_["ended"] = dt.datetime.now().isoformat(timespec="seconds")
        record_["seconds"] = round(sum(n["seconds"] for n in record_["notebooks"]), 2)
        atomic.write_json(run_dir / "run.json", record_)
    if record_["status"] == "interrupted":
        raise Interrupted(signals.signum, run_dir, record_)
    return run_dir, record_
