"""What every zero-shot task shares: its config's shape, its folder, reading its JSONL (notebook 05)."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

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


def jsonl(records: list[dict]) -> str:
    return "".join(json.dumps(r) + "\n" for r in records)


def read_jsonl(path: str | Path) -> Iterator[tuple[int, dict]]:
    """``(line number, record)`` of each non-empty line; a line that is not a JSON object is an error."""
    for n, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}:{n}: not JSON ({e.msg})") from None
        if not isinstance(record, dict):
            raise ValueError(f"{path}:{n}: a record must be a JSON object")
        yield n, record
