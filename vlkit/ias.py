"""The Instruction Alignment Score, IAS (VisLingInstruct, 2402.07398; notebook 05).

How well an instruction fits an image, by the model itself: after the image's visual tokens and a
fixed meta prompt, the mean negative log-likelihood of the instruction's tokens and of the token
that ends its turn. Lower is better. The authors' code (``Zhudongsheng75/VisLingInstruct``) feeds
``[visual tokens; meta prompt; instruction]`` to InstructBLIP and averages the cross-entropy over
the instruction and EOS; in a chat model the meta prompt is the user's turn and the instruction
the assistant's, so a text-reading connector (CMAA) reads the meta prompt and never the candidate.
The candidates of one image share the prompt's forward pass
(:func:`vlkit.eval.scoring.continuation_scores`).
"""
from __future__ import annotations

from typing import Any, Sequence

from vlkit.eval.scoring import continuation_scores
from vlkit.tokens import with_image

META_PROMPT = "Based on the image given, the most appropriate instruction should be:"


def ias(model, processor, images: Sequence[Any], instructions: Sequence[Sequence[str]],
        meta_prompt: str = META_PROMPT, batch_size: int = 32, progress: bool = False) -> list[list[float]]:
    """IAS of each candidate instruction of each image: ``instructions[i]`` are ``images[i]``'s (notebook 05).

    Returns one score per (image, instruction), in their order; lower means the model finds the
    instruction better aligned with the image. An empty instruction, a count mismatch or a
    candidate that does not fit the context is an error, never a score.
    """
    if len(images) != len(instructions):
        raise ValueError(f"{len(images)} images but {len(instructions)} lists of instructions: one list per image")
    for i, cands in enumerate(instructions):
        if isinstance(cands, str):
            raise ValueError(f"image {i}: instructions must be a list of candidates per image, got a string")
        for c in cands:
            if not isinstance(c, str) or not c.strip():
                raise ValueError(f"image {i}: an empty instruction cannot be scored")
    prompts = [with_image(meta_prompt, img is not None) for img in images]
    scores = continuation_scores(model, processor, prompts, images, instructions, batch_size=batch_size,
                                 desc="IAS", progress=progress, where=[f"image {i}" for i in range(len(images))])
    return [[-total / n for total, n in row] for row in scores]
