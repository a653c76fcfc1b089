"""Notebook 03's recipe on tiny backbones, through the core: stage 1 trains the connector only, stages
and evaluations are cached, results are written in the schema, the image-blind baseline really
blanks the image, and the KV-cache scorer equals whole conversations."""
from __future__ import annotations

import dataclasses
import json

import matplotlib
import pytest
import torch
from safetensors.torch import load_file

matplotlib.use("Agg")

import _vltiny as T  # noqa: E402
from vlkit import cache, experiment, results  # noqa: E402
from vlkit import train as train_mod  # noqa: E402
from vlkit.backbones import image_processor  # noqa: E402
from vlkit.benchmarks import scienceqa as sqa  # noqa: E402
from vlkit.data import DataConfig  # noqa: E402
from vlkit.eval import scienceqa as esqa  # noqa: E402
from vlkit.eval import scoring, tables  # noqa: E402
from vlkit.recipes import llava  # noqa: E402
from vlkit.stages import load_stage, train_stage  # noqa: E402
from vlkit.training_data import scienceqa_to_llava  # noqa: E402
from vlkit.world.scienceqa import ensure_scienceqa  # noqa: E402

VARIANT = llava.Variant("tiny")


@pytest.fixture(scope="module")
def cfg(tmp_path_factory):
    """A LlavaConfig on 16-px tiny backbones saved like ensure_backbones' folders, 16 images."""
    root = tmp_path_factory.mktemp("llava")
    vision, llm = T.backbones()
    vision.save_pretrained(root / "vision")
    image_processor(16).save_pretrained(root / "vision")
    llm.save_pretrained(root / "llm")
    T.tokenizer().save_pretrained(root / "tokenizer")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("VLKIT_ARTIFACTS", str(root / "artifacts"))
        data = DataConfig.for_profile("smoke", n_images=16, write_hf=False)
        yield llava.LlavaConfig.for_profile(
            "smoke", vision=str(root / "vision"), llm=str(root / "llm"), tokenizer=str(root / "tokenizer"),
            data=data, n_problems=30, stage1_steps=2, stage2_steps=2, stage1_batch=2, stage2_batch=2,
            max_length=512, bench_scenes=1, bench_max_new_tokens=4, sqa_max_new_tokens=4)


def _root(cfg):
    return ensure_scienceqa(cfg.scienceqa)


def test_stage1_trains_only_the_connector(cfg, monkeypatch):
    seen = {}
    real = train_mod.train

    def spy(model, ds, spec, **kw):
        before = {n: p.detach().clone() for n, p in model.named_parameters()}
        r = real(model, ds, spec, **kw)
        seen["changed"] = {n for n, p in model.named_parameters() if not torch.equal(before[n], p)}
        seen["trainable"] = {n for n, p in model.named_parameters() if p.requires_grad}
        return r

    monkeypatch.setattr(train_mod, "train", spy)
    path = train_stage(cfg.stage1("mlp2x_gelu"))
    assert seen["changed"] and all(n.startswith("connector.") for n in seen["changed"])
    assert seen["trainable"] and all(n.startswith("connector.") for n in seen["trainable"])
    assert set(load_file(path / "trainable.safetensors")) == seen["trainable"]
    losses = json.loads((path / "losses.json").read_text())
    assert len(losses["loss"]) == 2 and losses["seconds_per_step"] > 0 and losses["memory_method"]


def test_stage2_is_cached_and_loads_what_it_trained(cfg):
    stage = cfg.stage2(VARIANT)
    before = cache.BUILDS["stage"]
    p1 = train_stage(stage)
    built = cache.BUILDS["stage"] - before
    assert built in (1, 2)  # stage 2, and its stage 1 unless an earlier test built it
    p2 = train_stage(stage)
    assert p2 == p1 and cache.BUILDS["stage"] - before == built  # the second call trained nothing
    model, _ = load_stage(stage)
    saved = load_file(p1 / "trainable.safetensors")
    params = dict(model.named_parameters())
    assert any(n.startswith("language_model.") for n in saved)  # stage 2 trains the LLM too
    assert all(torch.equal(params[n], t) for n, t in saved.items())
    assert cache.BUILDS["stage"] - before == built  # loading did not retrain
    # another training seed is another run, of both stages, on the same data
    before = cache.BUILDS["stage"]
    train_stage(cfg.stage2(VARIANT, seed=1))
    assert cache.BUILDS["stage"] - before == 2


def test_qlora_stage_loads_in_4bit_with_its_adapters(cfg):
    import bitsandbytes as bnb
    variant = llava.Variant("tiny qlora", recipe="qlora")
    stage = cfg.stage2(variant)
    model, _ = load_stage(stage)
    assert any(isinstance(m, bnb.nn.Linear4bit) for m in model.language_model.modules())
    saved = load_file(stage.path / "trainable.safetensors")
    assert any("lora_" in n for n in saved) and not any("base_layer" in n for n in saved)
    params = dict(model.named_parameters())
    assert all(torch.equal(params[n], t) for n, t in saved.items())


@pytest.mark.parametrize("style", ["answer", "solution-first", "choice"])
def test_scienceqa_to_llava_round_trip(cfg, style):
    root = _root(cfg)
    problems = sqa.select(sqa.load_problems(root), split="train")
    records = scienceqa_to_llava(problems, style)
    assert [r["id"] for r in records] == list(problems)
    for rec in records:
        p = problems[rec["id"]]
        human, gpt = rec["conversations"]
        assert human["value"] == (sqa.choice_prompt(p) if style == "choice" else sqa.build_prompt(p))
        assert human["value"].startswith("<image>\n") == bool(p["image"])
        letter = sqa.OPTIONS[p["answer"]]
        if style == "answer":
            assert gpt["value"] == f"The answer is {letter}."
        elif style == "choice":
            assert gpt["value"].endswith(" " + p["choices"][p["answer"]])
            assert gpt["value"] == sqa.choice_answer(p, p["answer"])
        else:
            assert gpt["value"] == f"{p['solution']} The answer is {letter}."
        assert sqa.parse_answer(gpt["value"], p["choices"], p["question"]) == p["answer"]
        if p["image"]:
            assert (root / rec["image"]).is_file()
    with pytest.raises(ValueError):
        scienceqa_to_llava(problems, "poem")


def test_stage2_repeats_the_binding_questions_only(cfg):
    problems = sqa.select(sqa.load_problems(_root(cfg)), split="train")
    once = dataclasses.replace(cfg.mix(llava.MAIN), binding_repeats=1).scienceqa_records(problems)
    thrice = dataclasses.replace(cfg.mix(llava.MAIN), binding_repeats=3).scienceqa_records(problems)
    assert once == scienceqa_to_llava(problems, cfg.sqa_answer)
    binding = {pid for pid, p in problems.items() if p.get("category") == sqa.BINDING_CATEGORY}
    assert binding and len(binding) < len(problems)  # the tiny benchmark has both kinds
    seen = [r["id"] for r in thrice]
    assert all(seen.count(pid) == (3 if pid in binding else 1) for pid in problems)
    with pytest.raises(ValueError, match="binding_repeats"):
        dataclasses.replace(cfg, binding_repeats=0)
    assert dataclasses.replace(cfg, binding_repeats=3).stage2(VARIANT).key != cfg.stage2(VARIANT).key


def test_a_token_reduction_reanswers_only_the_image_problems(cfg, monkeypatch):
    import vlkit.eval.suite as suite
    spec = dataclasses.replace(cfg.eval_spec(blind=False), bench=None, efficiency=False)
    stage = cfg.stage2(VARIANT)
    plain = suite.evaluate(suite.Evaluation(stage, spec))
    asked, real = [], suite.answer_problems
    monkeypatch.setattr(suite, "answer_problems",
                        lambda m, p, problems, *a, **kw: asked.append(set(problems)) or real(m, p, problems, *a, **kw))
    out = suite.evaluate(suite.Evaluation(stage, spec, suite.Switches("random", {"keep_ratio": 0.5})))
    test = sqa.select(sqa.load_problems(_root(cfg)), split="test")
    img = sqa.select(test, has_image=True)
    assert asked == [set(img)] and len(img) < len(test)
    assert set(out["answers"]) == set(test) and out["scienceqa"]["total"] == len(test)
    assert all(out["answers"][p] == plain["answers"][p] for p in test if p not in img)


def test_evaluation_scores_end_to_end_and_blind_blanks_the_image(cfg, monkeypatch, capsys):
    model, proc = load_stage(cfg.stage2(VARIANT))
    root = _root(cfg)
    test = sqa.select(sqa.load_problems(root), split="test", has_image=True)
    assert test
    pixels = []
    real = model.generate

    def spy(**batch):
        pixels.append(batch["pixel_values"])
        return real(**batch)

    monkeypatch.setattr(model, "generate", spy)
    kw = dict(scoring="generate", batch_size=4, max_new_tokens=3, progress=False)
    seeing = esqa.answer_problems(model, proc, test, root, **kw)
    blind = esqa.answer_problems(model, proc, test, root, blind=True, **kw)
    n = (len(test) + 3) // 4
    seen_px, blind_px = torch.cat(pixels[:n]), torch.cat(pixels[n:])
    assert seen_px.flatten(1).std(1).min() > 0             # real images vary
    assert torch.all(blind_px.flatten(2).std(2) == 0)       # blank images: constant per channel
    assert set(seeing) == set(blind) == set(test)
    monkeypatch.undo()

    rows = llava.plan(cfg, train_seeds=[0], variants=(VARIANT,))
    before = cache.BUILDS["eval"]
    (outcome,) = experiment.run("03", rows, progress=False)
    assert cache.BUILDS["eval"] == before + 1
    experiment.run("03", rows, progress=False)
    assert cache.BUILDS["eval"] == before + 1  # cached
    raw, result = outcome.raw, outcome.result
    s = raw["scienceqa"]
    all_test = sqa.select(sqa.load_problems(root), split="test")
    assert s["total"] == len(all_test) and set(raw["answers"]) == set(all_test)
    assert set(raw["answers_blind"]) == set(test)
    assert 0 <= s["Avg"] <= 100 and s["correct"] + s["unparsed"] <= s["total"]
    assert set(raw["bench"]) >= {"overall", "malformed"}
    # the result file: the schema, every metric with its baselines, and the predictions beside it
    assert results.validate(result) is result
    assert result["variant"] == "tiny" and result["train_seed"] == 0 and result["profile"] == "smoke"
    assert result["baselines"]["Binding"]["bag_of_attributes"] is not None
    assert result["parameters"]["trainable"] < result["parameters"]["total"]
    assert result["prefill_flops"] > 0 and result["latency"]["prefill_ms"] > 0
    assert [t["label"] for t in result["training"]["stages"]] == ["stage 1 (linear, seed 0)", "stage 2 (tiny, seed 0)"]
    assert result["training"]["stages"][1]["peak_memory_bytes"] is not None
    from vlkit import paths
    pred_rows = [json.loads(line) for line in
                 (paths.artifacts_dir("smoke") / "results" / "03" / result["predictions"]).read_text().splitlines()]
    assert [r["pid"] for r in pred_rows] == list(all_test)
    assert sum(r["correct"] for r in pred_rows) == s["correct"]
    assert {r["pid"] for r in pred_rows if "correct_blind" in r} == set(test)
    # ... and LLaVA's answers JSONL, which `vlkit eval scienceqa` scores to the same numbers
    from vlkit.cli import main as cli
    answers = paths.artifacts_dir("smoke") / "results" / "03" / result["predictions"].replace("predictions", "answers")
    assert cli(["eval", "scienceqa", "--problems", str(root), "--predictions", str(answers), "--json"]) == 0
    assert capsys.readouterr().out.count(f'"Avg": {s["Avg"]}') == 1
    table = tables.results_table([result])
    assert list(table.index) == ["tiny", "tiny, image blind", "chance", "bag of attributes"]
    assert table.loc["chance", "Avg"] == pytest.approx(sqa.chance_accuracy(all_test), abs=0.01)
    assert table.loc["tiny", "Avg"] == pytest.approx(s["Avg"])


def test_config_profiles_and_variants():
    with pytest.raises(ValueError):
        llava.LlavaConfig.for_profile("huge")
    with pytest.raises(ValueError):
        llava.Variant("bad", recipe="dora")
    with pytest.raises(ValueError):
        llava.Variant("bad", types=("poems",))
    smoke = llava.LlavaConfig.for_profile("smoke", stage2_steps=None)
    assert smoke.stage2_steps == 4  # None keeps the profile's value
    assert len({v.name for v in llava.VARIANTS}) == len(llava.VARIANTS)
    k = smoke.stage2(llava.MAIN).key
    assert smoke.stage2(llava.VARIANTS[1]).key != k
    assert llava.LlavaConfig.for_profile("smoke", seed=1).stage2(llava.MAIN).key != k
    fp32, bf16 = (llava.LlavaConfig.for_profile("smoke", mixed_precision=m) for m in ("no", "bf16"))
    assert fp32.stage2(llava.MAIN).key != bf16.stage2(llava.MAIN).key
    # "auto" is resolved to the precision this machine computes natively, before any cache key
    from vlkit.train import bf16_is_native
    assert smoke.mixed_precision == ("bf16" if bf16_is_native() else "no")
    with pytest.raises(ValueError, match="mixed_precision"):
        llava.LlavaConfig.for_profile("smoke", mixed_precision="fp8")
    full = llava.LlavaConfig.for_profile("full")
    assert full.scienceqa.split_shares == tuple(full.sqa_splits)
    rows = llava.plan(full, train_seeds=[0, 1, 2])
    assert [(r.name, r.seed) for r in rows[:3]] == [("LLaVA", 0), ("LLaVA", 1), ("LLaVA", 2)]
    assert len(rows) == 3 + len(llava.VARIANTS) - 1 and rows[0].evaluation.spec.blind
    assert not rows[-1].evaluation.spec.blind


def test_the_llm_attention_is_the_configs_and_part_of_every_stage_key(cfg):
    from vlkit.build import build_model
    assert build_model(cfg.model_spec())[0].language_model.config._attn_implementation == "eager"
    sdpa = dataclasses.replace(cfg, llm_attention="sdpa")
    assert build_model(sdpa.model_spec())[0].language_model.config._attn_implementation == "sdpa"
    assert cfg.stage1().key != sdpa.stage1().key
    no_stage1 = next(v for v in llava.VARIANTS if not v.stage1)
    assert cfg.stage2(no_stage1).key != sdpa.stage2(no_stage1).key


def test_choice_scores_equal_scoring_each_whole_conversation_alone(cfg):
    # choice_scores runs each prompt once and the answers on copies of its KV cache; that must
    # change nothing but the cost, whatever the batching and the padding it brings
    model, proc = load_stage(cfg.stage2(VARIANT))
    root = _root(cfg)
    test = dict(list(sqa.select(sqa.load_problems(root), split="test").items())[:6])
    assert any(sqa.image_path(root, pid, p) is None for pid, p in test.items())
    assert any(sqa.image_path(root, pid, p) is not None for pid, p in test.items())
    scores = scoring.choice_scores(model, proc, test, root, batch_size=4, progress=False)
    assert set(scores) == set(test)

    # reference: each whole conversation scored alone (no padding, no cache)
    for pid, p in test.items():
        reference = []
        for j in range(len(p["choices"])):
            conv = [{"from": "human", "value": sqa.choice_prompt(p)},
                    {"from": "gpt", "value": sqa.choice_answer(p, j)}]
            img = scoring.problem_images({pid: p}, root)
            batch = proc([conv], img)
            labels = batch.pop("labels")
            with torch.no_grad():
                logp = torch.log_softmax(model(**batch).logits[0, :-1].float(), -1)
            target = labels[0, 1:]
            keep = target != -100
            reference.append(logp[keep].gather(-1, target[keep].unsqueeze(-1)).sum().item())
        assert scores[pid] == pytest.approx(reference, abs=1e-4)
    picks = scoring.rank_choices(model, proc, test, root, batch_size=5, progress=False)
    assert picks == {pid: max(range(len(s)), key=s.__getitem__) for pid, s in scores.items()}


def test_choice_answer_is_trained_on_the_tokens_the_prompt_shows(cfg):
    # A tiny LLM copies an option far more readily when the answer is the very token sequence
    # it read in "A. orange"; bare "orange" would start a different BPE split. The restated
    # subject ("triangle" of "What colour is the triangle?") must be the question's tokens too.
    from vlkit.build import build_model
    _, proc = build_model(cfg.model_spec())
    root = _root(cfg)
    problems = dict(list(sqa.select(sqa.load_problems(root), split="train").items())[:40])
    assert any(sqa.answer_subject(p["question"]) for p in problems.values())

    def shown(part, prompt):
        return any(prompt[i:i + len(part)] == part for i in range(len(prompt) - len(part) + 1))

    for rec in scienceqa_to_llava(problems, "choice"):
        batch = proc([rec["conversations"]], [scoring.blank_image(16) if "image" in rec else None])
        ids, labels = batch["input_ids"][0].tolist(), batch["labels"][0].tolist()
        answer = [t for t in labels if t != -100][:-1]  # without the closing </s>
        prompt = ids[: labels.index(next(t for t in labels if t != -100))]
        # the subject (maybe none), then the option: each a run of the prompt's own tokens
        assert answer and any(shown(answer[:k], prompt) and shown(answer[k:], prompt)
                              for k in range(len(answer))), rec
