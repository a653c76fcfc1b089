"""ToMe: merge similar tokens inside the vision tower (Bolya et al., ICLR 2023; facebookresearch/ToMe) (notebook 06).

In every encoder layer up to the one the connector reads, after self-attention and before the MLP,
ToMe merges the ``r`` most redundant tokens into their nearest neighbours:

1. *bipartite soft matching*: the tokens are split alternately into sides A and B; each A token finds
   its most similar B token (cosine similarity of the layer's attention keys, averaged over heads);
   the ``r`` A tokens with the most similar partners are merged into them. Alternation puts
   neighbouring patches on opposite sides, and one matrix product A x B replaces all-pairs
   clustering. At most half the tokens can leave per layer (every A token merging).
2. *size-weighted averages*: each token carries how many patches it stands for; a merge averages
   the tokens weighted by that size, so a token's features stay the mean of its patches.
3. *proportional attention*: ``softmax(q k^T / sqrt(d) + log size)``, so that a token standing for
   ``s`` patches is attended to as the ``s`` patches it replaced would be together.

Here the math comes first (plain tensors), then the patch of a transformers CLIP/SigLIP encoder,
then the registered compressor, as ``tome/merge.py`` and ``tome/patch/`` keep them apart.
"""
from __future__ import annotations

import math
from typing import NamedTuple, Sequence

import torch
from torch import nn

from vlkit.compression import Compressor, register_compressor
from vlkit.connectors import Connector
from vlkit.insertions import blocks

# --- the math ----------------------------------------------------------------------------------------


class Matching(NamedTuple):
    """Which tokens merge where, from :func:`bipartite_soft_matching` (indices per batch row)."""

    keep: torch.Tensor  # [B, Ta - r] side-A tokens left alone, ascending (a protected [cls] stays first)
    src: torch.Tensor   # [B, r] side-A tokens merged away
    dst: torch.Tensor   # [B, r] the side-B token each of them merges into


def max_merges(tokens: int, protected: int = 1) -> int:
    """ToMe's bound: at most half of the unprotected tokens merge in one layer (each A token once)."""
    return max(0, (tokens - protected) // 2)


def bipartite_soft_matching(metric: torch.Tensor, r: int, protect_first: bool = True) -> Matching:
    """Match ``r`` tokens of ``metric`` [B, T, C] (the layer's keys) for merging.

    Side A holds tokens 0, 2, 4, ..., side B tokens 1, 3, 5, ...; the ``r`` A tokens whose best B
    partner is most similar (cosine) merge into it. ``protect_first``: token 0 ([cls]) never merges.
    """
    bound = max_merges(metric.shape[1], int(protect_first))
    if not 0 <= r <= bound:
        raise ValueError(f"ToMe can merge 0..{bound} of {metric.shape[1]} tokens in one layer, not r={r}")
    with torch.no_grad():  # indices only: no gradient flows through the choice
        metric = metric / metric.norm(dim=-1, keepdim=True)
        a, b = metric[:, ::2], metric[:, 1::2]
        similarity = a @ b.transpose(1, 2)
        if protect_first:
            similarity[:, 0] = -math.inf  # [cls] ranks last, and r < |A| keeps it out of the sources
        best, partner = similarity.max(-1)
        order = best.argsort(dim=-1, descending=True, stable=True)
        src = order[:, :r]
        return Matching(order[:, r:].sort(-1).values, src, partner.gather(1, src))


def merge(x: torch.Tensor, m: Matching, reduce: str = "sum") -> torch.Tensor:
    """Apply ``m`` to ``x`` [B, T, C]: the kept A tokens, then every B token with its sources reduced in."""
    a, b = x[:, ::2], x[:, 1::2]

    def rows(index):
        return index[..., None].expand(-1, -1, x.shape[-1])

    b = b.scatter_reduce(1, rows(m.dst), a.gather(1, rows(m.src)), reduce=reduce)
    return torch.cat([a.gather(1, rows(m.keep)), b], 1)


def merge_wavg(x: torch.Tensor, m: Matching, size: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Merge ``x`` [B, T, C] as size-weighted means; returns them and the new sizes [B, T - r, 1].

    ``size`` (None: every token is one patch) counts the patches each token stands for, so a token
    that already absorbed three patches weighs three times a fresh one.
    """
    if size is None:
        size = x.new_ones(*x.shape[:2], 1)
    total, size = merge(x * size, m), merge(size, m)
    return total / size, size


def proportional_bias(size: torch.Tensor) -> torch.Tensor:
    """Additive attention bias [B, 1, 1, T] = log size of each key: a key standing for ``s`` patches
    gets ``s`` times the weight (``exp(score + log s) = s exp(score)``), as its patches would together."""
    return size.log()[:, None, None, :, 0]


def reachable(tokens: int, layers: int, protected: int = 1) -> int:
    """The most tokens ``layers`` merging layers can remove from ``tokens``: each merging its bound."""
    removed = 0
    for _ in range(layers):
        r = max_merges(tokens - removed, protected)
        removed += r
    return removed


def schedule(tokens: int, layers: int, total: int, protected: int = 1) -> list[int]:
    """r per layer removing ``total`` of ``tokens`` tokens over ``layers`` layers.

    The rule: as even as ToMe's bound allows. Each layer takes ``ceil(remaining / layers left)``,
    or more when the later, smaller layers could not take the rest (their bound shrinks with their
    token count), so close to the limit the schedule front-loads, as ToMe's "decreasing" one.
    """
    if total > reachable(tokens, layers, protected):
        raise ValueError(f"ToMe removes at most {reachable(tokens, layers, protected)} of {tokens} tokens "
                         f"in {layers} layers (half the unprotected tokens per layer), not {total}")
    out = []
    for left in range(layers, 0, -1):
        r = -(-total // left)
        while total - r > reachable(tokens - r, left - 1, protected):
            r += 1
        out.append(r)
        tokens, total = tokens - r, total - r
    return out


# --- the patch of a transformers vision encoder (CLIP, SigLIP) --------------------------------------


class _State:
    """What the patched layers share during one tower forward: sizes, positions, the last keys."""

    def __init__(self):
        self.size = self.pos = self.keys = None


def _keep_keys(state: _State):
    """Forward hook on a layer's key projection: its output [B, T, D] is ToMe's similarity metric."""

    def hook(module, inputs, output):
        state.keys = output

    return hook


class _MergingForward:
    """Replaces one encoder layer's ``forward``: attention (+ log size), merge ``r`` tokens, MLP.

    The layer's own modules run (and any hooks on them, e.g. inserted adapters); only the merge
    between the attention and MLP residual branches is new. The tokens of the connector's layer
    are put back in raster order (``sort``), each merged token where its first patch was: the
    LLM reads them with positions, as it read unmerged patches in training.
    """

    def __init__(self, layer: nn.Module, index: int, r: int, heads: int, state: _State,
                 protect_first: bool, prop_attn: bool, sort: bool):
        self.layer, self.index, self.r, self.heads, self.state = layer, index, r, heads, state
        self.protect_first, self.prop_attn, self.sort = protect_first, prop_attn, sort

    def __call__(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None, **kwargs):
        layer, s = self.layer, self.state
        if self.index == 0:  # a new image batch
            s.size = None
            s.pos = torch.arange(hidden_states.shape[1], device=hidden_states.device).expand(
                hidden_states.shape[0], -1)[..., None]
        bias = attention_mask
        if self.prop_attn and s.size is not None:
            log_size = proportional_bias(s.size).to(hidden_states.dtype)
            bias = log_size if bias is None else bias + log_size
        x = hidden_states
        h, _ = layer.self_attn(layer.layer_norm1(x), attention_mask=bias, **kwargs)
        x = x + h
        if self.r > 0:
            b, t, _ = s.keys.shape
            metric = s.keys.view(b, t, self.heads, -1).mean(2)  # keys averaged over heads, as ToMe
            m = bipartite_soft_matching(metric, self.r, self.protect_first)
            x, s.size = merge_wavg(x, m, s.size)
            s.pos = merge(s.pos, m, reduce="amin")
        if self.sort and s.size is not None:
            order = s.pos.argsort(1)
            x, s.size, s.pos = (v.gather(1, order.expand(-1, -1, v.shape[-1])) for v in (x, s.size, s.pos))
        return x + layer.mlp(layer.layer_norm2(x))


def _is_per_token(connector: Connector) -> bool:
    """Whether ``connector`` maps each token of one layer on its own (ToMe's merged tokens have no grid).

    A connector says so with ``per_token``; otherwise: it reads one layer and keeps the count.
    """
    flag = getattr(connector, "per_token", None)
    if flag is not None:
        return bool(flag)
    return connector.layers == (connector.feature_layer,) and type(connector).num_tokens is Connector.num_tokens


# --- the compressor ------------------------------------------------------------------------------------


@register_compressor("tome")
class ToMe(Compressor):
    """ToMe in the vision tower: ``r`` tokens merged per layer up to the connector's layer (notebook 06).

    Options (one of ``keep_ratio`` / ``r``):

    - ``keep_ratio``: fraction of the patches left at the connector's layer; ``round(keep_ratio x P)``
      tokens stay (P patches, [cls] aside), and the merges are spread over the layers by
      :func:`schedule` (as even as the bound allows, front-loaded near it);
    - ``r``: ToMe's own setting, an int (the same r in every merging layer) or one int per merging
      layer;
    - ``prop_attn``: proportional attention (default True: ToMe's choice for models trained without it).

    The merging layers are those that compute the connector's layer: with ``vision_feature_layer``
    -2 on an L-layer tower, layers 0..L-2 (L-1 layers); the last layer runs on the merged tokens
    without merging (its output is not read). ``num_tokens(n) = n - sum(r)``, exact for every
    image. [cls] never merges. The lowest ratio: ToMe removes at most half of the unprotected tokens
    per layer, so the workbook's tiny tower (4 layers, 64 patches + [cls], feature layer -2: three
    merging layers, 65 -> 33 -> 17 -> 9 tokens) reaches ``keep_ratio=0.125`` (8 patches) and no lower;
    a constant ``r`` reaches 16 (r=16: 65 -> 49 -> 33 -> 17), ``keep_ratio=0.25``.

    The connector must map each token on its own (``linear``, ``mlp2x_gelu``, ``cmaa``): merged tokens
    have no patch grid. ``attach`` checks the connector and the bound before it patches anything;
    ``detach`` restores the tower's own ``forward`` and removes the hooks.
    """

    def __init__(self, dim: int, keep_ratio: float | None = None, r: int | Sequence[int] | None = None,
                 prop_attn: bool = True):
        super().__init__(dim)
        if (keep_ratio is None) == (r is None):
            raise ValueError("tome takes one of keep_ratio (fraction of patches kept) or r (merges per layer)")
        if keep_ratio is not None and not 0 < keep_ratio <= 1:
            raise ValueError(f"tome: keep_ratio={keep_ratio} must be in (0, 1]")
        rs = [r] if isinstance(r, int) else list(r or [])
        if any(not isinstance(v, int) or v < 0 for v in rs):
            raise ValueError(f"tome: r={r!r} must be a non-negative int or a list of them")
        self.keep_ratio, self.r, self.prop_attn = keep_ratio, r, prop_attn
        self.merges: list[int] | None = None  # r per merging layer, set by attach
        self._state: _State | None = None
        self._patched: list[nn.Module] = []
        self._hooks: list = []

    @property
    def sizes(self) -> torch.Tensor | None:
        """[B, T, 1]: how many patches each token of the last tower call stands for ([cls] first)."""
        return None if self._state is None else self._state.size

    @property
    def positions(self) -> torch.Tensor | None:
        """[B, T, 1]: the first patch (raster index, [cls] = 0) of each token of the last tower call."""
        return None if self._state is None else self._state.pos

    # the merges need the tower, so they are scheduled in attach; VLModel counts tokens after attaching
    def num_tokens(self, n: int) -> int:
        if self.merges is None:
            raise RuntimeError("tome counts its tokens once attached to a model (VLModel.set_token_reduction)")
        return n - sum(self.merges)

    def schedule_merges(self, tokens: int, layers: int, protected: int) -> list[int]:
        """r per merging layer for a tower of ``tokens`` (``protected`` of them never merge, [cls]); raises when
        the keep ratio or r is out of ToMe's reach."""
        patches = tokens - protected
        most = reachable(tokens, layers, protected)
        if self.keep_ratio is not None:
            kept = max(1, int(self.keep_ratio * patches + 0.5))
            if patches - kept > most:
                raise ValueError(f"tome: keep_ratio={self.keep_ratio} keeps {kept} of {patches} patches, but {layers} "
                                 f"merging layers remove at most {most} (half the unprotected tokens per layer): "
                                 f"the lowest keep_ratio here is {(patches - most) / patches:g}")
            return schedule(tokens, layers, patches - kept, protected)
        plan = [self.r] * layers if isinstance(self.r, int) else list(self.r)
        if len(plan) != layers:
            raise ValueError(f"tome: r has {len(plan)} entries but the tower merges in {layers} layers")
        t = tokens
        for i, r in enumerate(plan):
            if r > max_merges(t, protected):
                raise ValueError(
                    f"tome: r={r} at layer {i} merges more than half of its {t - protected} unprotected tokens "
                    f"(ToMe's bound: {max_merges(t, protected)}); this tower removes at most {most} of "
                    f"{patches} patches (keep_ratio >= {(patches - most) / patches:g})")
            t -= r
        return plan

    def attach(self, model) -> None:
        if not _is_per_token(model.connector):
            raise ValueError(f"tome merges tokens inside the vision tower, so the connector must map each token on its "
                             f"own; connector {model.config.connector!r} reads several layers or the patch grid")
        layers = blocks(model, "vision")
        feature = model.config.vision_feature_layer
        if not isinstance(feature, int):
            raise ValueError(f"tome needs one feature layer, not vision_feature_layer={feature!r}")
        merging = feature % (len(layers) + 1)  # hidden_states[f] is the output of layers 0..f-1
        if merging == 0:
            raise ValueError("tome: the connector reads the embeddings (vision_feature_layer 0): no layer can merge")
        parts = ("layer_norm1", "self_attn", "layer_norm2", "mlp")
        if not all(hasattr(layers[i], p) for i in range(merging) for p in parts) or not all(
                hasattr(layers[i].self_attn, "k_proj") for i in range(merging)):
            raise ValueError(f"tome patches CLIP/SigLIP-style encoder layers ({', '.join(parts)}, self_attn.k_proj); "
                             f"this tower's are {type(layers[0]).__name__}")
        protected = int(model.has_cls)
        plan = self.schedule_merges(model.num_patches + protected, merging, protected)  # raises before anything changes
        self.detach(model)
        state = self._state = _State()
        heads = model.config.vision_config.num_attention_heads
        for i, layer in enumerate(layers):
            r = plan[i] if i < merging else 0
            layer.forward = _MergingForward(layer, i, r, heads, state, bool(protected), self.prop_attn,
                                            sort=i == merging - 1)
            self._patched.append(layer)
            if r:
                self._hooks.append(layer.self_attn.k_proj.register_forward_hook(_keep_keys(state)))
        self.merges = plan

    def detach(self, model) -> None:
        for h in self._hooks:
            h.remove()
        for layer in self._patched:
            del layer.forward  # the class's forward again
        self._hooks, self._patched = [], []

    def forward(self, tokens: torch.Tensor, importance: torch.Tensor | None = None) -> torch.Tensor:
        return tokens  # the merging happened in the tower
