"""The papermill pipeline: run every notebook headless, record metrics (README; all notebooks).

``vlkit run`` executes ``notebooks/NN_*.ipynb`` in order, each in its own papermill process
(kernel ``python3``, working directory ``notebooks/``, a wall-clock limit per notebook), into
a new folder ``papermill_runs/<run_id>/`` that holds

- the executed notebooks (a failing one is kept with its error),
- ``<notebook>.metrics.json``: what the notebook passed to :func:`vlkit.record`,
- ``run.json``: git commit, profile, parameters, start/end, seconds per notebook, status,
  metrics, and for a failure the notebook and cell that failed.
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import nbformat
import papermill

from vlkit import atomic, paths
from vlkit.metrics import NOTEBOOK_ENV, RUN_DIR_ENV

NOTEBOOK_PATTERN = re.compile(r"^(\d\d)_[\w-]+\.ipynb$")
# Parameters every notebook must declare: the runner passes them to all notebooks.
COMMON_PARAMETERS = ("profile",)
PROFILES = ("smoke", "full")


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


def declared_parameters(notebook: Path) -> dict[str, Any]:
    """The names and default values in a notebook's cell tagged ``parameters``.

    Uses papermill's own inspection; a notebook without such a cell is an error, since
    the runner could not pass it a profile.
    """
    nb = nbformat.read(notebook, as_version=4)
    if not any("parameters" in c.metadata.get("tags", []) for c in nb.cells):
        raise ValueError(f"{notebook.name}: no cell tagged 'parameters'")
    params = papermill.inspect_notebook(str(notebook))
    return {name: info["default"] for name, info in params.items()}


def parse_value(text: str) -> Any:
    """A ``-p NAME VALUE`` value as papermill's CLI reads it: int, float, bool, None, JSON, else str."""
    for conv in (int, float):
        try:
            return conv(text)
        except ValueError:
            pass
    lowered = text.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if lowered in ("none", "null"):
        return None
    try:
        return json.loads(text)
    except ValueError:
        return text


def check_parameters(notebooks: list[Path], params: dict[str, Any]) -> dict[Path, dict[str, Any]]:
    """Map each notebook to the parameters it declares; unknown names are an error.

    Papermill only warns about a parameter a notebook does not declare (and injects it
    anyway); a typo would then silently run the default. Here a name must be declared by
    at least one selected notebook, and each notebook gets only the names it declares.
    """
    declared = {nb: declared_parameters(nb) for nb in notebooks}
    for nb, names in declared.items():
        missing = [c for c in COMMON_PARAMETERS if c not in names]
        if missing:
            raise ValueError(f"{nb.name}: parameters cell lacks {', '.join(missing)}")
    known = set().union(*declared.values())
    unknown = sorted(set(params) - known)
    if unknown:
        raise ValueError(f"unknown parameter(s) {', '.join(unknown)}; the selected notebooks "
                         f"declare: {', '.join(sorted(known))}")
    return {nb: {k: v for k, v in params.items() if k in names} for nb, names in declared.items()}


# --------------------------------------------------------------------------- running

@dataclasses.dataclass
class NotebookResult:
    notebook: str
    status: str  # "ok" | "failed" | "timeout"
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


def new_run_dir(runs_dir: Path, profile: str) -> Path:
    """A fresh ``<runs_dir>/<timestamp>-<profile>[-N]``: an existing run is never overwritten."""
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


def execute(notebook: Path, output: Path, parameters: dict[str, Any], run_dir: Path,
            timeout: float, cwd: Path) -> tuple[str, float]:
    """Run one notebook with papermill in a child process; return (status, seconds).

    A child process (in its own process group, so the kernel goes too) gives a real
    wall-clock limit per notebook, which papermill's per-cell timeout does not.
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
    proc = subprocess.Popen(cmd, env=env, start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        log, _ = proc.communicate(timeout=timeout)
        status = "ok" if proc.returncode == 0 else "failed"
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        log, _ = proc.communicate()
        status = "timeout"
    atomic.write_text(run_dir / f"{notebook.stem}.log", log or "")
    return status, time.perf_counter() - start


def dry_run(profile: str = "full", only: list[str] | None = None, params: dict[str, Any] | None = None,
            notebooks_dir: Path | None = None) -> list[str]:
    """What each selected notebook would build, train and evaluate, and what of it is cached.

    Parameters are checked as for a real run; nothing is built and no run folder is made.
    """
    import ast

    from vlkit import plans
    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}; choose from {', '.join(PROFILES)}")
    notebooks = discover(Path(notebooks_dir or paths.repo_root() / "notebooks").resolve(), only)
    per_notebook = check_parameters(notebooks, {**(params or {}), "profile": profile})
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
    pipeline stops at the first failing notebook, since later ones read its artifacts.
    """
    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}; choose from {', '.join(PROFILES)}")
    root = paths.repo_root()
    notebooks_dir = Path(notebooks_dir or root / "notebooks").resolve()
    runs_dir = Path(runs_dir or root / "papermill_runs").resolve()
    notebooks = discover(notebooks_dir, only)
    per_notebook = check_parameters(notebooks, {**(params or {}), "profile": profile})

    run_dir = new_run_dir(runs_dir, profile)
    record_ = {"run_id": run_dir.name, "profile": profile, "parameters": params or {},
               "git": _git_commit(root), "python": sys.version.split()[0],
               "started": dt.datetime.now().isoformat(timespec="seconds"), "ended": None,
               "status": "running", "notebooks": []}
    atomic.write_json(run_dir / "run.json", record_)
    for i, nb in enumerate(notebooks, 1):
        print(f"[{i}/{len(notebooks)}] {nb.name} ({profile}) ...", flush=True)
        output = run_dir / nb.name
        status, seconds = execute(nb, output, per_notebook[nb], run_dir, timeout, notebooks_dir)
        metrics_file = run_dir / f"{nb.stem}.metrics.json"
        result = NotebookResult(
            notebook=nb.name, status=status, seconds=round(seconds, 2), parameters=per_notebook[nb],
            metrics=json.loads(metrics_file.read_text()) if metrics_file.exists() else {},
            error=None if status == "ok" else (first_error(output) or
                                                 {"ename": status, "evalue": f"see {nb.stem}.log"}))
        record_["notebooks"].append(dataclasses.asdict(result))
        print(f"[{i}/{len(notebooks)}] {nb.name}: {status} in {seconds:.1f} s", flush=True)
        if status != "ok":
            err = result.error
            print(f"    {err.get('ename')}: {err.get('evalue')} "
                  f"(cell {err.get('cell_index', '?')}; executed copy: {output})", file=sys.stderr)
            record_["status"] = "failed"
            record_["failed"] = {"notebook": nb.name, **err}
            break
        atomic.write_json(run_dir / "run.json", record_)
    else:
        record_["status"] = "ok"
    record_["ended"] = dt.datetime.now().isoformat(timespec="seconds")
    record_["seconds"] = round(sum(n["seconds"] for n in record_["notebooks"]), 2)
    atomic.write_json(run_dir / "run.json", record_)
    return run_dir, record_
