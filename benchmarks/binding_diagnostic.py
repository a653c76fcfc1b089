"""Where does attribute binding fail? Stage 2 on the binding questions alone (notebook 03's diagnostic).

Not a speed benchmark: it trains notebook 03's main variant (linear connector, stage-1 connector
loaded) on the ScienceQA-format *binding* questions only, then scores the binding test subset
by likelihood, with real and with blank images. Switches isolate the two halves of the model:

  --oracle      visual tokens = a learned embedding of each patch's true "colour shape" class
                (the labels of notebook 02's dense loss): perfect vision, nothing to align
  --fresh-llm   the same Llama architecture, randomly initialised (no notebook-02 pretraining)
  --llm PATH    another LLM checkpoint (a folder with its tokenizer), e.g. one pretrained on a
                different corpus; stage 1 is retrained for it (cached like notebook 03's)

    .venv/bin/python benchmarks/binding_diagnostic.py --oracle --fresh-llm --steps 300 --seed 0
    .venv/bin/python benchmarks/binding_diagnostic.py --train-seed 1   # stage-2 noise, same data

One line of JSON per run (also appended to --out). README: "Where binding fails".
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import nn


def _key(image) -> str:
    return hashlib.md5(image.tobytes()).hexdigest()


class OracleTokens(nn.Module):
    """Stands in for the connector: one learned embedding per patch class (background + colour-shape)."""

    uses_text = False

    def __init__(self, n_classes: int, width: int, num_patches: int):
        super().__init__()
        self.emb, self.num_patches = nn.Embedding(n_classes, width), num_patches

    def num_tokens(self, num_patches: int) -> int:
        return self.num_patches


def use_oracle(model, proc, cfg) -> None:
    """Feed ``model`` the true patch classes of each image instead of the vision tower's features.

    Images are recognised by their pixels (every benchmark image is rendered from a known
    scene); a blank image maps to all-background.
    """
    from vlkit import llava, world as W
    from vlkit.backbones.clip import conjunction_classes, patch_labels
    from vlkit.vlm_eval import blank_image
    wcfg, grid = cfg.scienceqa.world, int(model.num_patches ** 0.5)
    scenes = json.loads((llava.scienceqa_dir(cfg) / "scenes.json").read_text())
    labels = {_key(blank_image(wcfg.resolution)): torch.zeros(grid * grid, dtype=torch.long)}
    for s in scenes.values():
        scene = W.Scene.from_dict(s)
        image = W.render(scene, wcfg.resolution)
        labels[_key(image)] = patch_labels(scene, wcfg, grid, image)
    model.connector = OracleTokens(len(conjunction_classes(wcfg)), model.config.text_config.hidden_size,
                                   model.num_patches)
    current = {}
    call = type(proc).__call__

    def remember(self, conversations, images=None, **kw):
        current["labels"] = torch.stack([labels[_key(im)] for im in images if im is not None]) if images else None
        return call(self, conversations, images, **kw)

    type(proc).__call__ = remember
    model.encode_images = lambda pixel_values, text_embeds=None, text_mask=None: model.connector.emb(current["labels"])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--seed", type=int, default=0, help="the config's seed: data, backbones (built if new), stage 1")
    p.add_argument("--train-seed", type=int, default=None,
                   help="stage 2's seed (data order, initialisation); default --seed")
    p.add_argument("--lr", type=float, default=1e-3, help="LLM and connector learning rate")
    p.add_argument("--oracle", action="store_true")
    p.add_argument("--fresh-llm", action="store_true")
    p.add_argument("--llm", default=None)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default="artifacts/binding_diagnostic.jsonl", help="JSON lines, appended")
    a = p.parse_args()
    torch.set_num_threads(a.threads)

    from transformers import AutoModelForCausalLM

    from vlkit import atomic, llava, vlm_eval
    from vlkit.benchmarks import scienceqa as sqa
    from vlkit.llava_dataset import LlavaDataset
    from vlkit.train import train

    cfg = llava.LlavaConfig.for_profile("full", seed=a.seed, llm=a.llm, progress=False)
    root = llava.scienceqa_dir(cfg)
    problems = sqa.load_problems(root)
    train_split = sqa.select(problems, split="train", category=sqa.BINDING_CATEGORY)
    test = vlm_eval.binding_subset(sqa.select(problems, split="test"))
    model, proc = llava.build_model(cfg, "linear")
    model.connector.load_state_dict(load_file(llava.ensure_stage1(cfg, "linear") / "connector.safetensors"))
    if a.fresh_llm:
        torch.manual_seed(a.seed)
        impl = model.language_model.config._attn_implementation
        model.language_model = AutoModelForCausalLM.from_config(model.language_model.config)
        model.language_model.set_attn_implementation(impl)
    if a.oracle:
        use_oracle(model, proc, cfg)
    with tempfile.TemporaryDirectory() as d:
        records = Path(d) / "binding_train.json"
        atomic.write_json(records, llava.scienceqa_to_llava(train_split, "choice"), indent=None)
        ds = LlavaDataset(records, image_folder=root)
        tc = llava._train_config(cfg, "connector+llm", a.steps, cfg.stage2_batch, lr_connector=a.lr, lr_llm=a.lr)
        tc = dataclasses.replace(tc, seed=a.seed if a.train_seed is None else a.train_seed)
        t0 = time.perf_counter()
        r = train(model, ds, tc, processor=proc)
    base = vlm_eval.baselines(root)
    out = {"oracle": a.oracle, "fresh_llm": a.fresh_llm, "llm": a.llm, "steps": a.steps, "seed": a.seed,
           "train_seed": tc.seed, "lr": a.lr, "train_s": round(time.perf_counter() - t0, 1),
           "final_loss": sum(r.losses[-20:]) / len(r.losses[-20:]),
           "n_train": len(train_split), "n_test": len(test),
           **{k: base[k] for k in ("bag_of_attributes", "chance_binding")}}
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=cfg.mixed_precision == "bf16"):
        for blind in (False, True):
            picks = vlm_eval.rank_choices(model, proc, test, root, blind=blind, batch_size=64, progress=False)
            out["binding" + "_blind" * blind] = 100 * sum(picks[q] == test[q]["answer"] for q in test) / len(test)
    print(json.dumps(out))
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    with open(a.out, "a", encoding="utf-8") as f:
        f.write(json.dumps(out) + "\n")


if __name__ == "__main__":
    main()
