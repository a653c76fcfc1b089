"""VMTC (2411.15453): keep the important visual tokens, cluster and merge the rest (notebook 06).

The paper publishes no code; this follows its description. A token's importance is the vision
tower's [cls]->patch attention at the feature layer (the model passes it). The ``k`` most important
tokens are *primary* and reach the LLM unchanged; the others are clustered by spherical k-means
(:mod:`vlkit.compressors.kmeans`) into ``c`` clusters, each merged into one token weighted by its
members' importance, so a cluster leans towards what the [cls] looked at.
"""
from __future__ import annotations

import torch

from vlkit.compression import CompressionContext, register_compressor
from vlkit.compressors.base import PlanCompressor, check_fraction, split
from vlkit.compressors.kmeans import spherical_kmeans
from vlkit.compressors.merge import MergePlan, chosen, dropped, gather_tokens, others, place, top_sorted


@register_compressor("vmtc")
class VMTC(PlanCompressor):
    """Primary tokens by [cls] attention + importance-weighted k-means clusters of the rest.

    Budget M = k + c (``keep_ratio`` or ``target``). ``primary_fraction``: k ~ that share of M, and at
    least one cluster whenever tokens are left over. The default 54/64 is VisionZip's tuned
    dominant:contextual split (54:10 at 64 tokens); the paper gives none we could verify, and with
    the same split the two methods differ at equal budgets only in how they summarise the rest
    (importance-weighted k-means on the tokens here, strided targets by key similarity there).
    k-means starts from the ``c`` most important remaining tokens (deterministic, and seeds the
    clusters where the [cls] attention still points) and runs ``iterations`` steps.

    Output: the primary tokens in their original order, then the clusters in the order of their
    seeds. A cluster k-means left empty is an empty slot, which the model hides from the LLM.
    """

    needs_importance = True
    needs_cls = True

    def __init__(self, dim: int, keep_ratio: float | None = None, target: int | None = None,
                 primary_fraction: float = 54 / 64, iterations: int = 10):
        super().__init__(dim, keep_ratio=keep_ratio, target=target)
        self.primary_fraction = check_fraction(self.name, "primary_fraction", primary_fraction)
        if iterations < 1:
            raise ValueError(f"compressor {self.name}: iterations={iterations} must be >= 1")
        self.iterations = iterations

    def _plan(self, tokens: torch.Tensor, context: CompressionContext) -> MergePlan:
        b, n, _ = tokens.shape
        m = self.budget(n)
        k, c = split(m, n, self.primary_fraction)
        importance = context.importance.float()
        primary = top_sorted(importance, k)
        assignment = place(dropped(b, n, tokens.device), primary, torch.arange(k, device=tokens.device))
        if c:
            rest = others(chosen(primary, n))
            seeds = top_sorted(gather_tokens(importance, rest), c)
            labels = spherical_kmeans(gather_tokens(tokens, rest), seeds, self.iterations)
            assignment = place(assignment, rest, k + labels)
        return MergePlan(assignment, importance, chosen(primary, n), m)
