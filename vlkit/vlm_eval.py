"""Evaluating a trained VLM as LLaVA does, with the baselines that keep it honest (notebook 03).

- ScienceQA-format problems answered by the likelihood of each option's text (default) or by
  *generation* (``"The answer is B."``, LLaVA's way), parsed and scored in the paper's columns (NAT SOC LAN TXT IMG NO G1-6 G7-12 Avg) by
  :mod:`vlkit.benchmarks.scienceqa`;
- LLaVA-Bench-style relative score: the model's answer vs the teacher's, judged against the
  symbolic context (:mod:`vlkit.benchmarks.llava_bench`, offline rule judge by default);
- baselines: the *same model* with every image replaced by a blank one (does it use the
  image?), chance, and on the attribute-binding subset a bag-of-attributes guesser that knows
  which colours/shapes are in the picture but not which object has which (does it bind?).
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Sequence

import pandas as pd
import torch
from PIL import Image
from tqdm.auto import tqdm

from vlkit import cache, llava, paths, world
from vlkit.benchmarks import llava_bench as bench
from vlkit.benchmarks import scienceqa as sqa
from vlkit.processor import IGNORE


def blank_image(size: int = 64) -> Image.Image:
    """An empty scene: the world's background colour everywhere (notebook 03)."""
    return Image.new("RGB", (size, size), world.BACKGROUND)


def _open(path: Path) -> Image.Image:
    with Image.open(path) as im:
        return im.convert("RGB")


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


# ------------------------------------------------------------------------------- ScienceQA

def _images(problems: dict[str, dict], root: str | Path, blind: bool) -> list[Any]:
    images = []
    for pid in problems:
        path = sqa.image_path(root, pid, problems[pid])
        if path is None:
            images.append(None)
        else:
            img = _open(path)
            images.append(blank_image(img.size[0]) if blind else img)
    return images


@torch.no_grad()
def choice_scores(model, processor, problems: dict[str, dict], root: str | Path, blind: bool = False,
                  batch_size: int = 32, progress: bool = True) -> dict[str, list[float]]:
    """``pid -> [summed log-probability of each choice's answer]`` (notebook 03).

    Each choice's answer (:func:`sqa.choice_answer`) is scored as the assistant turn after the
    problem's prompt. The prompt (image, question, options: ~95% of the tokens) is the same for
    every choice, so it runs once per problem; its KV cache is then copied to one row per
    choice and only the answers run on top of it, at the positions they have in the whole
    conversation. The scores equal scoring each whole conversation on its own (a test pins
    it), 2.6x faster (``benchmarks/bench_choice_scoring.py``); and a text-reading connector
    sees the prompt only, as when the model generates.
    """
    model.eval()
    pids, images = list(problems), _images(problems, root, blind)
    encoded = []  # per problem: the shared prefix, then each choice's (ids, labels) after it
    for pid, image in zip(pids, images):
        p = problems[pid]
        seqs = [processor.encode([{"from": "human", "value": sqa.choice_prompt(p)},
                                  {"from": "gpt", "value": sqa.choice_answer(p, j)}],
                                 n_images=int(image is not None), where=pid)
                for j in range(len(p["choices"]))]
        cut = min(next((i for i, t in enumerate(lab) if t != IGNORE), len(lab)) for _, lab in seqs)
        while any(ids[:cut] != seqs[0][0][:cut] for ids, _ in seqs):
            cut -= 1  # a tokenizer that merges across the turn boundary: share less
        encoded.append((seqs[0][0][:cut], [(ids[cut:], lab[cut:]) for ids, lab in seqs]))
    scores: dict[str, list[float]] = {}
    # similar prompt lengths batched together: less padding (the scores do not depend on the batching)
    order = sorted(range(len(pids)), key=lambda k: len(encoded[k][0]))
    chunks = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    for chunk in tqdm(chunks, desc="ScienceQA choices" + (" (blind)" if blind else ""),
                      disable=not progress or len(chunks) < 2):
        prefix = processor.pad([(encoded[k][0], encoded[k][0]) for k in chunk], side="left")
        imgs = [images[k] for k in chunk if images[k] is not None]
        pixels = processor.image_processor(imgs, return_tensors="pt")["pixel_values"] if imgs else None
        mask = prefix["attention_mask"]
        out = model(input_ids=prefix["input_ids"], pixel_values=pixels, attention_mask=mask,
                    position_ids=(mask.cumsum(1) - 1).clamp(min=0), use_cache=True, logits_to_keep=1)
        rows = [r for r, k in enumerate(chunk) for _ in encoded[k][1]]
        answers = processor.pad([s for k in chunk for s in encoded[k][1]], side="right")
        out.cache.batch_select_indices(torch.tensor(rows))  # one copy of its prompt's cache per choice
        start = mask.sum(1)[rows].unsqueeze(1)
        logits = model(input_ids=answers["input_ids"], cache=out.cache,
                       attention_mask=torch.cat([mask[rows], answers["attention_mask"]], 1),
                       position_ids=start + torch.arange(answers["input_ids"].shape[1])).logits
        # the first answer token is predicted by the prompt's last position, the others by the answer's
        logits = torch.cat([out.logits[rows][:, -1:], logits[:, :-1]], 1).float()
        target = answers["labels"]
        logp = torch.log_softmax(logits, -1).gather(-1, target.clamp(min=0).unsqueeze(-1)).squeeze(-1)
        summed = (logp * (target != IGNORE)).sum(1).tolist()
        i = 0
        for k in chunk:
            n = len(encoded[k][1])
            scores[pids[k]], i = summed[i:i + n], i + n
    return {pid: scores[pid] for pid in pids}


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


def answer_scienceqa(model, processor, problems: dict[str, dict], root: str | Path, blind: bool = False,
                     batch_size: int = 32, max_new_tokens: int = 6, progress: bool = True) -> dict[str, str]:
    """``pid -> generated answer`` for ``problems``; ``blind`` replaces every image by :func:`blank_image`."""
    pids = list(problems)
    images = _images(problems, root, blind)
    texts = generate(model, processor, [sqa.build_prompt(problems[p]) for p in pids], images, batch_size,
                     max_new_tokens, desc="ScienceQA" + (" (blind)" if blind else ""), progress=progress)
    return dict(zip(pids, texts))


def answer_problems(model, processor, problems: dict[str, dict], root: str | Path, cfg: "llava.LlavaConfig",
                    blind: bool = False) -> dict[str, str]:
    """``pid -> answer text`` the way ``cfg.sqa_eval`` says (notebook 03).

    ``"likelihood"``: the most likely option (:func:`rank_choices`), written ``"B. red"`` so the
    same parser and scorer read both kinds of answer; ``"generate"``: greedy generation.
    """
    if cfg.sqa_eval == "likelihood":
        picks = rank_choices(model, processor, problems, root, blind=blind, batch_size=cfg.eval_batch,
                             progress=cfg.progress)
        return {pid: f"{sqa.OPTIONS[j]}. {problems[pid]['choices'][j]}" for pid, j in picks.items()}
    return answer_scienceqa(model, processor, problems, root, blind=blind, batch_size=cfg.eval_batch,
                            max_new_tokens=cfg.sqa_max_new_tokens, progress=cfg.progress)


def binding_subset(problems: dict[str, dict]) -> dict[str, dict]:
    """The attribute-binding problems ("What colour is the triangle?" with other objects present)."""
    return sqa.select(problems, category=sqa.BINDING_CATEGORY)


def chance_columns(problems: dict[str, dict]) -> dict[str, float | None]:
    """Expected accuracy (%) of a uniform guess, in every ScienceQA column (notebook 03)."""
    n = dict.fromkeys(sqa.COLUMNS, 0)
    s = dict.fromkeys(sqa.COLUMNS, 0.0)
    for p in problems.values():
        for col in (*sqa.columns_of(p), "Avg"):
            n[col] += 1
            s[col] += 1 / len(p["choices"])
    return {c: (100 * s[c] / n[c] if n[c] else None) for c in sqa.COLUMNS}


def baselines(root: str | Path, split: str = "test") -> dict[str, Any]:
    """Chance (every column, and on the binding subset) and the bag-of-attributes accuracy (notebook 03)."""
    problems = sqa.select(sqa.load_problems(root), split=split)
    binding = binding_subset(problems)
    return {"chance": chance_columns(problems),
            "chance_binding": sqa.chance_accuracy(binding) if binding else None,
            "bag_of_attributes": (sqa.bag_of_attributes_accuracy(binding, sqa.load_scenes(root))
                                  if binding else None),
            "n_test": len(problems), "n_binding": len(binding)}


# ------------------------------------------------------------------------ LLaVA-Bench style

def bench_questions(cfg: "llava.LlavaConfig") -> tuple[list[dict], dict[str, Path]]:
    """One question per type for the first ``cfg.bench_scenes`` held-out (test) scenes, with the
    teacher's reference answers; and ``image_id -> image path`` (notebook 03)."""
    from vlkit.data import load_scenes
    from vlkit.teacher import TemplateTeacher
    root = llava.data_dir(cfg)
    rows = load_scenes(root, split="test")[: cfg.bench_scenes]
    records = bench.make_questions([s for s, _ in rows], TemplateTeacher(cfg.seed), seed=cfg.seed)
    return records, {s.id: root / row["image"] for s, row in rows}


def answer_bench(model, processor, records: list[dict], images: dict[str, Path], batch_size: int = 32,
                 max_new_tokens: int = 40, progress: bool = True) -> list[dict]:
    """The records with the model's ``answer`` added (notebook 03)."""
    texts = generate(model, processor, [r["question"] for r in records],
                     [_open(images[r["image_id"]]) for r in records], batch_size, max_new_tokens,
                     desc="LLaVA-Bench", progress=progress)
    return [{**r, "answer": t} for r, t in zip(records, texts)]


# ------------------------------------------------------------------------------- variants

def _subset_accuracy(subset: dict[str, dict], answers: dict[str, str]) -> float | None:
    """Accuracy (%) over ``subset`` of answers given for a superset of problems."""
    if not subset:
        return None
    return sqa.score(subset, {pid: answers[pid] for pid in subset if pid in answers}, split=None)["Avg"]


def eval_key(cfg: "llava.LlavaConfig", variant: "llava.Variant", blind: bool = True) -> dict:
    return {"model": llava.stage2_key(cfg, variant), "blind": blind, "eval_batch": cfg.eval_batch,
            "sqa_max_new_tokens": cfg.sqa_max_new_tokens, "sqa_eval": cfg.sqa_eval, "bench_scenes": cfg.bench_scenes,
            "bench_max_new_tokens": cfg.bench_max_new_tokens, "mixed_precision": cfg.mixed_precision, "version": 3}


def evaluate_variant(cfg: "llava.LlavaConfig", variant: "llava.Variant" = llava.MAIN, blind: bool = True) -> dict:
    """Train (or load) ``variant`` and evaluate it; cached as ``result.json`` (notebook 03).

    ``blind``: also answer the image problems with blank images (None entries otherwise).
    Returns ``scienceqa`` / ``scienceqa_blind`` (score columns), ``binding`` /
    ``binding_blind`` (accuracy % on the binding subset), ``bench`` (relative scores),
    ``answers`` / ``answers_blind`` (pid -> text), ``bench_answers``, ``llm_bytes`` (weights
    of the LLM as evaluated: 4-bit for QLoRA), ``seconds`` (training per stage).
    """
    def build(tmp: Path) -> None:
        model, proc = llava.load_stage2(cfg, variant)
        root = llava.scienceqa_dir(cfg)
        test = sqa.select(sqa.load_problems(root), split="test")
        with_image = sqa.select(test, has_image=True)
        records, images = bench_questions(cfg)
        # the matmuls in the precision the model trained in
        with torch.autocast(model.device.type, dtype=torch.bfloat16, enabled=cfg.mixed_precision == "bf16"):
            answers = answer_problems(model, proc, test, root, cfg)
            # blind: only problems with an image change; the others keep their answers
            blind_answers = answer_problems(model, proc, with_image, root, cfg, blind=True) if blind else None
            judged = answer_bench(model, proc, records, images, cfg.eval_batch, cfg.bench_max_new_tokens,
                                  cfg.progress)
        blinded = {**answers, **(blind_answers or {})}
        binding = binding_subset(test)
        result = {
            "variant": dataclasses.asdict(variant),
            "scienceqa": sqa.score(test, answers, split=None),
            "scienceqa_blind": sqa.score(test, blinded, split=None) if blind else None,
            "binding": _subset_accuracy(binding, answers),
            "binding_blind": _subset_accuracy(binding, blinded) if blind else None,
            "bench": bench.relative_scores(bench.evaluate(judged)),
            "answers": answers, "answers_blind": blind_answers,
            "bench_answers": [{k: r[k] for k in ("question_id", "type", "question", "answer", "reference")}
                              for r in judged],
            "llm_bytes": llava.llm_weight_bytes(model.language_model),
            "seconds": llava.train_seconds(cfg, variant),
        }
        (tmp / "result.json").write_text(json.dumps(result))

    path = cache.cached(paths.artifacts_dir(cfg.profile), "llava-eval", eval_key(cfg, variant, blind), build)
    return json.loads((path / "result.json").read_text())


def run_all(cfg: "llava.LlavaConfig", variants: Sequence["llava.Variant"] = llava.VARIANTS) -> dict[str, dict]:
    """``variant name -> evaluate_variant(...)`` for every variant; the first one is also
    evaluated image-blind (notebook 03)."""
    return {v.name: evaluate_variant(cfg, v, blind=i == 0) for i, v in enumerate(variants)}


# ------------------------------------------------------------------------------- tables

def results_table(results: dict[str, dict], base: dict[str, Any], blind_of: str | None = None) -> pd.DataFrame:
    """LLaVA-style table: rows = variants (+ image-blind, chance, bag-of-attributes), columns =
    the ScienceQA columns, ``Binding`` (binding-subset accuracy) and ``Rel. score`` (notebook 03)."""
    cols = [*sqa.COLUMNS, "Binding", "Rel. score"]
    rows = {}
    for name, r in results.items():
        rows[name] = {**{c: r["scienceqa"][c] for c in sqa.COLUMNS}, "Binding": r["binding"],
                      "Rel. score": r["bench"].get("overall", {}).get("relative")}
    blind_of = blind_of or next(iter(results))
    r = results[blind_of]
    rows[f"{blind_of}, image blind"] = {**{c: r["scienceqa_blind"][c] for c in sqa.COLUMNS},
                                        "Binding": r["binding_blind"], "Rel. score": None}
    rows["chance"] = {**base["chance"], "Binding": base["chance_binding"], "Rel. score": None}
    rows["bag of attributes"] = {"Binding": base["bag_of_attributes"]}
    return pd.DataFrame.from_dict(rows, orient="index").reindex(columns=cols).astype(float).round(2)


def relative_table(results: dict[str, dict]) -> pd.DataFrame:
    """Relative score (%) per question type and overall, one row per variant (notebook 03)."""
    types = [*bench.TYPES, "overall"]
    return pd.DataFrame.from_dict(
        {name: {t: r["bench"].get(t, {}).get("relative") for t in types} for name, r in results.items()},
        orient="index").reindex(columns=types).astype(float).round(1)


def qualitative_examples(cfg: "llava.LlavaConfig", result: dict, n: int = 8) -> list[dict]:
    """``n`` test problems with images, binding questions first: image, question (with choices),
    the model's answer and the reference (notebook 03)."""
    root = llava.scienceqa_dir(cfg)
    test = sqa.select(sqa.load_problems(root), split="test", has_image=True)
    ordered = sorted(test, key=lambda pid: test[pid].get("category") != sqa.BINDING_CATEGORY)
    picked = ordered[: n // 2] + [pid for pid in ordered if test[pid].get("category") != sqa.BINDING_CATEGORY][: n - n // 2]
    out = []
    for pid in dict.fromkeys(picked):
        p = test[pid]
        choices = "  ".join(f"{sqa.OPTIONS[i]}. {c}" for i, c in enumerate(p["choices"]))
        out.append({"pid": pid, "image": _open(sqa.image_path(root, pid, p)), "question": p["question"],
                    "choices": choices, "answer": result["answers"].get(pid, ""),
                    "reference": f"{sqa.answer_text(p, 'sentence')} ({p['choices'][p['answer']]})",
                    "correct": sqa.parse_answer(result["answers"].get(pid, ""), p["choices"],
                                                p["question"]) == p["answer"]})
    return out
