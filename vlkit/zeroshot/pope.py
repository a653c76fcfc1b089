"""A POPE-like object-existence task: "Is there a blue circle in the image?" yes / no (notebook 05).

POPE (Li et al., 2023) asks about objects that are in the image and, as often, about objects that
are not, and reports accuracy, precision, recall, F1 and the share of "yes" answers. Its question
file is JSONL, one ``{"question_id", "image", "text", "label"}`` per line (label ``"yes"``/``"no"``);
answers are ``{"question_id", "text"}``. Here absent objects are drawn at random from the world's
categories not in the scene (POPE's "random" setting), half of the questions each way.

The training data asks existence in one phrasing ("Is there a red square in the image?",
:mod:`vlkit.teacher`): that is the pool's first, "closest" member; the others are new to the model.
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path

from vlkit import world as W
from vlkit.english import a_or_an
from vlkit.jsonl import jsonl, read_jsonl
from vlkit.zeroshot.files import TaskConfig, write_task

# {obj} is "a blue circle" (with its article). Closest to the training phrasing first.
PHRASINGS: tuple[str, ...] = (
    "Is there {obj} in the image?",
    "Is there {obj} in the picture?",
    "Is {obj} in the image?",
    "Does the image contain {obj}?",
    "Does the image show {obj}?",
    "Can you see {obj} in the image?",
    "Do you see {obj}?",
    "Is {obj} visible in the image?",
    "Is {obj} present?",
    "Is there {obj} anywhere in this image? Answer yes or no.",
    "Tell me whether there is {obj} in the image.",
    "Look at the image. Is there {obj}?",
    "Question: is {obj} shown? Answer:",
    "Yes or no: the picture has {obj}.",
    "{obj}: present or not?",
    "Check the scene for {obj}. Is it there?",
)
ANSWERS = ("Yes", "No")


def _default_world() -> W.WorldConfig:
    return W.WorldConfig(min_objects=1, max_objects=4)


@dataclass
class PopeConfig(TaskConfig):
    """``n`` questions, half about objects the scene does not have."""

    seed: int = 5001
    world: W.WorldConfig = field(default_factory=_default_world)


def generate(cfg: PopeConfig) -> tuple[list[dict], dict[str, W.Scene]]:
    """``(questions, scenes)``: POPE-style records (``fields`` fill :data:`PHRASINGS`) and each image's scene."""
    questions, scenes = [], {}
    categories = [f"{c} {s}" for c in cfg.world.colors for s in cfg.world.shapes]
    for i in range(cfg.n):
        rng = random.Random(f"pope-{cfg.seed}-{i}")
        scene = W.sample_scene(rng, cfg.world, scene_id=f"pope_{cfg.seed}_{i:05d}")
        present = sorted({o.category for o in scene.objects})
        yes = i % 2 == 0
        cat = rng.choice(present) if yes else rng.choice([c for c in categories if c not in present])
        image = f"{scene.id}.png"
        scenes[image] = scene
        questions.append({"question_id": i, "image": image, "text": PHRASINGS[0].format(obj=a_or_an(cat)),
                          "label": "yes" if yes else "no", "fields": {"obj": a_or_an(cat)}})
    return questions, scenes


def write(folder: str | Path, cfg: PopeConfig) -> Path:
    """``questions.jsonl`` (POPE's format, plus ``fields``), ``images/*.png`` and ``scenes.json``, atomically."""
    questions, scenes = generate(cfg)
    return write_task(folder, scenes, cfg.resolution, "questions.jsonl", jsonl(questions))


def load_questions(path: str | Path) -> list[dict]:
    """POPE's question JSONL; a line without ``question_id``, ``image``, ``text`` or a yes/no ``label`` is an error."""
    out = []
    for n, q in read_jsonl(path):
        missing = [k for k in ("question_id", "image", "text", "label") if k not in q]
        if missing or str(q.get("label", "")).lower() not in ("yes", "no"):
            raise ValueError(f"{path}:{n}: a POPE question needs question_id, image, text and label yes/no "
                             f"(missing {missing or 'a yes/no label'})")
        out.append(q)
    return out


def answer_label(text: str) -> str:
    """POPE's answer parsing: "no" or "not" in the first sentence -> "no", anything else -> "yes"."""
    first = text.split(".")[0].lower().replace(",", " ")
    return "no" if any(w in ("no", "not") for w in first.split()) else "yes"


def score(questions: list[dict], answers: dict) -> dict[str, float]:
    """Accuracy, precision, recall, F1 (of "yes") and the yes ratio, in percent (POPE's table).

    ``answers``: question_id -> answer text (or "yes"/"no"), parsed as POPE does (:func:`answer_label`)."""
    tp = fp = fn = tn = 0
    for q in questions:
        pred = answer_label(str(answers[q["question_id"]]))
        gold = q["label"].lower()
        if pred == "yes":
            tp, fp = tp + (gold == "yes"), fp + (gold == "no")
        else:
            fn, tn = fn + (gold == "yes"), tn + (gold == "no")
    n = len(questions)
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"accuracy": 100 * (tp + tn) / n, "precision": 100 * precision, "recall": 100 * recall,
            "f1": 100 * f1, "yes_ratio": 100 * (tp + fp) / n}


def chance(questions: list[dict]) -> dict[str, float]:
    """Always answering "yes": accuracy = the share of yes questions, F1 of a recall-1 guesser."""
    return score(questions, {q["question_id"]: "yes" for q in questions})


PRIMARY = "accuracy"


def load(folder: str | Path) -> list[dict]:
    """The task folder's questions (:func:`write`)."""
    return load_questions(Path(folder) / "questions.jsonl")


def predict(model, processor, folder: str | Path, questions: list[dict], phrasing, batch_size: int = 32) -> list[str]:
    """Each question's answer, the likelier of "Yes" / "No", asked in ``phrasing`` (in question order)."""
    from vlkit.zeroshot.scoring import ask
    return ask(model, processor, folder, questions, phrasing, ANSWERS, batch_size=batch_size)[0]


def correct(questions: list[dict], predictions: list[str]) -> list[bool]:
    """Per question, whether the answer (parsed as POPE does) is its label."""
    return [answer_label(str(p)) == q["label"].lower() for q, p in zip(questions, predictions, strict=True)]


def evaluate(model, processor, folder: str | Path, questions: list[dict], phrasing, batch_size: int = 32) -> dict:
    """POPE's metrics with every question asked in ``phrasing`` (:func:`predict`)."""
    answers = predict(model, processor, folder, questions, phrasing, batch_size)
    return score(questions, {q["question_id"]: a for q, a in zip(questions, answers)})
