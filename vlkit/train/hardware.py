"""The machine a model trains on, and what its weights cost (notebooks 03-08).

Kept apart from the training loop so that specs, results and benchmarks can ask about the
hardware (native bf16? which CPU?) without importing accelerate.
"""
from __future__ import annotations

import os
import platform

import torch


def bf16_is_native(device: str | torch.device = "cpu") -> bool:
    """Whether ``device`` multiplies bf16 matrices natively, so that bf16 autocast speeds training up.

    On CPUs without AVX-512 (or AMX) oneDNN emulates bf16 and a matmul runs ~100x *slower* than
    fp32 (README, "Speed": the 512x512 matmul row), while CPUs with native bf16 train notebook
    03's model faster in bf16 (``benchmarks/bench_train_throughput.py``).
    """
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type != "cpu":
        return False
    try:  # the check PyTorch's own tests use for CPU bf16
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def training_device() -> str:
    """Where training and evaluation run: ``"cuda"`` when a GPU is visible (accelerate picks it), else ``"cpu"``."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def resolve_precision(mixed_precision: str) -> str:
    """``"auto"`` -> ``"bf16"`` where the training device computes bf16 natively, else ``"no"``."""
    if mixed_precision != "auto":
        return mixed_precision
    return "bf16" if bf16_is_native(training_device()) else "no"


def cpu_model() -> str:
    """The CPU's marketing name (``/proc/cpuinfo``), else what ``platform`` knows."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info() -> dict:
    """What a result was measured on: CPU, cores, threads, native bf16, GPU, torch (notebooks 03-08)."""
    info = {"cpu": cpu_model(), "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "bf16_native": bf16_is_native(), "torch": torch.__version__, "python": platform.python_version(),
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}
    return info


def weight_bytes(module: torch.nn.Module) -> int:
    """Bytes of ``module``'s weights as held in memory, 4-bit blocks with their quantisation constants
    (notebook 03). Shared tensors are counted once."""
    total, seen = 0, set()
    for t in list(module.parameters()) + list(module.buffers()):
        if id(t) in seen:
            continue
        seen.add(id(t))
        total += t.numel() * t.element_size()
        qs = getattr(t, "quant_state", None)
        if qs is not None:
            total += sum(x.numel() * x.element_size() for x in (qs.absmax, qs.code) if x is not None)
            if getattr(qs, "state2", None) is not None:
                total += qs.state2.absmax.numel() * qs.state2.absmax.element_size()
    return total


def parameter_counts(model: torch.nn.Module) -> dict[str, int]:
    """``{"trainable", "total"}`` parameter counts; a 4-bit weight counts its logical elements."""
    trainable = total = 0
    for p in model.parameters():
        qs = getattr(p, "quant_state", None)
        n = int(torch.Size(qs.shape).numel()) if qs is not None else p.numel()
        total += n
        trainable += n if p.requires_grad else 0
    return {"trainable": trainable, "total": total}
