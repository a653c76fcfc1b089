"""One trainer for every notebook's VLM, on accelerate (notebooks 03, 04, 05).

Recipes name what trains (everything else is frozen):

* ``connector``      stage 1 of LLaVA: connector (and compressor) only;
* ``connector+llm``  stage 2 of LLaVA: + the whole LLM;
* ``full``           + the vision tower (the Bottleneck paper's end-to-end tuning);
* ``lora``           LoRA adapters on the LLM's linear layers + connector (peft);
* ``qlora``          as ``lora`` with the LLM's weights in 4-bit nf4 (bitsandbytes).

Per-group learning rates, warm-up + cosine schedule, gradient accumulation, metrics as JSON
lines, checkpoints that resume exactly: the data order is a pure function of (seed, step), so a
resumed run replays the very batches the interrupted one would have seen.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import random
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm
from transformers import get_cosine_schedule_with_warmup

from vlkit import atomic

RECIPES = ("connector", "connector+llm", "full", "lora", "qlora")


class TrainingDiverged(FloatingPointError):
    """The loss became NaN or infinite; the last good checkpoint is kept (notebook 03)."""


def bf16_is_native(device: str | torch.device = "cpu") -> bool:
    """Whether ``device`` multiplies bf16 matrices natively, so that bf16 autocast speeds training up.

    On CPUs without AVX-512 (or AMX) oneDNN emulates bf16 and a matmul runs ~100x *slower* than
    fp32 (measured on a 2-core AMD EPYC with AVX2: 512x512 matmul 210 ms in bf16, 1.9 ms in fp32),
    while an AMX CPU trained notebook 03's model 1.46x faster in bf16.
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


@dataclass
class TrainConfig:
    """What to train and how (notebook 03). ``batch_size`` is per process and micro-step;
    one optimizer step sees ``batch_size * grad_accum * num_processes`` examples."""

    recipe: str = "connector"
    max_steps: int = 100                 # optimizer steps
    batch_size: int = 8
    grad_accum: int = 1
    lr_connector: float = 1e-3           # LLaVA stage 1 uses 1e-3 for the projector
    lr_llm: float = 2e-5                 # LLaVA stage 2 uses 2e-5 for the LLM
    lr_vision: float = 2e-6              # a pretrained tower only needs nudging
    lr_lora: float = 2e-4                # the QLoRA paper's adapter learning rate
    weight_decay: float = 0.0
    warmup_ratio: float = 0.03           # LLaVA: 3% warm-up, then cosine decay
    max_grad_norm: float | None = 1.0
    mixed_precision: str = "no"          # or "bf16": autocast matmuls (AMX / avx512-bf16 CPUs, GPUs), fp32 weights
    # > 0: batches drawn from one length bucket of this width (dataset length units, e.g. words),
    # so they pad less; 0: plain shuffled batches. See StepSampler.
    group_by_length: int = 0
    seed: int = 0
    output_dir: str | None = None        # checkpoints/ and metrics.jsonl; None = keep nothing
    save_every: int = 0                  # optimizer steps between checkpoints (0 = only at the end)
    keep_checkpoints: int = 2
    resume: bool = False
    log_every: int = 1
    lora_r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.0
    lora_targets: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
    num_workers: int = 0
    progress: bool = True
    warmup_steps: int = field(init=False, default=0)

    def __post_init__(self):
        if self.recipe not in RECIPES:
            raise ValueError(f"unknown recipe {self.recipe!r}; known recipes: {', '.join(RECIPES)}")
        if self.max_steps < 1 or self.batch_size < 1 or self.grad_accum < 1:
            raise ValueError("max_steps, batch_size and grad_accum must be >= 1")
        if self.group_by_length < 0:
            raise ValueError(f"group_by_length is a bucket width >= 0 (0: off), got {self.group_by_length}")
        if self.mixed_precision not in ("no", "bf16"):
            raise ValueError(f"mixed_precision must be 'no' or 'bf16', got {self.mixed_precision!r}")
        self.lora_targets = tuple(self.lora_targets)
        self.warmup_steps = int(round(self.warmup_ratio * self.max_steps))

    @classmethod
    def for_profile(cls, profile: str, **overrides) -> "TrainConfig":
        """``smoke``: a handful of steps to prove the wiring; ``full``: a real (small) run."""
        sizes = {"smoke": dict(max_steps=4, batch_size=4, progress=False),
                 "full": dict(max_steps=300, batch_size=16)}
        if profile not in sizes:
            raise ValueError(f"unknown profile {profile!r}; use one of {', '.join(sizes)}")
        return cls(**{**sizes[profile], **overrides})


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


def steps_for_epochs(n_examples: int, epochs: float, batch_size: int, grad_accum: int = 1,
                     num_processes: int = 1) -> int:
    """Optimizer steps that cover ``epochs`` passes over ``n_examples`` (notebook 03)."""
    per_step = batch_size * grad_accum * num_processes
    return max(1, math.ceil(epochs * n_examples / per_step))


# --- recipes ---------------------------------------------------------------------------------
def quantize_llm_4bit(model, device: str | torch.device | None = None) -> None:
    """Reload ``model.language_model`` with nf4 4-bit weights via ``BitsAndBytesConfig`` (notebook 03).

    Embeddings and the LM head stay in full precision (bitsandbytes quantizes linear layers).
    """
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    qcfg = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=torch.float32)  # bf16 matmul is slower on CPU
    impl = model.language_model.config._attn_implementation
    with tempfile.TemporaryDirectory() as d:
        model.language_model.save_pretrained(d)
        # device_map places the 4-bit weights where training runs (accelerate will not move them)
        device_map = {"": str(device)} if device is not None and torch.device(device).type != "cpu" else None
        llm = AutoModelForCausalLM.from_pretrained(d, quantization_config=qcfg, attn_implementation=impl,
                                                   device_map=device_map)
    llm.generation_config = model.language_model.generation_config
    model.language_model = bnb_cpu_safe(llm)


def bnb_cpu_safe(llm):
    """Turn off bitsandbytes' packed CPU inference kernel on 4-bit layers (notebook 03).

    bitsandbytes 0.50 repacks 4-bit weights for AVX512-BF16 CPUs at the first no-grad eval
    call and asserts out_features % 32 == 0 there: a Llama with intermediate size 688 crashes
    in ``generate``. The unpacked path is correct for every shape.
    """
    for mod in llm.modules():
        if hasattr(mod, "support_avx512bf16_for_cpu"):
            mod.support_avx512bf16_for_cpu = False
    return llm


def is_4bit(llm) -> bool:
    return bool(getattr(llm, "is_loaded_in_4bit", False))


def apply_recipe(model, cfg: TrainConfig, device: str | torch.device | None = None) -> dict[str, list[torch.nn.Parameter]]:
    """Freeze what the recipe does not train; wrap the LLM with LoRA if asked (notebook 03).

    Returns the trainable parameters by learning-rate group: connector, llm, vision, lora.
    """
    if cfg.recipe in ("lora", "qlora"):
        from peft import LoraConfig, PeftModel, get_peft_model

        if cfg.recipe == "qlora" and not is_4bit(model.language_model):
            quantize_llm_4bit(model, device)
        if not isinstance(model.language_model, PeftModel):
            lcfg = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                              target_modules=list(cfg.lora_targets), bias="none", task_type="CAUSAL_LM")
            model.language_model = get_peft_model(model.language_model, lcfg)
    trains = {"connector": True, "llm": cfg.recipe in ("connector+llm", "full"),
              "vision": cfg.recipe == "full", "lora": cfg.recipe in ("lora", "qlora")}
    groups: dict[str, list] = {k: [] for k in trains}
    for name, p in model.named_parameters():
        g = ("lora" if "lora_" in name else "llm" if name.startswith("language_model.")
             else "vision" if name.startswith("vision_tower.") else "connector")
        p.requires_grad_(trains[g] and p.is_floating_point())
        if p.requires_grad:
            groups[g].append(p)
    return {k: v for k, v in groups.items() if v}


def merge_lora(model):
    """Fold LoRA adapters into the LLM's weights so the model saves as a plain VLModel (notebook 03)."""
    from peft import PeftModel

    if isinstance(model.language_model, PeftModel):
        model.language_model = model.language_model.merge_and_unload()
    return model


# --- data order ------------------------------------------------------------------------------
class StepSampler:
    """Index lists for micro-batches, a pure function of (seed, position) (notebook 03).

    The stream concatenates one permutation per epoch; micro-batch g of process r takes stream
    positions ``[(g*W + r)*B, (g*W + r + 1)*B)``. Starting at ``start`` replays a run exactly.
    With ``lengths`` and ``bucket``, each run of ``MEGABATCH`` micro-batches of the permutation
    is regrouped so that a micro-batch holds examples of one length bucket
    (``length // bucket``), and those micro-batches are then shuffled: a batch pads to its
    bucket, not to its one long example, and stays a random mix of whatever shares the bucket.
    (Sorting by exact length instead, as Hugging Face's ``LengthGroupedSampler`` does, put
    same-template questions together here; measured: notebook 03's model stayed at chance.)
    """

    MEGABATCH = 50

    def __init__(self, n: int, batch_size: int, seed: int, rank: int, world: int, start: int, count: int,
                 lengths: Sequence[int] | None = None, bucket: int = 1):
        if lengths is not None and len(lengths) != n:
            raise ValueError(f"{len(lengths)} lengths for {n} examples")
        if bucket < 1:
            raise ValueError(f"bucket must be >= 1, got {bucket}")
        self.n, self.b, self.seed, self.rank, self.world = n, batch_size, seed, rank, world
        self.start, self.count = start, count
        self.buckets = None if lengths is None else torch.as_tensor(list(lengths)) // bucket
        self._perms: dict[int, torch.Tensor] = {}

    def _perm(self, epoch: int) -> torch.Tensor:
        if epoch not in self._perms:
            g = torch.Generator().manual_seed(self.seed * 100003 + epoch)
            perm = torch.randperm(self.n, generator=g)
            if self.buckets is not None:
                perm = torch.cat([self._regroup(c, g) for c in perm.split(self.MEGABATCH * self.b * self.world)])
            self._perms = {epoch: perm}
        return self._perms[epoch]

    def _regroup(self, chunk: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        """``chunk`` ordered by bucket (random within one), cut into micro-batches, those shuffled."""
        chunk = chunk[torch.sort(self.buckets[chunk], stable=True).indices]
        batches = chunk.split(self.b)
        return torch.cat([batches[i] for i in torch.randperm(len(batches), generator=g)])

    def __len__(self) -> int:
        return self.count

    def __iter__(self) -> Iterator[list[int]]:
        for g in range(self.start, self.start + self.count):
            first = (g * self.world + self.rank) * self.b
            yield [int(self._perm(pos // self.n)[pos % self.n]) for pos in range(first, first + self.b)]


def example_lengths(dataset) -> list[int]:
    """Per-example lengths for :class:`StepSampler`: ``dataset.lengths``, concatenated through
    ``ConcatDataset`` s (e.g. :class:`vlkit.llava_dataset.LlavaDataset`'s word counts)."""
    if isinstance(dataset, torch.utils.data.ConcatDataset):
        return [n for d in dataset.datasets for n in example_lengths(d)]
    if not hasattr(dataset, "lengths"):
        raise ValueError(f"group_by_length needs a dataset with .lengths; {type(dataset).__name__} has none")
    return list(dataset.lengths)


# --- checkpoints -----------------------------------------------------------------------------
def _checkpoints(out: Path) -> list[Path]:
    root = out / "checkpoints"
    return sorted(p for p in root.glob("step-*") if (p / "state.json").is_file()) if root.is_dir() else []


def _save_checkpoint(out: Path, step: int, model, optimizer, scheduler, cfg: TrainConfig) -> Path:
    path = out / "checkpoints" / f"step-{step:06d}"
    with atomic.atomic_dir(path) as tmp:
        trainable = {n: p.detach().cpu().contiguous().clone() for n, p in model.named_parameters() if p.requires_grad}
        save_file(trainable, tmp / "trainable.safetensors")
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")  # tensors + numbers: loads with weights_only
        save_file({"torch_rng": torch.get_rng_state()}, tmp / "rng.safetensors")
        np_state = np.random.get_state()
        atomic.write_json(tmp / "state.json", {
            "step": step, "scheduler": scheduler.state_dict(), "config": dataclasses.asdict(cfg),
            "python_rng": [random.getstate()[0], list(random.getstate()[1]), random.getstate()[2]],
            "numpy_rng": [np_state[0], np_state[1].tolist(), *np_state[2:]]})
    for old in _checkpoints(out)[: -cfg.keep_checkpoints]:
        shutil.rmtree(old, ignore_errors=True)
    return path


def _load_checkpoint(path: Path, model, optimizer, scheduler) -> int:
    weights = load_file(path / "trainable.safetensors")
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
    optimizer.load_state_dict(torch.load(path / "optimizer.pt", map_location="cpu", weights_only=True))
    state = json.loads((path / "state.json").read_text())
    scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(load_file(path / "rng.safetensors")["torch_rng"])
    v, s, g = state["python_rng"]
    random.setstate((v, tuple(s), g))
    np.random.set_state((state["numpy_rng"][0], np.array(state["numpy_rng"][1], dtype=np.uint32),
                         *state["numpy_rng"][2:]))
    return int(state["step"])


# --- the loop --------------------------------------------------------------------------------
def train(model, train_dataset, cfg: TrainConfig, collate_fn: Callable | None = None, processor=None,
          callbacks: list[Callable[[TrainState], None]] | None = None) -> TrainResult:
    """Train ``model`` on ``train_dataset`` following ``cfg.recipe`` (notebook 03).

    ``collate_fn`` (or ``processor.collate``) turns a list of dataset items into a batch.
    ``callbacks`` run after every optimizer step with a :class:`TrainState` (an exception there
    stops training, as an interruption would). Raises :class:`TrainingDiverged` on a NaN/inf
    loss, before that step changes any weight; checkpoints already written are kept.
    """
    from accelerate import Accelerator
    from accelerate.utils import set_seed

    collate_fn = collate_fn or (processor.collate if processor is not None else None)
    if collate_fn is None:
        raise ValueError("train() needs collate_fn or processor to build batches")
    if len(train_dataset) == 0:
        raise ValueError("train_dataset is empty")
    set_seed(cfg.seed)
    accelerator = Accelerator()
    groups = apply_recipe(model, cfg, accelerator.device)
    lrs = {"connector": cfg.lr_connector, "llm": cfg.lr_llm, "vision": cfg.lr_vision, "lora": cfg.lr_lora}
    optimizer = torch.optim.AdamW([{"params": ps, "lr": lrs[g], "name": g} for g, ps in groups.items()],
                                  weight_decay=cfg.weight_decay)
    # stepped by hand: accelerate's wrapper would step it once per process
    scheduler = get_cosine_schedule_with_warmup(optimizer, cfg.warmup_steps, cfg.max_steps)

    out = Path(cfg.output_dir) if cfg.output_dir else None
    start, last_ckpt = 0, None
    if out is not None and cfg.resume and (ckpts := _checkpoints(out)):
        last_ckpt = ckpts[-1]
        start = _load_checkpoint(last_ckpt, model, optimizer, scheduler)
    model, optimizer = accelerator.prepare(model, optimizer)
    model.train()

    metrics_path = out / "metrics.jsonl" if out is not None else None
    if metrics_path is not None and accelerator.is_main_process:
        kept = []
        if start and metrics_path.is_file():  # drop lines of steps the resumed run will redo
            kept = [l for l in metrics_path.read_text().splitlines() if l and json.loads(l)["step"] <= start]
        atomic.write_text(metrics_path, "".join(l + "\n" for l in kept))

    sampler = StepSampler(len(train_dataset), cfg.batch_size, cfg.seed, accelerator.process_index,
                          accelerator.num_processes, start * cfg.grad_accum, (cfg.max_steps - start) * cfg.grad_accum,
                          lengths=example_lengths(train_dataset) if cfg.group_by_length else None,
                          bucket=max(1, cfg.group_by_length))
    loader = torch.utils.data.DataLoader(train_dataset, batch_sampler=sampler, collate_fn=collate_fn,
                                         num_workers=cfg.num_workers)
    bar = tqdm(total=cfg.max_steps, initial=start, desc=f"train {cfg.recipe}",
               disable=not (cfg.progress and accelerator.is_main_process))
    t0 = time.perf_counter()
    try:
        losses, tokens = _loop(model, optimizer, scheduler, accelerator, loader, cfg, start, out, metrics_path,
                               bar, callbacks, last_ckpt)
    finally:
        bar.close()
    seconds = time.perf_counter() - t0
    last_ckpt = _checkpoints(out)[-1] if out is not None and _checkpoints(out) else None
    model = accelerator.unwrap_model(model)
    model.eval()
    return TrainResult(model=model, steps=cfg.max_steps, losses=losses,
                       final_loss=losses[-1] if losses else float("nan"), seconds=seconds,
                       tokens_per_s=tokens / seconds if seconds > 0 else 0.0,
                       metrics_path=metrics_path, checkpoint=last_ckpt)


def _loop(model, optimizer, scheduler, accelerator, loader, cfg, start, out, metrics_path, bar, callbacks,
          last_ckpt) -> tuple[list[float], int]:
    """Optimizer steps ``start + 1 .. max_steps``; returns the step losses and tokens seen."""
    losses: list[float] = []
    batches = iter(loader)
    t0, tokens = time.perf_counter(), 0
    for step in range(start + 1, cfg.max_steps + 1):
        step_loss, step_tokens = 0.0, 0
        for micro in range(cfg.grad_accum):
            batch = {k: v.to(accelerator.device) for k, v in next(batches).items()}
            sync = micro == cfg.grad_accum - 1
            with contextlib.nullcontext() if sync else accelerator.no_sync(model):
                # autocast here rather than Accelerator(mixed_precision=...): accelerate's state
                # is per process and refuses a second precision, and one process may train both
                with torch.autocast(accelerator.device.type, dtype=torch.bfloat16,
                                    enabled=cfg.mixed_precision == "bf16"):
                    loss = model(**batch).loss
                mean_loss = accelerator.reduce(loss.detach(), "mean")  # every process sees the same value
                if not torch.isfinite(mean_loss):
                    raise TrainingDiverged(
                        f"loss is {mean_loss.item()} at step {step} (micro-batch {micro}); weights of this step "
                        f"were not updated. Last good checkpoint: {last_ckpt or 'none written'}. "
                        "Lower the learning rate or check the data.")
                accelerator.backward(loss / cfg.grad_accum)
            step_loss += mean_loss.item() / cfg.grad_accum
            step_tokens += int(accelerator.reduce(batch["attention_mask"].sum(), "sum"))
        grad_norm = (accelerator.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
                     if cfg.max_grad_norm else None)
        optimizer.step()
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
        if metrics_path is not None and accelerator.is_main_process and (step % cfg.log_every == 0 or step == cfg.max_steps):
            with open(metrics_path, "a", encoding="utf-8") as f:
                f.write(json.dumps(metrics) + "\n")
        if out is not None and ((cfg.save_every and step % cfg.save_every == 0) or step == cfg.max_steps):
            accelerator.wait_for_everyone()
            if accelerator.is_main_process:
                last_ckpt = _save_checkpoint(out, step, accelerator.unwrap_model(model), optimizer, scheduler, cfg)
            accelerator.wait_for_everyone()
        for cb in callbacks or ():
            cb(TrainState(step, metrics, accelerator.unwrap_model(model), last_ckpt))
    return losses, tokens
