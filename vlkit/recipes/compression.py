"""Visual-token compression (VMTC, 2411.15453, and its peers) on notebook 03's model: the recipe (notebook 06).

Two parts:

- **training-free**: every method (:data:`METHODS`) switched on in notebook 03's main model (stage 2 of
  its main variant, the first training seed) at each keep ratio, evaluated by the common suite with a
  :class:`vlkit.eval.suite.Switches` (one cached evaluation per method and ratio) plus the short-answer
  VQA set (:mod:`vlkit.eval.short_vqa`); the uncompressed model under the same spec is the 100% point;
- **fine-tuned**: notebook 03's main model (stage 2, each training seed) trained on for ``adapt_steps``
  more steps of its own stage-2 recipe with VMTC on at 50% (the model spec carries the compressor, so
  training and evaluation see the same tokens); the control arm is the same continuation without a
  compressor, so the two arms differ by the compressor only, training budget included. The best other
  method at 50% (by the training-free grid) is trained the same way at the first seed.

Why a continuation and not stage 2 from stage 1 with the compressor on: a stage 2 costs ~90 s here,
and four of them (VMTC at three seeds, the best other method at one) took 370 of the notebook's
10 minutes beside a grid of 35 evaluations (notebook 06's first full runs: 790 s in all;
docs/findings_06.md). The continuation asks how a trained model fares once it is adapted to the
reduced tokens, the way a token reduction is usually applied to a released LLaVA.

Limits of the tiny backbones, stated rather than hidden: ToMe merges at most half of the unprotected
tokens per layer in the tower layers before the feature layer, so it cannot reach every ratio
(:meth:`CompressionConfig.tome_lowest`: 0.125 on notebook 02's 4-layer tower, 0.5 on the smoke profile's
2-layer one) and its lower points are skipped; FastV needs a layer after K: on the 4-layer LLM ``K=1``
(the paper's K=2 counted from 1) leaves layers 0-1 uncut and cuts layers 2-3.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from vlkit import cache
from vlkit.eval.suite import EvalSpec, Evaluation, Switches
from vlkit.experiment import Row
from vlkit.recipes import llava
from vlkit.stages import Stage

NOTEBOOK = "06"
# connector-side (plan + merge), in the tower, in the LLM, and the two content-blind baselines
METHODS = ("vmtc", "visionzip", "prumerge", "tome", "fastv", "pool", "random")
RATIOS = (0.1, 0.25, 0.5, 0.75, 0.9)
REFERENCE = "uncompressed 100%"


def percent(ratio: float) -> str:
    """``0.5`` -> ``"50%"``, ``0.125`` -> ``"12.5%"``."""
    return f"{100 * ratio:g}%"


@dataclass(frozen=True)
class Point:
    """One configuration of the grid: ``method`` at keep ratio ``ratio`` with its other ``options``
    (``"identity"`` at 1.0 is the uncompressed reference) (notebook 06)."""

    method: str
    ratio: float
    options: dict = field(default_factory=dict)

    @property
    def name(self) -> str:
        return REFERENCE if self.method == "identity" else f"{self.method} {percent(self.ratio)}"

    @property
    def compressor_options(self) -> dict:
        return {} if self.method == "identity" else {**self.options, "keep_ratio": self.ratio}

    @property
    def switches(self) -> Switches:
        if self.method == "identity":
            return Switches()
        return Switches(token_reduction=self.method, token_reduction_options=self.compressor_options)

    @property
    def config(self) -> tuple[str, dict]:
        """``(compressor name, options)`` for :meth:`vlkit.model.VLModel.set_token_reduction`."""
        return self.method, self.compressor_options


@dataclass
class CompressionConfig:
    """Everything notebook 06 evaluates and trains (notebook 06).

    ``llava``: notebook 03's config (its main model, data, benchmark, batch and precision). ``ratios``:
    the keep ratios of the training-free grid; ``full_grid``: every method at every ratio (False, the smoke
    profile: every method at ``finetune_ratio``, VMTC also at every ratio). ``finetune_ratio``: the
    budget the fine-tuned arms train with; ``adapt_steps``: the steps of stage 2's recipe (batch, learning
    rates, data) they train on for, from notebook 03's stage 2 (64: a fifth of its 320). ``fastv_K``: FastV's ranking layer (0-based). ``short_vqa``: questions of
    the short-answer set (200 at full: 300 cost ~1 s more per evaluation, ~40 s over the notebook's 39,
    past its 10 minutes). ``margin``: points an arm may lose and still count as "accuracy kept" (the paper
    loses 0.4 on GQA and 0.1 on VQA-v2 at 50%; a point is that rounded up). ``latency_repeats``,
    ``latency_batch``: the interleaved prefill timing; ``token_images``: test images the mean number of
    tokens reaching the LLM is counted on. ``n_boot``: bootstrap replicates of the grid's comparisons.
    """

    llava: llava.LlavaConfig
    ratios: tuple[float, ...] = RATIOS
    methods: tuple[str, ...] = METHODS
    full_grid: bool = True
    finetune_ratio: float = 0.5
    adapt_steps: int = 64
    fastv_K: int = 1
    short_vqa: int = 200
    margin: float = 1.0
    latency_repeats: int = 7
    latency_batch: int = 8
    token_images: int = 256
    n_boot: int = 2000
    progress: bool = True

    def __post_init__(self):
        from vlkit.compression import available_compressors
        self.ratios, self.methods = tuple(float(r) for r in self.ratios), tuple(self.methods)
        if not self.ratios or any(not 0 < r < 1 for r in self.ratios):
            raise ValueError(f"ratios must be keep ratios in (0, 1) (1.0 is the reference), got {self.ratios}")
        unknown = [m for m in self.methods if m not in available_compressors()]
        if unknown:
            raise ValueError(f"unknown compressor(s) {unknown}; known: {', '.join(available_compressors())}")
        if "vmtc" not in self.methods:
            raise ValueError("notebook 06 fine-tunes VMTC: methods must include 'vmtc'")
        if not 0 < self.finetune_ratio < 1:
            raise ValueError(f"finetune_ratio must be in (0, 1), got {self.finetune_ratio}")
        if not isinstance(self.adapt_steps, int) or self.adapt_steps < 1:
            raise ValueError(f"adapt_steps must be a positive number of steps, got {self.adapt_steps!r}")
        layers = self.llava.backbones.llm_layers
        if not self.llava.llm and not 0 <= self.fastv_K <= layers - 2:
            raise ValueError(f"fastv_K={self.fastv_K}: a {layers}-layer LLM needs 0 <= K <= {layers - 2} "
                             "(a layer after K to cut)")

    @classmethod
    def for_profile(cls, profile: str, ratios=None, **overrides) -> "CompressionConfig":
        """``smoke``: every method once at 50% (VMTC also at the other ratios), a dozen short-VQA questions,
        FastV at K=0 (its LLM has two layers); ``full``: the grid of every method x ratio.

        ``ratios`` (None: :data:`RATIOS`) and overrides equal to None keep the profile's value."""
        lcfg = llava.LlavaConfig.for_profile(profile, **dict(overrides.pop("llava", {})))
        sizes = {"smoke": dict(full_grid=False, fastv_K=0, short_vqa=12, adapt_steps=2, latency_repeats=3, latency_batch=4,
                               token_images=16, n_boot=200),
                 "full": {}}
        if profile not in sizes:
            raise ValueError(f"unknown profile {profile!r}; use one of {', '.join(sizes)}")
        kw = {**sizes[profile], "progress": lcfg.progress, **{k: v for k, v in overrides.items() if v is not None}}
        return cls(llava=lcfg, ratios=tuple(ratios) if ratios is not None else RATIOS, **kw)

    # --- what the tiny backbones allow ----------------------------------------------------------
    def _tower(self) -> tuple[int, int] | None:
        """(patches, ToMe's merging layers) of notebook 02's tower; None for a tower given as a checkpoint."""
        if self.llava.vision:
            return None
        b = self.llava.backbones
        # hidden_states[f] is the output of layers 0..f-1: those layers compute the features and can merge
        return (b.image_size // b.patch_size) ** 2, self.llava.model_spec().vision_feature_layer % (b.vision_layers + 1)

    def tome_lowest(self) -> float | None:
        """The lowest keep ratio ToMe reaches on this tower (None for a tower given as a checkpoint).

        ToMe merges at most half of the unprotected tokens per layer, in the layers that compute the
        feature layer (-2 of 4: layers 0-2): 65 -> 33 -> 17 -> 9 tokens, 8 of 64 patches, 0.125."""
        from vlkit.compressors.tome import reachable
        if (tower := self._tower()) is None:
            return None
        patches, merging = tower
        return (patches - reachable(patches + 1, merging, 1)) / patches

    def reaches(self, method: str, ratio: float) -> bool:
        """Whether ``method`` can run at ``ratio`` here (only ToMe is bounded; it keeps ``round(ratio x P)``
        patches, as :class:`vlkit.compressors.tome.ToMe` counts them)."""
        from vlkit.compressors.tome import reachable
        if method != "tome" or (tower := self._tower()) is None:
            return True
        patches, merging = tower
        return patches - max(1, int(ratio * patches + 0.5)) <= reachable(patches + 1, merging, 1)

    def options(self, method: str) -> dict:
        """A method's options besides its keep ratio: FastV's ranking layer."""
        return {"K": self.fastv_K} if method == "fastv" else {}

    def point(self, method: str, ratio: float) -> Point:
        return Point(method, ratio, self.options(method))

    # --- specs -----------------------------------------------------------------------------------
    def eval_spec(self) -> EvalSpec:
        """Notebook 03's suite without its image-blind pass, LLaVA-Bench and per-evaluation efficiency: a
        compressor changes neither what a blank image shows nor needs a judge, and its FLOPs and latency are
        measured for every point in one process instead (:func:`vlkit.eval.compression.measure`; a latency
        measured alone in each evaluation could not be compared across them). ~0.4 s less per point."""
        return dataclasses.replace(self.llava.eval_spec(blind=False), bench=None, efficiency=False)

    def short_vqa_spec(self):
        """The short-answer set, drawn in the ScienceQA-format benchmark's world at its resolution."""
        from vlkit.benchmarks.short_vqa import ShortVQAConfig
        from vlkit.eval.short_vqa import ShortVQASpec
        s = self.llava.scienceqa
        return ShortVQASpec(task=ShortVQAConfig(n=self.short_vqa, resolution=s.resolution, world=s.world),
                            batch_size=self.llava.eval_batch, mixed_precision=self.llava.mixed_precision,
                            progress=self.progress)

    def reference_stage(self, seed: int) -> Stage:
        """Notebook 03's main model at training seed ``seed`` (its stage 2, cached by notebook 03)."""
        return self.llava.stage2(llava.MAIN, seed)

    def compressed_stage(self, method: str, seed: int) -> Stage:
        """Notebook 03's main model trained on for ``adapt_steps`` with ``method`` on at ``finetune_ratio``.

        The continuation of :meth:`control_stage` with the compressor in the model spec: same start (notebook
        03's stage 2 at ``seed``), data, batch, learning rates and steps, so the arms differ by the compressor."""
        p = self.point(method, self.finetune_ratio)
        return self._continued(seed, p.name, compressor=method, compressor_options=p.compressor_options)

    def control_stage(self, seed: int) -> Stage:
        """Notebook 03's main model trained on for ``adapt_steps`` of its stage-2 recipe, uncompressed: the
        fine-tuned comparison's reference arm (the same extra training as the compressed arms)."""
        return self._continued(seed, REFERENCE)

    def _continued(self, seed: int, name: str, **model) -> Stage:
        base = self.reference_stage(seed)
        return dataclasses.replace(base, model=base.model.replace(**model) if model else base.model,
                                   train=dataclasses.replace(base.train, steps=self.adapt_steps), init=base,
                                   label=f"stage 2 + {self.adapt_steps} steps ({name}, seed {seed})")


def grid(cfg: CompressionConfig) -> list[Point]:
    """The training-free grid, the uncompressed reference first; ratios a method cannot reach are left out
    (:func:`skipped` lists them)."""
    points = [Point("identity", 1.0)]
    for method in cfg.methods:
        ratios = cfg.ratios if cfg.full_grid or method == "vmtc" else (cfg.finetune_ratio,)
        points += [cfg.point(method, r) for r in ratios if cfg.reaches(method, r)]
    return points


def skipped(cfg: CompressionConfig) -> list[tuple[str, float, str]]:
    """``(method, ratio, why)`` for each ratio of the grid a method cannot run at."""
    out = []
    for method in cfg.methods:
        ratios = cfg.ratios if cfg.full_grid or method == "vmtc" else (cfg.finetune_ratio,)
        out += [(method, r, f"ToMe reaches keep ratio {cfg.tome_lowest():g} at the lowest on this tower")
                for r in ratios if not cfg.reaches(method, r)]
    return out


def grid_rows(cfg: CompressionConfig, seed: int = 0) -> list[Row]:
    """One row per grid point, on notebook 03's main model at training seed ``seed``."""
    stage = cfg.reference_stage(seed)
    return [Row(p.name, Evaluation(stage, cfg.eval_spec(), p.switches)) for p in grid(cfg)]


def finetuned_name(method: str, cfg: CompressionConfig) -> str:
    """``"vmtc 50%, fine-tuned"``; ``"uncompressed 100%, fine-tuned"`` for the control (``"identity"``)."""
    name = REFERENCE if method == "identity" else cfg.point(method, cfg.finetune_ratio).name
    return f"{name}, fine-tuned"


def best_other(cfg: CompressionConfig, seed: int = 0) -> str | None:
    """The method other than VMTC with the highest ScienceQA IMG accuracy at ``finetune_ratio`` in the
    training-free grid (ties: the first in :data:`METHODS`), or None until all of those are evaluated.

    Read from the cached evaluations only, so the dry run can say it without evaluating anything."""
    from vlkit.eval.suite import evaluate
    rows = {r.name: r for r in grid_rows(cfg, seed)}
    candidates = [cfg.point(m, cfg.finetune_ratio).name for m in cfg.methods if m != "vmtc"
                  and cfg.reaches(m, cfg.finetune_ratio)]
    if not candidates or not all(rows[n].evaluation.is_done() for n in candidates):
        return None
    img = {n: evaluate(rows[n].evaluation)["scienceqa"]["IMG"] for n in candidates}
    best = max(candidates, key=lambda n: (img[n], -candidates.index(n)))
    return best.split(" ")[0]


def finetune_rows(cfg: CompressionConfig, train_seeds: list[int], other: str | None) -> list[Row]:
    """The uncompressed control and VMTC at ``finetune_ratio``, trained on at every training seed; ``other``
    (the best other method, :func:`best_other`) at the first seed; all on the grid's evaluation spec."""
    if not train_seeds:
        raise ValueError("train_seeds must name at least one training seed")
    rows = [Row(finetuned_name("identity", cfg), Evaluation(cfg.control_stage(s), cfg.eval_spec()))
            for s in train_seeds]
    rows += [Row(finetuned_name("vmtc", cfg), Evaluation(cfg.compressed_stage("vmtc", s), cfg.eval_spec()))
             for s in train_seeds]
    if other is not None:
        if other == "vmtc" or other not in cfg.methods:
            raise ValueError(f"the other method must be one of {cfg.methods} besides vmtc, got {other!r}")
        rows.append(Row(finetuned_name(other, cfg),
                        Evaluation(cfg.compressed_stage(other, train_seeds[0]), cfg.eval_spec())))
    return rows


def from_parameters(profile: str, seed: int = 0, train_seeds=(0,), ratios=None,
                    **_) -> tuple[CompressionConfig, list[Row], list[Row]]:
    """Notebook 06's config, its grid rows (first training seed) and the fine-tuned rows (the best other
    method once the grid at 50% is evaluated); the notebook and ``vlkit run --dry-run`` both call this."""
    train_seeds = list(train_seeds)
    if not train_seeds:
        raise ValueError("train_seeds must name at least one training seed")
    cfg = CompressionConfig.for_profile(profile, ratios=ratios, llava={"seed": seed})
    return cfg, grid_rows(cfg, train_seeds[0]), finetune_rows(cfg, train_seeds, best_other(cfg, train_seeds[0]))


# --- what the results files get besides the common suite --------------------------------------------


class Extras:
    """``extra`` for :func:`vlkit.experiment.run` (notebook 06): the counting subset (from the suite's own
    answers), the short-answer VQA set (a cached evaluation of the same model and switches) and, for grid
    points measured in this process (:func:`vlkit.eval.compression.measure`), the visual tokens reaching
    the LLM and the interleaved latency (with the uncompressed model as its reference); analytic prefill
    FLOPs (``prefill_flops``, by part in ``prefill_flops_analytic``) for them and for the fine-tuned rows."""

    def __init__(self, cfg: CompressionConfig, measured: dict[str, dict] | None = None):
        self.cfg, self.measured = cfg, measured or {}
        self._read: dict = {}

    def sets(self, spec: EvalSpec):
        """(counting subset, short-answer questions, their baselines) of ``spec``'s benchmark, read once."""
        from vlkit.benchmarks import scienceqa as sqa
        from vlkit.benchmarks import short_vqa as sv
        from vlkit.eval.scienceqa import counting_subset
        from vlkit.world.scienceqa import ensure_scienceqa
        key = (cache.config_key(spec.scienceqa), spec.split)
        if key not in self._read:
            root = ensure_scienceqa(spec.scienceqa)
            counting = counting_subset(sqa.select(sqa.load_problems(root), split=spec.split))
            folder = sv.ensure(self.cfg.short_vqa_spec().task, self.cfg.llava.profile)
            self._read[key] = (counting, sv.load(folder),
                               {name: b["accuracy"] for name, b in sv.baselines(folder).items()})
        return self._read[key]

    def short_vqa(self, row: Row) -> dict:
        from vlkit.eval import short_vqa
        ev = row.evaluation
        return short_vqa.evaluate(ev.stage, self.cfg.short_vqa_spec(), ev.switches)

    def __call__(self, row: Row, raw: dict) -> dict:
        from vlkit.benchmarks import scienceqa as sqa
        from vlkit.eval.scienceqa import subset_accuracy
        counting, _, short_base = self.sets(row.evaluation.spec)
        short = self.short_vqa(row)
        out = {"metrics": {"Counting": subset_accuracy(counting, raw["answers"]), "Short VQA": short["metrics"]},
               "baselines": {"Counting": {"chance": sqa.chance_accuracy(counting) if counting else None},
                             "Short VQA": short_base},
               "short_vqa_seconds": short["seconds"]}
        m = self.measured.get(row.name)
        if m is not None:
            out["metrics"]["Visual tokens"] = m["tokens"]
            out["latency"] = m["latency"]
        # FLOPs depend on the shapes and the reduction only: a fine-tuned row costs what its training-free
        # point does. Analytic, which equals FlopCounterMode on eager attention and, unlike it, counts
        # SDPA's attention on CPU too (vlkit.flops)
        stage = row.evaluation.stage
        point = (self.cfg.point(stage.model.compressor, stage.model.compressor_options["keep_ratio"]).name
                 if stage.model.compressor != "identity" else REFERENCE)
        m = m or self.measured.get(point)
        if m is not None:
            out["prefill_flops"] = m["flops"]["total"]
            out["prefill_flops_analytic"] = {"tiny": m["flops"], "llava_7b": m["flops_7b"], "n_text": m["n_text"]}
        return out


# --- the fine-tuned comparison ------------------------------------------------------------------------


@dataclass
class Finetuned:
    """The fine-tuned comparison of notebook 06 (:func:`compare_finetuned`).

    ``img`` / ``short``: VMTC fine-tuned minus the uncompressed control fine-tuned alike, every seed, paired
    over the image problems / the short-answer questions, with their ``*_verdict`` on "accuracy kept" (no
    worse than ``margin`` points); ``training_free``: VMTC fine-tuned minus VMTC switched on without training
    (first seed); ``other``: the best other method fine-tuned minus the control (first seed), None without one;
    ``values``: metric -> arm -> per-seed accuracy, for :func:`vlkit.plots.compression.finetune_comparison`."""

    img: object
    img_verdict: str
    short: object
    short_verdict: str
    training_free: object
    other: object | None
    values: dict


def compare_finetuned(cfg: CompressionConfig, grid_out: list, finetuned_out: list, extras: Extras,
                      subset: dict[str, dict]) -> Finetuned:
    """Paired comparisons of the fine-tuned rows (notebook 06): outcomes of :func:`vlkit.experiment.run` on
    :func:`grid_rows` and :func:`finetune_rows`; ``subset``: the problems compared (the image problems); the
    short-answer questions are ``extras``' set. Notebook 03's model before the extra steps (the grid's
    reference) joins ``values`` for the figure."""
    from vlkit import stats
    from vlkit.eval.short_vqa import correct_matrix as short_matrix
    from vlkit.experiment import correct_matrix
    questions = extras.sets(cfg.eval_spec())[1]
    control, vmtc = finetuned_name("identity", cfg), finetuned_name("vmtc", cfg)
    first = next(o.row.seed for o in finetuned_out if o.row.name == control)
    vmtc_free = cfg.point("vmtc", cfg.finetune_ratio).name
    arms = {control: [o for o in finetuned_out if o.row.name == control],
            vmtc: [o for o in finetuned_out if o.row.name == vmtc],
            f"{REFERENCE} (notebook 03, before)": [o for o in grid_out if o.row.name == REFERENCE],
            f"{vmtc_free}, training-free": [o for o in grid_out if o.row.name == vmtc_free]}
    others = [o for o in finetuned_out if o.row.name not in (control, vmtc)]
    if others:
        method = others[0].row.name.split(" ")[0]
        arms[others[0].row.name] = others
        arms[f"{cfg.point(method, cfg.finetune_ratio).name}, training-free"] = [
            o for o in grid_out if o.row.name == cfg.point(method, cfg.finetune_ratio).name]
    short = {arm: [extras.short_vqa(o.row) for o in outs] for arm, outs in arms.items()}
    ref_arm = next(iter(arms))

    def img(a: str, b: str, seed: int | None = None):
        pick = (lambda outs: [o for o in outs if o.row.seed == seed]) if seed is not None else (lambda outs: outs)
        return stats.paired_bootstrap(correct_matrix(pick(arms[a]), arms[a][0].row.name, subset),
                                      correct_matrix(pick(arms[b]), arms[b][0].row.name, subset))

    img_c = img(ref_arm, vmtc)
    short_c = stats.paired_bootstrap(short_matrix(short[ref_arm], questions), short_matrix(short[vmtc], questions))
    chance = extras.sets(cfg.eval_spec())[2]["chance"]
    levels = [e["metrics"]["accuracy"] for e in short[ref_arm] + short[vmtc]]
    short_v = ("not testable at this scale" if stats.at_floor_or_ceiling(levels, chance)
               else stats.verdict(short_c, "no worse", cfg.margin))
    return Finetuned(
        img=img_c, img_verdict=stats.verdict(img_c, "no worse", cfg.margin), short=short_c, short_verdict=short_v,
        training_free=img(f"{vmtc_free}, training-free", vmtc, first) if arms[f"{vmtc_free}, training-free"] else None,
        other=img(ref_arm, others[0].row.name, first) if others else None,
        values={"IMG": {a: [o.result["metrics"]["ScienceQA"]["IMG"] for o in outs] for a, outs in arms.items()},
                "Short VQA": {a: [e["metrics"]["accuracy"] for e in evs] for a, evs in short.items()}})
