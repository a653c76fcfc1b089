"""Answering a zero-shot task under one instruction phrasing, or one instruction per question, by likelihood (notebook 05)."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

from vlkit.eval.scoring import continuation_scores, open_image
from vlkit.tokens import with_image


def instructions(questions: Sequence[dict], phrasing: str | Sequence[str]) -> list[str]:
    """``phrasing`` filled with each question's ``fields``, or (a list) each question's own instruction."""
    if isinstance(phrasing, str):
        return [phrasing.format(**q["fields"]) for q in questions]
    if len(phrasing) != len(questions):
        raise ValueError(f"{len(phrasing)} instructions for {len(questions)} questions")
    return list(phrasing)


def ask(model, processor, folder: str | Path, questions: Sequence[dict], phrasing: str | Sequence[str],
        classes: Sequence[str], batch_size: int = 32, progress: bool = False) -> tuple[list[str], list[list[float]]]:
    """Each question asked with ``phrasing`` (a template filled with its ``fields``, or one instruction per
    question, as AIO chooses them) about its image; returns the class whose answer is most likely for
    each, and every class's summed log-probability.

    ``folder``: the task's folder (``images/<question's image>``). The answers are scored as the
    assistant's turn (:func:`vlkit.eval.scoring.continuation_scores`), as the authors' code ranks
    classes by their likelihood."""
    images = [open_image(Path(folder) / "images" / q["image"]) for q in questions]
    prompts = [with_image(text) for text in instructions(questions, phrasing)]
    scores = continuation_scores(model, processor, prompts, images, [list(classes)] * len(questions),
                                 batch_size=batch_size, desc="zero-shot", progress=progress,
                                 where=[f"question {q['question_id']}" for q in questions])
    sums = [[s for s, _ in row] for row in scores]
    return [classes[max(range(len(classes)), key=row.__getitem__)] for row in sums], sums
