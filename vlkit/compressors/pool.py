"""Average pooling on the patch grid: the spatial baseline of notebook 06.

Knows nothing about the image's content, so whatever a method gains over it comes from choosing
tokens, not from merely having fewer.
"""
from __future__ import annotations

import math

import torch

from vlkit.compression import CompressionContext, register_compressor
from vlkit.compressors.base import PlanCompressor
from vlkit.compressors.merge import MergePlan


@register_compressor("pool")
class Pool(PlanCompressor):
    """2-D average pooling of the side x side patch grid to an s x s grid.

    ``target`` must be a square number s^2. ``keep_ratio`` r scales the side by sqrt(r):
    s = round(side * sqrt(r)), at least 1, so r = 0.25 on CLIP-L/336's 24 x 24 grid gives 12 x 12 = 144
    tokens; the kept share is then r only approximately (``num_tokens`` says exactly). Rows and columns
    are split into s contiguous bands, a patch going to the band its centre falls in (row y to
    (2y + 1) * s // (2 * side): uneven bands stay symmetric), so every patch lands in exactly one
    output token; when s divides the side this is ``avg_pool2d`` with kernel side / s.
    The tokens must be the square patch grid in raster order (no [cls] kept by the connector).
    """

    def _sides(self, n: int) -> tuple[int, int]:
        side = math.isqrt(n)
        if side * side != n:
            raise ValueError(f"compressor {self.name} pools a square patch grid, but got {n} tokens "
                             "(a connector that keeps [cls] adds one)")
        if self.target is not None:
            self.budget(n)  # a target above n is refused first, with the shared message
            s = math.isqrt(self.target)
            if s * s != self.target:
                raise ValueError(f"compressor {self.name}: target={self.target} is not a square number "
                                 f"(a grid side s gives s^2 tokens; nearest: {s * s} or {(s + 1) ** 2})")
        else:
            s = max(1, round(side * math.sqrt(self.keep_ratio)))
        return side, s

    def num_tokens(self, n: int) -> int:
        return self._sides(n)[1] ** 2

    def _plan(self, tokens: torch.Tensor, context: CompressionContext) -> MergePlan:
        b, n, _ = tokens.shape
        side, s = self._sides(n)
        band = (2 * torch.arange(side, device=tokens.device) + 1) * s // (2 * side)
        slot = (band.unsqueeze(1) * s + band.unsqueeze(0)).reshape(1, n).expand(b, n)
        return MergePlan(slot, torch.ones(b, n, device=tokens.device),
                         torch.zeros(b, n, dtype=torch.bool, device=tokens.device), s * s)
