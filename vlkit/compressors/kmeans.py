"""Spherical k-means in plain torch, batched over images and deterministic (notebook 06, VMTC).

Cosine similarity, because the LLM reads visual tokens through attention, where direction matters
more than norm; a fixed number of iterations and given initial centres, because a compressor must
give the same tokens for the same image on every run and take the same time for every image.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def spherical_kmeans(x: torch.Tensor, init: torch.Tensor, iterations: int = 10) -> torch.Tensor:
    """Cluster labels [B, R] in [0, c) of points ``x`` [B, R, D], from the points at ``init`` [B, c].

    Each step assigns every point to its most cosine-similar centre and moves each centre to the
    normalised mean of its points; a centre that loses all its points stays where it was (it
    cannot be re-seeded deterministically without a second criterion, and an empty cluster only
    leaves an empty slot).
    """
    b, r, _ = x.shape
    c = init.shape[1]
    if not 1 <= c <= r:
        raise ValueError(f"k-means: {c} clusters asked for {r} tokens; give between 1 and {r}")
    if iterations < 1:
        raise ValueError(f"k-means: iterations={iterations} must be >= 1")
    x = F.normalize(x.float(), dim=-1)
    centres = x.gather(1, init.unsqueeze(-1).expand(-1, -1, x.shape[-1]))
    for _ in range(iterations):
        labels = (x @ centres.transpose(1, 2)).argmax(-1)
        sums = torch.zeros_like(centres).scatter_add_(1, labels.unsqueeze(-1).expand_as(x), x)
        filled = sums.norm(dim=-1, keepdim=True) > 0
        centres = torch.where(filled, F.normalize(sums, dim=-1), centres)
    return (x @ centres.transpose(1, 2)).argmax(-1)
