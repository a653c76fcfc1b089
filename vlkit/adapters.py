"""The Bottleneck Adapter: a linear, dense-to-sparse adapter inserted before attention (notebook 04).

2407.17813 ("Another Approach to Vision-Language Instruction Tuning") connects the towers through
adapters and tunes the whole model through them end to end. Its adapter, as RepAdapter / LaVIN
build it (no public code for the paper itself):

- a dense down-projection ``dim -> rank`` (Xavier-initialised),
- dropout,
- a group-wise ("sparse") up-projection ``rank -> dim``: ``groups`` blocks, a grouped 1x1
  convolution, initialised to zero with its bias, so the model is unchanged at initialisation,
- no non-linearity (an option for the ablation), output ``x + scale * up(dropout(down(x)))``.

Inserted after a block's input norm (:mod:`vlkit.insertions`, place ``"attention"``), it is a
linear map in front of linear layers, so it can be folded into them at inference
(:func:`vlkit.reparam.merge_adapters`).
"""
from __future__ import annotations

import torch
from torch import nn

from vlkit.insertions import register_insertion

ACTIVATIONS = {None: nn.Identity, "none": nn.Identity, "gelu": nn.GELU, "silu": nn.SiLU, "relu": nn.ReLU}


@register_insertion("bottleneck")
class BottleneckAdapter(nn.Module):
    """``x + scale * up(dropout(act(down(x))))`` with a group-wise, zero-initialised ``up`` (notebook 04).

    ``groups`` must divide both ``rank`` and ``dim`` (each group maps
    ``rank / groups`` bottleneck features to ``dim / groups`` outputs). ``activation``: None (the
    paper's linear adapter) or ``"gelu"`` / ``"silu"`` / ``"relu"`` for the ablation.
    """

    def __init__(self, dim: int, rank: int = 8, groups: int = 2, activation: str | None = None,
                 dropout: float = 0.1, scale: float = 1.0):
        super().__init__()
        if not isinstance(rank, int) or rank < 1:
            raise ValueError(f"bottleneck adapter: rank={rank!r} must be an integer >= 1")
        if not isinstance(groups, int) or groups < 1 or rank % groups or dim % groups:
            raise ValueError(f"bottleneck adapter: groups={groups!r} must be >= 1 and divide both rank={rank} and "
                             f"the width dim={dim}")
        if activation not in ACTIVATIONS:
            raise ValueError(f"bottleneck adapter: unknown activation {activation!r}; use one of "
                             f"{', '.join(str(k) for k in ACTIVATIONS)}")
        if not 0 <= dropout < 1:
            raise ValueError(f"bottleneck adapter: dropout={dropout} must be in [0, 1)")
        self.dim, self.rank, self.groups, self.scale = dim, rank, groups, float(scale)
        self.linear = activation in (None, "none")
        self.down = nn.Linear(dim, rank)
        self.act = ACTIVATIONS[activation]()
        self.drop = nn.Dropout(dropout)
        self.up = nn.Conv1d(rank, dim, kernel_size=1, groups=groups)
        nn.init.xavier_uniform_(self.down.weight)
        nn.init.zeros_(self.down.bias)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.drop(self.act(self.down(x)))
        return x + self.scale * self.up(h.transpose(-1, -2)).transpose(-1, -2)

    def up_matrix(self) -> torch.Tensor:
        """The up-projection as a dense ``[dim, rank]`` block-diagonal matrix."""
        w = self.up.weight.squeeze(-1)  # [dim, rank / groups]
        per_in, per_out = self.rank // self.groups, self.dim // self.groups
        dense = torch.zeros(self.dim, self.rank, dtype=w.dtype, device=w.device)
        for g in range(self.groups):
            dense[g * per_out:(g + 1) * per_out, g * per_in:(g + 1) * per_in] = w[g * per_out:(g + 1) * per_out]
        return dense

    def affine(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(A, c)`` with ``adapter(x) = x @ A.T + c`` (eval mode; only for the linear adapter)."""
        if not self.linear:
            raise ValueError("a bottleneck adapter with a non-linearity cannot be folded into the next layer")
        up = self.up_matrix()
        a = torch.eye(self.dim, dtype=up.dtype, device=up.device) + self.scale * up @ self.down.weight
        c = self.scale * (up @ self.down.bias + self.up.bias)
        return a, c

    def extra_repr(self) -> str:
        return f"dim={self.dim}, rank={self.rank}, groups={self.groups}, linear={self.linear}, scale={self.scale}"
