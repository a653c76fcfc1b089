"""VLProcessor: images + LLaVA conversations -> model batches (notebook 03).

Text goes through the tokenizer's chat template where its ``{% generation %}`` blocks give the
assistant-token mask, else through one of LLaVA's conversation templates (:mod:`vlkit.templates`,
e.g. ``vicuna_v1``); labels are the input ids on assistant turns and -100 elsewhere (LLaVA's loss). Each ``<image>`` id is then expanded into ``num_image_tokens`` copies: the
slots the model fills with visual tokens.
"""
from __future__ import annotations

import json
import weakref
from pathlib import Path
from typing import Any, Sequence

import torch
from transformers import AutoImageProcessor, AutoTokenizer

from vlkit.atomic import write_json
from vlkit import templates
from vlkit.model import IMAGE_TOKEN, _image_token_id
from vlkit.tokenizer import llava_to_messages
from vlkit.connector_text import IGNORE, text_mask
from vlkit.tokens import with_image


class VLProcessor:
    """Image processor + tokenizer + the number of visual tokens per image (notebook 03)."""

    def __init__(self, image_processor, tokenizer, num_image_tokens: int, max_length: int | None = None,
                 template: str = "auto"):
        """``template``: ``"auto"`` (the tokenizer's chat template where it marks assistant turns, else
        LLaVA's ``vicuna_v1``), ``"tokenizer"`` or a LLaVA template name (:mod:`vlkit.templates`); the
        resolved name is ``self.template`` and is saved with the processor."""
        self.image_processor, self.tokenizer = image_processor, tokenizer
        self._num_image_tokens, self.max_length = int(num_image_tokens), max_length
        self._model = None
        self.image_token_id = _image_token_id(tokenizer)
        self.template = templates.resolve(template, tokenizer)

    @classmethod
    def for_model(cls, model, image_processor, tokenizer, max_length: int | None = None,
                  template: str = "auto") -> "VLProcessor":
        """A processor that follows ``model.num_image_tokens``, also after the model's token reduction
        is switched (:meth:`vlkit.model.VLModel.set_token_reduction`) (notebook 03)."""
        proc = cls(image_processor, tokenizer, model.num_image_tokens, max_length, template)
        proc._model = weakref.ref(model)
        return proc

    @property
    def num_image_tokens(self) -> int:
        """Slots each ``<image>`` expands into: the linked model's current count, else the saved one."""
        model = self._model() if self._model is not None else None
        return int(model.num_image_tokens) if model is not None else self._num_image_tokens

    # --- one example -------------------------------------------------------------------------
    def encode(self, conversation: list[dict], n_images: int, add_generation_prompt: bool = False,
               where: str = "", truncate: bool = True) -> tuple[list[int], list[int]]:
        """Token ids (``<image>`` expanded) and labels for one conversation (notebook 03).

        Longer than ``max_length``, it is cut there (LLaVA's truncation; an error where the cut would
        drop an image or every answer token), or with ``truncate=False`` (scoring) it is an error."""
        messages = llava_to_messages(conversation)
        if add_generation_prompt and messages and messages[-1]["role"] == "assistant":
            messages = messages[:-1]  # prompt = everything before the answer
        n_tags = sum(m["content"].count(IMAGE_TOKEN) for m in messages)
        if n_tags != n_images:
            raise ValueError(f"{where or 'conversation'} has {n_tags} {IMAGE_TOKEN} tag(s) but {n_images} image(s)")
        ids, mask = self._tokenize(messages, add_generation_prompt)
        if (not add_generation_prompt and not any(mask)
                and any(m["role"] == "assistant" and m["content"] for m in messages)):
            raise ValueError(f"{where or 'conversation'}: the tokenizer's chat template marks no assistant "
                             "tokens; it needs {% generation %} ... {% endgeneration %} around assistant "
                             "content so labels can be restricted to answers")
        out_ids, labels = [], []
        for t, m in zip(ids, mask):
            if t == self.image_token_id:
                out_ids += [t] * self.num_image_tokens
                labels += [IGNORE] * self.num_image_tokens
            else:
                out_ids.append(t)
                labels.append(t if m else IGNORE)
        if self.max_length and len(out_ids) > self.max_length:
            if not truncate:
                raise ValueError(f"{where or 'conversation'}: {len(out_ids)} tokens do not fit the context of "
                                 f"max_length={self.max_length}; shorten it or raise max_length")
            if self.image_token_id in out_ids[self.max_length:]:
                raise ValueError(f"{where or 'conversation'}: max_length={self.max_length} would cut an image "
                                 f"({len(out_ids)} tokens); raise max_length")
            if any(t != IGNORE for t in labels) and all(t == IGNORE for t in labels[: self.max_length]):
                raise ValueError(f"{where or 'conversation'}: max_length={self.max_length} would cut every "
                                 f"answer token ({len(out_ids)} tokens); raise max_length")
            out_ids, labels = out_ids[: self.max_length], labels[: self.max_length]
        return out_ids, labels

    def _tokenize(self, messages: list[dict], add_generation_prompt: bool) -> tuple[list[int], list[int]]:
        """Token ids and the assistant mask (1 = an answer token) of chat ``messages``."""
        if self.template == "tokenizer":
            enc = self.tokenizer.apply_chat_template(
                messages, tokenize=True, return_dict=True, add_generation_prompt=add_generation_prompt,
                return_assistant_tokens_mask=True)
            ids = list(enc["input_ids"])
            return ids, list(enc.get("assistant_masks") or [0] * len(ids))
        text, spans = templates.template(self.template).render(messages, add_generation_prompt,
                                                               eos=self.tokenizer.eos_token)
        enc = self.tokenizer(text, add_special_tokens=True, return_offsets_mapping=True)
        # a token is an answer token when its characters overlap an answer span (byte-level BPE puts the
        # space before the answer's first word into that word's token)
        mask = [int(b > a and any(a < e and b > s for s, e in spans)) for a, b in enc["offset_mapping"]]
        return list(enc["input_ids"]), mask

    # --- batches -------------------------------------------------------------------------------
    def __call__(self, conversations: Sequence[list[dict]], images: Sequence[Any] | None = None,
                 add_generation_prompt: bool = False, padding_side: str | None = None) -> dict[str, torch.Tensor]:
        """Batch of conversations with their images (one image, None, or a list per example).

        Training batches are right-padded; with ``add_generation_prompt`` (inference) the last
        assistant turn is dropped, ``<|assistant|>`` appended and the batch left-padded. Keys:
        ``input_ids``, ``attention_mask``, ``labels`` (the answers of every turn), ``text_mask``
        (:func:`vlkit.connector_text.text_mask`: what a text-reading connector may read) and
        ``pixel_values`` where there are images.
        """
        images = list(images) if images is not None else [None] * len(conversations)
        if len(images) != len(conversations):
            raise ValueError(f"{len(conversations)} conversations but {len(images)} image entries")
        seqs, flat_images = [], []
        for i, (conv, img) in enumerate(zip(conversations, images)):
            imgs = [] if img is None else list(img) if isinstance(img, (list, tuple)) else [img]
            seqs.append(self.encode(conv, len(imgs), add_generation_prompt, where=f"example {i}"))
            flat_images += imgs
        side = padding_side or ("left" if add_generation_prompt else "right")
        batch = self.pad(seqs, side)
        batch["text_mask"] = text_mask(batch["input_ids"], batch["attention_mask"], batch["labels"], self.image_token_id)
        if flat_images:
            batch["pixel_values"] = self.image_processor(flat_images, return_tensors="pt")["pixel_values"]
        return batch

    def pad(self, seqs: list[tuple[list[int], list[int]]], side: str = "right") -> dict[str, torch.Tensor]:
        """Pad (ids, labels) pairs to one length (notebook 03)."""
        n = max(len(ids) for ids, _ in seqs)
        pad_id = self.tokenizer.pad_token_id
        input_ids = torch.full((len(seqs), n), pad_id, dtype=torch.long)
        labels = torch.full((len(seqs), n), IGNORE, dtype=torch.long)
        attn = torch.zeros((len(seqs), n), dtype=torch.long)
        for i, (ids, lab) in enumerate(seqs):
            sl = slice(n - len(ids), n) if side == "left" else slice(0, len(ids))
            input_ids[i, sl], labels[i, sl], attn[i, sl] = torch.tensor(ids), torch.tensor(lab), 1
        return {"input_ids": input_ids, "attention_mask": attn, "labels": labels}

    def collate(self, examples: list[dict]) -> dict[str, torch.Tensor]:
        """DataLoader collate_fn for examples ``{"conversations": [...], "image": PIL | None}`` (notebook 03)."""
        return self([e["conversations"] for e in examples], [e.get("image") for e in examples])

    def prompt(self, questions: Sequence[str], images: Sequence[Any] | None = None) -> dict[str, torch.Tensor]:
        """Left-padded generation inputs: one user turn per question, ``<image>`` first when an image is given."""
        images = list(images) if images is not None else [None] * len(questions)
        convs = [[{"role": "user", "content": with_image(q, img is not None)}] for q, img in zip(questions, images)]
        return self(convs, images, add_generation_prompt=True)

    def decode(self, ids: torch.Tensor) -> list[str]:
        """Generated ids -> text, special tokens removed (notebook 03)."""
        return [s.strip() for s in self.tokenizer.batch_decode(ids, skip_special_tokens=True)]

    # --- persistence -------------------------------------------------------------------------
    def save_pretrained(self, path: str | Path) -> None:
        path = Path(path)
        self.tokenizer.save_pretrained(path)
        self.image_processor.save_pretrained(path)
        write_json(path / "vlkit_processor.json", {"num_image_tokens": self.num_image_tokens,
                                                   "max_length": self.max_length, "template": self.template})

    @classmethod
    def from_pretrained(cls, path: str | Path) -> "VLProcessor":
        path = Path(path)
        meta_file = path / "vlkit_processor.json"
        if not meta_file.is_file():
            raise FileNotFoundError(f"{meta_file} not found: not a folder written by VLProcessor.save_pretrained")
        meta = json.loads(meta_file.read_text())
        return cls(AutoImageProcessor.from_pretrained(path), AutoTokenizer.from_pretrained(path),
                   meta["num_image_tokens"], meta.get("max_length"), meta.get("template", "tokenizer"))
