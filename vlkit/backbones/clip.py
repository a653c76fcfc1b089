"""The tiny CLIP: its config, the world batches it trains on, and its pretraining (notebook 02).

A tiny ``CLIPModel`` learns from world images and their captions (contrastive), plus a dense
auxiliary loss that asks every patch token of the penultimate layer (the layer a VLM reads)
to name the shape *and* colour of the object it lies on. Contrastive training alone teaches a
tiny ViT which colours and shapes are present, not which goes with which; the dense loss makes
each patch carry the conjunction, so attributes stay bound to objects.
"""
from __future__ import annotations

import dataclasses
import random
import time
from typing import TYPE_CHECKING, Callable

import numpy as np
import torch
import torch.nn.functional as F
from accelerate.utils import set_seed
from torch import nn
from tqdm.auto import tqdm

from vlkit import world as W
from vlkit.backbones.checkpoints import image_processor
from vlkit.backbones.schedule import lr_lambda

if TYPE_CHECKING:  # for annotations only: transformers is imported lazily below
    import transformers

    from vlkit.backbones import BackboneConfig


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
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(cfg.clip_warmup, cfg.clip_steps))
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
