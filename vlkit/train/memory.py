"""Training memory, measured, with the method named (notebooks 03-08).

On CUDA: ``torch.cuda.max_memory_allocated`` over the run, above what was allocated before it.
On CPU PyTorch keeps no allocator statistics, and the resident set size of a process that trains
many models in turn (a notebook) only shows the allocator's growth in its first training. So on
CPU :class:`StepMemory` counts the bytes one training step holds, each storage once: the model's
weights and buffers, the tensors autograd saves for the backward pass (saved-tensor hooks on the
first step; parameters it saves are counted as weights), and after the optimizer's first step the
gradients and the optimizer state. Transient temporaries inside an operator are not seen; the count
is the same in any process, so rows trained one after another compare.
"""
from __future__ import annotations

import contextlib

import torch

CPU_METHOD = ("bytes a training step holds, each storage once: weights + buffers, tensors saved for "
              "backward (saved-tensor hooks, first step), gradients and optimizer state")


def _bytes(t: torch.Tensor) -> int:
    return t.untyped_storage().nbytes()


class StepMemory:
    """``with StepMemory(model, device) as m: ... m.first_forward() ... m.after_first_step(optimizer)`` ->
    ``m.peak_bytes``, ``m.method`` (notebooks 03-08)."""

    def __init__(self, model, device: torch.device | str = "cpu"):
        self.model, self.device = model, torch.device(device)
        self.peak_bytes: int | None = None
        self.method = ""
        self._saved = 0
        self._seen: set[int] = set()

    def __enter__(self) -> "StepMemory":
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            self._base = torch.cuda.memory_allocated(self.device)
            self.method = "torch.cuda.max_memory_allocated above the allocation before training"
        else:
            self.method = CPU_METHOD
        return self

    @contextlib.contextmanager
    def first_forward(self):
        """Wrap the first step's forward: counts what autograd saves for backward (CPU only)."""
        if self.device.type == "cuda":
            yield
            return
        weights = {t.untyped_storage().data_ptr() for t in [*self.model.parameters(), *self.model.buffers()]}

        def pack(t):
            ptr = t.untyped_storage().data_ptr()
            if ptr not in weights and ptr not in self._seen:
                self._seen.add(ptr)
                self._saved += _bytes(t)
            return t
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            yield

    def after_first_step(self, optimizer) -> None:
        """Call after the first ``optimizer.step()``, before the gradients are cleared (CPU only)."""
        if self.device.type == "cuda":
            return
        storages: dict[int, int] = {}
        tensors = [*self.model.parameters(), *self.model.buffers()]
        tensors += [p.grad for p in self.model.parameters() if p.grad is not None]
        tensors += [v for state in optimizer.state.values() for v in state.values() if torch.is_tensor(v)]
        for t in tensors:
            storages[t.untyped_storage().data_ptr()] = _bytes(t)
        self.peak_bytes = sum(storages.values()) + self._saved

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            self.peak_bytes = int(torch.cuda.max_memory_allocated(self.device) - self._base)
