"""Zero-shot tasks (notebook 05): generation, public formats, scorers and chance baselines."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))
import _vltiny as T  # noqa: E402

from vlkit import world as W  # noqa: E402
from vlkit.zeroshot import pope  # noqa: E402
from vlkit.zeroshot.scoring import ask  # noqa: E402


def test_pope_questions_are_true_to_their_scenes_half_yes_and_written_in_popes_format(tmp_path):
    cfg = pope.PopeConfig(n=40)
    folder = pope.write(tmp_path / "pope", cfg)
    questions = pope.load_questions(folder / "questions.jsonl")
    scenes = json.loads((folder / "scenes.json").read_text())
    assert len(questions) == 40 and sum(q["label"] == "yes" for q in questions) == 20
    for q in questions:
        cats = {f"{o['color']} {o['shape']}" for o in scenes[q["image"]]["objects"]}
        obj = q["fields"]["obj"].split(" ", 1)[1]
        assert (obj in cats) == (q["label"] == "yes")
        assert q["text"] == pope.PHRASINGS[0].format(**q["fields"])
        assert Image.open(folder / "images" / q["image"]).size == (64, 64)
    assert pope.generate(cfg)[0] == pope.generate(cfg)[0]  # deterministic
    assert len(set(pope.PHRASINGS)) >= 16 and all("{obj}" in p for p in pope.PHRASINGS)


def test_pope_scores_like_pope_and_refuses_bad_files(tmp_path):
    qs = [{"question_id": i, "label": lab} for i, lab in enumerate(["yes", "yes", "no", "no"])]
    m = pope.score(qs, {0: "Yes, there is.", 1: "No.", 2: "no", 3: "Yes"})
    assert m["accuracy"] == 50 and m["precision"] == 50 and m["recall"] == 50 and m["yes_ratio"] == 50
    # POPE's parse: "no"/"not" in the first sentence is no, anything else yes ("maybe" too)
    m = pope.score(qs, {0: "maybe", 1: "It is not there. Yes.", 2: "Not at all, yes.", 3: "Yes. No."})
    assert m["accuracy"] == 50 and m["precision"] == 50 and m["recall"] == 50 and m["yes_ratio"] == 50
    assert pope.answer_label("Yes. No.") == "yes" and pope.answer_label("Not at all, yes.") == "no"
    c = pope.chance(qs)
    assert c["accuracy"] == 50 and c["recall"] == 100 and c["f1"] == pytest.approx(100 * 2 / 3)
    bad = tmp_path / "q.jsonl"
    bad.write_text(json.dumps({"question_id": 1, "image": "a.png", "text": "?", "label": "maybe"}) + "\n")
    with pytest.raises(ValueError, match="q.jsonl:1: a POPE question needs .* label yes/no"):
        pope.load_questions(bad)


def test_ask_answers_each_question_under_a_phrasing_by_class_likelihood(tmp_path):
    folder = pope.write(tmp_path / "pope", pope.PopeConfig(n=6, resolution=16))
    questions = pope.load_questions(folder / "questions.jsonl")
    m = T.model(0).eval()
    picks, sums = ask(m, T.processor(m), folder, questions, pope.PHRASINGS[3], pope.ANSWERS, batch_size=4)
    assert len(picks) == 6 and all(p in pope.ANSWERS for p in picks)
    assert all(p == pope.ANSWERS[max(range(2), key=s.__getitem__)] for p, s in zip(picks, sums))
    other = ask(m, T.processor(m), folder, questions, pope.PHRASINGS[10], pope.ANSWERS)[1]
    assert other != sums  # the phrasing reaches the model


def test_memes_captions_fit_or_misfit_their_images_and_score_auroc(tmp_path):
    from vlkit.zeroshot import memes
    folder = memes.write(tmp_path / "memes", memes.MemesConfig(n=30))
    items = memes.load_items(folder / "test.jsonl")
    scenes = json.loads((folder / "scenes.json").read_text())
    assert sum(q["label"] for q in items) == 15
    for q in items:
        objs = scenes[q["img"]]["objects"]
        own = memes.caption(W.Scene.from_dict({"id": "x", "objects": objs}))
        assert (q["text"] == own) == (q["label"] == 0)
        assert (folder / "images" / q["img"]).is_file()
    perfect = memes.score(items, {q["id"]: 0.9 if q["label"] else 0.1 for q in items})
    assert perfect == {"auroc": 100.0, "accuracy": 100.0}
    inverted = memes.score(items, {q["id"]: 0.1 if q["label"] else 0.9 for q in items})
    assert inverted["auroc"] == 0.0 and inverted["accuracy"] == 0.0
    assert memes.chance(items) == {"auroc": 50.0, "accuracy": 50.0}
    four = [{"id": i, "label": y} for i, y in enumerate([1, 1, 0, 0])]  # overlapping scores with a tie: AUROC 0.625
    assert memes.score(four, {0: 0.8, 1: 0.4, 2: 0.4, 3: 0.6}) == {"auroc": 62.5, "accuracy": 50.0}
    assert memes.misfit_probability(-1.0, -1.0) == 0.5 and memes.misfit_probability(-3.0, -1.0) > 0.8
    with pytest.raises(ValueError, match=r"probabilities must be in \[0, 1\]"):
        memes.score(four, {0: 2.0, 1: 0.4, 2: 0.4, 3: 0.6})
    assert len(set(memes.PHRASINGS)) >= 16 and all("{caption}" in p for p in memes.PHRASINGS)
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"id": 1, "img": "a.png", "text": "t", "label": 2}) + "\n")
    with pytest.raises(ValueError, match="bad.jsonl:1: a HatefulMemes item needs .* label 0 or 1"):
        memes.load_items(bad)


def test_textvqa_asks_about_writing_that_is_on_the_named_object(tmp_path):
    from vlkit.zeroshot import textvqa
    folder = textvqa.write(tmp_path / "tv", textvqa.TextVQAConfig(n=20))
    questions = textvqa.load_questions(folder / "TextVQA_test.json")
    scenes = json.loads((folder / "scenes.json").read_text())
    for q in questions:
        named = [o for o in scenes[q["image"]]["objects"] if f"{o['color']} {o['shape']}" == q["fields"]["obj"]]
        assert len(named) == 1 and named[0]["text"] == q["answers"][0] in textvqa.ANSWERS
    assert textvqa.score(questions, {q["question_id"]: q["answers"][0].upper() + "." for q in questions}) == \
        {"accuracy": 100.0}
    assert textvqa.score(questions[:1], {questions[0]["question_id"]: "zebra"}) == {"accuracy": 0.0}
    mixed = [{"question_id": 0, "answers": ["cat"] * 3 + ["dog"] * 7}]  # 3 of 10: VQA's leave-one-out gives 0.9
    assert textvqa.score(mixed, {0: "cat"})["accuracy"] == pytest.approx(90.0)
    assert textvqa.score(mixed, {0: "dog"})["accuracy"] == pytest.approx(100.0)
    assert len(set(textvqa.PHRASINGS)) >= 16 and all("{obj}" in p for p in textvqa.PHRASINGS)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"data": [{"question_id": 1, "question": "?"}]}))
    with pytest.raises(ValueError, match=r"data\[0\] needs question_id, image_id"):
        textvqa.load_questions(bad)
    bad.write_text(json.dumps({"data": [{"question_id": 1, "image_id": "a", "question": "?", "answers": "cat"}]}))
    with pytest.raises(ValueError, match="a list of answers"):
        textvqa.load_questions(bad)


def test_readability_probe_reads_digits_a_tower_encodes_and_not_those_it_cannot():
    import torch
    from transformers import CLIPVisionConfig, CLIPVisionModel

    from vlkit.zeroshot import readability, textvqa
    cfg = textvqa.TextVQAConfig(n=120, resolution=32)
    torch.manual_seed(0)
    tower = CLIPVisionModel(CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                             num_attention_heads=2, image_size=32, patch_size=8)).eval()
    r = readability.readability_probe(tower, cfg, n_train=240)
    assert r["chance"] == pytest.approx(1 / 18) and r["n_test"] > 60 and r["n_train"] > 120
    assert 0 <= r["accuracy"] <= 1 and r["train_accuracy"] > r["accuracy"]  # an untrained tower: fits, fails to read
    assert r["accuracy"] < 0.5


@pytest.mark.parametrize("name", ["pope", "memes", "textvqa"])
def test_phrasing_sweep_scores_every_phrasing_and_its_mean_ias(tmp_path, name):
    import importlib

    from vlkit.ias import ias
    from vlkit.eval.scoring import open_image
    from vlkit.zeroshot.sweep import ias_rank_correlation, phrasing_sweep
    task = importlib.import_module(f"vlkit.zeroshot.{name}")
    folder = task.write(tmp_path / name, small_config(task, n=6))
    m = T.model(0).eval()
    proc = T.processor(m)
    rows = phrasing_sweep(m, proc, task, folder, batch_size=8)
    assert [r["phrasing"] for r in rows] == list(task.PHRASINGS) and all(task.PRIMARY in r for r in rows)
    questions = task.load(folder)
    q = questions[0]  # one cell against ias() on its own
    alone = ias(m, proc, [open_image(folder / "images" / q["image"])], [[task.PHRASINGS[5].format(**q["fields"])]])
    per_q = [ias(m, proc, [open_image(folder / "images" / x["image"])], [[task.PHRASINGS[5].format(**x["fields"])]])[0][0]
             for x in questions]
    assert rows[5]["ias"] == pytest.approx(sum(per_q) / len(per_q), abs=1e-4) and per_q[0] == alone[0][0]
    c = ias_rank_correlation(rows, task.PRIMARY)
    assert c["n"] == 16 and (c["constant"] or -1 <= c["rho"] <= 1)


def test_ias_rank_correlation_signs_and_constant_metrics():
    from vlkit.zeroshot.sweep import ias_rank_correlation
    rows = [{"ias": 3.0 - i, "accuracy": 50 + i} for i in range(5)]  # lower IAS, better accuracy
    assert ias_rank_correlation(rows, "accuracy")["rho"] == pytest.approx(-1.0)
    flat = ias_rank_correlation([{**r, "accuracy": 50} for r in rows], "accuracy")
    assert flat["constant"] and flat["rho"] != flat["rho"]
    with pytest.raises(ValueError, match="at least 3 phrasings"):
        ias_rank_correlation(rows[:2], "accuracy")


def small_config(task, n):
    name = task.__name__.rsplit(".", 1)[1]
    cfg = getattr(task, {"pope": "PopeConfig", "memes": "MemesConfig", "textvqa": "TextVQAConfig"}[name])
    if name == "memes":  # one-object captions: the tiny LLM has 128 positions
        return cfg(n=n, resolution=16, world=W.WorldConfig(min_objects=1, max_objects=1))
    return cfg(n=n, resolution=16)


def test_aio_answers_with_the_instructions_ico_and_ias_chose(tmp_path):
    from vlkit.zeroshot.aio import aio_evaluate
    from vlkit.zeroshot.scoring import instructions
    folder = pope.write(tmp_path / "pope", pope.PopeConfig(n=6, resolution=16))
    questions = pope.load(folder)
    m = T.model(0).eval()
    proc = T.processor(m)
    out = aio_evaluate(m, proc, pope, folder, phrasing=3, batch_size=4)
    assert out["original"] == pope.evaluate(m, proc, folder, questions, pope.PHRASINGS[3])
    chosen = [c["candidates"][c["ico_pick"]] for c in out["choices"]]
    assert out["ico"] == pope.evaluate(m, proc, folder, questions, chosen)
    assert all(c["candidates"][0] == pope.PHRASINGS[3].format(**q["fields"]) and len(c["candidates"]) == 2
               for c, q in zip(out["choices"], questions))
    assert out["cost"]["forward_passes_per_question"] > 0 and out["cost"]["seconds_per_question"] > 0
    with pytest.raises(ValueError, match="2 instructions for 6 questions"):
        instructions(questions, ["a", "b"])
