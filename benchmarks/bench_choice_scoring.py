"""ScienceQA likelihood scoring: one prompt pass + options on its KV cache vs whole conversations (notebook 03).

``vlkit.eval.scoring.choice_scores`` runs each problem's prompt once and scores the options on copies of
its KV cache. The baseline here is what it replaced: every option's whole conversation (image,
prompt, answer) batched and run from scratch. Both score the full-profile test split with
notebook 03's main model under the same bf16 autocast, alternating rounds in one process so CPU
contention hits both alike; the median counts. Also reported: the largest score difference and
how many argmax picks agree (bf16 rounding can flip a near-tie).

Needs notebook 03's cached main model (``make run`` first; otherwise it trains it, ~2 min).

    python benchmarks/bench_choice_scoring.py [--rounds 3 --batch 64]
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from vlkit.benchmarks import scienceqa as sqa
from vlkit.eval import scoring
from vlkit.recipes import llava
from vlkit.stages import load_stage
from vlkit.world.scienceqa import ensure_scienceqa


@torch.no_grad()
def whole_conversation_scores(model, proc, problems: dict, root, batch_size: int) -> dict[str, list[float]]:
    """The baseline: each (problem, option) conversation run in full, similar lengths batched."""
    pids, images = list(problems), scoring.problem_images(problems, root)
    items = [(k, j) for k, pid in enumerate(pids) for j in range(len(problems[pid]["choices"]))]
    convs = [[{"from": "human", "value": sqa.choice_prompt(problems[pids[k]])},
              {"from": "gpt", "value": sqa.choice_answer(problems[pids[k]], j)}] for k, j in items]
    order = sorted(range(len(items)), key=lambda i: len(convs[i][0]["value"]))
    flat = [0.0] * len(items)
    for start in range(0, len(order), batch_size):
        chunk = order[start:start + batch_size]
        batch = proc([convs[i] for i in chunk], [images[items[i][0]] for i in chunk])
        labels = batch.pop("labels")[:, 1:]
        logp = torch.log_softmax(model(**batch).logits[:, :-1].float(), -1)
        summed = (logp.gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1) * (labels != -100)).sum(1)
        for i, s in zip(chunk, summed.tolist()):
            flat[i] = s
    out: dict[str, list[float]] = {pid: [] for pid in pids}
    for (k, _), s in zip(items, flat):
        out[pids[k]].append(s)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--batch", type=int, default=64)
    args = ap.parse_args()
    torch.set_num_threads(min(2, torch.get_num_threads()))
    cfg = llava.LlavaConfig.for_profile("full", progress=False)
    model, proc = load_stage(cfg.stage2(llava.MAIN))
    root = ensure_scienceqa(cfg.scienceqa)
    test = sqa.select(sqa.load_problems(root), split="test")
    n_options = sum(len(p["choices"]) for p in test.values())
    times: dict[str, list[float]] = {"whole conversations": [], "prompt once + KV cache": []}
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=cfg.mixed_precision == "bf16"):
        for _ in range(args.rounds):
            t = time.perf_counter()
            base = whole_conversation_scores(model, proc, test, root, args.batch)
            times["whole conversations"].append(time.perf_counter() - t)
            t = time.perf_counter()
            ours = scoring.choice_scores(model, proc, test, root, batch_size=args.batch, progress=False)
            times["prompt once + KV cache"].append(time.perf_counter() - t)
    med = {k: statistics.median(v) for k, v in times.items()}
    for k, v in med.items():
        print(f"{k:>24}: {v:6.1f} s for {len(test)} problems ({n_options} options)")
    print(f"speed-up {med['whole conversations'] / med['prompt once + KV cache']:.2f}x")
    diff = max(abs(a - b) for pid in test for a, b in zip(base[pid], ours[pid]))
    agree = sum(max(range(len(base[p])), key=base[p].__getitem__) == max(range(len(ours[p])), key=ours[p].__getitem__)
                for p in test)
    print(f"largest score difference {diff:.4f} (summed log-prob, bf16); argmax agrees on {agree}/{len(test)}")


if __name__ == "__main__":
    main()
