"""A ScienceQA-format benchmark generated from world scenes (notebook 03).

:func:`write_benchmark` writes a folder in ScienceQA's public layout (``problems.json``,
``pid_splits.json``, ``images/<split>/<pid>/image.png``), which
:mod:`vlkit.benchmarks.scienceqa` loads, prompts and scores like the real dataset. Each
template turns a scene (or nothing, for text questions) into one problem; every image question
needs the image: its text and hint are shared by scenes with different answers.
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

from vlkit import atomic, cache, paths
from vlkit import world as W
from vlkit.benchmarks.scienceqa import BINDING_CATEGORY, COUNTING_CATEGORY, SPLITS, image_path, select, to_llava_json
from vlkit.english import is_are, plural


def _default_world() -> W.WorldConfig:
    # Some objects carry a word: the language-science image questions.
    return W.WorldConfig(min_objects=2, max_objects=4, text_prob=0.3)


@dataclass
class ScienceQAConfig:
    """A generated ScienceQA-format benchmark (notebook 03).

    ``image_share`` of the problems come with an image (each its own scene); the rest are
    text questions with or without a hint. ``world`` should match the training data's world so
    the images look like the ones the model learned from.
    """
    n_problems: int = 1200
    seed: int = 0
    resolution: int = 64
    image_share: float = 0.7
    split_shares: tuple[float, float, float] = (0.6, 0.2, 0.2)  # train, val, test
    world: Any = field(default_factory=_default_world)
    profile: str = "full"

    def __post_init__(self):
        if self.n_problems < 1:
            raise ValueError(f"n_problems must be >= 1, got {self.n_problems}")
        if not 0 <= self.image_share <= 1:
            raise ValueError(f"image_share must be in [0, 1], got {self.image_share}")
        if len(self.split_shares) != 3 or abs(sum(self.split_shares) - 1) > 1e-6:
            raise ValueError(f"split_shares must be three shares summing to 1, got {self.split_shares}")
        self.split_shares = tuple(float(s) for s in self.split_shares)

    @classmethod
    def for_profile(cls, profile: str, **overrides) -> "ScienceQAConfig":
        sizes = {"smoke": dict(n_problems=120), "full": dict(n_problems=1200)}
        if profile not in sizes:
            raise ValueError(f"unknown profile {profile!r} (expected one of {sorted(sizes)})")
        return cls(**{**sizes[profile], "profile": profile, **overrides})


# A template turns (rng, scene or None) into the fields of one problem, correct choice first,
# or None when the scene does not support it (then a new scene is drawn).
Template = Callable[[random.Random, Any], "dict | None"]
TEMPLATES: dict[str, tuple[str, bool, Template, float]] = {}  # name -> (subject, image?, fn, weight)


def _template(name: str, subject: str, image: bool, weight: float = 1.0):
    """Register a template; ``weight`` is its relative frequency among its kind (image or not)."""
    def deco(fn: Template) -> Template:
        TEMPLATES[name] = (subject, image, fn, weight)
        return fn
    return deco


def _center(o) -> tuple[float, float]:
    x1, y1, x2, y2 = o.box
    return (x1 + x2) / 2, (y1 + y2) / 2


def _pick(rng: random.Random, correct: str, present: Iterable[str], pool: Iterable[str], k: int = 4) -> list[str]:
    """``correct`` first, then distractors: what the image shows first, then the rest of the pool."""
    shown = [c for c in dict.fromkeys(present) if c != correct]
    rest = [c for c in dict.fromkeys(pool) if c != correct and c not in shown]
    rng.shuffle(shown)
    rng.shuffle(rest)
    return [correct, *(shown + rest)[: k - 1]]


def _unique(objs, key) -> dict:
    """key value -> the one object with it (values shared by several objects are dropped)."""
    seen: dict = {}
    for o in objs:
        seen.setdefault(key(o), []).append(o)
    return {k: v[0] for k, v in seen.items() if len(v) == 1}


MARGIN = 0.12  # centres closer than this (in image widths) are not called left/right of each other


@_template("count_all", "natural science", True)
def _count_all(rng, scene):
    n = len(scene.objects)
    pool = [str(i) for i in range(1, 8)]
    return dict(question="How many shapes are in the picture?",
                choices=_pick(rng, str(n), [], pool), grade=f"grade{rng.choice([1, 2])}",
                topic="counting", category=COUNTING_CATEGORY, skill="Count the objects in a picture",
                lecture="To count objects, point at each one exactly once.",
                solution=f"The picture shows {n} {plural('shape', n)}.")


@_template("count_color", "natural science", True)
def _count_color(rng, scene):
    color = rng.choice(sorted({o.color for o in scene.objects}) + sorted(W.COLORS))
    n = sum(o.color == color for o in scene.objects)
    return dict(question=f"How many {color} shapes are in the picture?",
                choices=_pick(rng, str(n), [], [str(i) for i in range(0, 6)]),
                grade=f"grade{rng.choice([3, 4])}", topic="counting", category=COUNTING_CATEGORY,
                skill="Count objects of one colour",
                lecture="Count only the objects that have the colour asked about.",
                solution=f"There {is_are(n)} {n} {color} {plural('shape', n)}.")


# The binding questions are the ones notebook 03 reports against the bag-of-attributes
# baseline: more of them, so that subset is not too small to read.
@_template("color_of_shape", "natural science", True, weight=3)
def _color_of_shape(rng, scene):
    unique = _unique(scene.objects, lambda o: o.shape)
    options = [o for o in unique.values() if any(p.color != o.color for p in scene.objects)]
    if not options:
        return None  # needs a lone shape and another colour in the picture: a binding question
    o = rng.choice(sorted(options, key=lambda o: o.shape))
    return dict(question=f"What colour is the {o.shape}?",
                choices=_pick(rng, o.color, [p.color for p in scene.objects], W.COLORS),
                grade=f"grade{rng.choice([7, 8])}", topic="colours and shapes",
                category=BINDING_CATEGORY, skill="Bind a colour to a shape",
                lecture="Each object has its own colour; find the object first, then read its colour.",
                solution=f"The {o.shape} is {o.color}.")


@_template("shape_of_color", "natural science", True, weight=2)
def _shape_of_color(rng, scene):
    unique = _unique(scene.objects, lambda o: o.color)
    options = [o for o in unique.values() if any(p.shape != o.shape for p in scene.objects)]
    if not options:
        return None
    o = rng.choice(sorted(options, key=lambda o: o.color))
    return dict(question=f"What shape is the {o.color} object?",
                choices=_pick(rng, o.shape, [p.shape for p in scene.objects], W.SHAPES),
                grade=f"grade{rng.choice([7, 8])}", topic="colours and shapes",
                category=BINDING_CATEGORY, skill="Bind a shape to a colour",
                lecture="Find the object with the colour asked about, then name its shape.",
                solution=f"The {o.color} object is a {o.shape}.")


@_template("size_of_shape", "natural science", True)
def _size_of_shape(rng, scene):
    unique = _unique(scene.objects, lambda o: o.category)
    options = [o for o in unique.values() if any(p.size != o.size for p in scene.objects)]
    if not options:
        return None
    o = rng.choice(sorted(options, key=lambda o: o.category))
    return dict(question=f"What size is the {o.category}?",
                choices=_pick(rng, o.size, [], W.SIZES, k=len(W.SIZES)),
                grade=f"grade{rng.choice([9, 10])}", topic="size", category=BINDING_CATEGORY,
                skill="Bind a size to an object",
                lecture="Compare the object with the others in the picture to judge its size.",
                solution=f"The {o.category} is {o.size}.")


@_template("relative_position", "natural science", True)
def _relative_position(rng, scene):
    unique = list(_unique(scene.objects, lambda o: o.category).values())
    pairs = [(a, b) for a in unique for b in unique
             if a is not b and abs(_center(a)[0] - _center(b)[0]) > MARGIN]
    if not pairs:
        return None
    a, b = rng.choice(sorted(pairs, key=lambda ab: (ab[0].category, ab[1].category)))
    side = "left" if _center(a)[0] < _center(b)[0] else "right"
    return dict(question=f"Is the {a.category} to the left or to the right of the {b.category}?",
                choices=_pick(rng, side, [], ["left", "right"], k=2),
                grade=f"grade{rng.choice([9, 10, 11])}", topic="spatial reasoning", category="Spatial relations",
                skill="Compare the positions of two objects",
                lecture="Left and right are seen from the viewer of the picture.",
                solution=f"The {a.category} is to the {side} of the {b.category}.")


def _extreme(scene, axis: int, lowest: bool):
    """The one object clearly furthest along an axis (by MARGIN), else None."""
    objs = list(_unique(scene.objects, lambda o: o.category).values())
    if len(objs) < 2 or len(objs) < len(scene.objects):
        return None, objs
    ranked = sorted(objs, key=lambda o: _center(o)[axis], reverse=not lowest)
    if abs(_center(ranked[0])[axis] - _center(ranked[1])[axis]) <= MARGIN:
        return None, objs
    return ranked[0], objs


@_template("leftmost", "natural science", True)
def _leftmost(rng, scene):
    left = rng.random() < 0.5
    o, objs = _extreme(scene, 0, left)
    if o is None:
        return None
    word = "left" if left else "right"
    return dict(question=f"Which shape is farthest to the {word}?",
                choices=_pick(rng, f"the {o.category}", [f"the {p.category}" for p in objs], [], k=4),
                grade=f"grade{rng.choice([3, 4])}", topic="spatial reasoning", category="Spatial relations",
                skill="Find the object farthest to one side",
                lecture="Compare where each object is from left to right.",
                solution=f"The {o.category} is farthest to the {word}.")


MAP_HINT = "The picture is a map. North is at the top of the map and east is on the right."


@_template("map_extreme", "social science", True)
def _map_extreme(rng, scene):
    direction = rng.choice(["north", "south", "east", "west"])
    axis, lowest = {"north": (1, True), "south": (1, False), "east": (0, False), "west": (0, True)}[direction]
    o, objs = _extreme(scene, axis, lowest)
    if o is None:
        return None
    return dict(question=f"Which shape is farthest {direction} on the map?", hint=MAP_HINT,
                choices=_pick(rng, f"the {o.category}", [f"the {p.category}" for p in objs], [], k=4),
                grade=f"grade{rng.choice([4, 5])}", topic="geography", category="Geography",
                skill="Read a map: cardinal directions",
                lecture="On a map with north at the top, south is at the bottom, east is right and west is left.",
                solution=f"The {o.category} is farthest {direction}.")


@_template("map_direction", "social science", True)
def _map_direction(rng, scene):
    unique = list(_unique(scene.objects, lambda o: o.category).values())
    pairs = []
    for a in unique:
        for b in unique:
            if a is b:
                continue
            dx, dy = _center(a)[0] - _center(b)[0], _center(a)[1] - _center(b)[1]
            # Only pairs where one direction clearly dominates: the answer is unambiguous.
            if max(abs(dx), abs(dy)) > MARGIN and max(abs(dx), abs(dy)) > 2 * min(abs(dx), abs(dy)):
                d = ("east" if dx > 0 else "west") if abs(dx) > abs(dy) else ("south" if dy > 0 else "north")
                pairs.append((a, b, d))
    if not pairs:
        return None
    a, b, d = rng.choice(sorted(pairs, key=lambda t: (t[0].category, t[1].category)))
    return dict(question=f"Which direction is the {a.category} from the {b.category}?", hint=MAP_HINT,
                choices=_pick(rng, d, [], ["north", "south", "east", "west"]),
                grade=f"grade{rng.choice([7, 8])}", topic="geography", category="Geography",
                skill="Read a map: relative directions",
                lecture="Start at the second place and see which way you go to reach the first.",
                solution=f"The {a.category} is {d} of the {b.category}.")


TOWNS = ("Ardale", "Brimley", "Cotfield", "Dunmore", "Elmstead", "Fernhill", "Glenrock", "Hollybrook")


@_template("town_order", "social science", False)
def _town_order(rng, scene):
    towns = rng.sample(TOWNS, 3)  # towns[0] is farthest in `d`
    d, opposite = rng.choice([("north", "south"), ("south", "north"), ("east", "west"), ("west", "east")])
    facts = [f"{towns[0]} is {d} of {towns[1]}.", f"{towns[1]} is {d} of {towns[2]}."]
    rng.shuffle(facts)
    far = rng.random() < 0.5
    ask = d if far else opposite
    answer = towns[0] if far else towns[2]
    return dict(question=f"Which town is farthest {ask}?", hint=" ".join(facts),
                choices=_pick(rng, answer, towns, [], k=3), grade=f"grade{rng.choice([6, 7, 8])}",
                topic="geography", category="Geography", skill="Reason about relative locations",
                lecture="If A is north of B and B is north of C, then A is north of C.",
                solution=f"{answer} is farthest {ask}.")


@_template("opposite_direction", "social science", False)
def _opposite_direction(rng, scene):
    opp = {"north": "south", "south": "north", "east": "west", "west": "east"}
    d = rng.choice(sorted(opp))
    return dict(question=f"Which direction is opposite to {d}?",
                choices=_pick(rng, opp[d], [], [x for x in opp if x != d], k=3),
                grade=f"grade{rng.choice([1, 2])}", topic="geography", category="Geography",
                skill="Identify cardinal directions",
                lecture="The four cardinal directions are north, east, south and west.",
                solution=f"The opposite of {d} is {opp[d]}.")


SPELLING_WORDS = ("apple", "river", "stone", "cloud", "tiger", "music", "bread", "light", "green", "house")


@_template("word_on_object", "language science", True)
def _word_on_object(rng, scene):
    unique = _unique(scene.objects, lambda o: o.category)
    options = [o for o in unique.values() if getattr(o, "text", None)]
    if not options:
        return None
    o = rng.choice(sorted(options, key=lambda o: o.category))
    return dict(question=f"What is written on the {o.category}?",
                choices=_pick(rng, o.text, [p.text for p in scene.objects if getattr(p, "text", None)], W.WORDS),
                grade=f"grade{rng.choice([2, 3])}", topic="reading", category="Reading",
                skill="Read a word in a picture",
                lecture="Read the letters written on the object from left to right.",
                solution=f"The {o.category} says \"{o.text}\".")


def _misspell(rng: random.Random, w: str) -> str:
    i = rng.randrange(len(w) - 1)
    kind = rng.choice(["swap", "drop", "double"])
    if kind == "swap" and w[i] != w[i + 1]:
        return w[:i] + w[i + 1] + w[i] + w[i + 2:]
    if kind == "drop":
        return w[:i] + w[i + 1:]
    return w[:i] + w[i] + w[i:]


@_template("spelling", "language science", False)
def _spelling(rng, scene):
    w = rng.choice(SPELLING_WORDS)
    wrong = []
    while len(wrong) < 2:
        m = _misspell(rng, w)
        if m != w and m not in wrong:
            wrong.append(m)
    return dict(question="Which word is spelled correctly?", choices=[w, *wrong],
                grade=f"grade{rng.choice([1, 2])}", topic="spelling", category="Spelling",
                skill="Spell common words", lecture="Say the word slowly and check each letter.",
                solution=f"\"{w}\" is spelled correctly.")


@_template("alphabetical", "language science", False)
def _alphabetical(rng, scene):
    words = rng.sample(SPELLING_WORDS, 3)
    first = min(words)
    return dict(question="Which word would you find first in a dictionary?",
                choices=_pick(rng, first, words, [], k=3), grade=f"grade{rng.choice([3, 4])}",
                topic="reference skills", category="Alphabetical order",
                skill="Use guide words and alphabetical order",
                lecture="Dictionary words are in alphabetical order: compare first letters, then the next.",
                solution=f"\"{first}\" comes first in alphabetical order.")


@_template("word_class", "language science", False)
def _word_class(rng, scene):
    shape, color, size = rng.choice(W.SHAPES), rng.choice(sorted(W.COLORS)), rng.choice(W.SIZES)
    sentence = f"The {size} {color} {shape} is next to the wall."
    kind, answer = rng.choice([("colour", color), ("shape", shape), ("size", size)])
    return dict(question=f"Which word in the sentence names a {kind}?", hint=f"Read the sentence: {sentence}",
                choices=_pick(rng, answer, [shape, color, size], [], k=3),
                grade=f"grade{rng.choice([3, 4, 5])}", topic="vocabulary", category="Word meaning",
                skill="Identify describing words", lecture="Describing words tell us about colour, shape and size.",
                solution=f"\"{answer}\" names a {kind}.")


@_template("tense", "language science", False)
def _tense(rng, scene):
    shape = rng.choice(W.SHAPES)
    verbs = {"past tense": "moved", "present tense": "moves", "future tense": "will move"}
    tense = rng.choice(sorted(verbs))
    where = rng.choice(["to the left", "to the right", "up", "down"])
    return dict(question="Which tense does the sentence use?",
                hint=f"The {shape} {verbs[tense]} {where}.",
                choices=_pick(rng, tense, [], verbs, k=3), grade=f"grade{rng.choice([7, 8, 9])}",
                topic="verbs", category="Verb tense", skill="Is the sentence in the past, present, or future tense?",
                lecture="Past tense tells what already happened; future tense often uses 'will'.",
                solution=f"The verb \"{verbs[tense]}\" is in the {tense}.")


def _problem(i: int, cfg: ScienceQAConfig):
    """Problem i of the benchmark: depends only on (seed, i). Returns (problem, scene or None)."""
    rng = random.Random(f"scienceqa-{cfg.seed}-{i}")
    with_image = rng.random() < cfg.image_share
    names = sorted(n for n, t in TEMPLATES.items() if t[1] == with_image)
    weights = [TEMPLATES[n][3] for n in names]
    u = rng.random()
    split = "train" if u < cfg.split_shares[0] else "val" if u < cfg.split_shares[0] + cfg.split_shares[1] else "test"
    for _attempt in range(50):
        name = rng.choices(names, weights)[0]
        subject, _, fn, _ = TEMPLATES[name]
        scene = W.sample_scene(rng, cfg.world, scene_id=str(i + 1)) if with_image else None
        fields = fn(rng, scene)
        if fields is not None:
            break
    else:  # pragma: no cover - every world config supports counting
        raise RuntimeError(f"could not generate problem {i}: no template fits the sampled scenes")
    correct, choices = fields["choices"][0], list(fields["choices"])
    rng.shuffle(choices)  # the answer's position is uniform: "always A" is chance
    problem = {
        "question": fields["question"], "choices": choices, "answer": choices.index(correct),
        "hint": fields.get("hint", ""), "image": "image.png" if with_image else None,
        "task": "closed choice", "grade": fields["grade"], "subject": subject,
        "topic": fields["topic"], "category": fields["category"], "skill": fields["skill"],
        "lecture": fields["lecture"], "solution": fields["solution"], "split": split,
    }
    return problem, scene


def generate_problems(cfg: ScienceQAConfig) -> tuple[dict[str, dict], dict[str, Any]]:
    """``(problems, scenes)``: the benchmark in memory, pids "1".."N" (notebook 03)."""
    problems, scenes = {}, {}
    for i in range(cfg.n_problems):
        pid = str(i + 1)
        problems[pid], scene = _problem(i, cfg)
        if scene is not None:
            scenes[pid] = scene
    return problems, scenes


def write_benchmark(out: str | Path, cfg: ScienceQAConfig) -> Path:
    """Write a benchmark folder in ScienceQA's layout (notebook 03; ``vlkit eval generate-scienceqa``).

    ``problems.json``, ``pid_splits.json``, ``images/<split>/<pid>/image.png``, plus
    ``scenes.json`` (pid -> scene of its image, for baselines and qualitative plots) and
    ``llava_<split>.json`` (LLaVA conversation records). Written atomically.
    """
    out = Path(out)
    with atomic.atomic_dir(out) as tmp:
        _write_into(tmp, cfg)
    return out


def _write_into(folder: Path, cfg: ScienceQAConfig) -> None:
    from tqdm.auto import tqdm

    problems, scenes = generate_problems(cfg)
    for pid, scene in tqdm(scenes.items(), desc="scienceqa images", disable=len(scenes) < 2000):
        path = image_path(folder, pid, problems[pid])
        path.parent.mkdir(parents=True, exist_ok=True)
        W.render(scene, cfg.resolution).save(path)
    atomic.write_json(folder / "problems.json", problems)
    atomic.write_json(folder / "pid_splits.json",
                      {s: [pid for pid, p in problems.items() if p["split"] == s] for s in SPLITS})
    atomic.write_json(folder / "scenes.json", {pid: s.to_dict() for pid, s in scenes.items()}, indent=None)
    for s in SPLITS:
        atomic.write_json(folder / f"llava_{s}.json", to_llava_json(select(problems, split=s)), indent=None)


def ensure_scienceqa(cfg: ScienceQAConfig) -> Path:
    """The benchmark folder for ``cfg`` under ``artifacts/<profile>/``, built when missing (notebook 03)."""
    return cache.cached(paths.artifacts_dir(cfg.profile), "scienceqa", cfg, lambda tmp: _write_into(tmp, cfg))
