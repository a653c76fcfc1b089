"""ScienceQA format: loading real-format files, answer parsing, the paper's columns, generation."""
import collections
import json

import pytest
from PIL import Image

from vlkit.benchmarks import scienceqa as sqa
from vlkit.world import scienceqa as gen


def _prob(question, choices, answer, hint="", image=None, subject="natural science", grade="grade3",
          split="test", **extra):
    return {"question": question, "choices": choices, "answer": answer, "hint": hint, "image": image,
            "task": "closed choice", "grade": grade, "subject": subject, "topic": "t", "category": "c",
            "skill": "s", "lecture": "", "solution": "", "split": split, **extra}


def _real_format(tmp_path):
    """A hand-written mini ScienceQA folder in the real layout: problems.json + images/<split>/<pid>/image.png."""
    problems = {
        # NAT, IMG, G1-6
        "5": _prob("Which animal's feet are also adapted for grabbing prey?", ["hawk", "duck"], 0,
                   image="image.png", grade="grade4"),
        # SOC, TXT+IMG, G7-12
        "12": _prob("Which of these states is farthest north?", ["Ohio", "Texas", "Florida"], 0,
                    hint="Look at the map.", image="image.png", subject="social science", grade="grade8"),
        # LAN, NO, G1-6
        "20": _prob("Which word would you find on a dictionary page?", ["shake", "sun", "stove", "spy"], 1,
                    subject="language science", grade="grade2"),
        # NAT, TXT, G7-12
        "31": _prob("What is the mass of a bowling ball?", ["7 grams", "7 kilograms"], 1,
                    hint="Select the better estimate.", grade="grade7"),
        # a train problem: never counted in the test columns
        "40": _prob("Which is a solid?", ["milk", "rock"], 1, split="train"),
    }
    (tmp_path / "problems.json").write_text(json.dumps(problems))
    for pid, p in problems.items():
        if p["image"]:
            d = tmp_path / "images" / p["split"] / pid
            d.mkdir(parents=True)
            Image.new("RGB", (8, 8)).save(d / "image.png")
    return problems


def test_real_format_round_trip_and_columns(tmp_path):
    raw = _real_format(tmp_path)
    problems = sqa.load_problems(tmp_path)  # the folder, or the file
    assert set(problems) == set(raw) and problems["20"]["choices"] == raw["20"]["choices"]
    assert sqa.image_path(tmp_path, "12", problems["12"]).is_file()
    # 5 right, 12 wrong, 20 right, 31 wrong  (test split only; 40 is train)
    preds = {"5": 0, "12": 2, "20": 1, "31": 0, "40": 0}
    s = sqa.score(problems, preds, split="test")
    assert s["counts"] == {"NAT": 2, "SOC": 1, "LAN": 1, "TXT": 2, "IMG": 2, "NO": 1,
                           "G1-6": 2, "G7-12": 2, "Avg": 4}
    assert s["NAT"] == 50.0 and s["SOC"] == 0.0 and s["LAN"] == 100.0
    assert s["TXT"] == 0.0 and s["IMG"] == 50.0 and s["NO"] == 100.0
    assert s["G1-6"] == 100.0 and s["G7-12"] == 0.0 and s["Avg"] == 50.0
    assert (s["correct"], s["total"], s["unparsed"], s["missing"]) == (2, 4, 0, 0)
    # Missing predictions count as wrong and are reported, not dropped from the denominator.
    s2 = sqa.score(problems, {"5": 0}, split="test")
    assert s2["Avg"] == 25.0 and s2["missing"] == 3
    assert "NAT" in sqa.format_table(s) and "2/4 correct" in sqa.format_table(s)


def test_an_unchanged_file_is_parsed_once_and_each_caller_gets_its_own_problems(tmp_path, monkeypatch):
    _real_format(tmp_path)
    reads, real = [], sqa._read_json
    monkeypatch.setattr(sqa, "_read_json", lambda path: reads.append(path) or real(path))
    a, b = sqa.load_problems(tmp_path), sqa.load_problems(tmp_path / "problems.json")
    assert len(reads) == 1 and a == b
    a["5"]["question"] = "changed by one caller"
    assert sqa.load_problems(tmp_path)["5"]["question"] != "changed by one caller"
    data = json.loads((tmp_path / "problems.json").read_text())
    data["5"]["question"] = "Which animal's feet are adapted for swimming?"
    (tmp_path / "problems.json").write_text(json.dumps(data))  # a changed file is read again
    assert sqa.load_problems(tmp_path)["5"]["question"] == data["5"]["question"] and len(reads) == 2


def test_missing_image_file_is_an_error(tmp_path):
    _real_format(tmp_path)
    (tmp_path / "images" / "test" / "12" / "image.png").unlink()
    with pytest.raises(FileNotFoundError, match="'12'"):
        sqa.load_problems(tmp_path)
    assert len(sqa.load_problems(tmp_path, check_images=False)) == 5


@pytest.mark.parametrize("field", ["choices", "answer", "subject", "grade", "split", "hint"])
def test_missing_required_field_names_field_and_pid(tmp_path, field):
    raw = _real_format(tmp_path)
    del raw["31"][field]
    (tmp_path / "problems.json").write_text(json.dumps(raw))
    with pytest.raises(ValueError, match=rf"problem '31'.*{field}"):
        sqa.load_problems(tmp_path)


@pytest.mark.parametrize("bad, msg", [({"answer": 5}, "answer"), ({"grade": "grade13"}, "grade"),
                                      ({"subject": "maths"}, "subject"), ({"choices": ["x"]}, "choices")])
def test_invalid_values_are_errors(tmp_path, bad, msg):
    raw = _real_format(tmp_path)
    raw["5"].update(bad)
    (tmp_path / "problems.json").write_text(json.dumps(raw))
    with pytest.raises(ValueError, match=rf"'5'.*{msg}"):
        sqa.load_problems(tmp_path)


def test_truncated_json_names_the_file(tmp_path):
    (tmp_path / "problems.json").write_text('{"1": {"question": ')
    with pytest.raises(ValueError, match="problems.json.*line 1"):
        sqa.load_problems(tmp_path / "problems.json")


@pytest.mark.parametrize("text, expected", [
    ("B", 1), ("B.", 1), ("(C)", 2), ("B. red", 1), ("C) blue", 2), ("The answer is B.", 1),
    ("Let me think.\nThe answer is A", 0), ("the answer is (c).", 2), ("red", 0), ("The answer is blue.", 2),
    ("E", None), ("The answer is E.", None), ("purple", None), ("", None), ("A red circle", None),
])
def test_parse_answer(text, expected):
    assert sqa.parse_answer(text, ["red", "green", "blue"]) == expected


def test_parse_answer_reads_an_answer_after_the_questions_subject():
    q = "What colour is the circle?"
    assert sqa.parse_answer(" circle blue", ["red", "green", "blue"], q) == 2
    assert sqa.parse_answer("circle", ["red", "green", "blue"], q) is None
    assert sqa.parse_answer("square blue", ["red", "green", "blue"], q) is None  # another subject
    assert sqa.parse_answer(" circle blue", ["red", "green", "blue"]) is None  # no question: whole text only


def test_predictions_both_formats_and_llava_variant(tmp_path):
    _real_format(tmp_path)
    problems = sqa.load_problems(tmp_path)
    res = tmp_path / "res.json"
    res.write_text(json.dumps({"results": {"5": 0, "12": 2, "20": 1, "31": 0}}))
    a = sqa.load_predictions(res, problems)
    llava_res = tmp_path / "llava_res.json"  # LLaVA's eval_science_qa output: -1 = failed to parse
    llava_res.write_text(json.dumps({"acc": 50.0, "correct": 2, "count": 4,
                                     "results": {"5": 0, "12": 2, "20": 1, "31": -1}, "outputs": {}}))
    b = sqa.load_predictions(llava_res, problems)
    jsonl = tmp_path / "answers.jsonl"
    lines = [{"question_id": "5", "prompt": "...", "text": "A"},
             {"question_id": "12", "text": "The answer is C."},
             {"question_id": "20", "text": "B. sun"},
             {"question_id": "31", "text": "I am not sure."}]
    jsonl.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    c = sqa.load_predictions(jsonl, problems)
    assert a == {"5": 0, "12": 2, "20": 1, "31": 0}
    assert b["31"] is None and c == {"5": 0, "12": 2, "20": 1, "31": None}
    sa, sb, sc = (sqa.score(problems, p) for p in (a, b, c))
    assert sa["Avg"] == sb["Avg"] == sc["Avg"] == 50.0
    assert (sa["unparsed"], sb["unparsed"], sc["unparsed"]) == (0, 1, 1)
    # Raw texts work directly too, and "never silently wrong": unparsable texts are counted.
    assert sqa.score(problems, {pid: x["text"] for pid, x in zip(["5", "12", "20", "31"], lines)})["unparsed"] == 1


def test_unknown_ids_and_bad_records_are_errors(tmp_path):
    _real_format(tmp_path)
    problems = sqa.load_problems(tmp_path)
    f = tmp_path / "p.jsonl"
    f.write_text(json.dumps({"question_id": "999", "text": "A"}) + "\n")
    with pytest.raises(ValueError, match="p.jsonl:1.*unknown problem id '999'"):
        sqa.load_predictions(f, problems)
    f.write_text(json.dumps({"results": {"5": 0, "nope": 1}}))
    with pytest.raises(ValueError, match="unknown problem id 'nope'"):
        sqa.load_predictions(f, problems)
    f.write_text(json.dumps({"question_id": "5", "text": "A"}) + "\n{broken\n")
    with pytest.raises(ValueError, match="p.jsonl:2"):
        sqa.load_predictions(f, problems)
    f.write_text(json.dumps({"question_id": "5", "text": "A"}) + "\n" + json.dumps({"question_id": "5", "text": "B"}))
    with pytest.raises(ValueError, match="duplicate"):
        sqa.load_predictions(f, problems)
    with pytest.raises(ValueError, match="unknown problem"):
        sqa.score(problems, {"999": 0})


def test_prompt_in_llava_style():
    p = _prob("What colour is the circle?", ["red", "blue"], 1, image="image.png")
    text = sqa.build_prompt(p)
    assert text.splitlines() == ["<image>", "Context: N/A", "What colour is the circle?", "A. red", "B. blue",
                                 sqa.LLAVA_INSTRUCTION]
    assert sqa.build_prompt({**p, "image": None, "hint": "Look."}).startswith("Context: Look.\n")
    assert sqa.answer_text(p) == "B" and sqa.answer_text(p, "sentence") == "The answer is B."
    assert sqa.parse_answer(sqa.answer_text(p, "sentence"), p["choices"]) == 1


def test_choice_prompt_ends_with_the_question_and_answers_restate_the_subject():
    p = _prob("What colour is the circle?", ["red", "blue"], 1, image="image.png")
    assert sqa.choice_prompt(p).splitlines() == ["<image>", "Context: N/A", "A. red", "B. blue",
                                                 sqa.CHOICE_INSTRUCTION, "What colour is the circle?"]
    assert sqa.answer_text(p, "choice") == sqa.choice_answer(p, 1) == " circle blue"
    assert sqa.choice_answer(p, 0) == " circle red"
    record = sqa.to_llava_json({"7": p}, style="choice")[0]
    assert record["conversations"] == [{"from": "human", "value": sqa.choice_prompt(p)},
                                       {"from": "gpt", "value": " circle blue"}]
    # questions without one subject keep the bare, spaced option text
    q = _prob("How many shapes are in the picture?", ["2", "3"], 0, image="image.png")
    assert sqa.choice_answer(q, 1) == " 3"


@pytest.mark.parametrize("question, subject", [
    ("What colour is the triangle?", "triangle"), ("What color is the triangle?", "triangle"),
    ("What shape is the purple object?", "purple"), ("What size is the purple diamond?", "purple diamond"),
    ("Is the red circle to the left or to the right of the blue square?", None),
    ("Which word is spelled correctly?", None), ("What colour is the triangle", None)])
def test_answer_subject_is_what_an_attribute_question_asks_about(question, subject):
    assert sqa.answer_subject(question) == subject


@pytest.fixture(scope="module")
def generated():
    cfg = gen.ScienceQAConfig(n_problems=1500, seed=0)
    return gen.generate_problems(cfg)


def test_generated_problems_are_valid_and_cover_all_columns(generated):
    problems, scenes = generated
    for pid, p in problems.items():
        sqa.validate_problem(pid, p)
        assert bool(p["image"]) == (pid in scenes)
    test = sqa.select(problems, split="test")
    counts = sqa.score(test, {pid: p["answer"] for pid, p in test.items()})["counts"]
    assert all(counts[c] >= 10 for c in sqa.COLUMNS), counts
    # Answer positions are shuffled: "always A" is near chance, not a shortcut.
    pos = collections.Counter(p["answer"] for p in problems.values())
    assert pos[0] < 0.45 * len(problems)


def test_generation_is_deterministic_and_seeded():
    a = gen.generate_problems(gen.ScienceQAConfig(n_problems=50, seed=1))[0]
    b = gen.generate_problems(gen.ScienceQAConfig(n_problems=80, seed=1))[0]
    c = gen.generate_problems(gen.ScienceQAConfig(n_problems=50, seed=2))[0]
    assert all(a[k] == b[k] for k in a) and a != c


def test_every_generated_binding_question_has_the_subject_its_answer_restates(generated):
    # answer_subject reads the generator's attribute templates: a reworded template must fail here,
    # not silently fall back to the bare option (binding-only diagnostic: 38.7% instead of 68.9%)
    problems, scenes = generated
    binding = [p for p in problems.values() if p["category"] == sqa.BINDING_CATEGORY]
    assert binding
    for p in binding:
        subject = sqa.answer_subject(p["question"])
        assert subject and subject in p["question"], p["question"]


def test_image_questions_need_the_image(generated):
    """The same question text + hint has different correct answers in different images."""
    problems, scenes = generated
    answers = collections.defaultdict(set)
    for p in problems.values():
        if p["image"]:
            answers[(p["question"], p["hint"])].add(p["choices"][p["answer"]])
    shared = {k: v for k, v in answers.items() if sum(1 for p in problems.values()
                                                      if (p["question"], p["hint"]) == k) >= 5}
    assert len(shared) >= 10
    # Every frequent image question is ambiguous without its image.
    assert all(len(v) >= 2 for v in shared.values()), [k for k, v in shared.items() if len(v) < 2]
    # And every answer is true of its scene: the binding answers match the scene's objects.
    for pid, p in problems.items():
        if p["category"] == sqa.BINDING_CATEGORY and p["skill"] == "Bind a colour to a shape":
            shape = p["question"].removeprefix("What colour is the ").rstrip("?")
            objs = [o for o in scenes[pid].objects if o.shape == shape]
            assert len(objs) == 1 and objs[0].color == p["choices"][p["answer"]]
            assert len({o.color for o in scenes[pid].objects}) >= 2  # other colours present


def test_baselines(generated):
    problems, scenes = generated
    binding = sqa.select(problems, category=sqa.BINDING_CATEGORY)
    assert len(binding) >= 100
    scene_dicts = {pid: s.to_dict() for pid, s in scenes.items()}
    bag = sqa.bag_of_attributes_accuracy(binding, scene_dicts)
    chance = sqa.chance_accuracy(binding)
    # Knowing which colours are present beats chance but is far from knowing which object has which.
    assert chance < bag < 75
    # An oracle for the binding problems reaches 100, a bag-guesser never more than the bound.
    assert sqa.score(binding, {pid: p["answer"] for pid, p in binding.items()}, split=None)["Avg"] == 100
    with pytest.raises(ValueError, match="no scene"):
        sqa.bag_of_attributes_accuracy(binding, {})


def test_write_benchmark_layout_loads_back(tmp_path):
    out = gen.write_benchmark(tmp_path / "bench", gen.ScienceQAConfig(n_problems=40, seed=0))
    problems = sqa.load_problems(out / "problems.json", check_images=True)
    splits = json.loads((out / "pid_splits.json").read_text())
    assert sorted(pid for s in splits.values() for pid in s) == sorted(problems)
    img = [pid for pid, p in problems.items() if p["image"]][0]
    assert Image.open(sqa.image_path(out, img, problems[img])).size == (64, 64)
    assert set(sqa.load_scenes(out)) == {pid for pid, p in problems.items() if p["image"]}
    llava = json.loads((out / "llava_train.json").read_text())
    assert all(r["conversations"][1]["value"] in "ABCDE" for r in llava)
    assert all((out / r["image"]).is_file() for r in llava if "image" in r)


def test_for_profile():
    assert gen.ScienceQAConfig.for_profile("smoke").n_problems < gen.ScienceQAConfig.for_profile("full").n_problems
    with pytest.raises(ValueError, match="profile"):
        gen.ScienceQAConfig.for_profile("huge")


def test_ensure_scienceqa_caches(tmp_path, monkeypatch):
    monkeypatch.setenv("VLKIT_ARTIFACTS", str(tmp_path))
    from vlkit import cache
    cfg = gen.ScienceQAConfig.for_profile("smoke", n_problems=20)
    before = cache.BUILDS["scienceqa"]
    a = gen.ensure_scienceqa(cfg)
    assert (a / "problems.json").is_file() and cache.BUILDS["scienceqa"] == before + 1
    mtime = (a / "problems.json").stat().st_mtime_ns
    assert a == gen.ensure_scienceqa(cfg)  # the second call builds nothing
    assert cache.BUILDS["scienceqa"] == before + 1 and (a / "problems.json").stat().st_mtime_ns == mtime
    gen.ensure_scienceqa(gen.ScienceQAConfig.for_profile("smoke", n_problems=21))  # another config builds
    assert cache.BUILDS["scienceqa"] == before + 2


def test_plots_return_figures(generated):
    import matplotlib
    matplotlib.use("Agg")
    from vlkit.plots import benchmarks as plots
    problems, _ = generated
    oracle = sqa.score(problems, {pid: p["answer"] for pid, p in problems.items()})
    blind = sqa.score(problems, {pid: 0 for pid in problems})
    fig = plots.scienceqa_columns({"oracle": oracle, "always A": blind}, baselines={"chance": 30.0})
    assert len(fig.axes[0].patches) == 2 * len(sqa.COLUMNS)
    rel = {"overall": {"relative": 80.0}, "detail": {"relative": 70.0}}
    fig2 = plots.relative_scores({"model": rel})
    assert [t.get_text() for t in fig2.axes[0].get_xticklabels()][-1] == "overall"
    with pytest.raises(ValueError):
        plots.scienceqa_columns({})


def test_llava_layout_with_only_test_images(tmp_path):
    """LLaVA's copy of ScienceQA has images/test only: scoring the test split must still load."""
    raw = _real_format(tmp_path)
    raw["41"] = _prob("Which is a gas?", ["air", "rock"], 0, image="image.png", split="train")
    (tmp_path / "problems.json").write_text(json.dumps(raw))
    assert "41" in sqa.load_problems(tmp_path)
    with pytest.raises(FileNotFoundError, match="'41'"):
        sqa.load_problems(tmp_path, check_images=True)
