"""The Bottleneck Adapter paper's recipe (2407.17813): adapters + [cls] neck, tuned end to end (notebook 04).

Multimodal Model Tuning (MMT): one stage in which Bottleneck Adapters in every LLM block and every
vision-tower block (:mod:`vlkit.adapters`) and the visual neck of the ``cls_every_k`` connector train
together, the backbones frozen, gradients flowing through both towers. The ablations of the notebook
are :class:`Variant` s of it: a non-linearity in the adapter, the number of groups, the rank, adapters
in the LLM only, modular training (the neck aligned first, then the adapters), notebook 03's patch
connector, and LoRA / QLoRA in place of the LLM-side adapters with the same number of parameters.

Rows train on notebook 03's data (:meth:`LlavaConfig.mix`) for the same steps x batch as its stage 2
and are evaluated with the same common suite, so their numbers sit beside notebook 03's.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from transformers import AutoConfig

import vlkit.adapters  # noqa: F401  (registers the "bottleneck" insertion)
from vlkit.eval.suite import EvalSpec, Evaluation
from vlkit.experiment import Row
from vlkit.recipes import llava
from vlkit.specs import InsertionSpec, LoraSpec, ModelSpec, ParamGroup, TrainSpec
from vlkit.stages import Stage

NOTEBOOK = "04"
RECIPES = ("mmt", "modular", "lora", "qlora")


@dataclass(frozen=True)
class Variant:
    """One row of notebook 04 (None fields take the config's value).

    ``recipe``: ``"mmt"`` (adapters + neck, one stage), ``"modular"`` (the neck first with the LLM
    frozen and no adapter training, then the adapters, the same total steps), ``"lora"`` /
    ``"qlora"`` (LoRA on the LLM's q/v projections instead of its adapters, vision adapters kept;
    qlora on a 4-bit nf4 LLM). ``towers``: where the adapters sit. ``connector``: ``"cls_every_k"``
    (the paper's) or ``"linear"`` (notebook 03's patch projection).
    """

    name: str
    recipe: str = "mmt"
    connector: str = "cls_every_k"
    rank_factor: float = 1.0
    groups: int | None = None
    activation: str | None = None
    towers: tuple[str, ...] = ("llm", "vision")

    def __post_init__(self):
        if self.recipe not in RECIPES:
            raise ValueError(f"variant {self.name!r}: recipe must be one of {RECIPES}, got {self.recipe!r}")
        object.__setattr__(self, "towers", tuple(self.towers))


MAIN = Variant("BA + MMT")
NONLINEAR = Variant("BA + MMT, GELU", activation="gelu")
LORA = Variant("LoRA (LLM) + BA (vision)", recipe="lora")
QLORA = Variant("QLoRA (LLM) + BA (vision)", recipe="qlora")
ABLATIONS = (
    Variant("groups 1", groups=1),
    Variant("groups 4", groups=4),
    Variant("rank x1/2", rank_factor=0.5),
    Variant("rank x2", rank_factor=2.0),
    Variant("adapters in the LLM only", towers=("llm",)),
    Variant("modular (neck, then adapters)", recipe="modular"),
    Variant("BA + linear patch connector", connector="linear"),
)


@dataclass
class BottleneckConfig:
    """Everything notebook 04 trains and evaluates (notebook 04).

    ``llava``: notebook 03's config, for its data, benchmark, backbones, steps x batch, precision and
    evaluation. ``rank``: 8 for the tiny 256-wide LLM (the paper's 16 on 4096-wide LLaMA is 0.4% of the
    width; 8 is 3% here, the smallest rank whose half, 4, still divides into 4 groups). ``k = 1``: the
    tiny tower has 4 layers, so [cls] after each of them gives 4 visual tokens (LaVIN: every 4th of 24).
    ``lr``: LaVIN's 9e-3 for adapters and neck, swept x1/3 and x3 on the main seed
    (``lr_sweep``), like LoRA's around the 2e-3 notebook 03 uses. ``lora_r = 3`` on q/v: 4 blocks x 2 x
    (256 + 256) x 3 = 12,288 parameters, the LLM-side adapters' 13,344 (:func:`lora_rank_matching`).
    """

    llava: llava.LlavaConfig
    rank: int = 8
    groups: int = 2
    dropout: float = 0.1           # RepAdapter's
    scale: float = 1.0
    k: int = 1
    neck: int = 128                # the paper's
    lr: float = 9e-3               # LaVIN's
    lr_sweep: tuple[float, ...] = (3e-3, 9e-3, 2.7e-2)
    weight_decay: float = 0.02     # LaVIN's
    lora_r: int = 3
    lora_lr: float = 2e-3
    lora_lr_sweep: tuple[float, ...] = (6.7e-4, 2e-3, 6e-3)
    lora_targets: tuple[str, ...] = ("q_proj", "v_proj")
    modular_share: float = 0.5     # share of the steps the modular recipe gives its first (neck) phase
    progress: bool = True

    @classmethod
    def for_profile(cls, profile: str, **overrides) -> "BottleneckConfig":
        """Notebook 04 on ``profile``; ``llava`` overrides go to :meth:`LlavaConfig.for_profile`.

        ``smoke`` sweeps one learning rate per method (the wiring, not the choice)."""
        lkw = dict(overrides.pop("llava", {}))
        if overrides.get("progress") is not None:
            lkw["progress"] = overrides["progress"]
        lcfg = llava.LlavaConfig.for_profile(profile, **lkw)
        sizes = {"smoke": dict(lr_sweep=(cls.lr,), lora_lr_sweep=(cls.lora_lr,)), "full": {}}[profile]
        kw = {**sizes, "progress": lcfg.progress, **{k: v for k, v in overrides.items() if v is not None}}
        return cls(llava=lcfg, **kw)

    def vision_layers(self, v: Variant) -> tuple[int, ...] | None:
        """The vision blocks that feed ``v``'s connector: all for the [cls] reader of the last layer, all but
        the last for notebook 03's patch connector of the penultimate layer (adapters after it train nothing)."""
        if v.connector == "cls_every_k":
            return None
        depth = self.llava.backbones.vision_layers if self.llava.backbones and not self.llava.vision else \
            AutoConfig.from_pretrained(self.llava.vision).num_hidden_layers
        return tuple(range(depth + self.llava.model_spec().vision_feature_layer + 1))

    def model_spec(self, v: Variant) -> ModelSpec:
        options = {"rank": round(self.rank * v.rank_factor), "groups": v.groups or self.groups,
                   "activation": v.activation, "dropout": self.dropout, "scale": self.scale}
        insertions = []
        if "llm" in v.towers and v.recipe not in ("lora", "qlora"):
            insertions.append(InsertionSpec("bottleneck", towers=("llm",), options=options))
        if "vision" in v.towers:
            insertions.append(InsertionSpec("bottleneck", towers=("vision",), layers=self.vision_layers(v),
                                            options=options))
        return self.llava.model_spec().replace(
            connector=v.connector,
            connector_options={"k": self.k, "neck": self.neck} if v.connector == "cls_every_k" else {},
            insertions=tuple(insertions), llm_quantization="nf4" if v.recipe == "qlora" else None,
            vision_attention="eager")  # gradients flow through the tower: eager's backward is faster

    def _train(self, groups, steps: int, seed: int, lora: LoraSpec | None = None) -> TrainSpec:
        c = self.llava
        return TrainSpec(groups=groups, steps=steps, batch_size=c.stage2_batch, weight_decay=self.weight_decay,
                         mixed_precision=c.mixed_precision, length_bucket=c.length_bucket, seed=seed, lora=lora,
                         progress=self.progress)

    def stage(self, v: Variant, seed: int = 0, lr: float | None = None) -> Stage:
        """The training of ``v`` at training seed ``seed``. ``lr``: the method's learning rate (the adapters'
        and neck's, or LoRA's; default the config's). In a LoRA row the neck and the vision adapters train at
        ``cfg.lr`` in the sweep and the rows alike, so that the LoRA rate is chosen in the setting it is used in."""
        c, model = self.llava, self.model_spec(v)
        is_lora = v.recipe in ("lora", "qlora")
        lr = lr or (self.lora_lr if is_lora else self.lr)
        adapter_lr = self.lr
        steps, data = c.stage2_steps, c.mix(llava.MAIN)
        label = f"{v.name} (seed {seed}, lr {lr:g})"
        if v.recipe == "modular":
            first = round(steps * self.modular_share)
            neck = Stage(model=model, train=self._train((ParamGroup("connector", lr),), first, seed), data=data,
                         label=f"{v.name}: neck (seed {seed})", profile=c.profile)
            return Stage(model=model, train=self._train((ParamGroup("insertions", lr),), steps - first, seed),
                         data=data, init=neck, label=f"{v.name}: adapters (seed {seed})", profile=c.profile)
        groups = [ParamGroup("connector", adapter_lr if is_lora else lr)]
        if model.insertions:
            groups.append(ParamGroup("insertions", adapter_lr if is_lora else lr))
        lora = None
        if is_lora:
            groups.append(ParamGroup("lora", lr))
            lora = LoraSpec(r=self.lora_r, alpha=2 * self.lora_r, targets=self.lora_targets)
        return Stage(model=model, train=self._train(tuple(groups), steps, seed, lora), data=data, label=label,
                     profile=c.profile)

    def eval_spec(self, blind: bool = False, split: str = "test") -> EvalSpec:
        """The common suite without LLaVA-Bench questions (notebook 04 does not report them)."""
        return dataclasses.replace(self.llava.eval_spec(blind=blind), bench=None, split=split,
                                   efficiency=split == "test")


def lora_rank_matching(cfg: BottleneckConfig, model) -> dict[str, int]:
    """Trainable parameters of the LLM-side adapters vs LoRA on ``cfg.lora_targets`` at ``cfg.lora_r``."""
    from vlkit.adapters import BottleneckAdapter
    width = model.config.text_config.hidden_size
    adapter = sum(p.numel() for p in BottleneckAdapter(width, cfg.rank, cfg.groups).parameters())
    layers = model.config.text_config.num_hidden_layers
    lora = 0
    for name in cfg.lora_targets:
        proj = model.language_model.model.layers[0].self_attn.get_submodule(name)
        lora += cfg.lora_r * (proj.in_features + proj.out_features)
    return {"adapters": adapter * layers, "lora": lora * layers}


def sweep_rows(cfg: BottleneckConfig, seed: int) -> list[Row]:
    """BA and LoRA at each of their three learning rates, main seed, scored on the validation split."""
    val = cfg.eval_spec(split="val")
    return ([Row(f"{MAIN.name}, lr {lr:g} (validation)", Evaluation(cfg.stage(MAIN, seed, lr), val))
             for lr in cfg.lr_sweep]
            + [Row(f"{LORA.name}, lr {lr:g} (validation)", Evaluation(cfg.stage(LORA, seed, lr), val))
               for lr in cfg.lora_lr_sweep])


def _method_lr(row: Row) -> float:
    return row.evaluation.stage.train.groups[-1].lr  # the adapters' (BA) or LoRA's group comes last


def best_lrs(cfg: BottleneckConfig, seed: int) -> tuple[float, float] | None:
    """(BA lr, LoRA lr) with the best validation Avg in the sweep at ``seed`` (ties: the smaller lr);
    None while any sweep row is not evaluated yet (a dry run then lists the rows at the default lrs)."""
    from vlkit.eval.suite import evaluate
    sweep = sweep_rows(cfg, seed)
    if not all(r.evaluation.is_done() for r in sweep):
        return None
    best = {}
    for r in sweep:
        method = MAIN.name if r.name.startswith(MAIN.name) else LORA.name
        avg = evaluate(r.evaluation)["scienceqa"]["Avg"]
        if method not in best or avg > best[method][0] or (avg == best[method][0] and _method_lr(r) < best[method][1]):
            best[method] = (avg, _method_lr(r))
    return best[MAIN.name][1], best[LORA.name][1]


def rows(cfg: BottleneckConfig, train_seeds: list[int], ba_lr: float, lora_lr: float) -> list[Row]:
    """The headline comparisons at every training seed (image-blind too), the ablations at the first."""
    out = []
    for v, lr in ((MAIN, ba_lr), (NONLINEAR, ba_lr), (LORA, lora_lr)):
        out += [Row(v.name, Evaluation(cfg.stage(v, s, lr), cfg.eval_spec(blind=True))) for s in train_seeds]
    out += [Row(v.name, Evaluation(cfg.stage(v, train_seeds[0], ba_lr), cfg.eval_spec())) for v in ABLATIONS]
    out.append(Row(QLORA.name, Evaluation(cfg.stage(QLORA, train_seeds[0], lora_lr), cfg.eval_spec())))
    return out


def from_parameters(profile: str, seed: int = 0, train_seeds=(0,), **_) -> tuple[BottleneckConfig, list[Row], list[Row]]:
    """Notebook 04's config, its sweep rows and its rows at the sweep's best learning rates (the config's
    defaults until the sweep is evaluated); the notebook and ``vlkit run --dry-run`` both call this."""
    cfg = BottleneckConfig.for_profile(profile, llava={"seed": seed})
    train_seeds = list(train_seeds)
    lrs = best_lrs(cfg, train_seeds[0]) or (cfg.lr, cfg.lora_lr)
    return cfg, sweep_rows(cfg, train_seeds[0]), rows(cfg, train_seeds, *lrs)


LORA16 = llava.Variant("LoRA r=16, 16-bit (notebook 03 setting)", recipe="lora")
QLORA16 = next(v for v in llava.VARIANTS if v.recipe == "qlora")


def notebook03_rows(cfg: BottleneckConfig, train_seeds: list[int]) -> list[Row]:
    """Notebook 03's full fine-tune (every seed) and QLoRA rows: cached by notebook 03, not retrained when it ran."""
    return llava.plan(cfg.llava, train_seeds, variants=(llava.MAIN, QLORA16))


def lora16_rows(cfg: BottleneckConfig, seed: int) -> list[Row]:
    """A 16-bit LoRA row at QLoRA's rank in notebook 03's own setting (64 patch tokens, its two stages)."""
    return llava.plan(cfg.llava, [seed], variants=(LORA16,))


def token_probe(cfg: BottleneckConfig) -> dict[str, dict]:
    """Notebook 02's attentive probe ("what colour is the <shape>?") on the [cls] tokens ``cls_every_k``
    reads vs the 64 patch tokens of the penultimate layer that notebook 03's connector reads."""
    from vlkit.backbones import attribute_probe, build_vision_tower
    from vlkit.backbones.probes import cls_tokens
    from vlkit.build import backbone_paths
    vision = build_vision_tower(backbone_paths(cfg.model_spec(MAIN), cfg.progress).vision)
    layers = tuple(range(cfg.k, vision.config.num_hidden_layers + 1, cfg.k))
    bcfg = cfg.llava.backbones
    return {f"[cls] after layers {', '.join(map(str, layers))}":
            attribute_probe(vision, bcfg, tokens=lambda v, pv: cls_tokens(v, pv, layers)),
            "patch tokens, penultimate layer": attribute_probe(vision, bcfg)}


def quantization_perplexity(cfg: BottleneckConfig) -> dict[str, float]:
    """Held-out perplexity of notebook 02's LLM loaded in fp32 and in 4-bit nf4, before any training:
    what quantisation alone costs the LLM that notebook 03's QLoRA row starts from."""
    from vlkit.backbones import build_llm, heldout_blocks, perplexity
    from vlkit.build import backbone_paths, load_tokenizer
    from vlkit.train.quantize import bnb_cpu_safe, quantization_config
    paths = backbone_paths(cfg.model_spec(MAIN), cfg.progress)
    blocks = heldout_blocks(cfg.llava.backbones, load_tokenizer(paths.tokenizer))
    return {"fp32": perplexity(build_llm(paths.llm), blocks),
            "nf4": perplexity(bnb_cpu_safe(build_llm(paths.llm, quantization_config=quantization_config("nf4"))),
                              blocks)}
