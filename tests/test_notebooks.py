"""Notebook hygiene, and a smoke papermill run of every notebook through the real runner."""
from __future__ import annotations

import ast
import json

import nbformat
import pytest

from vlkit import paths, runs

NOTEBOOKS = sorted((paths.repo_root() / "notebooks").glob("[0-9][0-9]_*.ipynb"))


def test_there_are_notebooks():
    assert NOTEBOOKS, "notebooks/ holds no NN_*.ipynb"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_is_clean_and_parameterised(path):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    assert nb.metadata["kernelspec"]["name"] == "python3"
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(not c.outputs and c.execution_count is None for c in code), "commit without outputs"
    first = code[0]
    assert "parameters" in first.metadata.get("tags", []), "first code cell must be tagged parameters"
    tree = ast.parse(first.source)
    names = set()
    for stmt in tree.body:
        assert isinstance(stmt, ast.Assign), f"parameters cell: only assignments, got {ast.dump(stmt)[:60]}"
        ast.literal_eval(stmt.value)  # literals only: raises on expressions and calls
        names.update(t.id for t in stmt.targets)
    assert {"profile", "seed"} <= names


@pytest.mark.slow
def test_every_notebook_runs_on_the_smoke_profile(tmp_path, monkeypatch):
    # fresh artifacts and figures: the smoke run must build everything it needs itself
    monkeypatch.setenv("VLKIT_ARTIFACTS", str(tmp_path / "artifacts"))
    monkeypatch.setenv("VLKIT_FIGURES", str(tmp_path / "figures"))
    run_dir, record = runs.run_pipeline("smoke", runs_dir=tmp_path / "runs", timeout=600)
    failed = record.get("failed")
    assert record["status"] == "ok", f"{failed}\n{(run_dir / (failed['notebook'][:-6] + '.log')).read_text()[-3000:] if failed else ''}"
    assert [n["notebook"] for n in record["notebooks"]] == [p.name for p in NOTEBOOKS]
    for n in record["notebooks"]:
        assert n["metrics"], f"{n['notebook']} recorded no metric"
    assert any((tmp_path / "figures").glob("*.png")), "notebooks saved no figure"
    assert json.loads((run_dir / "run.json").read_text())["status"] == "ok"
    # notebooks 03, 04 and 05 wrote one result per evaluated row into the run folder, in the schema
    from vlkit import results
    written = results.load(run_dir)
    assert {r["notebook"] for r in written} == {"03", "04", "05"} and len(results.load(run_dir, "03")) >= 5
    assert len({(r["variant"], r["train_seed"]) for r in written if r["notebook"] == "04"}) == len(
        results.load(run_dir, "04"))  # no two rows of notebook 04 share a file
    assert all((run_dir / "results" / r["notebook"] / r["predictions"]).is_file() for r in written)
    # the dry run computes the notebooks' own cache paths: after the run, everything is cached
    plan = runs.dry_run("smoke")
    assert any("stage 2 (LLaVA, seed 0)" in line for line in plan)
    assert not [line for line in plan if " to " in line], plan
