"""Connectors: vision-encoder states -> visual tokens in the LLM's embedding space (notebook 03).

A connector is chosen by name from a registry, so a later notebook adds one (the Bottleneck
Adapter's [cls]-of-every-4th-layer reader in 04, VisLingInstruct's CMAA in 05) with
``@register_connector("name")`` and never touches :class:`vlkit.model.VLModel`.

Interface, for every connector:

* ``forward(hidden_states, text_embeds=None, text_mask=None) -> [B, N, D_text]`` where
  ``hidden_states`` is the tuple of *all* encoder layers' states (embeddings first, as
  Hugging Face returns them, [cls] included when the tower has one);
* ``layers``: which entries of ``hidden_states`` it reads (documentation + sanity checks);
* ``uses_text``: True if it needs the text embeddings (the model then passes them);
* ``num_tokens(num_patches) -> N``: how many visual tokens it emits for an image of
  ``num_patches`` patches, so the processor knows how many ``<image>`` slots to expand.
"""
from __future__ import annotations


import torch
from torch import nn

from vlkit.registry import Registry

CONNECTORS = Registry("connector")
register_connector = CONNECTORS.register


def available_connectors() -> list[str]:
    """Names accepted by :func:`build_connector`."""
    return CONNECTORS.names()


def build_connector(name: str, vision_hidden: int, text_hidden: int, **kwargs) -> "Connector":
    """Build the connector registered as ``name`` (notebook 03).

    ``kwargs`` go to the connector's constructor (``feature_layer``, ``keep_cls``, ``has_cls``
    and connector-specific options such as a hidden size).
    """
    return CONNECTORS.build(name, vision_hidden, text_hidden, **kwargs)


class Connector(nn.Module):
    """Base class: reads one encoder layer's patch states (LLaVA's choice, notebook 03).

    ``feature_layer`` indexes ``hidden_states`` (-2 = penultimate layer, as LLaVA);
    ``keep_cls`` keeps the [cls] token when the tower has one (``has_cls``); ``num_layers`` is the
    tower's depth (``hidden_states`` holds ``num_layers + 1`` entries, the embeddings first).
    """

    name = "base"
    uses_text = False

    def __init__(self, vision_hidden: int, text_hidden: int, feature_layer: int = -2,
                 keep_cls: bool = False, has_cls: bool = True, num_layers: int | None = None):
        super().__init__()
        self.vision_hidden, self.text_hidden = vision_hidden, text_hidden
        self.feature_layer, self.keep_cls, self.has_cls = feature_layer, keep_cls, has_cls
        self.num_layers = num_layers

    @property
    def layers(self) -> tuple[int, ...]:
        return (self.feature_layer,)

    def features(self, hidden_states: tuple[torch.Tensor, ...]) -> torch.Tensor:
        """The selected layer's tokens, [cls] dropped unless ``keep_cls``."""
        h = hidden_states[self.feature_layer]
        return h[:, 1:] if self.has_cls and not self.keep_cls else h

    def num_tokens(self, num_patches: int) -> int:
        return num_patches + int(self.has_cls and self.keep_cls)

    def forward(self, hidden_states, text_embeds=None, text_mask=None) -> torch.Tensor:
        raise NotImplementedError


@register_connector("linear")
class LinearConnector(Connector):
    """LLaVA v1: one linear projection of each patch feature (notebook 03)."""

    def __init__(self, vision_hidden: int, text_hidden: int, **kwargs):
        super().__init__(vision_hidden, text_hidden, **kwargs)
        self.proj = nn.Linear(vision_hidden, text_hidden)

    def forward(self, hidden_states, text_embeds=None, text_mask=None) -> torch.Tensor:
        return self.proj(self.features(hidden_states))


@register_connector("mlp2x_gelu")
class MLPConnector(Connector):
    """LLaVA-1.5: Linear -> GELU -> Linear, hidden width = LLM width (notebook 03)."""

    def __init__(self, vision_hidden: int, text_hidden: int, hidden: int | None = None, **kwargs):
        super().__init__(vision_hidden, text_hidden, **kwargs)
        hidden = hidden or text_hidden
        self.fc1, self.act, self.fc2 = nn.Linear(vision_hidden, hidden), nn.GELU(), nn.Linear(hidden, text_hidden)

    def forward(self, hidden_states, text_embeds=None, text_mask=None) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(self.features(hidden_states))))


@register_connector("cls_every_k")
class ClsEveryK(Connector):
    """The [cls] token after every ``k``-th tower layer, through a small MLP "visual neck" (notebook 04).

    LaVIN / the Bottleneck Adapter paper (2407.17813) read the [cls] token after layers 4, 8, ..., 24
    of a 24-layer ViT (6 visual tokens) and map them with a neck ``dim -> neck -> LLM width`` (SiLU,
    as LaVIN), instead of projecting every patch. ``neck=128`` as the paper.
    """

    def __init__(self, vision_hidden: int, text_hidden: int, k: int = 4, neck: int = 128, **kwargs):
        super().__init__(vision_hidden, text_hidden, **kwargs)
        if not self.has_cls:
            raise ValueError("connector cls_every_k reads [cls] tokens, but this vision tower has no [cls] token")
        if self.num_layers is None:
            raise ValueError("connector cls_every_k needs the tower's depth (num_layers)")
        if not 1 <= k <= self.num_layers:
            raise ValueError(f"connector cls_every_k: k={k} must be between 1 and the tower's depth {self.num_layers}")
        if neck < 1:
            raise ValueError(f"connector cls_every_k: neck={neck} must be >= 1")
        self.k = k
        self.neck = nn.Sequential(nn.Linear(vision_hidden, neck), nn.SiLU(), nn.Linear(neck, text_hidden))

    @property
    def layers(self) -> tuple[int, ...]:
        return tuple(range(self.k, self.num_layers + 1, self.k))

    def num_tokens(self, num_patches: int) -> int:
        return len(self.layers)

    def forward(self, hidden_states, text_embeds=None, text_mask=None) -> torch.Tensor:
        return self.neck(torch.stack([hidden_states[i][:, 0] for i in self.layers], 1))


@register_connector("cmaa")
class CrossModalAlignmentAttention(Connector):
    """VisLingInstruct's CMAA: the projected patches attend to the instruction's text (notebook 05).

    2402.07398 fuses the visual embeddings (queries) with the instruction's text embeddings (keys
    and values) before the LLM. Here: LLaVA's linear projection of the patch states (``proj``, the
    same name and shape as the ``linear`` connector's, so notebook 03's trained projection loads into
    it), then ``x + out(MHA(norm(x), norm_text(t), norm_text(t)))`` with ``heads`` heads and the
    output projection zero-initialised, so that CMAA starts as the plain linear connector. ``t``
    is what :meth:`VLModel.embed` lets it read: the human turns, never an answer. A row with no
    readable text gets no attention term.
    """

    uses_text = True

    def __init__(self, vision_hidden: int, text_hidden: int, heads: int = 4, **kwargs):
        super().__init__(vision_hidden, text_hidden, **kwargs)
        if heads < 1 or text_hidden % heads:
            raise ValueError(f"connector cmaa: heads={heads} must be >= 1 and divide the LLM width {text_hidden}")
        self.proj = nn.Linear(vision_hidden, text_hidden)
        self.norm = nn.LayerNorm(text_hidden)
        self.norm_text = nn.LayerNorm(text_hidden)
        self.attn = nn.MultiheadAttention(text_hidden, heads, batch_first=True)
        nn.init.zeros_(self.attn.out_proj.weight)
        nn.init.zeros_(self.attn.out_proj.bias)
        # VLModel.post_init re-initialises every module not flagged as initialised (a Linear to N(0, 0.02)):
        # the zero output projection must survive it
        self.attn._is_hf_initialized = self.attn.out_proj._is_hf_initialized = True

    def forward(self, hidden_states, text_embeds=None, text_mask=None) -> torch.Tensor:
        x = self.proj(self.features(hidden_states))
        if text_embeds is None or text_mask is None:
            raise ValueError("connector cmaa reads the instruction: it needs text_embeds and text_mask")
        readable = text_mask.bool()
        has_text = readable.any(1)
        # a row with nothing to read would attend to nothing (NaN): let it see one key, then drop the term
        readable = readable | ~has_text[:, None] & (torch.arange(readable.shape[1], device=x.device) == 0)
        t = self.norm_text(text_embeds.to(x.dtype))
        fused, _ = self.attn(self.norm(x), t, t, key_padding_mask=~readable, need_weights=False)
        return x + fused * has_text[:, None, None].to(fused.dtype)
