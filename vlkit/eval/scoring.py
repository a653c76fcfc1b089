"""Scoring a VLM's answers: greedy generation, and multiple choice by option likelihood (notebook 03).

Both take any :class:`vlkit.model.VLModel` and its processor; nothing here knows which recipe
trained the model.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import torch
from PIL import Image
from tqdm.auto import tqdm

from vlkit import attention, world
from vlkit.benchmarks import scienceqa as sqa
from vlkit.processor import IGNORE


def blank_image(size: int = 64) -> Image.Image:
    """An empty scene: the world's background colour everywhere (notebook 03)."""
    return Image.new("RGB", (size, size), world.BACKGROUND)


def open_image(path: Path) -> Image.Image:
    """An image file as RGB, closed after reading."""
    with Image.open(path) as im:
        return im.convert("RGB")


def problem_images(problems: dict[str, dict], root: str | Path, blind: bool = False) -> list[Any]:
    """Each problem's image (None for text-only ones); ``blind`` replaces each by :func:`blank_image`."""
    images = []
    for pid in problems:
        path = sqa.image_path(root, pid, problems[pid])
        if path is None:
            images.append(None)
        else:
            img = open_image(path)
            images.append(blank_image(img.size[0]) if blind else img)
    return images


@torch.no_grad()
def generate(model, processor, prompts: Sequence[str], images: Sequence[Any], batch_size: int = 32,
             max_new_tokens: int = 8, desc: str = "generate", progress: bool = True) -> list[str]:
    """Greedy answers to user turns ``prompts`` (``<image>`` first where an image is given) (notebook 03).

    Prompts of similar length are batched together (less left padding); answers come back in
    the input order.
    """
    if len(prompts) != len(images):
        raise ValueError(f"{len(prompts)} prompts but {len(images)} images")
    model.eval()
    order = sorted(range(len(prompts)), key=lambda i: (images[i] is None, len(prompts[i])))
    out: list[str] = [""] * len(prompts)
    chunks = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    for chunk in tqdm(chunks, desc=desc, disable=not progress or len(chunks) < 2):
        batch = processor.prompt([prompts[i] for i in chunk], [images[i] for i in chunk])
        batch.pop("labels", None)
        ids = model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False)
        for i, text in zip(chunk, processor.decode(ids)):
            out[i] = text
    return out



@torch.no_grad()
def continuation_scores(model, processor, prompts: Sequence[str], images: Sequence[Any],
                        candidates: Sequence[Sequence[str]], batch_size: int = 32, desc: str = "candidates",
                        progress: bool = True, where: Sequence[str] | None = None) -> list[list[tuple[float, int]]]:
    """``[(summed log-probability, tokens)]`` of each candidate assistant turn after its prompt (notebooks 03, 05).

    ``prompts[i]`` is a user turn (``<image>`` first where ``images[i]`` is an image, None for text
    only), ``candidates[i]`` the assistant turns to score after it; each candidate's tokens are its
    labels (the answer and the token that closes the turn). The prompt is the same for every
    candidate, so it runs once; its KV cache is then copied to one row per candidate and only the
    candidates run on top of it, at the positions they have in the whole conversation. The scores
    equal scoring each whole conversation on its own (a test pins it), faster by the share of the
    tokens the candidates share (``benchmarks/bench_choice_scoring.py``); and a text-reading connector
    sees the prompt only, as when the model generates.
    """
    if not len(prompts) == len(images) == len(candidates):
        raise ValueError(f"{len(prompts)} prompts, {len(images)} images and {len(candidates)} candidate lists: "
                         "one of each per question")
    if where is not None and len(where) != len(prompts):
        raise ValueError(f"{len(where)} names for {len(prompts)} questions")
    where = list(where) if where is not None else [f"question {i}" for i in range(len(prompts))]
    model.eval()
    encoded = []  # per prompt: the shared prefix, then each candidate's (ids, labels) after it
    for i, (prompt, image, cands) in enumerate(zip(prompts, images, candidates)):
        if not cands:
            raise ValueError(f"{where[i]}: no candidates to score")
        seqs = [processor.encode([{"from": "human", "value": prompt}, {"from": "gpt", "value": c}],
                                 n_images=int(image is not None), where=where[i], truncate=False)
                for c in cands]
        cut = min(next((i for i, t in enumerate(lab) if t != IGNORE), len(lab)) for _, lab in seqs)
        while any(ids[:cut] != seqs[0][0][:cut] for ids, _ in seqs):
            cut -= 1  # a tokenizer that merges across the turn boundary: share less
        encoded.append((seqs[0][0][:cut], [(ids[cut:], lab[cut:]) for ids, lab in seqs]))
    scores: list[list[tuple[float, int]]] = [[] for _ in prompts]
    # similar prompt lengths batched together: less padding (the scores do not depend on the batching)
    order = sorted(range(len(prompts)), key=lambda k: len(encoded[k][0]))
    chunks = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    for chunk in tqdm(chunks, desc=desc, disable=not progress or len(chunks) < 2):
        prefix = processor.pad([(encoded[k][0], encoded[k][0]) for k in chunk], side="left")
        imgs = [images[k] for k in chunk if images[k] is not None]
        pixels = processor.image_processor(imgs, return_tensors="pt")["pixel_values"] if imgs else None
        mask = prefix["attention_mask"]
        out = model(input_ids=prefix["input_ids"], pixel_values=pixels, attention_mask=mask,
                    position_ids=(mask.cumsum(1) - 1).clamp(min=0), use_cache=True, logits_to_keep=1)
        rows = [r for r, k in enumerate(chunk) for _ in encoded[k][1]]
        answers = processor.pad([s for k in chunk for s in encoded[k][1]], side="right")
        # one copy of its prompt's cache per candidate, with every mask vlkit keeps on it: where its
        # image tokens are, the compressor's hidden (padded) slots, FastV's pruned tokens
        attention.select_cache_rows(out.cache, torch.tensor(rows))
        start = mask.sum(1)[rows].unsqueeze(1)
        logits = model(input_ids=answers["input_ids"], cache=out.cache,
                       attention_mask=torch.cat([mask[rows], answers["attention_mask"]], 1),
                       position_ids=start + torch.arange(answers["input_ids"].shape[1])).logits
        # the first candidate token is predicted by the prompt's last position, the others by the candidate's
        logits = torch.cat([out.logits[rows][:, -1:], logits[:, :-1]], 1).float()
        target = answers["labels"]
        logp = torch.log_softmax(logits, -1).gather(-1, target.clamp(min=0).unsqueeze(-1)).squeeze(-1)
        summed = (logp * (target != IGNORE)).sum(1).tolist()
        counts = (target != IGNORE).sum(1).tolist()
        i = 0
        for k in chunk:
            n = len(encoded[k][1])
            scores[k], i = list(zip(summed[i:i + n], counts[i:i + n])), i + n
    return scores


def choice_scores(model, processor, problems: dict[str, dict], root: str | Path, blind: bool = False,
                  batch_size: int = 32, progress: bool = True) -> dict[str, list[float]]:
    """``pid -> [summed log-probability of each choice's answer]`` (notebook 03).

    Each choice's answer (:func:`sqa.choice_answer`) is scored as the assistant turn after the
    problem's prompt, the prompt running once per problem (:func:`continuation_scores`).
    """
    pids = list(problems)
    scores = continuation_scores(
        model, processor, [sqa.choice_prompt(problems[p]) for p in pids], problem_images(problems, root, blind),
        [[sqa.choice_answer(problems[p], j) for j in range(len(problems[p]["choices"]))] for p in pids],
        batch_size=batch_size, desc="ScienceQA choices" + (" (blind)" if blind else ""), progress=progress,
        where=pids)
    return {pid: [total for total, _ in s] for pid, s in zip(pids, scores)}


def rank_choices(model, processor, problems: dict[str, dict], root: str | Path, blind: bool = False,
                 batch_size: int = 32, progress: bool = True) -> dict[str, int]:
    """``pid -> index`` of the choice the model finds most likely as its answer (notebook 03).

    Multiple choice by likelihood (the cloze-style scoring of lm-evaluation-harness and
    MMBench's PPL mode): the choice whose answer has the highest summed token log-probability
    (:func:`choice_scores`). Unlike generating ``"The answer is B."``, it needs no learned
    mapping from an answer to its option letter, which a tiny LLM picks up late; what it
    measures is whether the model knows the answer.
    """
    scores = choice_scores(model, processor, problems, root, blind, batch_size, progress)
    return {pid: max(range(len(s)), key=s.__getitem__) for pid, s in scores.items()}
