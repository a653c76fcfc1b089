"""A synthetic world of coloured shapes: scenes, rendering, captions, symbolic context (notebook 01).

LLaVA's teacher never sees pixels: it reads a *symbolic context* (five captions plus one
``category: [x1, y1, x2, y2]`` line per object, boxes normalised to 0-1) and writes
instruction data about it. Our world makes that context exact: every scene is a list of
objects whose shape, colour, size, position and optional written word we know, so every
generated answer can be checked against the ground truth.

- :mod:`vlkit.world.scenes`: objects, :class:`WorldConfig`, sampling and rendering;
- :mod:`vlkit.world.language`: captions and the symbolic context;
- :mod:`vlkit.world.scienceqa`: a ScienceQA-format benchmark generated from scenes (notebook 03),
  imported on its own (``from vlkit.world import scienceqa``).

``from vlkit import world as W; W.sample_scene(...)`` reaches everything of the first two.
"""
from vlkit.world.language import captions, format_box, symbolic_context
from vlkit.world.scenes import (BACKGROUND, COLORS, SHAPES, SIZES, WORDS, Scene, WorldConfig, WorldObject,
                                render, sample_scene, sample_scenes, scene_id, scene_rng)

__all__ = ["BACKGROUND", "COLORS", "SHAPES", "SIZES", "WORDS", "Scene", "WorldConfig", "WorldObject",
           "captions", "format_box", "render", "sample_scene", "sample_scenes", "scene_id", "scene_rng",
           "symbolic_context"]
