"""The chat teacher: LLaVA's data generation through an OpenAI-compatible endpoint (notebook 01).

Our own system prompts and one few-shot example per kind (conversation, detail, reasoning)
go to the endpoint with the symbolic context; the reply is validated by :func:`parse_reply`
and a malformed one is skipped and counted, never written. The HTTP side (retries, the API
key) is :class:`vlkit.chat_client.ChatClient`'s.
"""
from __future__ import annotations

import random
import re

from vlkit.chat_client import ChatClient
from vlkit.teacher import DETAIL_PROMPTS, KINDS, llava_turns, parse_context

SYSTEM_PROMPTS = {
    "conversation": (
        "You are an AI visual assistant looking at a single image. You do not see it: you receive "
        "five captions describing it and the bounding boxes of its objects as "
        "'category: [x1, y1, x2, y2]', coordinates normalised to 0-1 with (0, 0) at the top left. "
        "Write a conversation between a person asking about the image and you answering as if you "
        "saw it. Ask about object types, counts, colours, positions, relative positions and sizes. "
        "Only ask questions that can be answered with confidence from the given information. "
        "Never mention captions, boxes or coordinates. Format each exchange as two lines:\n"
        "Question: <question>\nAnswer: <answer>"),
    "detail": (
        "You are an AI visual assistant. You receive five captions of an image and the bounding "
        "boxes of its objects as 'category: [x1, y1, x2, y2]' (normalised, origin at top left). "
        "Write one detailed paragraph describing the image as if you saw it: every object, its "
        "colour, size and position, and how the objects are arranged. Only state what the "
        "information supports. Never mention captions, boxes or coordinates. Reply with the "
        "paragraph only."),
    "reasoning": (
        "You are an AI visual assistant. You receive five captions of an image and the bounding "
        "boxes of its objects as 'category: [x1, y1, x2, y2]' (normalised, origin at top left). "
        "Ask one question about the image that needs several facts to answer (comparisons, "
        "counting under a condition, spatial reasoning) and answer it step by step, as if you saw "
        "the image. The answer must be correct given the information. Never mention captions, "
        "boxes or coordinates. Format:\nQuestion: <question>\nAnswer: <answer>"),
}

_FEW_SHOT_CONTEXT = (
    "A dog and two people in a park.\nTwo people stand near a brown dog.\n"
    "A dog lying on the grass on the left.\nPeople and their pet outdoors.\nA sunny park scene.\n\n"
    "brown dog: [0.050, 0.600, 0.300, 0.850]\nperson: [0.500, 0.200, 0.650, 0.900]\n"
    "person: [0.700, 0.250, 0.850, 0.900]\n")
FEW_SHOT = {
    "conversation": (_FEW_SHOT_CONTEXT,
                     "Question: How many people are in the image?\nAnswer: There are two people.\n"
                     "Question: What colour is the dog?\nAnswer: The dog is brown.\n"
                     "Question: Where is the dog?\nAnswer: The dog is at the bottom left, to the left of the people."),
    "detail": (_FEW_SHOT_CONTEXT,
               "A sunny park scene: a brown dog lies on the grass in the lower left of the image, "
               "while two people stand side by side on the right, both taller than the dog is long."),
    "reasoning": (_FEW_SHOT_CONTEXT,
                  "Question: Is the dog closer to the person on the left or to the person on the right?\n"
                  "Answer: The dog is in the lower left. Of the two people, one stands in the middle and "
                  "one further right, so the dog is closer to the person in the middle."),
}
_QA = re.compile(r"^Question:\s*(?P<q>.+?)\s*\nAnswer:\s*(?P<a>.+?)\s*(?=\nQuestion:|\Z)", re.S | re.M)


def parse_reply(reply: str, kind: str, rng: random.Random | None = None) -> list[dict] | None:
    """Turn a chat reply into LLaVA turns; None when it does not follow the format (notebook 01)."""
    if not isinstance(reply, str) or not reply.strip() or len(reply) > 8000:
        return None
    reply = reply.strip()
    if kind == "detail":
        if "Question:" in reply or "Answer:" in reply or len(reply) < 20:
            return None
        return llava_turns([((rng or random).choice(DETAIL_PROMPTS), " ".join(reply.split()))])
    pairs = [(m["q"].strip(), m["a"].strip()) for m in _QA.finditer(reply)]
    # Strict format: starts with a question, and every Question: has exactly one Answer:.
    if not pairs or not reply.startswith("Question:") \
            or reply.count("Question:") != len(pairs) or reply.count("Answer:") != len(pairs) \
            or any(not q or not a for q, a in pairs):
        return None
    if kind == "reasoning":
        pairs = pairs[:2]
    return llava_turns(pairs)


class ChatTeacher:
    """Teacher behind an OpenAI-compatible ``/v1/chat/completions`` endpoint (notebook 01).

    ``client`` does the requests (retries with backoff; the API key stays in the environment,
    see :class:`vlkit.chat_client.ChatClient`). A reply that does not follow the format is
    counted in ``n_malformed`` and ``generate`` returns None. ``n_requests`` and ``n_retries``
    are the client's.
    """

    def __init__(self, client: ChatClient, temperature: float = 0.7, seed: int = 0):
        self.client = client
        self.temperature = temperature
        self.rng = random.Random(seed)
        self.n_malformed = 0

    def __repr__(self) -> str:
        return f"ChatTeacher(client={self.client!r}, temperature={self.temperature!r})"

    @property
    def n_requests(self) -> int:
        return self.client.n_requests

    @property
    def n_retries(self) -> int:
        return self.client.n_retries

    def messages(self, context_text: str, kind: str) -> list[dict]:
        ctx, answer = FEW_SHOT[kind]
        return [{"role": "system", "content": SYSTEM_PROMPTS[kind]},
                {"role": "user", "content": ctx}, {"role": "assistant", "content": answer},
                {"role": "user", "content": context_text}]

    def generate(self, context_text: str, kind: str, key: str | None = None) -> list[dict] | None:
        if kind not in KINDS:
            raise ValueError(f"unknown kind {kind!r}; expected one of {', '.join(KINDS)}")
        parse_context(context_text)  # refuse to send a malformed context
        reply = self.client.complete(self.messages(context_text, kind), temperature=self.temperature)
        rng = random.Random(f"{key}:{kind}") if key is not None else self.rng
        turns = parse_reply(reply, kind, rng) if reply is not None else None
        if turns is None:
            self.n_malformed += 1
        return turns
