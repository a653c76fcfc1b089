"""Notebook 03's recipe on tiny backbones: stage 1 trains the connector only, stages are cached,
the evaluation scores a model end to end, the image-blind baseline really blanks the image."""
from __future__ import annotations

import matplotlib
import pytest
import torch
from safetensors.torch import load_file

matplotlib.use("Agg")

import _vltiny as T  # noqa: E402
from vlkit import llava, vlm_eval  # noqa: E402
from vlkit import train as train_mod  # noqa: E402
from vlkit.backbones import image_processor  # noqa: E402
from vlkit.benchmarks import scienceqa as sqa  # noqa: E402
from vlkit.data import DataConfig  # noqa: E402

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


def test_stage1_trains_only_the_connector(cfg, monkeypatch):
    seen = {}
    real = train_mod.train

    def spy(model, ds, tc, **kw):
        before = {n: p.detach().clone() for n, p in model.named_parameters()}
        r = real(model, ds, tc, **kw)
        seen["changed"] = {n for n, p in model.named_parameters() if not torch.equal(before[n], p)}
        seen["trainable"] = {n for n, p in model.named_parameters() if p.requires_grad}
        return r

    monkeypatch.setattr(train_mod, "train", spy)
    path = llava.ensure_stage1(cfg, "mlp2x_gelu")
    assert seen["changed"] and all(n.startswith("connector.") for n in seen["changed"])
    assert seen["trainable"] and all(n.startswith("connector.") for n in seen["trainable"])
    saved = load_file(path / "connector.safetensors")
    assert set(saved) == {n.removeprefix("connector.") for n in seen["trainable"]}
    assert len((path / "losses.json").read_text()) > 2


def test_stage2_is_cached_and_loads_what_it_trained(cfg):
    before = dict(llava.TRAIN_CALLS)
    p1 = llava.ensure_stage2(cfg, VARIANT)
    assert llava.TRAIN_CALLS["stage2"] == before["stage2"] + 1
    mtime = (p1 / "trainable.safetensors").stat().st_mtime
    p2 = llava.ensure_stage2(cfg, VARIANT)
    assert p2 == p1 and llava.TRAIN_CALLS["stage2"] == before["stage2"] + 1
    assert (p1 / "trainable.safetensors").stat().st_mtime == mtime
    # stage 1 of the same connector was trained once and is reused
    assert llava.TRAIN_CALLS["stage1"] <= before["stage1"] + 1
    model, _ = llava.load_stage2(cfg, VARIANT)
    saved = load_file(p1 / "trainable.safetensors")
    params = dict(model.named_parameters())
    assert any(n.startswith("language_model.") for n in saved)  # stage 2 trains the LLM too
    assert all(torch.equal(params[n], t) for n, t in saved.items())
    assert llava.TRAIN_CALLS["stage2"] == before["stage2"] + 1  # loading did not retrain


@pytest.mark.parametrize("style", llava.ANSWER_STYLES)
def test_scienceqa_to_llava_round_trip(cfg, style):
    root = llava.scienceqa_dir(cfg)
    problems = sqa.select(sqa.load_problems(root), split="train")
    records = llava.scienceqa_to_llava(problems, style)
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
        llava.scienceqa_to_llava(problems, "poem")


def test_stage2_repeats_the_binding_questions_only(cfg):
    import dataclasses
    problems = sqa.select(sqa.load_problems(llava.scienceqa_dir(cfg)), split="train")
    once = llava.stage2_scienceqa_records(dataclasses.replace(cfg, binding_repeats=1), problems)
    thrice = llava.stage2_scienceqa_records(dataclasses.replace(cfg, binding_repeats=3), problems)
    assert once == llava.scienceqa_to_llava(problems, cfg.sqa_answer)
    binding = {pid for pid, p in problems.items() if p.get("category") == sqa.BINDING_CATEGORY}
    assert binding and len(binding) < len(problems)  # the tiny benchmark has both kinds
    seen = [r["id"] for r in thrice]
    assert all(seen.count(pid) == (3 if pid in binding else 1) for pid in problems)
    with pytest.raises(ValueError, match="binding_repeats"):
        dataclasses.replace(cfg, binding_repeats=0)
    assert llava.stage2_key(dataclasses.replace(cfg, binding_repeats=3), VARIANT) != llava.stage2_key(cfg, VARIANT)


def test_evaluation_scores_end_to_end_and_blind_blanks_the_image(cfg, monkeypatch):
    model, proc = llava.load_stage2(cfg, VARIANT)
    root = llava.scienceqa_dir(cfg)
    test = sqa.select(sqa.load_problems(root), split="test", has_image=True)
    assert test
    pixels = []
    real = model.generate

    def spy(**batch):
        pixels.append(batch["pixel_values"])
        return real(**batch)

    monkeypatch.setattr(model, "generate", spy)
    seeing = vlm_eval.answer_scienceqa(model, proc, test, root, batch_size=4, max_new_tokens=3, progress=False)
    blind = vlm_eval.answer_scienceqa(model, proc, test, root, blind=True, batch_size=4, max_new_tokens=3,
                                      progress=False)
    n = (len(test) + 3) // 4
    seen_px, blind_px = torch.cat(pixels[:n]), torch.cat(pixels[n:])
    assert seen_px.flatten(1).std(1).min() > 0             # real images vary
    assert torch.all(blind_px.flatten(2).std(2) == 0)       # blank images: constant per channel
    assert set(seeing) == set(blind) == set(test)

    monkeypatch.undo()
    result = vlm_eval.evaluate_variant(cfg, VARIANT)
    s = result["scienceqa"]
    all_test = sqa.select(sqa.load_problems(root), split="test")
    assert s["total"] == len(all_test) and set(result["answers"]) == set(all_test)
    assert set(result["answers_blind"]) == set(test)
    assert 0 <= s["Avg"] <= 100 and s["correct"] + s["unparsed"] <= s["total"]
    assert set(result["bench"]) >= {"overall", "malformed"}
    assert result["llm_bytes"] > 0
    base = vlm_eval.baselines(root)
    table = vlm_eval.results_table({"tiny": result}, base)
    assert list(table.index) == ["tiny", "tiny, image blind", "chance", "bag of attributes"]
    assert table.loc["chance", "Avg"] == pytest.approx(sqa.chance_accuracy(all_test), abs=0.01)


def test_config_profiles_and_variants():
    with pytest.raises(ValueError):
        llava.LlavaConfig.for_profile("huge")
    with pytest.raises(ValueError):
        llava.Variant("bad", recipe="lora")
    with pytest.raises(ValueError):
        llava.Variant("bad", types=("poems",))
    smoke = llava.LlavaConfig.for_profile("smoke", stage2_steps=None)
    assert smoke.stage2_steps == 4  # None keeps the profile's value
    assert len({v.name for v in llava.VARIANTS}) == len(llava.VARIANTS)
    # a different variant or config is a different cache key
    k = llava.stage2_key(smoke, llava.MAIN)
    assert llava.stage2_key(smoke, llava.VARIANTS[1]) != k
    assert llava.stage2_key(llava.LlavaConfig.for_profile("smoke", seed=1), llava.MAIN) != k
    fp32, bf16 = (llava.LlavaConfig.for_profile("smoke", mixed_precision=m) for m in ("no", "bf16"))
    assert llava.stage2_key(fp32, llava.MAIN) != llava.stage2_key(bf16, llava.MAIN)
    # "auto" is resolved to the precision this machine computes natively, before any cache key
    from vlkit.train import bf16_is_native
    assert smoke.mixed_precision == ("bf16" if bf16_is_native() else "no")
    with pytest.raises(ValueError, match="mixed_precision"):
        llava.LlavaConfig.for_profile("smoke", mixed_precision="fp8")
    full = llava.LlavaConfig.for_profile("full")
    assert full.scienceqa.split_shares == tuple(full.sqa_splits)


def test_the_llm_attention_is_the_configs_and_part_of_every_stage_key(cfg):
    import dataclasses
    assert llava.build_model(cfg, "linear")[0].language_model.config._attn_implementation == "eager"
    sdpa = dataclasses.replace(cfg, llm_attention="sdpa")
    assert llava.build_model(sdpa, "linear")[0].language_model.config._attn_implementation == "sdpa"
    assert llava.stage1_key(cfg, "linear") != llava.stage1_key(sdpa, "linear")
    no_stage1 = next(v for v in llava.VARIANTS if not v.stage1)
    assert llava.stage2_key(cfg, no_stage1) != llava.stage2_key(sdpa, no_stage1)


def test_choice_scores_equal_scoring_each_whole_conversation_alone(cfg):
    # choice_scores runs each prompt once and the answers on copies of its KV cache; that must
    # change nothing but the cost, whatever the batching and the padding it brings
    model, proc = llava.load_stage2(cfg, VARIANT)
    root = llava.scienceqa_dir(cfg)
    test = dict(list(sqa.select(sqa.load_problems(root), split="test").items())[:6])
    assert any(sqa.image_path(root, pid, p) is None for pid, p in test.items())
    assert any(sqa.image_path(root, pid, p) is not None for pid, p in test.items())
    scores = vlm_eval.choice_scores(model, proc, test, root, batch_size=4, progress=False)
    assert set(scores) == set(test)

    # reference: each whole conversation scored alone (no padding, no cache)
    for pid, p in test.items():
        reference = []
        for j in range(len(p["choices"])):
            conv = [{"from": "human", "value": sqa.choice_prompt(p)},
                    {"from": "gpt", "value": sqa.choice_answer(p, j)}]
            img = vlm_eval._images({pid: p}, root, blind=False)
            batch = proc([conv], img)
            labels = batch.pop("labels")
            with torch.no_grad():
                logp = torch.log_softmax(model(**batch).logits[0, :-1].float(), -1)
            target = labels[0, 1:]
            keep = target != -100
            reference.append(logp[keep].gather(-1, target[keep].unsqueeze(-1)).sum().item())
        assert scores[pid] == pytest.approx(reference, abs=1e-4)
    picks = vlm_eval.rank_choices(model, proc, test, root, batch_size=5, progress=False)
    assert picks == {pid: max(range(len(s)), key=s.__getitem__) for pid, s in scores.items()}


def test_choice_answer_is_trained_on_the_tokens_the_prompt_shows(cfg):
    # A tiny LLM copies an option far more readily when the answer is the very token sequence
    # it read in "A. orange"; bare "orange" would start a different BPE split. The restated
    # subject ("triangle" of "What colour is the triangle?") must be the question's tokens too.
    _, proc = llava.build_model(cfg, "linear")
    root = llava.scienceqa_dir(cfg)
    problems = dict(list(sqa.select(sqa.load_problems(root), split="train").items())[:40])
    assert any(sqa.answer_subject(p["question"]) for p in problems.values())

    def shown(part, prompt):
        return any(prompt[i:i + len(part)] == part for i in range(len(prompt) - len(part) + 1))

    for rec in llava.scienceqa_to_llava(problems, "choice"):
        batch = proc([rec["conversations"]], [vlm_eval.blank_image(16) if "image" in rec else None])
        ids, labels = batch["input_ids"][0].tolist(), batch["labels"][0].tolist()
        answer = [t for t in labels if t != -100][:-1]  # without the closing </s>
        prompt = ids[: labels.index(next(t for t in labels if t != -100))]
        # the subject (maybe none), then the option: each a run of the prompt's own tokens
        assert answer and any(shown(answer[:k], prompt) and shown(answer[k:], prompt)
                              for k in range(len(answer))), rec
