"""The training loop every notebook's VLM trains with, on accelerate (notebooks 03-08).

One optimizer step: ``grad_accum`` micro-batches under bf16 autocast where the spec says so
(fp32 master weights), gradient clipping, AdamW with one learning rate per parameter group,
warm-up + cosine schedule. Metrics go to ``metrics.jsonl`` as JSON lines; checkpoints resume
exactly, since the data order is a pure function of (seed, step) (:mod:`vlkit.train.sampler`).
"""
from __future__ import annotations

import contextlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from tqdm.auto import tqdm
from transformers import get_cosine_schedule_with_warmup

from vlkit import atomic
from vlkit.specs import TrainSpec
from vlkit.train.checkpoints import check_resume, checkpoints, load_checkpoint, save_checkpoint
from vlkit.train.groups import optimizer_groups, prepare
from vlkit.train.memory import StepMemory
from vlkit.train.sampler import StepSampler, example_lengths


class TrainingDiverged(FloatingPointError):
    """The loss became NaN or infinite; the last good checkpoint is kept (notebook 03)."""


@dataclass
class TrainState:
    """What callbacks see after each optimizer step."""

    step: int
    metrics: dict
    model: torch.nn.Module
    checkpoint: Path | None = None


@dataclass
class TrainResult:
    model: torch.nn.Module
    steps: int
    losses: list[float]
    final_loss: float
    seconds: float
    tokens_per_s: float
    metrics_path: Path | None
    checkpoint: Path | None
    peak_memory_bytes: int | None = None
    memory_method: str = ""

    @property
    def seconds_per_step(self) -> float:
        return self.seconds / max(1, len(self.losses))


def train(model, train_dataset, spec: TrainSpec, processor=None, collate_fn: Callable | None = None,
          output_dir: str | Path | None = None, save_every: int = 0, keep_checkpoints: int = 2,
          resume: bool = False, ignore_spec_change: bool = False,
          callbacks: list[Callable[[TrainState], None]] | None = None) -> TrainResult:
    """Train ``model`` on ``train_dataset`` as ``spec`` says (notebook 03).

    ``collate_fn`` (or ``processor.collate``) turns a list of dataset items into a batch.
    ``output_dir``: ``metrics.jsonl`` and ``checkpoints/`` (every ``save_every`` steps and at the
    end; None keeps nothing). ``resume`` continues from the newest checkpoint there, refusing one
    written with another spec unless ``ignore_spec_change``. ``callbacks`` run after every
    optimizer step (an exception there stops training, as an interruption would). Raises
    :class:`TrainingDiverged` on a NaN/inf loss, before that step changes any weight.
    """
    from accelerate import Accelerator
    from accelerate.utils import set_seed

    collate_fn = collate_fn or (processor.collate if processor is not None else None)
    if collate_fn is None:
        raise ValueError("train() needs collate_fn or processor to build batches")
    if len(train_dataset) == 0:
        raise ValueError("train_dataset is empty")
    set_seed(spec.seed)
    accelerator = Accelerator()
    chosen = prepare(model, spec)
    optimizer = torch.optim.AdamW(optimizer_groups(spec, chosen), weight_decay=spec.weight_decay)
    # stepped by hand: accelerate's wrapper would step it once per process
    scheduler = get_cosine_schedule_with_warmup(optimizer, spec.warmup_steps, spec.steps)

    out = Path(output_dir) if output_dir else None
    start, last_ckpt = 0, None
    if out is not None and resume and (ckpts := checkpoints(out)):
        last_ckpt = ckpts[-1]
        if not ignore_spec_change:
            check_resume(last_ckpt, spec)
        start = load_checkpoint(last_ckpt, model, optimizer, scheduler)
    model, optimizer = accelerator.prepare(model, optimizer)
    model.train()

    metrics_path = out / "metrics.jsonl" if out is not None else None
    if metrics_path is not None and accelerator.is_main_process:
        kept = []
        if start and metrics_path.is_file():  # drop lines of steps the resumed run will redo
            kept = [l for l in metrics_path.read_text().splitlines() if l and json.loads(l)["step"] <= start]
        atomic.write_text(metrics_path, "".join(l + "\n" for l in kept))

    sampler = StepSampler(len(train_dataset), spec.batch_size, spec.seed, accelerator.process_index,
                          accelerator.num_processes, start * spec.grad_accum, (spec.steps - start) * spec.grad_accum,
                          lengths=example_lengths(train_dataset) if spec.length_bucket else None,
                          bucket=max(1, spec.length_bucket))
    loader = torch.utils.data.DataLoader(train_dataset, batch_sampler=sampler, collate_fn=collate_fn,
                                         num_workers=spec.num_workers)
    names = "+".join(g.name for g in spec.groups)
    bar = tqdm(total=spec.steps, initial=start, desc=f"train {names}",
               disable=not (spec.progress and accelerator.is_main_process))
    t0 = time.perf_counter()
    saving = {"out": out, "every": save_every, "keep": keep_checkpoints}
    try:
        with StepMemory(model, accelerator.device) as memory:
            losses, tokens = _loop(model, optimizer, scheduler, accelerator, loader, spec, start, saving,
                                   metrics_path, bar, callbacks, last_ckpt, memory)
    finally:
        bar.close()
    seconds = time.perf_counter() - t0
    last_ckpt = checkpoints(out)[-1] if out is not None and checkpoints(out) else None
    model = accelerator.unwrap_model(model)
    model.eval()
    return TrainResult(model=model, steps=spec.steps, losses=losses,
                       final_loss=losses[-1] if losses else float("nan"), seconds=seconds,
                       tokens_per_s=tokens / seconds if seconds > 0 else 0.0,
                       metrics_path=metrics_path, checkpoint=last_ckpt,
                       peak_memory_bytes=memory.peak_bytes, memory_method=memory.method)


def _loop(model, optimizer, scheduler, accelerator, loader, spec: TrainSpec, start, saving, metrics_path, bar,
          callbacks, last_ckpt, memory: StepMemory) -> tuple[list[float], int]:
    """Optimizer steps ``start + 1 .. spec.steps``; returns the step losses and tokens seen."""
    losses: list[float] = []
    batches = iter(loader)
    t0, tokens = time.perf_counter(), 0
    out = saving["out"]
    for step in range(start + 1, spec.steps + 1):
        step_loss, step_tokens = 0.0, 0
        for micro in range(spec.grad_accum):
            batch = {k: v.to(accelerator.device) for k, v in next(batches).items()}
            sync = micro == spec.grad_accum - 1
            with contextlib.nullcontext() if sync else accelerator.no_sync(model):
                # autocast here rather than Accelerator(mixed_precision=...): accelerate's state
                # is per process and refuses a second precision, and one process may train both
                first = step == start + 1 and micro == 0
                with torch.autocast(accelerator.device.type, dtype=torch.bfloat16,
                                    enabled=spec.mixed_precision == "bf16"), \
                        memory.first_forward() if first else contextlib.nullcontext():
                    loss = model(**batch).loss
                mean_loss = accelerator.reduce(loss.detach(), "mean")  # every process sees the same value
                if not torch.isfinite(mean_loss):
                    raise TrainingDiverged(
                        f"loss is {mean_loss.item()} at step {step} (micro-batch {micro}); weights of this step "
                        f"were not updated. Last good checkpoint: {last_ckpt or 'none written'}. "
                        "Lower the learning rate or check the data.")
                accelerator.backward(loss / spec.grad_accum)
            step_loss += mean_loss.item() / spec.grad_accum
            step_tokens += int(accelerator.reduce(batch["attention_mask"].sum(), "sum"))
        grad_norm = (accelerator.clip_grad_norm_(model.parameters(), spec.max_grad_norm)
                     if spec.max_grad_norm else None)
        optimizer.step()
        if step == start + 1:
            memory.after_first_step(optimizer)
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(step_loss)
        tokens += step_tokens
        elapsed = time.perf_counter() - t0
        metrics = {"step": step, "loss": step_loss, "tokens": step_tokens, "tokens_per_s": tokens / elapsed,
                   "grad_norm": None if grad_norm is None else float(grad_norm),
                   **{f"lr_{g['name']}": g["lr"] for g in optimizer.param_groups}}
        bar.update(1)
        bar.set_postfix(loss=f"{step_loss:.4f}")
        if metrics_path is not None and accelerator.is_main_process and (
                step % spec.log_every == 0 or step == spec.steps):
            with open(metrics_path, "a", encoding="utf-8") as f:
                f.write(json.dumps(metrics) + "\n")
        if out is not None and ((saving["every"] and step % saving["every"] == 0) or step == spec.steps):
            accelerator.wait_for_everyone()
            if accelerator.is_main_process:
                last_ckpt = save_checkpoint(out, step, accelerator.unwrap_model(model), optimizer, scheduler, spec,
                                            keep=saving["keep"])
            accelerator.wait_for_everyone()
        for cb in callbacks or ():
            cb(TrainState(step, metrics, accelerator.unwrap_model(model), last_ckpt))
    return losses, tokens
