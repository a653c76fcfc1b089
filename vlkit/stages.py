"""One cached training step for every paper: a Stage trains once, and loads from then on (notebooks 03-08).

A :class:`Stage` is a model spec, a train spec, a training-data spec (:mod:`vlkit.training_data`)
and optionally the stage it starts from (LLaVA's stage 2 starts from stage 1's connector). Its
folder ``artifacts/<profile>/stage-<key>/`` is keyed by :func:`vlkit.cache.spec_key` of the whole
stage, its ancestors and the checkpoints' content included, so nothing that produced the
weights is left out of the key by hand. The folder holds ``trainable.safetensors`` (every
tensor the stage trained), ``losses.json`` (loss curve, seconds, tokens/s, peak memory),
``parameters.json`` (trainable / total parameters, trained-weight bytes) and ``config.json``.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from safetensors.torch import load_file, save_file

from vlkit import atomic, cache, paths
from vlkit.specs import ModelSpec, TrainSpec, runtime


@dataclass(frozen=True)
class Stage:
    """A model spec trained by a train spec on ``data``, from ``init``'s weights if given (notebook 03).

    ``label`` names it in progress bars and dry runs; ``profile`` picks the artifacts folder.
    Neither changes the weights, so neither is part of the key.
    """

    model: ModelSpec
    train: TrainSpec
    data: Any
    init: "Stage | None" = None
    label: str = runtime("stage")
    profile: str = runtime("full")

    def __post_init__(self):
        if not callable(getattr(self.data, "dataset", None)):
            raise TypeError(f"stage {self.label!r}: data must have a dataset(workdir) method, got "
                            f"{type(self.data).__name__}")

    @property
    def key(self) -> str:
        return cache.spec_key(self)

    @property
    def path(self) -> Path:
        """The stage's cache folder (whether built or not)."""
        return cache.cache_path(paths.artifacts_dir(self.profile), "stage", None, key=self.key)

    @property
    def chain(self) -> list["Stage"]:
        """This stage's ancestors, first stage first, then itself."""
        return ([] if self.init is None else self.init.chain) + [self]

    def is_trained(self) -> bool:
        return cache.is_cached(self.path)


def _load_weights(model, stage: Stage, weights: dict) -> None:
    params = dict(model.named_parameters())
    unknown = sorted(set(weights) - set(params))
    if unknown:
        raise ValueError(f"stage {stage.label!r} ({stage.path}) trained tensors this model does not have, "
                         f"e.g. {unknown[:3]}: the model spec changed between stages")
    bad = [n for n, w in weights.items() if params[n].shape != w.shape]
    if bad:
        raise ValueError(f"stage {stage.label!r} ({stage.path}): {bad[0]} has shape {tuple(weights[bad[0]].shape)}, "
                         f"the model's is {tuple(params[bad[0]].shape)}")
    model.load_state_dict(weights, strict=False)


def _build_from_ancestors(stage: Stage, progress: bool):
    """``stage``'s model with every ancestor's trained tensors loaded, LoRA not yet applied."""
    from vlkit.build import build_model
    model, proc = build_model(stage.model, seed=stage.train.seed, progress=progress)
    for ancestor in stage.chain[:-1]:
        if ancestor.train.lora is not None:
            raise NotImplementedError(f"stage {stage.label!r} starts from a LoRA stage ({ancestor.label!r}); "
                                      "merge its adapters into a checkpoint and start from that instead")
        _load_weights(model, ancestor, load_file(train_stage(ancestor, progress) / "trainable.safetensors"))
    return model, proc


def train_stage(stage: Stage, progress: bool = True) -> Path:
    """Train ``stage`` (its ancestors first) unless it is cached; return its folder (notebook 03)."""
    from vlkit.train import parameter_counts, train, weight_bytes

    def build(tmp: Path) -> None:
        model, proc = _build_from_ancestors(stage, progress)
        dataset = stage.data.dataset(tmp, progress=progress)
        r = train(model, dataset, stage.train, processor=proc)
        trained = {n: p.detach().contiguous() for n, p in model.named_parameters() if p.requires_grad}
        save_file(trained, tmp / "trainable.safetensors")
        atomic.write_json(tmp / "losses.json", {
            "loss": r.losses, "seconds": r.seconds, "seconds_per_step": r.seconds_per_step,
            "tokens_per_s": r.tokens_per_s, "examples": len(dataset), "steps": r.steps,
            "peak_memory_bytes": r.peak_memory_bytes, "memory_method": r.memory_method})
        atomic.write_json(tmp / "parameters.json", {
            **parameter_counts(model), "trained_bytes": sum(t.numel() * t.element_size() for t in trained.values()),
            "llm_bytes": weight_bytes(model.language_model), "model_bytes": weight_bytes(model)})

    return cache.cached(paths.artifacts_dir(stage.profile), "stage", stage, build, key=stage.key)


def load_stage(stage: Stage, progress: bool = True):
    """The trained model of ``stage`` (trained first if needed) and its processor, in eval mode (notebook 03).

    Rebuilds the architecture from the specs (quantised LLM and LoRA adapters included), loads
    every ancestor's trained tensors, then this stage's.
    """
    from vlkit.train.groups import wrap_lora
    path = train_stage(stage, progress)
    model, proc = _build_from_ancestors(stage, progress)
    wrap_lora(model, stage.train)
    _load_weights(model, stage, load_file(path / "trainable.safetensors"))
    model.eval()
    return model, proc


def stage_info(stage: Stage, progress: bool = True) -> dict:
    """``losses.json`` and ``parameters.json`` of a trained stage, in one dict, and ``trained``: each trained
    tensor's ``[elements, bytes]`` (read from the file's header) (notebook 03)."""
    from safetensors import safe_open
    path = train_stage(stage, progress)
    info = json.loads((path / "losses.json").read_text())
    info["parameters"] = json.loads((path / "parameters.json").read_text())
    with safe_open(str(path / "trainable.safetensors"), "pt") as f:
        trained = {}
        for name in f.keys():
            t = f.get_slice(name)
            n = 1
            for d in t.get_shape():
                n *= d
            trained[name] = [n, n * _DTYPE_BYTES[t.get_dtype()]]
    info["trained"] = trained
    return info


_DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1}
