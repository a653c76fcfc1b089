"""Modules inserted into the blocks of the LLM and the vision tower (notebook 04; the core since 03).

An insertion is a registered ``nn.Module`` class built per (tower, block, place) as
``cls(dim, **options)`` and applied to the output of the norm in front of that place:

- ``"attention"``: after the block's input norm, before self-attention (LLaMA's
  ``input_layernorm``, CLIP's ``layer_norm1``): where RepAdapter and LaVIN put their adapters;
- ``"mlp"``: after the norm in front of the MLP (``post_attention_layernorm`` / ``layer_norm2``).

The modules live in ``VLModel.inserted`` (so the towers keep their stock parameter names and a
tower saved on its own is a stock checkpoint) and reach the blocks through forward hooks on
those norms, re-attached from ``VLConfig.insertions`` whenever a model is built or loaded.
Quantising the LLM (QLoRA) happens when it is loaded, before insertions, so inserted modules
stay in full precision and train under any recipe (the ``insertions`` parameter group).
"""
from __future__ import annotations

import importlib
from typing import Iterable

from torch import nn

from vlkit.registry import Registry

INSERTIONS = Registry("insertion")
register_insertion = INSERTIONS.register
TOWERS = ("llm", "vision")
# The norm in front of each place, by attribute name in the block: Llama-family, CLIP/SigLIP.
PLACES = {"attention": ("input_layernorm", "layer_norm1"), "mlp": ("post_attention_layernorm", "layer_norm2")}


def blocks(model, tower: str) -> nn.ModuleList:
    """The transformer blocks of ``model``'s ``"llm"`` or ``"vision"`` tower (notebook 04)."""
    root = model.language_model if tower == "llm" else model.vision_tower
    for m in root.modules():
        layers = getattr(m, "layers", None)
        if isinstance(layers, nn.ModuleList) and len(layers) and _norm_of(layers[0], "attention", strict=False):
            return layers
    raise ValueError(f"the {tower} tower ({type(root).__name__}) has no list of transformer blocks with a "
                     f"known input norm ({', '.join(PLACES['attention'])}); insertions cannot be placed in it")


def _norm_of(block: nn.Module, place: str, strict: bool = True) -> nn.Module | None:
    for attr in PLACES[place]:
        if isinstance(getattr(block, attr, None), nn.Module):
            return getattr(block, attr)
    if strict:
        raise ValueError(f"insertion place {place!r} does not exist in {type(block).__name__}: it has none of "
                         f"{', '.join(PLACES[place])}")
    return None


def _hidden_size(model, tower: str) -> int:
    cfg = model.config.text_config if tower == "llm" else model.config.vision_config
    return cfg.hidden_size


def key(tower: str, layer: int, place: str) -> str:
    """The module's name under ``VLModel.inserted`` (ModuleDict keys cannot hold dots)."""
    return f"{tower}_{layer}_{place}"


def apply_insertions(model, specs: Iterable[dict]) -> None:
    """Build the inserted modules of ``specs`` (``VLConfig.insertions``) and hook them into ``model``.

    Each spec is ``{"name", "towers", "places", "layers", "options", "module"}`` (:class:`vlkit.specs.InsertionSpec`
    as a dict, and the module that registers the name, imported first: a saved model reloads in a fresh
    process). Raises a clear error for an unknown name, tower, place or layer index, before any module
    is built.
    """
    plan = []
    for spec in specs:
        name, options = spec["name"], dict(spec.get("options") or {})
        if spec.get("module") and name not in INSERTIONS.names():
            importlib.import_module(spec["module"])
        if name not in INSERTIONS.names():
            raise ValueError(f"unknown insertion {name!r}; known insertions: {', '.join(INSERTIONS.names())}")
        for tower in spec.get("towers") or ("llm",):
            if tower not in TOWERS:
                raise ValueError(f"insertion {name!r}: unknown tower {tower!r}; use {' or '.join(TOWERS)}")
            layers = blocks(model, tower)
            wanted = spec.get("layers")
            indices = list(range(len(layers))) if wanted is None else list(wanted)
            bad = [i for i in indices if not 0 <= i < len(layers)]
            if bad:
                raise ValueError(f"insertion {name!r}: the {tower} tower has {len(layers)} blocks, no block {bad}")
            if tower == "vision":  # block i makes hidden state i + 1: later blocks never reach the connector
                last = max(k % (len(layers) + 1) for k in model.connector.layers)
                unread = [i for i in indices if i + 1 > last]
                if unread:
                    raise ValueError(f"insertion {name!r}: vision blocks {unread} come after the last layer the "
                                     f"connector reads (hidden state {last}); they would train nothing. Give "
                                     f"layers={list(range(last))}")
            for i in indices:
                for place in spec.get("places") or ("attention",):
                    if place not in PLACES:
                        raise ValueError(f"insertion {name!r}: unknown place {place!r}; known places: "
                                         f"{', '.join(PLACES)}")
                    plan.append((name, options, tower, i, place, _norm_of(layers[i], place)))
    for name, options, tower, i, place, norm in plan:
        k = key(tower, i, place)
        if k in model.inserted:
            raise ValueError(f"two insertions at {tower} block {i}, place {place!r}")
        module = INSERTIONS.build(name, _hidden_size(model, tower), **options)
        for m in module.modules():  # its own initialisation (e.g. a zero up-projection) is the one it keeps:
            m._is_hf_initialized = True  # PreTrainedModel.post_init must not overwrite it
        model.inserted[k] = module
        norm.register_forward_hook(_Apply(module))


class _Apply:
    """Forward hook: the norm's output goes through the inserted module."""

    def __init__(self, module: nn.Module):
        self.module = module

    def __call__(self, norm, inputs, output):
        return self.module(output)
