"""Notebook 06's recipe (vlkit.recipes.compression): the grid per profile, what ToMe and FastV can reach on the
tiny backbones, the fine-tuned arms as continuations of notebook 03's stage 2 with and without a compressor, the
rows' keys, the best other method read from cached evaluations, and the dry-run plan."""
from __future__ import annotations

import dataclasses

import pytest

from vlkit import atomic, cache, plans
from vlkit.recipes import compression as C
from vlkit.recipes import llava


@pytest.fixture()
def artifacts(tmp_path, monkeypatch):
    monkeypatch.setenv("VLKIT_ARTIFACTS", str(tmp_path / "artifacts"))
    return tmp_path / "artifacts"


@pytest.fixture(scope="module")
def full():
    return C.CompressionConfig.for_profile("full", progress=False)


@pytest.fixture(scope="module")
def smoke():
    return C.CompressionConfig.for_profile("smoke", progress=False)


def test_full_grid_is_every_method_at_every_ratio_but_what_tome_cannot_reach(full):
    points = C.grid(full)
    assert points[0].name == C.REFERENCE and points[0].switches.token_reduction is None
    assert full.tome_lowest() == 0.125  # 65 -> 33 -> 17 -> 9 tokens over the three merging layers
    assert C.skipped(full) == [("tome", 0.1, "ToMe reaches keep ratio 0.125 at the lowest on this tower")]
    assert len(points) == 1 + len(C.METHODS) * len(C.RATIOS) - 1
    assert {(p.method, p.ratio) for p in points[1:]} == {(m, r) for m in C.METHODS for r in C.RATIOS} - {("tome", 0.1)}
    assert len({p.name for p in points}) == len(points)
    vmtc = next(p for p in points if p.name == "vmtc 25%")
    assert vmtc.switches.token_reduction == "vmtc" and vmtc.switches.token_reduction_options == {"keep_ratio": 0.25}
    fastv = next(p for p in points if p.name == "fastv 50%")
    assert fastv.config == ("fastv", {"K": 1, "keep_ratio": 0.5})  # K=1 on the 4-layer LLM: layers 2-3 cut


def test_smoke_exercises_every_method_once_and_vmtc_at_every_ratio(smoke):
    points = C.grid(smoke)
    methods = [p.method for p in points[1:]]
    assert set(methods) == set(C.METHODS)
    assert sorted(p.ratio for p in points if p.method == "vmtc") == sorted(C.RATIOS)
    assert all(p.ratio == 0.5 for p in points[1:] if p.method != "vmtc")
    # the smoke tower has 2 layers (one merging layer: half the patches at most) and the LLM 2 (K=0)
    assert smoke.tome_lowest() == 0.5 and smoke.reaches("tome", 0.5) and not smoke.reaches("tome", 0.4)
    assert smoke.options("fastv") == {"K": 0}


def test_the_grid_runs_on_notebook_03s_main_model_one_evaluation_per_point(full):
    rows = C.grid_rows(full, seed=0)
    main = full.llava.stage2(llava.MAIN, 0)
    assert all(r.evaluation.stage.key == main.key for r in rows)
    assert len({r.evaluation.key for r in rows}) == len(rows)  # each point its own cached evaluation
    spec = rows[0].evaluation.spec
    assert spec.bench is None and not spec.blind and not spec.efficiency and spec.scienceqa == full.llava.scienceqa
    assert [r.name for r in rows] == [p.name for p in C.grid(full)]


def test_the_fine_tuned_arms_continue_notebook_03s_stage_2_alike_but_for_the_compressor(full):
    for seed in (0, 2):
        base = full.llava.stage2(llava.MAIN, seed)
        ft, control = full.compressed_stage("vmtc", seed), full.control_stage(seed)
        assert ft.model.compressor == "vmtc" and ft.model.compressor_options == {"keep_ratio": 0.5}
        assert ft.model.replace(compressor="identity", compressor_options={}) == control.model == base.model
        assert ft.init.key == control.init.key == base.key  # both continue notebook 03's own model
        assert ft.train == control.train and ft.data == control.data == base.data
        assert ft.train.steps == control.train.steps == full.adapt_steps < base.train.steps
        assert ft.train == dataclasses.replace(base.train, steps=full.adapt_steps) and ft.train.seed == seed
        assert len({ft.key, control.key, base.key}) == 3
    assert full.compressed_stage("fastv", 0).model.compressor_options == {"K": 1, "keep_ratio": 0.5}
    with pytest.raises(ValueError, match="adapt_steps"):
        C.CompressionConfig.for_profile("full", adapt_steps=0)


def test_fine_tuned_rows(full):
    rows = C.finetune_rows(full, [0, 1, 2], "pool")
    assert [(r.name, r.seed) for r in rows] == [("uncompressed 100%, fine-tuned", s) for s in (0, 1, 2)] + [
        ("vmtc 50%, fine-tuned", s) for s in (0, 1, 2)] + [("pool 50%, fine-tuned", 0)]
    assert len(C.finetune_rows(full, [0, 1, 2], None)) == 6
    with pytest.raises(ValueError, match="besides vmtc"):
        C.finetune_rows(full, [0], "vmtc")
    with pytest.raises(ValueError, match="at least one training seed"):
        C.finetune_rows(full, [], None)


def _fake_evaluation(ev, img: float) -> None:
    """A cached evaluation with only what best_other reads (written where evaluate() looks)."""
    atomic.write_json(ev.path / "result.json", {"scienceqa": {"IMG": img}})
    atomic.write_json(ev.path / "config.json", {})


def test_best_other_waits_for_the_grid_then_picks_the_highest_img_at_50(artifacts, full):
    assert C.best_other(full) is None
    rows = {r.name: r for r in C.grid_rows(full)}
    scores = {"visionzip": 40.0, "prumerge": 55.0, "tome": 61.0, "fastv": 61.0, "pool": 50.0}
    for method, img in scores.items():
        _fake_evaluation(rows[f"{method} 50%"].evaluation, img)
    assert C.best_other(full) is None  # random at 50% is not evaluated yet
    _fake_evaluation(rows["random 50%"].evaluation, 10.0)
    _fake_evaluation(rows["vmtc 50%"].evaluation, 99.0)  # vmtc is not "other"
    assert C.best_other(full) == "tome"  # tied with fastv: the first in METHODS


@pytest.mark.parametrize("overrides,message", [
    (dict(ratios=(0.5, 1.0)), r"keep ratios in \(0, 1\)"),
    (dict(ratios=()), "keep ratios"),
    (dict(methods=("vmtc", "zip")), r"unknown compressor\(s\) \['zip'\]"),
    (dict(methods=("pool",)), "must include 'vmtc'"),
    (dict(fastv_K=3), "a 4-layer LLM needs 0 <= K <= 2"),
    (dict(finetune_ratio=1.0), "finetune_ratio"),
])
def test_bad_configs_are_refused(overrides, message):
    with pytest.raises(ValueError, match=message):
        C.CompressionConfig.for_profile("full", **overrides)


def test_from_parameters_and_the_dry_run_plan(artifacts):
    cfg, grid, finetuned = C.from_parameters("full", seed=0, train_seeds=[0, 1], ratios=[0.1, 0.5])
    assert cfg.ratios == (0.1, 0.5) and [r.seed for r in finetuned] == [0, 1, 0, 1]
    # no other method before the grid is evaluated
    assert [r.name for r in finetuned] == ["uncompressed 100%, fine-tuned"] * 2 + ["vmtc 50%, fine-tuned"] * 2
    lines = plans.describe("06_visual_token_compression.ipynb", {"profile": "full", "seed": 0, "train_seeds": [0, 1],
                                                                 "ratios": [0.1, 0.5]})
    text = "\n".join(lines)
    assert "skip  tome 10%: ToMe reaches keep ratio 0.125" in text
    assert "eval  vmtc 10% (seed 0)" in text and "to evaluate" in text
    assert "train stage 2 + 64 steps (vmtc 50%, seed 1)" in text
    assert "train stage 2 + 64 steps (uncompressed 100%, seed 0)" in text
    assert "train the best other method at 50%" in text
    assert sum("short VQA" in line for line in lines) == len(grid) + len(finetuned)
    assert not any(cache.is_cached(p) for p in artifacts.glob("*/*"))  # planning built nothing


def test_percent_names():
    assert [C.percent(r) for r in (0.1, 0.125, 0.5, 1.0)] == ["10%", "12.5%", "50%", "100%"]
    assert C.Point("tome", 0.125).name == "tome 12.5%" and C.Point("identity", 1.0).name == C.REFERENCE


@pytest.mark.slow
def test_vmtc_trains_on_with_the_compressor_on(artifacts, smoke):
    import torch

    from vlkit.stages import load_stage, stage_info
    ft, _ = load_stage(smoke.compressed_stage("vmtc", 0), progress=False)
    assert ft.compressor.name == "vmtc" and ft.num_image_tokens == 32  # half of the 64 patches reach the LLM
    info = stage_info(smoke.compressed_stage("vmtc", 0), progress=False)
    assert len(info["loss"]) == smoke.adapt_steps and all(torch.isfinite(torch.tensor(info["loss"])))
    base, _ = load_stage(smoke.control_stage(0), progress=False)
    assert base.compressor.name == "identity"
    # same start, seed, data and steps: only the compressor differs, so a difference in the trained LLM is
    # the compressed tokens' doing (a compressor ignored in training would leave the weights identical)
    theirs = base.language_model.state_dict()
    changed = [n for n, w in ft.language_model.state_dict().items() if not torch.equal(w, theirs[n])]
    assert any(".layers." in n for n in changed)
