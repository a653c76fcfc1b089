"""Training data specs: what a stage trains on, as a dataclass that builds its dataset (notebooks 03-08).

A stage's data is any dataclass with ``dataset(workdir, progress=True) -> torch Dataset`` of LLaVA examples
(:class:`vlkit.llava_dataset.LlavaDataset` items); its fields are part of the stage's cache key.
The two here are LLaVA's: :class:`Captions` (stage 1) and :class:`InstructionMix` (stage 2:
notebook 01's instruction data plus the ScienceQA-format train split), which notebooks 04-07
reuse so that their rows train on the same data as notebook 03's.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch.utils.data import ConcatDataset

from vlkit import atomic
from vlkit.benchmarks import scienceqa as sqa
from vlkit.data import DataConfig
from vlkit.teacher import KINDS

ANSWER_STYLES = ("answer", "solution-first", "choice")


def scienceqa_to_llava(problems: dict[str, dict], style: str = "solution-first") -> list[dict]:
    """ScienceQA problems -> LLaVA conversation records (notebook 03).

    The human turn is the evaluation prompt (:func:`vlkit.benchmarks.scienceqa.build_prompt`),
    so training and evaluation see the same text; image paths are relative to the benchmark
    root. ``style="answer"``: ``"The answer is B."``; ``"solution-first"``: the problem's
    solution, then the answer (``"The circle is red. The answer is B."``), LLaVA's
    "reasoning-first" variant, which the paper found to converge faster; ``"choice"``: the
    option's text, scored by likelihood (:func:`vlkit.eval.scoring.rank_choices`).
    """
    if style not in ANSWER_STYLES:
        raise ValueError(f"unknown answer style {style!r}; use one of {ANSWER_STYLES}")
    if style == "choice":
        return sqa.to_llava_json(problems, style="choice")
    records = sqa.to_llava_json(problems, style="sentence")
    if style == "solution-first":
        for rec in records:
            solution = problems[rec["id"]].get("solution", "").strip()
            if solution:
                gpt = rec["conversations"][-1]
                gpt["value"] = f"{solution} {gpt['value']}"
    return records


@dataclass(frozen=True)
class Captions:
    """Notebook 01's image-caption pairs (``captions.json``): LLaVA's stage-1 data (notebook 03)."""

    data: DataConfig

    def dataset(self, workdir: Path, progress: bool = True):
        from vlkit.data import ensure_dataset
        from vlkit.llava_dataset import LlavaDataset
        return LlavaDataset(ensure_dataset(self.data, progress=progress) / "captions.json")


@dataclass(frozen=True)
class InstructionMix:
    """Instruction records of ``types`` + the ScienceQA-format train split (notebook 03).

    The ScienceQA part is repeated to make up ``sqa_share`` of the examples (LLaVA fine-tunes on
    ScienceQA alone; mixing lets one stage 2 serve both benchmarks), with each binding question
    ``binding_repeats`` times per pass: the lookup they teach forms after ~3,000 of them
    (``docs/findings_03.md``, "enough binding questions"). ``sqa_answer``: the answer style of
    :func:`scienceqa_to_llava`; ``sqa_format``: the version of the prompt format
    (:data:`vlkit.benchmarks.scienceqa.CHOICE_FORMAT`), so a changed format retrains.
    """

    data: DataConfig
    scienceqa: Any  # vlkit.world.scienceqa.ScienceQAConfig
    types: tuple[str, ...] = KINDS
    sqa_share: float = 0.9
    binding_repeats: int = 5
    sqa_answer: str = "choice"
    sqa_format: int = sqa.CHOICE_FORMAT

    def __post_init__(self):
        object.__setattr__(self, "types", tuple(self.types))
        unknown = set(self.types) - set(KINDS)
        if unknown or not self.types:
            raise ValueError(f"types must be some of {KINDS}, got {self.types}")
        if self.binding_repeats < 1:
            raise ValueError(f"binding_repeats must be >= 1, got {self.binding_repeats}")
        if not 0 <= self.sqa_share < 1:
            raise ValueError(f"sqa_share must be in [0, 1), got {self.sqa_share}")
        if self.sqa_answer not in ANSWER_STYLES:
            raise ValueError(f"sqa_answer must be one of {ANSWER_STYLES}, got {self.sqa_answer!r}")

    def scienceqa_records(self, problems: dict[str, dict]) -> list[dict]:
        """LLaVA records of the train ``problems``, binding questions ``binding_repeats`` times."""
        records = scienceqa_to_llava(problems, self.sqa_answer)
        binding = [r for r in records if problems[r["id"]].get("category") == sqa.BINDING_CATEGORY]
        return records + binding * (self.binding_repeats - 1)

    def dataset(self, workdir: Path, progress: bool = True):
        from vlkit.data import ensure_dataset
        from vlkit.llava_dataset import LlavaDataset
        from vlkit.world.scienceqa import ensure_scienceqa
        inst = LlavaDataset(ensure_dataset(self.data, progress=progress) / "llava_instruct.json",
                            types=list(self.types))
        if self.sqa_share == 0:
            return inst
        root = ensure_scienceqa(self.scienceqa)
        problems = sqa.select(sqa.load_problems(root), split="train")
        path = Path(workdir) / "scienceqa_train_llava.json"
        atomic.write_json(path, self.scienceqa_records(problems), indent=None)
        sq = LlavaDataset(path, image_folder=root)
        # repeat the (small) ScienceQA split so it makes up ~sqa_share of the samples
        reps = max(1, round(self.sqa_share / (1 - self.sqa_share) * len(inst) / max(1, len(sq))))
        return ConcatDataset([inst] + [sq] * reps)
