"""A notebook's rows run as one experiment: train, evaluate, write results (notebooks 03-08).

A :class:`Row` is a named :class:`vlkit.eval.suite.Evaluation` (a variant at one training seed).
:func:`run` trains each row's stages (cached), evaluates it (cached), and publishes its result in
the :mod:`vlkit.results` schema with its per-problem predictions; :func:`describe` says what a plan
would train and evaluate and what of it is cached (``vlkit run --dry-run``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from vlkit import results as R
from vlkit.eval.suite import Evaluation, evaluate


@dataclass(frozen=True)
class Row:
    """One evaluated row: ``name`` (the variant) at the training seed of its evaluation's stage."""

    name: str
    evaluation: Evaluation

    @property
    def seed(self) -> int:
        return self.evaluation.stage.train.seed


@dataclass(frozen=True)
class Outcome:
    """A row, its result (the :mod:`vlkit.results` schema) and its raw evaluation (answers included)."""

    row: Row
    result: dict
    raw: dict


def predictions(problems: dict[str, dict], raw: dict) -> list[dict]:
    """Per-problem rows of a raw evaluation: pid, answer, correct (and the same image-blind)."""
    from vlkit.eval.scienceqa import correctness
    right = correctness(problems, raw["answers"])
    blind = raw.get("answers_blind") or {}
    right_blind = correctness({p: problems[p] for p in blind}, blind)
    rows = []
    for pid in problems:
        row = {"pid": pid, "answer": raw["answers"].get(pid), "correct": right[pid]}
        if pid in blind:
            row.update(answer_blind=blind[pid], correct_blind=right_blind[pid])
        rows.append(row)
    return rows


def run(notebook: str, rows: list[Row], progress: bool = True,
        extra: Callable[[Row, dict], dict] | None = None) -> list[Outcome]:
    """Train and evaluate every row (each cached), publish its result; returns the outcomes in row order.

    ``extra(row, raw)``: more of the result, measured apart from the common suite (notebook 06's counting
    subset and short-answer set, its in-process latency): its ``metrics`` and ``baselines`` are added to the
    result's, any other key replaces the result's (e.g. ``latency`` with an in-process reference)."""
    from vlkit.benchmarks import scienceqa as sqa
    from vlkit.eval.scienceqa import baselines
    from vlkit.stages import stage_info
    from vlkit.world.scienceqa import ensure_scienceqa
    out = []
    read: dict = {}  # (benchmark, split) -> (test problems, baselines): read once, not once per row
    for row in rows:
        ev = row.evaluation
        raw = evaluate(ev)
        root = ensure_scienceqa(ev.spec.scienceqa)
        if (root, ev.spec.split) not in read:
            read[root, ev.spec.split] = (sqa.select(sqa.load_problems(root), split=ev.spec.split),
                                         baselines(root, ev.spec.split))
        test, base = read[root, ev.spec.split]
        infos = [stage_info(s, progress) for s in ev.stage.chain]
        result = R.from_evaluation(notebook, row.name, ev, raw, base, infos)
        for key, value in (extra(row, raw) if extra is not None else {}).items():
            result[key] = {**result[key], **value} if key in ("metrics", "baselines") else value
        path = R.publish(result, predictions(test, raw), files={"answers.jsonl": sqa.answers_jsonl(raw["answers"], test)})
        out.append(Outcome(row, {**result, "predictions": path.name.replace(".json", ".predictions.jsonl")}, raw))
    return out


def describe(rows: list[Row]) -> list[str]:
    """One line per stage to train and per evaluation, each marked cached or to do (in order, no repeats)."""
    lines, seen = [], set()
    for row in rows:
        for stage in row.evaluation.stage.chain:
            if stage.key not in seen:
                seen.add(stage.key)
                lines.append(f"  train {stage.label:<40} {'cached' if stage.is_trained() else 'to train'}"
                             f"  ({stage.train.steps} steps x {stage.train.batch_size})")
        ev = row.evaluation
        lines.append(f"  eval  {row.name + f' (seed {row.seed})':<40} {'cached' if ev.is_done() else 'to evaluate'}")
    return lines


def correct_matrix(outcomes: list[Outcome], name: str, subset: dict[str, dict] | None = None):
    """``[seeds, problems]`` 1/0 correctness of the rows called ``name``, the problems in one order
    (all test problems, or ``subset``), for :func:`vlkit.stats.paired_bootstrap` (notebooks 04-08)."""
    import numpy as np

    from vlkit.benchmarks import scienceqa as sqa
    from vlkit.eval.scienceqa import correctness
    from vlkit.world.scienceqa import ensure_scienceqa
    chosen = sorted((o for o in outcomes if o.row.name == name), key=lambda o: o.row.seed)
    if not chosen:
        raise ValueError(f"no outcome of a row called {name!r}")
    spec = chosen[0].row.evaluation.spec
    problems = subset or sqa.select(sqa.load_problems(ensure_scienceqa(spec.scienceqa)), split=spec.split)
    rows = [correctness(problems, o.raw["answers"]) for o in chosen]
    return np.array([[right[pid] for pid in problems] for right in rows], float)
