"""Statistics of LLaVA instruction data: type mix, question kinds, answer lengths (notebook 01).

Accumulated while the data is written (the generator's workers merge theirs) and for any LLaVA JSON
given to ``vlkit data stats``.
"""
from __future__ import annotations

import re
import statistics

from vlkit.tokens import IMAGE_TOKEN


QUESTION_KINDS = (
    ("count", r"^how many\b"),
    ("colour", r"\bcolou?r\b"),
    ("identity", r"^(what|which) (is the \w+ object|object is)\b"),
    ("position", r"^where\b"),
    ("relative position", r"\b(left or|above or|closer to|farthest|closest to)\b"),
    ("size", r"\b(bigger|larger|smaller|how big|size)\b"),
    ("description", r"\b(describe|description|details?|explain|walk me|account|what is in this image)\b"),
    ("existence", r"^(is|are) there (a|an|any)\b"),
    ("inventory", r"^what (objects|things|can you see)\b"),
    ("reasoning", r"^(if|why|are there more|how are)\b"),
)
_KIND_RE = [(k, re.compile(p)) for k, p in QUESTION_KINDS]
LENGTH_BINS = (0, 5, 10, 15, 20, 30, 40, 60, 80, 120, 10**9)


def question_kind(question: str) -> str:
    """Classify a question by its wording: count, colour, position, ... or 'other' (notebook 01)."""
    q = question.replace(IMAGE_TOKEN, "").strip().lower()
    for kind, rx in _KIND_RE:
        if rx.search(q):
            return kind
    return "other"


class StatsAccumulator:
    """Running statistics over records (flat memory: counters and a length histogram)."""

    def __init__(self):
        self.n = self.turns = self.with_image = 0
        self.types: dict[str, int] = {}
        self.kinds: dict[str, int] = {}
        self.hist = [0] * (len(LENGTH_BINS) - 1)
        self.words_sum = self.answers = self.words_max = 0

    def add(self, rec: dict):
        self.n += 1
        self.with_image += "image" in rec
        conv = rec["conversations"]
        self.turns += len(conv)
        t = rec.get("type", "unknown")
        self.types[t] = self.types.get(t, 0) + 1
        for turn in conv:
            if turn["from"] == "human":
                k = question_kind(turn["value"])
                self.kinds[k] = self.kinds.get(k, 0) + 1
            else:
                w = len(turn["value"].split())
                self.answers += 1
                self.words_sum += w
                self.words_max = max(self.words_max, w)
                for b in range(len(LENGTH_BINS) - 1):
                    if LENGTH_BINS[b] <= w < LENGTH_BINS[b + 1]:
                        self.hist[b] += 1
                        break

    def merge(self, other: "StatsAccumulator") -> None:
        self.n += other.n
        self.turns += other.turns
        self.with_image += other.with_image
        for mine, theirs in ((self.types, other.types), (self.kinds, other.kinds)):
            for k, v in theirs.items():
                mine[k] = mine.get(k, 0) + v
        self.hist = [a + b for a, b in zip(self.hist, other.hist)]
        self.words_sum += other.words_sum
        self.answers += other.answers
        self.words_max = max(self.words_max, other.words_max)

    def result(self) -> dict:
        return {
            "records": self.n,
            "turns": self.turns,
            "turns_per_record": round(self.turns / self.n, 3) if self.n else 0.0,
            "with_image": self.with_image,
            "without_image": self.n - self.with_image,
            "types": dict(sorted(self.types.items())),
            "type_shares": {k: round(v / self.n, 4) for k, v in sorted(self.types.items())},
            "question_kinds": dict(sorted(self.kinds.items(), key=lambda kv: -kv[1])),
            "answer_words_mean": round(self.words_sum / self.answers, 2) if self.answers else 0.0,
            "answer_words_max": self.words_max,
            "answer_length_hist": {"edges": list(LENGTH_BINS[:-1]) + ["inf"], "counts": self.hist},
        }


def dataset_stats(records) -> dict:
    """Records, turns, with/without image, type mix, question kinds, answer lengths (notebook 01)."""
    acc = StatsAccumulator()
    lengths = []
    for r in records:
        acc.add(r)
        lengths += [len(t["value"].split()) for t in r["conversations"] if t["from"] == "gpt"]
    out = acc.result()
    if lengths:
        out["answer_words_median"] = statistics.median(lengths)
    return out

