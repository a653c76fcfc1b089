"""The world's scenes: objects, how scenes are sampled, and how they are drawn (notebook 01).

Every scene is a list of objects whose shape, colour, size, position and optional written
word we know, so every answer generated about it can be checked against the ground truth.

Objects do not overlap by default: occlusion makes attributes unrecoverable, and tiny
vision towers learn far faster without it (see DESIGN.md, ~87% vs ~58% attribute accuracy).
"""
from __future__ import annotations

import dataclasses
import functools
import random
from dataclasses import dataclass, field

from PIL import Image, ImageDraw, ImageFont

# Shapes that stay distinct at 64 px: each fills its bounding box, so the box is tight.
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "diamond", "cross")
# Saturated, well-separated colours on a dark grey background (white stays visible too).
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "orange": (245, 140, 20),
    "yellow": (240, 220, 40),
    "green": (40, 175, 60),
    "cyan": (40, 210, 220),
    "blue": (40, 80, 235),
    "purple": (160, 60, 210),
    "white": (245, 245, 245),
}
SIZES: tuple[str, ...] = ("small", "medium", "large")
BACKGROUND: tuple[int, int, int] = (45, 45, 50)
# Written on objects when ``text_prob`` > 0: short words and digits (readable on large ones).
WORDS: tuple[str, ...] = ("cat", "dog", "sun", "car", "box", "hat", "cup", "pen",
                          "0", "1", "2", "3", "4", "5", "6", "7", "8", "9")
# Text colour per object colour, for contrast.
_DARK = {"blue", "purple", "red", "green"}


@dataclass(frozen=True)
class WorldObject:
    """One object of a scene; ``box`` is normalised (x1, y1, x2, y2) in [0, 1] (notebook 01)."""

    shape: str
    color: str
    size: str
    box: tuple[float, float, float, float]
    text: str | None = None

    @property
    def category(self) -> str:
        """The symbolic-context category, e.g. ``"red triangle"``."""
        return f"{self.color} {self.shape}"

    @property
    def center(self) -> tuple[float, float]:
        x1, y1, x2, y2 = self.box
        return (x1 + x2) / 2, (y1 + y2) / 2


@dataclass(frozen=True)
class Scene:
    """A scene: an id and its objects (notebook 01)."""

    id: str
    objects: tuple[WorldObject, ...]

    def to_dict(self) -> dict:
        return {"id": self.id, "objects": [dataclasses.asdict(o) for o in self.objects]}

    @classmethod
    def from_dict(cls, d: dict) -> "Scene":
        objs = tuple(
            WorldObject(shape=o["shape"], color=o["color"], size=o["size"],
                        box=tuple(float(v) for v in o["box"]), text=o.get("text"))
            for o in d["objects"]
        )
        return cls(id=str(d["id"]), objects=objs)


@dataclass
class WorldConfig:
    """How scenes are sampled (notebook 01).

    ``size_fracs``: side of each size class as a fraction of the image side; at 64 px the
    small objects are ~11 px, still big enough for a tiny ViT to name colour and shape.
    ``size_jitter`` varies sides by up to that much (keeps the three classes apart).
    ``gap``: minimum empty space between objects' boxes (and to the border, ``margin``).
    """

    resolution: int = 64
    min_objects: int = 1
    max_objects: int = 4
    allow_overlap: bool = False
    text_prob: float = 0.0
    shapes: tuple[str, ...] = SHAPES
    colors: tuple[str, ...] = tuple(COLORS)
    size_fracs: dict[str, float] = field(
        default_factory=lambda: {"small": 0.18, "medium": 0.26, "large": 0.34})
    size_jitter: float = 0.02
    gap: float = 0.04
    margin: float = 0.02
    max_tries: int = 60

    def __post_init__(self):
        if not 1 <= self.min_objects <= self.max_objects:
            raise ValueError(f"need 1 <= min_objects <= max_objects, got "
                             f"{self.min_objects}, {self.max_objects}")
        unknown = set(self.shapes) - set(SHAPES) or set(self.colors) - set(COLORS)
        if unknown:
            raise ValueError(f"unknown shapes/colours: {sorted(unknown)}")
        if set(self.size_fracs) != set(SIZES):
            raise ValueError(f"size_fracs must have keys {SIZES}")
        self.shapes, self.colors = tuple(self.shapes), tuple(self.colors)


def _overlaps(a, b, gap: float) -> bool:
    return not (a[2] + gap <= b[0] or b[2] + gap <= a[0] or a[3] + gap <= b[1] or b[3] + gap <= a[1])


def sample_scene(rng: random.Random, cfg: WorldConfig, scene_id: str = "") -> Scene:
    """Sample one scene with ``rng`` (notebook 01).

    Rejection sampling places each object at a random free spot; an object that finds no
    room after ``max_tries`` positions is dropped, and a scene with fewer than
    ``min_objects`` is resampled. Boxes are rounded to 3 decimals so that the symbolic
    context is exactly the ground truth.
    """
    while True:
        n = rng.randint(cfg.min_objects, cfg.max_objects)
        objects: list[WorldObject] = []
        for _ in range(n):
            shape, color, size = rng.choice(cfg.shapes), rng.choice(cfg.colors), rng.choice(SIZES)
            side = cfg.size_fracs[size] + rng.uniform(-cfg.size_jitter, cfg.size_jitter)
            text = rng.choice(WORDS) if cfg.text_prob > 0 and rng.random() < cfg.text_prob else None
            lo, hi = cfg.margin, 1 - cfg.margin - side
            for _ in range(cfg.max_tries):
                x1, y1 = rng.uniform(lo, hi), rng.uniform(lo, hi)
                box = tuple(round(v, 3) for v in (x1, y1, x1 + side, y1 + side))
                if cfg.allow_overlap or not any(_overlaps(box, o.box, cfg.gap) for o in objects):
                    objects.append(WorldObject(shape, color, size, box, text))
                    break
        if len(objects) >= cfg.min_objects:
            return Scene(id=scene_id, objects=tuple(objects))


def scene_rng(seed: int, index: int) -> random.Random:
    """The random stream of scene ``index`` under ``seed``: independent of every other scene."""
    return random.Random(f"vlkit-world:{seed}:{index}")


def scene_id(seed: int, index: int) -> str:
    return f"s{seed}_{index:06d}"


def sample_scenes(n: int, seed: int, cfg: WorldConfig) -> list[Scene]:
    """``n`` scenes; scene ``i`` depends only on ``(seed, i)`` (notebook 01)."""
    return [sample_scene(scene_rng(seed, i), cfg, scene_id(seed, i)) for i in range(n)]


# ------------------------------------------------------------------------------ rendering

def _polygon(shape: str, x1: float, y1: float, x2: float, y2: float) -> list[tuple[float, float]]:
    cx, cy, w, h = (x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1
    if shape == "triangle":
        return [(cx, y1), (x2, y2), (x1, y2)]
    if shape == "diamond":
        return [(cx, y1), (x2, cy), (cx, y2), (x1, cy)]
    if shape == "cross":  # a plus sign with arms one third of the side thick
        a, b = w / 3, h / 3
        return [(x1 + a, y1), (x2 - a, y1), (x2 - a, y1 + b), (x2, y1 + b), (x2, y2 - b),
                (x2 - a, y2 - b), (x2 - a, y2), (x1 + a, y2), (x1 + a, y2 - b), (x1, y2 - b),
                (x1, y1 + b), (x1 + a, y1 + b)]
    raise ValueError(f"unknown shape {shape!r}")


@functools.lru_cache(maxsize=32)
def _font(px: int):
    return ImageFont.load_default(size=max(px, 6))


def render(scene: Scene, resolution: int = 64, supersample: int = 1) -> Image.Image:
    """Draw ``scene`` as an RGB image of ``resolution`` px (notebook 01).

    Shapes are drawn crisp (no anti-aliasing) by default, which is fastest and keeps edges
    sharp at 64 px; ``supersample=k`` draws at k times the size and downsamples.
    """
    side = resolution * supersample
    img = Image.new("RGB", (side, side), BACKGROUND)
    draw = ImageDraw.Draw(img)
    # Pixel edges: a box [x1, x2) covers round(x1*side) .. round(x2*side) - 1.
    for o in scene.objects:
        x1, y1, x2, y2 = (round(v * side) for v in o.box)
        x2, y2 = x2 - 1, y2 - 1
        fill = COLORS[o.color]
        if o.shape == "circle":
            draw.ellipse((x1, y1, x2, y2), fill=fill)
        elif o.shape == "square":
            draw.rectangle((x1, y1, x2, y2), fill=fill)
        else:
            draw.polygon(_polygon(o.shape, x1, y1, x2, y2), fill=fill)
        if o.text:
            font = _font(int((y2 - y1) * (0.45 if len(o.text) <= 1 else 0.32)))
            cx = (x1 + x2) / 2
            cy = (y1 + y2) / 2 + (y2 - y1) * (0.15 if o.shape == "triangle" else 0)
            draw.text((cx, cy), o.text, fill=(255, 255, 255) if o.color in _DARK else (0, 0, 0),
                      font=font, anchor="mm")
    if supersample > 1:
        img = img.resize((resolution, resolution), Image.Resampling.BOX)
    return img
