"""What a text-reading connector may read of a batch (notebook 05; CMAA reads the instruction).

Kept apart so that the model and the processor share one rule without importing each other.
"""
from __future__ import annotations

import torch

IGNORE = -100  # the label of a token without loss (transformers' convention)


def text_mask(input_ids: torch.Tensor, attention_mask: torch.Tensor | None, labels: torch.Tensor | None,
              image_token_id: int) -> torch.Tensor:
    """The tokens a text-reading connector may read (notebook 05): those before the first answer token,
    not image slots or padding.

    The visual tokens are made once per example and serve every turn, so reading a later human turn
    would let an earlier answer depend on a question asked after it ("What colour is the square?"
    names the square); reading up to the first answer is VisLingInstruct's single instruction, and the
    same in training, evaluation and generation."""
    readable = input_ids != image_token_id
    if attention_mask is not None:
        readable &= attention_mask.bool()
    if labels is not None:
        readable &= (labels != IGNORE).cumsum(1) == 0
    return readable
