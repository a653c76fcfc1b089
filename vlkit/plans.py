"""What each notebook would build, train and evaluate, and what of it is cached (``vlkit run --dry-run``).

Each notebook's plan is computed from the same parameters the runner would pass it, through the
same functions the notebook calls, so the cache paths listed are the ones the notebook uses; a test
runs the smoke pipeline and then checks that its dry run finds everything cached.
"""
from __future__ import annotations

from typing import Callable

from vlkit import cache, paths


def _artifact(kind: str, path) -> str:
    state = "cached" if cache.is_cached(path) else "to build"
    return f"  build {kind:<40} {state}  ({path.name})"


def _data(p: dict):
    from vlkit.data import DataConfig
    return DataConfig.for_profile(p["profile"], n_images=p.get("n_images"), seed=p.get("seed", 0),
                                  teacher=p.get("teacher", "template"), resolution=p.get("resolution"),
                                  base_url=p.get("base_url") or None, model=p.get("model") or None)


def notebook_01(p: dict) -> list[str]:
    cfg = _data(p)
    return [_artifact("instruction data (notebook 01)", cache.cache_path(paths.artifacts_dir(cfg.profile), "data", cfg))]


def notebook_02(p: dict) -> list[str]:
    from vlkit.backbones import BackboneConfig
    cfg = BackboneConfig.for_profile(p["profile"], seed=p.get("seed", 0))
    return [_artifact("tiny backbones (notebook 02)", cache.cache_path(paths.artifacts_dir(cfg.profile), "backbones", cfg))]


def notebook_03(p: dict) -> list[str]:
    from vlkit import experiment
    from vlkit.recipes import llava
    cfg, rows = llava.from_parameters(**p)
    root = paths.artifacts_dir(cfg.profile)
    lines = [_artifact("instruction data", cache.cache_path(root, "data", cfg.data)),
             _artifact("ScienceQA-format benchmark", cache.cache_path(root, "scienceqa", cfg.scienceqa))]
    if not (cfg.vision and cfg.llm):
        lines.append(_artifact("tiny backbones", cache.cache_path(root, "backbones", cfg.backbones)))
    return lines + experiment.describe(rows)


def notebook_04(p: dict) -> list[str]:
    from vlkit import experiment
    from vlkit.recipes import bottleneck
    cfg, sweep, rows = bottleneck.from_parameters(**p)
    return (["  (learning-rate sweep, validation split)"] + experiment.describe(sweep)
            + ["  (rows at the sweep's best learning rates)"] + experiment.describe(rows)
            + ["  (notebook 03's rows, and a 16-bit LoRA row in its setting)"]
            + experiment.describe(bottleneck.notebook03_rows(cfg, list(p.get("train_seeds", [0])))
                                  + bottleneck.lora16_rows(cfg, list(p.get("train_seeds", [0]))[0])))


def notebook_05(p: dict) -> list[str]:
    from vlkit import experiment
    from vlkit.recipes import vislinginstruct as VL
    from vlkit.zeroshot.evaluation import is_done
    cfg, rows = VL.from_parameters(**p)
    seeds = list(p.get("train_seeds", [0]))
    lines = experiment.describe(rows)
    # the phrasing sweep runs on notebook 03's model only (the notebook's 10-minute budget holds one)
    models = [("notebook 03's main model", cfg.start(), True)] + [
        (f"{name} (seed {s})", st, False) for name, sts in VL.stages(cfg, seeds).items() for s, st in zip(seeds, sts)]
    for label, stage, sweep in models:
        for task in VL.SCORED:
            state = "cached" if is_done(stage, cfg.zeroshot_spec(task, sweep)) else "to evaluate"
            lines.append(f"  zero-shot {task:>6} {label:<32} {state}")
    return lines


def notebook_06(p: dict) -> list[str]:
    from vlkit import experiment
    from vlkit.eval import short_vqa
    from vlkit.recipes import compression as C
    cfg, grid, finetuned = C.from_parameters(**p)
    spec = cfg.short_vqa_spec()
    lines = ["  (training-free grid on notebook 03's main model)"] + experiment.describe(grid)
    lines += [f"  skip  {method} {C.percent(ratio)}: {why}" for method, ratio, why in C.skipped(cfg)]
    lines += [f"  (notebook 03's main model trained on for {cfg.adapt_steps} steps: uncompressed, and with "
              "compression on)"] + experiment.describe(finetuned)
    arms = {C.finetuned_name("identity", cfg), C.finetuned_name("vmtc", cfg)}
    if not any(r.name not in arms for r in finetuned):
        lines.append(f"  train the best other method at {C.percent(cfg.finetune_ratio)}: chosen once the grid "
                     "at that ratio is evaluated")
    for row in grid + finetuned:
        ev = row.evaluation
        done = short_vqa.is_done(ev.stage, spec, ev.switches)
        lines.append(f"  short VQA {row.name + f' (seed {row.seed})':<36} {'cached' if done else 'to evaluate'}")
    return lines


PLANS: dict[str, Callable[[dict], list[str]]] = {"01": notebook_01, "02": notebook_02, "03": notebook_03,
                                                 "04": notebook_04, "05": notebook_05,
                                                 "06": notebook_06}


def describe(notebook: str, parameters: dict) -> list[str]:
    """The plan of notebook ``NN_...`` for ``parameters`` (its defaults merged with the run's)."""
    number = notebook[:2]
    if number not in PLANS:
        return ["  (no plan registered for this notebook: it builds nothing cached)"]
    return PLANS[number](parameters)
