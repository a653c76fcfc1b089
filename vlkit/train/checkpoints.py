"""Training checkpoints that resume exactly: trained tensors, optimizer, scheduler, RNG (notebook 03).

A checkpoint folder ``<output_dir>/checkpoints/step-NNNNNN/`` holds ``trainable.safetensors``,
``optimizer.pt`` (tensors and numbers only: loads with ``weights_only=True``), ``rng.safetensors``
and ``state.json`` (step, scheduler, RNG states and the training spec). Each is written
atomically, so an interrupted save leaves the previous checkpoint as the last one.
"""
from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from vlkit import atomic
from vlkit.cache import key_dict


def checkpoints(out: Path) -> list[Path]:
    """Complete checkpoints under ``out``, oldest first."""
    root = Path(out) / "checkpoints"
    return sorted(p for p in root.glob("step-*") if (p / "state.json").is_file()) if root.is_dir() else []


def save_checkpoint(out: Path, step: int, model, optimizer, scheduler, spec, keep: int = 2) -> Path:
    """Write the checkpoint of ``step``; keep only the newest ``keep``."""
    path = Path(out) / "checkpoints" / f"step-{step:06d}"
    with atomic.atomic_dir(path) as tmp:
        trainable = {n: p.detach().cpu().contiguous().clone() for n, p in model.named_parameters() if p.requires_grad}
        save_file(trainable, tmp / "trainable.safetensors")
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        rng = {"torch_rng": torch.get_rng_state()}
        if torch.cuda.is_available():  # dropout on a GPU draws from the CUDA generators
            rng.update({f"cuda_rng_{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())})
        save_file(rng, tmp / "rng.safetensors")
        np_state = np.random.get_state()
        atomic.write_json(tmp / "state.json", {
            "step": step, "scheduler": scheduler.state_dict(), "spec": key_dict(spec),
            "python_rng": [random.getstate()[0], list(random.getstate()[1]), random.getstate()[2]],
            "numpy_rng": [np_state[0], np_state[1].tolist(), *np_state[2:]]})
    for old in checkpoints(out)[: -keep]:
        shutil.rmtree(old, ignore_errors=True)
    return path


def _differences(saved, new, prefix: str = "") -> list[str]:
    if isinstance(saved, dict) and isinstance(new, dict):
        out = []
        for k in sorted(set(saved) | set(new)):
            out += _differences(saved.get(k), new.get(k), f"{prefix}{k}.")
        return out
    return [] if saved == new else [f"{prefix[:-1]} (saved {saved!r}, now {new!r})"]


def check_resume(path: Path, spec) -> None:
    """Refuse to resume from ``path`` with a training spec other than the one that wrote it.

    A changed seed, batch, accumulation, learning rate or step count would silently break the
    guarantee that a resumed run sees the batches the interrupted one would have seen.
    """
    state = json.loads((Path(path) / "state.json").read_text())
    diff = _differences(state.get("spec"), key_dict(spec))
    if diff:
        raise ValueError(f"checkpoint {path} was written with another training spec; resuming would not replay "
                         f"the same run. Differences: {'; '.join(diff[:8])}. Start a new output_dir, or pass "
                         "ignore_spec_change=True to resume anyway")


def load_checkpoint(path: Path, model, optimizer, scheduler) -> int:
    """Restore a checkpoint into ``model`` / ``optimizer`` / ``scheduler`` and the RNGs; returns its step."""
    weights = load_file(Path(path) / "trainable.safetensors")
    params = dict(model.named_parameters())
    expected = {n for n, p in params.items() if p.requires_grad}
    if set(weights) != expected:
        raise ValueError(f"checkpoint {path} holds {len(weights)} trainable tensors but the model has "
                         f"{len(expected)} (different recipe or model?); e.g. "
                         f"{sorted(set(weights) ^ expected)[:3]}")
    with torch.no_grad():
        for n, w in weights.items():
            if params[n].shape != w.shape:
                raise ValueError(f"checkpoint {path}: {n} has shape {tuple(w.shape)}, model has {tuple(params[n].shape)}")
            params[n].copy_(w)
    optimizer.load_state_dict(torch.load(Path(path) / "optimizer.pt", map_location="cpu", weights_only=True))
    state = json.loads((Path(path) / "state.json").read_text())
    scheduler.load_state_dict(state["scheduler"])
    rng = load_file(Path(path) / "rng.safetensors")
    torch.set_rng_state(rng["torch_rng"])
    cuda = [rng[k] for k in sorted((k for k in rng if k.startswith("cuda_rng_")), key=lambda k: int(k[9:]))]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)
    v, s, g = state["python_rng"]
    random.setstate((v, tuple(s), g))
    np.random.set_state((state["numpy_rng"][0], np.array(state["numpy_rng"][1], dtype=np.uint32),
                         *state["numpy_rng"][2:]))
    return int(state["step"])
