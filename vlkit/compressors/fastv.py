"""FastV: prune visual tokens inside the LLM after layer K (Chen et al., ECCV 2024; pkunlp-icler/FastV) (notebook 06).

FastV observes that deep LLM layers barely attend to the image. At layer K, the last token's
attention to the image tokens (mean over heads) ranks them; the layers after K see only the
top ``keep_ratio`` of them (1 - R in the paper). The paper's setting, "K=2, R=50%" (~45% fewer
FLOPs on LLaVA-1.5), counts layers from 1: two layers see every token, then the cut; here K is
the 0-based index of the ranking layer, so that setting is ``K=1, keep_ratio=0.5`` (the default).

Two faithful ways to cut, both here:

- *masking* (FastV's "attention mask" variant): layers > K keep every position, but the pruned
  image tokens are blocked as keys, through a registered attention function. Every kept and
  text position computes exactly what it would if the pruned tokens were gone, a KV cache stays
  whole (so choice scoring on a shared prompt and generation work), and nothing is saved;
- *dropping* (FastV's "inplace" variant): after layer K the pruned tokens leave the hidden
  states; later layers run on fewer tokens (the FLOPs and latency FastV reports). Each kept
  token keeps its rotary position and its mask entries, so it computes the same as when
  masking. Here it runs in plain prefills only (no cache wanted, no labels, all logits).

The model uses dropping in plain prefills (what :mod:`vlkit.eval.efficiency` measures) and masking
everywhere else (scoring, generation, losses), so accuracy and cost come from one setting.
Math first (which tokens survive), then the attention function, then the patch and the compressor.
"""
from __future__ import annotations

import torch
from torch import nn

from transformers.integrations.sdpa_attention import sdpa_attention_forward

from vlkit import attention
from vlkit.compression import Compressor, register_compressor
from vlkit.insertions import blocks

ATTENTION = "vlkit_fastv"

# --- the math: which visual tokens survive -------------------------------------------------------------


def kept_count(n: int, keep_ratio: float) -> int:
    """Visual tokens kept of ``n``: ``round(keep_ratio x n)``, at least one when there are any."""
    return 0 if n == 0 else max(1, int(keep_ratio * n + 0.5))


def select_kept(scores: torch.Tensor, image: torch.Tensor, keep_ratio: float) -> torch.Tensor:
    """[B, K] bool: the top ``kept_count`` image keys of each row by ``scores`` [B, K] (``image``: which keys are
    visual). Rows may hold different numbers of image tokens (several images, or none)."""
    scores = scores.masked_fill(~image, -torch.inf)
    ranks = scores.argsort(dim=-1, descending=True, stable=True).argsort(dim=-1)
    counts = torch.tensor([kept_count(int(n), keep_ratio) for n in image.sum(1)], device=scores.device)
    return image & (ranks < counts[:, None])


def last_token_attention(probs: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
    """[B, K]: attention of query ``query[b]`` of each row over the keys, mean over heads (``probs`` [B, H, Q, K])."""
    return probs.mean(1)[torch.arange(probs.shape[0], device=probs.device), query]


def last_real_index(attention_mask: torch.Tensor | None, batch: int, length: int) -> torch.Tensor:
    """[B]: each row's last real (non-padding) position in a 2D mask [B, length], left or right padded."""
    if attention_mask is None:
        return torch.full((batch,), length - 1, dtype=torch.long)
    return length - 1 - attention_mask[:, -length:].int().flip(1).argmax(1)


# --- per-call state, shared by the hooks and the attention function ---------------------------------


class _Run:
    """FastV's state for one LLM call: where it ranks, which keys it pruned, whether it drops."""

    def __init__(self, layer: int, keep_ratio: float, drop: bool, base: str = "eager"):
        self.layer, self.keep_ratio, self.drop = layer, keep_ratio, drop
        self.base = base                          # the LLM's attention before FastV: the layers that do not rank
        self.query: torch.Tensor | None = None    # [B] index (in this call) of the token that ranks
        self.pruned: torch.Tensor | None = None   # [B, keys] pruned image positions; None until decided
        self.dropping = False                     # this call drops instead of masking
        self.kept: tuple | None = None            # dropping: (index [B, M] of kept positions, valid [B, M])
        self.inputs: dict = {}                    # dropping: the layers' mask and positions for the kept tokens

    def decide(self, probs: torch.Tensor, image: torch.Tensor) -> None:
        scores = last_token_attention(probs, self.query.to(probs.device))
        self.pruned = image & ~select_kept(scores, image, self.keep_ratio)

    def block(self, mask: torch.Tensor, keys: int) -> torch.Tensor:
        """The additive mask [B, 1, Q, keys] with the pruned keys blocked for every query."""
        pruned = self.pruned
        if pruned.shape[1] < keys:  # keys added after the decision (generated, or a continuation's) are text
            pruned = torch.cat([pruned, pruned.new_zeros(pruned.shape[0], keys - pruned.shape[1])], 1)
        # filled, not added: a fully blocked row (a padded query) stays finite, as the stock mask leaves it
        return mask[..., :keys].masked_fill(pruned[:, None, None, :keys], torch.finfo(mask.dtype).min)


def fastv_attention(module: nn.Module, query, key, value, attention_mask, scaling: float, dropout: float = 0.0,
                    **kwargs):
    """Attention that ranks at layer K (eagerly: it needs the probabilities) and, when masking, blocks the
    pruned image keys after it; the other layers run the kernel the LLM ran before FastV (SDPA or eager).

    Registered as ``"vlkit_fastv"``; :class:`FastV` switches the LLM to it and back. It records maps
    under :func:`vlkit.attention.capture_attention`, as ``vlkit_capture`` does.
    """
    run = getattr(module, "_vlkit_fastv", None)
    if run is None:
        raise RuntimeError("attention 'vlkit_fastv' runs only in an LLM that FastV is attached to "
                           "(VLModel.set_token_reduction('fastv', ...))")
    if attention_mask is None:
        raise RuntimeError("fastv needs the 4D additive attention mask its mask function builds")
    layer = module.layer_idx
    if layer > run.layer and run.pruned is not None and not run.dropping:
        attention_mask = run.block(attention_mask, key.shape[-2])
    ranks = layer == run.layer and run.pruned is None
    if not ranks and run.base == "sdpa" and not attention.capturing():
        # only the ranking layer needs the probabilities: the others keep the model's fused kernel, so FastV
        # saves what its FLOPs predict under SDPA too (benchmarks/bench_compression.py, docs/speed.md)
        mask = attention_mask[..., : key.shape[-2]]
        if mask.dtype != query.dtype:  # the eager mask is built in the model's dtype; SDPA wants the query's
            mask = mask.clamp(min=torch.finfo(query.dtype).min).to(query.dtype)
        return sdpa_attention_forward(module, query, key, value, mask, dropout=dropout, scaling=scaling, **kwargs)
    out, probs = attention.capture_attention_forward(module, query, key, value, attention_mask, scaling, dropout)
    if ranks:
        run.decide(probs, attention.image_key_mask(query.shape[0], key.shape[-2]))
    return out, probs


attention.register_attention(ATTENTION, fastv_attention)


# --- the patch: hooks on the LLM and its decoder layers -------------------------------------------


def _begin(run: _Run):
    """Pre-hook of the LLM: read the cache's decision, find the ranking token, choose masking or dropping."""

    def hook(module, args, kwargs):
        if module.config._attn_implementation != ATTENTION:
            raise RuntimeError(f"FastV is attached but the LLM's attention was switched to "
                               f"{module.config._attn_implementation!r}: it would run unpruned")
        embeds = kwargs.get("inputs_embeds")
        ids = kwargs.get("input_ids", args[0] if args else None)
        batch, length = (embeds if embeds is not None else ids).shape[:2]
        cache = kwargs.get("cache", kwargs.get("past_key_values"))
        run.pruned = getattr(cache, "vlkit_fastv_pruned", None) if cache is not None else None
        if run.pruned is not None and run.pruned.shape[0] != batch:
            raise RuntimeError(f"the cache's FastV decision covers {run.pruned.shape[0]} rows but the call has "
                               f"{batch}; copy cache rows with vlkit.attention.select_cache_rows")
        run.query = last_real_index(kwargs.get("attention_mask"), batch, length).clamp(min=0)
        plain = (cache is None and kwargs.get("use_cache") is not True and kwargs.get("labels") is None
                 and not kwargs.get("logits_to_keep"))
        run.dropping, run.kept = run.drop and plain, None
        if run.dropping:
            kwargs["use_cache"] = False  # a cache of the shortened layers would not match the full ones
        return args, kwargs

    return hook


def _end(run: _Run):
    """Hook of the LLM: keep the decision with the cache (masking), or put logits back in place (dropping)."""

    def hook(module, args, kwargs, out):
        cache = getattr(out, "cache", None)
        if cache is not None and run.pruned is not None:
            cache.vlkit_fastv_pruned = run.pruned
        if run.dropping and run.kept is not None and out.logits is not None:
            index, valid = run.kept
            full = out.logits.new_full((index.shape[0], run.pruned.shape[1], out.logits.shape[-1]), torch.nan)
            rows = torch.arange(index.shape[0], device=index.device)[:, None].expand_as(index)
            full[rows[valid], index[valid]] = out.logits[valid]  # pruned positions have no logits: NaN
            out.logits = full
        return out

    return hook


def _drop(run: _Run):
    """Pre-hook of each layer after K, when dropping: the kept tokens only, with their masks and positions."""

    def hook(module, args, kwargs):
        if not run.dropping or run.pruned is None:
            return args, kwargs
        hidden = args[0] if args else kwargs["hidden_states"]
        if run.kept is None:  # the first layer after K gathers; the later ones reuse its inputs
            keep = ~run.pruned
            count = keep.sum(1)
            # kept positions first, in order (a stable sort); rows keeping fewer are padded, and blocked as keys
            index = keep.int().argsort(dim=1, descending=True, stable=True)[:, : int(count.max())]
            valid = torch.arange(index.shape[1], device=index.device) < count[:, None]
            mask = kwargs["attention_mask"].expand(hidden.shape[0], -1, -1, -1)
            mask = mask.gather(2, index[:, None, :, None].expand(-1, mask.shape[1], -1, mask.shape[3]))
            mask = mask.gather(3, index[:, None, None, :].expand(-1, mask.shape[1], mask.shape[2], -1))
            mask = mask.masked_fill(~valid[:, None, None, :], torch.finfo(mask.dtype).min)
            cos, sin = kwargs["position_embeddings"]
            rows = index[..., None].expand(-1, -1, cos.shape[-1])
            run.kept = (index, valid)
            run.inputs = {"attention_mask": mask,
                          "position_embeddings": tuple(t.expand(hidden.shape[0], -1, -1).gather(1, rows)
                                                       for t in (cos, sin)),
                          "position_ids": kwargs["position_ids"].expand(hidden.shape[0], -1).gather(1, index)}
            hidden = hidden.gather(1, index[..., None].expand(-1, -1, hidden.shape[-1]))
            args = (hidden, *args[1:]) if args else args
            if not args:
                kwargs["hidden_states"] = hidden
        kwargs.update(run.inputs)
        return args, kwargs

    return hook


# --- the compressor ----------------------------------------------------------------------------------


@register_compressor("fastv")
class FastV(Compressor):
    """FastV in the LLM: after layer ``K``, only the ``keep_ratio`` best-attended visual tokens (notebook 06).

    ``K``: the 0-based index of the layer whose attention ranks. Layers 0..K run on every token
    (uncut, so the visual tokens shape the text there); layers K+1.. see the kept ones only. The
    paper counts layers from 1: its K=2 is ``K=1`` here (two layers see everything). On a 4-layer
    LLM, ``K=1`` cuts layers 2-3, ``K=2`` cuts layer 3; ``K`` must leave a layer to cut.
    ``keep_ratio``: 1 - R, of each row's image tokens (``round``, at least one). The ranking token is
    each row's own last real token (left or right padding). ``drop``: physically drop in plain
    prefills (default); False masks always (the same outputs, no savings).

    The processor still expands ``<image>`` to every token (``num_tokens(n) = n``): the LLM's input
    keeps all slots; :meth:`effective_tokens` is what the layers after K see. ``pruned`` holds the
    last call's decision ([B, positions] bool), e.g. to show which patches survived.

    FastV replaces the LLM's attention function (eager at layer K, for the probabilities it ranks by;
    the LLM's own SDPA or eager kernel in the other layers, and eager everywhere while capturing) and
    restores it on ``detach``; a model running another vlkit attention (CMAI) is refused, since
    FastV would switch it off silently.
    """

    def __init__(self, dim: int, K: int = 1, keep_ratio: float = 0.5, drop: bool = True):
        super().__init__(dim)
        if not isinstance(K, int) or K < 0:
            raise ValueError(f"fastv: K={K!r} must be a layer index >= 0")
        if not 0 < keep_ratio <= 1:
            raise ValueError(f"fastv: keep_ratio={keep_ratio} must be in (0, 1]")
        self.K, self.keep_ratio, self.drop = K, keep_ratio, drop
        self._run: _Run | None = None
        self._hooks: list = []
        self._attention: str | None = None  # the LLM's attention before attach
        self._modules_patched: list[nn.Module] = []

    def num_tokens(self, n: int) -> int:
        return n

    def effective_tokens(self, n: int) -> int:
        """Visual tokens the layers after K see, of ``n`` per image."""
        return kept_count(n, self.keep_ratio)

    @property
    def pruned(self) -> torch.Tensor | None:
        return None if self._run is None else self._run.pruned

    def attach(self, model) -> None:
        layers = blocks(model, "llm")
        if not self.K < len(layers) - 1:
            raise ValueError(f"fastv: K={self.K} leaves no layer to prune in this {len(layers)}-layer LLM "
                             f"(layers 0..K run on every token; K <= {len(layers) - 2})")
        llm = model.language_model
        current = llm.config._attn_implementation
        if current not in ("sdpa", "eager", "vlkit_capture", ATTENTION):
            raise ValueError(f"fastv replaces the LLM's attention function, and this model runs {current!r}, "
                             "which it would switch off; use sdpa or eager")
        self.detach(model)
        self._attention = "sdpa" if current == ATTENTION else current
        run = self._run = _Run(self.K, self.keep_ratio, self.drop, base=self._attention)
        for layer in layers:
            layer.self_attn._vlkit_fastv = run  # a plain object: not a submodule, not in the state dict
            self._modules_patched.append(layer.self_attn)
        self._hooks = [llm.register_forward_pre_hook(_begin(run), with_kwargs=True),
                       llm.register_forward_hook(_end(run), with_kwargs=True)]
        self._hooks += [layer.register_forward_pre_hook(_drop(run), with_kwargs=True) for layer in layers[self.K + 1:]]
        llm.set_attn_implementation(ATTENTION)

    def detach(self, model) -> None:
        for h in self._hooks:
            h.remove()
        for m in self._modules_patched:
            del m._vlkit_fastv
        if self._attention is not None:
            model.language_model.set_attn_implementation(self._attention)
        self._hooks, self._modules_patched, self._attention = [], [], None

    def forward(self, tokens: torch.Tensor, importance: torch.Tensor | None = None) -> torch.Tensor:
        return tokens  # the pruning happens in the LLM
