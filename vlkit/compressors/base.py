"""The budget and the plan -> merge flow shared by the connector-side compressors (notebook 06).

Each method takes a keep ratio or a target count (exactly one), so a notebook can compare them at
equal budgets, and implements ``_plan``; :meth:`PlanCompressor.plan` checks the inputs and
:meth:`PlanCompressor.compress` merges by the plan (:mod:`vlkit.compressors.merge`).
"""
from __future__ import annotations

import math

import torch

from vlkit.compression import CompressionContext, Compressor
from vlkit.compressors.merge import MergePlan, merge


class PlanCompressor(Compressor):
    """A compressor that plans an assignment of tokens to slots, then merges (notebook 06).

    ``keep_ratio`` in (0, 1]: keep about that share of the N tokens (rounded half up, at least 1);
    ``target``: exactly that many. Give one. A bad budget is an error when the compressor is built;
    a target above N when the model asks for :meth:`num_tokens`, i.e. before anything runs.
    """

    def __init__(self, dim: int, keep_ratio: float | None = None, target: int | None = None):
        super().__init__(dim)
        if (keep_ratio is None) == (target is None):
            raise ValueError(f"compressor {self.name}: give exactly one of keep_ratio or target "
                             f"(got keep_ratio={keep_ratio}, target={target})")
        if keep_ratio is not None and not (isinstance(keep_ratio, (int, float)) and 0 < keep_ratio <= 1):
            raise ValueError(f"compressor {self.name}: keep_ratio={keep_ratio} must be in (0, 1]")
        if target is not None and (isinstance(target, bool) or not isinstance(target, int) or target < 1):
            raise ValueError(f"compressor {self.name}: target={target} must be a whole number >= 1")
        self.keep_ratio, self.target = keep_ratio, target

    def budget(self, n: int) -> int:
        """The number of output slots M for ``n`` input tokens."""
        if self.target is not None:
            if self.target > n:
                raise ValueError(f"compressor {self.name}: target={self.target} is more than the {n} visual tokens")
            return self.target
        return max(1, math.floor(self.keep_ratio * n + 0.5))

    def num_tokens(self, n: int) -> int:
        return self.budget(n)

    def plan(self, tokens: torch.Tensor, context: CompressionContext | None = None) -> MergePlan:
        """The :class:`MergePlan` for ``tokens`` [B, N, D]: what was kept, merged where, dropped."""
        context = context or CompressionContext()
        self._check(tokens, context)
        return self._plan(tokens, context)

    def _plan(self, tokens: torch.Tensor, context: CompressionContext) -> MergePlan:
        raise NotImplementedError

    def compress(self, tokens: torch.Tensor, context: CompressionContext) -> tuple[torch.Tensor, torch.Tensor]:
        p = self.plan(tokens, context)
        return merge(tokens, p), p.mask

    def forward(self, tokens: torch.Tensor, importance: torch.Tensor | None = None,
                keys: torch.Tensor | None = None) -> torch.Tensor:
        return self.compress(tokens, CompressionContext(importance=importance, keys=keys))[0]

    def _check(self, tokens: torch.Tensor, context: CompressionContext) -> None:
        b, n = tokens.shape[:2]
        for what, needed, value in (("importance", self.needs_importance, context.importance),
                                    ("keys", self.needs_keys, context.keys)):
            if not needed:
                continue
            if value is None:
                raise ValueError(f"compressor {self.name} needs the vision tower's {what} at the feature layer")
            if tuple(value.shape[:2]) != (b, n):
                raise ValueError(f"compressor {self.name}: {what} of shape {tuple(value.shape)} for {n} tokens "
                                 f"(batch {b}); they must match token for token (a connector that keeps [cls] "
                                 "emits one token more than the patches the [cls] attends to)")


def split(m: int, n: int, fraction: float) -> tuple[int, int]:
    """(k kept as they are, c merged slots) for a budget of ``m`` of ``n`` tokens, k ~ ``fraction`` of m.

    At least one merged slot whenever tokens are left over, so the rest is summarised, never simply
    dropped; none when the budget keeps every token.
    """
    if m >= n:
        return n, 0
    c = min(m, max(1, round(m * (1 - fraction))))
    return m - c, c


def check_fraction(name: str, what: str, value: float) -> float:
    if not (isinstance(value, (int, float)) and 0 <= value <= 1):
        raise ValueError(f"compressor {name}: {what}={value} must be in [0, 1]")
    return float(value)
