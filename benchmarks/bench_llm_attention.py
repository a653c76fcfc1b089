"""The LLM's attention function in notebook 03's training step: SDPA vs eager (``LlavaConfig.llm_attention``).

Same VLModel at notebook 03's sizes (tiny CLIP 4 x 128 at 64 px -> 64 visual tokens, Llama
4 x 256, vocab 771), connector + LLM trained as in stage 2, a batch of 16 x 166 tokens with
right padding, under the precision notebook 03 trains in (bf16 autocast where the CPU computes
bf16 natively). Per batch the three attention paths run in turn (SDPA's default kernel, SDPA
restricted to its math backend, transformers' eager attention), so CPU contention hits all
alike; the median step counts. On the 2-core AVX-512 CPU of the reference runs the bf16 SDPA
backward is the slow part: eager is what notebook 03 uses there.

    python benchmarks/bench_llm_attention.py [--steps 24 --batch 16]
"""
from __future__ import annotations

import argparse
import contextlib
import statistics
import time

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from transformers import CLIPVisionConfig, LlamaConfig

from vlkit.model import VLConfig, VLModel
from vlkit.train import bf16_is_native

VOCAB, IMAGE_ID, N_IMAGE = 771, 5, 64


def build() -> VLModel:
    vision = CLIPVisionConfig(hidden_size=128, intermediate_size=512, num_hidden_layers=4, num_attention_heads=4,
                              image_size=64, patch_size=8)
    text = LlamaConfig(vocab_size=VOCAB, hidden_size=256, intermediate_size=688, num_hidden_layers=4,
                       num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=1024)
    torch.manual_seed(0)
    model = VLModel(VLConfig(vision_config=vision.to_dict(), text_config=text.to_dict(), image_token_id=IMAGE_ID))
    model.vision_tower.requires_grad_(False)  # stage 2: connector + LLM
    return model.train()


def batch(bsz: int, seq: int = 166) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(10, VOCAB, (bsz, seq), generator=g)
    ids[:, 1:1 + N_IMAGE] = IMAGE_ID
    lengths = torch.randint(N_IMAGE + 40, seq + 1, (bsz,), generator=g)
    mask = (torch.arange(seq) < lengths[:, None]).long()
    labels = ids.masked_fill(mask == 0, -100)
    labels[:, : 1 + N_IMAGE + 30] = -100
    return {"input_ids": ids.masked_fill(mask == 0, 0), "attention_mask": mask, "labels": labels,
            "pixel_values": torch.randn(bsz, 3, 64, 64, generator=g)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=24)
    ap.add_argument("--batch", type=int, default=16)
    args = ap.parse_args()
    torch.set_num_threads(min(2, torch.get_num_threads()))
    model, b = build(), batch(args.batch)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=0.0)
    bf16 = bf16_is_native()
    modes = {"sdpa": ("sdpa", contextlib.nullcontext), "sdpa (math backend)": ("sdpa", lambda: sdpa_kernel(SDPBackend.MATH)),
             "eager": ("eager", contextlib.nullcontext)}
    times: dict[str, list[float]] = {k: [] for k in modes}
    losses: dict[str, float] = {}
    for step in range(args.steps + 2):
        for name, (impl, ctx) in modes.items():
            model.language_model.set_attn_implementation(impl)
            t = time.perf_counter()
            with ctx(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                loss = model(**b).loss
                loss.backward()
            opt.step()
            opt.zero_grad()
            if step >= 2:  # the first steps warm up kernels and allocator
                times[name].append(time.perf_counter() - t)
            losses[name] = loss.item()
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"training step, batch {args.batch} x {b['input_ids'].shape[1]} tokens, "
          f"{'bf16 autocast' if bf16 else 'fp32'}, median of {args.steps}:")
    for k, v in med.items():
        print(f"  {k:>20}: {v * 1000:6.0f} ms   ({med['sdpa'] / v:.2f}x sdpa's speed; loss {losses[k]:.4f})")


if __name__ == "__main__":
    main()
