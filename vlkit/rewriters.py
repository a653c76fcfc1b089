"""Instruction rewriters for VisLingInstruct's instruction optimisation (notebook 05).

AIO (2402.07398) starts by rewriting the user's instruction. Three rewriters share one interface,
``rewriter(instruction) -> list[str]`` (possibly empty: nothing usable came back), and count what they
could not use in ``n_failed``, so the original instruction is kept and the failure is visible:

- :class:`PoolParaphraser`: other phrasings of the same question from the task's pool (offline,
  deterministic; the default);
- :class:`SelfRewriter`: the model itself, prompted to rewrite (greedy), however poor at this size;
- :class:`ChatRewriter`: any OpenAI-compatible endpoint through :class:`vlkit.chat_client.ChatClient`
  (a timeout or a garbage reply is skipped and counted).
"""
from __future__ import annotations

import random
from typing import Sequence

from vlkit.errors import ServiceError

REWRITE_PROMPT = "Rewrite this instruction so that it is clearer, keeping its meaning: {instruction}"
MAX_WORDS = 40  # a "rewrite" longer than this is not one instruction (a chatty or runaway reply)


def clean(reply: str | None, instruction: str) -> str | None:
    """The rewrite in ``reply``, or None when it is empty, the original again, or not one short instruction."""
    if not isinstance(reply, str):
        return None
    text = reply.strip().strip('"').strip()
    if not text or text == instruction.strip() or len(text.split()) > MAX_WORDS or "\n\n" in text:
        return None
    return text


class PoolParaphraser:
    """Rewrites by picking ``n`` other phrasings from the task's pool (notebook 05).

    ``pool``: the task's phrasings, as templates with the same fields (e.g. ``"Is there a {object}
    in the image?"``); :meth:`__call__` gets the filled instruction and ``fields`` to fill others.
    """

    def __init__(self, pool: Sequence[str], n: int = 1, seed: int = 0):
        if len(set(pool)) < 2:
            raise ValueError("a paraphrasing pool needs at least two distinct phrasings")
        if n < 1:
            raise ValueError(f"n={n} rewrites must be >= 1")
        self.pool, self.n, self.seed = list(dict.fromkeys(pool)), n, seed
        self.n_failed = 0

    def __call__(self, instruction: str, key: str = "", **fields) -> list[str]:
        others = [t.format(**fields) for t in self.pool]
        others = [o for o in dict.fromkeys(others) if o != instruction]
        rng = random.Random(f"{self.seed}:{key or instruction}")  # the same question gets the same rewrites
        return rng.sample(others, min(self.n, len(others)))


class SelfRewriter:
    """The model rewrites the instruction itself (greedy, text only) (notebook 05)."""

    def __init__(self, model, processor, prompt: str = REWRITE_PROMPT, max_new_tokens: int = 24):
        self.model, self.processor, self.prompt, self.max_new_tokens = model, processor, prompt, max_new_tokens
        self.n_failed = 0

    def __call__(self, instruction: str, key: str = "", **fields) -> list[str]:
        return self.many([instruction])[0]

    def many(self, instructions: Sequence[str]) -> list[list[str]]:
        """One rewrite (or none) per instruction, generated in batches."""
        from vlkit.eval.scoring import generate
        replies = generate(self.model, self.processor, [self.prompt.format(instruction=i) for i in instructions],
                           [None] * len(instructions), max_new_tokens=self.max_new_tokens, progress=False)
        out = []
        for reply, inst in zip(replies, instructions):
            text = clean(reply, inst)
            self.n_failed += text is None
            out.append([text] if text else [])
        return out


class ChatRewriter:
    """Rewrites from an OpenAI-compatible endpoint; failures are skipped and counted (notebook 05)."""

    def __init__(self, client, prompt: str = REWRITE_PROMPT, temperature: float = 0.0):
        self.client, self.prompt, self.temperature = client, prompt, temperature
        self.n_failed = 0

    def __call__(self, instruction: str, key: str = "", **fields) -> list[str]:
        try:
            reply = self.client.complete([{"role": "user", "content": self.prompt.format(instruction=instruction)}],
                                         temperature=self.temperature)
        except ServiceError:  # timeouts and refusals after the client's retries: keep the original
            reply = None
        text = clean(reply, instruction)
        self.n_failed += text is None
        return [text] if text else []
