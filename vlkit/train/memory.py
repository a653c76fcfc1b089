"""Peak memory of a training run, measured, with the method named (notebooks 03-08).

On CUDA: ``torch.cuda.max_memory_allocated`` over the run. On CPU PyTorch keeps no allocator
statistics, so a thread samples the process's resident set size (``/proc/self/statm``) and the
peak *above the RSS before training* is reported: weights already loaded do not count, their
gradients, optimizer state and activations do. Memory the allocator kept from an earlier run in
the same process is not seen again, so compare methods in separate processes
(``benchmarks/``) when the difference matters.
"""
from __future__ import annotations

import os
import threading

import torch

_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def rss_bytes() -> int | None:
    """The process's resident set size, or None where ``/proc`` is not available."""
    try:
        with open("/proc/self/statm", encoding="ascii") as f:
            return int(f.read().split()[1]) * _PAGE
    except (OSError, ValueError, IndexError):
        return None


class PeakMemory:
    """``with PeakMemory(device) as m: train...`` -> ``m.peak_bytes``, ``m.method``."""

    def __init__(self, device: torch.device | str = "cpu", interval: float = 0.02):
        self.device, self.interval = torch.device(device), interval
        self.peak_bytes: int | None = None
        self.method = ""
        self._stop = threading.Event()

    def __enter__(self) -> "PeakMemory":
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            self._base = torch.cuda.memory_allocated(self.device)
            self.method = "torch.cuda.max_memory_allocated above the allocation before training"
            return self
        self._base = rss_bytes()
        self._max = self._base
        self.method = (f"peak resident set size above the RSS before training, sampled every "
                       f"{self.interval * 1000:.0f} ms (/proc/self/statm)")
        if self._base is not None:
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(self.interval):
            now = rss_bytes()
            if now is not None and now > self._max:
                self._max = now

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            self.peak_bytes = int(torch.cuda.max_memory_allocated(self.device) - self._base)
            return
        if self._base is None:
            self.method = "not measured (no /proc/self/statm)"
            return
        self._stop.set()
        self._thread.join()
        now = rss_bytes() or 0
        self.peak_bytes = int(max(self._max, now) - self._base)
