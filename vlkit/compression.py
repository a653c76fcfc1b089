"""Visual-token compressors: fewer visual tokens into the LLM (notebooks 03, 06).

Same registry pattern as :mod:`vlkit.connectors`. A compressor sits between the connector
and the LLM: ``forward(tokens [B, N, D], importance [B, N] | None) -> [B, M, D]`` and
``num_tokens(N) -> M`` (a fixed M, so the processor can expand ``<image>`` to M slots).
A compressor that wants per-token importance sets ``needs_importance = True``; the model then
passes the vision tower's [cls]->patch attention at the feature layer (VMTC's signal). One that
ranks by that [cls] attention, so cannot run on a tower without [cls] (SigLIP), also sets
``needs_cls``; one that compares tokens by the feature layer's attention keys (VisionZip, PruMerge)
sets ``needs_keys``. The model hands all of it over in one :class:`CompressionContext` through
:meth:`Compressor.compress`, which also returns which output slots hold a token: a method whose
kept count varies per image (PruMerge) pads to its fixed M, and the model hides the padding from
the LLM.

A method that acts elsewhere (ToMe inside the vision tower, FastV inside the LLM) does its model
surgery in ``attach(model)`` and undoes it in ``detach(model)``, which
:meth:`vlkit.model.VLModel.set_token_reduction` calls when the method is switched on and off. It
checks the model in ``attach`` before it patches anything, and the model counts its tokens
(``num_tokens``) only once it is attached; its ``compress`` is the default one (every slot filled),
its ``forward`` the identity on the connector's tokens.

The methods of notebook 06 live in :mod:`vlkit.compressors`, loaded on first use of this registry:
connector-side ``vmtc``, ``visionzip``, ``prumerge``, ``pool``, ``random``; ``tome`` in the tower,
``fastv`` in the LLM.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from vlkit.registry import Registry

COMPRESSORS = Registry("compressor")
register_compressor = COMPRESSORS.register


def _register_all() -> None:
    # the methods live in vlkit.compressors, which imports this module to register its classes:
    # imported here, on first use of the registry, not at the top
    import vlkit.compressors  # noqa: F401


def available_compressors() -> list[str]:
    """Names accepted by :func:`build_compressor`."""
    _register_all()
    return COMPRESSORS.names()


def build_compressor(name: str, dim: int, **kwargs) -> "Compressor":
    """Build the compressor registered as ``name`` for tokens of width ``dim`` (notebook 06)."""
    _register_all()
    return COMPRESSORS.build(name, dim, **kwargs)


def compressor_module(name: str) -> str:
    """The module that registers ``name``, saved with a model so that it reloads in a fresh process."""
    _register_all()
    return COMPRESSORS.module_of(name)


@dataclass
class CompressionContext:
    """What the vision tower tells a compressor about the N tokens it compresses (notebook 06).

    ``importance``: [B, N] [cls]->patch attention at the feature layer, averaged over heads (when the
    compressor ``needs_importance``). ``keys``: [B, N, Dh] that layer's attention keys, averaged over
    heads (when it ``needs_keys``).
    """

    importance: torch.Tensor | None = None
    keys: torch.Tensor | None = None


class Compressor(nn.Module):
    """Base class (notebook 06)."""

    name = "base"
    needs_importance = False
    needs_cls = False
    needs_keys = False

    def __init__(self, dim: int):
        super().__init__()
        self.dim = dim

    def num_tokens(self, n: int) -> int:
        raise NotImplementedError

    def attach(self, model) -> None:
        """Patch ``model`` where this method acts outside the connector (nothing by default)."""

    def detach(self, model) -> None:
        """Undo :meth:`attach`."""

    def compress(self, tokens: torch.Tensor, context: CompressionContext) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(tokens [B, M, D], mask [B, M] | None)``: the mask is False at slots that hold no token.

        :class:`vlkit.model.VLModel` calls this; by default it is :meth:`forward` with every slot filled.
        """
        return self(tokens, importance=context.importance), None

    def forward(self, tokens: torch.Tensor, importance: torch.Tensor | None = None) -> torch.Tensor:
        raise NotImplementedError


@register_compressor("identity")
class Identity(Compressor):
    """Keep every visual token (the LLaVA default, notebook 03)."""

    def num_tokens(self, n: int) -> int:
        return n

    def forward(self, tokens: torch.Tensor, importance: torch.Tensor | None = None) -> torch.Tensor:
        return tokens
