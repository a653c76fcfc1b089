"""Tiny CLIP and Llama backbones, pretrained here, loadable like real ones (notebook 02).

No weights can be downloaded in the workbook, so it pretrains its own:

- a tiny ``CLIPModel`` on world images and their captions (contrastive), plus a dense
  auxiliary loss that asks every patch token of the penultimate layer (the layer a VLM
  reads) to name the shape *and* colour of the object it lies on. Contrastive training
  alone teaches a tiny ViT which colours and shapes are present, not which goes with which;
  the dense loss makes each patch carry the conjunction, so attributes stay bound to objects.
- a tiny ``LlamaForCausalLM`` on the text corpus: captions, and instruction conversations that
  follow their scene written as text (LLaVA's symbolic context), so the LLM learns to answer
  from what is in front of it, the skill stage 2 then points at the visual tokens.

Both are saved as standard Hugging Face checkpoints (safetensors), and :func:`build_vision_tower`
/ :func:`build_llm` load a real checkpoint name or path on the same code path.
"""
from __future__ import annotations

import dataclasses
import json
import math
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np
import torch
from accelerate.utils import set_seed
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from vlkit import world as W

if TYPE_CHECKING:  # for annotations only: transformers is imported lazily below
    import transformers

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


def _lr_lambda(warmup: int, total: int) -> Callable[[int], float]:
    """Linear warm-up then cosine decay to 10%: tiny models from scratch need the warm-up."""
    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total - warmup)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return f


# ------------------------------------------------------------------------ building / loading

def tiny_clip_config(cfg: BackboneConfig, tokenizer) -> "transformers.CLIPConfig":
    """A ``CLIPConfig`` of the sizes in ``cfg`` whose text side uses ``tokenizer``'s ids (notebook 02)."""
    from transformers import CLIPConfig, CLIPTextConfig, CLIPVisionConfig
    vision = CLIPVisionConfig(
        hidden_size=cfg.vision_width, intermediate_size=4 * cfg.vision_width,
        num_hidden_layers=cfg.vision_layers, num_attention_heads=cfg.vision_heads,
        image_size=cfg.image_size, patch_size=cfg.patch_size, projection_dim=cfg.projection_dim)
    text = CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=cfg.text_width, intermediate_size=4 * cfg.text_width,
        num_hidden_layers=cfg.text_layers, num_attention_heads=cfg.text_heads,
        max_position_embeddings=cfg.text_max_len, projection_dim=cfg.projection_dim,
        # CLIP's text tower pools at the first eos; ids other than 2 select that rule.
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id)
    return CLIPConfig(text_config=text.to_dict(), vision_config=vision.to_dict(),
                      projection_dim=cfg.projection_dim)


def tiny_llm_config(cfg: BackboneConfig, tokenizer) -> "transformers.LlamaConfig":
    """A ``LlamaConfig`` of the sizes in ``cfg`` for ``tokenizer`` (notebook 02)."""
    from transformers import LlamaConfig
    return LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=cfg.llm_hidden, intermediate_size=cfg.llm_intermediate,
        num_hidden_layers=cfg.llm_layers, num_attention_heads=cfg.llm_heads,
        num_key_value_heads=cfg.llm_heads, max_position_embeddings=1024,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=False)


def image_processor(image_size: int):
    """The ``CLIPImageProcessor`` matching a tower of ``image_size`` px (notebook 02)."""
    try:  # transformers 5 without torchvision: the PIL backend, same saved config
        from transformers import CLIPImageProcessorPil as Proc
    except ImportError:
        from transformers import CLIPImageProcessor as Proc
    return Proc(size={"shortest_edge": image_size},
                crop_size={"height": image_size, "width": image_size})


def _check_weights(model_cls, path: Path, **kwargs):
    """``from_pretrained`` that turns missing / mismatched weights into one clear error.

    transformers only *warns* when a checkpoint's tensors do not fit its config (and
    initialises them randomly), which would silently give a VLM a random backbone.
    """
    try:
        model, info = model_cls.from_pretrained(path, output_loading_info=True, **kwargs)
    except RuntimeError as e:  # size mismatch raised by torch / transformers
        raise ValueError(f"checkpoint {path}: weights do not match its config.json: {e}") from e
    problems = {k: v for k, v in info.items() if v and k in ("missing_keys", "mismatched_keys")}
    if problems:
        detail = "; ".join(f"{k}: {sorted(map(str, v))[:5]}" for k, v in problems.items())
        raise ValueError(f"checkpoint {path}: weights do not match its config.json ({detail})")
    return model


def build_vision_tower(name_or_path: str | Path | None, config=None, **kwargs):
    """A CLIP-like vision tower: from a checkpoint (name or path) or a fresh one from ``config`` (notebook 02).

    The same call loads our tiny tower (``artifacts/.../vision``), a ``CLIPModel`` folder,
    or a hub name such as ``"openai/clip-vit-large-patch14-336"`` on a machine that can
    download it. SigLIP towers load through ``AutoModel`` as their vision part.
    """
    from transformers import AutoConfig, AutoModel, CLIPVisionConfig, CLIPVisionModel
    if name_or_path is None:
        if config is None:
            raise ValueError("build_vision_tower: give a checkpoint name/path or a config")
        if isinstance(config, dict):
            config = CLIPVisionConfig(**config)
        return CLIPVisionModel(config)
    path = Path(name_or_path)
    source = str(path) if path.exists() else str(name_or_path)
    if path.exists() and not (path / "config.json").is_file():
        raise FileNotFoundError(f"{path}: no config.json; not a Hugging Face checkpoint folder")
    import transformers
    model_type = AutoConfig.from_pretrained(source).model_type
    # Dual encoders (CLIP, SigLIP): load only the vision half with its own *VisionModel class.
    dual = {"clip": "CLIPVisionModel", "siglip": "SiglipVisionModel", "siglip2": "Siglip2VisionModel"}
    if model_type in dual:
        return _check_weights(getattr(transformers, dual[model_type]), source, **kwargs)
    return _check_weights(AutoModel, source, **kwargs)  # a vision-only checkpoint


def build_llm(name_or_path: str | Path | None, config=None, quantization_config=None, **kwargs):
    """A causal LM from a checkpoint (name or path) or a fresh one from ``config`` (notebook 02).

    ``quantization_config`` (e.g. ``BitsAndBytesConfig(load_in_4bit=True)``) loads it
    quantized for QLoRA; both our tiny Llama and e.g. ``"lmsys/vicuna-7b-v1.5"`` go
    through this same ``AutoModelForCausalLM.from_pretrained`` call.
    """
    from transformers import AutoModelForCausalLM
    if name_or_path is None:
        if config is None:
            raise ValueError("build_llm: give a checkpoint name/path or a config")
        if quantization_config is not None:
            raise ValueError("build_llm: quantization needs a checkpoint; save the model first")
        return AutoModelForCausalLM.from_config(config)
    path = Path(name_or_path)
    if path.exists() and not (path / "config.json").is_file():
        raise FileNotFoundError(f"{path}: no config.json; not a Hugging Face checkpoint folder")
    if quantization_config is not None:
        kwargs["quantization_config"] = quantization_config
    return _check_weights(AutoModelForCausalLM, str(path) if path.exists() else str(name_or_path),
                          **kwargs)


# ---------------------------------------------------------------------------- world batches

def pixels(images: list, image_size: int, mean=None, std=None) -> torch.Tensor:
    """PIL images -> normalised ``[B, 3, S, S]`` float tensor, as ``image_processor`` does (notebook 02).

    A fast path for training loops; tests check it equals the processor's output.
    """
    from PIL import Image
    mean = np.asarray(mean or image_processor(image_size).image_mean, dtype=np.float32)
    std = np.asarray(std or image_processor(image_size).image_std, dtype=np.float32)
    arr = []
    for im in images:
        im = im.convert("RGB")
        if im.size != (image_size, image_size):  # processor: resize short side (bicubic), centre crop
            w, h = im.size
            s = image_size / min(w, h)
            im = im.resize((max(image_size, round(w * s)), max(image_size, round(h * s))),
                           Image.Resampling.BICUBIC)
            left, top = (im.size[0] - image_size) // 2, (im.size[1] - image_size) // 2
            im = im.crop((left, top, left + image_size, top + image_size))
        arr.append(np.asarray(im, dtype=np.float32))
    x = (np.stack(arr) / 255.0 - mean) / std
    return torch.from_numpy(x).permute(0, 3, 1, 2).contiguous()


def conjunction_classes(world: W.WorldConfig) -> list[str]:
    """Patch classes of the dense loss: background, then every "colour shape" pair (notebook 02)."""
    return ["background"] + [f"{c} {s}" for s in world.shapes for c in world.colors]


def patch_labels(scene: W.Scene, world: W.WorldConfig, grid: int, image=None,
                 min_cover: float = 0.2) -> torch.Tensor:
    """For each of ``grid x grid`` patches, the class of the object that covers it (notebook 02).

    Ownership comes from pixels: a pixel of the rendered ``image`` belongs to an object if
    it lies in the object's box and is not background (objects are drawn in order, so a
    later one wins where boxes overlap). A patch belongs to the object covering most of it
    if that is at least ``min_cover`` of its area, else to the background. Box-only labels
    would call the empty corners of a circle's box "red circle", noise a tiny ViT cannot fit.
    """
    res = world.resolution
    img = np.asarray(image if image is not None else W.render(scene, res), dtype=np.int16)
    res = img.shape[0]
    filled = np.abs(img - np.array(W.BACKGROUND)).sum(-1) > 0
    owner_px = np.zeros((res, res), dtype=np.int64)
    for k, o in enumerate(scene.objects, 1):
        x1, y1, x2, y2 = (round(v * res) for v in o.box)
        box = np.zeros_like(filled)
        box[y1:y2, x1:x2] = True
        owner_px[box & filled] = k
    onehot = F.one_hot(torch.from_numpy(owner_px), len(scene.objects) + 1).permute(2, 0, 1).float()
    cover = F.adaptive_avg_pool2d(onehot, grid)
    cover[0] = min_cover  # background wins unless an object covers enough of the patch
    nc = len(world.colors)
    classes = torch.tensor([0] + [1 + world.shapes.index(o.shape) * nc + world.colors.index(o.color)
                                  for o in scene.objects])
    return classes[cover.argmax(0)].flatten()


def world_batch(cfg: BackboneConfig, step: int, tokenizer, world: W.WorldConfig | None = None,
                stream: int = 1) -> dict:
    """Batch ``step`` of the on-the-fly CLIP data: pixels, one random caption each, patch labels.

    Scenes come from ``stream`` (1 = training); scene ``i`` of the stream depends only on
    (seed, stream, i), so runs are deterministic and held-out streams never meet training.
    """
    world = world or cfg.world
    seed = cfg.seed * 100 + stream
    scenes = [W.sample_scene(W.scene_rng(seed, step * cfg.clip_batch + j), world)
              for j in range(cfg.clip_batch)]
    return scene_batch(cfg, scenes, tokenizer, rng=random.Random(f"{seed}:{step}"))


def scene_batch(cfg: BackboneConfig, scenes: list, tokenizer, rng: random.Random,
                caption_fn: Callable | None = None) -> dict:
    """Pixels, captions (tokenized with <s> ... </s>) and patch labels for ``scenes``."""
    res = cfg.world.resolution
    images = [W.render(s, res) for s in scenes]
    caption_fn = caption_fn or (lambda s: rng.choice(W.captions(s, rng, 5)))
    texts = [caption_fn(s) for s in scenes]
    enc = tokenize_captions(tokenizer, texts, cfg.text_max_len)
    grid = cfg.image_size // cfg.patch_size
    return {"pixel_values": pixels(images, cfg.image_size), **enc,
            "patch_labels": torch.stack([patch_labels(s, cfg.world, grid, im) for s, im in zip(scenes, images)]),
            "texts": texts, "scenes": scenes, "images": images}


def tokenize_captions(tokenizer, texts: list[str], max_len: int) -> dict:
    """``<s> caption </s>`` ids, padded; truncation keeps the closing ``</s>`` CLIP pools at."""
    rows = []
    for t in texts:
        ids = tokenizer.encode(t, add_special_tokens=False)[: max_len - 2]
        rows.append([tokenizer.bos_token_id, *ids, tokenizer.eos_token_id])
    n = max(map(len, rows))
    input_ids = torch.full((len(rows), n), tokenizer.pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(rows), n), dtype=torch.long)
    for i, r in enumerate(rows):
        input_ids[i, : len(r)] = torch.tensor(r)
        mask[i, : len(r)] = 1
    return {"input_ids": input_ids, "attention_mask": mask}


# ---------------------------------------------------------------------------- CLIP training

class DenseHead(nn.Module):
    """LayerNorm + linear: patch token -> conjunction class (kept outside the CLIP checkpoint)."""

    def __init__(self, width: int, n_classes: int):
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.proj = nn.Linear(width, n_classes)

    def forward(self, x):
        return self.proj(self.norm(x))


def clip_losses(clip, heads: nn.ModuleDict, batch: dict, cfg: BackboneConfig) -> dict:
    """Contrastive loss + dense conjunction loss (+ optional global multi-label loss)."""
    out = clip(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
               pixel_values=batch["pixel_values"], return_loss=True, output_hidden_states=True)
    losses = {"contrastive": out.loss}
    hidden = out.vision_model_output.hidden_states[cfg.dense_layer][:, 1:]  # drop [cls]
    if cfg.dense_weight:
        logits = heads["dense"](hidden).flatten(0, 1)
        labels = batch["patch_labels"].flatten()
        ce = F.cross_entropy(logits, labels, reduction="none")
        on_object = labels > 0
        # Objects cover ~1/8 of the patches: averaged over all patches, the easy background
        # would dominate the loss, so object patches get their own mean.
        losses["dense"] = ce[on_object].mean() + cfg.background_weight * ce[~on_object].mean()
        with torch.no_grad():
            losses["patch_acc"] = (logits[on_object].argmax(-1) == labels[on_object]).float().mean()
    if cfg.global_weight:
        n = heads["global"].proj.out_features
        target = torch.zeros(len(hidden), n + 1).scatter_(1, batch["patch_labels"], 1.0)[:, 1:]
        losses["global"] = F.binary_cross_entropy_with_logits(heads["global"](hidden.mean(1)), target)
    losses["total"] = (losses["contrastive"] + cfg.dense_weight * losses.get("dense", 0.0)
                       + cfg.global_weight * losses.get("global", 0.0))
    return losses


def train_clip(cfg: BackboneConfig, tokenizer, progress: bool = True,
               on_log: Callable[[dict], None] | None = None):
    """Pretrain a tiny ``CLIPModel`` on on-the-fly world scenes (notebook 02).

    Returns ``(clip, history)``; ``history`` is a list of logged dicts (step, losses, lr, s).
    """
    from transformers import CLIPModel
    set_seed(cfg.seed)
    clip = CLIPModel(tiny_clip_config(cfg, tokenizer))
    n_cls = len(conjunction_classes(cfg.world))
    heads = nn.ModuleDict({"dense": DenseHead(cfg.vision_width, n_cls),
                           "global": DenseHead(cfg.vision_width, n_cls - 1)})
    params = list(clip.parameters()) + list(heads.parameters())
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.clip_weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=cfg.clip_lr,
                            betas=(0.9, 0.98))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(cfg.clip_warmup, cfg.clip_steps))
    easy = dataclasses.replace(cfg.world, max_objects=min(2, cfg.world.max_objects))
    history, t0 = [], time.perf_counter()
    clip.train()
    bar = tqdm(range(cfg.clip_steps), desc="CLIP pretraining", disable=not progress)
    for step in bar:
        world = easy if step < cfg.curriculum_steps else cfg.world
        batch = world_batch(cfg, step, tokenizer, world=world)
        losses = clip_losses(clip, heads, batch, cfg)
        opt.zero_grad(set_to_none=True)
        losses["total"].backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        if step % cfg.log_every == 0 or step == cfg.clip_steps - 1:
            row = {"step": step, "lr": sched.get_last_lr()[0], "s": round(time.perf_counter() - t0, 2),
                   **{k: round(float(v.detach()), 4) for k, v in losses.items()}}
            history.append(row)
            bar.set_postfix(loss=row["total"])
            if on_log:
                on_log(row)
    clip.eval()
    return clip, history


def vision_from_clip(clip):
    """The ``CLIPVisionModel`` half of a ``CLIPModel``, sharing no storage with it (notebook 02)."""
    from transformers import CLIPVisionModel
    vision = CLIPVisionModel(clip.config.vision_config)
    vision.load_state_dict(clip.vision_model.state_dict())
    return vision.eval()


# ------------------------------------------------------------------------------ evaluation

@torch.no_grad()
def patch_tokens(vision, pixel_values: torch.Tensor, layer: int = -2, batch_size: int = 256) -> torch.Tensor:
    """``[N, P, D]`` patch tokens of hidden layer ``layer``, [cls] dropped (notebook 02).

    The default, the penultimate layer without [cls], is what a LLaVA-style VLM reads.
    """
    vision.eval()
    n_patches = (pixel_values.shape[-1] // vision.config.patch_size) ** 2
    out = []
    for i in range(0, len(pixel_values), batch_size):
        hs = vision(pixel_values=pixel_values[i: i + batch_size], output_hidden_states=True).hidden_states
        tokens = hs[layer]
        if tokens.shape[1] == n_patches + 1:  # CLIP: [cls] first; SigLIP has none
            tokens = tokens[:, 1:]
        out.append(tokens.float())
    return torch.cat(out)


class QueryProbe(nn.Module):
    """Attentive probe: per question group a learned query attends over the tokens, then linear.

    ``logits = W_g (sum_p softmax_p(q_g . h_p) h_p) + b_g`` on standardised tokens ``h``:
    linear in the features except for one softmax over positions, the operation an LLM's
    attention applies to visual tokens. With ``attend=False`` the query is fixed at zero,
    i.e. a plain linear probe on mean-pooled tokens (the bag-of-features reading).
    """

    def __init__(self, dim: int, n_groups: int, n_classes: int, attend: bool = True):
        super().__init__()
        self.query = nn.Parameter(torch.zeros(n_groups, dim), requires_grad=attend)
        self.weight = nn.Parameter(torch.zeros(n_groups, dim, n_classes))
        self.bias = nn.Parameter(torch.zeros(n_groups, n_classes))

    def forward(self, tokens: torch.Tensor, group: torch.Tensor) -> torch.Tensor:
        scores = torch.einsum("npd,nd->np", tokens, self.query[group]) / tokens.shape[-1] ** 0.5
        pooled = torch.einsum("np,npd->nd", scores.softmax(-1), tokens)
        return torch.einsum("nd,ndc->nc", pooled, self.weight[group]) + self.bias[group]


def fit_probe(tokens: torch.Tensor, y: torch.Tensor, group: torch.Tensor, n_classes: int,
              n_groups: int, attend: bool = True, steps: int = 200, lr: float = 0.03,
              weight_decay: float = 1e-3, seed: int = 0) -> Callable:
    """Fit a :class:`QueryProbe` (full batch, Adam); return ``predict(tokens, group) -> class`` (notebook 02).

    ``tokens``: [N, P, D] (or [N, D], treated as one position), ``y``: [N] class, ``group``:
    [N] which question (here: which shape is asked about). Tokens are standardised with
    the training statistics.
    """
    if tokens.ndim == 2:
        tokens = tokens[:, None]
    torch.manual_seed(seed)
    mu, sd = tokens.mean((0, 1)), tokens.std((0, 1)) + 1e-6
    probe = QueryProbe(tokens.shape[-1], n_groups, n_classes, attend=attend)
    opt = torch.optim.Adam([p for p in probe.parameters() if p.requires_grad], lr=lr)
    xs = (tokens - mu).div_(sd)
    for _ in range(steps):
        loss = F.cross_entropy(probe(xs, group), y) + weight_decay * (probe.weight ** 2).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()

    @torch.no_grad()
    def predict(tq: torch.Tensor, gq: torch.Tensor) -> torch.Tensor:
        tq = tq[:, None] if tq.ndim == 2 else tq
        return probe((tq - mu) / sd, gq).argmax(-1)
    return predict


def probe_items(scenes: list) -> list[tuple[int, str, str]]:
    """(scene index, shape, colour) for every shape that occurs exactly once in its scene.

    "The colour of the circle" has one answer only when there is one circle.
    """
    items = []
    for i, s in enumerate(scenes):
        shapes = [o.shape for o in s.objects]
        items += [(i, o.shape, o.color) for o in s.objects if shapes.count(o.shape) == 1]
    return items


def attribute_probe(vision, cfg: BackboneConfig, layer: int = -2, processor=None,
                    min_objects: int = 2) -> dict:
    """Probe: "what colour is the <shape>?" from the tower's patch tokens (notebook 02).

    The question the issue sets for the vision tower: does it bind colours to shapes? On
    the penultimate layer's patch tokens (what a LLaVA-style VLM receives), one query per
    shape attends over the tokens and a linear map names the colour (:class:`QueryProbe`),
    in held-out scenes of ``min_objects``..max objects, for every shape that occurs once.
    A tower that only knew *which* colours and shapes are present could do no better than
    guess among the scene's colours: that baseline (``chance_present``), uniform chance and
    a linear probe on mean-pooled tokens (``mean_pool_accuracy``) are reported beside it.
    """
    world = dataclasses.replace(cfg.world, min_objects=max(cfg.world.min_objects, min_objects))
    res = world.resolution
    tr = W.sample_scenes(cfg.probe_train, seed=cfg.seed * 100 + 7, cfg=world)
    te = W.sample_scenes(cfg.probe_test, seed=cfg.seed * 100 + 8, cfg=world)

    def encode(scenes):
        images = [W.render(s, res) for s in scenes]
        if processor is not None:
            pv = processor(images=images, return_tensors="pt")["pixel_values"]
        else:
            pv = pixels(images, vision.config.image_size)
        return patch_tokens(vision, pv, layer=layer)

    shapes, colors = list(world.shapes), list(world.colors)

    def tensors(scenes, toks):
        items = probe_items(scenes)
        idx = torch.tensor([i for i, _, _ in items])
        grp = torch.tensor([shapes.index(s) for _, s, _ in items])
        y = torch.tensor([colors.index(c) for _, _, c in items])
        return toks[idx], grp, y, items

    xtr, gtr, ytr, _ = tensors(tr, encode(tr))
    xte, gte, yte, items = tensors(te, encode(te))
    predict = fit_probe(xtr, ytr, gtr, len(colors), len(shapes), seed=cfg.seed)
    pred = predict(xte, gte)
    correct = (pred == yte).float()
    mean_predict = fit_probe(xtr.mean(1), ytr, gtr, len(colors), len(shapes), attend=False, seed=cfg.seed)
    per_shape = {s: float(correct[gte == k].mean()) for k, s in enumerate(shapes) if (gte == k).any()}
    present = [1 / len({o.color for o in te[i].objects}) for i, _, _ in items]
    return {"accuracy": float(correct.mean()),
            "train_accuracy": float((predict(xtr, gtr) == ytr).float().mean()),
            "mean_pool_accuracy": float((mean_predict(xte.mean(1), gte) == yte).float().mean()),
            "per_shape": per_shape, "n_test": len(items), "chance": 1 / len(colors),
            "chance_present": float(np.mean(present)),
            "examples": [{"scene": te[i].to_dict(), "shape": s, "color": c, "pred": colors[int(p)]}
                         for (i, s, c), p in list(zip(items, pred))[:12]]}


def _longest_caption(scene, rng) -> str:
    return max(W.captions(scene, rng, 5), key=len)


@torch.no_grad()
def retrieval(clip, tokenizer, cfg: BackboneConfig, n: int | None = None, rounds: int = 5) -> dict:
    """Held-out image -> caption recall@1 among ``n`` candidates (notebook 02).

    Each held-out scene's candidate is its most specific caption (the longest of its five:
    a shorter one such as "a picture with two objects in red and blue" fits many scenes).
    Averaged over ``rounds`` disjoint groups of ``n`` scenes.
    """
    n = n or cfg.retrieval_candidates
    clip.eval()
    hits, example = [], None
    for r in range(rounds):
        scenes = [W.sample_scene(W.scene_rng(cfg.seed * 100 + 9, r * n + i), cfg.world) for i in range(n)]
        rng = random.Random(f"retrieval:{cfg.seed}:{r}")
        b = scene_batch(cfg, scenes, tokenizer, rng, caption_fn=lambda s: _longest_caption(s, rng))
        img = F.normalize(clip.get_image_features(pixel_values=b["pixel_values"]).pooler_output, dim=-1)
        txt = F.normalize(clip.get_text_features(input_ids=b["input_ids"],
                                                 attention_mask=b["attention_mask"]).pooler_output, dim=-1)
        sim = img @ txt.T
        top = sim.argmax(1)
        hits.append((top == torch.arange(n)).float())
        if example is None:
            example = {"texts": b["texts"], "scenes": [s.to_dict() for s in scenes],
                       "top5": sim.topk(5, dim=1).indices.tolist(), "sim": sim.tolist()}
    hits = torch.cat(hits)
    return {"recall_at_1": float(hits.mean()), "n_candidates": n, "n_queries": len(hits),
            "chance": 1 / n, "example": example}


# ------------------------------------------------------------------------------ text / LLM

# Version of what text_corpus writes; part of the backbones' cache key (the config does not see
# a change of the corpus). 2: the LLM reads the scene as text before each conversation (was <image>).
CORPUS_FORMAT = 2


def text_corpus(cfg: BackboneConfig, n_scenes: int, stream: int) -> dict[str, list]:
    """Captions and teacher conversations about ``n_scenes`` world scenes (notebook 02).

    Generated the way notebook 01 makes its data (world captions + the template teacher's
    three instruction types, ``<image>`` in the first turn) but from scene streams of their
    own, so notebook 02 runs alone and its held-out text (another ``stream``) is never seen
    in training. ``contexts[i]`` is the scene of ``conversations[i]`` as text (LLaVA's
    symbolic context, what the teacher read), which :func:`corpus_ids` puts where the image
    goes. Returns ``{"captions": [str], "conversations": [[{from, value}]], "contexts": [str]}``.
    """
    from vlkit.teacher import KINDS, TemplateTeacher
    from vlkit.tokenizer import IMAGE_TOKEN
    teacher = TemplateTeacher(seed=cfg.seed)
    seed = cfg.seed * 100 + stream
    caps, convs, contexts = [], [], []
    for i in range(n_scenes):
        rng = W.scene_rng(seed, i)
        scene = W.sample_scene(rng, cfg.world, W.scene_id(seed, i))
        context = W.symbolic_context(scene, rng)
        caps += context.split("\n\n")[0].split("\n")
        for kind in KINDS:
            turns = [dict(t) for t in teacher.generate(context, kind, key=scene.id)]
            turns[0]["value"] = f"{IMAGE_TOKEN}\n{turns[0]['value']}"
            convs.append(turns)
            contexts.append(context.strip())
    return {"captions": caps, "conversations": convs, "contexts": contexts}


def corpus_texts(corpus: dict) -> list[str]:
    """The captions and conversations, for training the tokenizer (notebook 02).

    Not the scene contexts: the tokenizer's merges should be those of the language the VLM
    reads and writes (trained with the contexts too, the box coordinates grew the vocabulary
    from 771 to 1,742 tokens, and the LM head with it).
    """
    return corpus["captions"] + [t["value"] for c in corpus["conversations"] for t in c]


def scene_as_text(conversation: list[dict], context: str) -> list[dict]:
    """``conversation`` with its ``<image>`` replaced by the scene as text: what the LLM reads (notebook 02).

    Pretrained on the conversations with an ``<image>`` slot it never saw filled, the LLM learned
    answer priors and to ignore that slot, and notebook 03 could not teach it to bind a colour
    to a shape in its budget (README, "Where binding fails"). With the scene in front of every
    conversation, each answer can be read from the document, as in a real LLM's pretraining text.
    """
    from vlkit.tokenizer import IMAGE_TOKEN
    first = conversation[0]["value"]
    if IMAGE_TOKEN not in first:
        raise ValueError(f"first turn has no {IMAGE_TOKEN} to replace: {first[:60]!r}")
    return [{**conversation[0], "value": first.replace(IMAGE_TOKEN, context, 1)}, *conversation[1:]]


def corpus_ids(corpus: dict, tokenizer) -> list[int]:
    """All documents as one id stream: ``<s> caption </s>`` and chat-templated conversations,
    each after its scene as text (:func:`scene_as_text`).

    The LLM thus learns the role tokens and to end answers with ``</s>`` before any VLM
    training, as a chat-tuned base LLM (Vicuna in LLaVA) would.
    """
    from vlkit.tokenizer import llava_to_messages
    ids: list[int] = []
    for c in corpus["captions"]:
        ids += [tokenizer.bos_token_id, *tokenizer.encode(c, add_special_tokens=False),
                tokenizer.eos_token_id]
    for conv, context in zip(corpus["conversations"], corpus["contexts"], strict=True):
        ids += tokenizer.apply_chat_template(llava_to_messages(scene_as_text(conv, context)), tokenize=True,
                                             return_dict=True)["input_ids"]
    return ids


def pack(ids: list[int], block: int) -> torch.Tensor:
    """Cut an id stream into ``[N, block]`` rows (the tail that does not fill a row is dropped)."""
    n = len(ids) // block
    if n == 0:
        raise ValueError(f"corpus of {len(ids)} tokens is shorter than one block of {block}")
    return torch.tensor(ids[: n * block], dtype=torch.long).view(n, block)


def train_llm(cfg: BackboneConfig, tokenizer, train_blocks: torch.Tensor, progress: bool = True,
              on_log: Callable[[dict], None] | None = None):
    """Pretrain a tiny ``LlamaForCausalLM`` on packed text blocks (notebook 02). Returns ``(llm, history)``."""
    from transformers import LlamaForCausalLM
    set_seed(cfg.seed)
    llm = LlamaForCausalLM(tiny_llm_config(cfg, tokenizer))
    decay = [p for p in llm.parameters() if p.ndim >= 2]
    no_decay = [p for p in llm.parameters() if p.ndim < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1},
                             {"params": no_decay, "weight_decay": 0.0}], lr=cfg.llm_lr, betas=(0.9, 0.95))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(cfg.llm_warmup, cfg.llm_steps))
    g = torch.Generator().manual_seed(cfg.seed)
    order = torch.randperm(len(train_blocks), generator=g)
    history, t0 = [], time.perf_counter()
    llm.train()
    bar = tqdm(range(cfg.llm_steps), desc="LLM pretraining", disable=not progress)
    for step in bar:
        start = (step * cfg.llm_batch) % len(order)
        idx = order[start: start + cfg.llm_batch]
        if len(idx) < cfg.llm_batch:  # next epoch: a new shuffle
            order = torch.randperm(len(train_blocks), generator=g)
            idx = order[: cfg.llm_batch]
        x = train_blocks[idx]
        loss = llm(input_ids=x, labels=x).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(llm.parameters(), 1.0)
        opt.step()
        sched.step()
        if step % cfg.log_every == 0 or step == cfg.llm_steps - 1:
            row = {"step": step, "lr": sched.get_last_lr()[0], "s": round(time.perf_counter() - t0, 2),
                   "loss": round(loss.item(), 4)}
            history.append(row)
            bar.set_postfix(loss=row["loss"])
            if on_log:
                on_log(row)
    llm.eval()
    return llm, history


@torch.no_grad()
def perplexity(llm, blocks: torch.Tensor, batch_size: int = 32) -> float:
    """exp(mean next-token NLL) over packed held-out blocks (notebook 02)."""
    llm.eval()
    nll, n = 0.0, 0
    for i in range(0, len(blocks), batch_size):
        x = blocks[i: i + batch_size].to(llm.device)
        logits = llm(input_ids=x).logits[:, :-1].float()
        nll += F.cross_entropy(logits.flatten(0, 1), x[:, 1:].flatten(), reduction="sum").item()
        n += x[:, 1:].numel()
    return math.exp(nll / n)


def lookup_items(world: W.WorldConfig, n_scenes: int, seed: int) -> list[tuple[str, str, str, int]]:
    """``(context, shape, colour, colours present)`` for held-out scenes of 2+ objects (notebook 02).

    One item per scene that has a lone shape and another colour besides its own: the same
    condition that makes "What colour is the triangle?" a binding question in notebook 03.
    """
    world = dataclasses.replace(world, min_objects=max(2, world.min_objects))
    items = []
    for i in range(n_scenes):
        rng = W.scene_rng(seed * 100 + 13, i)  # a stream no training data is drawn from
        scene = W.sample_scene(rng, world)
        context = W.symbolic_context(scene, rng)
        shapes = [o.shape for o in scene.objects]
        for o in scene.objects:
            if shapes.count(o.shape) == 1 and any(p.color != o.color for p in scene.objects):
                items.append((context.strip(), o.shape, o.color, len({p.color for p in scene.objects})))
                break
    return items


@torch.no_grad()
def context_lookup(llm, tokenizer, world: W.WorldConfig, n_scenes: int = 300, seed: int = 0,
                   batch_size: int = 64) -> dict:
    """Can the LLM read a scene *written as text*? The text-only twin of :func:`attribute_probe` (notebook 02).

    The user turn is LLaVA's symbolic context (captions + ``category: [box]`` lines, what the
    language-only teacher reads) followed by "Which colour is the <shape>?"; the assistant turn
    starts as the teacher's answers do, "The <shape> is", and each of the world's colours is
    scored by its log-likelihood as the next word. A VLM asks its LLM to do the same lookup over
    visual tokens, so an LLM that cannot do it in text gives stage 2 nothing to align to.
    Baselines: guessing among the colours present (``bag_of_attributes``) and uniform chance.
    """
    llm.eval()
    colors = list(world.colors)
    items = lookup_items(world, n_scenes, seed)
    rows = []
    for context, shape, _, _ in items:
        prompt = tokenizer.apply_chat_template(
            [{"role": "user", "content": f"{context}\nWhich colour is the {shape}?"}],
            tokenize=False, add_generation_prompt=True) + f"The {shape} is"
        ids = tokenizer.encode(prompt, add_special_tokens=False)
        for c in colors:
            rows.append((ids, tokenizer.encode(f" {c}", add_special_tokens=False)))
    scores = torch.empty(len(rows))
    for i in range(0, len(rows), batch_size):
        chunk = rows[i: i + batch_size]
        n = max(len(p) + len(a) for p, a in chunk)
        x = torch.full((len(chunk), n), tokenizer.pad_token_id, dtype=torch.long)
        mask = torch.zeros_like(x)
        for j, (p, a) in enumerate(chunk):
            x[j, : len(p) + len(a)] = torch.tensor(p + a)
            mask[j, : len(p) + len(a)] = 1
        logp = llm(input_ids=x.to(llm.device), attention_mask=mask.to(llm.device)).logits.float().log_softmax(-1)
        for j, (p, a) in enumerate(chunk):  # the answer's tokens, each predicted from the position before it
            pos = torch.arange(len(p) - 1, len(p) + len(a) - 1)
            scores[i + j] = logp[j, pos, torch.tensor(a)].sum()
    picks = scores.view(len(items), len(colors)).argmax(1)
    correct = [colors[int(p)] == c for p, (_, _, c, _) in zip(picks, items)]
    return {"accuracy": float(np.mean(correct)), "n": len(items), "chance": 1 / len(colors),
            "bag_of_attributes": float(np.mean([1 / k for *_, k in items]))}


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
    val_text = text_corpus(cfg, cfg.text_val_scenes, stream=12)
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
    val_blocks = pack(corpus_ids(val_text, tok), cfg.llm_block)
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


def cache_key(cfg: BackboneConfig) -> dict:
    """What the backbones built for ``cfg`` depend on: the config and the corpus format.

    Their cache key, and part of every key downstream (notebook 03's stages), so that a new
    corpus retrains the connectors too, not only the backbones.
    """
    return {**dataclasses.asdict(cfg), "corpus_format": CORPUS_FORMAT}


def ensure_backbones(cfg: BackboneConfig, progress: bool = True) -> Path:
    """The folder of pretrained backbones for ``cfg``, built on first use (notebook 02).

    Cached under ``artifacts/<profile>/backbones-<key>/`` (key = hash of ``cfg``), so later
    notebooks call this and get the same checkpoints without retraining.
    """
    from vlkit.cache import cached
    from vlkit.paths import artifacts_dir
    return cached(artifacts_dir(cfg.profile), "backbones", cache_key(cfg),
                  lambda tmp: build_backbones(cfg, tmp, progress=progress))


def load_metrics(path: str | Path) -> dict:
    """``metrics.json`` of a backbones folder (training curves and scores) (notebook 02)."""
    f = Path(path) / "metrics.json"
    if not f.is_file():
        raise FileNotFoundError(f"{f}: no metrics.json; is {path} a folder made by ensure_backbones?")
    return json.loads(f.read_text())
