"""Attention explorer redraw time per view (vlkit.widgets; notebooks 06, 07).

Every interaction redraws one view from the explorer's cache (no model call): a matplotlib figure drawn
and encoded as the PNG the widget shows. The target is well under 300 ms a redraw on a 2-core CPU. Two
random models, since the cost follows the picture, not the weights: the browser test's (an 8x8 patch grid,
3 LLM layers) and one with LLaVA-1.5's grid (336 px, 14 px patches: 24x24 = 576 visual tokens) and VMTC at
50%, so that every built-in view is drawn. Each view is redrawn ``--rounds`` times by moving its layer
slider (the "kept + clusters" view has none: redrawn as it is), with the explorer's memo of recent pictures
off, so that every redraw draws; medians count. Also reported: the one-off build (the capture: generation
+ vision tower, and the first picture).

    python benchmarks/bench_explorer.py [--rounds 15]
"""
from __future__ import annotations

import argparse
import random
import statistics
import time

import torch
from transformers import CLIPVisionConfig, CLIPVisionModel, LlamaConfig, LlamaForCausalLM

from vlkit.backbones.checkpoints import image_processor
from vlkit.model import VLModel
from vlkit.processor import VLProcessor
from vlkit.tokenizer import train_tokenizer
from vlkit.widgets import AttentionExplorer
from vlkit.world.scenes import WorldConfig, render, sample_scene

PROMPT = "what shapes are in the image?"


def random_model(image_size: int, patch_size: int, llm_layers: int, width: int):
    """A random VLModel and its processor: CLIP 2 x ``width // 2`` at ``image_size`` px, Llama ``llm_layers`` x ``width``."""
    torch.manual_seed(0)
    tokenizer = train_tokenizer([f"{PROMPT} a red circle and a blue square."] * 4, vocab_size=300)
    vision = CLIPVisionModel(CLIPVisionConfig(
        hidden_size=width // 2, intermediate_size=width, num_hidden_layers=2, num_attention_heads=2,
        image_size=image_size, patch_size=patch_size))
    llm = LlamaForCausalLM(LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=width, intermediate_size=2 * width, num_hidden_layers=llm_layers,
        num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=1024))
    model = VLModel.from_backbones(vision, llm, tokenizer).eval()
    return model, VLProcessor.for_model(model, image_processor(image_size), tokenizer)


def redraw_ms(explorer: AttentionExplorer, rounds: int) -> dict[str, float]:
    """Median milliseconds of one redraw per view, each triggered as the widget's own control would."""
    out = {}
    for name, view in explorer.views.items():
        explorer.view.value = name
        times = []
        for i in range(rounds + 1):  # the first is a warm-up
            if view.tower is None:
                explorer._redraw()
            else:
                explorer.layer.value = i % (explorer.layer.max + 1)
            times.append(explorer.redraw_ms)
        out[name] = statistics.median(times[1:])
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=15)
    args = ap.parse_args()
    torch.set_num_threads(1)  # as the kernel of a notebook on a shared 2-core machine
    image = render(sample_scene(random.Random(3), WorldConfig()), resolution=336)
    for label, (size, patch, layers, width, reduction) in {
            "browser-test model, 8x8 grid": (32, 4, 3, 64, None),
            "LLaVA-1.5 grid, 24x24 = 576 tokens, VMTC 50%": (336, 14, 4, 256, ("vmtc", {"keep_ratio": 0.5}))}.items():
        model, processor = random_model(size, patch, layers, width)
        if reduction:
            model.set_token_reduction(reduction[0], **reduction[1])
        start = time.perf_counter()
        explorer = AttentionExplorer(model, processor, image, PROMPT, max_new_tokens=8, memo=0)
        built = time.perf_counter() - start
        print(f"{label}: built (capture + first pictures) in {built:.2f} s")
        for name, ms in redraw_ms(explorer, args.rounds).items():
            print(f"  {name:28s} median redraw {ms:6.1f} ms")


if __name__ == "__main__":
    main()
