"""One result file per evaluated variant and training seed, in one schema (notebooks 03-08).

Each evaluated (variant, seed) writes ``artifacts/<profile>/results/<notebook>/<variant>--seed<k>.json``
and its per-problem predictions beside it (``.predictions.jsonl``); inside ``vlkit run`` both are
also copied into ``papermill_runs/<run>/results/<notebook>/``, so :func:`load` reads exactly one
run and the report (notebook 08) reads files instead of metric names rebuilt from strings.

A result holds: the specs that produced it, the training seed, every metric with its baselines,
training seconds and seconds per step, peak training memory with the method that measured it,
trainable (what the stages trained, each tensor once) and total parameters, weight bytes, prefill FLOPs, latency (with its in-process
reference, when one was measured), the machine, and the predictions file.
"""
from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

from vlkit import atomic, paths
from vlkit.cache import key_dict
from vlkit.metrics import RUN_DIR_ENV

SCHEMA = "vlkit.result/1"
REQUIRED = ("schema", "notebook", "variant", "train_seed", "profile", "spec", "metrics", "baselines",
            "training", "parameters", "weight_bytes", "prefill_flops", "latency", "machine", "predictions")


def slug(name: str) -> str:
    """A file-name-safe form of a variant name ("QLoRA (nf4 + LoRA)" -> "qlora-nf4-lora")."""
    s = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
    return s or "variant"


def from_evaluation(notebook: str, variant: str, evaluation, raw: dict, baselines: dict,
                    stage_infos: list[dict]) -> dict:
    """Assemble a result in the schema from an :class:`vlkit.eval.suite.Evaluation`, its raw result
    (:func:`vlkit.eval.suite.evaluate`), the benchmark's baselines (:func:`vlkit.eval.scienceqa.baselines`)
    and each training stage's :func:`vlkit.stages.stage_info` (first stage first) (notebook 03)."""
    from vlkit.train.hardware import machine_info
    stage = evaluation.stage
    metrics: dict[str, Any] = {"ScienceQA": raw["scienceqa"], "Binding": raw["binding"]}
    base: dict[str, Any] = {
        "ScienceQA": {"chance": baselines["chance"], "image_blind": raw.get("scienceqa_blind")},
        "Binding": {"chance": baselines["chance_binding"], "bag_of_attributes": baselines["bag_of_attributes"],
                    "image_blind": raw.get("binding_blind")}}
    if "bench" in raw:
        metrics["Rel. score"] = raw["bench"]
        base["Rel. score"] = {"teacher": 100.0}
    training = [{"label": s.label, "seconds": i["seconds"], "steps": i["steps"],
                 "seconds_per_step": i["seconds_per_step"], "peak_memory_bytes": i["peak_memory_bytes"],
                 "memory_method": i["memory_method"], "examples": i["examples"]}
                for s, i in zip(stage.chain, stage_infos, strict=True)]
    last = stage_infos[-1]["parameters"]
    # what the whole chain trained, each tensor once (LLaVA's connector trains in both of its stages; a
    # modular recipe's first phase trains what its second does not)
    trained = {name: nb for info in stage_infos for name, nb in info["trained"].items()}
    return {
        "schema": SCHEMA, "notebook": notebook, "variant": variant, "train_seed": stage.train.seed,
        "profile": stage.profile,
        "spec": {"stages": [key_dict(s) for s in stage.chain], "eval": key_dict(evaluation.spec),
                 "switches": key_dict(evaluation.switches)},
        "metrics": metrics, "baselines": base,
        "training": {"seconds": sum(t["seconds"] for t in training),
                     "seconds_per_step": training[-1]["seconds_per_step"], "stages": training},
        "evaluation_seconds": raw.get("seconds"),
        "parameters": {"trainable": sum(n for n, _ in trained.values()), "total": last["total"]},
        "weight_bytes": {"trained": sum(b for _, b in trained.values()),
                         "llm": last["llm_bytes"], "model": last["model_bytes"]},
        "prefill_flops": raw.get("prefill_flops"), "latency": raw.get("latency"),
        "machine": machine_info(), "predictions": None,
    }


def validate(result: dict, where: str = "result") -> dict:
    """The result itself, or a ValueError naming what is missing or of another schema."""
    if not isinstance(result, dict):
        raise ValueError(f"{where}: not a JSON object")
    if result.get("schema") != SCHEMA:
        raise ValueError(f"{where}: schema {result.get('schema')!r}, expected {SCHEMA!r}")
    missing = [k for k in REQUIRED if k not in result]
    if missing:
        raise ValueError(f"{where}: missing {', '.join(missing)}")
    return result


def publish(result: dict, predictions: list[dict], files: dict[str, str] | None = None) -> Path:
    """Write ``result`` and its predictions under ``artifacts/<profile>/results/<notebook>/``, and into
    the running pipeline's run folder when there is one (notebooks 03-08). ``files``: more text files
    to write beside it, by suffix (e.g. ``{"answers.jsonl": ...}``: LLaVA's answers format). Returns
    the result's path."""
    validate(result)
    name = f"{slug(result['variant'])}--seed{result['train_seed']}"
    folder = paths.artifacts_dir(result["profile"]) / "results" / result["notebook"]
    pred_path = folder / f"{name}.predictions.jsonl"
    atomic.write_text(pred_path, "".join(json.dumps(p, ensure_ascii=False) + "\n" for p in predictions))
    extra = []
    for suffix, text in (files or {}).items():
        extra.append(folder / f"{name}.{suffix}")
        atomic.write_text(extra[-1], text)
    result = {**result, "predictions": pred_path.name}
    path = folder / f"{name}.json"
    atomic.write_json(path, result)
    run_dir = os.environ.get(RUN_DIR_ENV)
    if run_dir:
        dest = Path(run_dir) / "results" / result["notebook"]
        dest.mkdir(parents=True, exist_ok=True)
        for f in (path, pred_path, *extra):
            shutil.copyfile(f, dest / f".{f.name}.tmp")
            os.replace(dest / f".{f.name}.tmp", dest / f.name)
    return path


def load(run: str | Path, notebook: str | None = None) -> list[dict]:
    """Every result of one run folder (``papermill_runs/<run>/`` or a name under it), validated
    (notebook 08). A file of another schema, or results of two profiles mixed, is an error."""
    run = Path(run)
    if not run.is_dir():
        run = paths.repo_root() / "papermill_runs" / run
    root = run / "results"
    if not root.is_dir():
        raise FileNotFoundError(f"{run}: no results/ folder (was the run made before results were written?)")
    files = sorted((root / notebook).glob("*.json") if notebook else root.glob("*/*.json"))
    out = []
    for f in files:
        try:
            result = json.loads(f.read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"{f}: not valid JSON ({e.msg}, line {e.lineno})") from None
        out.append(validate(result, str(f)))
    profiles = {r["profile"] for r in out}
    if len(profiles) > 1:
        raise ValueError(f"{root}: results of several profiles mixed: {sorted(profiles)}")
    return out


def predictions(run: str | Path, result: dict) -> list[dict]:
    """The per-problem predictions of ``result`` in ``run`` (one dict per line)."""
    run = Path(run)
    if not run.is_dir():
        run = paths.repo_root() / "papermill_runs" / run
    path = run / "results" / result["notebook"] / result["predictions"]
    return [json.loads(line) for line in path.read_text().splitlines() if line]
