"""The synthetic world: determinism, no overlap, rendering, true captions, context form."""
import random
import re

import numpy as np
import pytest

from vlkit import world
from vlkit.world import COLORS, SHAPES, SIZES, Scene, WorldConfig


def test_vocabulary_is_rich_enough():
    assert len(SHAPES) >= 4 and len(COLORS) >= 6 and SIZES == ("small", "medium", "large")


def test_scene_i_depends_only_on_seed_and_index():
    cfg = WorldConfig()
    a = world.sample_scenes(20, seed=3, cfg=cfg)
    b = world.sample_scenes(40, seed=3, cfg=cfg)
    c = world.sample_scenes(20, seed=4, cfg=cfg)
    assert a == b[:20]
    assert a != c
    assert len({s.id for s in b}) == 40


def test_objects_do_not_overlap_and_stay_inside():
    cfg = WorldConfig(min_objects=2, max_objects=4)
    for s in world.sample_scenes(300, seed=0, cfg=cfg):
        assert cfg.min_objects <= len(s.objects) <= cfg.max_objects
        for i, o in enumerate(s.objects):
            x1, y1, x2, y2 = o.box
            assert 0 <= x1 < x2 <= 1 and 0 <= y1 < y2 <= 1
            assert o.shape in SHAPES and o.color in COLORS and o.size in SIZES
            for p in s.objects[i + 1:]:
                assert not world.scenes._overlaps(o.box, p.box, 0.0), (s.id, o, p)


def test_size_classes_are_separated_by_area():
    areas = {k: [] for k in SIZES}
    for s in world.sample_scenes(200, seed=1, cfg=WorldConfig()):
        for o in s.objects:
            areas[o.size].append((o.box[2] - o.box[0]) * (o.box[3] - o.box[1]))
    assert max(areas["small"]) < min(areas["medium"])
    assert max(areas["medium"]) < min(areas["large"])


def test_dict_round_trip():
    for s in world.sample_scenes(10, seed=0, cfg=WorldConfig(text_prob=0.5)):
        assert Scene.from_dict(s.to_dict()) == s


def test_render_draws_each_object_in_its_colour():
    cfg = WorldConfig(min_objects=3, max_objects=4)
    for s in world.sample_scenes(20, seed=2, cfg=cfg):
        img = world.render(s, 64)
        assert img.mode == "RGB" and img.size == (64, 64)
        px = np.asarray(img)
        for o in s.objects:
            cx, cy = (int(v * 64) for v in o.center)
            assert tuple(px[cy, cx]) == COLORS[o.color], (s.id, o)
        assert tuple(px[0, 0]) == world.BACKGROUND
    assert world.render(s, 128, supersample=2).size == (128, 128)


def test_text_is_drawn_on_objects():
    cfg = WorldConfig(min_objects=1, max_objects=1, text_prob=1.0)
    s = world.sample_scenes(1, seed=0, cfg=cfg)[0]
    assert s.objects[0].text
    plain = Scene(s.id, (world.WorldObject(**{**s.objects[0].__dict__, "text": None}),))
    assert np.any(np.asarray(world.render(s, 128)) != np.asarray(world.render(plain, 128)))


def test_captions_are_true_and_varied():
    cfg = WorldConfig(text_prob=0.3)
    for s in world.sample_scenes(100, seed=5, cfg=cfg):
        caps = world.captions(s, random.Random(0))
        assert len(caps) == 5 and len(set(caps)) == 5
        text = " ".join(caps).lower()
        mentioned = set(re.findall(r"\b(" + "|".join(COLORS) + r")\b", text))
        assert mentioned <= {o.color for o in s.objects}
        shapes = set(re.findall(r"\b(" + "|".join(SHAPES) + r")", text))
        assert shapes <= {o.shape for o in s.objects}
        for o in s.objects:
            if o.text:
                assert o.text in text


def test_symbolic_context_form():
    s = world.sample_scenes(1, seed=0, cfg=WorldConfig(min_objects=3, max_objects=3))[0]
    text = world.symbolic_context(s, random.Random(0))
    head, tail = text.split("\n\n")
    assert len(head.splitlines()) == 5
    lines = tail.strip().splitlines()
    assert len(lines) == 3
    for o, line in zip(s.objects, lines):
        m = re.fullmatch(r"(.+): \[(\d\.\d{3}), (\d\.\d{3}), (\d\.\d{3}), (\d\.\d{3})\]", line)
        assert m and m.group(1) == o.category
        assert tuple(float(v) for v in m.groups()[1:]) == o.box


def test_bad_config_rejected():
    with pytest.raises(ValueError):
        WorldConfig(min_objects=3, max_objects=2)
    with pytest.raises(ValueError):
        WorldConfig(shapes=("hexagon",))
