"""LLaVA's conversation templates, for tokenizers whose chat template cannot mark assistant turns (notebook 03).

The loss is on the assistant's answers only, so the processor must know which tokens are answers.
A chat template with ``{% generation %}`` blocks says so (the workbook's own tokenizer); most real
Llama / Vicuna tokenizers have none, and LLaVA itself formats conversations with its own templates
(``llava/conversation.py``: ``conv_vicuna_v1`` etc., ``SeparatorStyle.TWO``)::

    <system> USER: <question> ASSISTANT: <answer></s>USER: ...

:meth:`ConversationTemplate.render` returns the text and the character spans of the answers; the
processor tokenizes the whole text once (so BPE merges are those of the real prompt) and labels the
tokens that fall inside those spans.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ConversationTemplate:
    """A LLaVA conversation template of ``SeparatorStyle.TWO`` (notebook 03)."""

    name: str
    system: str
    roles: tuple[str, str] = ("USER", "ASSISTANT")
    sep: str = " "

    def render(self, messages: list[dict], add_generation_prompt: bool = False,
               eos: str = "</s>") -> tuple[str, list[tuple[int, int]]]:
        """``(text, answer_spans)`` for chat messages ``[{"role": "user"|"assistant", "content"}]``.

        Each answer span covers the assistant's content and the end-of-sequence token closing it
        (LLaVA's ``sep2``; pass the tokenizer's own ``eos`` so it is one token the model learns to stop
        on), as LLaVA's ``preprocess_v1`` labels them; with ``add_generation_prompt`` the text ends in
        ``"ASSISTANT:"``, LLaVA's generation prompt.
        """
        text, spans = self.system + self.sep if self.system else "", []
        for m in messages:
            if m["role"] == "user":
                text += f"{self.roles[0]}: {m['content']}{self.sep}"
            elif m["role"] == "assistant":
                text += f"{self.roles[1]}: "
                start = len(text)
                text += m["content"] + eos
                spans.append((start, len(text)))
            else:
                raise ValueError(f"unknown chat role {m['role']!r}; use user or assistant")
        if add_generation_prompt:
            text += f"{self.roles[1]}:"
        return text, spans


TEMPLATES = {t.name: t for t in (
    ConversationTemplate("vicuna_v1", "A chat between a curious user and an artificial intelligence assistant. "
                                      "The assistant gives helpful, detailed, and polite answers to the user's questions."),
    ConversationTemplate("llava_v1", "A chat between a curious human and an artificial intelligence assistant. "
                                     "The assistant gives helpful, detailed, and polite answers to the human's questions."),
)}
# What a spec may name: a LLaVA template, the tokenizer's own chat template ("tokenizer": it must mark
# assistant turns), or "auto": the tokenizer's own where it marks them, else vicuna_v1.
CHOICES = ("auto", "tokenizer", *TEMPLATES)


def template(name: str) -> ConversationTemplate:
    """The LLaVA template called ``name``; an unknown name lists the known ones."""
    if name not in TEMPLATES:
        raise ValueError(f"unknown conversation template {name!r}; known: {', '.join(CHOICES)}")
    return TEMPLATES[name]


def marks_assistant_turns(tokenizer) -> bool:
    """Whether ``tokenizer``'s chat template marks assistant tokens (``{% generation %}`` blocks)."""
    chat_template = getattr(tokenizer, "chat_template", None)
    if not isinstance(chat_template, str) or "generation" not in chat_template:
        return False
    probe = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]
    try:
        enc = tokenizer.apply_chat_template(probe, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
    except Exception:  # a template that cannot render a plain user/assistant exchange cannot mark it either
        return False
    return any(enc.get("assistant_masks") or [])


def resolve(name: str, tokenizer) -> str:
    """The template a processor uses for ``name``: ``"tokenizer"`` or a LLaVA template name."""
    if name == "auto":
        return "tokenizer" if marks_assistant_turns(tokenizer) else "vicuna_v1"
    if name == "tokenizer":
        if not marks_assistant_turns(tokenizer):
            tok = getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__
            raise ValueError(f"tokenizer {tok!r}: its chat template marks no assistant tokens (no {{% generation %}} "
                             f"blocks); use a LLaVA template instead, e.g. template='vicuna_v1'")
        return name
    template(name)
    return name
