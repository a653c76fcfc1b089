"""Merge plans: which input tokens go to which output slot, and one weighted merge for all (notebook 06).

Every connector-side compressor first decides, per image, an *assignment* of its N input tokens
to M output slots (-1: dropped) with a weight per token, then averages each slot's members by
those weights. Keeping the decision apart from the arithmetic lets the notebook draw what each
method kept, merged and dropped from the same object the model computes with, and makes every
method's output exactly :func:`merge` of its plan.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class MergePlan:
    """How a batch of N tokens becomes M slots.

    ``assignment`` [B, N] long: each input token's output slot, -1 for a dropped token.
    ``weights`` [B, N] >= 0: its weight within its slot. ``kept`` [B, N] bool: the tokens the
    method selected (VMTC's primary and VisionZip's dominant tokens, which pass unchanged; PruMerge's
    outliers, which absorb neighbours; a random subset); the others were merged into a slot or
    dropped. ``num_slots``: M.
    """

    assignment: torch.Tensor
    weights: torch.Tensor
    kept: torch.Tensor
    num_slots: int

    def sizes(self) -> torch.Tensor:
        """[B, M] long: how many input tokens each slot holds."""
        member = self.assignment >= 0
        return torch.zeros(self.assignment.shape[0], self.num_slots, dtype=torch.long,
                           device=self.assignment.device).scatter_add_(1, self.assignment.clamp(min=0), member.long())

    @property
    def mask(self) -> torch.Tensor:
        """[B, M] bool: slots that hold at least one token (PruMerge's padding does not)."""
        return self.sizes() > 0


def merge(tokens: torch.Tensor, plan: MergePlan) -> torch.Tensor:
    """[B, N, D] -> [B, M, D]: each slot the weighted mean of its members; an empty slot is zero.

    Computed in float32 (a bf16 sum over hundreds of tokens loses the small members) and
    differentiable in ``tokens``, so a compressor can sit in a model being trained.
    """
    b, n, d = tokens.shape
    if plan.assignment.shape != (b, n) or plan.weights.shape != (b, n):
        raise ValueError(f"a plan for {tuple(plan.assignment.shape)} tokens cannot merge tokens of shape "
                         f"{tuple(tokens.shape)}")
    member = plan.assignment >= 0
    slot = plan.assignment.clamp(min=0)
    w = plan.weights.float() * member

    def slot_sum(x):
        return torch.zeros(b, plan.num_slots, dtype=x.dtype, device=x.device).scatter_add_(1, slot, x)

    # a slot whose members all weigh zero takes their plain mean rather than 0 / 0
    w = torch.where(slot_sum(w).gather(1, slot) > 0, w, member.float())
    # normalised per token before summing, so that a token alone in its slot passes through bit for bit
    w = torch.where(member, w / slot_sum(w).gather(1, slot).clamp(min=torch.finfo(torch.float32).tiny), 0.0)
    out = torch.zeros(b, plan.num_slots, d, dtype=torch.float32, device=tokens.device)
    out = out.scatter_add(1, slot.unsqueeze(-1).expand(-1, -1, d), tokens.float() * w.unsqueeze(-1))
    return out.to(tokens.dtype)


def top_sorted(scores: torch.Tensor, k: int) -> torch.Tensor:
    """[B, k] indices of each row's k highest scores, in their original order (the LLM reads positions)."""
    return scores.topk(k, dim=1).indices.sort(1).values


def chosen(indices: torch.Tensor, n: int) -> torch.Tensor:
    """[B, n] bool, True at ``indices`` [B, k]."""
    return torch.zeros(indices.shape[0], n, dtype=torch.bool, device=indices.device).scatter_(1, indices, True)


def others(mask: torch.Tensor) -> torch.Tensor:
    """[B, n - k] indices where ``mask`` [B, n] is False, in order; every row must have the same k."""
    counts = mask.sum(1)
    if bool((counts != counts[0]).any()):
        raise ValueError("others() needs the same number of chosen tokens in every row")
    # a stable sort puts the False positions first and keeps their order
    return mask.to(torch.uint8).sort(dim=1, stable=True).indices[:, : mask.shape[1] - int(counts[0])]


def gather_tokens(x: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    """[B, N, ...] at ``indices`` [B, k] -> [B, k, ...]."""
    return x.gather(1, indices.view(*indices.shape, *([1] * (x.dim() - 2))).expand(-1, -1, *x.shape[2:]))


def place(assignment: torch.Tensor, indices: torch.Tensor, slots: torch.Tensor) -> torch.Tensor:
    """``assignment`` with the tokens at ``indices`` [B, k] sent to ``slots`` [B, k] (or [k])."""
    return assignment.scatter(1, indices, slots.expand_as(indices))


def dropped(b: int, n: int, device) -> torch.Tensor:
    """An assignment [B, N] that drops everything: the starting point of every plan."""
    return torch.full((b, n), -1, dtype=torch.long, device=device)
