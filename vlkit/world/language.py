"""The world in words: captions and LLaVA's symbolic context of a scene (notebook 01).

LLaVA's teacher never sees pixels: it reads a *symbolic context* (five captions plus one
``category: [x1, y1, x2, y2]`` line per object, boxes normalised to 0-1) and writes
instruction data about it. Our world makes that context exact: the captions are computed
from the scene's objects, and the boxes are the ground truth.
"""
from __future__ import annotations

import random

from vlkit.english import a_or_an, join_words, number_word, plural, where
from vlkit.world.scenes import Scene, WorldObject


def _where(o: WorldObject) -> str:
    return where(*o.center)


def captions(scene: Scene, rng: random.Random, n: int = 5) -> list[str]:
    """``n`` varied captions, all true of ``scene`` (notebook 01).

    Like COCO's five captions they differ in focus: the full inventory, counts by shape,
    one object's place, sizes, colours, and the words written on objects.
    """
    objs = list(scene.objects)
    k = len(objs)
    names = [a_or_an(o.category) for o in objs]
    by_shape: dict[str, int] = {}
    for o in objs:
        by_shape[o.shape] = by_shape.get(o.shape, 0) + 1
    colors = sorted({o.color for o in objs})
    big = max(objs, key=lambda o: o.box[2] - o.box[0])
    focus = rng.choice(objs)
    pool = [
        f"{join_words(names).capitalize()} on a dark background.",
        f"{number_word(k).capitalize()} {plural('shape', k)}: "
        + join_words([f"{number_word(c)} {plural(s, c)}" for s, c in sorted(by_shape.items())]) + ".",
        f"{a_or_an(focus.category).capitalize()} {_where(focus)} of the image.",
        f"A simple picture with {number_word(k)} {plural('object', k)} in "
        + join_words(colors) + ".",
        f"{join_words([a_or_an(o.size + ' ' + o.category) for o in objs]).capitalize()}.",
        f"The {big.size} {big.category} {_where(big)}"
        + (" is the biggest object." if sum(o.size == big.size for o in objs) == 1 and k > 1
           else " stands out."),
        "A dark image showing " + join_words([f"{a_or_an(o.category)} {_where(o)}" for o in objs]) + ".",
    ]
    for o in objs:
        if o.text:
            what = f'the digit {o.text}' if o.text.isdigit() else f'the word "{o.text}"'
            pool.append(f"{what.capitalize()} is written on {a_or_an(o.size + ' ' + o.category)}.")
    pool = list(dict.fromkeys(pool))  # identical objects can make identical sentences
    texts = [c for c in pool if "written on" in c]
    rest = [c for c in pool if "written on" not in c]
    rng.shuffle(rest)
    # Written words are rare and worth mentioning: they always make it into the five.
    out = (texts[:2] + rest)[:n]
    rng.shuffle(out)
    return out


def format_box(box) -> str:
    return "[" + ", ".join(f"{v:.3f}" for v in box) + "]"


def symbolic_context(scene: Scene, rng: random.Random) -> str:
    """LLaVA's text form: five captions, a blank line, then ``category: [x1, y1, x2, y2]`` lines (notebook 01)."""
    lines = captions(scene, rng, 5) + [""]
    lines += [f"{o.category}: {format_box(o.box)}" for o in scene.objects]
    return "\n".join(lines) + "\n"
