"""Training throughput: VLModel vs stock transformers LlavaForConditionalGeneration (notebook 03).

Same tiny CLIP (4 layers x 128) + Llama (4 layers x 256), same 2-layer GELU projector (Llava's
only kind, so VLModel uses ``mlp2x_gelu``), same weights, same batch (32 x 128 tokens: 64 image
tokens + 64 text tokens). Both are timed in one process, alternating rounds so CPU contention
from other jobs hits both alike; the median step time counts. MFU = model FLOPs / time against
an fp32 matmul peak measured here with a large torch.matmul. A third model, ``vlkit-bf16``, is
the same VLModel (its own copy) trained under bf16 autocast, as notebook 03 trains where the
CPU computes bf16 natively (``LlavaConfig.mixed_precision="auto"``): its ratio to fp32 is the
mixed-precision speed-up. On a CPU without native bf16 (AVX2 only) it is left out: there oneDNN
emulates bf16 ~100x slower than fp32, which is why ``"auto"`` picks fp32.

    python benchmarks/bench_train_throughput.py [--rounds 5 --steps 3 --batch 32]
"""
from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch
from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

from vlkit.model import VLConfig, VLModel
from vlkit.train import bf16_is_native

VOCAB, IMAGE_ID, IMG, PATCH = 2048, 5, 64, 8


def configs():
    vision = CLIPVisionConfig(hidden_size=128, intermediate_size=512, num_hidden_layers=4, num_attention_heads=4,
                              image_size=IMG, patch_size=PATCH)
    text = LlamaConfig(vocab_size=VOCAB, hidden_size=256, intermediate_size=688, num_hidden_layers=4,
                       num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=256)
    return vision, text


def build_pair():
    vision, text = configs()
    torch.manual_seed(0)
    llava = LlavaForConditionalGeneration(LlavaConfig(vision_config=vision.to_dict(), text_config=text.to_dict(),
                                                      image_token_id=IMAGE_ID, projector_hidden_act="gelu",
                                                      vision_feature_layer=-2,
                                                      vision_feature_select_strategy="default"))
    llava.set_attn_implementation("sdpa")
    ours = VLModel(VLConfig(vision_config=vision.to_dict(), text_config=text.to_dict(), connector="mlp2x_gelu",
                            image_token_id=IMAGE_ID))
    # identical weights: copy Llava's into ours (names differ only by prefix)
    src = llava.state_dict()
    mapping = {"vision_tower.": "model.vision_tower.", "language_model.model.": "model.language_model.",
               "language_model.lm_head.": "lm_head.", "connector.fc1.": "model.multi_modal_projector.linear_1.",
               "connector.fc2.": "model.multi_modal_projector.linear_2."}
    new = {}
    for k in ours.state_dict():
        for a, b in mapping.items():
            if k.startswith(a):
                new[k] = src[b + k[len(a):]]
    ours.load_state_dict(new, strict=True)
    return llava, ours


def batch(bsz: int, seq: int = 128):
    n_img = (IMG // PATCH) ** 2
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(10, VOCAB, (bsz, seq), generator=g)
    ids[:, 1:1 + n_img] = IMAGE_ID
    labels = ids.clone()
    labels[:, : 1 + n_img] = -100
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels,
            "pixel_values": torch.randn(bsz, 3, IMG, IMG, generator=g)}


def matmul_peak(n: int = 2048, reps: int = 20, dtype: torch.dtype = torch.float32) -> float:
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    torch.matmul(a, b)
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        torch.matmul(a, b)
        times.append(time.perf_counter() - t)
    return 2 * n ** 3 / min(times)


def train_flops(model_vision, vcfg, tcfg, bsz: int, seq: int) -> float:
    """6 x (matmul params x tokens) + attention scores/values, for vision tower, projector and LLM."""
    n_vis = (IMG // PATCH) ** 2 + 1
    vis_params = sum(p.numel() for n, p in model_vision.named_parameters()
                     if p.dim() == 2 and "embedding" not in n)
    llm_params = tcfg.num_hidden_layers * (4 * tcfg.hidden_size ** 2 + 3 * tcfg.hidden_size * tcfg.intermediate_size)
    head = tcfg.hidden_size * tcfg.vocab_size
    proj = vcfg.hidden_size * tcfg.hidden_size + tcfg.hidden_size ** 2
    dense = 6 * (vis_params * bsz * n_vis + proj * bsz * (n_vis - 1) + (llm_params + head) * bsz * seq)
    attn = 3 * 4 * bsz * (vcfg.num_hidden_layers * n_vis ** 2 * vcfg.hidden_size
                          + tcfg.num_hidden_layers * seq ** 2 * tcfg.hidden_size)
    return dense + attn


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    llava, ours = build_pair()
    b = batch(args.batch)
    with torch.no_grad():
        la, oa = llava(**b).loss, ours(**b).loss
    print(f"same loss on same weights: llava {la.item():.6f} vlkit {oa.item():.6f}")
    models = {"llava": llava, "vlkit": ours}
    if bf16_is_native():
        models["vlkit-bf16"] = copy.deepcopy(ours)
    else:
        print("this CPU has no native bf16 (vlkit.train.bf16_is_native): vlkit-bf16 left out")
    opts = {k: torch.optim.AdamW(m.parameters(), lr=1e-4) for k, m in models.items()}

    def step(k):
        m, o = models[k], opts[k]
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=k.endswith("bf16")):
            loss = m(**b).loss
        loss.backward()
        o.step()
        o.zero_grad(set_to_none=True)

    for k in models:  # warm-up
        step(k)
        step(k)
    times = {k: [] for k in models}
    for _ in range(args.rounds):
        for k in models:
            t = time.perf_counter()
            for _ in range(args.steps):
                step(k)
            times[k].append((time.perf_counter() - t) / args.steps)
    peak = matmul_peak()
    # what "auto" precision decides on: emulated bf16 is ~100x slower than fp32 on AVX2-only CPUs
    bf16_peak = matmul_peak(512, 5, torch.bfloat16)
    print(f"bf16 / fp32 matmul speed at 512x512: {bf16_peak / matmul_peak(512, 5):.3g} "
          f"(native bf16 here: {bf16_is_native()})")
    vcfg, tcfg = configs()
    flops = train_flops(ours.vision_tower, vcfg, tcfg, args.batch, 128)
    n_params = sum(p.numel() for p in ours.parameters())
    tok = args.batch * 128
    print(f"params: {n_params / 1e6:.2f}M  batch {args.batch} x 128 tokens  threads {args.threads}")
    print(f"fp32 matmul peak: {peak / 1e9:.0f} GFLOP/s; model FLOPs per step {flops / 1e9:.1f} GFLOP")
    res, best = {}, {}
    for k in models:
        med, fast = statistics.median(times[k]), min(times[k])
        res[k], best[k] = tok / med, tok / fast
        print(f"{k:10s} median step {med * 1e3:7.1f} ms  {res[k]:8.0f} tokens/s  MFU {flops / med / peak:5.1%}"
              f"  | best step {fast * 1e3:7.1f} ms {best[k]:8.0f} tokens/s  MFU {flops / fast / peak:5.1%}"
              f"  (rounds: {', '.join(f'{t * 1e3:.0f}' for t in times[k])} ms)")
    # under CPU contention from other jobs the best round is the steadier estimate
    print(f"ratio vlkit / llava tokens/s: median {res['vlkit'] / res['llava']:.3f}, "
          f"best {best['vlkit'] / best['llava']:.3f} (target >= 0.95)")
    if "vlkit-bf16" in res:
        print(f"ratio vlkit bf16 / fp32 tokens/s: median {res['vlkit-bf16'] / res['vlkit']:.3f}, "
              f"best {best['vlkit-bf16'] / best['vlkit']:.3f}")


if __name__ == "__main__":
    main()
