"""Specs and their cache keys: every field that can change a result changes the key, the others do not,
checkpoints count by content, and bad names fail before anything trains."""
from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
import _plugins  # noqa: E402,F401
import _vltiny as T  # noqa: E402

from vlkit.cache import key_dict, spec_key  # noqa: E402
from vlkit.recipes import llava  # noqa: E402
from vlkit.specs import InsertionSpec, LoraSpec, ModelSpec, ParamGroup, TrainSpec  # noqa: E402

# Values a constrained field may take instead of its current one (others are derived from the type).
ALTERNATIVES = {"connector": ["mlp2x_gelu", "linear"], "compressor": ["test_halve", "identity"],
                "attention": ["sdpa", "eager"], "mixed_precision": ["bf16", "no"], "llm_quantization": ["nf4", None],
                "scoring": ["generate", "likelihood"], "split": ["val", "test"], "sqa_answer": ["answer", "choice"],
                "teacher": ["template"], "profile": ["full", "smoke"], "recipe": ["full"],
                "types": [("conversation",), ("conversation", "detail", "reasoning")],
                "name": ["connector", "llm", "lora", "test_residual"], "places": [("mlp",), ("attention",)],
                "towers": [("vision",), ("llm",)], "token_reduction": ["test_halve", None],
                "template": ["vicuna_v1", "auto"]}


def _alternatives(name: str, value):
    if name in ALTERNATIVES:
        return [v for v in ALTERNATIVES[name] if v != value]
    if isinstance(value, bool):
        return [not value]
    if isinstance(value, int):
        return [value + 1]
    if isinstance(value, float):
        return [value * 2 if value else 0.1]
    if isinstance(value, dict):
        return [{**value, "extra_option": 1}]
    if isinstance(value, tuple) and value and all(isinstance(v, float) for v in value):
        return [tuple(reversed(value))] if len(set(value)) > 1 else []
    if isinstance(value, str):
        return [value + "x"]
    return []


def perturbations(obj, path=""):
    """(path, copy of obj with one leaf field changed) for every leaf field reachable in obj; a change
    that the spec refuses as invalid is skipped."""
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        here = f"{path}{f.name}"
        if dataclasses.is_dataclass(value):
            candidates = ((p, new) for p, new in perturbations(value, here + "."))
        elif isinstance(value, tuple) and value and dataclasses.is_dataclass(value[0]):
            candidates = ((p, (new, *value[1:])) for p, new in perturbations(value[0], here + "[0]."))
        else:
            candidates = ((here, alt) for alt in _alternatives(f.name, value))
        for p, new in candidates:
            try:
                yield p, _replace(obj, f.name, new)
            except (ValueError, TypeError):
                continue


def _replace(obj, name, value):
    if not f_init(obj, name):
        new = dataclasses.replace(obj)
        object.__setattr__(new, name, value)
        return new
    return dataclasses.replace(obj, **{name: value})


def f_init(obj, name):
    return next(f for f in dataclasses.fields(obj) if f.name == name).init


def _runtime(obj, name):
    return not next(f for f in dataclasses.fields(obj) if f.name == name).metadata.get("key", True)


@pytest.fixture(scope="module")
def rows():
    cfg = llava.LlavaConfig.for_profile("smoke")
    return llava.plan(cfg, train_seeds=[0, 1])


def test_every_field_of_every_spec_changes_the_key(rows):
    qlora = next(r for r in rows if r.name.startswith("QLoRA")).evaluation
    main = rows[0].evaluation
    checked, leaves = 0, set()
    for ev in (main, qlora):
        base = spec_key(ev)
        for path, new in perturbations(ev):
            if key_dict(new) == key_dict(ev):
                continue  # normalised away by a __post_init__ (e.g. a derived resolution) or a runtime field
            leaves.add(path)
            assert spec_key(new) != base, f"changing {path} did not change the key"
            checked += 1
    # the perturbations reached every spec: model, train (and its groups and LoRA), data, stage 1, eval
    for expected in ("stage.model.connector", "stage.model.backbones.llm_layers", "stage.train.steps",
                     "stage.train.seed", "stage.train.groups[0].lr", "stage.train.lora.r", "stage.data.binding_repeats",
                     "stage.data.scienceqa.n_problems", "stage.init.train.steps", "stage.init.data.data.n_images",
                     "spec.batch_size", "spec.bench.scenes", "switches.token_reduction", "stage.model.max_length",
                     "stage.model.template"):
        assert expected in leaves, expected
    assert checked > 150


def test_runtime_fields_leave_the_key_alone(rows):
    ev = rows[0].evaluation
    quiet = dataclasses.replace(ev, stage=dataclasses.replace(
        ev.stage, label="renamed", train=dataclasses.replace(ev.stage.train, progress=not ev.stage.train.progress,
                                                             log_every=7)),
        spec=dataclasses.replace(ev.spec, progress=False))
    assert spec_key(quiet) == spec_key(ev)
    assert _runtime(ev.stage.train, "progress") and _runtime(ev.stage, "label")


def test_training_seeds_change_only_the_training(rows):
    s0, s1 = rows[0].evaluation.stage, rows[1].evaluation.stage
    assert s0.train.seed == 0 and s1.train.seed == 1 and s0.key != s1.key
    assert key_dict(s0.data) == key_dict(s1.data) and key_dict(s0.model) == key_dict(s1.model)
    assert s1.init.train.seed == 1  # stage 1 at the same training seed


def _tiny_checkpoint(path: Path, seed: int) -> None:
    _, llm = T.backbones(seed)
    llm.save_pretrained(path)


def test_a_checkpoint_counts_by_content_not_path(tmp_path, monkeypatch):
    monkeypatch.setenv("VLKIT_ARTIFACTS", str(tmp_path / "artifacts"))
    _tiny_checkpoint(tmp_path / "llm", seed=0)
    spec = ModelSpec(vision=str(tmp_path / "vision"), llm=str(tmp_path / "llm"), tokenizer=str(tmp_path / "llm"))
    first = spec_key(spec)
    assert spec_key(spec) == first  # remembered, stable
    _tiny_checkpoint(tmp_path / "llm", seed=1)  # retrained in place: same path, config and sizes
    assert spec_key(spec) != first
    second = spec_key(spec)
    (tmp_path / "llm").rename(tmp_path / "moved")
    assert spec_key(dataclasses.replace(spec, llm=str(tmp_path / "moved"), tokenizer=str(tmp_path / "moved"))) == second


@pytest.mark.parametrize("make,message", [
    (lambda: ModelSpec(backbones=1, connector="conv"), "unknown connector 'conv'; known connectors: .*linear"),
    (lambda: ModelSpec(backbones=1, compressor="zip"), "unknown compressor 'zip'; known compressors: .*identity"),
    (lambda: ModelSpec(backbones=1, attention="flashy"), "unknown attention function 'flashy'; known .*eager"),
    (lambda: ModelSpec(backbones=1, llm_quantization="fp4"), "unknown LLM quantization 'fp4'"),
    (lambda: ModelSpec(backbones=1, vision_attention="flash"), "unknown vision attention 'flash'; known .*eager, sdpa"),
    (lambda: ModelSpec(), "needs backbones"),
    (lambda: InsertionSpec("adapter9"), "unknown insertion 'adapter9'; known insertions: .*test_residual"),
    (lambda: InsertionSpec("test_residual", places=("ffn",)), "unknown insertion place 'ffn'"),
    (lambda: ModelSpec(backbones=1, insertions=(InsertionSpec("test_residual"), InsertionSpec("test_residual"))),
     "same tower, place and layer"),
    (lambda: ParamGroup("adapters", 1e-3), "unknown parameter group 'adapters'; known parameter groups: connector"),
    (lambda: LoraSpec(r=0), "invalid LoRA spec"),
    (lambda: TrainSpec(groups=(ParamGroup("llm", 1e-3),), steps=0, batch_size=1), "steps, batch_size"),
])
def test_bad_specs_fail_with_the_known_names(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_exactly_these_fields_are_left_out_of_keys():
    from vlkit.eval.bench import BenchSpec
    from vlkit.eval.suite import EvalSpec, Evaluation, Switches
    from vlkit.stages import Stage
    from vlkit.training_data import Captions, InstructionMix
    runtime = {cls.__name__: sorted(f.name for f in dataclasses.fields(cls) if not f.metadata.get("key", True))
               for cls in (ModelSpec, InsertionSpec, TrainSpec, ParamGroup, LoraSpec, Stage, EvalSpec, Evaluation,
                           Switches, BenchSpec, Captions, InstructionMix)}
    assert {k: v for k, v in runtime.items() if v} == {"TrainSpec": ["log_every", "num_workers", "progress"],
                                                        "Stage": ["label", "profile"], "EvalSpec": ["progress"]}
    checkpoints = sorted(f.name for f in dataclasses.fields(ModelSpec) if f.metadata.get("checkpoint"))
    assert checkpoints == ["llm", "tokenizer", "vision"]


def test_two_specs_of_the_same_shape_but_other_kinds_have_other_keys():
    @dataclasses.dataclass(frozen=True)
    class A:
        data: int = 1

    @dataclasses.dataclass(frozen=True)
    class B:
        data: int = 1
    assert spec_key(A()) != spec_key(B()) and spec_key(A()) == spec_key(A())
