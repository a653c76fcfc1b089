"""Which parameters train, at which learning rate: a TrainSpec's groups applied to a model (notebook 03).

Every parameter of a :class:`vlkit.model.VLModel` has a *kind*, from where it sits, not from a
recipe: ``lora`` (LoRA adapters), ``insertions`` (modules inserted into the towers' blocks,
:mod:`vlkit.insertions`), ``llm`` and ``vision`` (the towers' own weights) and ``connector``
(the connector and the compressor). A :class:`vlkit.specs.ParamGroup` names a kind, or selects
parameters by ``fnmatch`` patterns on their names; what no group selects is frozen.
"""
from __future__ import annotations

import fnmatch

import torch

from vlkit.specs import PARAMETER_KINDS, ParamGroup, TrainSpec


def parameter_kind(name: str) -> str:
    """The kind of the parameter called ``name`` in a VLModel (see the module docstring)."""
    if "lora_" in name:
        return "lora"
    if name.startswith("inserted."):
        return "insertions"
    if name.startswith("language_model."):
        return "llm"
    if name.startswith("vision_tower."):
        return "vision"
    return "connector"


def _selects(group: ParamGroup, name: str) -> bool:
    if group.patterns:
        return any(fnmatch.fnmatchcase(name, p) for p in group.patterns)
    return parameter_kind(name) == group.name


def wrap_lora(model, spec: TrainSpec) -> None:
    """Wrap the LLM with the spec's LoRA adapters (peft), once (notebook 03)."""
    if spec.lora is None:
        return
    from peft import LoraConfig, PeftModel, get_peft_model
    if isinstance(model.language_model, PeftModel):
        return
    lcfg = LoraConfig(r=spec.lora.r, lora_alpha=spec.lora.alpha, lora_dropout=spec.lora.dropout,
                      target_modules=list(spec.lora.targets), bias="none", task_type="CAUSAL_LM")
    model.language_model = get_peft_model(model.language_model, lcfg)


def prepare(model, spec: TrainSpec) -> dict[str, list[torch.nn.Parameter]]:
    """Wrap LoRA if the spec asks, freeze everything but the spec's groups; return them in spec order.

    A group that selects no trainable parameter, or a parameter selected by two groups, is an error
    naming them (before anything trains): a recipe that trains nothing where it meant to is a
    silent failure otherwise.
    """
    wrap_lora(model, spec)
    chosen: dict[str, list[torch.nn.Parameter]] = {g.name: [] for g in spec.groups}
    kinds: set[str] = set()
    for name, p in model.named_parameters():
        kinds.add(parameter_kind(name))
        hits = [g.name for g in spec.groups if _selects(g, name)]
        if len(hits) > 1:
            raise ValueError(f"parameter {name} is selected by the groups {hits}; each parameter trains in one group")
        train = bool(hits) and p.is_floating_point()
        p.requires_grad_(train)
        if train:
            chosen[hits[0]].append(p)
    low = [(n, p.dtype) for n, p in model.named_parameters() if p.requires_grad and p.dtype != torch.float32]
    if low:
        raise ValueError(f"trainable parameters must be fp32 master weights (bf16 compute comes from autocast), but "
                         f"{low[0][0]} is {low[0][1]} ({len(low)} such tensors); load the checkpoint in fp32, as "
                         "vlkit.build.build_model does")
    empty = [n for n, ps in chosen.items() if not ps]
    if empty:
        raise ValueError(f"parameter group(s) {empty} select no trainable parameter of this model; its parameter "
                         f"kinds are {sorted(kinds)} (groups without patterns name one of {list(PARAMETER_KINDS)})")
    return chosen


def optimizer_groups(spec: TrainSpec, chosen: dict[str, list[torch.nn.Parameter]]) -> list[dict]:
    """AdamW parameter groups: each with its lr, and its weight decay where the group sets one."""
    out = []
    for g in spec.groups:
        d = {"params": chosen[g.name], "lr": g.lr, "name": g.name}
        if g.weight_decay is not None:
            d["weight_decay"] = g.weight_decay
        out.append(d)
    return out
