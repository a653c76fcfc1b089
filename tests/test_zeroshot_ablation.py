"""Notebook 05's zero-shot evaluation and ablation: per-question predictions, starting phrasings, the
cached evaluation of a stage, the EMA x AIO cells, the before/after table and the figures."""
from __future__ import annotations

import sys
from pathlib import Path

import matplotlib
import numpy as np
import pytest

matplotlib.use("Agg")
sys.path.insert(0, str(Path(__file__).parent))
import _vltiny as T  # noqa: E402

from vlkit import cache  # noqa: E402
from vlkit import world as W  # noqa: E402
from vlkit.zeroshot import ablation, memes, pope  # noqa: E402
from vlkit.zeroshot.evaluation import ZeroShotSpec, start_phrasings  # noqa: E402


@pytest.fixture(scope="module")
def tiny():
    m = T.model(0).eval()
    return m, T.processor(m)


@pytest.mark.parametrize("task", [pope, memes])
def test_per_question_correctness_agrees_with_the_scorers_accuracy(tmp_path, tiny, task):
    cfg = (memes.MemesConfig(n=8, resolution=16, world=W.WorldConfig(min_objects=1, max_objects=1))
           if task is memes else pope.PopeConfig(n=8, resolution=16))
    folder = task.write(tmp_path / "t", cfg)
    questions = task.load(folder)
    preds = task.predict(*tiny, folder, questions, task.PHRASINGS[2], batch_size=4)
    right = task.correct(questions, preds)
    assert len(right) == len(questions)
    metrics = task.evaluate(*tiny, folder, questions, task.PHRASINGS[2], batch_size=4)
    assert metrics["accuracy"] == pytest.approx(100 * sum(right) / len(right))
    flipped = [("No" if p == "Yes" else "Yes") for p in preds] if task is pope else [1 - p for p in preds]
    assert sum(task.correct(questions, flipped)) == len(questions) - sum(right)
    with pytest.raises(ValueError):
        task.correct(questions, preds[:-1])  # one prediction per question, no silent zip


def test_starting_phrasings_are_drawn_per_question_and_reproducible():
    qs = [{"question_id": i} for i in range(200)]
    a = start_phrasings(qs, 16)
    assert a == start_phrasings(qs, 16) and set(a) == set(range(16))
    assert a != start_phrasings(qs, 16, seed=1)
    assert start_phrasings(qs[5:6], 16) == a[5:6]  # a question's draw does not depend on the others
    with pytest.raises(ValueError, match="n_phrasings=0"):
        start_phrasings(qs, 0)


def test_aio_starts_each_question_from_its_own_phrasing(tmp_path, tiny):
    from vlkit.zeroshot.aio import aio_evaluate
    folder = pope.write(tmp_path / "pope", pope.PopeConfig(n=6, resolution=16))
    questions = pope.load(folder)
    starts = [0, 3, 5, 7, 9, 11]
    out = aio_evaluate(*tiny, pope, folder, phrasing=starts, batch_size=4)
    texts = [pope.PHRASINGS[j].format(**q["fields"]) for j, q in zip(starts, questions)]
    assert [c["candidates"][0] for c in out["choices"]] == texts
    assert out["predictions"]["original"] == pope.predict(*tiny, folder, questions, texts, batch_size=4)
    assert out["original"] == pope.evaluate(*tiny, folder, questions, texts, batch_size=4)
    assert out["ias"] == pope.evaluate(*tiny, folder, questions, [c["candidates"][c["ias_pick"]] for c in out["choices"]],
                                       batch_size=4)
    with pytest.raises(ValueError, match="2 starting phrasings for 6 questions"):
        aio_evaluate(*tiny, pope, folder, phrasing=[0, 1])


def test_a_zero_shot_spec_refuses_unknown_tasks_and_bad_sizes():
    with pytest.raises(ValueError, match="unknown zero-shot task 'vqa'"):
        ZeroShotSpec("vqa", pope.PopeConfig())
    with pytest.raises(ValueError, match="rewrites, batch_size and max_length"):
        ZeroShotSpec("pope", pope.PopeConfig(), rewrites=0)


def _result(preds, metric, ids=(0, 1, 2, 3)):
    return {"question_ids": list(ids), "original": {"accuracy": metric}, "ico": {"accuracy": metric + 1},
            "ias": {"accuracy": metric}, "predictions": {"original": preds, "ico": preds, "ias": preds}}


def test_ablation_cells_read_each_seed_and_refuse_mismatched_questions():
    questions = [{"question_id": i, "label": lab} for i, lab in enumerate(["yes", "no", "yes", "no"])]
    seeds = [_result(["Yes", "No", "No", "No"], 75.0), _result(["Yes", "Yes", "Yes", "Yes"], 50.0)]
    m = ablation.correct_matrix(pope, questions, seeds, "original")
    np.testing.assert_array_equal(m, [[1, 1, 0, 1], [1, 0, 1, 0]])
    assert ablation.cell_metric(seeds, "ico", "accuracy") == [76.0, 51.0]
    with pytest.raises(ValueError, match="unknown AIO arm 'best'"):
        ablation.cell_metric(seeds, "best", "accuracy")
    with pytest.raises(ValueError, match="different questions"):
        ablation.cell_metric([seeds[0], _result(["Yes"] * 4, 50.0, ids=(0, 1, 2, 9))], "ico", "accuracy")
    with pytest.raises(ValueError, match="other questions"):
        ablation.correct_matrix(pope, questions[:3], seeds, "original")
    table = ablation.ablation_table({"a": ([{"pope": s} for s in seeds], "original")}, [("pope", "accuracy")])
    assert table.loc["a", "pope accuracy"] == "62.5 ± 17.7 (n=2)" and table.loc["a", "seeds"] == 2


def test_a_task_is_testable_only_when_some_cell_leaves_chance_by_more_than_the_seed_spread():
    def cell(values, arm="original"):
        return ([{"pope": _result(["Yes"] * 4, v)} for v in values], arm)
    at_chance = {"a": cell([49.0, 51.0, 50.5]), "b": cell([50.0, 52.0, 48.0])}
    assert not ablation.testable(at_chance, "pope", "accuracy", 50.0)
    assert ablation.testable({**at_chance, "c": cell([60.0, 62.0, 61.0])}, "pope", "accuracy", 50.0)
    assert not ablation.testable({"c": cell([99.0, 100.0, 99.5])}, "pope", "accuracy", 50.0)  # at the ceiling


def test_means_table_averages_each_variant_over_its_seeds():
    from vlkit.benchmarks import scienceqa as sqa
    from vlkit.eval.tables import means_table

    def result(variant, seed, avg, rel):
        sq = {c: avg for c in sqa.COLUMNS}
        return {"variant": variant, "train_seed": seed,
                "metrics": {"ScienceQA": sq, "Binding": avg - 10, "Rel. score": {"overall": {"relative": rel}}}}
    t = means_table([result("EMA", 0, 60.0, 40.0), result("EMA", 1, 64.0, None), result("start", 0, 70.0, 50.0)])
    assert t.loc["EMA", "Avg"] == 62.0 and t.loc["EMA", "Rel. score"] == 40.0 and t.loc["EMA", "seeds"] == 2
    assert t.loc["EMA", "Avg sd"] == pytest.approx(2.83, abs=0.01) and t.loc["start", "Binding"] == 60.0


def test_the_model_can_write_an_instruction_after_the_comparison(tiny):
    from vlkit.ico import Optimised, write_instruction
    opts = [Optimised(["Is there a red square?", "Do you see a red square?"], [2.0, 1.5], 0)] * 2
    written = write_instruction(*tiny, [None, None], opts, max_new_tokens=4)
    assert len(written) == 2 and all(isinstance(w, str) for w in written)
    with pytest.raises(ValueError, match="1 images but 2"):
        write_instruction(*tiny, [None], opts)


def test_notebook_05_figures_draw_one_panel_per_task():
    from vlkit.plots import vislinginstruct as plots
    values = {"pope": {"neither": [50, 51, 49], "EMA + AIO": [55, 56, 54]}, "memes": {"neither": [48, 50, 52]}}
    fig = plots.ablation_bars(values, {"pope": "accuracy", "memes": "auroc"}, {"pope": 50.0, "memes": 50.0})
    assert len(fig.axes) == 2 and fig.axes[0].patches[1].get_height() == pytest.approx(55.0)
    rows = [{"ias": 3.0 - i * 0.1, "accuracy": 50 + i} for i in range(16)]
    fig = plots.ias_scatter({"pope": rows}, {"pope": "accuracy"}, {"pope": {"rho": -1.0, "p": 0.0, "n": 16}})
    assert "rho -1.00" in fig.axes[0].get_title()
    with pytest.raises(ValueError, match="no task"):
        plots.ablation_bars({}, {}, {})
