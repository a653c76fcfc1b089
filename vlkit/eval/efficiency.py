"""What a forward pass costs: prefill FLOPs and latency, measured on the model itself (notebooks 03-08).

FLOPs are counted by PyTorch's ``FlopCounterMode`` (every matmul, attention included) over one
prefill of a typical prompt, so they follow whatever the model really computes (a compressor's
fewer visual tokens, an adapter's extra projections). Latency is the median of repeated prefills
of one batch; it is only comparable with a reference measured in the same process, on the same
shared machine, so :func:`prefill_latency` takes the reference with it.
"""
from __future__ import annotations

import statistics
import time
from typing import Callable

import torch


def _quantized_linears(model) -> list[torch.nn.Module]:
    """bitsandbytes' 4-/8-bit linear layers: their matmuls run in custom ops ``FlopCounterMode`` does not see."""
    try:
        import bitsandbytes as bnb
    except ImportError:
        return []
    return [m for m in model.modules() if isinstance(m, (bnb.nn.Linear4bit, bnb.nn.Linear8bitLt))]


@torch.no_grad()
def prefill_flops(model, batch: dict) -> int:
    """FLOPs of one forward over ``batch`` (the prompt, no generation), counted by PyTorch.

    A quantised layer computes the same product as the full-precision one (its weights are
    dequantised on the fly), so it is counted as 2 x in x out per token, as ``FlopCounterMode``
    counts a plain ``nn.Linear``.
    """
    from torch.utils.flop_counter import FlopCounterMode
    model.eval()
    extra = [0]

    def count(module, inputs, output):
        extra[0] += 2 * module.in_features * module.out_features * inputs[0].numel() // inputs[0].shape[-1]
    hooks = [m.register_forward_hook(count) for m in _quantized_linears(model)]
    try:
        with FlopCounterMode(display=False) as counter:
            model(**batch)
    finally:
        for h in hooks:
            h.remove()
    return int(counter.get_total_flops()) + extra[0]


@torch.no_grad()
def prefill_latency(model, batch: dict, reference: Callable[[], object] | None = None, reference_name: str | None = None,
                    repeats: int = 7, warmup: int = 2) -> dict:
    """Median prefill milliseconds of ``model`` on ``batch``, and of ``reference()`` interleaved with it.

    ``reference``: a call measured in turn with each of ours (e.g. the uncompressed model on its
    own batch), so that a slow phase of a shared VM hits both; the ratio is what carries to another
    machine. Without one, ``reference_ms`` is None: the number is this model's alone.
    """
    model.eval()
    for _ in range(warmup):
        model(**batch)
        if reference is not None:
            reference()
    ours, ref = [], []
    for _ in range(repeats):
        t = time.perf_counter()
        model(**batch)
        ours.append(1000 * (time.perf_counter() - t))
        if reference is not None:
            t = time.perf_counter()
            reference()
            ref.append(1000 * (time.perf_counter() - t))
    out = {"prefill_ms": statistics.median(ours), "batch": int(batch["input_ids"].shape[0]),
           "tokens": int(batch["input_ids"].shape[1]), "repeats": repeats, "reference": reference_name,
           "reference_ms": statistics.median(ref) if ref else None}
    out["ratio"] = out["prefill_ms"] / out["reference_ms"] if ref else None
    return out


@torch.no_grad()
def interleaved_prefills(model, configs: dict[str, tuple[Callable[[], None], dict]], reference: str | None = None,
                         repeats: int = 7, warmup: int = 1) -> dict[str, dict]:
    """Median prefill milliseconds of several configurations of one model, measured in turn (notebook 06).

    ``configs``: name -> ``(setup, batch)``; ``setup()`` switches the model to that configuration (e.g.
    :meth:`vlkit.model.VLModel.set_token_reduction`; not timed) and ``batch`` is its prompt batch. Each of
    ``repeats`` rounds runs every configuration once, the round starting one configuration further on, so
    that a slow phase of a shared VM hits them all and none always runs right after the same other one.
    Each prefill is split at the LLM (hooks on ``model.language_model``): ``llm_ms`` is the LLM's forward,
    ``rest_ms`` everything before it (vision tower, connector, compressor, embedding). Returns per name the
    medians ``prefill_ms``, ``llm_ms``, ``rest_ms``, the batch's ``batch`` and ``tokens``, ``repeats``, and
    ``ratio`` (``prefill_ms`` over ``reference``'s, when ``reference`` names one of the configurations).
    """
    if not configs:
        raise ValueError("interleaved_prefills: no configurations")
    if reference is not None and reference not in configs:
        raise ValueError(f"reference {reference!r} is not one of the configurations: {', '.join(configs)}")
    if repeats < 1 or warmup < 0:
        raise ValueError(f"repeats must be >= 1 and warmup >= 0, got {repeats}, {warmup}")
    model.eval()
    llm = model.language_model
    span: list[float] = []
    hooks = [llm.register_forward_pre_hook(lambda *_: span.append(time.perf_counter())),
             llm.register_forward_hook(lambda *_: span.append(time.perf_counter()))]
    names = list(configs)
    times: dict[str, list[tuple[float, float]]] = {n: [] for n in names}
    try:
        for r in range(warmup + repeats):
            for name in names[r % len(names):] + names[: r % len(names)]:
                setup, batch = configs[name]
                setup()
                span.clear()
                t = time.perf_counter()
                model(**batch)
                total = time.perf_counter() - t
                if r >= warmup:
                    times[name].append((1000 * total, 1000 * (span[-1] - span[0]) if len(span) >= 2 else 0.0))
    finally:
        for h in hooks:
            h.remove()
    out = {}
    for name in names:
        batch = configs[name][1]
        out[name] = {"prefill_ms": statistics.median(t for t, _ in times[name]),
                     "llm_ms": statistics.median(m for _, m in times[name]),
                     "rest_ms": statistics.median(t - m for t, m in times[name]),
                     "batch": int(batch["input_ids"].shape[0]), "tokens": int(batch["input_ids"].shape[1]),
                     "repeats": repeats, "reference": reference}
    for name in names:
        out[name]["ratio"] = out[name]["prefill_ms"] / out[reference]["prefill_ms"] if reference else None
    return out
