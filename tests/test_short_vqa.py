"""The short-answer VQA set of notebook 06 (vlkit.benchmarks.short_vqa): generation true of its scenes, VQA-v2's
files, exact match after VQA's normalisation, the baselines, and clear errors for bad files and bad answers."""
from __future__ import annotations

import json

import pytest

from vlkit import world as W
from vlkit.benchmarks import short_vqa as sv


@pytest.fixture(scope="module")
def generated():
    return sv.generate(sv.ShortVQAConfig(n=30))


@pytest.fixture()
def folder(tmp_path):
    return sv.write(tmp_path / "set", sv.ShortVQAConfig(n=9))


def test_every_answer_is_true_of_its_scene_and_the_kinds_take_turns(generated):
    questions, annotations, scenes = generated
    assert [a["question_type"] for a in annotations] == list(sv.KINDS) * 10
    for q, a in zip(questions, annotations):
        objs = scenes[sv.image_file(q["image_id"])].objects
        answer = a["multiple_choice_answer"]
        kind = sv.KINDS[a["question_type"]]
        if kind == "colour":  # the shape asked about is alone of its shape; another object has another colour
            shape = q["question"].removeprefix("What colour is the ").removesuffix("?")
            match = [o for o in objs if o.shape == shape]
            assert len(match) == 1 and match[0].color == answer and any(o.color != answer for o in objs)
        elif kind == "shape":
            colour = q["question"].removeprefix("What shape is the ").removesuffix(" object?")
            match = [o for o in objs if o.color == colour]
            assert len(match) == 1 and match[0].shape == answer and any(o.shape != answer for o in objs)
        else:
            assert answer == str(len(objs))
        assert [x["answer"] for x in a["answers"]] == [answer] * sv.ANNOTATORS
        assert answer in sv.VOCABULARY[kind]  # the likelihood answerer can name it
    # deterministic per (seed, i), and another seed is another set
    assert sv.generate(sv.ShortVQAConfig(n=30))[0] == questions
    assert sv.generate(sv.ShortVQAConfig(n=30, seed=1))[0] != questions


def test_the_folder_is_vqa_v2s_two_files_and_loads_back(folder):
    q = json.loads((folder / sv.QUESTIONS_FILE).read_text())
    a = json.loads((folder / sv.ANNOTATIONS_FILE).read_text())
    assert q["task_type"] == "Open-Ended" and set(q["questions"][0]) == {"question_id", "image_id", "question"}
    assert {"question_type", "answer_type", "multiple_choice_answer", "answers"} <= set(a["annotations"][0])
    loaded = sv.load(folder)
    assert [x["question_id"] for x in loaded] == list(range(9))
    assert [x["kind"] for x in loaded] == ["colour", "shape", "count"] * 3  # from question_type, not the wording
    assert [x["answer_type"] for x in loaded[:3]] == ["other", "other", "number"]
    assert all((folder / "images" / x["image"]).is_file() for x in loaded)
    assert loaded[4]["image"] == "000000000004.png"
    assert set(sv.load_scenes(folder)) == {x["image"] for x in loaded}


def _rewrite(folder, name, change):
    data = json.loads((folder / name).read_text())
    change(data)
    (folder / name).write_text(json.dumps(data))


@pytest.mark.parametrize("name,change,message", [
    (sv.ANNOTATIONS_FILE, lambda d: d["annotations"].pop(3), "question 3 has no annotation"),
    (sv.ANNOTATIONS_FILE, lambda d: d["annotations"][0].update(question_type="what is"), "question_type 'what is'"),
    (sv.ANNOTATIONS_FILE, lambda d: d["annotations"][1].update(question_id=0), "annotated twice"),
    (sv.ANNOTATIONS_FILE, lambda d: d["annotations"][2].update(answers=[]), "non-empty list"),
    (sv.QUESTIONS_FILE, lambda d: d["questions"][5].pop("image_id"), r"questions\[5\]: needs"),
    (sv.QUESTIONS_FILE, lambda d: d["questions"].pop(8), "not in questions.json: \\[8\\]"),
    (sv.QUESTIONS_FILE, lambda d: d.pop("questions"), "'questions' list"),
])
def test_a_broken_file_is_an_error_naming_the_record(folder, name, change, message):
    _rewrite(folder, name, change)
    with pytest.raises(ValueError, match=message):
        sv.load(folder)


def test_missing_files_and_bad_json_say_which_file(tmp_path, folder):
    with pytest.raises(FileNotFoundError, match="questions.json: no such file"):
        sv.load(tmp_path)
    (folder / sv.ANNOTATIONS_FILE).write_text("{not json")
    with pytest.raises(ValueError, match="annotations.json: not valid JSON"):
        sv.load(folder)


def test_normalisation_is_vqas_for_one_word_answers():
    assert sv.normalise("The Circle.") == "circle"
    assert sv.normalise("  Red! ") == "red"
    assert sv.normalise("three") == "3" and sv.normalise("a 3") == "3"
    assert sv.normalise("an orange") == "orange"
    assert sv.normalise("dark blue") == "dark blue"  # not a match for "blue"
    with pytest.raises(TypeError, match="must be a string"):
        sv.normalise(3)


def test_scores_are_exact_match_overall_and_per_kind(folder):
    questions = sv.load(folder)
    gold = {q["question_id"]: q["answers"][0] for q in questions}
    assert sv.score(questions, gold) == {"accuracy": 100.0, "colour": 100.0, "shape": 100.0, "count": 100.0, "n": 9}
    # free text: capitals, articles, punctuation and number words all still match
    sloppy = {k: (f"The {v.upper()}." if not v.isdigit() else ["zero", "one", "two", "three", "four"][int(v)])
              for k, v in gold.items()}
    assert sv.score(questions, sloppy)["accuracy"] == 100.0
    wrong_colours = {k: ("nothing" if q["kind"] == "colour" else gold[k]) for k, q in zip(gold, questions)}
    s = sv.score(questions, wrong_colours)
    assert s["colour"] == 0.0 and s["shape"] == 100.0 and s["accuracy"] == pytest.approx(200 / 3)


def test_vqa_accuracy_is_the_leave_one_out_mean_over_annotators():
    q = {"question_id": 0, "kind": "colour", "answers": ["red"] * 2 + ["blue"] * 8}
    # each red annotator sees 1 other red (1/3), each blue annotator sees 2 (2/3): (2/3 + 16/3) / 10
    assert sv.question_accuracy(q, "red") == pytest.approx(0.6)
    assert sv.question_accuracy(q, "Blue") == 1.0
    assert sv.question_accuracy(q, "green") == 0.0


@pytest.mark.parametrize("answers,error,message", [
    ({}, ValueError, "no answer for 9 question"),
    ("red", TypeError, "must be a dict"),
    ({**{i: "red" for i in range(9)}, 99: "red"}, ValueError, "ids this set does not have, e.g. 99"),
    ({str(i): "red" for i in range(9)}, ValueError, "no answer"),
    ({**{i: "red" for i in range(8)}, 8: None}, ValueError, "question_id 8: the answer must be text"),
])
def test_bad_answers_are_errors_not_zeros(folder, answers, error, message):
    with pytest.raises(error, match=message):
        sv.score(sv.load(folder), answers)


def test_no_questions_is_an_error():
    with pytest.raises(ValueError, match="no questions"):
        sv.score([], {})


def test_baselines(folder):
    questions = sv.load(folder)
    c = sv.chance(questions)
    assert (c["colour"], c["shape"], c["count"]) == pytest.approx((100 / 8, 100 / 5, 100 / 10))
    assert c["accuracy"] == pytest.approx((100 / 8 + 100 / 5 + 100 / 10) / 3)
    # two to four objects: the most frequent count answer beats a guess over ten digits
    assert sv.prior(questions)["count"] > c["count"]
    bag = sv.bag_of_attributes(questions, sv.load_scenes(folder))
    assert c["colour"] < bag["colour"] < 100 and bag["count"] == c["count"]
    both = sv.baselines(folder)
    assert set(both) == {"chance", "prior", "bag_of_attributes"} and both["chance"] == c


def test_bag_of_attributes_is_one_over_the_attributes_present():
    scene = W.Scene("s", (W.WorldObject("circle", "red", "small", (0, 0, .2, .2)),
                          W.WorldObject("square", "blue", "small", (.5, .5, .7, .7)),
                          W.WorldObject("cross", "blue", "small", (0, .5, .2, .7))))
    q = [{"question_id": 0, "kind": "colour", "image": "x.png", "answers": ["red"] * 10},
         {"question_id": 1, "kind": "shape", "image": "x.png", "answers": ["circle"] * 10}]
    bag = sv.bag_of_attributes(q, {"x.png": scene})
    assert bag["colour"] == pytest.approx(50.0) and bag["shape"] == pytest.approx(100 / 3) and bag["count"] is None


def test_results_format_round_trips_and_refuses_bad_records():
    answers = {0: "red", 5: "3"}
    assert sv.read_results(json.loads(json.dumps(sv.results_json(answers)))) == answers
    with pytest.raises(ValueError, match=r"results\[0\]: needs question_id and answer"):
        sv.read_results([{"question_id": 1}])


def test_a_set_needs_a_question_of_each_kind():
    with pytest.raises(ValueError, match="n=2 must be at least 3"):
        sv.ShortVQAConfig(n=2)
