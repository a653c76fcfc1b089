"""Prefill time with 50% of the visual tokens vs 100%, per compressor, against the analytic FLOP count (issue 19).

Two models with random weights, built from transformers configs (no downloads, timing only):

- *tiny*: the workbook's proportions (notebooks 02-03): CLIP 4 layers x 128 at 64 px, 8 px patches
  (64 patches + [cls]), ``linear`` connector, Llama 4 x 256 (MLP 688, vocabulary 771); 100 text tokens,
  so the text outnumbers the 64 visual tokens;
- *stand-in*: LLaVA-1.5's proportions, compute-bound: 576 visual tokens (336 px, 14 px patches) from a
  shallow, narrow CLIP (4 layers x 256, MLP 1024, 4 heads: ~4% of the prefill's FLOPs, as CLIP-L is of
  LLaVA-1.5-7B's), ``mlp2x_gelu`` connector, Llama 12 layers x 768 (MLP 2048, 12 heads, vocabulary
  2048, so the LM head is 1.5% of the prefill, LLaVA-7B's ~2%); 100 text tokens.

For each method of notebook 06 at ``keep_ratio=0.5`` (``vmtc``, ``visionzip``, ``prumerge``, ``pool``,
``random`` between connector and LLM; ``tome`` in the tower; ``fastv`` with K=1 in the LLM) against the
same model without reduction (``identity``): a plain prefill (``model(...)``: every position's logits,
no cache, what ``vlkit.eval.efficiency`` measures and what FastV drops tokens in), timed in one
process after a warm-up pass of everything: per round every method runs back to back with the
reference (the pair's order alternating, the methods' order rotated from round to round), so that a
slow phase of a shared machine hits both halves of a pair. Reported per method:

- the measured ratio t(50%) / t(100%), the median over its pairs, and the saving 1 - ratio (the ms are
  the medians of the method's runs and of the reference runs paired with it);
- the saving the analytic FLOP count predicts (``vlkit.flops.prefill_flops`` with the reduction the
  compressor makes: ``1 - flops(50%) / flops(100%)``, its own matmuls included), and achieved /
  predicted (the stand-in must reach 0.8: PASS / FAIL);
- the compressor's own time, as a share of its prefill: connector-side methods, their ``compress`` call
  alone on the connector's output with what they ask of the tower beyond the reference (the [cls]
  attention's mean, the recomputed keys); ToMe, the time its patched tower layers spend outside the
  layers' own norms, attention and MLP (matching, merging, sorting); FastV, its hooks and ranking
  (choosing the kept tokens at layer K, gathering them, putting the logits back in place).

The towers run eager attention (VMTC, VisionZip and PruMerge read the [cls] attention, which only eager
returns), and so does the LLM by default: FastV ranks by eager attention probabilities, so the reference
runs the kernels FastV runs, and notebook 03's recipe trains the LLM with eager attention on CPU. Eager
attention's elementwise work over [B, heads, T, T] (mask, fp32 softmax, casts) is memory-bound and not
in the FLOP count, so savings come out above the prediction; ``--llm-attention sdpa`` measures against
SDPA's fused kernel, where time follows the FLOPs (and FastV, switching the LLM to its eager attention,
pays for it; docs/speed.md has both). The stand-in's batch of 2 already multiplies 1,352-row activations
in every linear layer (a bigger batch only lengthens the run on 2 cores). Precision:
``--precision auto`` (the default) is bf16 autocast where the CPU computes bf16 natively, as
``vlkit.train.hardware.resolve_precision`` decides for training, else fp32. A FlopCounterMode check on
the tiny model confirms that each timed forward computes what the analytic count says (FastV drops).

    python benchmarks/bench_compression.py [--rounds 5 --batch 2 --tiny-rounds 15 --tiny-batch 1 16]
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import threading
import time

import torch
from transformers import CLIPVisionConfig, LlamaConfig

import vlkit.compressors.fastv as fastv_module
from vlkit.compression import CompressionContext, build_compressor
from vlkit.compressors.fastv import FastV
from vlkit.compressors.tome import ToMe
from vlkit.eval.efficiency import prefill_flops as counted_flops
from vlkit.flops import llava_7b, prefill_flops, reduction_for, shapes_of
from vlkit.model import VLConfig, VLModel
from vlkit.train.hardware import cpu_model, resolve_precision

KEEP = 0.5
N_TEXT = 100
IMAGE_ID = 5
METHODS = {"vmtc": {}, "visionzip": {}, "prumerge": {}, "pool": {}, "random": {}, "tome": {}, "fastv": {"K": 1}}
REFERENCE, TOWER = "identity", "[tower + connector]"
PASS_AT = 0.8


# --- the two models ---------------------------------------------------------------------------------


def tiny(llm_attention: str = "eager") -> VLModel:
    vision = CLIPVisionConfig(hidden_size=128, intermediate_size=512, num_hidden_layers=4, num_attention_heads=4,
                              image_size=64, patch_size=8)
    text = LlamaConfig(vocab_size=771, hidden_size=256, intermediate_size=688, num_hidden_layers=4,
                       num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=1024)
    return _build(vision, text, "linear", llm_attention)


def stand_in(llm_attention: str = "eager") -> VLModel:
    vision = CLIPVisionConfig(hidden_size=256, intermediate_size=1024, num_hidden_layers=4, num_attention_heads=4,
                              image_size=336, patch_size=14)
    text = LlamaConfig(vocab_size=2048, hidden_size=768, intermediate_size=2048, num_hidden_layers=12,
                       num_attention_heads=12, num_key_value_heads=12, max_position_embeddings=2048)
    return _build(vision, text, "mlp2x_gelu", llm_attention)


def _build(vision: CLIPVisionConfig, text: LlamaConfig, connector: str, llm_attention: str) -> VLModel:
    torch.manual_seed(0)
    model = VLModel(VLConfig(vision_config=vision.to_dict(), text_config=text.to_dict(), connector=connector,
                             image_token_id=IMAGE_ID, llm_attn_implementation=llm_attention,
                             vision_attn_implementation="eager"))
    return model.eval()


def switch(model: VLModel, name: str) -> None:
    if name == REFERENCE:
        model.set_token_reduction(REFERENCE)
    else:
        model.set_token_reduction(name, keep_ratio=KEEP, **METHODS[name])


def make_batch(model: VLModel, bsz: int, pixels: torch.Tensor) -> dict:
    """``bsz`` rows of 5 text tokens, the image's slots, 95 text tokens (a LLaVA prompt's layout)."""
    g = torch.Generator().manual_seed(1)
    text = torch.randint(10, model.config.text_config.vocab_size, (bsz, N_TEXT), generator=g)
    image = torch.full((bsz, model.num_image_tokens), IMAGE_ID)
    ids = torch.cat([text[:, :5], image, text[:, 5:]], 1)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "pixel_values": pixels, "use_cache": False}


# --- the compressor's own time ----------------------------------------------------------------------


def _median_seconds(fn, repeats: int, warmup: int = 1) -> float:
    out = []
    for i in range(warmup + repeats):
        t = time.perf_counter()
        fn()
        if i >= warmup:
            out.append(time.perf_counter() - t)
    return statistics.median(out)


def connector_side_seconds(model: VLModel, pixels: torch.Tensor, amp, repeats: int) -> float:
    """``compress`` on the connector's output, with the context it needs beyond the reference's tower output."""
    c = model.compressor
    with torch.inference_mode(), amp():
        out = model.vision_tower(pixel_values=pixels, output_hidden_states=True,
                                 output_attentions=c.needs_importance, return_dict=True)
        tokens = model.connector(out.hidden_states)
        j = model.config.vision_feature_layer % len(out.hidden_states)

        def call():
            importance = keys = None
            if c.needs_importance:  # as VLModel.compression_inputs: [cls] -> patch attention, mean over heads
                importance = out.attentions[j - 1].mean(1)[:, 0, 1:]
            if c.needs_keys:
                keys = model._feature_keys(out.hidden_states[j - 1], j - 1)
            return c.compress(tokens, CompressionContext(importance=importance, keys=keys))

        return _median_seconds(call, repeats)


def tome_seconds(model: VLModel, pixels: torch.Tensor, amp, repeats: int) -> float:
    """Time in ToMe's patched tower layers outside their own norms, attention and MLP."""
    layers = list(model.compressor._patched)
    clock = {"total": 0.0, "inner": 0.0}
    starts: dict[int, float] = {}

    def pre(module, args):
        starts[id(module)] = time.perf_counter()

    def post(module, args, output):
        clock["inner"] += time.perf_counter() - starts[id(module)]

    def timed(forward):
        def call(*args, **kwargs):
            t = time.perf_counter()
            out = forward(*args, **kwargs)
            clock["total"] += time.perf_counter() - t
            return out
        return call

    hooks = [h for layer in layers for part in (layer.layer_norm1, layer.self_attn, layer.layer_norm2, layer.mlp)
             for h in (part.register_forward_pre_hook(pre), part.register_forward_hook(post))]
    forwards = [layer.forward for layer in layers]
    for layer in layers:
        layer.forward = timed(layer.forward)
    samples = []
    try:
        with torch.inference_mode(), amp():
            for i in range(1 + repeats):
                clock.update(total=0.0, inner=0.0)
                model.vision_tower(pixel_values=pixels, output_hidden_states=True, return_dict=True)
                if i:
                    samples.append(clock["total"] - clock["inner"])
    finally:
        for layer, forward in zip(layers, forwards):
            layer.forward = forward
        for h in hooks:
            h.remove()
    return statistics.median(samples)


def fastv_seconds(model: VLModel, batch: dict, amp, repeats: int) -> float:
    """FastV's hooks (choosing masking or dropping, gathering the kept tokens, placing the logits) and its ranking."""
    clock = [0.0]

    def timed(fn):
        def call(*args, **kwargs):
            t = time.perf_counter()
            out = fn(*args, **kwargs)
            clock[0] += time.perf_counter() - t
            return out
        return call

    saved = {k: getattr(fastv_module, k) for k in ("_begin", "_end", "_drop")}
    decide = fastv_module._Run.decide
    for k, factory in saved.items():
        setattr(fastv_module, k, lambda run, factory=factory: timed(factory(run)))
    fastv_module._Run.decide = timed(decide)
    samples = []
    try:
        switch(model, "fastv")  # attached again: its hooks are the timed ones
        with torch.inference_mode(), amp():
            for i in range(1 + repeats):
                clock[0] = 0.0
                model(**batch)
                if i:
                    samples.append(clock[0])
    finally:
        for k, factory in saved.items():
            setattr(fastv_module, k, factory)
        fastv_module._Run.decide = decide
        switch(model, "fastv")
    return statistics.median(samples)


def own_seconds(model: VLModel, batch: dict, amp, repeats: int) -> float:
    c = model.compressor
    if isinstance(c, ToMe):
        return tome_seconds(model, batch["pixel_values"], amp, repeats)
    if isinstance(c, FastV):
        return fastv_seconds(model, batch, amp, repeats)
    return connector_side_seconds(model, batch["pixel_values"], amp, repeats)


# --- the measurement --------------------------------------------------------------------------------


def measure(label: str, model: VLModel, bsz: int, rounds: int, warmup: int, amp, check_flops: bool) -> dict:
    cfg = model.config.vision_config
    pixels = torch.randn(bsz, 3, cfg.image_size, cfg.image_size, generator=torch.Generator().manual_seed(0))
    names = [REFERENCE, *METHODS]
    batches, flops, info = {}, {}, {}
    for name in names:
        switch(model, name)
        batches[name] = make_batch(model, bsz, pixels)
        flops[name] = prefill_flops(**shapes_of(model), n_text=N_TEXT)
        c = model.compressor
        info[name] = {"llm_visual": model.num_image_tokens if not isinstance(c, FastV)
                      else f"{model.num_image_tokens}->{c.effective_tokens(model.num_image_tokens)}"}
        if check_flops:
            counted = counted_flops(model, batches[name])
            info[name]["flops_counted_equal"] = counted == bsz * flops[name].total

    def run(name: str) -> float:
        switch(model, REFERENCE if name == TOWER else name)
        with torch.inference_mode(), amp():
            t = time.perf_counter()
            if name == TOWER:
                model.compression_inputs(pixels)
            else:
                model(**batches[name])
            return time.perf_counter() - t

    for _ in range(warmup):
        for name in [*names, TOWER]:
            run(name)
    # each method in a pair with the reference, back to back (their order alternating from round to round),
    # the methods' order rotated from round to round: a slow phase of the machine hits both halves of a pair
    times: dict[str, list[float]] = {k: [] for k in [*names, TOWER]}
    paired: dict[str, list[tuple[float, float]]] = {k: [] for k in METHODS}
    methods = list(METHODS)
    for r in range(rounds):
        k = r % len(methods)
        for name in methods[k:] + methods[:k]:
            order = (REFERENCE, name) if r % 2 == 0 else (name, REFERENCE)
            t = {x: run(x) for x in order}
            paired[name].append((t[REFERENCE], t[name]))
            times[REFERENCE].append(t[REFERENCE])
        times[TOWER].append(run(TOWER))
    med = {k: statistics.median(v) for k, v in times.items() if v}
    ref_flops = flops[REFERENCE]
    rows = []
    for name in METHODS:
        ref_ms = 1000 * statistics.median(a for a, _ in paired[name])
        ms_50 = 1000 * statistics.median(b for _, b in paired[name])
        ratio = statistics.median(b / a for a, b in paired[name])
        switch(model, name)
        prumerge_kept = None
        if name == "prumerge":
            model.compressor.reset_stats()
        own = own_seconds(model, batches[name], amp, repeats=max(3, min(rounds, 7)))
        if name == "prumerge":
            prumerge_kept = model.compressor.mean_kept
        predicted = 1 - flops[name].total / ref_flops.total
        row = {"method": name, **info[name], "ms_100": ref_ms, "ms_50": ms_50, "ratio": ratio,
               "saving": 1 - ratio, "predicted_saving": predicted, "flops_ratio": flops[name].total / ref_flops.total,
               "achieved_over_predicted": (1 - ratio) / predicted if predicted > 0 else float("nan"),
               "own_ms": 1000 * own, "own_share": own / (ms_50 / 1000), "compressor_flops": flops[name].compressor,
               "pair_ratios": [b / a for a, b in paired[name]]}
        if prumerge_kept is not None:
            row["prumerge_mean_kept"] = prumerge_kept
        rows.append(row)
    switch(model, REFERENCE)
    f = ref_flops
    return {"model": label, "batch": bsz, "rounds": rounds, "tokens": int(batches[REFERENCE]["input_ids"].shape[1]),
            "visual_tokens": model.num_image_tokens, "text_tokens": N_TEXT, "reference_ms": 1000 * med[REFERENCE],
            "tower_connector_ms": 1000 * med[TOWER], "tower_connector_share": med[TOWER] / med[REFERENCE],
            "reference_gflops_per_s": bsz * f.total / med[REFERENCE] / 1e9,
            "reference_flops": f.as_dict(),
            "reference_flops_counted_equal": info[REFERENCE].get("flops_counted_equal"),
            "methods": rows}


def matmul_peak(amp, n: int = 2048, repeats: int = 10) -> float:
    """GFLOP/s of a large n x n matmul in the benchmark's precision: what a compute-bound prefill approaches
    (measured before and after the models, the better counts: one reading varies with the shared host)."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    with torch.inference_mode(), amp():
        seconds = _median_seconds(lambda: a @ b, repeats, warmup=2)
    return 2 * n ** 3 / seconds / 1e9


def llava_7b_predictions() -> dict[str, float]:
    """The saving the FLOP count predicts for each method at keep 0.5 on LLaVA-1.5-7B, for comparison."""
    shapes = llava_7b()
    full = prefill_flops(**shapes, n_text=N_TEXT).total
    out = {}
    for name, opts in METHODS.items():
        c = build_compressor(name, shapes["llm"].hidden, keep_ratio=KEEP, **opts)
        red = reduction_for(c, shapes["vision"], shapes["llm"], shapes["n_patches"], shapes["cls"])
        out[name] = 1 - prefill_flops(**shapes, n_text=N_TEXT, reduction=red).total / full
    return out


def report(res: dict, verdict: bool, at_7b: dict[str, float]) -> None:
    f = res["reference_flops"]
    parts = ", ".join(f"{k} {100 * f[k] / f['total']:.1f}%" for k in ("vision", "connector", "llm", "lm_head"))
    print(f"\n{res['model']}: batch {res['batch']} x {res['tokens']} tokens ({res['text_tokens']} text + "
          f"{res['visual_tokens']} visual), median of {res['rounds']} rounds")
    print(f"  reference prefill {res['reference_ms']:.1f} ms, {res['reference_gflops_per_s']:.0f} GFLOP/s "
          f"({f['total'] / 1e9:.2f} GFLOP per sequence: {parts}; attention {100 * f['attention'] / f['total']:.1f}%)")
    print(f"  tower + connector alone: {res['tower_connector_ms']:.1f} ms = "
          f"{100 * res['tower_connector_share']:.0f}% of the reference prefill "
          f"(vision FLOPs {100 * f['vision'] / f['total']:.1f}%)")
    head = (f"  {'method':<10} {'LLM visual':>10} {'ms 100%':>8} {'ms 50%':>8} {'saving':>7} {'predicted':>9} "
            f"{'achieved/pred':>13} {'own ms':>7} {'own share':>9} {'pred. 7B':>8}")
    print(head)
    for r in res["methods"]:
        line = (f"  {r['method']:<10} {str(r['llm_visual']):>10} {r['ms_100']:8.1f} {r['ms_50']:8.1f} "
                f"{100 * r['saving']:6.1f}% {100 * r['predicted_saving']:8.1f}% {r['achieved_over_predicted']:13.2f} "
                f"{r['own_ms']:7.2f} {100 * r['own_share']:8.1f}% {100 * at_7b[r['method']]:7.1f}%")
        if verdict:
            line += "  PASS" if r["achieved_over_predicted"] >= PASS_AT else "  FAIL"
        print(line)
    for r in res["methods"]:
        if "prumerge_mean_kept" in r:
            print(f"  prumerge kept {r['prumerge_mean_kept']:.1f} tokens per image on average (IQR rule on random "
                  f"weights); the LLM sees its cap of {r['llm_visual']} slots, the rest hidden padding")
    checks = [r.get("flops_counted_equal") for r in res["methods"]] + [res["reference_flops_counted_equal"]]
    if checks[0] is not None:
        print(f"  FlopCounterMode equals the analytic count x batch for {sum(map(bool, checks))}/{len(checks)} "
              "forwards (reference and every method)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5, help="timed rounds on the stand-in")
    ap.add_argument("--batch", type=int, default=2, help="stand-in batch")
    ap.add_argument("--tiny-rounds", type=int, default=15)
    ap.add_argument("--tiny-batch", type=int, nargs="+", default=[1, 16], help="tiny-model batches (one run each)")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="auto")
    ap.add_argument("--only", choices=("tiny", "stand-in"), default=None)
    ap.add_argument("--llm-attention", choices=("eager", "sdpa"), default="eager",
                    help="the LLM attention (with sdpa, FastV runs its own eager attention against an SDPA reference)")
    ap.add_argument("--json", action="store_true", help="also print the results as JSON")
    args = ap.parse_args()
    torch.set_num_threads(2)
    precision = {"auto": resolve_precision("auto"), "fp32": "no", "bf16": "bf16"}[args.precision]
    bf16 = precision == "bf16"

    def amp():
        return torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()

    print(f"{cpu_model()}, {torch.get_num_threads()} threads, {'bf16 autocast' if bf16 else 'fp32'}, "
          f"torch {torch.__version__}; keep_ratio {KEEP} vs identity; attention: tower eager, "
          f"LLM {args.llm_attention}")
    load, loads = os.getloadavg(), []

    def sample():  # every 10 s: how busy the machine was while timing
        while True:
            time.sleep(10)
            loads.append(os.getloadavg()[0])
    threading.Thread(target=sample, daemon=True).start()
    at_7b = llava_7b_predictions()
    peak = matmul_peak(amp)
    results, verdicts = [], []
    if args.only in (None, "tiny"):
        model = tiny(args.llm_attention)
        for i, bsz in enumerate(args.tiny_batch):
            print(f"timing the tiny model, batch {bsz} ...", flush=True)
            results.append(measure("tiny (CLIP 4x128 @ 64 px, Llama 4x256)", model, bsz, args.tiny_rounds,
                                   args.warmup + 1, amp, check_flops=i == 0 and args.llm_attention == "eager"))
            verdicts.append(False)
    if args.only in (None, "stand-in"):
        print(f"timing the stand-in, batch {args.batch} ...", flush=True)
        results.append(measure("stand-in (CLIP 4x256 @ 336 px / 14, Llama 12x768)", stand_in(args.llm_attention),
                               args.batch, args.rounds, args.warmup, amp, check_flops=False))
        verdicts.append(True)
    peak = max(peak, matmul_peak(amp))
    print(f"a 2048 x 2048 matmul runs at {peak:.0f} GFLOP/s here (the better of two readings, before and after)")
    for res, verdict in zip(results, verdicts):
        report(res, verdict, at_7b)
    print("\n  pred. 7B: the saving the same FLOP count predicts on LLaVA-1.5-7B's shapes (vlkit.flops.llava_7b)")
    busiest = max(loads, default=load[0])
    print(f"  1-minute load average: {load[0]:.2f} at the start, at most {busiest:.2f} during the run "
          "(this run's 2 threads count ~2; above ~2.5 another job shared the cores: rerun)")
    if args.json:
        print(json.dumps({"precision": "bf16" if bf16 else "fp32", "llm_attention": args.llm_attention,
                          "cpu": cpu_model(), "matmul_gflops_per_s": peak, "max_load": busiest, "results": results,
                          "predicted_saving_llava_7b": at_7b}, indent=2))


if __name__ == "__main__":
    main()
