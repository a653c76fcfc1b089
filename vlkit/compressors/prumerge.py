"""LLaVA-PruMerge (2403.15388): an adaptive number of outlier tokens, each absorbing its neighbours (notebook 06).

The [cls] attention at the feature layer picks the tokens to keep by the interquartile-range
outlier rule (attention > Q3 + 1.5 IQR), so a simple image keeps few tokens and a busy one many.
Each kept token then absorbs its ``neighbours`` most key-similar tokens among those not kept,
weighted by their [cls] attention.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from vlkit.compression import CompressionContext, register_compressor
from vlkit.compressors.base import PlanCompressor
from vlkit.compressors.merge import MergePlan, dropped


def iqr_outliers(scores: torch.Tensor) -> torch.Tensor:
    """[B] long: how many of each row's scores [B, N] lie above Q3 + 1.5 IQR (linear quantiles, as numpy)."""
    q1, q3 = torch.quantile(scores.float(), torch.tensor([0.25, 0.75], device=scores.device), dim=1)
    return (scores.float() > (q3 + 1.5 * (q3 - q1)).unsqueeze(1)).sum(1)


@register_compressor("prumerge")
class PruMerge(PlanCompressor):
    """IQR outliers of [cls] attention kept, each merged with its top-``neighbours`` key-similar others.

    The kept count varies per image, but the processor needs a fixed number of ``<image>`` slots: the
    budget (``keep_ratio`` or ``target``) is a cap M. An image keeps between 1 and M tokens (the most
    attended, when the rule finds more or none); the slots after its kept ones are padding, empty in
    the plan's ``mask``, and :class:`vlkit.model.VLModel` hides them from the LLM. ``mean_kept`` is the
    mean kept count over the images compressed since :meth:`reset_stats` (the notebook reports it).

    Faithful in spirit, different in three details: the rule is applied per image (the released code
    pools the whole batch's attention, so an image's tokens depended on its batch mates); each
    non-kept token joins one kept token, the most similar of those that chose it (the code lets
    neighbourhoods overlap, so a token can be counted in several); and a kept token is the weighted
    *mean* of itself and its neighbours, not itself plus their attention-weighted sum, which keeps it
    on the scale of the tokens the LLM was trained on. Keys are the feature layer's, averaged over
    heads; the released code's one extra token summing all pruned tokens, which the paper does not
    describe, is left out.
    """

    needs_importance = True
    needs_cls = True
    needs_keys = True

    def __init__(self, dim: int, keep_ratio: float | None = None, target: int | None = None,
                 neighbours: int = 32):
        super().__init__(dim, keep_ratio=keep_ratio, target=target)
        if isinstance(neighbours, bool) or not isinstance(neighbours, int) or neighbours < 0:
            raise ValueError(f"compressor {self.name}: neighbours={neighbours} must be a whole number >= 0")
        self.neighbours = neighbours
        self.reset_stats()

    def reset_stats(self) -> None:
        """Forget the kept counts recorded so far."""
        self.images_seen, self.tokens_kept = 0, 0

    @property
    def mean_kept(self) -> float | None:
        """Mean number of kept tokens per image since :meth:`reset_stats` (None before any image)."""
        return self.tokens_kept / self.images_seen if self.images_seen else None

    def kept_counts(self, importance: torch.Tensor, n: int | None = None) -> torch.Tensor:
        """[B] long: each image's kept count, the IQR rule's clipped to [1, M]."""
        return iqr_outliers(importance).clamp(1, self.budget(n or importance.shape[1]))

    def compress(self, tokens: torch.Tensor, context: CompressionContext):
        out, mask = super().compress(tokens, context)
        self.images_seen += tokens.shape[0]
        self.tokens_kept += int(mask.sum())
        return out, mask

    def _plan(self, tokens: torch.Tensor, context: CompressionContext) -> MergePlan:
        b, n, _ = tokens.shape
        m = self.budget(n)
        importance = context.importance.float()
        counts = self.kept_counts(importance, n)
        rank = importance.argsort(1, descending=True).argsort(1)
        kept = rank < counts.unsqueeze(1)
        slot = kept.long().cumsum(1) - 1  # kept tokens fill slots 0.. in their original order
        assignment = torch.where(kept, slot, dropped(b, n, tokens.device))
        k = min(self.neighbours, n - int(counts.max()))  # no more than the image keeping most has left over
        if k:
            keys = F.normalize(context.keys.float(), dim=-1)
            # rows: kept tokens choosing; columns: candidates, only tokens not kept
            sim = (keys @ keys.transpose(1, 2)).masked_fill(kept.unsqueeze(1), float("-inf"))
            sim = sim.masked_fill(~kept.unsqueeze(2), float("-inf"))
            top = sim.topk(k, dim=2).indices
            picked = torch.zeros_like(sim, dtype=torch.bool).scatter_(2, top, True) & (sim > float("-inf"))
            best, chooser = sim.masked_fill(~picked, float("-inf")).max(1)
            absorbed = best > float("-inf")
            assignment = torch.where(absorbed, slot.gather(1, chooser), assignment)
        return MergePlan(assignment, importance, kept, m)
