"""Attention implementations chosen per model, and capture of attention maps (notebooks 03, 07).

Transformers 5 dispatches attention through ``AttentionInterface``: a model whose config says
``_attn_implementation = "name"`` calls the function registered under that name in every
attention layer, and builds its mask with the function registered under the same name in
``AttentionMaskInterface``. So a paper's attention change (CMAI's inhibition of unfocused
text->image pairs, notebook 07) is a plain function registered here; the LLM code is untouched.

Built in: ``"sdpa"`` and ``"eager"`` (transformers), and ``"vlkit_capture"``: eager attention
that also records each layer's attention probabilities while :func:`capture_attention` is active
(the last forward's, or every forward's: each decoding step of a generation, for the attention
explorer, :mod:`vlkit.widgets`). A registered function of a paper's own records through :func:`record`.

Every registered function can ask where the image tokens are: :class:`vlkit.model.VLModel` sets
the current batch's image positions around each LLM call (:func:`image_positions`), and
:func:`image_key_mask` returns them for the keys a layer attends over (cached prefix included).
"""
from __future__ import annotations

import contextlib
import contextvars
from typing import Callable, Iterator

import torch
from torch import nn
from transformers import AttentionInterface
from transformers.masking_utils import AttentionMaskInterface, eager_mask

_captures: list["AttentionMaps"] = []  # stack: nested capture_attention contexts
_image_mask: contextvars.ContextVar[torch.Tensor | None] = contextvars.ContextVar("vlkit_image_mask", default=None)


@contextlib.contextmanager
def image_positions(mask: torch.Tensor | None) -> Iterator[None]:
    """Make ``mask`` ([B, K] bool: key positions holding visual tokens) the current image positions.

    Set by :class:`vlkit.model.VLModel` around every LLM forward and generation (notebook 07).
    """
    token = _image_mask.set(None if mask is None else mask.bool())
    try:
        yield
    finally:
        _image_mask.reset(token)


def image_key_mask(batch: int, key_len: int) -> torch.Tensor:
    """[B, key_len] bool: which keys of the current attention call are image tokens (notebook 07).

    Positions after the recorded ones are text (tokens generated after the prompt). Raises a clear
    error outside a VLModel call, or when the batch does not match (e.g. a cache copied to more rows
    without its mask), instead of letting an attention function guess.
    """
    mask = _image_mask.get()
    if mask is None:
        raise RuntimeError("no image positions are set: this attention function must run inside a VLModel "
                           "forward or generate call (vlkit.attention.image_positions)")
    if mask.shape[0] != batch:
        raise RuntimeError(f"image positions are recorded for {mask.shape[0]} rows but attention runs on {batch}")
    if mask.shape[1] > key_len:
        raise RuntimeError(f"image positions cover {mask.shape[1]} keys but attention sees only {key_len}")
    pad = torch.zeros(batch, key_len - mask.shape[1], dtype=torch.bool, device=mask.device)
    return torch.cat([mask, pad], 1)


def select_cache_rows(cache, rows: torch.Tensor) -> None:
    """Keep (and repeat) rows ``rows`` of ``cache``, and of every per-row mask vlkit keeps on it (notebooks 03, 06).

    What a continuation needs to know about a cached prefix lives on the cache object (a forward's
    ``out.cache``) as [B, K] tensors named ``vlkit_*``: where its image tokens are
    (``vlkit_image_mask``), which image slots the compressor left empty and the LLM must not see
    (``vlkit_padded_mask``), which image tokens FastV pruned (``vlkit_fastv_pruned``). They follow the
    cache's rows here, so that one prompt's cache copied per candidate stays consistent. This is the
    one place that reindexes them: a method storing a new ``vlkit_*`` mask is covered without change.
    """
    rows = torch.as_tensor(rows, dtype=torch.long)
    cache.batch_select_indices(rows)
    for name, value in list(vars(cache).items()):
        if name.startswith("vlkit_") and isinstance(value, torch.Tensor):
            setattr(cache, name, value[rows.to(value.device)])


def register_attention(name: str, fn: Callable, mask: Callable = eager_mask) -> None:
    """Register ``fn`` as attention implementation ``name`` (notebook 07).

    ``fn(module, query, key, value, attention_mask, scaling, dropout=0.0, **kw) ->
    (out [B, Q, H, Dh], weights | None)``. ``mask`` builds the mask it receives; the default
    ``eager_mask`` gives an additive float mask [B, 1, Q, K] (0 = attend, -inf = blocked).
    """
    AttentionInterface.register(name, fn)
    AttentionMaskInterface.register(name, mask)


def available_attention() -> list[str]:
    """Attention implementations a model can use (notebook 03)."""
    return sorted({"eager", *AttentionInterface().valid_keys()})


def _repeat_kv(x: torch.Tensor, groups: int) -> torch.Tensor:
    # grouped-query attention: each key/value head serves `groups` query heads
    return x if groups == 1 else x.repeat_interleave(groups, dim=1)


def eager_attention(module: nn.Module, query, key, value, attention_mask, scaling: float,
                    dropout: float = 0.0, **kwargs):
    """Plain softmax(QK^T * scale + mask) V, returning the probabilities (notebook 07).

    Written out here so that variants (capture, CMAI) can change one line of it.
    """
    groups = getattr(module, "num_key_value_groups", 1)
    key, value = _repeat_kv(key, groups), _repeat_kv(value, groups)
    scores = torch.matmul(query, key.transpose(2, 3)) * scaling
    if attention_mask is not None:
        scores = scores + attention_mask[..., : key.shape[-2]]
    probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)
    probs = nn.functional.dropout(probs, p=dropout, training=module.training)
    out = torch.matmul(probs, value).transpose(1, 2).contiguous()
    return out, probs


class AttentionMaps(dict):
    """``layer_idx -> [B, H, Q, K]`` probabilities of the last forward call, and with ``steps`` every call's.

    What :func:`capture_attention` yields. As a dict it holds the last forward's maps (a generation's later
    steps overwrite earlier ones), as it always has. ``steps`` (when asked for) lists one such dict per
    forward call in order: for a generation the prefill first, then one per decoding step (notebook 07,
    :mod:`vlkit.widgets`). A call ends when a layer records again: each decoder layer runs once per forward.
    """

    def __init__(self, keep_steps: bool = False):
        super().__init__()
        self.steps: list[dict[int, torch.Tensor]] | None = [] if keep_steps else None

    def add(self, layer: int, probs: torch.Tensor) -> None:
        if self.steps is not None:
            if not self.steps or layer in self.steps[-1]:
                self.steps.append({})
            self.steps[-1][layer] = probs
        self[layer] = probs


def record(module: nn.Module, probs: torch.Tensor) -> None:
    """Record attention probabilities [B, H, Q, K] of ``module`` (a layer) in the active capture, if any.

    For attention functions registered outside this module (CMAI, FastV): calling this makes them visible
    to :func:`capture_attention` and so to the attention explorer, without running eager attention twice.
    """
    if _captures:
        maps = _captures[-1]
        layer = getattr(module, "layer_idx", None)
        maps.add(len(maps) if layer is None else layer, probs.detach())


def capture_attention_forward(module: nn.Module, query, key, value, attention_mask, scaling: float,
                              dropout: float = 0.0, **kwargs):
    """Eager attention that records probabilities [B, H, Q, K] per layer when capturing."""
    out, probs = eager_attention(module, query, key, value, attention_mask, scaling, dropout, **kwargs)
    record(module, probs)
    return out, probs


register_attention("vlkit_capture", capture_attention_forward)


def capturing() -> bool:
    """Whether a :func:`capture_attention` context is active (an attention function then returns maps)."""
    return bool(_captures)


@contextlib.contextmanager
def capture_attention(steps: bool = False) -> Iterator[AttentionMaps]:
    """Collect attention maps of layers running ``vlkit_capture`` (or any function that :func:`record` s) (notebook 03).

    ``with capture_attention() as maps: model(**batch)`` -> ``maps[layer_idx]`` is [B, H, Q, K]
    (the last forward call's maps; generation steps overwrite earlier ones). With ``steps=True``,
    ``maps.steps[i][layer_idx]`` also keeps forward call ``i``'s: a generation's prefill ([B, H, T, T])
    and then each decoding step's ([B, H, 1, T + i]), the attention that chose generated token ``i``.
    Only the innermost of nested contexts records.
    """
    maps = AttentionMaps(keep_steps=steps)
    _captures.append(maps)
    try:
        yield maps
    finally:
        # by identity: list.remove compares dicts by value, and two empty captures are equal
        del _captures[next(i for i, m in enumerate(_captures) if m is maps)]


def set_attention(model: nn.Module, name: str) -> None:
    """Switch ``model`` (any transformers model, e.g. ``VLModel.language_model``) to attention ``name``."""
    if name not in available_attention():
        raise ValueError(f"unknown attention implementation {name!r}; known: {', '.join(available_attention())}")
    model.set_attn_implementation(name)
