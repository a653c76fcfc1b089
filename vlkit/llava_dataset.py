"""LLaVA-format JSON + an image folder -> a torch Dataset of training examples (notebook 03).

Works on the workbook's data folder (``captions.json`` for stage 1, ``llava_instruct.json`` for
stage 2, images under ``images/``) and on a user's real LLaVA JSON with its image folder.
Each item is ``{"id", "conversations", "image": PIL.Image | None}``, the input of
:meth:`vlkit.processor.VLProcessor.collate`.
"""
from __future__ import annotations

import json
from pathlib import Path

from PIL import Image
from torch.utils.data import Dataset


def _load_records(path: Path) -> list[dict]:
    try:  # the data engineer's validating loader, when present
        from vlkit.data import load_llava_json
        return load_llava_json(path)
    except ImportError:
        pass
    try:
        records = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON (line {e.lineno}): {e.msg}") from e
    if not isinstance(records, list):
        raise ValueError(f"{path}: expected a JSON list of LLaVA records")
    for i, r in enumerate(records):
        if not isinstance(r, dict) or not isinstance(r.get("conversations"), list) or not r["conversations"]:
            raise ValueError(f"{path}: record {i} has no 'conversations' list")
    return records


class LlavaDataset(Dataset):
    """Examples from a LLaVA JSON file (notebook 03).

    ``image_folder``: where the records' ``image`` paths are relative to (default: the JSON's
    folder). ``types``: keep only records whose ``type`` is listed (conversation / detail /
    reasoning). ``limit``: first N records. Images are opened lazily, converted to RGB, and
    kept in memory when ``cache_images`` (the workbook's images are a few KB each).
    """

    def __init__(self, json_path: str | Path, image_folder: str | Path | None = None,
                 types: list[str] | None = None, limit: int | None = None, cache_images: bool = True):
        self.path = Path(json_path)
        if not self.path.is_file():
            raise FileNotFoundError(f"LLaVA JSON {self.path} not found")
        self.image_folder = Path(image_folder) if image_folder is not None else self.path.parent
        records = _load_records(self.path)
        if types is not None:
            records = [r for r in records if r.get("type") in set(types)]
        self.records = records[:limit] if limit is not None else records
        self.cache_images = cache_images
        self._cache: dict[int, Image.Image] = {}
        self._lengths: list[int] | None = None

    def __len__(self) -> int:
        return len(self.records)

    @property
    def lengths(self) -> list[int]:
        """Words per record, all turns together: the length that
        ``TrainSpec(length_bucket=...)`` buckets batches by (no tokenizer needed)."""
        if self._lengths is None:
            self._lengths = [sum(len(t["value"].split()) for t in r["conversations"]) for r in self.records]
        return self._lengths

    def image_path(self, i: int) -> Path | None:
        rel = self.records[i].get("image")
        if not rel:
            return None
        for p in (self.image_folder / rel, self.image_folder / "images" / rel):
            if p.is_file():
                return p
        raise FileNotFoundError(f"{self.path}: record {i} (id {self.records[i].get('id')!r}) names image "
                                f"{rel!r}, not found under {self.image_folder}")

    def __getitem__(self, i: int) -> dict:
        r = self.records[i]
        image = self._cache.get(i)
        if image is None and (p := self.image_path(i)) is not None:
            with Image.open(p) as im:
                image = im.convert("RGB")
            if self.cache_images:
                self._cache[i] = image
        return {"id": r.get("id", str(i)), "conversations": r["conversations"], "image": image}
