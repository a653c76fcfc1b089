"""The learning-rate schedule both tiny backbones pretrain with (notebook 02)."""
from __future__ import annotations

import math
from typing import Callable


def lr_lambda(warmup: int, total: int) -> Callable[[int], float]:
    """Linear warm-up then cosine decay to 10%: tiny models from scratch need the warm-up."""
    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total - warmup)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return f
