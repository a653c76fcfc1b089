"""Real-looking checkpoints: any dtype loads as fp32 master weights and trains, content (not the path) keys
the caches, and bad checkpoint folders are clear errors naming them."""
from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
import _vltiny as T  # noqa: E402

from vlkit import cache  # noqa: E402
from vlkit.backbones import build_llm, build_vision_tower  # noqa: E402
from vlkit.build import build_model  # noqa: E402
from vlkit.specs import ModelSpec, ParamGroup, TrainSpec  # noqa: E402
from vlkit.train import train  # noqa: E402

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def _save(root: Path, dtype: torch.dtype, seed: int = 0) -> ModelSpec:
    vision, llm = T.backbones(seed)
    vision.to(dtype).save_pretrained(root / "vision")
    T.image_processor().save_pretrained(root / "vision")
    llm.to(dtype).save_pretrained(root / "llm")
    T.tokenizer().save_pretrained(root / "llm")
    return ModelSpec(vision=str(root / "vision"), llm=str(root / "llm"))


@pytest.mark.parametrize("name", list(DTYPES))
def test_checkpoints_in_any_dtype_load_as_fp32_and_train(tmp_path, name):
    spec = _save(tmp_path, DTYPES[name])
    saved = build_llm(spec.llm, dtype=DTYPES[name])
    assert next(saved.parameters()).dtype == DTYPES[name]  # really saved in that dtype
    model, proc = build_model(spec)
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    spec_t = TrainSpec(groups=(ParamGroup("connector", 1e-2), ParamGroup("llm", 1e-3), ParamGroup("vision", 1e-3)),
                       steps=6, batch_size=4, mixed_precision="no", progress=False)
    r = train(model, T.ColorDataset(16), spec_t, processor=proc)
    assert all(torch.isfinite(torch.tensor(r.losses))) and r.losses[-1] < r.losses[0]
    model.eval()
    b = proc.prompt(["what color is the image?"], [T.ColorDataset(1)[0]["image"]])
    assert model.generate(**b, max_new_tokens=2, do_sample=False).shape == (1, 2)


def test_training_refuses_low_precision_master_weights():
    m = T.model()
    m.language_model.to(torch.bfloat16)
    spec = TrainSpec(groups=(ParamGroup("llm", 1e-3),), steps=1, batch_size=2, mixed_precision="no", progress=False)
    with pytest.raises(ValueError, match="fp32 master weights.*bfloat16"):
        train(m, T.ColorDataset(4), spec, processor=T.processor(m))


def test_an_llm_checkpoint_brings_its_tokenizer_and_no_tiny_backbones_are_built(tmp_path, monkeypatch):
    import vlkit.backbones as B
    monkeypatch.setattr(B, "ensure_backbones", lambda *a, **k: pytest.fail("tiny backbones built"))
    model, proc = build_model(_save(tmp_path, torch.float32))
    assert proc.tokenizer.convert_tokens_to_ids("<image>") == model.config.image_token_id


def test_bad_checkpoint_folders_are_clear_errors(tmp_path):
    spec = _save(tmp_path, torch.float32)
    with pytest.raises(FileNotFoundError, match="no such checkpoint folder"):
        build_llm(str(tmp_path / "nowhere"))
    with pytest.raises(FileNotFoundError, match="no config.json"):
        build_llm(str(tmp_path))
    with pytest.raises(ValueError, match=r"llm.*model_type 'llama'.*is not a vision tower"):
        build_vision_tower(spec.llm)
    weights = tmp_path / "llm" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(ValueError, match=rf"checkpoint {tmp_path / 'llm'}: cannot read its weights"):
        build_llm(spec.llm)


def test_a_retrained_checkpoint_at_the_same_path_retrains_every_stage(tmp_path, monkeypatch):
    from vlkit.eval.suite import EvalSpec, Evaluation, evaluate
    from vlkit.recipes import llava
    from vlkit.stages import Stage
    from vlkit.training_data import Captions
    monkeypatch.setenv("VLKIT_ARTIFACTS", str(tmp_path / "artifacts"))
    cfg = llava.LlavaConfig.for_profile("smoke", n_problems=30)
    cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, n_images=8, write_hf=False))
    spec = _save(tmp_path / "ckpt", torch.float32).replace(max_length=512)
    tspec = TrainSpec(groups=(ParamGroup("connector", 1e-3),), steps=1, batch_size=2, mixed_precision="no",
                      progress=False)
    stage1 = Stage(model=spec, train=tspec, data=Captions(cfg.data), profile="smoke")
    stage2 = Stage(model=spec, train=tspec, data=cfg.mix(llava.MAIN), init=stage1, profile="smoke")
    ev = Evaluation(stage2, EvalSpec(scienceqa=cfg.scienceqa, blind=False, efficiency=False, progress=False))
    evaluate(ev)
    before = dict(cache.BUILDS)
    evaluate(ev)
    assert dict(cache.BUILDS) == before  # all cached
    _save(tmp_path / "ckpt", torch.float32, seed=1)  # retrained: same path, config, shapes and sizes
    evaluate(ev)
    assert cache.BUILDS["stage"] == before["stage"] + 2 and cache.BUILDS["eval"] == before["eval"] + 1


def test_trained_tensors_that_do_not_fit_the_model_are_a_clear_error(tmp_path, monkeypatch):
    from safetensors.torch import save_file

    from vlkit.stages import Stage, load_stage
    from vlkit.training_data import Captions
    monkeypatch.setenv("VLKIT_ARTIFACTS", str(tmp_path / "artifacts"))
    from vlkit.data import DataConfig
    spec = _save(tmp_path / "ckpt", torch.float32)
    stage = Stage(model=spec, train=TrainSpec(groups=(ParamGroup("connector", 1e-3),), steps=1, batch_size=2,
                                              mixed_precision="no", progress=False),
                  data=Captions(DataConfig.for_profile("smoke", n_images=8, write_hf=False)), profile="smoke")
    load_stage(stage, progress=False)
    save_file({"connector.proj.weight": torch.zeros(3, 3)}, stage.path / "trainable.safetensors")
    with pytest.raises(ValueError, match=r"connector\.proj\.weight has shape \(3, 3\)"):
        load_stage(stage, progress=False)
    save_file({"connector.nope": torch.zeros(3)}, stage.path / "trainable.safetensors")
    with pytest.raises(ValueError, match=r"tensors this model does not have.*connector\.nope"):
        load_stage(stage, progress=False)
