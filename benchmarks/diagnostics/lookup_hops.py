"""How far may the question's subject stand from the answer? A toy of notebook 03's binding lookup.

Not a speed benchmark: it explains why ``sqa.choice_answer`` restates the subject
(" triangle orange"). A fresh Llama of notebook 02's size reads an 8 x 8 "image" of tokens:
background everywhere, and k objects on 2 x 2 blocks, each patch one token for its
(colour, shape) class, as a CLIP patch holds both. Then a separator, the asked shape, ``--hops``
filler tokens (the "?" and assistant tag of a chat prompt) and the answer: the object's colour.
With no filler the answer is predicted from the shape token itself, whose own embedding is the
lookup's query; with one or two, the model must first copy the shape forward, then look up.

    .venv/bin/python benchmarks/diagnostics/lookup_hops.py --hops 0    # held-out accuracy every 250 steps
    .venv/bin/python benchmarks/diagnostics/lookup_hops.py --hops 2

Measured (16 examples per step, lr 1e-3, 3 objects, 500 held-out sequences; bag of attributes ~35%):
0 hops 100% after 250 steps; 1 hop 44.4 / 54.0% after 250 / 500; 2 hops 41.4 / 47.2 / 50.2% after
250 / 500 / 750 (~100 s per 250 steps on one core).
docs/findings_03.md: "The subject next to the answer".
"""
from __future__ import annotations

import argparse
import json
import time

import torch

N_COLOURS, N_SHAPES = 8, 6
BOS, BACKGROUND, SEP, FILLER, SHAPE0, COLOUR0, CLASS0 = 1, 4, 3, 5, 30, 10, 50


def batch(n: int, k: int, grid: int, hops: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` sequences ``BOS image SEP shape filler*hops`` and the colour of that shape's object."""
    xs, ys = [], []
    blocks = (grid // 2) ** 2
    for _ in range(n):
        shapes = torch.randperm(N_SHAPES, generator=g)[:k].tolist()
        colours = torch.randint(N_COLOURS, (k,), generator=g).tolist()
        image = [BACKGROUND] * grid * grid
        for cell, c, s in zip(torch.randperm(blocks, generator=g)[:k].tolist(), colours, shapes):
            r0, c0 = 2 * (cell // (grid // 2)), 2 * (cell % (grid // 2))
            for dr in (0, 1):
                for dc in (0, 1):
                    image[(r0 + dr) * grid + c0 + dc] = CLASS0 + c * N_SHAPES + s
        q = int(torch.randint(k, (1,), generator=g))
        xs.append([BOS, *image, SEP, SHAPE0 + shapes[q], *[FILLER + j for j in range(hops)]])
        ys.append(COLOUR0 + colours[q])
    return torch.tensor(xs), torch.tensor(ys)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--hops", type=int, default=0, help="tokens between the asked shape and the answer")
    p.add_argument("--steps", type=int, default=500)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--objects", type=int, default=3)
    p.add_argument("--grid", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    from transformers import LlamaConfig, LlamaForCausalLM

    from vlkit.backbones import BackboneConfig

    b = BackboneConfig.for_profile("full")  # notebook 02's Llama sizes, on a toy vocabulary
    model = LlamaForCausalLM(LlamaConfig(vocab_size=128, hidden_size=b.llm_hidden, intermediate_size=b.llm_intermediate,
                                         num_hidden_layers=b.llm_layers, num_attention_heads=b.llm_heads,
                                         num_key_value_heads=b.llm_heads, max_position_embeddings=256))
    opt = torch.optim.AdamW(model.parameters(), lr=a.lr, betas=(0.9, 0.95), weight_decay=0.1)
    train_g, test_g = torch.Generator().manual_seed(a.seed + 1), torch.Generator().manual_seed(10_000 + a.seed)
    x_test, y_test = batch(500, a.objects, a.grid, a.hops, test_g)
    t0, curve = time.perf_counter(), []
    for step in range(a.steps + 1):
        if step % 250 == 0 or step == a.steps:
            with torch.no_grad():
                acc = (model(input_ids=x_test).logits[:, -1].argmax(-1) == y_test).float().mean().item()
            curve.append({"step": step, "accuracy": round(100 * acc, 1), "s": round(time.perf_counter() - t0)})
            print(curve[-1], flush=True)
        if step == a.steps:
            break
        x, y = batch(a.batch, a.objects, a.grid, a.hops, train_g)
        loss = torch.nn.functional.cross_entropy(model(input_ids=x).logits[:, -1], y)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
    print(json.dumps({"hops": a.hops, "objects": a.objects, "batch": a.batch, "lr": a.lr, "curve": curve}))


if __name__ == "__main__":
    main()
