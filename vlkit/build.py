"""``build_model(spec)``: a ModelSpec made into a VLModel and its processor (notebooks 03-08).

The backbones are notebook 02's tiny towers (built on first use) for whatever the spec does not
name as a checkpoint; a checkpoint is loaded by name or path on the same code path. New modules
(the connector, inserted modules) are initialised from the training seed given here, so that
"another seed" means another initialisation and data order, never other data or backbones.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass

from vlkit.specs import ModelSpec


@dataclass(frozen=True)
class BackbonePaths:
    vision: str
    llm: str
    tokenizer: str


def backbone_paths(spec: ModelSpec, progress: bool = True) -> BackbonePaths:
    """The checkpoints ``spec`` names, notebook 02's tiny backbones for the rest (built when missing).

    A vision tower and an LLM given as checkpoints need no tiny backbones: the tokenizer then comes
    from the LLM checkpoint unless one is named (it is checked for ``<image>`` when loaded).
    """
    if spec.vision and spec.llm:
        return BackbonePaths(spec.vision, spec.llm, spec.tokenizer or spec.llm)
    from vlkit.backbones import ensure_backbones
    root = ensure_backbones(spec.backbones, progress=progress)
    return BackbonePaths(spec.vision or str(root / "vision"), spec.llm or str(root / "llm"),
                         spec.tokenizer or spec.llm or str(root / "tokenizer"))


def load_tokenizer(path: str):
    """The tokenizer, checked to have a single ``<image>`` token, pad and eos (notebook 03)."""
    from transformers import AutoTokenizer

    from vlkit.tokenizer import check_tokenizer
    tok = AutoTokenizer.from_pretrained(path)
    check_tokenizer(tok)
    return tok


def build_model(spec: ModelSpec, seed: int = 0, progress: bool = True):
    """A fresh VLModel of ``spec`` and its processor; new modules initialised from ``seed`` (notebook 03).

    The tower weights come from their checkpoints; the connector and inserted modules are new.
    Returns ``(model, processor)``; the processor follows the model's number of visual tokens
    (:meth:`vlkit.model.VLModel.set_token_reduction`).
    """
    from accelerate.utils import set_seed
    from transformers import AutoImageProcessor

    from vlkit.backbones import build_llm, build_vision_tower
    from vlkit.model import VLModel
    from vlkit.processor import VLProcessor
    from vlkit.train.quantize import quantization_config
    paths = backbone_paths(spec, progress)
    tok = load_tokenizer(paths.tokenizer)
    set_seed(seed)
    quant = quantization_config(spec.llm_quantization) if spec.llm_quantization else None
    with _loading_bars(progress):
        vision = build_vision_tower(paths.vision)
        llm = build_llm(paths.llm, quantization_config=quant)
    model = VLModel.from_backbones(
        vision, llm, tok, connector=spec.connector, connector_kwargs=spec.connector_options,
        compressor=spec.compressor, compressor_kwargs=spec.compressor_options,
        vision_feature_layer=spec.vision_feature_layer, llm_attn_implementation=spec.attention,
        insertions=[_insertion_dict(s) for s in spec.insertions], attention_kwargs=spec.attention_options,
        vision_attn_implementation=spec.vision_attention)
    proc = VLProcessor.for_model(model, AutoImageProcessor.from_pretrained(paths.vision), tok,
                                 max_length=spec.max_length, template=spec.template)
    return model, proc


@contextlib.contextmanager
def _loading_bars(show: bool):
    """transformers' "Loading weights" bars only when progress is wanted (a notebook loads dozens of models)."""
    from transformers.utils import logging
    was = logging.is_progress_bar_enabled()
    if not show:
        logging.disable_progress_bar()
    try:
        yield
    finally:
        if was:
            logging.enable_progress_bar()


def _insertion_dict(spec) -> dict:
    from vlkit.insertions import INSERTIONS
    return {"name": spec.name, "towers": list(spec.towers), "places": list(spec.places),
            "layers": None if spec.layers is None else list(spec.layers), "options": dict(spec.options),
            "module": INSERTIONS.module_of(spec.name)}
