"""Tiny CLIP and Llama backbones, pretrained here, loadable like real ones (notebook 02).

No weights can be downloaded in the workbook, so it pretrains its own:

- a tiny ``CLIPModel`` on world images and their captions (contrastive), plus a dense
  auxiliary loss that asks every patch token of the penultimate layer (the layer a VLM
  reads) to name the shape *and* colour of the object it lies on (:mod:`.clip`);
- a tiny ``LlamaForCausalLM`` on the text corpus: captions, and instruction conversations that
  follow their scene written as text (LLaVA's symbolic context) (:mod:`.llm`).

Both are saved as standard Hugging Face checkpoints (safetensors), and :func:`build_vision_tower`
/ :func:`build_llm` load a real checkpoint name or path on the same code path (:mod:`.checkpoints`).
:mod:`.probes` measures what they learned. This module holds their config and the cached
build (:func:`ensure_backbones`), and re-exports what the notebooks call
(``from vlkit import backbones as B; B.attribute_probe(...)``).
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vlkit import world as W
from vlkit.backbones.checkpoints import build_llm, build_vision_tower, image_processor
from vlkit.backbones.clip import train_clip, vision_from_clip
from vlkit.backbones.llm import (CORPUS_FORMAT, corpus_ids, corpus_texts, heldout_blocks, pack, perplexity,
                                 scene_as_text, text_corpus, train_llm)
from vlkit.backbones.probes import attribute_probe, context_lookup, retrieval

__all__ = ["PROFILES", "BackboneConfig", "build_backbones", "ensure_backbones", "load_metrics",
           "CORPUS_FORMAT", "build_llm", "build_vision_tower", "image_processor", "text_corpus", "scene_as_text",
           "corpus_ids", "heldout_blocks", "pack", "perplexity", "attribute_probe", "retrieval", "context_lookup"]

PROFILES = ("smoke", "full")


# ------------------------------------------------------------------------------- config

@dataclass
class BackboneConfig:
    """Sizes and training recipe of the tiny backbones (notebook 02).

    The vision recipe (dense conjunction loss, 64 px with 8 px patches -> 64 visual tokens,
    warm-up + cosine) is the result of the search reported in notebook 02.
    """

    profile: str = "full"
    seed: int = 0
    world: Any = None                # vlkit.world.WorldConfig of all scenes (CLIP, text, probe)
    vocab_size: int = 2048
    text_scenes: int = 3000          # scenes whose captions + conversations make the text corpus
    text_val_scenes: int = 300       # held-out scenes for the LLM's perplexity
    # vision tower (CLIP ViT); 64 px / 8 px patches -> 8 x 8 = 64 patch tokens (+ [cls])
    image_size: int = 64
    patch_size: int = 8
    vision_width: int = 128
    vision_layers: int = 4
    vision_heads: int = 4
    # CLIP text tower (only used for contrastive pretraining and retrieval)
    text_width: int = 128
    text_layers: int = 2
    text_heads: int = 4
    text_max_len: int = 48
    projection_dim: int = 128
    # CLIP pretraining
    clip_steps: int = 1000
    clip_batch: int = 64
    clip_lr: float = 2e-3
    clip_warmup: int = 60
    clip_weight_decay: float = 0.05
    dense_weight: float = 2.0        # patch-level "shape + colour of my object" loss
    background_weight: float = 0.1   # weight of background patches in the dense loss
    dense_layer: int = -2            # hidden_states index the dense loss reads (-2: penultimate)
    global_weight: float = 0.0       # image-level multi-label "which colour-shape pairs" loss
    curriculum_steps: int = 0        # first steps use scenes with at most 2 objects
    # LLM (Llama)
    llm_hidden: int = 256
    llm_layers: int = 4
    llm_heads: int = 4
    llm_intermediate: int = 688      # ~ 8/3 * hidden, as in Llama
    llm_block: int = 128             # training sequence length (packed)
    llm_steps: int = 300
    llm_batch: int = 16
    llm_lr: float = 3e-3
    llm_warmup: int = 50
    # evaluation
    probe_train: int = 2000          # scenes for the attribute probe's training
    probe_test: int = 1000           # held-out scenes it is scored on
    retrieval_candidates: int = 100
    log_every: int = 10
    # the version of what text_corpus writes: the config's other fields do not see a change of the
    # corpus, so it is a field of its own, and with it part of every downstream stage's key
    corpus_format: int = CORPUS_FORMAT

    def __post_init__(self):
        if self.profile not in PROFILES:
            raise ValueError(f"unknown profile {self.profile!r}; choose from {', '.join(PROFILES)}")
        if isinstance(self.world, dict):
            self.world = W.WorldConfig(**self.world)
        if self.world is None:
            self.world = W.WorldConfig(resolution=self.image_size)
        if self.image_size % self.patch_size:
            raise ValueError(f"image_size {self.image_size} is not a multiple of patch_size {self.patch_size}")
        self.num_patches = (self.image_size // self.patch_size) ** 2

    @classmethod
    def for_profile(cls, profile: str, **overrides) -> "BackboneConfig":
        """``smoke``: seconds, proves the wiring; ``full``: the tower that passes the probe bar."""
        if profile == "smoke":
            base = dict(vocab_size=512, vision_layers=2, text_layers=1, llm_hidden=64, llm_layers=2,
                        llm_heads=2, llm_intermediate=128, clip_steps=30, clip_batch=32,
                        clip_warmup=5, llm_steps=30, llm_batch=8, llm_block=64, llm_warmup=5,
                        probe_train=300, probe_test=200, log_every=5, text_scenes=200,
                        text_val_scenes=40)
        elif profile == "full":
            base = {}
        else:
            raise ValueError(f"unknown profile {profile!r}; choose from {', '.join(PROFILES)}")
        return cls(profile=profile, **{**base, **overrides})


# ------------------------------------------------------------------------------ artifacts

def _n_params(model) -> int:
    return sum(p.numel() for p in model.parameters())


def build_backbones(cfg: BackboneConfig, out: Path, progress: bool = True) -> dict:
    """Train tokenizer, CLIP and Llama; save them as HF checkpoints under ``out`` (notebook 02).

    Layout: ``tokenizer/``, ``clip/`` (CLIPModel + image processor), ``vision/``
    (CLIPVisionModel + image processor), ``llm/`` (LlamaForCausalLM), ``metrics.json``
    (training curves, retrieval, probe, perplexity, seconds). Returns the metrics.
    """
    from vlkit import atomic
    from vlkit.tokenizer import train_tokenizer
    out = Path(out)
    seconds = {}
    t = time.perf_counter()
    train_text = text_corpus(cfg, cfg.text_scenes, stream=11)
    tok = train_tokenizer(corpus_texts(train_text), vocab_size=cfg.vocab_size)
    tok.save_pretrained(out / "tokenizer")
    seconds["tokenizer"] = time.perf_counter() - t

    t = time.perf_counter()
    clip, clip_history = train_clip(cfg, tok, progress=progress)
    seconds["clip"] = time.perf_counter() - t
    proc = image_processor(cfg.image_size)
    clip.save_pretrained(out / "clip")
    proc.save_pretrained(out / "clip")
    vision = vision_from_clip(clip)
    vision.save_pretrained(out / "vision")
    proc.save_pretrained(out / "vision")
    t = time.perf_counter()
    ret = retrieval(clip, tok, cfg)
    probe = attribute_probe(vision, cfg)
    seconds["vision_eval"] = time.perf_counter() - t

    t = time.perf_counter()
    train_blocks = pack(corpus_ids(train_text, tok), cfg.llm_block)
    val_blocks = heldout_blocks(cfg, tok)
    llm, llm_history = train_llm(cfg, tok, train_blocks, progress=progress)
    seconds["llm"] = time.perf_counter() - t
    llm.save_pretrained(out / "llm")
    ppl = perplexity(llm, val_blocks)
    metrics = {
        "clip_history": clip_history, "llm_history": llm_history,
        "retrieval_recall_at_1": ret["recall_at_1"], "retrieval_candidates": ret["n_candidates"],
        "probe_accuracy": probe["accuracy"], "probe": {k: v for k, v in probe.items() if k != "examples"},
        "llm_perplexity": ppl, "llm_train_tokens": int(train_blocks.numel()),
        "llm_val_tokens": int(val_blocks.numel()), "vocab_size": len(tok),
        "params": {"clip": _n_params(clip), "vision": _n_params(vision), "llm": _n_params(llm)},
        "seconds": {k: round(v, 1) for k, v in seconds.items()},
    }
    atomic.write_json(out / "metrics.json", metrics)
    return metrics


def ensure_backbones(cfg: BackboneConfig, progress: bool = True) -> Path:
    """The folder of pretrained backbones for ``cfg``, built on first use (notebook 02).

    Cached under ``artifacts/<profile>/backbones-<key>/`` (key = hash of ``cfg``), so later
    notebooks call this and get the same checkpoints without retraining.
    """
    from vlkit.cache import cached
    from vlkit.paths import artifacts_dir
    return cached(artifacts_dir(cfg.profile), "backbones", cfg,
                  lambda tmp: build_backbones(cfg, tmp, progress=progress))


def load_metrics(path: str | Path) -> dict:
    """``metrics.json`` of a backbones folder (training curves and scores) (notebook 02)."""
    f = Path(path) / "metrics.json"
    if not f.is_file():
        raise FileNotFoundError(f"{f}: no metrics.json; is {path} a folder made by ensure_backbones?")
    return json.loads(f.read_text())
