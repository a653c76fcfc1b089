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
from vlkit.recipes import llava
from vlkit.specs import ModelSpec, ParamGroup, TrainSpec
from vlkit.stages import Stage
from vlkit.zeroshot import memes, pope, textvqa

NOTEBOOK = "05"
TASKS = {"pope": pope, "memes": memes, "textvqa": textvqa}
CONFIGS = {"pope": pope.PopeConfig, "memes": memes.MemesConfig, "textvqa": textvqa.TextVQAConfig}


@dataclass
class VisLingConfig:
    """Everything notebook 05 trains and evaluates (notebook 05).

    ``llava``: notebook 03's config (data, backbones, batch, precision, its main model as the start).
    ``steps`` of connector-only training at ``lr`` (notebook 03's connector rate); ``heads`` of CMAA's
    attention; ``n_questions`` per zero-shot task."""

    llava: llava.LlavaConfig
    steps: int = 160
    lr: float = 1e-3
    heads: int = 4
    n_questions: int = 300
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
                     label=f"{'EMA (CMAA)' if ema else 'control (linear)'} (seed {seed})", profile=c.profile)

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
