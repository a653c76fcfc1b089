"""A random subset of the visual tokens: the content-blind baseline of notebook 06 (registered as ``random``)."""
from __future__ import annotations

import torch

from vlkit.compression import CompressionContext, register_compressor
from vlkit.compressors.base import PlanCompressor
from vlkit.compressors.merge import MergePlan, dropped


@register_compressor("random")
class RandomSubset(PlanCompressor):
    """Keep M tokens drawn at random once from ``seed``, in their original order.

    The same positions for every image and every call: deterministic, independent of the batch, and
    the device (drawn on the CPU), so a run can be repeated and an image's tokens never depend on
    its batch mates. Another ``seed`` gives another subset.
    """

    def __init__(self, dim: int, keep_ratio: float | None = None, target: int | None = None, seed: int = 0):
        super().__init__(dim, keep_ratio=keep_ratio, target=target)
        self.seed = int(seed)

    def subset(self, n: int) -> torch.Tensor:
        """The kept positions [M] among ``n``, ascending."""
        gen = torch.Generator().manual_seed(self.seed)
        return torch.randperm(n, generator=gen)[: self.budget(n)].sort().values

    def _plan(self, tokens: torch.Tensor, context: CompressionContext) -> MergePlan:
        b, n, _ = tokens.shape
        idx = self.subset(n).to(tokens.device)
        assignment = dropped(b, n, tokens.device)
        assignment[:, idx] = torch.arange(idx.numel(), device=tokens.device)
        return MergePlan(assignment, torch.ones(b, n, device=tokens.device), assignment >= 0, idx.numel())
