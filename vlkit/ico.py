"""Instruction comparison optimisation, ICO: VisLingInstruct's Autonomous Instruction Optimization (notebook 05).

2402.07398's AIO: the model rewrites the user's instruction, scores the original and the rewrite
with IAS (:mod:`vlkit.ias`), and an in-context comparison that shows both with their scores yields
the instruction it finally answers. At this model size the comparison *picks* between the labelled
candidates by the likelihood of each label as the answer (as ScienceQA options are scored);
IAS-only selection (the lowest score wins) is kept beside it, so the two can be reported apart.
:func:`count_forward_passes` measures what AIO costs.
"""
from __future__ import annotations

import contextlib
import string
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from vlkit.eval.scoring import continuation_scores
from vlkit.ias import META_PROMPT, ias
from vlkit.tokens import with_image

COMPARE_HEADER = "Candidate instructions for this image, with their alignment scores (lower is better):"
COMPARE_QUESTION = "Which instruction is better? Answer with its letter."
WRITE_QUESTION = "Write the best instruction for this image."


@dataclass
class Optimised:
    """One instruction's optimisation: the candidates (the original first), their IAS, and both picks."""

    candidates: list[str]
    ias: list[float]
    ico_pick: int
    ias_pick: int = field(init=False)

    def __post_init__(self):
        self.ias_pick = min(range(len(self.ias)), key=self.ias.__getitem__)

    @property
    def instruction(self) -> str:
        """The instruction ICO answers."""
        return self.candidates[self.ico_pick]

    @property
    def ias_instruction(self) -> str:
        """The instruction IAS alone would answer."""
        return self.candidates[self.ias_pick]


def comparison_prompt(candidates: Sequence[str], scores: Sequence[float], image: bool = True,
                      question: str = COMPARE_QUESTION) -> str:
    """The in-context comparison: every candidate under a letter with its IAS, then ``question``."""
    lines = [f"{string.ascii_uppercase[j]}. {c} (score {s:.2f})" for j, (c, s) in enumerate(zip(candidates, scores))]
    return with_image("\n".join([COMPARE_HEADER, *lines, question]), image)


def ico(model, processor, images: Sequence[Any], instructions: Sequence[str],
        rewriter: Callable[..., list[str]], fields: Sequence[dict] | None = None, keys: Sequence[str] | None = None,
        meta_prompt: str = META_PROMPT, batch_size: int = 32) -> list[Optimised]:
    """Rewrite -> IAS of original and rewrites -> in-context comparison -> the final instruction (notebook 05).

    ``rewriter(instruction, key=..., **fields)`` returns the rewrites (none when it failed: the original
    is then the only candidate and is kept). ``fields[i]`` / ``keys[i]``: what a pool paraphraser fills
    its phrasings with, and a stable key per question.
    """
    if len(images) != len(instructions):
        raise ValueError(f"{len(images)} images but {len(instructions)} instructions")
    if any(not isinstance(i, str) or not i.strip() for i in instructions):
        raise ValueError("an empty instruction cannot be optimised")
    fields = list(fields) if fields is not None else [{}] * len(instructions)
    keys = list(keys) if keys is not None else [str(i) for i in range(len(instructions))]
    candidates = []
    for inst, f, k in zip(instructions, fields, keys):
        rewrites = [r for r in rewriter(inst, key=k, **f) if isinstance(r, str) and r.strip() and r != inst]
        cands = list(dict.fromkeys([inst, *rewrites]))
        if len(cands) > len(string.ascii_uppercase):
            raise ValueError(f"question {k}: {len(cands)} candidates, more than the comparison's "
                             f"{len(string.ascii_uppercase)} letters")
        candidates.append(cands)
    scores = ias(model, processor, images, candidates, meta_prompt=meta_prompt, batch_size=batch_size)
    prompts = [comparison_prompt(c, s, image=img is not None) for c, s, img in zip(candidates, scores, images)]
    letters = [[f"{string.ascii_uppercase[j]}." for j in range(len(c))] for c in candidates]
    picks = continuation_scores(model, processor, prompts, images, letters, batch_size=batch_size,
                                desc="ICO comparison", progress=False)
    return [Optimised(c, s, max(range(len(p)), key=lambda j: p[j][0])) for c, s, p in zip(candidates, scores, picks)]


def write_instruction(model, processor, images: Sequence[Any], optimised: Sequence[Optimised],
                      max_new_tokens: int = 24) -> list[str]:
    """The paper's free form of the comparison: shown the candidates and their scores, the model *writes*
    the optimised instruction (greedy), instead of picking a letter (notebook 05, on a small subset)."""
    from vlkit.eval.scoring import generate
    if len(images) != len(optimised):
        raise ValueError(f"{len(images)} images but {len(optimised)} optimised instructions")
    prompts = [comparison_prompt(o.candidates, o.ias, image=img is not None, question=WRITE_QUESTION)
               for o, img in zip(optimised, images)]
    return generate(model, processor, prompts, list(images), max_new_tokens=max_new_tokens, progress=False)


@contextlib.contextmanager
def count_forward_passes(model):
    """``with count_forward_passes(model) as n: ...`` -> ``n[0]`` sequences the LLM ran forward over (a batch
    of 8 counts 8; a decoding step counts again), the cost of AIO beside answering once."""
    n = [0]

    def count(module, args, kwargs):
        x = kwargs.get("inputs_embeds")
        x = x if x is not None else kwargs.get("input_ids", args[0] if args else None)
        n[0] += int(x.shape[0]) if x is not None else 1
    handle = model.language_model.register_forward_pre_hook(count, with_kwargs=True)
    try:
        yield n
    finally:
        handle.remove()
