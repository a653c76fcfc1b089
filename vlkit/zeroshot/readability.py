"""Can the vision tower read? A probe before the TextVQA-like task is scored (notebook 05).

The words and digits of :mod:`vlkit.zeroshot.textvqa` are a few pixels tall at 64 px. If notebook 02's
tower does not encode them, no connector or instruction can recover them and the task is "not
testable at this scale". Notebook 02's attentive probe (:func:`vlkit.backbones.probes.fit_probe`: one
learned query per shape attends over the patch tokens, then a linear map) is trained to name the
writing on the asked object from the tower's tokens, on scenes of another seed than the test ones.
"""
from __future__ import annotations

import dataclasses

import torch

from vlkit import world as W
from vlkit.backbones.clip import pixels
from vlkit.backbones.probes import fit_probe, patch_tokens
from vlkit.zeroshot import textvqa


def _items(cfg: textvqa.TextVQAConfig, vision, layer: int):
    questions, scenes = textvqa.generate(cfg)
    kept = []
    for q in questions:  # the shape names the object uniquely: the probe's query is per shape
        shapes = [o.shape for o in scenes[q["image"]].objects]
        if shapes.count(q["fields"]["obj"].split()[-1]) == 1:
            kept.append(q)
    images = [W.render(scenes[q["image"]], cfg.resolution) for q in kept]
    tokens = patch_tokens(vision, pixels(images, vision.config.image_size), layer=layer)
    group = torch.tensor([W.SHAPES.index(q["fields"]["obj"].split()[-1]) for q in kept])
    y = torch.tensor([textvqa.ANSWERS.index(q["answers"][0]) for q in kept])
    return tokens, group, y


def readability_probe(vision, cfg: textvqa.TextVQAConfig, n_train: int = 1200, layer: int = -2) -> dict:
    """Accuracy of naming the writing on the asked object from ``vision``'s patch tokens of ``layer``.

    Trained on ``n_train`` questions of another seed than ``cfg``'s, tested on ``cfg``'s own; with the
    mean-pooled linear probe and uniform chance (1 / 18 words) beside it."""
    train_cfg = dataclasses.replace(cfg, n=n_train, seed=cfg.seed + 1000)
    xtr, gtr, ytr = _items(train_cfg, vision, layer)
    xte, gte, yte = _items(cfg, vision, layer)
    n_classes, n_groups = len(textvqa.ANSWERS), len(W.SHAPES)
    predict = fit_probe(xtr, ytr, gtr, n_classes, n_groups)
    pooled = fit_probe(xtr.mean(1), ytr, gtr, n_classes, n_groups, attend=False)
    return {"accuracy": float((predict(xte, gte) == yte).float().mean()),
            "train_accuracy": float((predict(xtr, gtr) == ytr).float().mean()),
            "mean_pool_accuracy": float((pooled(xte.mean(1), gte) == yte).float().mean()),
            "chance": 1 / n_classes, "n_test": int(yte.numel()), "n_train": int(ytr.numel())}
