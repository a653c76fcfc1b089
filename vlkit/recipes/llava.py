"""LLaVA's recipe at small scale: its config, its ablation variants and its two stages (notebook 03).

Stage 1 (*feature alignment*): vision tower and LLM frozen, only the connector trains, on
image-caption pairs (``captions.json``), lr 1e-3. The connector learns to put visual features
where the LLM's word embeddings are.

Stage 2 (*end-to-end fine-tuning*): connector + LLM train on the instruction data
(``llava_instruct.json``: conversation / detail / reasoning) plus the ScienceQA-format train
split turned into LLaVA conversations, as LLaVA fine-tunes on ScienceQA.

Everything generic lives in the core: the stages are :class:`vlkit.stages.Stage` s of a
:class:`vlkit.specs.ModelSpec` and :class:`vlkit.specs.TrainSpec`, trained and cached by
:func:`vlkit.stages.train_stage`, evaluated by :func:`vlkit.eval.suite.evaluate`, and written as
:mod:`vlkit.results` files. This module only says what LLaVA's rows are.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from vlkit.backbones import BackboneConfig
from vlkit.data import DataConfig
from vlkit.eval.bench import BenchSpec
from vlkit.eval.suite import EvalSpec, Evaluation
from vlkit.experiment import Row
from vlkit.specs import PRECISIONS, LoraSpec, ModelSpec, ParamGroup, TrainSpec
from vlkit.stages import Stage
from vlkit.teacher import KINDS
from vlkit.training_data import ANSWER_STYLES, Captions, InstructionMix
from vlkit.world.scienceqa import ScienceQAConfig

NOTEBOOK = "03"
RECIPES = ("full", "lora", "qlora")


@dataclass(frozen=True)
class Variant:
    """One row of the ablation table (notebook 03).

    ``connector``: registry name; ``stage1``: start stage 2 from the stage-1 connector (False =
    a freshly initialised one, LLaVA's "no pretraining" ablation); ``types``: the instruction
    types of stage 2; ``recipe``: ``"full"`` (connector + the whole LLM), ``"lora"`` (LoRA adapters on
    the fp32 LLM + connector) or ``"qlora"`` (the same on a 4-bit nf4 LLM).
    """

    name: str
    connector: str = "linear"
    stage1: bool = True
    types: tuple[str, ...] = KINDS
    recipe: str = "full"

    def __post_init__(self):
        if self.recipe not in RECIPES:
            raise ValueError(f"variant {self.name!r}: recipe must be one of {RECIPES}, got {self.recipe!r}")
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

    ``seed`` makes the data, the benchmark and the backbones; a row's *training* seed is separate
    (:func:`stages`), so another training seed never rebuilds them. ``vision`` / ``llm`` /
    ``tokenizer``: checkpoint overrides (name or path); None = the tiny backbones of notebook 02.
    ``sqa_share``: share of the stage-2 samples drawn from the ScienceQA train split (LLaVA
    fine-tunes on ScienceQA alone; mixing lets one stage 2 serve both benchmarks).
    """

    profile: str = "full"
    seed: int = 0
    vision: str | None = None
    llm: str | None = None
    tokenizer: str | None = None
    # stage 1: connector only, captions. Its loss is flat after ~40 steps (docs/findings_03.md).
    stage1_steps: int = 50
    stage1_batch: int = 32
    stage1_lr: float = 1e-3
    # stage 2: connector + LLM, instructions + ScienceQA train; sized for notebook 03's budget of ten
    # minutes on a 2-core CPU with native bf16 (docs/findings_03.md, "Timings").
    stage2_steps: int = 320
    stage2_batch: int = 16
    stage2_lr_connector: float = 1e-3
    stage2_lr_llm: float = 1e-3     # a tiny LLM pretrained at 3e-3 needs more than LLaVA's 2e-5
    lr_lora: float = 2e-3
    lora_r: int = 16
    sqa_share: float = 0.9          # the benchmark's train split dominates, as in LLaVA's SQA fine-tune
    # Each binding question is seen this many times per pass over the ScienceQA train split: the
    # lookup they teach forms after ~3,000 of them (docs/findings_03.md, "enough binding questions").
    binding_repeats: int = 5
    # ScienceQA-format problems and their train / val / test shares: ~1,000 test problems and 18,000
    # distinct training problems (1,029 distinct binding problems were memorised: docs/findings_03.md).
    n_problems: int = 20000
    sqa_splits: tuple[float, float, float] = (0.9, 0.05, 0.05)
    sqa_answer: str = "choice"      # or "answer" / "solution-first": see training_data.scienceqa_to_llava
    sqa_eval: str = "likelihood"    # or "generate": see vlkit.eval.scienceqa.answer_problems
    # tokens per example (64 of them visual); the longest problems (map directions) take 168
    max_length: int = 192
    # "bf16" (autocast, as LLaVA trains), "no" (fp32), or "auto": bf16 where the hardware computes it
    # natively, else fp32 (README, "Speed": emulated bf16 is ~100x slower). Resolved when built.
    mixed_precision: str = "auto"
    length_bucket: int = 32         # training batches from one 32-word length bucket: less padding (0: off)
    # the LLM's attention function: eager, because the bf16 SDPA backward is slow on CPU at these sizes
    # (benchmarks/bench_llm_attention.py). Use "sdpa" or "flash_attention_2" on a GPU.
    llm_attention: str = "eager"
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
        if self.mixed_precision not in PRECISIONS:
            raise ValueError(f"mixed_precision must be one of {PRECISIONS}, got {self.mixed_precision!r}")
        from vlkit.train.hardware import resolve_precision
        self.mixed_precision = resolve_precision(self.mixed_precision)
        self.data = self.data or DataConfig.for_profile(self.profile, seed=self.seed)
        self.backbones = self.backbones or BackboneConfig.for_profile(self.profile, seed=self.seed)
        self.scienceqa = self.scienceqa or ScienceQAConfig.for_profile(
            self.profile, n_problems=self.n_problems, seed=self.seed, world=_sqa_world(self.data),
            split_shares=tuple(self.sqa_splits), resolution=self.data.resolution)
        self.mix(MAIN)  # validates binding_repeats and sqa_share now, not when stage 2 starts

    @classmethod
    def for_profile(cls, profile: str, **overrides) -> "LlavaConfig":
        """``smoke``: seconds, proves the wiring; ``full``: notebook 03's rows on 2 cores.

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

    # --- specs ----------------------------------------------------------------------------------
    def model_spec(self, variant: Variant = MAIN) -> ModelSpec:
        """The VLModel of ``variant``: notebook 02's backbones (or the overrides) + its connector."""
        tiny = not (self.vision and self.llm)  # both towers given as checkpoints: no tiny backbones are built
        return ModelSpec(backbones=self.backbones if tiny else None, vision=self.vision, llm=self.llm,
                         tokenizer=self.tokenizer,
                         connector=variant.connector, attention=self.llm_attention, max_length=self.max_length,
                         llm_quantization="nf4" if variant.recipe == "qlora" else None)

    def mix(self, variant: Variant) -> InstructionMix:
        """Stage 2's data: the variant's instruction types + the ScienceQA train split."""
        return InstructionMix(data=self.data, scienceqa=self.scienceqa, types=variant.types,
                              sqa_share=self.sqa_share, binding_repeats=self.binding_repeats,
                              sqa_answer=self.sqa_answer)

    def _train(self, groups, steps: int, batch: int, seed: int, lora: LoraSpec | None = None) -> TrainSpec:
        return TrainSpec(groups=groups, steps=steps, batch_size=batch, mixed_precision=self.mixed_precision,
                         length_bucket=self.length_bucket, seed=seed, lora=lora, progress=self.progress)

    def stage1(self, connector: str = "linear", seed: int = 0) -> Stage:
        """Stage 1: the connector alone on captions."""
        variant = Variant("stage 1", connector=connector)
        return Stage(model=self.model_spec(variant),
                     train=self._train((ParamGroup("connector", self.stage1_lr),), self.stage1_steps,
                                       self.stage1_batch, seed),
                     data=Captions(self.data), label=f"stage 1 ({connector}, seed {seed})", profile=self.profile)

    def stage2(self, variant: Variant = MAIN, seed: int = 0) -> Stage:
        """Stage 2 of ``variant`` at training seed ``seed``, from its stage 1 at the same seed."""
        if variant.recipe in ("lora", "qlora"):
            groups = (ParamGroup("connector", self.stage2_lr_connector), ParamGroup("lora", self.lr_lora))
            lora = LoraSpec(r=self.lora_r, alpha=2 * self.lora_r)
        else:
            groups = (ParamGroup("connector", self.stage2_lr_connector), ParamGroup("llm", self.stage2_lr_llm))
            lora = None
        return Stage(model=self.model_spec(variant),
                     train=self._train(groups, self.stage2_steps, self.stage2_batch, seed, lora),
                     data=self.mix(variant), init=self.stage1(variant.connector, seed) if variant.stage1 else None,
                     label=f"stage 2 ({variant.name}, seed {seed})", profile=self.profile)

    def eval_spec(self, blind: bool = True) -> EvalSpec:
        """The common suite, with LLaVA-Bench-style questions about held-out scenes."""
        return EvalSpec(scienceqa=self.scienceqa, scoring=self.sqa_eval, max_new_tokens=self.sqa_max_new_tokens,
                        blind=blind, batch_size=self.eval_batch, mixed_precision=self.mixed_precision,
                        bench=BenchSpec(data=self.data, scenes=self.bench_scenes,
                                        max_new_tokens=self.bench_max_new_tokens, seed=self.seed),
                        progress=self.progress)


def plan(cfg: LlavaConfig, train_seeds: tuple[int, ...] | list[int] = (0,),
         variants: tuple[Variant, ...] = VARIANTS) -> list[Row]:
    """Notebook 03's rows: the main variant at every training seed (image-blind too), every other
    variant at the first one."""
    if not train_seeds:
        raise ValueError("train_seeds must name at least one training seed")
    rows = []
    for v in variants:
        for s in (train_seeds if v == variants[0] else train_seeds[:1]):
            rows.append(Row(v.name, Evaluation(cfg.stage2(v, s), cfg.eval_spec(blind=v == variants[0]))))
    return rows


def loss_histories(rows: list[Row]) -> dict[str, dict[str, list[float]]]:
    """``variant -> {"stage1": [...], "stage2": [...]}`` losses, for each variant's first row (notebook 03)."""
    from vlkit.stages import stage_info
    out: dict[str, dict[str, list[float]]] = {}
    for row in rows:
        if row.name in out:
            continue
        stage = row.evaluation.stage
        out[row.name] = {"stage1": stage_info(stage.init)["loss"] if stage.init is not None else [],
                         "stage2": stage_info(stage)["loss"]}
    return out


def from_parameters(profile: str, seed: int = 0, train_seeds=(0,), vision_checkpoint: str | None = None,
                    llm_checkpoint: str | None = None, tokenizer_checkpoint: str | None = None,
                    **_) -> tuple[LlavaConfig, list[Row]]:
    """Notebook 03's config and rows from its parameters cell (the notebook and ``vlkit run --dry-run``
    both call this, so what the dry run lists is what the notebook trains)."""
    cfg = LlavaConfig.for_profile(profile, seed=seed, vision=vision_checkpoint, llm=llm_checkpoint,
                                  tokenizer=tokenizer_checkpoint)
    return cfg, plan(cfg, list(train_seeds))
