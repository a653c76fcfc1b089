"""VisionZip (dvlab-research/VisionZip): dominant tokens plus merged contextual tokens (notebook 06).

Dominant tokens are the top-k by the [cls] attention at the feature layer (VisionZip sums it over
heads; the model's mean over heads ranks the same). The rest are matched to ``c`` *contextual*
targets, every ``step``-th of the remaining tokens in their original order, by cosine similarity
of the layer's attention keys (averaged over heads, as VisionZip's patched CLIP attention returns
them); each target becomes the mean of itself and the tokens that chose it.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from vlkit.compression import CompressionContext, register_compressor
from vlkit.compressors.base import PlanCompressor, check_fraction, split
from vlkit.compressors.merge import MergePlan, chosen, dropped, gather_tokens, others, place, top_sorted


@register_compressor("visionzip")
class VisionZip(PlanCompressor):
    """Top-k by [cls] attention, the rest merged into evenly strided targets by key similarity.

    Budget M = dominant + contextual (``keep_ratio`` or ``target``); ``dominant_fraction`` defaults to
    VisionZip's 54/64 (54 dominant : 10 contextual at 64 tokens), at least one contextual token
    whenever tokens are left over. One deliberate difference: VisionZip adds the target to the
    mean of its matches (``target + mean``), a token of about twice the others' norm; here a target
    is the plain mean of itself and its matches, so merged tokens stay on the scale the LLM was
    trained on (notebook 06 compresses a trained model without fine-tuning it).

    Output: the dominant tokens in their original order, then the contextual ones in target order.
    """

    needs_importance = True
    needs_cls = True
    needs_keys = True

    def __init__(self, dim: int, keep_ratio: float | None = None, target: int | None = None,
                 dominant_fraction: float = 54 / 64):
        super().__init__(dim, keep_ratio=keep_ratio, target=target)
        self.dominant_fraction = check_fraction(self.name, "dominant_fraction", dominant_fraction)

    def _plan(self, tokens: torch.Tensor, context: CompressionContext) -> MergePlan:
        b, n, _ = tokens.shape
        m = self.budget(n)
        k, c = split(m, n, self.dominant_fraction)
        dev = tokens.device
        dominant = top_sorted(context.importance.float(), k)
        assignment = place(dropped(b, n, dev), dominant, torch.arange(k, device=dev))
        if c:
            rest = others(chosen(dominant, n))
            r = rest.shape[1]
            # evenly strided over the remaining tokens in raster order: the contexts cover the image
            picks = torch.arange(0, r, max(1, r // c), device=dev)[:c]
            keys = F.normalize(gather_tokens(context.keys.float(), rest), dim=-1)
            choice = (keys @ keys[:, picks].transpose(1, 2)).argmax(-1)
            # a target is its own slot, also when another target's keys are identical to its own
            choice[:, picks] = torch.arange(c, device=dev)
            assignment = place(assignment, rest, k + choice)
        return MergePlan(assignment, torch.ones(b, n, device=dev), chosen(dominant, n), m)
