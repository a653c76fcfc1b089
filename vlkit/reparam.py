"""Structural re-parameterisation: fold linear adapters into the layers they feed (notebook 04).

A linear adapter after a norm computes ``x @ A.T + c``; the q/k/v projections after it compute
``y @ W.T + b``. So ``W' = W @ A`` and ``b' = W @ c + b`` give the same outputs with no adapter
left (RepAdapter's re-parameterisation). :func:`merge_adapters` does this for every inserted
adapter that has an ``affine()`` (the Bottleneck Adapter without a non-linearity), so the merged
model's LLM is a stock Llama (with ``attention_bias`` / ``mlp_bias`` switched on where a folded
bias needs a place) that loads with ``AutoModelForCausalLM``, and the merged model costs what
the model without adapters costs at inference.
"""
from __future__ import annotations

import copy

import torch
from torch import nn

from vlkit.insertions import PLACES, _Apply, blocks

# The linear layers a place's norm feeds, by block architecture (Llama-family, CLIP).
CONSUMERS = {
    "attention": (("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),),
    "mlp": (("mlp.gate_proj", "mlp.up_proj"), ("mlp.fc1",)),
}
# The Llama config flag that gives every projection of its kind a bias.
BIAS_FLAGS = {"attention": ("attention_bias", ("q_proj", "k_proj", "v_proj", "o_proj")),
              "mlp": ("mlp_bias", ("gate_proj", "up_proj", "down_proj"))}


def _consumers(block: nn.Module, place: str) -> list[nn.Linear]:
    for names in CONSUMERS[place]:
        found = [block.get_submodule(n) for n in names if _has(block, n)]
        if found:
            return found
    raise ValueError(f"{type(block).__name__}: no known linear layers after its {place} norm to fold an adapter into")


def _has(module: nn.Module, name: str) -> bool:
    try:
        module.get_submodule(name)
        return True
    except AttributeError:
        return False


def _with_bias(linear: nn.Linear) -> None:
    if linear.bias is None:
        linear.bias = nn.Parameter(torch.zeros(linear.out_features, dtype=linear.weight.dtype,
                                               device=linear.weight.device))


@torch.no_grad()
def merge_adapters(model):
    """A copy of ``model`` with every inserted linear adapter folded into the layers after it (notebook 04).

    The copy has no inserted modules (``config.insertions`` is empty), so ``save_pretrained`` writes a
    plain VLModel and its ``language_model`` saves as a stock causal LM. Raises for an adapter with a
    non-linearity, another kind of insertion, or a quantised LLM.
    """
    if getattr(model.language_model, "is_loaded_in_4bit", False) or getattr(model.language_model,
                                                                          "is_loaded_in_8bit", False):
        raise ValueError("merge_adapters: the LLM is quantised; fold the adapters into an unquantised copy")
    merged = copy.deepcopy(model).eval()
    biased: set[str] = set()
    for key, adapter in merged.inserted.items():
        if not hasattr(adapter, "affine"):
            raise ValueError(f"merge_adapters: inserted module {key} ({type(adapter).__name__}) is not a linear adapter")
        tower, layer, place = key.split("_", 2)
        a, c = adapter.affine()
        block = blocks(merged, tower)[int(layer)]
        for linear in _consumers(block, place):
            if linear.bias is None and c.abs().max() > 0:
                if tower != "llm":
                    raise ValueError(f"merge_adapters: {key} folds a bias into a {tower} projection that has none")
                biased.add(place)
            bias = linear.bias if linear.bias is not None else torch.zeros(
                linear.out_features, dtype=c.dtype, device=linear.weight.device)
            new_bias = linear.weight @ c + bias
            linear.weight.copy_(linear.weight @ a)
            if linear.bias is not None or tower == "llm" and place in biased:
                _with_bias(linear)
                linear.bias.copy_(new_bias)
        norm = next(getattr(block, n) for n in PLACES[place] if hasattr(block, n))
        for hid in [h for h, fn in norm._forward_hooks.items() if isinstance(fn, _Apply)]:
            del norm._forward_hooks[hid]
    for place in biased:  # a stock Llama with the flag set has a bias on every projection of the kind
        flag, names = BIAS_FLAGS[place]
        setattr(merged.language_model.config, flag, True)
        for block in blocks(merged, "llm"):
            sub = block.self_attn if place == "attention" else block.mlp
            for n in names:
                _with_bias(getattr(sub, n))
    merged.inserted = nn.ModuleDict()
    merged.config.insertions = []
    merged.config.text_config = merged.language_model.config
    return merged
