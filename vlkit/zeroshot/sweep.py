"""Every phrasing of a zero-shot task: its accuracy and its mean IAS, and how the two rank together (notebook 05).

VisLingInstruct's AIO trusts IAS (:mod:`vlkit.ias`) to pick better instructions. That is the model
judging itself; this sweep validates it: for each of the task's >= 16 phrasings, the task metric
with every question asked in it, and the mean IAS of the phrasing filled for each question's image.
:func:`ias_rank_correlation` says whether a lower IAS goes with a better score (Spearman's rho < 0).
"""
from __future__ import annotations

from pathlib import Path
from types import ModuleType

from scipy.stats import spearmanr

from vlkit.eval.scoring import open_image
from vlkit.ias import ias


def phrasing_sweep(model, processor, task: ModuleType, folder: str | Path, questions: list[dict] | None = None,
                   batch_size: int = 32) -> list[dict]:
    """One row per phrasing of ``task`` (a :mod:`vlkit.zeroshot` module): ``phrasing``, ``index``, the
    task's metrics and ``ias`` (mean over the questions; lower = the model finds it better aligned)."""
    questions = questions if questions is not None else task.load(folder)
    images = [open_image(Path(folder) / "images" / q["image"]) for q in questions]
    scores = ias(model, processor, images, [[p.format(**q["fields"]) for p in task.PHRASINGS] for q in questions],
                 batch_size=batch_size)
    rows = []
    for j, phrasing in enumerate(task.PHRASINGS):
        metrics = task.evaluate(model, processor, folder, questions, phrasing, batch_size=batch_size)
        rows.append({"index": j, "phrasing": phrasing, **metrics,
                     "ias": sum(s[j] for s in scores) / len(scores)})
    return rows


def ias_rank_correlation(rows: list[dict], metric: str) -> dict[str, float]:
    """Spearman's rho between the phrasings' mean IAS and ``metric``, and its two-sided p-value.

    rho < 0 (significantly) means a lower IAS picks a better instruction, as AIO assumes. When every
    phrasing scores the same (or has the same IAS) there is nothing to rank: ``constant`` is True and
    rho and p are NaN."""
    if len(rows) < 3:
        raise ValueError(f"a rank correlation needs at least 3 phrasings, got {len(rows)}")
    x, y = [row["ias"] for row in rows], [row[metric] for row in rows]
    if len(set(x)) == 1 or len(set(y)) == 1:
        return {"rho": float("nan"), "p": float("nan"), "n": len(rows), "constant": True}
    r = spearmanr(x, y)
    return {"rho": float(r.statistic), "p": float(r.pvalue), "n": len(rows), "constant": False}
