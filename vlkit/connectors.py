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
    ``keep_cls`` keeps the [cls] token when the tower has one (``has_cls``).
    """

    name = "base"
    uses_text = False

    def __init__(self, vision_hidden: int, text_hidden: int, feature_layer: int = -2,
                 keep_cls: bool = False, has_cls: bool = True):
        super().__init__()
        self.vision_hidden, self.text_hidden = vision_hidden, text_hidden
        self.feature_layer, self.keep_cls, self.has_cls = feature_layer, keep_cls, has_cls

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
