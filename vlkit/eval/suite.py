"""One cached evaluation for every paper: any trained stage, any evaluation spec (notebooks 03-08).

:func:`evaluate` takes an :class:`Evaluation` (a trained :class:`vlkit.stages.Stage`, an
:class:`EvalSpec` and optional training-free :class:`Switches`) and returns its raw result, cached
under ``artifacts/<profile>/eval-<key>/`` keyed by all three (so a compressor switched on at
evaluation time gets its own result). It imports no paper's recipe: the common suite is ScienceQA's
columns, binding, the image-blind model and the bag-of-attributes baseline, with LLaVA-Bench-style
questions and the efficiency measurements as options.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from vlkit import atomic, cache, paths
from vlkit.benchmarks import scienceqa as sqa
from vlkit.eval.bench import BenchSpec, answer_bench, bench_questions
from vlkit.eval.efficiency import prefill_flops, prefill_latency
from vlkit.eval.scienceqa import SCORINGS, answer_problems, binding_subset, subset_accuracy
from vlkit.eval.scoring import problem_images
from vlkit.specs import PRECISIONS, runtime
from vlkit.stages import Stage


@dataclass(frozen=True)
class Switches:
    """Training-free changes to a trained model before it is evaluated (notebooks 06, 07).

    ``token_reduction``: a compressor name for :meth:`vlkit.model.VLModel.set_token_reduction`;
    ``attention``: an attention function for the LLM (:func:`vlkit.attention.set_attention`).
    """

    token_reduction: str | None = None
    token_reduction_options: dict = field(default_factory=dict)
    attention: str | None = None
    attention_options: dict = field(default_factory=dict)

    @property
    def image_only(self) -> bool:
        """Whether these switches change only what the model sees of an image (a token reduction, no
        attention change): a problem without an image is then answered as without them."""
        return self.token_reduction is not None and self.attention is None

    def apply(self, model) -> None:
        if self.token_reduction is not None:
            model.set_token_reduction(self.token_reduction, **self.token_reduction_options)
        if self.attention is not None:
            from vlkit.attention import set_attention
            set_attention(model.language_model, self.attention)
            model.config.llm_attn_implementation = self.attention
            model.language_model.config.vlkit_attention_kwargs = dict(self.attention_options)


@dataclass(frozen=True)
class EvalSpec:
    """What the common suite measures (notebook 03).

    ``scienceqa``: the benchmark's config (its ``split`` is scored); ``scoring``: ``"likelihood"``
    (option likelihood) or ``"generate"`` (LLaVA's "The answer is B."); ``blind``: also answer the
    image problems with blank images; ``bench``: LLaVA-Bench-style questions (None: skipped);
    ``efficiency``: prefill FLOPs and latency. ``mixed_precision`` as in :class:`vlkit.specs.TrainSpec`.
    """

    scienceqa: Any
    split: str = "test"
    scoring: str = "likelihood"
    max_new_tokens: int = 24
    blind: bool = True
    bench: BenchSpec | None = None
    batch_size: int = 64
    mixed_precision: str = "auto"
    efficiency: bool = True
    progress: bool = runtime(True)

    def __post_init__(self):
        if self.scoring not in SCORINGS:
            raise ValueError(f"unknown scoring {self.scoring!r}; use one of {', '.join(SCORINGS)}")
        if self.split not in sqa.SPLITS:
            raise ValueError(f"unknown split {self.split!r}; use one of {', '.join(sqa.SPLITS)}")
        if self.mixed_precision not in PRECISIONS:
            raise ValueError(f"mixed_precision must be one of {PRECISIONS}, got {self.mixed_precision!r}")
        from vlkit.train.hardware import resolve_precision
        object.__setattr__(self, "mixed_precision", resolve_precision(self.mixed_precision))


@dataclass(frozen=True)
class Evaluation:
    """A trained stage, evaluated by a spec, with optional switches (notebook 03)."""

    stage: Stage
    spec: EvalSpec
    switches: Switches = field(default_factory=Switches)

    @property
    def key(self) -> str:
        return cache.spec_key(self)

    @property
    def path(self) -> Path:
        return cache.cache_path(paths.artifacts_dir(self.stage.profile), "eval", None, key=self.key)

    def is_done(self) -> bool:
        return cache.is_cached(self.path)


def _efficiency_batch(processor, problems: dict[str, dict], root, n: int = 8) -> dict | None:
    """The prompts of the first ``n`` image problems, as the model sees them before answering."""
    pids = [pid for pid, p in problems.items() if p["image"]][:n]
    if not pids:
        return None
    sub = {pid: problems[pid] for pid in pids}
    convs = [[{"from": "human", "value": sqa.choice_prompt(p)}] for p in sub.values()]
    batch = processor(convs, problem_images(sub, root), add_generation_prompt=True)
    batch.pop("labels", None)
    return batch


def evaluate(ev: Evaluation) -> dict:
    """Answer the suite with the trained model of ``ev.stage``; cached as ``result.json`` (notebook 03).

    Returns ``scienceqa`` (score columns), ``binding`` (accuracy % on the binding subset), with
    ``scienceqa_blind`` / ``binding_blind`` when ``blind``, ``bench`` (relative scores) and
    ``bench_answers`` when ``bench``, ``answers`` / ``answers_blind`` (pid -> text),
    ``prefill_flops`` and ``latency`` when ``efficiency``, and ``seconds`` (of this evaluation: loading
    the trained model and answering, not training it).

    With image-only switches (:attr:`Switches.image_only`: a token reduction) only the problems with an
    image are answered; the others take the answers of the same stage and spec without switches,
    evaluated first when not cached.
    """
    from vlkit.benchmarks import llava_bench as lb
    from vlkit.stages import load_stage, train_stage
    from vlkit.world.scienceqa import ensure_scienceqa
    spec = ev.spec

    # a token reduction changes only the image problems: the others keep the unswitched model's answers
    # (cached, the reference such switches are compared with), so each compressor setting costs only them
    unswitched = evaluate(Evaluation(ev.stage, spec)) if ev.switches.image_only and not ev.is_done() else None

    def build(tmp: Path) -> None:
        train_stage(ev.stage, progress=spec.progress)  # training is not part of the evaluation's seconds
        t0 = time.perf_counter()
        model, proc = load_stage(ev.stage, progress=spec.progress)
        ev.switches.apply(model)
        root = ensure_scienceqa(spec.scienceqa)
        test = sqa.select(sqa.load_problems(root), split=spec.split)
        kw = dict(scoring=spec.scoring, batch_size=spec.batch_size, max_new_tokens=spec.max_new_tokens,
                  progress=spec.progress)
        result: dict[str, Any] = {}
        # the matmuls in the precision the model trained in
        autocast = torch.autocast(model.device.type, dtype=torch.bfloat16, enabled=spec.mixed_precision == "bf16")
        with autocast:
            if unswitched is None:
                answers = answer_problems(model, proc, test, root, **kw)
            else:
                seen = answer_problems(model, proc, sqa.select(test, has_image=True), root, **kw)
                answers = {pid: seen.get(pid, unswitched["answers"][pid]) for pid in test}
            binding = binding_subset(test)
            result.update(scienceqa=sqa.score(test, answers, split=None), binding=subset_accuracy(binding, answers),
                          answers=answers)
            if spec.blind:  # only problems with an image change; the others keep their answers
                blind = answer_problems(model, proc, sqa.select(test, has_image=True), root, blind=True, **kw)
                blinded = {**answers, **blind}
                result.update(scienceqa_blind=sqa.score(test, blinded, split=None),
                              binding_blind=subset_accuracy(binding, blinded), answers_blind=blind)
            if spec.bench is not None:
                records, images = bench_questions(spec.bench, spec.progress)
                judged = answer_bench(model, proc, records, images, spec.batch_size, spec.bench.max_new_tokens,
                                      spec.progress)
                result["bench"] = lb.relative_scores(lb.evaluate(judged))
                result["bench_answers"] = [{k: r[k] for k in ("question_id", "type", "question", "answer", "reference")}
                                           for r in judged]
            result["seconds"] = time.perf_counter() - t0
            if spec.efficiency and (batch := _efficiency_batch(proc, test, root)) is not None:
                result["prefill_flops"] = prefill_flops(model, {k: v[:1] for k, v in batch.items()})
                result["latency"] = prefill_latency(model, batch)
        atomic.write_json(tmp / "result.json", result, indent=None)

    path = cache.cached(paths.artifacts_dir(ev.stage.profile), "eval", ev, build, key=ev.key)
    return json.loads((path / "result.json").read_text())
