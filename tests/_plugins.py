"""Test plug-ins registered by name, proving that a paper's parts plug into the core without changes to it:
an insertion, a text-reading connector, a compressor that needs [cls] importance and one that pads."""
from __future__ import annotations

import torch
from torch import nn

from vlkit.compression import Compressor, register_compressor
from vlkit.connectors import Connector, register_connector
from vlkit.insertions import register_insertion


@register_insertion("test_residual")
class Residual(nn.Module):
    """x + up(down(x)) with a zero-initialised up-projection: the identity at initialisation."""

    def __init__(self, dim: int, rank: int = 4):
        super().__init__()
        self.down, self.up = nn.Linear(dim, rank), nn.Linear(rank, dim)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, x):
        return x + self.up(self.down(x))


@register_connector("test_text_reader")
class TextReader(Connector):
    """Projected patches plus the mean of the text embeddings it is allowed to see."""

    uses_text = True

    def __init__(self, vision_hidden: int, text_hidden: int, **kwargs):
        super().__init__(vision_hidden, text_hidden, **kwargs)
        self.proj = nn.Linear(vision_hidden, text_hidden)

    def forward(self, hidden_states, text_embeds=None, text_mask=None):
        x = self.proj(self.features(hidden_states))
        m = text_mask.unsqueeze(-1).to(text_embeds.dtype)
        return x + (text_embeds * m).sum(1, keepdim=True) / m.sum(1, keepdim=True).clamp(min=1)


@register_compressor("test_topk_cls")
class TopK(Compressor):
    """Keep the ``keep`` tokens the [cls] attends to most, in their original order."""

    needs_importance = True

    def __init__(self, dim: int, keep: int = 2):
        super().__init__(dim)
        self.keep = keep

    def num_tokens(self, n: int) -> int:
        if self.keep > n:
            raise ValueError(f"keep={self.keep} is more than the {n} tokens")
        return self.keep

    def forward(self, tokens, importance=None):
        idx = importance.topk(self.keep, dim=1).indices.sort(1).values
        return tokens.gather(1, idx.unsqueeze(-1).expand(-1, -1, tokens.shape[-1]))


@register_compressor("test_halve")
class Halve(Compressor):
    """Average neighbouring pairs of tokens: no [cls] attention needed."""

    def num_tokens(self, n: int) -> int:
        return n // 2

    def forward(self, tokens, importance=None):
        b, n, d = tokens.shape
        return tokens[:, : n // 2 * 2].reshape(b, n // 2, 2, d).mean(2)


@register_compressor("test_pad_half")
class PadHalf(Compressor):
    """Keep the first half of the tokens and leave the other half of the slots empty (masked): the
    shape of an adaptive-count method such as PruMerge, padded to a fixed number of slots."""

    fill = 0.0  # what the empty slots hold: a test changes it to show the LLM never reads them

    def num_tokens(self, n: int) -> int:
        return n

    def compress(self, tokens, context):
        n = tokens.shape[1]
        mask = torch.arange(n, device=tokens.device) < (n + 1) // 2
        out = tokens.masked_fill(~mask[None, :, None], self.fill)
        return out, mask.expand(tokens.shape[0], -1)

    def forward(self, tokens, importance=None):
        return self.compress(tokens, None)[0]
