"""Notebook 06's measurements and tables (vlkit.eval.compression), the interleaved prefill timing
(vlkit.eval.efficiency.interleaved_prefills) and its figures (vlkit.plots.compression), on a tiny VLM."""
from __future__ import annotations

import sys
from pathlib import Path
from types import SimpleNamespace

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModel, LlamaConfig, LlamaForCausalLM  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
import _vltiny as T  # noqa: E402
from _vltiny import one_thread  # noqa: E402,F401  (autouse: one torch thread in this module)

from vlkit.compressors.fastv import kept_count  # noqa: E402
from vlkit.eval import compression as CE  # noqa: E402
from vlkit.eval.efficiency import interleaved_prefills  # noqa: E402
from vlkit.model import VLModel  # noqa: E402
from vlkit.plots import compression as plots  # noqa: E402
from vlkit.processor import VLProcessor  # noqa: E402

N = 16  # 32 px images, 8 px patches


@pytest.fixture(scope="module")
def tiny():
    """16 patches + [cls] through a 2-layer tower, a 4-layer LLM (FastV can rank at K=1), eager attention."""
    torch.manual_seed(0)
    vision = CLIPVisionModel(CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                              num_attention_heads=2, image_size=32, patch_size=8))
    llm = LlamaForCausalLM(LlamaConfig(vocab_size=len(T.tokenizer()), hidden_size=64, intermediate_size=128,
                                       num_hidden_layers=4, num_attention_heads=2, num_key_value_heads=2,
                                       max_position_embeddings=512))
    m = VLModel.from_backbones(vision, llm, T.tokenizer(), llm_attn_implementation="eager").eval()
    proc = VLProcessor.for_model(m, CLIPImageProcessor(size={"shortest_edge": 32},
                                                       crop_size={"height": 32, "width": 32}), T.tokenizer())
    return m, proc


@pytest.fixture(scope="module")
def problems(tmp_path_factory):
    """Three ScienceQA-format image problems and one text problem, with their images where the format keeps them."""
    root = tmp_path_factory.mktemp("sqa")
    out = {}
    for i, colour in enumerate(["red", "blue", "green", None]):
        pid = str(i + 1)
        out[pid] = {"question": "what color is the image?", "choices": ["red", "blue"], "answer": 0, "hint": "",
                    "image": "image.png" if colour else None, "split": "test"}
        if colour:
            (root / "images" / "test" / pid).mkdir(parents=True)
            T.ColorDataset(4)[["red", "green", "blue", "white"].index(colour)]["image"].save(
                root / "images" / "test" / pid / "image.png")
    return out, root


CONFIGS = {"none": ("identity", {}), "pool 25%": ("pool", {"keep_ratio": 0.25}),
           "vmtc 50%": ("vmtc", {"keep_ratio": 0.5}), "prumerge 50%": ("prumerge", {"keep_ratio": 0.5}),
           "tome 50%": ("tome", {"keep_ratio": 0.5}), "fastv 50%": ("fastv", {"K": 1, "keep_ratio": 0.5})}


def test_visual_tokens_count_what_reaches_the_llm(tiny):
    m, proc = tiny
    px = torch.randn(5, 3, 32, 32)
    try:
        assert CE.visual_tokens(m, px) == N
        m.set_token_reduction("pool", keep_ratio=0.25)
        assert CE.visual_tokens(m, px) == 4
        m.set_token_reduction("prumerge", keep_ratio=1.0)  # a cap of 16: the IQR rule keeps fewer, per image
        counts = m.compressor.kept_counts(m.compression_inputs(px)[1].importance)
        assert CE.visual_tokens(m, px, batch_size=2) == pytest.approx(float(counts.float().mean()))
        assert CE.visual_tokens(m, px) < m.num_image_tokens == N
        m.set_token_reduction("fastv", K=1, keep_ratio=0.25)
        assert CE.visual_tokens(m, px) == kept_count(N, 0.25) and m.num_image_tokens == N
    finally:
        m.set_token_reduction("identity")


def test_measure_gives_every_configuration_tokens_flops_and_interleaved_latency(tiny, problems):
    m, proc = tiny
    test, root = problems
    out = CE.measure(m, proc, CONFIGS, test, root, reference="none", token_images=8, batch=2, repeats=2)
    assert list(out) == list(CONFIGS) and m.compressor.name == "identity"  # left uncompressed
    assert len({o["n_text"] for o in out.values()}) == 1  # the same prompts for every method
    ref = out["none"]
    assert ref["latency"]["ratio"] == 1.0 and ref["tokens"] == N
    for name, o in out.items():
        lat = o["latency"]
        assert 0 < lat["llm_ms"] <= lat["prefill_ms"] and lat["rest_ms"] > 0 and lat["batch"] == 2
        assert lat["ratio"] == pytest.approx(lat["prefill_ms"] / ref["latency"]["prefill_ms"])
        assert o["flops"]["total"] == sum(o["flops"][k] for k in ("vision", "connector", "compressor", "llm", "lm_head"))
    assert out["pool 25%"]["flops"]["llm"] < out["vmtc 50%"]["flops"]["llm"] < ref["flops"]["llm"]
    assert out["vmtc 50%"]["flops"]["compressor"] > 0 == ref["flops"]["compressor"]  # its k-means is counted
    assert out["tome 50%"]["flops"]["vision"] < ref["flops"]["vision"] and out["tome 50%"]["tome_merges"] == [8]
    # at LLaVA-7B's 576 patches the LLM dominates, so half the tokens saves more there than here
    assert out["vmtc 50%"]["flops_7b"]["total"] / ref["flops_7b"]["total"] < (
        out["vmtc 50%"]["flops"]["total"] / ref["flops"]["total"])
    with pytest.raises(ValueError, match="reference 'x'"):
        CE.measure(m, proc, CONFIGS, test, root, reference="x")


def test_interleaved_prefills_run_every_configuration_each_round_and_check_their_arguments(tiny):
    m, proc = tiny
    batch = proc.prompt(["what color is the image?"], [T.ColorDataset(1)[0]["image"]])
    batch.pop("labels")
    calls = []
    configs = {n: ((lambda n=n: calls.append(n)), batch) for n in ("a", "b", "c")}
    out = interleaved_prefills(m, configs, reference="b", repeats=3, warmup=1)
    assert calls == ["a", "b", "c", "b", "c", "a", "c", "a", "b", "a", "b", "c"]  # each round starts one further on
    assert out["b"]["ratio"] == 1.0 and out["a"]["repeats"] == 3 and out["a"]["reference"] == "b"
    with pytest.raises(ValueError, match="reference 'z' is not one of"):
        interleaved_prefills(m, configs, reference="z")
    with pytest.raises(ValueError, match="no configurations"):
        interleaved_prefills(m, {})
    with pytest.raises(ValueError, match="repeats must be >= 1"):
        interleaved_prefills(m, configs, repeats=0)


def test_overlays_show_what_each_method_kept_merged_and_dropped(tiny):
    m, proc = tiny
    image = T.ColorDataset(1)[0]["image"]
    cells = {("vmtc", 0.5): ("vmtc", {"keep_ratio": 0.5}), ("pool", 0.25): ("pool", {"keep_ratio": 0.25}),
             ("random", 0.25): ("random", {"keep_ratio": 0.25}), ("fastv", 0.5): ("fastv", {"K": 1, "keep_ratio": 0.5}),
             ("tome", 0.5): ("tome", {"keep_ratio": 0.5}), ("none", 1.0): ("identity", {})}
    ov = CE.overlays(m, proc, image, "what color is the image?", cells)
    assert m.compressor.name == "identity"
    vmtc = ov[("vmtc", 0.5)]
    assert vmtc["assignment"].shape == (N,) and (vmtc["assignment"] >= 0).all()  # VMTC drops nothing: it merges
    assert vmtc["kept"].sum() == 7  # 8 slots: 7 primary tokens + 1 cluster (54/64 of the budget kept as is)
    pool = ov[("pool", 0.25)]
    assert not pool["kept"].any() and sorted(set(pool["assignment"])) == [0, 1, 2, 3]
    assert (pool["assignment"].reshape(4, 4)[:2, :2] == pool["assignment"][0]).all()  # a 2 x 2 block per slot
    rnd = ov[("random", 0.25)]
    assert rnd["kept"].sum() == 4 and ((rnd["assignment"] >= 0) == rnd["kept"]).all()
    fastv = ov[("fastv", 0.5)]
    assert fastv["kept"].sum() == 8 and ((fastv["assignment"] >= 0) == fastv["kept"]).all()
    assert ov[("tome", 0.5)] is None and ov[("none", 1.0)]["kept"].all()


# --- tables, from made-up measurements ---------------------------------------------------------------------


def _points():
    P = SimpleNamespace
    return [P(name="ref", method="identity", ratio=1.0), P(name="a 25%", method="a", ratio=0.25),
            P(name="a 50%", method="a", ratio=0.5), P(name="b 25%", method="b", ratio=0.25),
            P(name="b 50%", method="b", ratio=0.5)]


def _measured():
    def one(tokens, total, llm, rest, comp):
        f = {"vision": 100, "connector": 10, "compressor": comp, "llm": llm, "lm_head": 5, "attention": 1,
             "total": 115 + comp + llm}
        return {"tokens": tokens, "flops": f, "flops_7b": {k: 1000 * v for k, v in f.items()},
                "latency": {"prefill_ms": total, "llm_ms": total - rest, "rest_ms": rest, "ratio": total / 10.0}}
    return {"ref": one(16, 10.0, 400, 2.0, 0), "a 25%": one(4, 7.0, 100, 2.5, 1), "a 50%": one(8, 8.0, 200, 2.5, 1),
            "b 25%": one(4, 11.0, 100, 6.0, 50), "b 50%": one(8, 12.0, 200, 6.0, 50)}


def _results():
    def r(img):
        return {"metrics": {"ScienceQA": {"IMG": img}, "Binding": img - 10, "Counting": img - 20,
                            "Short VQA": {"accuracy": img - 30}}}
    return {"ref": r(80), "a 25%": r(60), "a 50%": r(79), "b 25%": r(70), "b 50%": r(75)}


def test_grid_table_joins_metrics_tokens_flops_and_latency():
    t = CE.grid_table(_points(), _results(), _measured(), "ref")
    assert list(t.index) == [p.name for p in _points()]
    assert t.loc["a 50%", "Short VQA"] == 49 and t.loc["a 50%", "Counting"] == 59
    assert t.loc["ref", "FLOPs x"] == 1.0 and t.loc["a 25%", "FLOPs x"] == pytest.approx(216 / 515)
    assert t.loc["b 25%", "latency x"] == pytest.approx(1.1) and t.loc["a 25%", "tokens"] == 4


def test_versus_reference_and_best_ratio_per_method():
    rng = np.random.default_rng(0)
    ref = (rng.random(400) < 0.8).astype(float)
    same, worse = ref.copy(), ref.copy()
    worse[np.flatnonzero(ref)[:120]] = 0  # 30 points worse
    correct = {"ref": ref, "a 25%": worse, "a 50%": same, "b 25%": worse, "b 50%": worse}
    v = CE.versus_reference(correct, "ref", margin=1.0, n_boot=300)
    assert "ref" not in v.index and v.loc["a 50%", "difference"] == 0.0
    assert v.loc["a 50%", "verdict"] == "reproduced" and v.loc["a 25%", "verdict"] == "not reproduced"
    best = CE.best_ratios(CE.grid_table(_points(), _results(), _measured(), "ref"), v)
    assert best.loc["a", "best keep ratio"] == 0.5 and bool(best.loc["a", "kept"])
    # b keeps accuracy at no ratio: its best-scoring one (50%: 75 vs 70) is reported, marked not kept
    assert best.loc["b", "best keep ratio"] == 0.5 and not best.loc["b", "kept"]


def test_break_even_says_where_compressing_pays():
    pays = CE.break_even(_points(), _measured(), "ref")
    assert "ref" not in pays.index
    assert pays.loc["a 25%", "net ms"] == 3.0 and bool(pays.loc["a 25%", "pays"])
    assert pays.loc["a 25%", "compressor ms"] == pytest.approx(0.5) and pays.loc["a 25%", "LLM ms saved"] == 3.5
    assert not pays.loc["b 50%", "pays"] and pays.loc["b 50%", "compressor ms"] == 4.0
    assert pays.loc["a 50%", "7B LLM GFLOPs saved"] == pytest.approx(200 * 1000 / 1e9)
    summary = CE.paying(pays, at=0.5)
    assert summary.loc["a", "pays at"] == "25%, 50%" and summary.loc["b", "pays at"] == "no ratio"
    assert summary.loc["b", "7B compressor / LLM saved at 50%"] == pytest.approx(50 / 200)


# --- figures ---------------------------------------------------------------------------------------------------


def _labelled(ax):
    return ax.get_xlabel() and ax.get_ylabel()


def test_curves_have_one_line_per_method_and_labelled_axes():
    t = CE.grid_table(_points(), _results(), _measured(), "ref")
    fig = plots.accuracy_curves(t, "ref", "IMG", chance=50.0)
    assert len(fig.axes) == 3 and all(_labelled(ax) for ax in fig.axes)
    assert [x.get_text() for x in fig.axes[0].get_legend().get_texts()] == ["a", "b", "uncompressed"]
    line_a = fig.axes[0].get_lines()[0]
    assert list(line_a.get_xdata()) == [4, 8] and list(line_a.get_ydata()) == [60, 79]  # sorted by tokens
    plt.close(fig)
    fig = plots.metric_panels(t, "ref", chance={"IMG": 50.0})
    assert [ax.get_title() for ax in fig.axes] == ["IMG", "Binding", "Counting", "Short VQA"]
    assert all(_labelled(ax) for ax in fig.axes)
    plt.close(fig)
    with pytest.raises(ValueError, match="empty table"):
        plots.accuracy_curves(t.iloc[:0], "ref")


def test_token_overlays_grid_and_finetune_comparison():
    from PIL import Image
    image = Image.new("RGB", (32, 32), (200, 30, 30))
    cell = {"assignment": np.array([0, 0, -1, 1] * 4), "kept": np.array([True, False, False, False] * 4)}
    fig = plots.token_overlays(image, {("vmtc", 0.5): cell, ("pool", 0.5): None}, ["vmtc", "pool"], [0.25, 0.5])
    assert len(fig.axes) == 4
    assert [ax.get_ylabel() for ax in fig.axes[::2]] == ["vmtc", "pool"]
    assert fig.axes[0].get_title() == "keep 25%" and any(t.get_text() == "not drawn" for t in fig.axes[3].texts)
    assert len(fig.axes[1].patches) == 16  # 4 outlined kept + 8 tinted merged + 4 dark dropped
    plt.close(fig)
    with pytest.raises(ValueError, match="square patch grid"):
        plots.token_overlays(image, {("vmtc", 0.5): {"assignment": np.zeros(3), "kept": np.zeros(3, bool)}},
                             ["vmtc"], [0.5])
    fig = plots.finetune_comparison({"IMG": {"uncompressed": [60, 62, 58], "vmtc 50%, fine-tuned": [59, 61, 57]}},
                                    chance={"IMG": 30.0})
    assert _labelled(fig.axes[0]) and len(fig.axes[0].patches) == 2
    plt.close(fig)
    with pytest.raises(ValueError, match="no values"):
        plots.finetune_comparison({})


def test_metrics_of_reads_a_result_file():
    assert CE.metrics_of(_results()["a 50%"]) == {"IMG": 79, "Binding": 69, "Counting": 59, "Short VQA": 49}
    assert pd.isna(pd.Series(CE.metrics_of({"metrics": {"ScienceQA": {"IMG": 1}, "Binding": 2}}))["Counting"])


def test_short_vqa_is_answered_by_the_likeliest_word_of_each_questions_kind(tiny, tmp_path, monkeypatch):
    from vlkit.benchmarks import short_vqa as sv
    from vlkit.eval import short_vqa as SV
    m, proc = tiny
    folder = sv.write(tmp_path / "set", sv.ShortVQAConfig(n=3, resolution=32))
    questions = sv.load(folder)
    colour, shape, count = questions
    subject = colour["question"].removeprefix("What colour is the ").removesuffix("?")
    assert SV.candidates(colour) == [f" {subject} {c}" for c in sv.VOCABULARY["colour"]]  # as notebook 03's answers
    assert SV.candidates(shape)[0].startswith(" " + shape["question"].split()[4] + " ")  # "What shape is the red object?"
    assert SV.candidates(count) == [f" {d}" for d in range(10)]
    assert SV.prompt(count).endswith("\n" + count["question"]) and SV.INSTRUCTION in SV.prompt(count)
    answers = SV.answer(m, proc, folder, questions)  # the real model, through the shared-prompt scorer
    assert all(answers[q["question_id"]] in sv.VOCABULARY[q["kind"]] for q in questions)

    def third_best(model, processor, prompts, images, candidates, **_):
        return [[(0.0 if j == 2 else -1.0, 1) for j in range(len(c))] for c in candidates]
    monkeypatch.setattr("vlkit.eval.scoring.continuation_scores", third_best)
    assert SV.answer(m, proc, folder, questions) == {q["question_id"]: sv.VOCABULARY[q["kind"]][2] for q in questions}
