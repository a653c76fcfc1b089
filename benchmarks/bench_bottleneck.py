"""Bottleneck Adapter cost, measured in one process (notebook 04).

1. A training step of BA + MMT (adapters + neck train) against full fine-tuning at the same batch:
   notebook 03's full fine-tune (linear patch connector, connector + LLM) and, to separate what the
   trainable set costs from what fewer visual tokens save, BA's own model with everything training;
   and BA with the vision tower's attention in SDPA instead of eager (the recipe's choice: gradients
   flow through the tower). Paths interleaved step by step, medians. Training memory: the bytes a step
   holds, counted as the trainer counts them (:class:`vlkit.train.memory.StepMemory`: weights, tensors
   saved for backward, gradients, AdamW state, each storage once).
2. Prefill latency of the merged (re-parameterised) model against the model without adapters and the
   unmerged one: merged should be within 5% of no adapters.

    .venv/bin/python benchmarks/bench_bottleneck.py [--profile full] [--steps 6] [--repeats 15]
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch


def training_memory(model, optimizer, batch, precision: str) -> int:
    """Bytes one training step holds (:class:`vlkit.train.memory.StepMemory`, as the trainer counts them)."""
    from vlkit.train.memory import StepMemory
    with StepMemory(model) as m:
        with m.first_forward(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        m.after_first_step(optimizer)
        optimizer.zero_grad(set_to_none=True)
    return m.peak_bytes


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", default="full", choices=("smoke", "full"))
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--repeats", type=int, default=15)
    a = ap.parse_args()
    torch.manual_seed(0)

    from vlkit.build import build_model
    from vlkit.recipes import bottleneck as BA
    from vlkit.recipes import llava
    from vlkit.reparam import merge_adapters
    from vlkit.specs import ParamGroup, TrainSpec
    from vlkit.train.groups import optimizer_groups, prepare

    cfg = BA.BottleneckConfig.for_profile(a.profile, progress=False)
    ds = cfg.llava.mix(llava.MAIN).dataset(tempfile.mkdtemp(), progress=False)  # the rows' training data
    items = [ds[i] for i in range(cfg.llava.stage2_batch)]
    precision = cfg.llava.mixed_precision

    def setup(model_spec, groups):
        model, proc = build_model(model_spec, progress=False)
        spec = TrainSpec(groups=groups, steps=1, batch_size=len(items), mixed_precision=precision, progress=False)
        opt = torch.optim.AdamW(optimizer_groups(spec, prepare(model, spec)))
        model.train()
        return model, opt, proc.collate(items)

    paths = {
        "BA + MMT (adapters + neck)": setup(cfg.model_spec(BA.MAIN), cfg.stage(BA.MAIN).train.groups),
        "BA + MMT, vision tower in SDPA": setup(cfg.model_spec(BA.MAIN).replace(vision_attention="sdpa"),
                                                cfg.stage(BA.MAIN).train.groups),
        "same model, full fine-tune": setup(cfg.model_spec(BA.MAIN), tuple(
            ParamGroup(k, 1e-4) for k in ("connector", "insertions", "llm", "vision"))),
        "notebook 03 full fine-tune (64 patch tokens)": setup(cfg.llava.model_spec(), cfg.llava.stage2().train.groups),
    }
    times = {k: [] for k in paths}
    for _ in range(a.steps + 1):  # the first round warms up
        for name, (model, opt, batch) in paths.items():
            t = time.perf_counter()
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
                loss = model(**batch).loss
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            times[name].append(time.perf_counter() - t)
    base = statistics.median(times["same model, full fine-tune"][1:])
    print(f"training step, batch {len(items)}, {precision} (median of {a.steps}):")
    mems = {name: training_memory(model, opt, batch, precision) for name, (model, opt, batch) in paths.items()}
    for name in paths:
        med = statistics.median(times[name][1:])
        print(f"  {name:>46}: {1000 * med:6.0f} ms ({med / base:.2f}x the same model's full fine-tune); a step holds "
              f"{mems[name] / 2**20:.1f} MiB ({mems[name] / mems['same model, full fine-tune']:.2f}x)")

    model = paths["BA + MMT (adapters + neck)"][0].eval()
    with torch.no_grad():
        for a_ in model.inserted.values():  # trained-looking adapters: the merge must fold real weights and biases
            a_.up.weight.normal_(std=0.02)
            a_.up.bias.normal_(std=0.02)
    merged = merge_adapters(model)
    plain, proc = build_model(cfg.model_spec(BA.MAIN).replace(insertions=()), progress=False)
    plain.eval()
    batch = proc([[it["conversations"][0]] for it in items], [it["image"] for it in items], add_generation_prompt=True)
    batch.pop("labels")
    lat = {"no adapters": [], "merged": [], "unmerged": []}
    with torch.no_grad():
        for _ in range(a.repeats + 2):
            for name, m in (("no adapters", plain), ("merged", merged), ("unmerged", model)):
                t = time.perf_counter()
                m(**batch)
                lat[name].append(time.perf_counter() - t)
    ref = statistics.median(lat["no adapters"][2:])
    print(f"prefill, batch {batch['input_ids'].shape[0]} x {batch['input_ids'].shape[1]} tokens (median of {a.repeats}):")
    for name, ts in lat.items():
        med = statistics.median(ts[2:])
        print(f"  {name:>12}: {1000 * med:6.1f} ms ({med / ref:.3f}x no adapters)")


if __name__ == "__main__":
    main()
