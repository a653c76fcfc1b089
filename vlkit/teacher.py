"""Language-only teachers: symbolic context (captions + boxes) -> instruction data (notebook 01).

LLaVA asked a text-only GPT-4 to write conversations, detailed descriptions and complex
reasoning about an image it never saw, given only captions and ``category: [x1, y1, x2, y2]``
boxes. Here the same contract has two implementations:

- :class:`TemplateTeacher` (this module): offline and deterministic; every answer is computed
  from the boxes, so it is true by construction. It assumes nothing about the categories: COCO
  contexts ("dog", "traffic light") work as well as ours ("red circle").
- :class:`vlkit.chat_teacher.ChatTeacher`: any OpenAI-compatible ``/v1/chat/completions``
  endpoint (through :class:`vlkit.chat_client.ChatClient`), with our own system prompts and
  few-shot examples; replies are validated and malformed ones are skipped and counted, never
  written.

Both return LLaVA turns: ``[{"from": "human", "value": q}, {"from": "gpt", "value": a}, ...]``.
This module also parses the symbolic context both read (:func:`parse_context`).
"""
from __future__ import annotations

import math
import random
import re
from dataclasses import dataclass

from vlkit.english import a_or_an, counted, is_are, join_words, number_word, pluralize, where

KINDS = ("conversation", "detail", "reasoning")

# --------------------------------------------------------------------------------- parsing

_BOX_LINE = re.compile(r"^(?P<cat>[^:\[\]]*?)\s*:\s*\[(?P<nums>[^\]]*)\]\s*$")


@dataclass(frozen=True)
class Context:
    """A parsed symbolic context: captions and ``(category, (x1, y1, x2, y2))`` pairs (notebook 01)."""

    captions: list[str]
    objects: list[tuple[str, tuple[float, float, float, float]]]


def parse_context(text: str, source: str = "context") -> Context:
    """Parse LLaVA's context text: captions, a blank line, then one box line per object (notebook 01).

    Raises ValueError naming ``source`` and the line for anything malformed: a missing blank
    line, a box that is not four numbers in [0, 1], or a box with x2 < x1 or y2 < y1.
    """
    lines = text.replace("\r\n", "\n").split("\n")
    while lines and not lines[-1].strip():  # trailing blank lines carry nothing
        lines.pop()
    captions: list[str] = []
    i = 0
    while i < len(lines) and lines[i].strip():
        if _BOX_LINE.match(lines[i].strip()):
            raise ValueError(f"{source}, line {i + 1}: box line {lines[i].strip()!r} before the "
                             "blank line that separates captions from boxes")
        captions.append(lines[i].strip())
        i += 1
    if i == len(lines):
        if text.replace("\r\n", "\n").rstrip(" \t").endswith("\n\n"):
            raise ValueError(f"{source}, line {i + 2}: no 'category: [x1, y1, x2, y2]' lines after the captions")
        raise ValueError(f"{source}, line {i + 1}: missing the blank line between captions and boxes")
    if not captions:
        raise ValueError(f"{source}, line 1: no captions before the blank line")
    objects = []
    for n, raw in enumerate(lines[i:], start=i + 1):
        line = raw.strip()
        if not line:
            continue
        m = _BOX_LINE.match(line)
        if not m or not m.group("cat"):
            raise ValueError(f"{source}, line {n}: expected 'category: [x1, y1, x2, y2]', got {line!r}")
        parts = [p.strip() for p in m.group("nums").split(",")]
        try:
            box = tuple(float(p) for p in parts)
        except ValueError:
            raise ValueError(f"{source}, line {n}: box {line!r} has a value that is not a number") from None
        if len(box) != 4:
            raise ValueError(f"{source}, line {n}: box needs 4 numbers, got {len(box)} in {line!r}")
        if not all(0.0 <= v <= 1.0 for v in box) or any(math.isnan(v) for v in box):
            raise ValueError(f"{source}, line {n}: box coordinates must lie in [0, 1], got {line!r}")
        if box[2] < box[0] or box[3] < box[1]:
            raise ValueError(f"{source}, line {n}: box has x2 < x1 or y2 < y1: {line!r}")
        objects.append((" ".join(m.group("cat").lower().split()), box))
    if not objects:
        raise ValueError(f"{source}, line {len(lines)}: no 'category: [x1, y1, x2, y2]' lines after the captions")
    return Context(captions, objects)


# ------------------------------------------------------------------------------ language

COLOR_WORDS = frozenset(
    "red orange yellow green cyan blue purple white black gray grey brown pink violet "
    "magenta teal navy beige gold silver maroon olive turquoise".split())


def size_word(area: float) -> str:
    """Area fraction of the image -> size word; thresholds sit between the world's size classes."""
    return "small" if area < 0.05 else "medium-sized" if area < 0.09 else "large"


@dataclass(frozen=True)
class _Obj:
    category: str
    box: tuple[float, float, float, float]

    @property
    def head(self) -> str:
        return self.category.split(" ")[-1]

    @property
    def mods(self) -> list[str]:
        return self.category.split(" ")[:-1]

    @property
    def kind(self) -> str:
        """The category without colour words: what the object *is* ("circle", "traffic light")."""
        return " ".join(m for m in self.category.split(" ") if m not in COLOR_WORDS) or self.head

    @property
    def color(self) -> str | None:
        cs = [m for m in self.mods if m in COLOR_WORDS]
        return cs[0] if len(cs) == 1 else None

    @property
    def cx(self) -> float:
        return (self.box[0] + self.box[2]) / 2

    @property
    def cy(self) -> float:
        return (self.box[1] + self.box[3]) / 2

    @property
    def area(self) -> float:
        return (self.box[2] - self.box[0]) * (self.box[3] - self.box[1])

    @property
    def where(self) -> str:
        return where(self.cx, self.cy, side=" side")


# ------------------------------------------------------------------------ template teacher

DETAIL_PROMPTS = (
    "Describe the image in detail.",
    "Provide a detailed description of the given image.",
    "Give a thorough description of what you see in the picture.",
    "Explain the contents of the image, with all the details you can find.",
    "What is in this image? Describe every object and where it is.",
    "Write a detailed account of the scene shown in the image.",
    "Walk me through the important details of this image.",
    "Describe the objects in the image, their positions and their sizes.",
)


class _Scene:
    """The facts a template answer may use, computed once from a parsed context."""

    def __init__(self, ctx: Context):
        self.captions = ctx.captions
        self.objs = [_Obj(c, b) for c, b in ctx.objects]
        self.by_cat: dict[str, list[_Obj]] = {}
        self.by_kind: dict[str, list[_Obj]] = {}
        for o in self.objs:
            self.by_cat.setdefault(o.category, []).append(o)
            self.by_kind.setdefault(o.kind, []).append(o)
        self.unique = [o for o in self.objs if len(self.by_cat[o.category]) == 1]

    def ref(self, o: _Obj) -> str:
        """A name that picks out ``o``: 'the red circle', or with its place when repeated."""
        if len(self.by_cat[o.category]) == 1:
            return f"the {o.category}"
        same_place = [p for p in self.by_cat[o.category] if p.where == o.where]
        return f"the {o.category} {o.where}" if len(same_place) == 1 else f"one of the {pluralize(o.category)}"

    def inventory(self) -> str:
        """'two blue squares and a red circle', grouped by category, in order of appearance."""
        return join_words([counted(len(v), k) if len(v) > 1 else a_or_an(k) for k, v in self.by_cat.items()])

    def absent_combos(self) -> list[str]:
        """Categories built from this scene's words that are not in it ('blue circle')."""
        colors = sorted({o.color for o in self.objs if o.color})
        kinds = sorted(self.by_kind)
        out = []
        for c in colors:
            for k in kinds:
                cat = f"{c} {k}"
                if not any(o.kind == k and c in o.mods for o in self.objs):
                    out.append(cat)
        return out


def llava_turns(pairs: list[tuple[str, str]]) -> list[dict]:
    """``[(question, answer), ...]`` -> LLaVA turns, human then gpt (notebook 01)."""
    out = []
    for q, a in pairs:
        out += [{"from": "human", "value": q}, {"from": "gpt", "value": a}]
    return out


class TemplateTeacher:
    """Offline teacher: questions and answers computed from the boxes, always true (notebook 01).

    ``generate(context_text, kind, key=None)``: with ``key`` (e.g. the image id) the output
    depends only on ``(seed, key, kind, context)``, so records can be made in any order.
    """

    def __init__(self, seed: int = 0):
        self.seed = seed
        self.rng = random.Random(seed)
        self.n_malformed = 0  # same counters as ChatTeacher; a template reply is never malformed
        self.n_requests = 0

    def __repr__(self) -> str:
        return f"TemplateTeacher(seed={self.seed})"

    def generate(self, context_text: str, kind: str, key: str | None = None) -> list[dict]:
        if kind not in KINDS:
            raise ValueError(f"unknown kind {kind!r}; expected one of {', '.join(KINDS)}")
        rng = random.Random(f"{self.seed}:{key}:{kind}") if key is not None else self.rng
        s = _Scene(parse_context(context_text))
        return getattr(self, f"_{kind}")(s, rng)

    # -- conversation: several short Q&A turns ------------------------------------------
    def _conversation(self, s: _Scene, rng: random.Random) -> list[dict]:
        qa = {}
        n = len(s.objs)
        qa["count"] = (rng.choice(["How many objects are in the image?", "How many objects can you see?",
                                   "How many things are there in the picture?"]),
                       f"There {is_are(n)} {counted(n, 'object')} in the image: {s.inventory()}.")
        h = rng.choice(sorted(s.by_kind))
        c = len(s.by_kind[h])
        qa["count_head"] = (f"How many {pluralize(h)} are there?",
                            f"There {is_are(c)} {counted(c, h)}"
                            + (f": {join_words([a_or_an(o.category) for o in s.by_kind[h]])}." if c > 1 and
                               len({o.category for o in s.by_kind[h]}) > 1 else "."))
        absent = s.absent_combos()
        if absent and rng.random() < 0.5:
            cat = rng.choice(absent)
            qa["count_cat"] = (f"How many {pluralize(cat)} are there?",
                               f"There are no {pluralize(cat)} in the image.")
        else:
            cat = rng.choice(sorted(s.by_cat))
            c = len(s.by_cat[cat])
            qa["count_cat"] = (f"How many {pluralize(cat)} are there?", f"There {is_are(c)} {counted(c, cat)}.")
        if absent and rng.random() < 0.5:
            cat = rng.choice(absent)
            qa["exists"] = (f"Is there {a_or_an(cat)} in the image?", f"No, there is no {cat} in the image.")
        else:
            o = rng.choice(s.objs)
            qa["exists"] = (f"Is there {a_or_an(o.category)} in the image?",
                            f"Yes, there is {a_or_an(o.category)} {o.where} of the image.")
        qa["list"] = (rng.choice(["What objects are in the image?", "What can you see in the image?"]),
                      f"The image shows {s.inventory()}.")
        single = [o for o in s.objs if len(s.by_kind[o.kind]) == 1 and o.color]
        if single:
            o = rng.choice(single)
            qa["color"] = (rng.choice([f"What colour is the {o.kind}?", f"What color is the {o.kind}?",
                                       f"Which colour is the {o.kind}?"]),
                           f"The {o.kind} is {o.color}.")
        colors = [o for o in s.objs if o.color and sum(p.color == o.color for p in s.objs) == 1]
        if colors:
            o = rng.choice(colors)
            qa["identity"] = (rng.choice([f"What is the {o.color} object?", f"Which object is {o.color}?"]),
                              f"The {o.color} object is {a_or_an(o.kind)}.")
        if s.unique:
            o = rng.choice(s.unique)
            qa["position"] = (rng.choice([f"Where is the {o.category}?",
                                          f"Where is the {o.category} located in the image?"]),
                              f"The {o.category} is {o.where} of the image.")
            o = rng.choice(s.unique)
            qa["size"] = (f"How big is the {o.category}?",
                          f"The {o.category} is {size_word(o.area)}: it covers about "
                          f"{max(1, round(o.area * 100))}% of the image.")
        pairs = [(a, b) for a in s.unique for b in s.unique if a is not b]
        rng.shuffle(pairs)
        for a, b in pairs:
            dx, dy = b.cx - a.cx, b.cy - a.cy
            if abs(dx) > 0.1 and "relative" not in qa:
                side = "left" if dx > 0 else "right"
                qa["relative"] = (f"Is the {a.category} to the left or to the right of the {b.category}?",
                                  f"The {a.category} is to the {side} of the {b.category}.")
            elif abs(dy) > 0.1 and "relative" not in qa:
                qa["relative"] = (f"Is the {a.category} above or below the {b.category}?",
                                  f"The {a.category} is {'above' if dy > 0 else 'below'} the {b.category}.")
            if "compare" not in qa and max(a.area, b.area) > 1.3 * min(a.area, b.area):
                big, small = (a, b) if a.area > b.area else (b, a)
                qa["compare"] = (rng.choice([f"Which is bigger, the {a.category} or the {b.category}?",
                                             f"Which is larger: the {a.category} or the {b.category}?"]),
                                 f"The {big.category} is bigger than the {small.category}.")
        # Attribute binding ("what colour is the circle?") matters most downstream: keep it often.
        must = [k for k in ("color", "identity") if k in qa and rng.random() < 0.8]
        rest = [k for k in qa if k not in must]
        rng.shuffle(rest)
        chosen = (must + rest)[:rng.randint(3, 5)]
        rng.shuffle(chosen)
        return llava_turns([qa[k] for k in chosen])

    # -- detail: one long description ---------------------------------------------------
    def _detail(self, s: _Scene, rng: random.Random) -> list[dict]:
        n = len(s.objs)
        order = sorted(s.objs, key=lambda o: (round(o.cy, 1), o.cx))
        parts = [s.captions[rng.randrange(len(s.captions))].rstrip(".") + "."]
        parts.append(f"In total there {is_are(n)} {counted(n, 'object')}: {s.inventory()}.")
        for o in order:
            parts.append(rng.choice([f"{o.where.capitalize()} there is {a_or_an(size_word(o.area) + ' ' + o.category)}.",
                                     f"{a_or_an(size_word(o.area) + ' ' + o.category).capitalize()} is {o.where}."]))
        if n > 1:
            big, small = max(s.objs, key=lambda o: o.area), min(s.objs, key=lambda o: o.area)
            second = sorted(o.area for o in s.objs)[-2]
            if big.area > 1.15 * second and big in s.unique:
                parts.append(f"The {big.category} is the largest object in the image.")
            firsts = sorted(o.area for o in s.objs)[1]
            if firsts > 1.15 * small.area and small in s.unique:
                parts.append(f"The {small.category} is the smallest.")
            pairs = [(a, b) for a in s.unique for b in s.unique if a is not b and b.cx - a.cx > 0.1]
            if pairs:
                a, b = rng.choice(pairs)
                parts.append(f"The {a.category} is to the left of the {b.category}.")
        return llava_turns([(rng.choice(DETAIL_PROMPTS), " ".join(parts))])

    # -- reasoning: answers that combine several facts ----------------------------------
    def _reasoning(self, s: _Scene, rng: random.Random) -> list[dict]:
        makers = [self._r_more, self._r_half, self._r_remove, self._r_extreme,
                  self._r_closer, self._r_bigger_than, self._r_color_side]
        rng.shuffle(makers)
        want = 1 if rng.random() < 0.7 else 2
        pairs = []
        for make in makers:
            qa = make(s, rng)
            if qa:
                pairs.append(qa)
            if len(pairs) == want:
                break
        if not pairs:
            pairs.append(self._r_arrangement(s, rng))
        return llava_turns(pairs)

    @staticmethod
    def _r_more(s, rng):
        if len(s.by_kind) < 2:
            return None
        h1, h2 = rng.sample(sorted(s.by_kind), 2)
        c1, c2 = len(s.by_kind[h1]), len(s.by_kind[h2])
        q = f"Are there more {pluralize(h1)} than {pluralize(h2)} in the image?"
        facts = f"There {is_are(c1)} {counted(c1, h1)} and {counted(c2, h2)}"
        if c1 > c2:
            return q, f"Yes. {facts}, so there are more {pluralize(h1)} than {pluralize(h2)}."
        if c1 < c2:
            return q, f"No. {facts}, so there are fewer {pluralize(h1)} than {pluralize(h2)}."
        return q, f"No. {facts}, so their numbers are equal."

    @staticmethod
    def _r_half(s, rng):
        h = rng.choice(sorted(s.by_kind))
        side = rng.choice(["left", "right", "top", "bottom"])
        coord = (lambda o: o.cx) if side in ("left", "right") else (lambda o: o.cy)
        objs = s.by_kind[h]
        if any(abs(coord(o) - 0.5) < 0.03 for o in objs):
            return None  # too close to the middle line to say which half
        inside = [o for o in objs if (coord(o) < 0.5) == (side in ("left", "top"))]
        q = f"How many {pluralize(h)} are in the {side} half of the image?"
        total = f"There {is_are(len(objs))} {counted(len(objs), h)} in the image"
        if not inside:
            return q, f"{total}, and none of them is in the {side} half, so the answer is zero."
        names = join_words([s.ref(o) + f" ({o.where})" for o in inside])
        return q, (f"{total}. {names[0].upper() + names[1:]} {is_are(len(inside))} in the {side} half, "
                   f"so the answer is {number_word(len(inside))}.")

    @staticmethod
    def _r_remove(s, rng):
        if not s.unique:
            return None
        o = rng.choice(s.unique)
        c = len(s.by_kind[o.kind])
        n = len(s.objs)
        if rng.random() < 0.5:
            return (f"If the {o.category} were taken away, how many {pluralize(o.kind)} would remain?",
                    f"There {is_are(c)} currently {counted(c, o.kind)}; taking away the {o.category} "
                    f"leaves {counted(c - 1, o.kind)}.")
        return (f"If the {o.category} were removed, how many objects would be left in the image?",
                f"The image shows {counted(n, 'object')}, so removing the {o.category} would leave "
                f"{counted(n - 1, 'object')}.")

    @staticmethod
    def _r_extreme(s, rng):
        if len(s.objs) < 2:
            return None
        side = rng.choice(["left", "right", "top", "bottom"])
        key = {"left": lambda o: o.cx, "right": lambda o: -o.cx,
               "top": lambda o: o.cy, "bottom": lambda o: -o.cy}[side]
        a, b = sorted(s.objs, key=key)[:2]
        if abs(key(a) - key(b)) < 0.05 or a not in s.unique:
            return None
        q = {"left": "Which object is farthest to the left?", "right": "Which object is farthest to the right?",
             "top": "Which object is closest to the top of the image?",
             "bottom": "Which object is closest to the bottom of the image?"}[side]
        axis = "x" if side in ("left", "right") else "y"
        va, vb = (a.cx, b.cx) if axis == "x" else (a.cy, b.cy)
        return q, (f"The {a.category}. Its centre is at {axis} = {va:.2f}, while the next closest, "
                   f"{s.ref(b)}, is at {axis} = {vb:.2f}.")

    @staticmethod
    def _r_closer(s, rng):
        if len(s.unique) < 3:
            return None
        a, b, c = rng.sample(s.unique, 3)
        db, dc = math.dist((a.cx, a.cy), (b.cx, b.cy)), math.dist((a.cx, a.cy), (c.cx, c.cy))
        if max(db, dc) < 1.25 * min(db, dc):
            return None
        near, far, dn, df = (b, c, db, dc) if db < dc else (c, b, dc, db)
        return (f"Is the {a.category} closer to the {b.category} or to the {c.category}?",
                f"The {a.category} is closer to the {near.category}. The {a.category} is {a.where}, "
                f"the {near.category} is {near.where} and the {far.category} is {far.where}; the "
                f"centres are about {dn:.2f} apart for the {near.category} and {df:.2f} for the {far.category}.")

    @staticmethod
    def _r_bigger_than(s, rng):
        if not s.unique or len(s.objs) < 2:
            return None
        o = rng.choice(s.unique)
        others = [p for p in s.objs if p is not o]
        if any(abs(p.area - o.area) < 0.15 * o.area for p in others):
            return None  # too close in size to compare reliably
        big = [p for p in others if p.area > o.area]
        q = f"How many objects in the image are bigger than the {o.category}?"
        if not big:
            return q, f"None. The {o.category} is the biggest object in the image."
        return q, (f"{number_word(len(big)).capitalize()}: {join_words([s.ref(p) for p in big])} "
                   f"{is_are(len(big))} bigger than the {o.category}, which is {size_word(o.area)}.")

    @staticmethod
    def _r_color_side(s, rng):
        colors = sorted({o.color for o in s.objs if o.color})
        if not colors:
            return None
        col = rng.choice(colors)
        objs = [o for o in s.objs if o.color == col]
        side = rng.choice(["left", "right"])
        if any(abs(o.cx - 0.5) < 0.03 for o in objs):
            return None
        inside = [o for o in objs if (o.cx < 0.5) == (side == "left")]
        q = f"How many {col} objects are in the {side} half of the image?"
        total = f"There {is_are(len(objs))} {counted(len(objs), col + ' object')}"
        if not inside:
            return q, f"{total}, but none of them is in the {side} half, so the answer is zero."
        return q, (f"{total}; {join_words([s.ref(o) for o in inside])} {is_are(len(inside))} in the "
                   f"{side} half, so the answer is {number_word(len(inside))}.")

    @staticmethod
    def _r_arrangement(s, rng):
        return ("How are the objects arranged in the image?",
                " ".join(f"{a_or_an(o.category).capitalize()} is {o.where}." for o in s.objs))


def make_teacher(name: str, seed: int = 0, **chat_kwargs):
    """'template' or 'chat' -> a teacher; anything else is a clear ValueError (notebook 01).

    ``chat_kwargs`` are those of :class:`vlkit.chat_client.ChatClient` (``base_url``, ``model``,
    ``api_key_env``, ``timeout``, ``max_retries``, ``backoff``) plus the chat teacher's
    ``temperature``; None values keep the defaults.
    """
    if name == "template":
        return TemplateTeacher(seed)
    if name == "chat":
        from vlkit.chat_client import ChatClient, missing_endpoint
        from vlkit.chat_teacher import ChatTeacher
        kwargs = {k: v for k, v in chat_kwargs.items() if v is not None}
        missing_endpoint(kwargs, "the chat teacher")
        teacher_kwargs = {k: kwargs.pop(k) for k in ("temperature",) if k in kwargs}
        return ChatTeacher(ChatClient(**kwargs), seed=seed, **teacher_kwargs)
    raise ValueError(f"unknown teacher {name!r}; expected 'template' or 'chat'")
