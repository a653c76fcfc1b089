"""A HatefulMemes-like task: does the caption fit the image? (notebook 05).

HatefulMemes (Kiela et al., 2020) pairs an image with a text and asks a binary question that needs
both; its files are JSONL ``{"id", "img", "label", "text"}`` and it reports AUROC and accuracy. The
classes here: label 1 when the caption does *not* fit the image (the class to detect, as "hateful"
is), 0 when it does. A fitting caption lists the scene's objects; a misfit one lists another scene's,
whose set of objects differs, so only the image can tell them apart. The model's P(label 1) is
``sigmoid(log p("No") - log p("Yes"))`` over the two answers (:func:`misfit_probability`), as the
authors' code ranks classes by their likelihood.
"""
from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from pathlib import Path

from scipy.stats import mannwhitneyu

from vlkit import world as W
from vlkit.english import a_or_an, join_words
from vlkit.jsonl import jsonl, read_jsonl
from vlkit.zeroshot.files import TaskConfig, write_task

PHRASINGS: tuple[str, ...] = (
    "Does the caption match the image? Caption: {caption}",
    "Does this caption describe the image? {caption}",
    "Is this a correct caption for the picture? {caption}",
    "Caption: {caption} Is it true of the image?",
    "Is the following description accurate? {caption}",
    "Does the text fit the picture? Text: {caption}",
    "Is it right to say: {caption}",
    "Would you caption this image \"{caption}\"?",
    "True or false for this image: {caption}",
    "Is the statement about the image correct? {caption}",
    "Check the caption against the image: {caption} Does it fit?",
    "Someone described the image as: {caption} Are they right?",
    "Meme text: {caption} Does it go with the image?",
    "{caption} Is that what the image shows?",
    "Answer yes or no. Does the image show this: {caption}",
    "Look at the picture. {caption} Correct?",
)
ANSWERS = ("Yes", "No")


def caption(scene: W.Scene) -> str:
    """The scene's inventory caption ("A red square and a blue circle on a dark background.")."""
    return f"{join_words([a_or_an(o.category) for o in scene.objects]).capitalize()} on a dark background."


@dataclass
class MemesConfig(TaskConfig):
    """``n`` image-caption pairs, half of them misfit (label 1)."""

    seed: int = 5002
    world: W.WorldConfig = field(default_factory=lambda: W.WorldConfig(min_objects=1, max_objects=3))


def generate(cfg: MemesConfig) -> tuple[list[dict], dict[str, W.Scene]]:
    """``(items, scenes)`` in HatefulMemes' fields (plus ``fields`` for the phrasings)."""
    items, scenes = [], {}
    for i in range(cfg.n):
        rng = random.Random(f"memes-{cfg.seed}-{i}")
        scene = W.sample_scene(rng, cfg.world, scene_id=f"memes_{cfg.seed}_{i:05d}")
        misfit = i % 2 == 1
        text = caption(scene)
        if misfit:
            cats = sorted(o.category for o in scene.objects)
            other = scene
            while sorted(o.category for o in other.objects) == cats:
                other = W.sample_scene(rng, cfg.world)
            text = caption(other)
        img = f"img/{scene.id}.png"
        scenes[img] = scene
        items.append({"id": i, "img": img, "label": int(misfit), "text": text, "fields": {"caption": text}})
    return items, scenes


def write(folder: str | Path, cfg: MemesConfig) -> Path:
    """``test.jsonl`` (HatefulMemes' format, plus ``fields``), ``images/img/*.png`` and ``scenes.json``."""
    items, scenes = generate(cfg)
    return write_task(folder, scenes, cfg.resolution, "test.jsonl", jsonl(items))


def load_items(path: str | Path) -> list[dict]:
    """HatefulMemes' JSONL; an item without ``id``, ``img``, ``text`` or a 0/1 ``label`` is an error.

    Each item gets ``question_id`` and ``image`` (its ``id`` and ``img``) for :func:`vlkit.zeroshot.scoring.ask`."""
    out = []
    for n, q in read_jsonl(path):
        if any(k not in q for k in ("id", "img", "text")) or q.get("label") not in (0, 1):
            raise ValueError(f"{path}:{n}: a HatefulMemes item needs id, img, text and label 0 or 1")
        out.append({**q, "question_id": q["id"], "image": q["img"], "fields": q.get("fields") or {"caption": q["text"]}})
    return out


def misfit_probability(logp_yes: float, logp_no: float) -> float:
    """P(label 1) from the answers' log-likelihoods, the two classes renormalised: ``sigmoid(lp_no - lp_yes)``."""
    return 1 / (1 + math.exp(logp_yes - logp_no))


def score(items: list[dict], probabilities: dict) -> dict[str, float]:
    """AUROC and accuracy (P(label 1) > 0.5), in percent.

    ``probabilities``: id -> P(label 1) in [0, 1] (:func:`misfit_probability`); anything else is an error."""
    labels = [q["label"] for q in items]
    p = [float(probabilities[q["id"]]) for q in items]
    if any(not 0 <= x <= 1 for x in p):
        raise ValueError("probabilities must be in [0, 1] (use misfit_probability on log-likelihoods)")
    pos = [s for s, y in zip(p, labels) if y == 1]
    neg = [s for s, y in zip(p, labels) if y == 0]
    if not pos or not neg:
        raise ValueError("AUROC needs items of both labels")
    auroc = float(mannwhitneyu(pos, neg).statistic) / (len(pos) * len(neg))
    accuracy = sum((s > 0.5) == bool(y) for s, y in zip(p, labels)) / len(items)
    return {"auroc": 100 * auroc, "accuracy": 100 * accuracy}


def chance(items: list[dict]) -> dict[str, float]:
    """A constant score: AUROC 50, accuracy of the majority class."""
    share = sum(q["label"] for q in items) / len(items)
    return {"auroc": 50.0, "accuracy": 100 * max(share, 1 - share)}


PRIMARY = "auroc"


def load(folder: str | Path) -> list[dict]:
    """The task folder's items (:func:`write`)."""
    return load_items(Path(folder) / "test.jsonl")


def predict(model, processor, folder: str | Path, items: list[dict], phrasing, batch_size: int = 32) -> list[float]:
    """Each item's P(label 1) (:func:`misfit_probability` of the "Yes" / "No" likelihoods) asked in ``phrasing``."""
    from vlkit.zeroshot.scoring import ask
    _, sums = ask(model, processor, folder, items, phrasing, ANSWERS, batch_size=batch_size)
    return [misfit_probability(*s) for s in sums]


def correct(items: list[dict], predictions: list[float]) -> list[bool]:
    """Per item, whether P(label 1) > 0.5 is its label (the accuracy's decision)."""
    return [(p > 0.5) == bool(q["label"]) for q, p in zip(items, predictions, strict=True)]


def evaluate(model, processor, folder: str | Path, items: list[dict], phrasing, batch_size: int = 32) -> dict:
    """AUROC and accuracy with every item asked in ``phrasing`` (:func:`predict`)."""
    return score(items, {q["id"]: p for q, p in zip(items, predict(model, processor, folder, items, phrasing, batch_size))})
