"""Where a VLModel looks while it answers: one generation's attention, captured once (notebooks 06, 07).

:func:`capture_generation` runs a prompt about an image through the model once: a greedy generation under
:func:`vlkit.attention.capture_attention` (``steps=True``, so every decoding step's attention is kept, not
only the last forward's), and the vision tower once with its attention probabilities. What it returns, a
:class:`GenerationAttention`, holds everything the attention explorer (:mod:`vlkit.widgets`) draws, as
numpy arrays: redrawing a view never calls the model again.

Rows are the prompt's text tokens and the answer's tokens. An answer token's row is the attention of the
decoding step that *chose* it (the query at the position before it), because that is where the model looked
to say it; a prompt token's row is its own. Only text rows are kept: L x H x rows x keys floats is what a
LLaVA-7B-sized run would otherwise blow up (its 576 image tokens as queries).

The image grid comes from the model (``vision_config.image_size`` / ``patch_size``), and where the visual
tokens reaching the LLM are not one per patch, :attr:`GenerationAttention.patch_slot` says which slot each
patch went to (a plan compressor's assignment, VMTC's clusters), or is None (ToMe merges inside the tower; a
[cls]-per-layer connector has no grid), and the views draw the tokens as a strip instead of inventing a grid.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any, Iterator

import numpy as np
import torch
from PIL import Image
from transformers import AttentionInterface

from vlkit import attention
from vlkit.tokens import with_image


@dataclass(frozen=True)
class Query:
    """One selectable query token: ``label`` to show, ``kind`` ("prompt" or "answer"), ``index`` within its
    kind, ``position`` of the row's query in the fed sequence (for an answer token the position before it)."""

    label: str
    kind: str
    index: int
    position: int


@dataclass
class GenerationAttention:
    """One prompt, its greedy answer and the attention behind it (notebooks 06, 07).

    ``image``: what the vision tower saw (the processor's output, de-normalised), as a PIL image.
    ``grid``: (rows, cols) of the tower's patch grid. ``prompt``: the question asked. ``prompt_ids`` /
    ``answer_ids``: token ids (the prompt with its ``<image>`` expanded); ``answer_text``: the answer decoded.
    ``queries``: the selectable rows (prompt text tokens first, then answer tokens). ``llm``:
    [layers, heads, len(queries), positions] attention probabilities of each row over every fed position
    (the prompt, then the answer but its last token); keys after a row's query are 0 (causal).
    ``image_positions`` / ``text_positions``: which of those positions hold visual tokens / text.
    ``patch_slot``: [patches] the visual token (0..V-1) each patch reached, -1 for a dropped patch, or None
    when the visual tokens are not on the patch grid. ``kept``: [patches] bool, the patches a plan compressor
    kept as they are, or None without one. ``vision``: per vision layer, [heads, keys] the [cls] token's
    attention over the other tokens (without [cls]: the attention each token receives, averaged over queries).
    ``compressor``: the model's compressor name. ``extras``: what views computed once (:mod:`vlkit.widgets`).
    """

    image: Image.Image
    grid: tuple[int, int]
    prompt: str
    prompt_ids: list[int]
    answer_ids: list[int]
    answer_text: str
    queries: list[Query]
    llm: np.ndarray
    image_positions: np.ndarray
    text_positions: np.ndarray
    patch_slot: np.ndarray | None
    kept: np.ndarray | None
    vision: list[np.ndarray]
    compressor: str
    vision_has_cls: bool
    extras: dict[str, Any] = field(default_factory=dict)

    @property
    def llm_layers(self) -> int:
        return self.llm.shape[0]

    @property
    def llm_heads(self) -> int:
        return self.llm.shape[1]

    @property
    def answer(self) -> list[Query]:
        return [q for q in self.queries if q.kind == "answer"]

    def query(self, token: int) -> Query:
        """Row ``token`` of :attr:`queries`; out of range is an error, never an empty picture."""
        if not isinstance(token, (int, np.integer)) or isinstance(token, bool) or not 0 <= token < len(self.queries):
            raise IndexError(f"query token {token!r} is out of range: there are {len(self.queries)} "
                             f"({len(self.queries) - len(self.answer)} prompt text tokens, {len(self.answer)} answer tokens)")
        return self.queries[int(token)]

    def _rows(self, layer: int, head: int | None, tower: str = "llm") -> np.ndarray:
        layers, heads = (self.llm_layers, self.llm_heads) if tower == "llm" else (len(self.vision),
                                                                                   self.vision[0].shape[0])
        if not 0 <= layer < layers:
            raise IndexError(f"layer {layer} is out of range: the {tower} has {layers} layers")
        if head is not None and not 0 <= head < heads:
            raise IndexError(f"head {head} is out of range: the {tower} has {heads} heads")
        a = self.llm[layer] if tower == "llm" else self.vision[layer]
        return a.mean(0) if head is None else a[head]

    def to_image(self, layer: int, head: int | None, token: int) -> np.ndarray:
        """[V] attention of query ``token`` to each visual token at ``layer``, ``head`` (None: mean of heads)."""
        self.query(token)
        return self._rows(layer, head)[token][self.image_positions]

    def image_share(self, layer: int, head: int | None) -> np.ndarray:
        """[len(queries)] the share of each row's attention that goes to the visual tokens."""
        return self._rows(layer, head)[:, self.image_positions].sum(-1)

    def cls_attention(self, layer: int, head: int | None) -> np.ndarray:
        """[keys] the vision tower's [cls] attention over the other tokens at ``layer`` (see :attr:`vision`)."""
        return self._rows(layer, head, tower="vision")

    def on_grid(self, per_token: np.ndarray) -> np.ndarray | None:
        """Visual-token values [V] spread over the patch grid [patches]: a merged token's value shared by the
        patches it holds, NaN at dropped patches; None when the tokens are not on the grid."""
        if self.patch_slot is None:
            return None
        per_token = np.asarray(per_token, dtype=float)
        size = np.bincount(self.patch_slot[self.patch_slot >= 0], minlength=len(per_token))
        out = np.full(len(self.patch_slot), np.nan)
        on = self.patch_slot >= 0
        out[on] = per_token[self.patch_slot[on]] / size[self.patch_slot[on]]
        return out


# --- capture ------------------------------------------------------------------------------------------


def _is_stock_kernel(name: str) -> bool:
    """Whether attention ``name`` is one of transformers' own kernels (eager, SDPA, flash, flex).

    Those compute plain softmax attention, so ``vlkit_capture`` (the same maths, recorded) may stand in for
    them; a function registered elsewhere is a paper's mechanism (CMAI's inhibition, FastV's pruning) that the
    capture must see as it is, so it is kept and must record itself (:func:`vlkit.attention.record`).
    """
    if name == "eager":
        return True
    fn = AttentionInterface._global_mapping.get(name)
    return fn is not None and getattr(fn, "__module__", "").startswith("transformers.")


@contextlib.contextmanager
def _attention_as(module, name: str) -> Iterator[None]:
    """``module`` (a transformers model) with attention ``name`` inside, its own implementation after."""
    old = module.config._attn_implementation
    if old == name:
        yield
        return
    module.set_attn_implementation(name)
    try:
        yield
    finally:
        module.set_attn_implementation(old)


def _pixels(model, processor, image) -> torch.Tensor:
    """[1, 3, S, S] pixel values for ``image`` (a PIL image, an HxWx3 array, or pixel values already made),
    checked against the size the vision tower takes."""
    size = model.config.vision_config.image_size
    want = tuple(size) if isinstance(size, (tuple, list)) else (size, size)
    if isinstance(image, torch.Tensor):
        pixels = image.unsqueeze(0) if image.dim() == 3 else image
        where = "pixel values"
    else:
        if isinstance(image, np.ndarray):
            image = Image.fromarray(np.asarray(image, dtype=np.uint8))
        if not isinstance(image, Image.Image):
            raise TypeError(f"image must be a PIL image, an HxWx3 uint8 array or pixel values [3, H, W], "
                            f"not {type(image).__name__}")
        pixels = processor.image_processor([image.convert("RGB")], return_tensors="pt")["pixel_values"]
        where = "the processor's images"
    if pixels.dim() != 4 or pixels.shape[0] != 1 or pixels.shape[1] != 3:
        raise ValueError(f"{where} have shape {tuple(pixels.shape)}; the explorer takes one RGB image [1, 3, H, W]")
    if tuple(pixels.shape[-2:]) != want:
        raise ValueError(f"{where} are {pixels.shape[-2]}x{pixels.shape[-1]} but the vision tower takes "
                         f"{want[0]}x{want[1]} (vision_config.image_size): give a PIL image and the model's own "
                         "processor (VLProcessor.for_model), which resizes it")
    return pixels


def _seen_image(processor, pixels: torch.Tensor) -> Image.Image:
    """The picture the tower saw: ``pixels`` de-normalised with the processor's mean and std (else min-max)."""
    x = pixels[0].float().permute(1, 2, 0).numpy()
    ip = processor.image_processor
    mean, std = getattr(ip, "image_mean", None), getattr(ip, "image_std", None)
    if mean is not None and std is not None:
        x = x * np.asarray(std, dtype=np.float32) + np.asarray(mean, dtype=np.float32)
    else:
        x = (x - x.min()) / max(float(x.max() - x.min()), 1e-12)
    return Image.fromarray((np.clip(x, 0, 1) * 255).round().astype(np.uint8))


def _patch_slots(model, pixels: torch.Tensor) -> tuple[np.ndarray | None, np.ndarray | None]:
    """(slot of each patch or None, patches kept as they are or None), from the connector and compressor."""
    from vlkit.compressors import PlanCompressor  # the compressors import vlkit.model: not at the top

    n = model.num_patches
    cls_kept = int(model.has_cls and model.config.keep_cls)
    connector = model.connector
    # one connector token per patch (LLaVA's projections, CMAA): token cls_kept + p is patch p
    per_patch = len(connector.layers) == 1 and connector.num_tokens(n) == n + cls_kept
    if not per_patch:
        return None, None
    token_of_patch = np.arange(n) + cls_kept
    c = model.compressor
    if isinstance(c, PlanCompressor):
        with torch.no_grad():
            plan = c.plan(*model.compression_inputs(pixels.to(model.device)))
        assignment, kept = plan.assignment[0].cpu().numpy(), plan.kept[0].cpu().numpy()
        return assignment[token_of_patch], kept[token_of_patch]
    if model.num_image_tokens == n + cls_kept:  # no reduction at the connector (identity; FastV prunes later)
        return token_of_patch, None
    return None, None  # ToMe (merged in the tower) or a method without a per-patch plan


def _check_prompt(prompt: str) -> None:
    if not isinstance(prompt, str):
        raise TypeError(f"the prompt must be a string, not {type(prompt).__name__}")
    if not prompt.strip():
        raise ValueError(f"the prompt is empty ({prompt!r}): ask the model something about the image, "
                         "e.g. 'what color is the image?'")


@torch.no_grad()
def capture_generation(model, processor, image, prompt: str, max_new_tokens: int = 12) -> GenerationAttention:
    """Greedy-answer ``prompt`` about ``image`` once, with the attention of every step (notebooks 06, 07).

    ``model``: any :class:`vlkit.model.VLModel`; ``processor``: its :class:`vlkit.processor.VLProcessor`.
    The LLM's attention runs as ``vlkit_capture`` when it is one of transformers' kernels (SDPA, eager),
    and the vision tower eagerly (only eager attention returns probabilities); both are switched back
    afterwards, and the model's train/eval mode is restored. A registered function of a method's own (FastV,
    CMAI) is kept, and must record (:func:`vlkit.attention.record`); one that records nothing is an error.
    """
    from vlkit.model import VLModel

    if not isinstance(model, VLModel):
        raise TypeError(f"capture_generation takes a vlkit VLModel, not {type(model).__name__}")
    _check_prompt(prompt)
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens={max_new_tokens} must be >= 1")
    pixels = _pixels(model, processor, image)
    # the processor's own encoding and padding, with the pixels checked above (they may come ready-made)
    ids, labels = processor.encode([{"role": "user", "content": with_image(prompt)}], 1, add_generation_prompt=True)
    batch = processor.pad([(ids, labels)], side="left")
    batch.pop("labels")
    batch["pixel_values"] = pixels
    batch = {k: v.to(model.device) for k, v in batch.items()}
    llm_impl = model.language_model.config._attn_implementation
    was_training = model.training
    model.eval()
    try:
        with _attention_as(model.language_model, "vlkit_capture" if _is_stock_kernel(llm_impl) else llm_impl):
            with attention.capture_attention(steps=True) as maps:
                answer = model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False)[0]
        with _attention_as(model.vision_tower, "eager"):
            vision_out = model.vision_tower(pixel_values=pixels.to(model.device, model.vision_dtype),
                                            output_attentions=True, return_dict=True)
        patch_slot, kept = _patch_slots(model, pixels)
    finally:
        model.train(was_training)
    ids = batch["input_ids"][0].cpu()
    llm = _assemble_rows(maps.steps, ids, len(answer), model, llm_impl)
    is_image = (ids == model.config.image_token_id).numpy()
    fed = np.concatenate([is_image, np.zeros(len(answer) - 1, dtype=bool)])
    vision = [_cls_row(a[0].float().cpu(), model.has_cls) for a in vision_out.attentions]
    rows, cols = _grid(model)
    return GenerationAttention(
        image=_seen_image(processor, pixels), grid=(rows, cols), prompt=prompt, prompt_ids=ids.tolist(),
        answer_ids=answer.cpu().tolist(), answer_text=processor.decode(answer[None].cpu())[0], queries=_queries(processor.tokenizer, ids, answer.cpu(), is_image),
        llm=llm, image_positions=np.flatnonzero(fed), text_positions=np.flatnonzero(~fed),
        patch_slot=patch_slot, kept=kept, vision=vision, compressor=model.config.compressor,
        vision_has_cls=model.has_cls)


def _grid(model) -> tuple[int, int]:
    v = model.config.vision_config
    size = v.image_size if isinstance(v.image_size, (tuple, list)) else (v.image_size, v.image_size)
    patch = v.patch_size if isinstance(v.patch_size, (tuple, list)) else (v.patch_size, v.patch_size)
    return size[0] // patch[0], size[1] // patch[1]


def _cls_row(attn: torch.Tensor, has_cls: bool) -> np.ndarray:
    """[heads, keys]: the [cls] query's row without its own key, or the attention each key receives."""
    return (attn[:, 0, 1:] if has_cls else attn.mean(1)).numpy()


def _assemble_rows(steps: list[dict[int, torch.Tensor]], ids: torch.Tensor, n_answer: int, model, impl: str) -> np.ndarray:
    """[layers, heads, queries, positions] from the prefill's and each decoding step's captured maps."""
    layers = model.config.text_config.num_hidden_layers
    if len(steps) != n_answer or any(sorted(s) != list(range(layers)) for s in steps):
        raise RuntimeError(
            f"the LLM's attention {impl!r} recorded {len(steps)} forward calls "
            f"({sorted(steps[0]) if steps else []} layers in the first) for {n_answer} generated tokens of "
            f"{layers} layers: a function registered outside vlkit.attention must record its probabilities "
            "with vlkit.attention.record(module, probs) (as vlkit_capture does), or switch the LLM to "
            "'vlkit_capture' (vlkit.attention.set_attention(model.language_model, 'vlkit_capture'))")
    t = len(ids)
    text = np.flatnonzero((ids != model.config.image_token_id).numpy())
    positions = t + n_answer - 1
    heads = steps[0][0].shape[1]
    out = np.zeros((layers, heads, len(text) + n_answer, positions), dtype=np.float32)
    for layer in range(layers):
        prefill = steps[0][layer][0].float().cpu().numpy()  # [H, T, T]
        out[layer, :, : len(text), :t] = prefill[:, text]
        out[layer, :, len(text), :t] = prefill[:, -1]  # answer token 0 was chosen by the prompt's last query
        for i in range(1, n_answer):  # step i: the query is answer token i - 1, over t + i keys
            out[layer, :, len(text) + i, : t + i] = steps[i][layer][0, :, -1].float().cpu().numpy()
    return out


def _queries(tokenizer, ids: torch.Tensor, answer: torch.Tensor, is_image: np.ndarray) -> list[Query]:
    def label(i: int) -> str:
        return repr(tokenizer.decode([int(i)]))

    text = np.flatnonzero(~is_image)
    prompt = [Query(label(ids[p]), "prompt", k, int(p)) for k, p in enumerate(text)]
    t = len(ids)
    return prompt + [Query(label(a), "answer", i, t - 1 + i) for i, a in enumerate(answer)]
