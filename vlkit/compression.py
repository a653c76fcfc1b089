"""Visual-token compressors: fewer visual tokens into the LLM (notebooks 03, 06).

Same registry pattern as :mod:`vlkit.connectors`. A compressor sits between the connector
and the LLM: ``forward(tokens [B, N, D], importance [B, N] | None) -> [B, M, D]`` and
``num_tokens(N) -> M`` (a fixed M, so the processor can expand ``<image>`` to M slots).
A compressor that wants per-token importance sets ``needs_importance = True``; the model then
passes the vision tower's [cls]->patch attention at the feature layer (VMTC's signal).

A method that acts elsewhere (ToMe inside the vision tower, FastV inside the LLM) does its model
surgery in ``attach(model)`` and undoes it in ``detach(model)``, which
:meth:`vlkit.model.VLModel.set_token_reduction` calls when the method is switched on and off.
"""
from __future__ import annotations


import torch
from torch import nn

from vlkit.registry import Registry

COMPRESSORS = Registry("compressor")
register_compressor = COMPRESSORS.register


def _register_all() -> None:
    # the methods live in vlkit.compressors, which imports this module: import it on first use
    import vlkit.compressors  # noqa: F401


def available_compressors() -> list[str]:
    """Names accepted by :func:`build_compressor`."""
    _register_all()
    return COMPRESSORS.names()


def build_compressor(name: str, dim: int, **kwargs) -> "Compressor":
    """Build the compressor registered as ``name`` for tokens of width ``dim`` (notebook 06)."""
    _register_all()
    return COMPRESSORS.build(name, dim, **kwargs)


class Compressor(nn.Module):
    """Base class (notebook 06)."""

    name = "base"
    needs_importance = False

    def __init__(self, dim: int):
        super().__init__()
        self.dim = dim

    def num_tokens(self, n: int) -> int:
        raise NotImplementedError

    def attach(self, model) -> None:
        """Patch ``model`` where this method acts outside the connector (nothing by default)."""

    def detach(self, model) -> None:
        """Undo :meth:`attach`."""

    def forward(self, tokens: torch.Tensor, importance: torch.Tensor | None = None) -> torch.Tensor:
        raise NotImplementedError


@register_compressor("identity")
class Identity(Compressor):
    """Keep every visual token (the LLaVA default, notebook 03)."""

    def num_tokens(self, n: int) -> int:
        return n

    def forward(self, tokens: torch.Tensor, importance: torch.Tensor | None = None) -> torch.Tensor:
        return tokens
