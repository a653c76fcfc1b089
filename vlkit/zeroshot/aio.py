"""AIO on a zero-shot task: each question's instruction optimised before it is answered (notebook 05).

VisLingInstruct's Autonomous Instruction Optimization (2402.07398), on a task of :mod:`vlkit.zeroshot`:
every question starts from one phrasing of the task's pool; :func:`vlkit.ico.ico` rewrites it (by
default with :class:`vlkit.rewriters.PoolParaphraser` over the same pool), scores original and
rewrites with IAS and lets the in-context comparison choose; the task is then answered with the
chosen instructions. Reported beside each other: the task metric with the original phrasing, with
IAS-only selection, and with ICO, and what the optimisation cost (LLM forward passes and seconds per
question, answering excluded).
"""
from __future__ import annotations

import time
from pathlib import Path
from types import ModuleType
from typing import Sequence

from vlkit.eval.scoring import open_image
from vlkit.ico import count_forward_passes, ico
from vlkit.rewriters import PoolParaphraser


def aio_evaluate(model, processor, task: ModuleType, folder: str | Path, questions: list[dict] | None = None,
                 phrasing: int | Sequence[int] = 0, rewriter=None, batch_size: int = 32) -> dict:
    """``{"original", "ias", "ico"}`` task metrics, each arm's per-question ``"predictions"``, ``"cost"``
    and the per-question ``"choices"`` (notebook 05).

    ``phrasing``: the index in ``task.PHRASINGS`` every question starts from, or one index per question
    (users phrase a question in many ways: the instruction to optimise). ``rewriter``: default one
    rewrite per question from the task's pool (seeded by the question)."""
    questions = questions if questions is not None else task.load(folder)
    starts = [phrasing] * len(questions) if isinstance(phrasing, int) else list(phrasing)
    if len(starts) != len(questions):
        raise ValueError(f"{len(starts)} starting phrasings for {len(questions)} questions")
    rewriter = rewriter or PoolParaphraser(task.PHRASINGS, n=1)
    original = [task.PHRASINGS[j].format(**q["fields"]) for j, q in zip(starts, questions)]
    images = [open_image(Path(folder) / "images" / q["image"]) for q in questions]
    t = time.perf_counter()
    with count_forward_passes(model) as passes:
        chosen = ico(model, processor, images, original, rewriter,
                     fields=[q["fields"] for q in questions], keys=[str(q["question_id"]) for q in questions],
                     batch_size=batch_size)
    seconds = time.perf_counter() - t
    arms = {"original": original, "ias": [c.ias_instruction for c in chosen], "ico": [c.instruction for c in chosen]}
    predictions = {arm: task.predict(model, processor, folder, questions, texts, batch_size=batch_size)
                   for arm, texts in arms.items()}
    out = {arm: task.score(questions, {q["question_id"]: p for q, p in zip(questions, preds)})
           for arm, preds in predictions.items()}
    return {**out, "predictions": predictions,
            "cost": {"forward_passes_per_question": passes[0] / len(questions),
                     "seconds_per_question": seconds / len(questions),
                     "rewriter_failures": getattr(rewriter, "n_failed", 0)},
            "choices": [{"question_id": q["question_id"], "candidates": c.candidates, "ias": c.ias,
                         "ias_pick": c.ias_pick, "ico_pick": c.ico_pick} for q, c in zip(questions, chosen)]}
