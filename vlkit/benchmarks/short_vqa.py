"""A VQA-like short-answer set: colour, shape and count questions answered in one word (notebook 06).

VMTC (2411.15453) reports its token budget on VQA-v2 and GQA, whose answers are a word or two scored by
exact match. This set asks the three things the world's scenes can answer in one word: "What colour is
the triangle?", "What shape is the red object?", "How many shapes are in the picture?". It is written in
VQA-v2's two files, so a scorer of the real dataset reads it:

- ``questions.json``: ``{"info", "task_type": "Open-Ended", "data_type", "data_subtype", "license",
  "questions": [{"question_id", "image_id", "question"}]}``;
- ``annotations.json``: ``{"annotations": [{"question_id", "image_id", "question_type", "answer_type",
  "multiple_choice_answer", "answers": [{"answer", "answer_confidence", "answer_id"} x 10]}]}``;
- ``images/<image_id as 12 digits>.png`` (COCO's zero-padded ids) and ``scenes.json`` (each image's
  scene, for the bag-of-attributes baseline).

A question's kind is read from its ``question_type`` field (:data:`KINDS`), never from its wording. Its
ten annotators agree (the scene is the ground truth), so VQA accuracy ``min(1, matches / 3)`` is exact
match after VQA's normalisation (:func:`normalise`). Scenes come from the world at a seed of their own
(5006), so no question's image is in any training set; the questions' wording is the ScienceQA-format
benchmark's (notebook 03), without its options. Answers are ranked by likelihood over each kind's
vocabulary (:data:`VOCABULARY`, :mod:`vlkit.eval.short_vqa`), or given as free text: the scorer takes
any string.
"""
from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vlkit import atomic
from vlkit import world as W

# VQA's question_type (the question's first words) -> the kind the notebook reports
KINDS: dict[str, str] = {"what colour is the": "colour", "what shape is the": "shape", "how many": "count"}
ANSWER_TYPES: dict[str, str] = {"colour": "other", "shape": "other", "count": "number"}
# The words an answer is ranked over, per kind. Counts as digits, as VQA normalises them; 0-9 rather than
# the 2-4 objects a scene holds, so that a model that cannot count is not helped by a short list.
VOCABULARY: dict[str, tuple[str, ...]] = {"colour": tuple(W.COLORS), "shape": tuple(W.SHAPES),
                                          "count": tuple(str(i) for i in range(10))}
ANNOTATORS = 10
QUESTIONS_FILE, ANNOTATIONS_FILE = "questions.json", "annotations.json"


def _default_world() -> W.WorldConfig:
    # the ScienceQA-format benchmark's world (notebook 03): 2-4 objects, no writing, images like training's
    return W.WorldConfig(min_objects=2, max_objects=4)


@dataclass
class ShortVQAConfig:
    """``n`` questions, one per scene, the kinds in turn (colour, shape, count) (notebook 06)."""

    n: int = 300
    seed: int = 5006
    resolution: int = 64
    world: W.WorldConfig = field(default_factory=_default_world)

    def __post_init__(self):
        if self.n < len(KINDS):
            raise ValueError(f"ShortVQAConfig: n={self.n} must be at least {len(KINDS)} (one question per kind)")


# --- generation ---------------------------------------------------------------------------------------


def _unique(objs, key) -> dict:
    seen: dict = {}
    for o in objs:
        seen.setdefault(key(o), []).append(o)
    return {k: v[0] for k, v in seen.items() if len(v) == 1}


def _ask(kind: str, scene: W.Scene, rng: random.Random) -> tuple[str, str] | None:
    """(question, answer) of ``kind`` about ``scene``, or None when the scene cannot answer it.

    Colour and shape questions are binding questions, as ScienceQA's: the object asked about is the only
    one of its shape (colour), and another object has another colour (shape), so knowing which colours
    are in the picture is not enough."""
    objs = scene.objects
    if kind == "colour":
        options = [o for o in _unique(objs, lambda o: o.shape).values() if any(p.color != o.color for p in objs)]
        if not options:
            return None
        o = rng.choice(sorted(options, key=lambda o: o.shape))
        return f"What colour is the {o.shape}?", o.color
    if kind == "shape":
        options = [o for o in _unique(objs, lambda o: o.color).values() if any(p.shape != o.shape for p in objs)]
        if not options:
            return None
        o = rng.choice(sorted(options, key=lambda o: o.color))
        return f"What shape is the {o.color} object?", o.shape
    return "How many shapes are in the picture?", str(len(objs))


def generate(cfg: ShortVQAConfig) -> tuple[list[dict], list[dict], dict[str, W.Scene]]:
    """``(questions, annotations, scenes)`` in VQA-v2's fields; question i depends only on (seed, i)."""
    kinds = list(KINDS)
    questions, annotations, scenes = [], [], {}
    for i in range(cfg.n):
        rng = random.Random(f"short-vqa-{cfg.seed}-{i}")
        qtype = kinds[i % len(kinds)]
        while True:  # every world config with >= 2 objects and >= 2 colours answers each kind quickly
            scene = W.sample_scene(rng, cfg.world, scene_id=f"short_vqa_{cfg.seed}_{i:05d}")
            qa = _ask(KINDS[qtype], scene, rng)
            if qa is not None:
                break
        question, answer = qa
        scenes[image_file(i)] = scene
        questions.append({"question_id": i, "image_id": i, "question": question})
        annotations.append({"question_id": i, "image_id": i, "question_type": qtype,
                            "answer_type": ANSWER_TYPES[KINDS[qtype]], "multiple_choice_answer": answer,
                            "answers": [{"answer": answer, "answer_confidence": "yes", "answer_id": k + 1}
                                        for k in range(ANNOTATORS)]})
    return questions, annotations, scenes


def image_file(image_id: int) -> str:
    """An image's file name under ``images/``: the id in 12 digits, as COCO names VQA's images."""
    return f"{int(image_id):012d}.png"


def write_into(folder: str | Path, cfg: ShortVQAConfig) -> None:
    """The two JSON files, ``images/`` and ``scenes.json`` into ``folder`` (a fresh one: see :func:`write`)."""
    folder = Path(folder)
    questions, annotations, scenes = generate(cfg)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    for name, scene in scenes.items():
        W.render(scene, cfg.resolution).save(folder / "images" / name)
    atomic.write_json(folder / QUESTIONS_FILE, {
        "info": {"description": "vlkit short-answer VQA (colour, shape, count) from world scenes",
                 "seed": cfg.seed}, "task_type": "Open-Ended", "data_type": "vlkit-world",
        "data_subtype": "test", "license": {}, "questions": questions}, indent=None)
    atomic.write_json(folder / ANNOTATIONS_FILE, {"annotations": annotations}, indent=None)
    atomic.write_json(folder / "scenes.json", {k: s.to_dict() for k, s in scenes.items()}, indent=None)


def write(folder: str | Path, cfg: ShortVQAConfig) -> Path:
    """Write the set into ``folder`` atomically (an interrupted write leaves nothing)."""
    folder = Path(folder)
    with atomic.atomic_dir(folder) as tmp:
        write_into(tmp, cfg)
    return folder


def ensure(cfg: ShortVQAConfig, profile: str) -> Path:
    """The set's folder under ``artifacts/<profile>/``, generated when missing (notebook 06)."""
    from vlkit import cache, paths
    return cache.cached(paths.artifacts_dir(profile), "short-vqa", cfg, lambda tmp: write_into(tmp, cfg))


# --- loading ------------------------------------------------------------------------------------------


def _read(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no such file (a short-VQA folder holds {QUESTIONS_FILE} and "
                                f"{ANNOTATIONS_FILE})") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON (line {e.lineno}: {e.msg})") from None


def load(folder: str | Path) -> list[dict]:
    """The questions joined with their annotations: ``question_id``, ``image_id``, ``question``,
    ``question_type``, ``kind``, ``answer_type``, ``answers`` (the annotators' strings) and ``image`` (its
    file under ``images/``), in the questions file's order.

    Errors name the file and the question: a record without its fields, a question type outside
    :data:`KINDS`, a repeated id, a question without an annotation or the other way round.
    """
    folder = Path(folder)
    qdata, adata = _read(folder / QUESTIONS_FILE), _read(folder / ANNOTATIONS_FILE)
    if not isinstance(qdata, dict) or not isinstance(qdata.get("questions"), list):
        raise ValueError(f"{folder / QUESTIONS_FILE}: VQA's format is an object with a 'questions' list")
    if not isinstance(adata, dict) or not isinstance(adata.get("annotations"), list):
        raise ValueError(f"{folder / ANNOTATIONS_FILE}: VQA's format is an object with an 'annotations' list")
    notes: dict[int, dict] = {}
    for n, a in enumerate(adata["annotations"]):
        where = f"{folder / ANNOTATIONS_FILE}: annotations[{n}]"
        if not isinstance(a, dict) or any(k not in a for k in ("question_id", "question_type", "answers")):
            raise ValueError(f"{where}: needs question_id, question_type and answers")
        if a["question_type"] not in KINDS:
            raise ValueError(f"{where}: question_type {a['question_type']!r} is none of {sorted(KINDS)}")
        if not isinstance(a["answers"], list) or not a["answers"] or not all(
                isinstance(x, dict) and isinstance(x.get("answer"), str) for x in a["answers"]):
            raise ValueError(f"{where}: answers must be a non-empty list of {{'answer': text}}")
        if a["question_id"] in notes:
            raise ValueError(f"{where}: question_id {a['question_id']!r} is annotated twice")
        notes[a["question_id"]] = a
    out, seen = [], set()
    for n, q in enumerate(qdata["questions"]):
        where = f"{folder / QUESTIONS_FILE}: questions[{n}]"
        if not isinstance(q, dict) or any(k not in q for k in ("question_id", "image_id", "question")):
            raise ValueError(f"{where}: needs question_id, image_id and question")
        qid = q["question_id"]
        if qid in seen:
            raise ValueError(f"{where}: question_id {qid!r} repeats")
        seen.add(qid)
        if qid not in notes:
            raise ValueError(f"{where}: question {qid!r} has no annotation in {ANNOTATIONS_FILE}")
        a = notes[qid]
        out.append({"question_id": qid, "image_id": q["image_id"], "question": q["question"],
                    "question_type": a["question_type"], "kind": KINDS[a["question_type"]],
                    "answer_type": a.get("answer_type"), "answers": [x["answer"] for x in a["answers"]],
                    "image": image_file(q["image_id"])})
    extra = sorted(set(notes) - seen, key=str)
    if extra:
        raise ValueError(f"{folder / ANNOTATIONS_FILE}: annotations of questions not in {QUESTIONS_FILE}: {extra[:3]}")
    return out


def load_scenes(folder: str | Path) -> dict[str, W.Scene]:
    """``image file -> scene`` of the set's images."""
    return {k: W.Scene.from_dict(d) for k, d in _read(Path(folder) / "scenes.json").items()}


# --- scoring ------------------------------------------------------------------------------------------

# VQA's normalisation (the official evaluation's processPunctuation / processDigitArticle, shortened to
# what a one-word answer needs): lower case, punctuation out, articles out, number words as digits
_NUMBERS = {"none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
            "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10"}
_ARTICLES = {"a", "an", "the"}
_PUNCTUATION = re.compile(r"[^\w\s]")


def normalise(text: str) -> str:
    """``"The Circle."`` -> ``"circle"``, ``"three"`` -> ``"3"``, ``" Red "`` -> ``"red"``."""
    if not isinstance(text, str):
        raise TypeError(f"an answer must be a string, got {type(text).__name__} ({text!r})")
    words = _PUNCTUATION.sub(" ", text.lower()).split()
    return " ".join(_NUMBERS.get(w, w) for w in words if w not in _ARTICLES)


def _checked(questions: list[dict], answers: dict) -> dict:
    if not questions:
        raise ValueError("no questions to score")
    if not isinstance(answers, dict):
        raise TypeError(f"answers must be a dict question_id -> answer text, got {type(answers).__name__}")
    ids = {q["question_id"] for q in questions}
    missing = [q["question_id"] for q in questions if q["question_id"] not in answers]
    if missing:
        raise ValueError(f"no answer for {len(missing)} question(s), e.g. question_id {missing[0]!r}")
    unknown = [k for k in answers if k not in ids]
    if unknown:
        raise ValueError(f"answers for question ids this set does not have, e.g. {unknown[0]!r} "
                         "(answers of another set, or ids as strings where the set has numbers?)")
    bad = [k for k, v in answers.items() if not isinstance(v, str)]
    if bad:
        raise ValueError(f"question_id {bad[0]!r}: the answer must be text, got {answers[bad[0]]!r}")
    return answers


def question_accuracy(question: dict, answer: str) -> float:
    """VQA accuracy of one answer in [0, 1]: the mean over annotators of ``min(1, others agreeing / 3)``."""
    pred = normalise(answer)
    gold = [normalise(a) for a in question["answers"]]
    matches = sum(g == pred for g in gold)
    return sum(min(1.0, (matches - (g == pred)) / 3) for g in gold) / len(gold)


def per_question(questions: list[dict], answers: dict) -> dict:
    """``question_id -> accuracy in [0, 1]`` (for paired statistics over questions)."""
    answers = _checked(questions, answers)
    return {q["question_id"]: question_accuracy(q, answers[q["question_id"]]) for q in questions}


def _by_kind(questions: list[dict], values: dict) -> dict[str, float]:
    out = {"accuracy": 100 * sum(values.values()) / len(values)}
    for kind in KINDS.values():
        ids = [q["question_id"] for q in questions if q["kind"] == kind]
        out[kind] = 100 * sum(values[i] for i in ids) / len(ids) if ids else None
    out["n"] = len(values)
    return out


def score(questions: list[dict], answers: dict) -> dict:
    """VQA accuracy (%) overall and per kind (``colour``, ``shape``, ``count``), and ``n``.

    ``answers``: question_id -> answer text, one for every question and none for another. A missing or
    unknown id, a non-text answer or an empty question list is an error, not a zero."""
    return _by_kind(questions, per_question(questions, answers))


def chance(questions: list[dict]) -> dict:
    """A uniform guess over each kind's :data:`VOCABULARY` (colour 1/8, shape 1/5, count 1/10), in %."""
    return _by_kind(questions, {q["question_id"]: 1 / len(VOCABULARY[q["kind"]]) for q in questions})


def prior(questions: list[dict]) -> dict:
    """Always the most frequent answer of each kind in this set: what answer statistics alone score, in %."""
    best = {}
    for kind in KINDS.values():
        counts: dict[str, int] = {}
        for q in questions:
            if q["kind"] == kind:
                counts[normalise(q["answers"][0])] = counts.get(normalise(q["answers"][0]), 0) + 1
        best[kind] = max(sorted(counts), key=counts.__getitem__) if counts else ""
    return _by_kind(questions, {q["question_id"]: question_accuracy(q, best[q["kind"]]) for q in questions})


def bag_of_attributes(questions: list[dict], scenes: dict[str, W.Scene]) -> dict:
    """Expected accuracy (%) of a guesser that knows which colours and shapes are in the picture but not
    which object has which: 1 / (distinct colours present) on colour questions, 1 / (distinct shapes) on
    shape questions, chance on counts. A model above it binds attributes to objects."""
    values = {}
    for q in questions:
        objs = scenes[q["image"]].objects
        if q["kind"] == "colour":
            values[q["question_id"]] = 1 / len({o.color for o in objs})
        elif q["kind"] == "shape":
            values[q["question_id"]] = 1 / len({o.shape for o in objs})
        else:
            values[q["question_id"]] = 1 / len(VOCABULARY["count"])
    return _by_kind(questions, values)


def results_json(answers: dict) -> list[dict]:
    """VQA's results format: ``[{"question_id", "answer"}]``."""
    return [{"question_id": k, "answer": v} for k, v in answers.items()]


def read_results(results: list[dict]) -> dict:
    """VQA's results format back to ``question_id -> answer``; a record without both fields is an error."""
    if not isinstance(results, list):
        raise ValueError("VQA results are a list of {'question_id', 'answer'}")
    out = {}
    for n, r in enumerate(results):
        if not isinstance(r, dict) or "question_id" not in r or "answer" not in r:
            raise ValueError(f"results[{n}]: needs question_id and answer")
        out[r["question_id"]] = r["answer"]
    return out


def baselines(folder: str | Path) -> dict[str, dict]:
    """The set's three baselines by name: ``chance``, ``prior`` and ``bag_of_attributes`` (each as :func:`score`)."""
    questions = load(folder)
    return {"chance": chance(questions), "prior": prior(questions),
            "bag_of_attributes": bag_of_attributes(questions, load_scenes(folder))}
