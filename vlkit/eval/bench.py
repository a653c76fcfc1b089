"""LLaVA-Bench-style questions about held-out scenes, answered by a VLM (notebook 03).

One question per type (conversation, detail, reasoning) for held-out test scenes of notebook
01's data, with the template teacher's answers as the references; the judge is in
:mod:`vlkit.benchmarks.llava_bench`.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from vlkit.benchmarks import llava_bench as lb
from vlkit.data import DataConfig
from vlkit.eval.scoring import generate, open_image


@dataclass(frozen=True)
class BenchSpec:
    """Which LLaVA-Bench-style questions: the first ``scenes`` test scenes of ``data`` (notebook 03)."""

    data: DataConfig
    scenes: int = 20
    max_new_tokens: int = 40
    seed: int = 0


def bench_questions(spec: BenchSpec, progress: bool = True) -> tuple[list[dict], dict[str, Path]]:
    """The question records with the teacher's reference answers, and ``image_id -> image path``."""
    from vlkit.data import ensure_dataset, load_scenes
    from vlkit.teacher import TemplateTeacher
    root = ensure_dataset(spec.data, progress=progress)
    rows = load_scenes(root, split="test")[: spec.scenes]
    records = lb.make_questions([s for s, _ in rows], TemplateTeacher(spec.seed), seed=spec.seed)
    return records, {s.id: root / row["image"] for s, row in rows}


def answer_bench(model, processor, records: list[dict], images: dict[str, Path], batch_size: int = 32,
                 max_new_tokens: int = 40, progress: bool = True) -> list[dict]:
    """The records with the model's ``answer`` added (notebook 03)."""
    texts = generate(model, processor, [r["question"] for r in records],
                     [open_image(images[r["image_id"]]) for r in records], batch_size, max_new_tokens,
                     desc="LLaVA-Bench", progress=progress)
    return [{**r, "answer": t} for r, t in zip(records, texts)]
