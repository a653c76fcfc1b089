"""LLaVA's two-stage recipe at small scale, with the paper's ablations (notebook 03).

Stage 1 (*feature alignment*): vision tower and LLM frozen, only the connector trains, on
image-caption pairs (``captions.json``), lr 1e-3. The connector learns to put visual features
where the LLM's word embeddings are.

Stage 2 (*end-to-end fine-tuning*): connector + LLM train on the instruction data
(``llava_instruct.json``: conversation / detail / reasoning) plus the ScienceQA-format train
split turned into LLaVA conversations (``<image>\\nContext: ... A. ... B. ...`` ->
``The answer is B.``), as LLaVA fine-tunes on ScienceQA.

Ablations are :class:`Variant` s: no stage 1, ``linear`` vs ``mlp2x_gelu``, conversation-only
data, QLoRA (4-bit nf4 LLM + LoRA). Each stage's result is cached under
``artifacts/<profile>/`` keyed by everything that produced it, so a rerun loads instead of
training and variants sharing a stage 1 train it once.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

from accelerate.utils import set_seed
from safetensors.torch import load_file, save_file
from torch.utils.data import ConcatDataset

from vlkit import atomic, cache, paths
from vlkit.backbones import BackboneConfig, cache_key
from vlkit.benchmarks import scienceqa as sqa
from vlkit.data import DataConfig
from vlkit.teacher import KINDS
from vlkit.world.scienceqa import ScienceQAConfig, ensure_scienceqa

# How many times each stage function really trained (tests check that caching skips it).
TRAIN_CALLS = {"stage1": 0, "stage2": 0}


# ---------------------------------------------------------------------------------- config

@dataclass(frozen=True)
class Variant:
    """One row of the ablation table (notebook 03).

    ``connector``: registry name; ``stage1``: start stage 2 from the stage-1 connector (False =
    a freshly initialised one, LLaVA's "no pretraining" ablation); ``types``: the instruction
    types of stage 2; ``recipe``: ``connector+llm`` (full fine-tuning) or ``qlora``.
    """

    name: str
    connector: str = "linear"
    stage1: bool = True
    types: tuple[str, ...] = KINDS
    recipe: str = "connector+llm"

    def __post_init__(self):
        if self.recipe not in ("connector+llm", "qlora"):
            raise ValueError(f"variant {self.name!r}: recipe must be 'connector+llm' or 'qlora', got {self.recipe!r}")
        unknown = set(self.types) - set(KINDS)
        if unknown or not self.types:
            raise ValueError(f"variant {self.name!r}: types must be some of {KINDS}, got {self.types}")


MAIN = Variant("LLaVA")
VARIANTS = (
    MAIN,
    Variant("no stage 1", stage1=False),
    Variant("mlp2x_gelu", connector="mlp2x_gelu"),
    Variant("conversation only", types=("conversation",)),
    Variant("QLoRA (nf4 + LoRA)", recipe="qlora"),
)


def _sqa_world(data: DataConfig):
    # The benchmark's images must look like the training images (same world), with at least
    # two objects so that "what colour is the <shape>?" is a binding question.
    return dataclasses.replace(data.world, min_objects=max(2, data.world.min_objects), text_prob=0.0)


@dataclass
class LlavaConfig:
    """Everything notebook 03 trains and evaluates (notebook 03).

    ``vision`` / ``llm`` / ``tokenizer``: checkpoint overrides (name or path); None = the
    tiny backbones from :func:`vlkit.backbones.ensure_backbones`. ``sqa_share``: share of the
    stage-2 samples drawn from the ScienceQA train split (LLaVA fine-tunes on ScienceQA alone;
    we mix it with the instruction data so one stage 2 serves both benchmarks).
    """

    profile: str = "full"
    seed: int = 0
    vision: str | None = None
    llm: str | None = None
    tokenizer: str | None = None
    # stage 1: connector only, captions. Its loss is flat after ~40 steps (mean over steps 40-50
    # 0.738, 70-80 0.743, at 80 steps); 50 leave notebook 03 more of its ten minutes.
    stage1_steps: int = 50
    stage1_batch: int = 32
    stage1_lr: float = 1e-3
    # stage 2: connector + LLM, instructions + ScienceQA train
    # 320 steps x 16 examples (bf16 + length buckets), for notebook 03's ten minutes: five variants,
    # their two stage-1 connectors and the evaluation took 7.7 min on a fresh clone in a slow phase of
    # this shared 2-core VM (README, "Reference results"). Main variant: binding 75.5 / 69.2 / 62.4%
    # for stage-2 seeds 0 / 1 / 2 (bag of attributes 42.5%).
    stage2_steps: int = 320
    stage2_batch: int = 16
    stage2_lr_connector: float = 1e-3
    stage2_lr_llm: float = 1e-3     # a tiny LLM pretrained at 3e-3 needs more than LLaVA's 2e-5
    lr_lora: float = 2e-3
    lora_r: int = 16
    sqa_share: float = 0.9          # the benchmark's train split dominates, as in LLaVA's SQA fine-tune
    # Each binding question ("what colour is the triangle?") is seen this many times per pass over
    # the ScienceQA train split: the lookup they teach forms after ~3,000 of them, and at their
    # natural 35% share 350 steps show ~1,800 (measured, main variant, 350 steps: binding 32.8% at
    # 1 repeat, 65.5% at 4). 5 repeats make ~66% of the examples binding questions, ~3,400 in 320
    # steps (README, "An LLM that reads its context, and enough binding questions").
    binding_repeats: int = 5
    # ScienceQA-format problems and their train / val / test shares: ~1,000 test problems, as
    # before, and 18,000 distinct training problems. Measured: binding questions alone, 600
    # steps on 1,029 distinct problems -> 35% (memorised, train loss 0.33) vs 44.5% on 14,000.
    n_problems: int = 20000
    sqa_splits: tuple[float, float, float] = (0.9, 0.05, 0.05)
    sqa_answer: str = "choice"      # or "answer" / "solution-first": see scienceqa_to_llava
    sqa_eval: str = "likelihood"    # or "generate": see vlkit.vlm_eval.answer_problems
    # tokens per example (64 of them visual). The longest problems (map directions) take 168:
    # at 160 their answers were cut off, so 6% of training problems taught nothing and their
    # test problems scored every option 0 (now VLProcessor refuses a cut that drops every answer).
    max_length: int = 192
    # training and evaluation matmuls: "bf16" (autocast, as LLaVA trains), "no" (fp32), or "auto":
    # bf16 where the hardware computes it natively, else fp32 (bf16 is ~100x slower on AVX2 CPUs).
    # Resolved when the config is built, so cache keys and results name the precision used.
    mixed_precision: str = "auto"
    length_bucket: int = 32         # training batches from one 32-word length bucket: less padding (0: off)
    # the LLM's attention function (transformers' names). On this CPU the bf16 SDPA kernel's backward
    # is slow at these sizes: a stage-2 step (16 x 166 tokens) takes 244 ms with "eager" vs 335 ms
    # with "sdpa" (274 ms with SDPA's math backend; benchmarks/bench_llm_attention.py, the paths
    # interleaved in one process). Use "sdpa" or "flash_attention_2" on a GPU.
    llm_attention: str = "eager"
    # evaluation
    eval_batch: int = 64
    sqa_max_new_tokens: int = 24    # a one-sentence solution + "The answer is B."
    bench_scenes: int = 20          # LLaVA-Bench-style: one question per type per scene
    bench_max_new_tokens: int = 40
    progress: bool = True
    data: DataConfig | None = None
    backbones: BackboneConfig | None = None
    scienceqa: ScienceQAConfig | None = None

    def __post_init__(self):
        if self.sqa_answer not in ANSWER_STYLES:
            raise ValueError(f"sqa_answer must be one of {ANSWER_STYLES}, got {self.sqa_answer!r}")
        if self.sqa_eval not in ("likelihood", "generate"):
            raise ValueError(f"sqa_eval must be 'likelihood' or 'generate', got {self.sqa_eval!r}")
        if self.mixed_precision not in ("no", "bf16", "auto"):
            raise ValueError(f"mixed_precision must be 'no', 'bf16' or 'auto', got {self.mixed_precision!r}")
        if self.mixed_precision == "auto":
            from vlkit.train import bf16_is_native
            self.mixed_precision = "bf16" if bf16_is_native() else "no"
        if self.binding_repeats < 1:
            raise ValueError(f"binding_repeats must be >= 1, got {self.binding_repeats}")
        if not 0 <= self.sqa_share < 1:
            raise ValueError(f"sqa_share must be in [0, 1), got {self.sqa_share}")
        self.data = self.data or DataConfig.for_profile(self.profile, seed=self.seed)
        self.backbones = self.backbones or BackboneConfig.for_profile(self.profile, seed=self.seed)
        self.scienceqa = self.scienceqa or ScienceQAConfig.for_profile(
            self.profile, n_problems=self.n_problems, seed=self.seed, world=_sqa_world(self.data),
            split_shares=tuple(self.sqa_splits),
            resolution=self.data.resolution)

    @classmethod
    def for_profile(cls, profile: str, **overrides) -> "LlavaConfig":
        """``smoke``: seconds, proves the wiring; ``full``: notebook 03 in ~10 min on 2 cores.

        Overrides equal to None keep the profile's value (notebooks pass None for "default").
        """
        sizes = {
            "smoke": dict(stage1_steps=3, stage1_batch=4, stage2_steps=4, stage2_batch=4, eval_batch=16,
                          bench_scenes=2, bench_max_new_tokens=8, n_problems=60, sqa_splits=(0.6, 0.2, 0.2),
                          progress=False),
            "full": dict(),
        }
        if profile not in sizes:
            raise ValueError(f"unknown profile {profile!r}; use one of {', '.join(sizes)}")
        kw = {**sizes[profile], **{k: v for k, v in overrides.items() if v is not None}}
        return cls(profile=profile, **kw)


# ------------------------------------------------------------------------------ components

def backbone_paths(cfg: LlavaConfig) -> dict[str, str]:
    """``vision``, ``llm``, ``tokenizer``: the overrides, else the cached tiny backbones (notebook 03)."""
    if cfg.vision and cfg.llm and cfg.tokenizer:
        return {"vision": cfg.vision, "llm": cfg.llm, "tokenizer": cfg.tokenizer}
    from vlkit.backbones import ensure_backbones
    root = ensure_backbones(cfg.backbones, progress=cfg.progress)
    return {"vision": cfg.vision or str(root / "vision"), "llm": cfg.llm or str(root / "llm"),
            "tokenizer": cfg.tokenizer or cfg.llm or str(root / "tokenizer")}


def _source(cfg: LlavaConfig) -> dict:
    """What the backbones are, for cache keys: the overrides, or the backbone config."""
    if cfg.vision and cfg.llm and cfg.tokenizer:
        return {"vision": cfg.vision, "llm": cfg.llm, "tokenizer": cfg.tokenizer}
    return {"backbones": cache_key(cfg.backbones), "vision": cfg.vision, "llm": cfg.llm,
            "tokenizer": cfg.tokenizer}


def load_tokenizer(path: str):
    """The tokenizer, checked to have ``<image>``, pad/eos and a chat template (notebook 03)."""
    from transformers import AutoTokenizer

    from vlkit.tokenizer import check_tokenizer
    tok = AutoTokenizer.from_pretrained(path)
    check_tokenizer(tok)
    return tok


def build_model(cfg: LlavaConfig, connector: str = "linear"):
    """A fresh VLModel from the backbones with a new ``connector``, and its processor (notebook 03)."""
    from transformers import AutoImageProcessor

    from vlkit.backbones import build_llm, build_vision_tower
    from vlkit.model import VLModel
    from vlkit.processor import VLProcessor
    p = backbone_paths(cfg)
    tok = load_tokenizer(p["tokenizer"])
    set_seed(cfg.seed)  # the connector's initialisation depends only on the seed
    model = VLModel.from_backbones(build_vision_tower(p["vision"]), build_llm(p["llm"]), tok, connector=connector,
                                   llm_attn_implementation=cfg.llm_attention)
    proc = VLProcessor.for_model(model, AutoImageProcessor.from_pretrained(p["vision"]), tok,
                                 max_length=cfg.max_length)
    return model, proc


def data_dir(cfg: LlavaConfig) -> Path:
    """The instruction-data folder of notebook 01 (built when missing)."""
    from vlkit.data import ensure_dataset
    return ensure_dataset(cfg.data, progress=cfg.progress)


def scienceqa_dir(cfg: LlavaConfig) -> Path:
    """The ScienceQA-format benchmark folder (built when missing)."""
    return ensure_scienceqa(cfg.scienceqa)


ANSWER_STYLES = ("answer", "solution-first", "choice")


def scienceqa_to_llava(problems: dict[str, dict], style: str = "solution-first") -> list[dict]:
    """ScienceQA problems -> LLaVA conversation records (notebook 03).

    The human turn is the evaluation prompt (:func:`vlkit.benchmarks.scienceqa.build_prompt`),
    so training and evaluation see the same text; image paths are relative to the benchmark
    root. ``style="answer"``: ``"The answer is B."``; ``"solution-first"``: the problem's
    solution, then the answer (``"The circle is red. The answer is B."``), LLaVA's
    "reasoning-first" variant, which the paper found to converge faster; ``"choice"``: the
    option's text, scored by likelihood (:func:`vlkit.vlm_eval.rank_choices`).
    """
    if style not in ANSWER_STYLES:
        raise ValueError(f"unknown answer style {style!r}; use one of {ANSWER_STYLES}")
    if style == "choice":
        return sqa.to_llava_json(problems, style="choice")
    records = sqa.to_llava_json(problems, style="sentence")
    if style == "solution-first":
        for rec in records:
            solution = problems[rec["id"]].get("solution", "").strip()
            if solution:
                gpt = rec["conversations"][-1]
                gpt["value"] = f"{solution} {gpt['value']}"
    return records


def llm_weight_bytes(llm) -> int:
    """Bytes of the LLM's weights, 4-bit blocks with their quantisation constants (notebook 03)."""
    total, seen = 0, set()
    for t in list(llm.parameters()) + list(llm.buffers()):
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


# ---------------------------------------------------------------------------------- stages

def _train_config(cfg: LlavaConfig, recipe: str, steps: int, batch: int, **kw):
    from vlkit.train import TrainConfig
    return TrainConfig(recipe=recipe, max_steps=steps, batch_size=batch, seed=cfg.seed,
                       progress=cfg.progress, lr_lora=cfg.lr_lora, lora_r=cfg.lora_r,
                       mixed_precision=cfg.mixed_precision, group_by_length=cfg.length_bucket,
                       lora_alpha=2 * cfg.lora_r, **kw)


def stage1_key(cfg: LlavaConfig, connector: str) -> dict:
    """Everything a stage-1 result depends on (its cache key)."""
    return {"stage": 1, "source": _source(cfg), "data": dataclasses.asdict(cfg.data), "connector": connector,
            "steps": cfg.stage1_steps, "batch": cfg.stage1_batch, "lr": cfg.stage1_lr,
            "max_length": cfg.max_length, "mixed_precision": cfg.mixed_precision, "length_bucket": cfg.length_bucket,
            "llm_attention": cfg.llm_attention, "seed": cfg.seed}


def ensure_stage1(cfg: LlavaConfig, connector: str = "linear") -> Path:
    """Stage 1: train the connector alone on captions; cached folder with ``connector.safetensors``
    and ``losses.json`` (notebook 03)."""
    from vlkit.llava_dataset import LlavaDataset
    from vlkit.train import train

    def build(tmp: Path) -> None:
        TRAIN_CALLS["stage1"] += 1
        model, proc = build_model(cfg, connector)
        ds = LlavaDataset(data_dir(cfg) / "captions.json")
        tc = _train_config(cfg, "connector", cfg.stage1_steps, cfg.stage1_batch, lr_connector=cfg.stage1_lr)
        r = train(model, ds, tc, processor=proc)
        save_file({k: v.contiguous() for k, v in model.connector.state_dict().items()}, tmp / "connector.safetensors")
        atomic.write_json(tmp / "losses.json", {"loss": r.losses, "seconds": r.seconds,
                                                "tokens_per_s": r.tokens_per_s, "examples": len(ds)})

    return cache.cached(paths.artifacts_dir(cfg.profile), "llava-stage1", stage1_key(cfg, connector), build)


def stage2_key(cfg: LlavaConfig, variant: Variant) -> dict:
    """Everything a stage-2 result depends on (its cache key)."""
    return {"stage": 2, "stage1": stage1_key(cfg, variant.connector) if variant.stage1 else None,
            "source": _source(cfg), "data": dataclasses.asdict(cfg.data),
            "scienceqa": dataclasses.asdict(cfg.scienceqa), "connector": variant.connector,
            "types": list(variant.types), "recipe": variant.recipe, "steps": cfg.stage2_steps,
            "batch": cfg.stage2_batch, "lr_connector": cfg.stage2_lr_connector, "lr_llm": cfg.stage2_lr_llm,
            "lr_lora": cfg.lr_lora, "lora_r": cfg.lora_r, "sqa_share": cfg.sqa_share,
            "binding_repeats": cfg.binding_repeats,
            "sqa_answer": cfg.sqa_answer, "sqa_format": sqa.CHOICE_FORMAT, "max_length": cfg.max_length,
            "mixed_precision": cfg.mixed_precision, "length_bucket": cfg.length_bucket,
            "llm_attention": cfg.llm_attention, "seed": cfg.seed}


def stage2_scienceqa_records(cfg: LlavaConfig, problems: dict[str, dict]) -> list[dict]:
    """LLaVA records of the ScienceQA train ``problems`` for stage 2, binding questions
    ``cfg.binding_repeats`` times (see :class:`LlavaConfig`)."""
    records = scienceqa_to_llava(problems, cfg.sqa_answer)
    binding = [r for r in records if problems[r["id"]].get("category") == sqa.BINDING_CATEGORY]
    return records + binding * (cfg.binding_repeats - 1)


def stage2_dataset(cfg: LlavaConfig, variant: Variant, sqa_json: Path):
    """Instruction records of the variant's types + ScienceQA train records, repeated to ``sqa_share``."""
    from vlkit.llava_dataset import LlavaDataset
    inst = LlavaDataset(data_dir(cfg) / "llava_instruct.json", types=list(variant.types))
    if cfg.sqa_share == 0:
        return inst
    sq = LlavaDataset(sqa_json, image_folder=scienceqa_dir(cfg))
    # repeat the (small) ScienceQA split so it makes up ~sqa_share of the samples
    reps = max(1, round(cfg.sqa_share / (1 - cfg.sqa_share) * len(inst) / max(1, len(sq))))
    return ConcatDataset([inst] + [sq] * reps)


def _prepare(cfg: LlavaConfig, variant: Variant):
    """Model for a variant's stage 2 (stage-1 connector loaded, if any) and its TrainConfig."""
    model, proc = build_model(cfg, variant.connector)
    if variant.stage1:
        model.connector.load_state_dict(load_file(ensure_stage1(cfg, variant.connector) / "connector.safetensors"))
    tc = _train_config(cfg, variant.recipe, cfg.stage2_steps, cfg.stage2_batch,
                       lr_connector=cfg.stage2_lr_connector, lr_llm=cfg.stage2_lr_llm)
    return model, proc, tc


def ensure_stage2(cfg: LlavaConfig, variant: Variant = MAIN) -> Path:
    """Stage 2 of ``variant``: connector + LLM (or QLoRA adapters) on instructions + ScienceQA train.

    Cached folder: ``trainable.safetensors`` (every tensor stage 2 trained), ``losses.json``,
    ``variant.json``, ``scienceqa_train_llava.json`` (notebook 03).
    """
    from vlkit.train import train

    def build(tmp: Path) -> None:
        TRAIN_CALLS["stage2"] += 1
        model, proc, tc = _prepare(cfg, variant)
        problems = sqa.select(sqa.load_problems(scienceqa_dir(cfg)), split="train")
        atomic.write_json(tmp / "scienceqa_train_llava.json", stage2_scienceqa_records(cfg, problems),
                          indent=None)
        ds = stage2_dataset(cfg, variant, tmp / "scienceqa_train_llava.json")
        r = train(model, ds, tc, processor=proc)
        trained = {n: p.detach().contiguous() for n, p in model.named_parameters() if p.requires_grad}
        save_file(trained, tmp / "trainable.safetensors")
        atomic.write_json(tmp / "losses.json", {"loss": r.losses, "seconds": r.seconds,
                                                "tokens_per_s": r.tokens_per_s, "examples": len(ds)})
        atomic.write_json(tmp / "variant.json", dataclasses.asdict(variant))

    return cache.cached(paths.artifacts_dir(cfg.profile), "llava-stage2", stage2_key(cfg, variant), build)


def load_stage2(cfg: LlavaConfig, variant: Variant = MAIN):
    """The trained model of ``variant`` (trained first if needed) and its processor, in eval mode.

    Rebuilds the architecture (4-bit + LoRA for QLoRA) and loads the tensors stage 2 trained.
    """
    from vlkit.train import apply_recipe
    path = ensure_stage2(cfg, variant)
    model, proc, tc = _prepare(cfg, variant)
    apply_recipe(model, tc)
    weights = load_file(path / "trainable.safetensors")
    missing = set(weights) - {n for n, _ in model.named_parameters()}
    if missing:
        raise ValueError(f"{path}: trained tensors the model does not have, e.g. {sorted(missing)[:3]}")
    model.load_state_dict(weights, strict=False)
    model.eval()
    return model, proc


def losses(cfg: LlavaConfig, variant: Variant = MAIN) -> dict[str, list[float]]:
    """Loss histories ``{"stage1": [...], "stage2": [...]}`` of a variant (stage1 empty without it)."""
    out = {"stage1": [], "stage2": json.loads((ensure_stage2(cfg, variant) / "losses.json").read_text())["loss"]}
    if variant.stage1:
        out["stage1"] = json.loads((ensure_stage1(cfg, variant.connector) / "losses.json").read_text())["loss"]
    return out


def train_seconds(cfg: LlavaConfig, variant: Variant = MAIN) -> dict[str, float]:
    """Seconds each stage of ``variant`` trained (as recorded when it was built)."""
    s2 = json.loads((ensure_stage2(cfg, variant) / "losses.json").read_text())["seconds"]
    s1 = json.loads((ensure_stage1(cfg, variant.connector) / "losses.json").read_text())["seconds"] if variant.stage1 else 0.0
    return {"stage1": s1, "stage2": s2}
