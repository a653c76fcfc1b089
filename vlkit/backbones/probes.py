"""What the tiny backbones learned: attribute probe, retrieval, reading a scene as text (notebook 02).

- :func:`attribute_probe`: does the vision tower bind colours to shapes? An attentive probe on
  its patch tokens answers "what colour is the <shape>?" in held-out scenes;
- :func:`retrieval`: image -> caption recall@1 of the CLIP among ``n`` candidates;
- :func:`context_lookup`: the same question asked of the LLM about the scene *written as
  text*, the lookup a VLM later asks it to do over visual tokens.
"""
from __future__ import annotations

import dataclasses
import random
from typing import TYPE_CHECKING, Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from vlkit import world as W
from vlkit.backbones.clip import pixels, scene_batch

if TYPE_CHECKING:
    from vlkit.backbones import BackboneConfig


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


@torch.no_grad()
def cls_tokens(vision, pixel_values: torch.Tensor, layers: tuple[int, ...], batch_size: int = 256) -> torch.Tensor:
    """``[N, len(layers), D]``: the [cls] token after each of ``layers`` (hidden-state indices) (notebook 04).

    What the Bottleneck Adapter's ``cls_every_k`` connector reads instead of the patch tokens.
    """
    vision.eval()
    out = []
    for i in range(0, len(pixel_values), batch_size):
        hs = vision(pixel_values=pixel_values[i: i + batch_size], output_hidden_states=True).hidden_states
        out.append(torch.stack([hs[k][:, 0] for k in layers], 1).float())
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
                    min_objects: int = 2, tokens: Callable | None = None) -> dict:
    """Probe: "what colour is the <shape>?" from the tower's patch tokens (notebook 02).

    The question the issue sets for the vision tower: does it bind colours to shapes? On
    the penultimate layer's patch tokens (what a LLaVA-style VLM receives), one query per
    shape attends over the tokens and a linear map names the colour (:class:`QueryProbe`),
    in held-out scenes of ``min_objects``..max objects, for every shape that occurs once.
    A tower that only knew *which* colours and shapes are present could do no better than
    guess among the scene's colours: that baseline (``chance_present``), uniform chance and
    a linear probe on mean-pooled tokens (``mean_pool_accuracy``) are reported beside it.
    ``tokens(vision, pixel_values) -> [N, P, D]`` probes other tokens than the patches of ``layer``
    (notebook 04: the [cls] tokens a ``cls_every_k`` connector reads, :func:`cls_tokens`).
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
        return patch_tokens(vision, pv, layer=layer) if tokens is None else tokens(vision, pv)

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


# -------------------------------------------------------------------- the LLM reading text

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
