"""What every zero-shot task shares: its config's shape and its folder (notebook 05)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from vlkit import atomic
from vlkit import world as W


@dataclass
class TaskConfig:
    """``n`` questions over scenes of ``seed`` (one no training set uses), drawn at ``resolution`` px."""

    n: int = 300
    seed: int = 5000
    resolution: int = 64
    world: W.WorldConfig | None = None

    def __post_init__(self):
        if self.n < 2:
            raise ValueError(f"{type(self).__name__}: n={self.n} questions must be >= 2")


def write_task(folder: str | Path, scenes: dict[str, W.Scene], resolution: int, name: str, text: str) -> Path:
    """``folder/images/<image>`` for each scene, the question file ``name`` and ``scenes.json``, atomically."""
    folder = Path(folder)
    with atomic.atomic_dir(folder) as tmp:
        for image, scene in scenes.items():
            (tmp / "images" / image).parent.mkdir(parents=True, exist_ok=True)
            W.render(scene, resolution).save(tmp / "images" / image)
        (tmp / name).write_text(text, encoding="utf-8")
        atomic.write_json(tmp / "scenes.json", {k: s.to_dict() for k, s in scenes.items()}, indent=None)
    return folder
