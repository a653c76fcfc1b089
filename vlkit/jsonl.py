"""JSON Lines, read with errors that name the file and line, and written (notebooks 03, 05).

LLaVA-Bench's questions and answers, POPE's questions and HatefulMemes' items are JSONL files.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable, Iterator


def read_jsonl(path: str | Path) -> Iterator[tuple[int, dict]]:
    """``(line number, record)`` of each non-empty line; a missing file, a line that is not JSON or not
    a JSON object is a clear error naming the file and line."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no such file") from None
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}:{n}: not valid JSON ({e.msg})") from None
        if not isinstance(record, dict):
            raise ValueError(f"{path}:{n}: a record must be a JSON object")
        yield n, record


def jsonl(records: Iterable[dict]) -> str:
    """``records`` as JSON Lines text."""
    return "".join(json.dumps(r) + "\n" for r in records)
