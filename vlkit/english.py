"""English for generated text: plurals, counts, articles, lists, places in the image (notebook 01).

The world's captions, the template teacher's answers, the ScienceQA generator and the
LLaVA-Bench judge all write (or read) the same small English; these helpers are its one
definition, so that a caption, an answer and the judge's reading of it agree word for word.
They are deliberately simple: enough English for the nouns the workbook uses (its shapes,
"object", colour + noun categories, and COCO-style categories such as "traffic light"),
not a general inflection library.
"""
from __future__ import annotations

from typing import Iterable

_NUM = ("no", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")
_IRREGULAR = {"person": "people", "man": "men", "woman": "women", "child": "children",
              "mouse": "mice", "foot": "feet", "tooth": "teeth", "sheep": "sheep",
              "fish": "fish", "deer": "deer", "knife": "knives", "leaf": "leaves",
              "skis": "skis", "scissors": "scissors", "glasses": "glasses"}
# Adverbial forms of the cells of position_phrase that are not corners.
_PLACES = {"center": "in the center", "top": "at the top", "bottom": "at the bottom"}


def number_word(n: int) -> str:
    """0..10 as words ("no" for zero), larger numbers as digits."""
    return _NUM[n] if 0 <= n < len(_NUM) else str(n)


def pluralize(noun: str) -> str:
    """English plural of a (possibly multi-word) noun: the last word changes."""
    *mods, head = noun.split(" ")
    if head in _IRREGULAR:
        p = _IRREGULAR[head]
    elif head.endswith(("s", "x", "z", "ch", "sh")):
        p = head + "es"
    elif head.endswith("y") and len(head) > 1 and head[-2] not in "aeiou":
        p = head[:-1] + "ies"
    else:
        p = head + "s"
    return " ".join([*mods, p])


def plural(noun: str, n: int) -> str:
    """``noun`` as it goes with ``n``: "circle" for one, "circles" for any other count."""
    return noun if n == 1 else pluralize(noun)


def counted(n: int, noun: str) -> str:
    """'no dogs', 'one dog', 'two dogs'."""
    return f"{number_word(n)} {plural(noun, n)}"


def is_are(n: int) -> str:
    """The verb that agrees with a count: "is" for one, "are" otherwise ("there are no dogs")."""
    return "is" if n == 1 else "are"


def a_or_an(words: str) -> str:
    """``words`` after its indefinite article, chosen by the first letter: "an orange cross"."""
    return ("an " if words[0] in "aeiou" else "a ") + words


def join_words(items: Iterable[str], word: str = "and") -> str:
    """"a", "a and b", "a, b and c" (``word="or"``: "a, b or c"); no Oxford comma."""
    items = list(items)
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + f" {word} " + items[-1]


def position_phrase(cx: float, cy: float) -> str:
    """Where a centre lies in a 3x3 grid: "top left", "center", "right", ... (notebook 01).

    The world's captions, the teacher's answers and the judge all use these thirds, so they agree.
    """
    h = "left" if cx < 1 / 3 else "right" if cx > 2 / 3 else ""
    v = "top" if cy < 1 / 3 else "bottom" if cy > 2 / 3 else ""
    return f"{v} {h}".strip() or "center"


def where(cx: float, cy: float, side: str = "") -> str:
    """:func:`position_phrase` as an adverbial: "in the top left corner", "at the top", "on the left".

    ``side`` is appended to "on the left" / "on the right": the teacher says "on the left side",
    the world's captions "on the left".
    """
    p = position_phrase(cx, cy)
    if p in ("left", "right"):
        return f"on the {p}{side}"
    return _PLACES.get(p, f"in the {p} corner")
