"""IAS of 8 candidate instructions per image: batched on a shared prompt vs one forward per candidate (notebook 05).

``vlkit.ias.ias`` runs each image's prompt (visual tokens + meta prompt) once and scores its candidates
on copies of that prompt's KV cache, several images per batch. The baseline is the direct reading of
the paper's score: one forward pass of ``[image; meta prompt; instruction]`` per candidate. Both use
notebook 03's main model (cached by ``make run``; otherwise trained first) under the same precision,
on POPE-like images with 8 of the task's phrasings each; rounds alternate in one process, medians
count. Reported: the speed-up and the largest score difference.

    python benchmarks/bench_ias.py [--images 32 --rounds 3]
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from vlkit.eval.scoring import open_image
from vlkit.ias import META_PROMPT, ias
from vlkit.recipes import llava
from vlkit.stages import load_stage
from vlkit.tokens import IMAGE_TOKEN
from vlkit.zeroshot import pope


@torch.no_grad()
def one_by_one(model, proc, images, candidates, precision: str) -> list[list[float]]:
    """The baseline: each (image, candidate) conversation in its own forward pass."""
    out = []
    for image, cands in zip(images, candidates):
        row = []
        for cand in cands:
            batch = proc([[{"from": "human", "value": f"{IMAGE_TOKEN}\n{META_PROMPT}"},
                           {"from": "gpt", "value": cand}]], [image])
            labels = batch.pop("labels")[0, 1:]
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
                logits = model(**batch).logits[0, :-1].float()
            keep = labels != -100
            row.append(-torch.log_softmax(logits, -1)[keep].gather(-1, labels[keep].unsqueeze(-1)).mean().item())
        out.append(row)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=32)
    ap.add_argument("--candidates", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    cfg = llava.LlavaConfig.for_profile("full", progress=False)
    model, proc = load_stage(cfg.stage2(llava.MAIN), progress=False)
    model.eval()
    precision = cfg.mixed_precision
    folder = pope.write(Path(tempfile.mkdtemp()) / "pope", pope.PopeConfig(n=args.images))
    questions = pope.load_questions(folder / "questions.jsonl")
    images = [open_image(folder / "images" / q["image"]) for q in questions]
    candidates = [[p.format(**q["fields"]) for p in pope.PHRASINGS[:args.candidates]] for q in questions]

    times = {"batched, shared prompt": [], "one forward per candidate": []}
    for _ in range(args.rounds):
        t = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            batched = ias(model, proc, images, candidates, batch_size=32)
        times["batched, shared prompt"].append(time.perf_counter() - t)
        t = time.perf_counter()
        alone = one_by_one(model, proc, images, candidates, precision)
        times["one forward per candidate"].append(time.perf_counter() - t)
    med = {k: statistics.median(v) for k, v in times.items()}
    gap = max(abs(a - b) for ra, rb in zip(batched, alone) for a, b in zip(ra, rb))
    print(f"IAS of {args.images} images x {args.candidates} candidates ({precision}, median of {args.rounds}):")
    for k, v in med.items():
        print(f"  {k:>26}: {v:6.2f} s")
    print(f"  speed-up {med['one forward per candidate'] / med['batched, shared prompt']:.2f}x; "
          f"largest score difference {gap:.2e} nats per token")


if __name__ == "__main__":
    main()
