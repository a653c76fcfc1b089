"""Answering ScienceQA-format problems with a VLM, and the baselines that keep its score honest (notebook 03).

Baselines: chance in every column, and on the attribute-binding subset ("What colour is the
triangle?" with other shapes present) a bag-of-attributes guesser that knows which colours and
shapes are in the picture but not which object has which (does the model bind?). The image-blind
baseline is the same model with blank images (:func:`vlkit.eval.scoring.blank_image`).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from vlkit.benchmarks import scienceqa as sqa
from vlkit.eval.scoring import generate, open_image, problem_images, rank_choices

SCORINGS = ("likelihood", "generate")


def answer_problems(model, processor, problems: dict[str, dict], root: str | Path, scoring: str = "likelihood",
                    blind: bool = False, batch_size: int = 64, max_new_tokens: int = 24,
                    progress: bool = True) -> dict[str, str]:
    """``pid -> answer text`` (notebook 03).

    ``"likelihood"``: the most likely option (:func:`rank_choices`), written ``"B. red"`` so the
    same parser and scorer read both kinds of answer; ``"generate"``: greedy generation of
    LLaVA's prompt (``"The answer is B."``). ``blind`` answers with blank images.
    """
    if scoring not in SCORINGS:
        raise ValueError(f"unknown scoring {scoring!r}; use one of {', '.join(SCORINGS)}")
    if scoring == "likelihood":
        picks = rank_choices(model, processor, problems, root, blind=blind, batch_size=batch_size, progress=progress)
        return {pid: f"{sqa.OPTIONS[j]}. {problems[pid]['choices'][j]}" for pid, j in picks.items()}
    pids = list(problems)
    texts = generate(model, processor, [sqa.build_prompt(problems[p]) for p in pids],
                     problem_images(problems, root, blind), batch_size, max_new_tokens,
                     desc="ScienceQA" + (" (blind)" if blind else ""), progress=progress)
    return dict(zip(pids, texts))


def binding_subset(problems: dict[str, dict]) -> dict[str, dict]:
    """The attribute-binding problems ("What colour is the triangle?" with other objects present)."""
    return sqa.select(problems, category=sqa.BINDING_CATEGORY)


def counting_subset(problems: dict[str, dict]) -> dict[str, dict]:
    """The counting problems ("How many shapes are in the picture?"), by their category (notebook 06)."""
    return sqa.select(problems, category=sqa.COUNTING_CATEGORY)


def subset_accuracy(subset: dict[str, dict], answers: dict[str, str]) -> float | None:
    """Accuracy (%) over ``subset`` of answers given for a superset of problems."""
    if not subset:
        return None
    return sqa.score(subset, {pid: answers[pid] for pid in subset if pid in answers}, split=None)["Avg"]


def correctness(problems: dict[str, dict], answers: dict[str, str]) -> dict[str, int]:
    """``pid -> 1/0``: whether each answer parses to the correct option (for paired statistics)."""
    return {pid: int(sqa.parse_answer(answers.get(pid, ""), p["choices"], p["question"]) == p["answer"])
            for pid, p in problems.items()}


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


def qualitative_examples(root: str | Path, answers: dict[str, str], n: int = 8, split: str = "test") -> list[dict]:
    """``n`` problems with images, binding questions first: image, question (with choices), the
    model's answer and the reference (notebook 03)."""
    test = sqa.select(sqa.load_problems(root), split=split, has_image=True)
    ordered = sorted(test, key=lambda pid: test[pid].get("category") != sqa.BINDING_CATEGORY)
    picked = ordered[: n // 2] + [pid for pid in ordered if test[pid].get("category") != sqa.BINDING_CATEGORY][: n - n // 2]
    out = []
    for pid in dict.fromkeys(picked):
        p = test[pid]
        choices = "  ".join(f"{sqa.OPTIONS[i]}. {c}" for i, c in enumerate(p["choices"]))
        out.append({"pid": pid, "image": open_image(sqa.image_path(root, pid, p)), "question": p["question"],
                    "choices": choices, "answer": answers.get(pid, ""),
                    "reference": f"{sqa.answer_text(p, 'sentence')} ({p['choices'][p['answer']]})",
                    "correct": sqa.parse_answer(answers.get(pid, ""), p["choices"], p["question"]) == p["answer"]})
    return out
