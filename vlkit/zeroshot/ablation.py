"""The EMA x AIO ablation over training seeds: cells, per-question correctness, and a table (notebook 05).

A *cell* is one side of the ablation (a list of zero-shot results of :mod:`vlkit.zeroshot.evaluation`,
one per training seed) answered in one AIO arm (``"original"``, ``"ias"`` or ``"ico"``). Its metric
over seeds gives mean ± sd; its per-question correctness ``[seeds, questions]`` feeds
:func:`vlkit.stats.paired_bootstrap`, paired over the same questions.
"""
from __future__ import annotations

from types import ModuleType

import numpy as np
import pandas as pd

from vlkit import stats

ARMS = ("original", "ias", "ico")


def _check(results: list[dict], arm: str) -> None:
    if arm not in ARMS:
        raise ValueError(f"unknown AIO arm {arm!r}; known: {', '.join(ARMS)}")
    if not results:
        raise ValueError("a cell needs the results of at least one training seed")
    ids = results[0]["question_ids"]
    if any(r["question_ids"] != ids for r in results):
        raise ValueError("the seeds of a cell were scored on different questions")


def cell_metric(results: list[dict], arm: str, metric: str) -> list[float]:
    """``metric`` of ``arm`` at every seed of the cell."""
    _check(results, arm)
    return [float(r[arm][metric]) for r in results]


def correct_matrix(task: ModuleType, questions: list[dict], results: list[dict], arm: str) -> np.ndarray:
    """``[seeds, questions]`` 1/0 correctness of ``arm`` (``task.correct`` on each seed's predictions)."""
    _check(results, arm)
    if results[0]["question_ids"] != [q["question_id"] for q in questions]:
        raise ValueError("the results were scored on other questions than the ones given")
    return np.array([task.correct(questions, r["predictions"][arm]) for r in results], float)


def ablation_table(cells: dict[str, tuple[list[dict], str]], columns: list[tuple[str, str]]) -> pd.DataFrame:
    """One row per cell (``name -> (results per seed, arm)``), one column per ``(task, metric)``, named
    ``"<task> <metric>"``: mean ± sd over the cell's seeds (each result list is ``{task: result}`` per seed)."""
    rows = []
    for name, (per_seed, arm) in cells.items():
        row = {"cell": name, "seeds": len(per_seed)}
        for task, metric in columns:
            row[f"{task} {metric}"] = stats.format_mean_sd(cell_metric([r[task] for r in per_seed], arm, metric))
        rows.append(row)
    return pd.DataFrame(rows).set_index("cell")


def testable(cells: dict[str, tuple[list[dict], str]], task: str, metric: str, chance: float) -> bool:
    """False when every cell's every seed sits within the seeds' spread of chance (or of 100):
    the task cannot test a claim at this scale (:func:`vlkit.stats.at_floor_or_ceiling`)."""
    values = [v for per_seed, arm in cells.values() for v in cell_metric([r[task] for r in per_seed], arm, metric)]
    spread = max([1.0] + [float(np.std(cell_metric([r[task] for r in per_seed], arm, metric), ddof=1))
                          for per_seed, arm in cells.values() if len(per_seed) > 1])
    return not stats.at_floor_or_ceiling(values, chance, spread=spread)
