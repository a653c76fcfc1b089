"""A trained model on the zero-shot tasks, cached: AIO's three arms and the phrasing sweep (notebook 05).

A :class:`ZeroShotSpec` names one task (its config), how the questions are phrased to start with
and how AIO may rewrite them; :func:`zeroshot_results` runs every spec a stage lacks with one load of
the model and keeps each result beside the stage's other artifacts, keyed by the stage and the spec,
so a rerun of the notebook reads them back and ``vlkit run --dry-run`` can say what is cached.

Users phrase a question in many ways, so each question starts from a phrasing drawn from the task's
pool (:func:`start_phrasings`, seeded by the question): the "original" arm answers those, and AIO
has something to optimise. Answering every question in the training data's own phrasing would leave
it nothing to gain on the closest-phrased task.
"""
from __future__ import annotations

import json
import random
import time
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import torch

from vlkit import atomic, cache, paths
from vlkit.zeroshot import memes, pope, textvqa
from vlkit.zeroshot.files import TaskConfig

TASKS: dict[str, ModuleType] = {"pope": pope, "memes": memes, "textvqa": textvqa}


@dataclass(frozen=True)
class ZeroShotSpec:
    """One zero-shot evaluation: ``task`` (``pope``, ``memes``, ``textvqa``) of ``config``.

    ``start_seed``: the draw of each question's starting phrasing; ``rewrites``: pool rewrites per
    question for AIO; ``max_length``: the processor's limit while scoring (the comparison prompt
    shows every candidate: 320 tokens fit two captions); ``sweep``: also every phrasing's metric and
    mean IAS (:func:`vlkit.zeroshot.sweep.phrasing_sweep`); ``mixed_precision`` as the common suite's
    (``"auto"`` resolves to what this machine computes natively, and the resolved value is the key's)."""

    task: str
    config: TaskConfig
    start_seed: int = 0
    rewrites: int = 1
    max_length: int = 320
    batch_size: int = 32
    sweep: bool = False
    mixed_precision: str = "auto"

    def __post_init__(self):
        from vlkit.train.hardware import resolve_precision
        object.__setattr__(self, "mixed_precision", resolve_precision(self.mixed_precision))
        if self.mixed_precision not in ("no", "bf16"):
            raise ValueError(f"mixed_precision must be 'auto', 'no' or 'bf16', got {self.mixed_precision!r}")
        if self.task not in TASKS:
            raise ValueError(f"unknown zero-shot task {self.task!r}; known: {', '.join(TASKS)}")
        if self.rewrites < 1 or self.batch_size < 1 or self.max_length < 1:
            raise ValueError(f"rewrites, batch_size and max_length must be >= 1: {self}")


def start_phrasings(questions: list[dict], n_phrasings: int, seed: int = 0) -> list[int]:
    """Each question's starting phrasing: an index into the pool, drawn from the question's own seed."""
    if n_phrasings < 1:
        raise ValueError(f"n_phrasings={n_phrasings} must be >= 1")
    return [random.Random(f"start-{seed}-{q['question_id']}").randrange(n_phrasings) for q in questions]


def result_path(stage, spec: ZeroShotSpec) -> Path:
    """Where the result of ``spec`` on ``stage``'s model is kept (built or not)."""
    return cache.cache_path(paths.artifacts_dir(stage.profile), f"zeroshot-eval-{spec.task}", None,
                            key=cache.spec_key({"stage": stage.key}, spec))


def is_done(stage, spec: ZeroShotSpec) -> bool:
    return cache.is_cached(result_path(stage, spec))


def evaluate_loaded(model, processor, task: ModuleType, folder: str | Path, spec: ZeroShotSpec) -> dict:
    """AIO's arms (:func:`vlkit.zeroshot.aio.aio_evaluate`) from the drawn starting phrasings, the
    task's chance, the question ids, and (``spec.sweep``) the phrasing sweep, with each part's seconds."""
    from vlkit.rewriters import PoolParaphraser
    from vlkit.zeroshot.aio import aio_evaluate
    from vlkit.zeroshot.sweep import phrasing_sweep
    questions = task.load(folder)
    starts = start_phrasings(questions, len(task.PHRASINGS), spec.start_seed)
    t = time.perf_counter()
    out = aio_evaluate(model, processor, task, folder, questions, phrasing=starts,
                       rewriter=PoolParaphraser(task.PHRASINGS, n=spec.rewrites), batch_size=spec.batch_size)
    out.update(starts=starts, question_ids=[q["question_id"] for q in questions], chance=task.chance(questions),
               seconds={"aio": time.perf_counter() - t})
    if spec.sweep:
        t = time.perf_counter()
        out["sweep"] = phrasing_sweep(model, processor, task, folder, questions, batch_size=spec.batch_size)
        out["seconds"]["sweep"] = time.perf_counter() - t
    return out


def zeroshot_results(stage, specs: list[ZeroShotSpec], folders: dict[str, Path], progress: bool = False) -> list[dict]:
    """The result of every spec on ``stage``'s trained model (trained first if needed), in spec order.

    ``folders``: each task's folder. The model is loaded once, only when some spec is not cached."""
    from vlkit.stages import load_stage
    missing = [s for s in specs if not is_done(stage, s)]
    if missing:
        model, processor = load_stage(stage, progress)
        limit = processor.max_length
        for spec in missing:
            processor.max_length = max(limit or 0, spec.max_length)

            def build(tmp: Path, spec=spec) -> None:
                with torch.autocast(model.device.type, dtype=torch.bfloat16, enabled=spec.mixed_precision == "bf16"):
                    result = evaluate_loaded(model, processor, TASKS[spec.task], folders[spec.task], spec)
                atomic.write_json(tmp / "result.json", result)
            cache.cached(paths.artifacts_dir(stage.profile), f"zeroshot-eval-{spec.task}",
                         {"stage": stage.key, "spec": cache.key_dict(spec)}, build,
                         key=cache.spec_key({"stage": stage.key}, spec))
            processor.max_length = limit
    return [json.loads((result_path(stage, s) / "result.json").read_text()) for s in specs]
