"""Answering the short-answer VQA set by likelihood, as one cached evaluation per model (notebook 06).

Each question's answer is the likeliest word of its kind's vocabulary
(:data:`vlkit.benchmarks.short_vqa.VOCABULARY`: 8 colours, 5 shapes, the digits 0-9), each scored as the
assistant's reply after the question (:func:`vlkit.eval.scoring.continuation_scores`: the prompt runs
once, the words on copies of its KV cache), as ScienceQA's options are (notebook 03). The reply restates
the question's subject before the word, " triangle red" for "What colour is the triangle?", in the form
notebook 03 trains its answers in (:func:`vlkit.benchmarks.scienceqa.choice_answer`); the subject is the
same for every word, so it conditions the ranking and gives nothing away. The prompt is LLaVA-1.5's for
short answers, the question last (where a tiny LLM reads it, :func:`vlkit.benchmarks.scienceqa.choice_prompt`).

:func:`evaluate` caches the answers of one trained stage, with training-free switches (a compressor), under
``artifacts/<profile>/short-vqa-eval-<key>/``, keyed by the stage, the switches and the spec.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

from vlkit import atomic, cache, paths
from vlkit.benchmarks import scienceqa as sqa
from vlkit.benchmarks import short_vqa as sv
from vlkit.specs import PRECISIONS, runtime

# LLaVA-1.5's instruction for VQA-v2 / GQA-style short answers
INSTRUCTION = "Answer the question using a single word or phrase."


def prompt(question: dict) -> str:
    """The user turn: ``<image>``, the instruction, then the question (last, next to the answer)."""
    from vlkit.tokens import with_image
    return with_image(f"{INSTRUCTION}\n{question['question']}")


def candidates(question: dict) -> list[str]:
    """The assistant replies ranked for ``question``: each word of its kind, after the question's subject."""
    subject = sqa.answer_subject(question["question"])
    return [f" {subject} {w}" if subject else f" {w}" for w in sv.VOCABULARY[question["kind"]]]


def answer(model, processor, folder: str | Path, questions: list[dict], batch_size: int = 32,
           progress: bool = False) -> dict:
    """``question_id -> word``: the likeliest word of each question's kind (notebook 06)."""
    from vlkit.eval.scoring import continuation_scores, open_image
    images = [open_image(Path(folder) / "images" / q["image"]) for q in questions]
    scores = continuation_scores(model, processor, [prompt(q) for q in questions], images,
                                 [candidates(q) for q in questions], batch_size=batch_size, desc="short VQA",
                                 progress=progress, where=[f"question {q['question_id']}" for q in questions])
    words = [sv.VOCABULARY[q["kind"]] for q in questions]
    return {q["question_id"]: w[max(range(len(s)), key=lambda j: s[j][0])] for q, w, s in zip(questions, words, scores)}


@dataclass(frozen=True)
class ShortVQASpec:
    """The short-answer set (its config) and how it is answered (notebook 06)."""

    task: sv.ShortVQAConfig = field(default_factory=sv.ShortVQAConfig)
    batch_size: int = 64
    mixed_precision: str = "auto"
    progress: bool = runtime(True)

    def __post_init__(self):
        if self.mixed_precision not in PRECISIONS:
            raise ValueError(f"mixed_precision must be one of {PRECISIONS}, got {self.mixed_precision!r}")
        from vlkit.train.hardware import resolve_precision
        object.__setattr__(self, "mixed_precision", resolve_precision(self.mixed_precision))


def _key(stage, spec: ShortVQASpec, switches) -> str:
    from vlkit.eval.suite import Switches
    return cache.spec_key(stage, switches or Switches(), spec)


def path(stage, spec: ShortVQASpec, switches=None) -> Path:
    """The cache folder of ``stage`` (with ``switches``) answering ``spec`` (built or not)."""
    return cache.cache_path(paths.artifacts_dir(stage.profile), "short-vqa-eval", None,
                            key=_key(stage, spec, switches))


def is_done(stage, spec: ShortVQASpec, switches=None) -> bool:
    return cache.is_cached(path(stage, spec, switches))


def evaluate(stage, spec: ShortVQASpec, switches=None) -> dict:
    """The trained model of ``stage`` with ``switches`` applied, on the set; cached (notebook 06).

    Returns ``answers`` (question_id -> word), ``metrics`` (:func:`vlkit.benchmarks.short_vqa.score`) and
    ``seconds`` (loading the trained model and answering; training is not counted).
    """
    import torch

    from vlkit.eval.suite import Switches
    from vlkit.stages import load_stage, train_stage
    switches = switches or Switches()

    def build(tmp: Path) -> None:
        train_stage(stage, progress=spec.progress)
        t0 = time.perf_counter()
        model, proc = load_stage(stage, progress=spec.progress)
        switches.apply(model)
        folder = sv.ensure(spec.task, stage.profile)
        questions = sv.load(folder)
        # the matmuls in the precision the model trained in, as the common suite (vlkit.eval.suite)
        with torch.autocast(model.device.type, dtype=torch.bfloat16, enabled=spec.mixed_precision == "bf16"):
            answers = answer(model, proc, folder, questions, spec.batch_size, spec.progress)
        atomic.write_json(tmp / "result.json", {"answers": sv.results_json(answers),
                                                "metrics": sv.score(questions, answers),
                                                "seconds": time.perf_counter() - t0}, indent=None)

    where = cache.cached(paths.artifacts_dir(stage.profile), "short-vqa-eval", [stage, switches, spec], build,
                         key=_key(stage, spec, switches))
    raw = json.loads((where / "result.json").read_text())
    return {**raw, "answers": sv.read_results(raw["answers"])}


def correct_matrix(evaluations: list[dict], questions: list[dict]):
    """``[evaluations, questions]`` per-question VQA accuracy in [0, 1] of each :func:`evaluate` result (one
    per training seed), the questions in one order, for :func:`vlkit.stats.paired_bootstrap` (notebook 06)."""
    import numpy as np
    rows = [sv.per_question(questions, e["answers"]) for e in evaluations]
    return np.array([[r[q["question_id"]] for q in questions] for r in rows], float)
