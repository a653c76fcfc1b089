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
    # notebooks 03, 04, 05 and 06 wrote one result per evaluated row into the run folder, in the schema
    from vlkit import results
    from vlkit.recipes import compression
    written = results.load(run_dir)
    assert {r["notebook"] for r in written} == {"03", "04", "05", "06"} and len(results.load(run_dir, "03")) >= 5
    for nb in ("04", "06"):  # no two rows of a notebook share a file
        assert len({(r["variant"], r["train_seed"]) for r in written if r["notebook"] == nb}) == len(
            results.load(run_dir, nb))
    # notebook 06: every grid point (every method at least once), three fine-tuned VMTC seeds, their three
    # uncompressed controls and the best other method, each with the counting subset, the short-answer set and,
    # for the grid, its tokens and the latency measured against the uncompressed model in the same process
    nb06 = {(r["variant"], r["train_seed"]): r for r in results.load(run_dir, "06")}
    grid = [p.name for p in compression.grid(compression.CompressionConfig.for_profile("smoke"))]
    assert {(name, 0) for name in grid} <= set(nb06)
    assert sum(v == "vmtc 50%, fine-tuned" for v, _ in nb06) == 3
    assert sum(v == "uncompressed 100%, fine-tuned" for v, _ in nb06) == 3
    assert sum(v.endswith("fine-tuned") and not v.startswith(("vmtc", "uncompressed")) for v, _ in nb06) == 1
    for (variant, _), r in nb06.items():
        assert {"Counting", "Short VQA"} <= set(r["metrics"]) and "chance" in r["baselines"]["Short VQA"]
        assert r["prefill_flops"] == r["prefill_flops_analytic"]["tiny"]["total"] > 0
        if not variant.endswith("fine-tuned"):
            assert r["latency"]["reference"] == compression.REFERENCE and r["metrics"]["Visual tokens"] > 0
    assert nb06[("vmtc 50%", 0)]["metrics"]["Visual tokens"] <= 32
    metrics06 = next(n["metrics"] for n in record["notebooks"] if n["notebook"].startswith("06"))
    assert metrics06["tome_lowest_ratio"] == 0.5 and metrics06["vmtc_kept_at_50_img_verdict"] in (
        "reproduced", "not reproduced", "not distinguishable", "not testable at this scale")
    assert all((run_dir / "results" / r["notebook"] / r["predictions"]).is_file() for r in written)
    # the dry run computes the notebooks' own cache paths: after the run, everything is cached
    plan = runs.dry_run("smoke")
    assert any("stage 2 (LLaVA, seed 0)" in line for line in plan)
    assert not [line for line in plan if " to " in line], plan
