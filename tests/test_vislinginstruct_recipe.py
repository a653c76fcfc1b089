"""Notebook 05's recipe on the smoke profile: EMA and its control start from notebook 03's main model,
only the connector trains, and the zero-shot tasks are generated (cached) apart from training."""
from __future__ import annotations

import pytest
import torch

from vlkit import cache
from vlkit.recipes import vislinginstruct as VL
from vlkit.stages import load_stage


@pytest.fixture()
def cfg(tmp_path, monkeypatch):
    monkeypatch.setenv("VLKIT_ARTIFACTS", str(tmp_path / "artifacts"))
    return VL.VisLingConfig.for_profile("smoke", progress=False)


@pytest.mark.slow
def test_ema_and_control_train_only_the_connector_from_notebook_03s_model(cfg):
    start, _ = load_stage(cfg.start(), progress=False)
    ema, _ = load_stage(cfg.stage(True, seed=1), progress=False)
    control, _ = load_stage(cfg.stage(False, seed=1), progress=False)
    assert ema.config.connector == "cmaa" and control.config.connector == "linear"
    for m in (ema, control):  # the towers are notebook 03's, untouched
        for name, p in start.language_model.state_dict().items():
            torch.testing.assert_close(m.language_model.state_dict()[name], p, rtol=0, atol=0)
    # CMAA's projection started from notebook 03's trained one, and training moved it and the attention
    assert not torch.equal(ema.connector.proj.weight, start.connector.proj.weight)
    assert ema.connector.attn.out_proj.weight.any()
    assert cfg.stage(True, seed=1).key != cfg.stage(True, seed=2).key != cfg.stage(False, seed=2).key


def test_zero_shot_tasks_are_generated_once_and_named(cfg):
    before = cache.BUILDS["zeroshot-pope"]
    folder = cfg.task_folder("pope")
    assert (folder / "questions.jsonl").is_file() and (folder / "images").is_dir()
    assert cfg.task_folder("pope") == folder and cache.BUILDS["zeroshot-pope"] == before + 1
    with pytest.raises(ValueError, match="unknown zero-shot task 'vqa'; known: pope, memes, textvqa"):
        cfg.task_folder("vqa")


@pytest.mark.slow
def test_zero_shot_results_are_kept_per_stage_and_read_back_without_the_model(cfg, monkeypatch):
    import vlkit.stages
    out = cfg.zeroshot(cfg.start(), sweep=True)
    assert set(out) == set(VL.SCORED)
    for task, r in out.items():
        n = cfg.n_questions
        assert len(r["question_ids"]) == n and all(len(r["predictions"][a]) == n for a in ("original", "ias", "ico"))
        assert len(r["sweep"]) == 16 and r["cost"]["forward_passes_per_question"] > 0
    assert len(set(out["pope"]["starts"])) > 1  # the questions start from different phrasings

    def no_model(*a, **k):
        raise AssertionError("a cached zero-shot result loaded the model")
    monkeypatch.setattr(vlkit.stages, "load_stage", no_model)
    assert cfg.zeroshot(cfg.start(), sweep=True) == out
    with pytest.raises(AssertionError, match="loaded the model"):  # another spec is another result
        cfg.zeroshot(cfg.start(), sweep=False)
