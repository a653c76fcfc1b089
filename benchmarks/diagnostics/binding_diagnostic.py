"""Where does attribute binding fail? Stage 2 on the binding questions alone (notebook 03's diagnostic).

Not a speed benchmark: it trains notebook 03's main variant (linear connector, from its stage 1) on
the ScienceQA-format *binding* questions only, then scores the binding test subset by likelihood,
with real and with blank images. It uses only the public core: the run is a
:class:`vlkit.stages.Stage` whose training data is :class:`BindingQuestions` (a data spec defined
here), so it is cached like notebook 03's stages.

  --fresh-llm   the same Llama architecture, randomly initialised (no notebook-02 pretraining)
  --llm PATH    another LLM checkpoint (a folder with its tokenizer)
  --train-seed  the training seed (data order, initialisation), apart from the data --seed

    .venv/bin/python benchmarks/diagnostics/binding_diagnostic.py --fresh-llm --steps 300
    .venv/bin/python benchmarks/diagnostics/binding_diagnostic.py --train-seed 1   # training noise, same data

One line of JSON per run (also appended to --out). docs/findings_03.md: "Where binding fails". The
earlier ``--oracle`` switch (true patch classes as visual tokens) patched the model's internals and
was retired with the core refactor; its results are recorded there, and the script at commit 649a84c.
"""
from __future__ import annotations

import argparse
import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch


@dataclass(frozen=True)
class BindingQuestions:
    """Training data: the binding questions of the ScienceQA-format train split, in notebook 03's format."""

    scienceqa: Any
    sqa_answer: str = "choice"

    def dataset(self, workdir: Path, progress: bool = True):
        from vlkit import atomic
        from vlkit.benchmarks import scienceqa as sqa
        from vlkit.llava_dataset import LlavaDataset
        from vlkit.training_data import scienceqa_to_llava
        from vlkit.world.scienceqa import ensure_scienceqa
        root = ensure_scienceqa(self.scienceqa)
        train = sqa.select(sqa.load_problems(root), split="train", category=sqa.BINDING_CATEGORY)
        path = Path(workdir) / "binding_train.json"
        atomic.write_json(path, scienceqa_to_llava(train, self.sqa_answer), indent=None)
        return LlavaDataset(path, image_folder=root)


def fresh_llm(cfg, seed: int, folder: Path) -> str:
    """A randomly initialised copy of notebook 02's Llama, saved as a checkpoint (with its tokenizer)."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from vlkit.build import backbone_paths
    paths = backbone_paths(cfg.model_spec())
    torch.manual_seed(seed)
    AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(paths.llm)).save_pretrained(folder)
    AutoTokenizer.from_pretrained(paths.tokenizer).save_pretrained(folder)
    return str(folder)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--profile", default="full", choices=("smoke", "full"))
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--seed", type=int, default=0, help="the config's seed: data, benchmark, backbones")
    p.add_argument("--train-seed", type=int, default=0, help="the training seed of both stages")
    p.add_argument("--lr", type=float, default=1e-3, help="LLM and connector learning rate")
    p.add_argument("--fresh-llm", action="store_true")
    p.add_argument("--llm", default=None)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default="artifacts/binding_diagnostic.jsonl", help="JSON lines, appended")
    a = p.parse_args()
    torch.set_num_threads(a.threads)

    import dataclasses

    from vlkit.benchmarks import scienceqa as sqa
    from vlkit.eval.scienceqa import baselines, binding_subset
    from vlkit.eval.scoring import rank_choices
    from vlkit.recipes import llava
    from vlkit.specs import ParamGroup
    from vlkit.stages import Stage, load_stage, stage_info
    from vlkit.world.scienceqa import ensure_scienceqa

    with tempfile.TemporaryDirectory() as tmp:
        cfg = llava.LlavaConfig.for_profile(a.profile, seed=a.seed, llm=a.llm, tokenizer=a.llm, progress=False)
        if a.fresh_llm:
            cfg = dataclasses.replace(cfg, llm=fresh_llm(cfg, a.train_seed, Path(tmp) / "llm"))
            cfg = dataclasses.replace(cfg, tokenizer=cfg.llm)
        main = cfg.stage2(llava.MAIN, a.train_seed)
        stage = Stage(model=main.model, init=main.init, label="stage 2 on binding questions", profile=cfg.profile,
                      train=main.train.replace(steps=a.steps, groups=(ParamGroup("connector", a.lr),
                                                                      ParamGroup("llm", a.lr))),
                      data=BindingQuestions(cfg.scienceqa, cfg.sqa_answer))
        model, proc = load_stage(stage, progress=False)
        info = stage_info(stage)
    root = ensure_scienceqa(cfg.scienceqa)
    test = binding_subset(sqa.select(sqa.load_problems(root), split="test"))
    base = baselines(root)
    out = {"fresh_llm": a.fresh_llm, "llm": a.llm, "steps": a.steps, "seed": a.seed, "train_seed": a.train_seed,
           "lr": a.lr, "train_s": round(info["seconds"], 1), "final_loss": sum(info["loss"][-20:]) / len(info["loss"][-20:]),
           "n_train": info["examples"], "n_test": len(test),
           **{k: base[k] for k in ("bag_of_attributes", "chance_binding")}}
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=cfg.mixed_precision == "bf16"):
        for blind in (False, True):
            picks = rank_choices(model, proc, test, root, blind=blind, batch_size=64, progress=False)
            out["binding" + "_blind" * blind] = 100 * sum(picks[q] == test[q]["answer"] for q in test) / len(test)
    print(json.dumps(out))
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    with open(a.out, "a", encoding="utf-8") as f:
        f.write(json.dumps(out) + "\n")


if __name__ == "__main__":
    main()
