"""VLModel: vision tower -> connector -> compressor -> causal LLM fed through inputs_embeds (notebook 03).

The design follows LLaVA as transformers implements it (``LlavaForConditionalGeneration``): the
processor expands every ``<image>`` in the text into ``num_image_tokens`` placeholder ids, the
model embeds the text, computes the visual tokens and scatters them into those positions. What
differs is that the connector, the compressor, the modules inserted into the towers' blocks and
the LLM's attention function come from registries and the vision tower and LLM are *any* Hugging
Face models, so each later notebook swaps one part by name. :class:`VLConfig` holds the whole
structure, so ``save_pretrained`` / ``from_pretrained`` round-trip every variant.
"""
from __future__ import annotations

import importlib
from typing import Any

import torch
from torch import nn
from transformers import (AutoConfig, AutoModel, AutoModelForCausalLM, AutoModelForImageTextToText,
                          GenerationMixin, PretrainedConfig, PreTrainedModel)
from transformers.configuration_utils import SubConfigSpec

from vlkit import attention  # registers vlkit_capture, so saved models using it reload
from vlkit.compression import CompressionContext, available_compressors, build_compressor, compressor_module
from vlkit.connectors import build_connector
from vlkit.insertions import _norm_of, apply_insertions, blocks
from vlkit.connector_text import text_mask as text_mask_of
from vlkit.tokenizer import IMAGE_TOKEN


class VLConfig(PretrainedConfig):
    """Configuration of a :class:`VLModel` (notebook 03).

    ``vision_config`` / ``text_config``: the towers' own configs (any HF vision model, any causal
    LM). ``connector`` / ``compressor``: registry names, with ``*_kwargs`` for their options;
    ``compressor_module``: the module that registers the compressor, imported on loading (a
    compressor registered outside vlkit reloads in a fresh process).
    ``insertions``: modules inserted into the towers' blocks (:mod:`vlkit.insertions`), as
    dicts of :class:`vlkit.specs.InsertionSpec`. ``vision_feature_layer``: encoder layer the patch
    features come from (-2 = penultimate, as LLaVA). ``keep_cls``: keep the [cls] token (LLaVA
    drops it). ``image_token_id``: the tokenizer's ``<image>`` id. ``llm_attn_implementation``:
    attention function of the LLM (``sdpa``, ``eager`` or one registered in
    :mod:`vlkit.attention`), with ``attention_kwargs`` for its options; saved with the model.
    ``vision_attn_implementation``: the vision tower's (None: its own, else SDPA).
    """

    model_type = "vlkit"
    sub_configs_defaults = {
        "vision_config": SubConfigSpec(config_class=AutoConfig, model_type="clip_vision_model"),
        "text_config": SubConfigSpec(config_class=AutoConfig, model_type="llama"),
    }

    vision_config: dict | PretrainedConfig | None = None
    text_config: dict | PretrainedConfig | None = None
    connector: str = "linear"
    connector_kwargs: dict | None = None
    compressor: str = "identity"
    compressor_kwargs: dict | None = None
    compressor_module: str | None = None
    insertions: list | None = None
    vision_feature_layer: int = -2
    keep_cls: bool = False
    image_token_id: int | None = None
    llm_attn_implementation: str | None = None
    attention_kwargs: dict | None = None
    vision_attn_implementation: str | None = None
    tie_word_embeddings: bool = False

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        self.connector_kwargs = dict(self.connector_kwargs or {})
        self.compressor_kwargs = dict(self.compressor_kwargs or {})
        self.attention_kwargs = dict(self.attention_kwargs or {})
        self.insertions = [dict(s) for s in self.insertions or []]


def _vision_has_cls(tower: nn.Module) -> bool:
    """True when the tower prepends a [cls] token (CLIP does, SigLIP does not)."""
    for m in tower.modules():
        if hasattr(m, "num_patches") and hasattr(m, "num_positions"):
            return m.num_positions == m.num_patches + 1
    return False


class VLModel(PreTrainedModel, GenerationMixin):
    """Vision-language model: encoder -> connector -> compressor -> LLM (notebook 03).

    ``forward(input_ids, pixel_values, attention_mask, labels)`` returns the LLM's output
    (loss over positions whose label is not -100: the processor labels assistant turns only).
    """

    config_class = VLConfig
    base_model_prefix = ""
    main_input_name = "input_ids"
    input_modalities = ("image", "text")
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_flex_attn = True
    _supports_attention_backend = True
    supports_gradient_checkpointing = True

    def __init__(self, config: VLConfig, vision_tower: nn.Module | None = None,
                 language_model: nn.Module | None = None):
        super().__init__(config)
        self.vision_tower = vision_tower if vision_tower is not None else AutoModel.from_config(config.vision_config)
        self.language_model = (language_model if language_model is not None
                               else AutoModelForCausalLM.from_config(config.text_config))
        vcfg, tcfg = config.vision_config, config.text_config
        self.has_cls = _vision_has_cls(self.vision_tower)
        self.num_patches = (vcfg.image_size // vcfg.patch_size) ** 2
        self.connector = build_connector(
            config.connector, vcfg.hidden_size, tcfg.hidden_size,
            feature_layer=config.vision_feature_layer, keep_cls=config.keep_cls, has_cls=self.has_cls,
            num_layers=vcfg.num_hidden_layers, **config.connector_kwargs)
        if config.compressor_module and config.compressor not in available_compressors():
            importlib.import_module(config.compressor_module)
        self.compressor = build_compressor(config.compressor, tcfg.hidden_size, **config.compressor_kwargs)
        self._check_compressor(self.compressor)  # counted below, once attached
        self.inserted = nn.ModuleDict()
        # Models built by their constructor may leave the implementation unset (None), and then
        # transformers falls back to eager attention WITHOUT a causal mask: always pin it.
        self.language_model.set_attn_implementation(
            config.llm_attn_implementation or self.language_model.config._attn_implementation or "sdpa")
        self.language_model.config.vlkit_attention_kwargs = dict(config.attention_kwargs)
        self._vision_attention = (config.vision_attn_implementation or self.vision_tower.config._attn_implementation
                                  or "sdpa")
        self._pin_vision_attention()
        self.post_init()
        # after post_init, so that inserting modules changes no other module's initialisation
        apply_insertions(self, config.insertions)
        self.compressor.attach(self)
        # counted once attached: a method acting in a tower (ToMe) knows its count from the tower it patched
        self.num_image_tokens = self._count_tokens(self.compressor)

    def _pin_vision_attention(self) -> None:
        # [cls]->patch importance needs attention probabilities, which only eager attention returns
        self.vision_tower.set_attn_implementation(
            "eager" if self.compressor.needs_importance else self._vision_attention)

    def _check_compressor(self, compressor) -> None:
        """A clear error when this model cannot feed ``compressor`` what it asks of the tower (notebook 06).

        Checked before :meth:`Compressor.attach`, so nothing has changed yet; what a method acting in
        the tower or the LLM needs of the model (ToMe's connector and bound, FastV's layer) its
        ``attach`` checks, before it patches anything.
        """
        n = self.connector.num_tokens(self.num_patches)
        name = compressor.name
        if compressor.needs_cls and not self.has_cls:
            raise ValueError(f"compressor {name!r} ranks patches by the [cls] token's attention, but this vision "
                             f"tower ({type(self.vision_tower).__name__}) has no [cls] token")
        if compressor.needs_importance or compressor.needs_keys:
            if n != self.num_patches:
                raise ValueError(f"compressor {name!r} reads the tower's attention per patch ({self.num_patches} "
                                 f"patches), but connector {self.config.connector!r} emits {n} tokens"
                                 + (" (keep_cls adds the [cls] token)" if self.config.keep_cls else ""))
            if self.config.vision_feature_layer % (self.config.vision_config.num_hidden_layers + 1) == 0:
                raise ValueError(f"compressor {name!r} reads the attention of the layer making the features, but "
                                 "vision_feature_layer 0 is the embeddings, which no attention layer makes")

    def _count_tokens(self, compressor) -> int:
        """The visual tokens ``compressor`` hands the LLM per image; asked once it is attached (ToMe
        plans its merges from the tower it patched). A budget above the tokens raises here."""
        return compressor.num_tokens(self.connector.num_tokens(self.num_patches))

    def set_token_reduction(self, name: str, **options) -> None:
        """Switch the visual-token compressor of a (trained) model to ``name`` (notebook 06).

        The number of visual tokens follows (``num_image_tokens``; a processor made with
        :meth:`VLProcessor.for_model` reads it from the model), and a batch expanded for another count
        is an error in :meth:`embed`. The tower's attention is re-pinned to eager when the method needs
        [cls] attention, and back to what it was otherwise. ``"identity"`` switches reduction off.
        Bad options, a method the tower cannot feed (one ranking by [cls] attention on a tower without
        [cls], or a connector whose tokens are not the patches), a method that cannot act on this
        model (ToMe's bound or connector, FastV's layer: refused in ``attach``) and a count above the
        tokens are errors that leave the model as it was, with the method it had.

        The order: check what the tower must feed, detach the old method, attach the new one, count its
        tokens (ToMe knows its count only from the tower it patched); on any error there, the new
        method is detached and the old one attached again.
        """
        new = build_compressor(name, self.config.text_config.hidden_size, **options)
        self._check_compressor(new)  # before anything changes
        new.to(self.device)
        old = self.compressor
        old.detach(self)
        try:
            new.attach(self)  # checks the model before it patches anything
            n = self._count_tokens(new)
        except Exception:
            try:
                new.detach(self)
            finally:
                old.attach(self)
            raise
        self.compressor = new
        self.config.compressor, self.config.compressor_kwargs = name, dict(options)
        self.config.compressor_module = compressor_module(name)
        self.num_image_tokens = n
        self._pin_vision_attention()

    # --- building -----------------------------------------------------------------------
    @classmethod
    def from_backbones(cls, vision: Any, llm: Any, tokenizer, connector: str = "linear",
                       connector_kwargs: dict | None = None, compressor: str = "identity",
                       compressor_kwargs: dict | None = None, vision_feature_layer: int = -2,
                       keep_cls: bool = False, llm_attn_implementation: str | None = None,
                       llm_quantization_config=None, insertions: list | None = None,
                       attention_kwargs: dict | None = None,
                       vision_attn_implementation: str | None = None) -> "VLModel":
        """Assemble a VLModel from a vision tower and an LLM (notebook 03).

        ``vision`` / ``llm``: model objects, or names/paths loaded with ``from_pretrained``
        (a full ``CLIPModel``/``SiglipModel`` contributes its vision half). ``tokenizer`` must
        have a single ``<image>`` token that the LLM's vocabulary covers. Usually called through
        :func:`vlkit.build.build_model` with a :class:`vlkit.specs.ModelSpec`.
        """
        vision = _load_vision(vision)
        if isinstance(llm, (str, bytes)) or hasattr(llm, "__fspath__"):
            llm = AutoModelForCausalLM.from_pretrained(str(llm), quantization_config=llm_quantization_config)
        if getattr(llm, "is_loaded_in_4bit", False):
            from vlkit.train import bnb_cpu_safe
            bnb_cpu_safe(llm)
        image_id = _image_token_id(tokenizer)
        vocab = llm.get_input_embeddings().num_embeddings
        if len(tokenizer) > vocab:
            raise ValueError(f"tokenizer has {len(tokenizer)} tokens but the LLM's embedding table has {vocab}; "
                             "call llm.resize_token_embeddings(len(tokenizer)) first")
        config = VLConfig(vision_config=vision.config, text_config=llm.config, connector=connector,
                          connector_kwargs=connector_kwargs, compressor=compressor,
                          compressor_kwargs=compressor_kwargs, compressor_module=compressor_module(compressor),
                          vision_feature_layer=vision_feature_layer,
                          keep_cls=keep_cls, image_token_id=image_id, insertions=insertions,
                          llm_attn_implementation=llm_attn_implementation, attention_kwargs=attention_kwargs,
                          vision_attn_implementation=vision_attn_implementation)
        model = cls(config, vision_tower=vision, language_model=llm)
        gen = model.generation_config
        gen.pad_token_id, gen.eos_token_id = tokenizer.pad_token_id, tokenizer.eos_token_id
        gen.bos_token_id = tokenizer.bos_token_id
        model.language_model.generation_config = gen
        return model

    # --- plumbing for transformers ---------------------------------------------------------
    def get_input_embeddings(self) -> nn.Module:
        return self.language_model.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.language_model.set_input_embeddings(value)

    def get_output_embeddings(self) -> nn.Module:
        return self.language_model.get_output_embeddings()

    # --- forward ---------------------------------------------------------------------------
    def encode_images(self, pixel_values: torch.Tensor, text_embeds: torch.Tensor | None = None,
                      text_mask: torch.Tensor | None = None, return_mask: bool = False):
        """Images [B, C, H, W] -> visual tokens [B, num_image_tokens, D_text] (notebook 03).

        With ``return_mask``: ``(tokens, mask)``, the mask [B, num_image_tokens] False at slots the
        compressor left empty (PruMerge's padding, notebook 06), or None when every slot holds a token.
        """
        tokens, context = self.compression_inputs(pixel_values, text_embeds, text_mask)
        visual, mask = self.compressor.compress(tokens, context)
        if mask is not None and bool(mask.all()):
            mask = None
        return (visual, mask) if return_mask else visual

    def compression_inputs(self, pixel_values: torch.Tensor, text_embeds: torch.Tensor | None = None,
                           text_mask: torch.Tensor | None = None) -> tuple[torch.Tensor, CompressionContext]:
        """The connector's tokens [B, N, D_text] and what the compressor asks of the tower (notebook 06).

        ``compressor.plan(*model.compression_inputs(pixels))`` (a :class:`vlkit.compressors.PlanCompressor`)
        is what a figure draws: which tokens a method kept, merged where, or dropped. With ToMe
        attached the tokens are the merged ones the patched tower made.
        """
        c = self.compressor
        out = self.vision_tower(pixel_values=pixel_values.to(self.vision_dtype), output_hidden_states=True,
                                output_attentions=c.needs_importance, return_dict=True)
        tokens = self.connector(out.hidden_states, text_embeds=text_embeds, text_mask=text_mask)
        # hidden_states[j] is made by block j - 1, whose attention is attentions[j - 1]
        j = self.config.vision_feature_layer % len(out.hidden_states)
        importance = keys = None
        if c.needs_importance:
            # [cls] -> patch attention at the feature layer, averaged over heads (VMTC's signal)
            attn = out.attentions[j - 1].mean(1)
            importance = attn[:, 0, 1:] if self.has_cls else attn.mean(1)
        if c.needs_keys:
            keys = self._feature_keys(out.hidden_states[j - 1], j - 1)
        return tokens, CompressionContext(importance=importance, keys=keys)

    @torch.no_grad()  # keys only decide which tokens merge: no gradient needs to flow through them
    def _feature_keys(self, block_input: torch.Tensor, index: int) -> torch.Tensor:
        """Block ``index``'s attention keys of the patches [B, N, D_head], averaged over heads (VisionZip, PruMerge)."""
        block = blocks(self, "vision")[index]
        # through the block's own input norm, so an inserted module hooked on it (notebook 04) applies too
        keys = block.self_attn.k_proj(_norm_of(block, "attention")(block_input))
        keys = keys.view(*keys.shape[:2], self.config.vision_config.num_attention_heads, -1).mean(2)
        return keys[:, 1:] if self.has_cls and not self.config.keep_cls else keys

    @property
    def vision_dtype(self) -> torch.dtype:
        return next(self.vision_tower.parameters()).dtype

    def embed(self, input_ids: torch.LongTensor, pixel_values: torch.Tensor | None = None,
              attention_mask: torch.Tensor | None = None, labels: torch.LongTensor | None = None,
              text_mask: torch.Tensor | None = None, return_mask: bool = False):
        """Text embeddings with visual tokens scattered into the ``<image>`` slots (notebook 03).

        With ``return_mask``: ``(embeds, padded)``, ``padded`` [B, T] True at the image slots the
        compressor left empty (to hide from the LLM, notebook 06), or None when there are none.

        A connector that reads the text (``uses_text``) never sees an answer: it reads the tokens of
        ``text_mask`` (the processor's, :func:`vlkit.connector_text.text_mask`: the text before the first
        answer, in training as in evaluation), and within it those before the first labelled token, so
        that the visual tokens never depend on the answer they are trained to produce (notebook 05).
        """
        embeds = self.get_input_embeddings()(input_ids)
        slots = input_ids == self.config.image_token_id
        n_slots, n_images = int(slots.sum()), 0 if pixel_values is None else pixel_values.shape[0]
        if n_slots != n_images * self.num_image_tokens:
            raise ValueError(
                f"the batch has {n_slots} image-token slots ({n_slots / self.num_image_tokens:g} <image> of "
                f"{self.num_image_tokens} tokens each) but {n_images} images; each <image> in the text needs "
                "exactly one image (use VLProcessor to expand <image>)")
        if n_images == 0:
            return (embeds, None) if return_mask else embeds
        if not self.connector.uses_text:
            visual, mask = self.encode_images(pixel_values, return_mask=True)
            return self._scatter(embeds, slots, visual, mask, return_mask)
        # each image reads the text of its own example: at most one image per example, and text-only
        # examples (no image) may share the batch
        if (slots.sum(1) % self.num_image_tokens).any():
            raise ValueError(f"an example's image-token slots are not a whole number of images of "
                             f"{self.num_image_tokens} tokens (use VLProcessor to expand <image>)")
        per_row = slots.sum(1) // self.num_image_tokens
        if int(per_row.max()) > 1:
            raise ValueError(f"connector {self.config.connector!r} reads the text, so it takes at most one "
                             "image per example; an example here has more")
        rows = per_row.bool()
        readable = text_mask_of(input_ids[rows], None if attention_mask is None else attention_mask[rows],
                                None if labels is None else labels[rows], self.config.image_token_id)
        if text_mask is not None:
            readable &= text_mask[rows].bool()
        visual, mask = self.encode_images(pixel_values, embeds[rows], readable, return_mask=True)
        return self._scatter(embeds, slots, visual, mask, return_mask)

    @staticmethod
    def _scatter(embeds, slots, visual, mask, return_mask: bool):
        embeds = embeds.masked_scatter(slots.unsqueeze(-1), visual.to(embeds.dtype))
        if not return_mask:
            return embeds
        # the slots fill image by image in reading order, as masked_scatter fills the embeddings
        padded = None if mask is None else torch.zeros_like(slots).masked_scatter(slots, ~mask.reshape(-1))
        return embeds, padded

    def forward(self, input_ids: torch.LongTensor | None = None, pixel_values: torch.Tensor | None = None,
                attention_mask: torch.Tensor | None = None, labels: torch.LongTensor | None = None,
                inputs_embeds: torch.Tensor | None = None, text_mask: torch.Tensor | None = None, **kwargs):
        padded = None
        if inputs_embeds is None:
            inputs_embeds, padded = self.embed(input_ids, pixel_values, attention_mask, labels, text_mask,
                                               return_mask=True)
            if labels is not None:  # never predict the image placeholders
                labels = labels.masked_fill(input_ids == self.config.image_token_id, -100)
        image_mask = self.image_token_mask(input_ids, inputs_embeds, kwargs.get("cache"))
        padded = self._padded_keys(padded, inputs_embeds, kwargs.get("cache"))
        if padded is not None:
            attention_mask = _hide(attention_mask, padded)
        with attention.image_positions(image_mask):
            out = self.language_model(inputs_embeds=inputs_embeds, attention_mask=attention_mask,
                                      labels=labels, **kwargs)
        if getattr(out, "cache", None) is not None:  # a continuation on this cache knows where the images were
            out.cache.vlkit_image_mask = image_mask
            if padded is not None:  # ... and which of their slots stay hidden
                out.cache.vlkit_padded_mask = padded
        return out

    def _padded_keys(self, padded: torch.Tensor | None, inputs_embeds: torch.Tensor, cache=None):
        """[B, cached + new] bool: the image slots to hide from the LLM, those of a cached prefix first."""
        past = getattr(cache, "vlkit_padded_mask", None) if cache is not None else None
        if past is None and padded is None:
            return None
        b, t = inputs_embeds.shape[:2]
        if past is not None and past.shape[0] != b:
            raise RuntimeError(f"the cache hides padded image slots of {past.shape[0]} rows but the batch has {b}; "
                               "reindex the cache with vlkit.attention.select_cache_rows")
        if past is None:
            past = torch.zeros(b, cache.get_seq_length() if cache is not None else 0, dtype=torch.bool,
                               device=inputs_embeds.device)
        if padded is None:
            padded = torch.zeros(b, t, dtype=torch.bool, device=inputs_embeds.device)
        return torch.cat([past.to(padded.device), padded], 1)

    # one copy of a prompt's cache per candidate (choice scoring): the cache's tensors with every
    # vlkit_* mask stored on it (image positions, hidden padded slots, FastV's pruned tokens)
    select_cache_rows = staticmethod(attention.select_cache_rows)

    def image_token_mask(self, input_ids: torch.LongTensor | None, inputs_embeds: torch.Tensor,
                         cache=None) -> torch.Tensor:
        """Which key positions of this call hold visual tokens, cached positions included (notebook 07).

        Registered attention functions read it through :func:`vlkit.attention.image_key_mask`. The
        mask of a prefix that ran before (with ``use_cache``) is kept on its cache object
        (``cache.vlkit_image_mask``; :func:`vlkit.attention.select_cache_rows` reindexes it with the
        cache), so a continuation knows where the prefix's image tokens were; a cache without one
        held text only.
        """
        new = (input_ids == self.config.image_token_id if input_ids is not None
               else torch.zeros(inputs_embeds.shape[:2], dtype=torch.bool, device=inputs_embeds.device))
        past = getattr(cache, "vlkit_image_mask", None) if cache is not None else None
        if cache is not None and past is None and cache.get_seq_length() > 0:
            past = torch.zeros(new.shape[0], cache.get_seq_length(), dtype=torch.bool, device=new.device)
        return new if past is None else torch.cat([past.to(new.device), new], 1)

    @torch.no_grad()
    def generate(self, input_ids: torch.LongTensor | None = None, pixel_values: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None, text_mask: torch.Tensor | None = None,
                 **kwargs) -> torch.LongTensor:
        """Generate a continuation of left-padded prompts; returns only the NEW tokens (notebook 03)."""
        embeds, padded = self.embed(input_ids, pixel_values, attention_mask, text_mask=text_mask, return_mask=True)
        if padded is not None:
            if attention_mask is None:
                attention_mask = torch.ones(padded.shape, dtype=torch.long, device=padded.device)
            # hidden slots keep their positions, as in forward: hiding them changes nothing else
            positions = (attention_mask.long().cumsum(-1) - 1).masked_fill(attention_mask == 0, 0)
            kwargs.setdefault("position_ids", positions)
            attention_mask = _hide(attention_mask, padded)
        self.language_model.generation_config = self.generation_config  # pad/eos saved with the VLModel
        # generated tokens are text: the prompt's image positions cover every decoding step
        with attention.image_positions(input_ids == self.config.image_token_id):
            return self.language_model.generate(inputs_embeds=embeds, attention_mask=attention_mask, **kwargs)

    @classmethod
    def from_pretrained(cls, path, *args, **kwargs) -> "VLModel":
        """Load a saved VLModel; tensors the config does not expect, lacks, or shapes otherwise are an error.

        transformers only warns about unexpected and missing tensors: a model saved with inserted
        modules would reload without them, or with them randomly initialised, and no error.
        """
        want_info = kwargs.pop("output_loading_info", False)
        strict = not kwargs.get("ignore_mismatched_sizes", False)
        kwargs["ignore_mismatched_sizes"] = True  # collect mismatches, then name them in one clear error
        model, info = super().from_pretrained(path, *args, output_loading_info=True, **kwargs)
        bad = info.get("mismatched_keys") or []
        missing = sorted(k for k in info.get("missing_keys") or [] if "lora_" not in k)
        unexpected = sorted(info.get("unexpected_keys") or [])
        if strict and (bad or missing or unexpected):
            what = "; ".join([f"{k}: checkpoint {tuple(a)} vs config {tuple(b)}" for k, a, b in list(bad)[:5]]
                             + [f"missing {k}" for k in missing[:5]] + [f"unexpected {k}" for k in unexpected[:5]])
            raise ValueError(f"checkpoint {path} does not match its config ({len(bad)} shape mismatches, "
                             f"{len(missing)} missing and {len(unexpected)} unexpected tensors): {what}")
        return (model, info) if want_info else model


def _hide(attention_mask: torch.Tensor | None, padded: torch.Tensor) -> torch.Tensor:
    """``attention_mask`` [B, K] with the ``padded`` keys set to 0 (all ones when there was none)."""
    if attention_mask is None:
        return (~padded).long()
    if attention_mask.shape != padded.shape:
        raise ValueError(f"attention_mask of shape {tuple(attention_mask.shape)} cannot hide the compressor's padded "
                         f"image slots over {tuple(padded.shape)} keys: give a 2-D mask covering the cache and the "
                         "input")
    return attention_mask.masked_fill(padded.to(attention_mask.device), 0)


def _image_token_id(tokenizer) -> int:
    ids = tokenizer.encode(IMAGE_TOKEN, add_special_tokens=False)
    tid = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
    if len(ids) != 1 or tid is None or tid == tokenizer.unk_token_id:
        raise ValueError(f"tokenizer {getattr(tokenizer, 'name_or_path', '')!r} has no single {IMAGE_TOKEN!r} token; "
                         f"add it with tokenizer.add_special_tokens({{'additional_special_tokens': ['{IMAGE_TOKEN}']}})")
    return tid


def _load_vision(vision: Any) -> nn.Module:
    if isinstance(vision, (str, bytes)) or hasattr(vision, "__fspath__"):
        vision = AutoModel.from_pretrained(str(vision))
    if hasattr(vision, "vision_model") and hasattr(vision, "text_model"):  # full CLIP/SigLIP: keep the image half
        tower = AutoModel.from_config(vision.config.vision_config)
        getattr(tower, "vision_model", tower).load_state_dict(vision.vision_model.state_dict())
        vision = tower
    return vision


AutoConfig.register("vlkit", VLConfig, exist_ok=True)
AutoModel.register(VLConfig, VLModel, exist_ok=True)
AutoModelForImageTextToText.register(VLConfig, VLModel, exist_ok=True)
