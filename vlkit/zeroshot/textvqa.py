"""A TextVQA-like task: "What is written on the red square?" (notebook 05).

TextVQA (Singh et al., 2019) asks about text in images; its files are JSON ``{"data": [{"question_id",
"image_id", "question", "answers": [10 strings]}]}`` and it scores VQA accuracy, ``min(1, matches / 3)``
per question. Here one or two large objects per scene carry a word or digit (:data:`vlkit.world.WORDS`),
drawn as the world draws it; no training conversation asks an open question about it (ScienceQA's
multiple-choice "What is written on ...?" problems are the closest, and in its training split). Answers
are ranked by likelihood over the world's words, or generated and matched exactly.
"""
from __future__ import annotations

import json
import random
from dataclasses import dataclass, field, replace
from pathlib import Path

from vlkit import world as W
from vlkit.zeroshot.files import TaskConfig, write_task

PHRASINGS: tuple[str, ...] = (
    "What is written on the {obj}?",
    "What does the {obj} say?",
    "What word is on the {obj}?",
    "Read the text on the {obj}.",
    "What is the text on the {obj}?",
    "Which word or digit is written on the {obj}?",
    "What is printed on the {obj}?",
    "Tell me what the {obj} reads.",
    "The {obj} has something written on it. What?",
    "What can you read on the {obj}?",
    "Look at the {obj}. What is written there?",
    "What label does the {obj} carry?",
    "Transcribe the writing on the {obj}.",
    "Question: text on the {obj}? Answer:",
    "What characters appear on the {obj}?",
    "Name the word shown on the {obj}.",
)
ANSWERS = W.WORDS  # the classes the answer is ranked over


def _default_world() -> W.WorldConfig:
    return W.WorldConfig(min_objects=1, max_objects=3, text_prob=1.0)


@dataclass
class TextVQAConfig(TaskConfig):
    """``n`` questions about the writing on one object per scene (objects drawn large)."""

    seed: int = 5003
    world: W.WorldConfig = field(default_factory=_default_world)


def generate(cfg: TextVQAConfig) -> tuple[list[dict], dict[str, W.Scene]]:
    """``(questions, scenes)`` in TextVQA's fields (plus ``fields`` and ``image``), one per scene."""
    questions, scenes = [], {}
    world = replace(cfg.world, size_fracs={"small": 0.34, "medium": 0.4, "large": 0.46})  # readable sizes
    for i in range(cfg.n):
        rng = random.Random(f"textvqa-{cfg.seed}-{i}")
        while True:
            scene = W.sample_scene(rng, world, scene_id=f"textvqa_{cfg.seed}_{i:05d}")
            counts = {}
            for o in scene.objects:
                counts[o.category] = counts.get(o.category, 0) + 1
            unique = [o for o in scene.objects if o.text and counts[o.category] == 1]
            if unique:
                break
        o = rng.choice(unique)
        image = f"{scene.id}.png"
        scenes[image] = scene
        questions.append({"question_id": i, "image_id": scene.id, "image": image,
                          "question": PHRASINGS[0].format(obj=o.category), "answers": [o.text] * 10,
                          "fields": {"obj": o.category}})
    return questions, scenes


def write(folder: str | Path, cfg: TextVQAConfig) -> Path:
    """``TextVQA_test.json`` (TextVQA's layout), ``images/*.png`` and ``scenes.json``, atomically."""
    questions, scenes = generate(cfg)
    return write_task(folder, scenes, cfg.resolution, "TextVQA_test.json",
                      json.dumps({"dataset_name": "textvqa-like", "data": questions}, indent=1))


def load_questions(path: str | Path) -> list[dict]:
    """TextVQA's JSON; a question without ``question_id``, ``image_id``, ``question`` or ``answers`` is an error."""
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    if not isinstance(data, dict) or not isinstance(data.get("data"), list):
        raise ValueError(f"{path}: TextVQA's format is a JSON object with a 'data' list")
    for n, q in enumerate(data["data"]):
        if (any(k not in q for k in ("question_id", "image_id", "question", "answers"))
                or not isinstance(q["answers"], list) or not q["answers"]):
            raise ValueError(f"{path}: data[{n}] needs question_id, image_id, question and a list of answers")
        q.setdefault("image", f"{q['image_id']}.png")
    return data["data"]


def normalise(text: str) -> str:
    """Lower case, no surrounding punctuation or quotes (a light form of the VQA normalisation)."""
    return text.strip().strip(".!?\"'").strip().lower()


def score(questions: list[dict], answers: dict) -> dict[str, float]:
    """VQA accuracy in percent: per question the mean over its annotators of
    ``min(1, #other annotators who gave the answer / 3)`` (the official leave-one-out form)."""
    total = 0.0
    for q in questions:
        pred = normalise(str(answers[q["question_id"]]))
        gold = [normalise(a) for a in q["answers"]]
        matches = sum(g == pred for g in gold)
        total += sum(min(1.0, (matches - (g == pred)) / 3) for g in gold) / len(gold)
    return {"accuracy": 100 * total / len(questions)}


def chance(questions: list[dict]) -> dict[str, float]:
    """A uniform guess among the world's words: 1 / 18."""
    return {"accuracy": 100 / len(ANSWERS)}


PRIMARY = "accuracy"


def load(folder: str | Path) -> list[dict]:
    """The task folder's questions (:func:`write`)."""
    return load_questions(Path(folder) / "TextVQA_test.json")


def predict(model, processor, folder: str | Path, questions: list[dict], phrasing, batch_size: int = 32) -> list[str]:
    """Each question's answer, the likeliest of the world's words, asked in ``phrasing`` (in question order)."""
    from vlkit.zeroshot.scoring import ask
    return ask(model, processor, folder, questions, phrasing, ANSWERS, batch_size=batch_size)[0]


def correct(questions: list[dict], predictions: list[str]) -> list[bool]:
    """Per question, whether the answer is its annotators' most common one."""
    return [normalise(p) == max(q["answers"], key=q["answers"].count).lower()
            for q, p in zip(questions, predictions, strict=True)]


def evaluate(model, processor, folder: str | Path, questions: list[dict], phrasing, batch_size: int = 32) -> dict:
    """VQA accuracy with every question asked in ``phrasing`` (:func:`predict`)."""
    answers = predict(model, processor, folder, questions, phrasing, batch_size)
    return score(questions, {q["question_id"]: a for q, a in zip(questions, answers)})
