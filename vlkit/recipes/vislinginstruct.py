"""VisLingInstruct's recipe (2402.07398): EMA, its control, and the zero-shot tasks (notebook 05).

Enhanced Multi-modal Alignment (EMA): the ``cmaa`` connector (:mod:`vlkit.connectors`), whose projected
patches attend to the instruction, is the only part that trains; the vision tower and the LLM stay
frozen. Its control is notebook 03's linear connector trained the same way. Both start from notebook
03's main model (seed 0), so the linear projection CMAA wraps starts trained, and both train on notebook
03's instruction data for ``steps`` x notebook 03's batch, at every training seed. The zero-shot tasks
(:mod:`vlkit.zeroshot`) are generated at seeds of their own and never trained on.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from vlkit import cache, paths
from vlkit.eval.suite import Evaluation
from vlkit.experiment import Row
from vlkit.recipes import llava
from vlkit.specs import ModelSpec, ParamGroup, TrainSpec
from vlkit.stages import Stage
from vlkit.zeroshot import memes, pope, textvqa
from vlkit.zeroshot.evaluation import TASKS, ZeroShotSpec, zeroshot_results

NOTEBOOK = "05"
EMA, CONTROL = "EMA (CMAA)", "control (linear)"
SCORED = ("pope", "memes")  # TextVQA-like: the readability probe decides (findings_05: the tower cannot read)
CONFIGS = {"pope": pope.PopeConfig, "memes": memes.MemesConfig, "textvqa": textvqa.TextVQAConfig}


@dataclass
class VisLingConfig:
    """Everything notebook 05 trains and evaluates (notebook 05).

    ``llava``: notebook 03's config (data, backbones, batch, precision, its main model as the start).
    ``steps`` of connector-only training at ``lr`` (notebook 03's connector rate; 120 x 16 examples: the
    loss starts at notebook 03's level and 160 steps moved no zero-shot metric, docs/findings_05.md);
    ``heads`` of CMAA's attention; ``n_questions`` per zero-shot task."""

    llava: llava.LlavaConfig
    steps: int = 120
    lr: float = 1e-3
    heads: int = 4
    n_questions: int = 300
    rewrites: int = 1
    progress: bool = True

    @classmethod
    def for_profile(cls, profile: str, **overrides) -> "VisLingConfig":
        lkw = dict(overrides.pop("llava", {}))
        lcfg = llava.LlavaConfig.for_profile(profile, **lkw)
        sizes = {"smoke": dict(steps=4, n_questions=8), "full": {}}[profile]
        kw = {**sizes, "progress": lcfg.progress, **{k: v for k, v in overrides.items() if v is not None}}
        return cls(llava=lcfg, **kw)

    def model_spec(self, ema: bool) -> ModelSpec:
        """CMAA (EMA) or notebook 03's linear connector (the control), on notebook 03's backbones."""
        spec = self.llava.model_spec()
        return spec.replace(connector="cmaa", connector_options={"heads": self.heads}) if ema else spec

    def start(self) -> Stage:
        """Notebook 03's main model, seed 0: where both sides start."""
        return self.llava.stage2(llava.MAIN, seed=0)

    def stage(self, ema: bool, seed: int = 0) -> Stage:
        """EMA (``ema=True``) or its control at training seed ``seed``: only the connector trains."""
        c = self.llava
        train = TrainSpec(groups=(ParamGroup("connector", self.lr),), steps=self.steps, batch_size=c.stage2_batch,
                          mixed_precision=c.mixed_precision, length_bucket=c.length_bucket, seed=seed,
                          progress=self.progress)
        return Stage(model=self.model_spec(ema), train=train, data=c.mix(llava.MAIN), init=self.start(),
                     label=f"{EMA if ema else CONTROL} (seed {seed})", profile=c.profile)

    def task_config(self, name: str):
        """The zero-shot task ``name`` (``pope``, ``memes``, ``textvqa``) at ``n_questions``, drawn at the
        resolution of notebook 02's tower."""
        if name not in CONFIGS:
            raise ValueError(f"unknown zero-shot task {name!r}; known: {', '.join(CONFIGS)}")
        return CONFIGS[name](n=self.n_questions, resolution=self.llava.backbones.world.resolution)

    def task_folder(self, name: str) -> Path:
        """The zero-shot task ``name``'s folder under ``artifacts/<profile>/``, generated when missing."""
        cfg = self.task_config(name)

        def build(tmp: Path) -> None:
            TASKS[name].write(tmp / "task", cfg)
        return cache.cached(paths.artifacts_dir(self.llava.profile), f"zeroshot-{name}", cfg, build) / "task"

    def zeroshot_spec(self, name: str, sweep: bool = False) -> ZeroShotSpec:
        """Task ``name`` from per-question starting phrasings, ``rewrites`` pool rewrites for AIO."""
        return ZeroShotSpec(task=name, config=self.task_config(name), rewrites=self.rewrites, sweep=sweep,
                            mixed_precision=self.llava.mixed_precision)

    def zeroshot(self, stage: Stage, sweep: bool = False) -> dict[str, dict]:
        """``{task: result}`` of :func:`vlkit.zeroshot.evaluation.zeroshot_results` on every scored task."""
        specs = [self.zeroshot_spec(n, sweep) for n in SCORED]
        return dict(zip(SCORED, zeroshot_results(stage, specs, {n: self.task_folder(n) for n in SCORED},
                                                 self.progress)))


def stages(cfg: VisLingConfig, train_seeds: list[int]) -> dict[str, list[Stage]]:
    """``{EMA: [...], CONTROL: [...]}``: each side at every training seed, in seed order."""
    if not train_seeds:
        raise ValueError("train_seeds must name at least one training seed")
    return {EMA: [cfg.stage(True, s) for s in train_seeds], CONTROL: [cfg.stage(False, s) for s in train_seeds]}


def rows(cfg: VisLingConfig, train_seeds: list[int]) -> list[Row]:
    """Both sides at every training seed on the common suite (forgetting), and notebook 03's main model
    (seed 0, cached by notebook 03) they start from."""
    out = [Row(name, Evaluation(st, cfg.llava.eval_spec(blind=False)))
           for name, sts in stages(cfg, train_seeds).items() for st in sts]
    return out + llava.plan(cfg.llava, [0], variants=(llava.MAIN,))


def from_parameters(profile: str, seed: int = 0, train_seeds=(0,), **_) -> tuple[VisLingConfig, list[Row]]:
    """Notebook 05's config and its common-suite rows (the notebook and ``vlkit run --dry-run`` both call this)."""
    cfg = VisLingConfig.for_profile(profile, llava={"seed": seed})
    return cfg, rows(cfg, list(train_seeds))


def readability(cfg: VisLingConfig) -> dict:
    """Notebook 02's tower on the TextVQA-like task: can a probe read the writing from its patch tokens?
    (:func:`vlkit.zeroshot.readability.readability_probe`)."""
    from vlkit.backbones import build_vision_tower
    from vlkit.build import backbone_paths
    from vlkit.zeroshot.readability import readability_probe
    vision = build_vision_tower(backbone_paths(cfg.llava.model_spec(), cfg.progress).vision)
    return readability_probe(vision, cfg.task_config("textvqa"))


def free_forms(cfg: VisLingConfig, stage: Stage, n: int = 16, task: str = "pope") -> dict:
    """The two free-text parts of AIO on ``n`` questions of ``task``, measured: the model rewriting the
    instruction itself (:class:`vlkit.rewriters.SelfRewriter`: how many rewrites were usable, and the task
    metric on those questions with ICO over them), and the model *writing* the optimised instruction
    instead of picking a letter (:func:`vlkit.ico.write_instruction`: how many are one of the candidates,
    how many at least end as a question)."""
    import time

    from vlkit.eval.scoring import open_image
    from vlkit.ico import ico, write_instruction
    from vlkit.rewriters import PoolParaphraser, SelfRewriter
    from vlkit.stages import load_stage
    from vlkit.zeroshot.evaluation import start_phrasings
    module, folder = TASKS[task], cfg.task_folder(task)
    questions = module.load(folder)[:n]
    starts = start_phrasings(questions, len(module.PHRASINGS))
    original = [module.PHRASINGS[j].format(**q["fields"]) for j, q in zip(starts, questions)]
    images = [open_image(folder / "images" / q["image"]) for q in questions]
    model, proc = load_stage(stage, cfg.progress)
    proc.max_length = max(proc.max_length or 0, cfg.zeroshot_spec(task).max_length)
    t = time.perf_counter()
    rewriter = SelfRewriter(model, proc)
    rewrites = rewriter.many(original)
    self_seconds = time.perf_counter() - t
    chosen = ico(model, proc, images, original, lambda inst, key="", **_: rewrites[int(key)],
                 keys=[str(i) for i in range(len(questions))])

    def metric(texts):
        preds = module.predict(model, proc, folder, questions, texts)
        return module.score(questions, {q["question_id"]: p for q, p in zip(questions, preds)})[module.PRIMARY]
    pooled = ico(model, proc, images, original, PoolParaphraser(module.PHRASINGS), fields=[q["fields"] for q in questions],
                 keys=[str(q["question_id"]) for q in questions])
    written = write_instruction(model, proc, images, pooled)
    return {"task": task, "n": len(questions), "original": original,
            "self_rewrites": [r[0] if r else None for r in rewrites], "self_failed": rewriter.n_failed,
            "self_seconds_per_question": self_seconds / len(questions),
            "self_rewrite_picked_by_ico": sum(c.ico_pick == 1 for c in chosen),
            "metric_original": metric(original), "metric_self_ico": metric([c.instruction for c in chosen]),
            "written": written, "written_is_candidate": sum(w.strip() in o.candidates for w, o in zip(written, pooled)),
            "written_is_question": sum(w.strip().endswith("?") for w in written)}
