"""Connector-side visual-token compressors of notebook 06 (vlkit.compressors): counts, plans, each
method's defining property, clear errors, and the methods on the tiny VLM (mask, save/reload)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).parent))
import _plugins  # noqa: E402,F401  (registers test_halve, saved below with its module)
import _vltiny as T  # noqa: E402

from vlkit.compression import CompressionContext, available_compressors, build_compressor  # noqa: E402
from vlkit.compressors import MergePlan, iqr_outliers, merge, spherical_kmeans  # noqa: E402
from vlkit.insertions import blocks  # noqa: E402
from vlkit.model import VLModel  # noqa: E402

METHODS = ["vmtc", "visionzip", "prumerge", "pool", "random"]
N, D = 16, 8  # a 4 x 4 patch grid


def _inputs(b: int = 2, n: int = N, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randn(b, n, D, generator=g)
    importance = torch.randn(b, n, generator=g).mul(2).softmax(1)
    keys = torch.randn(b, n, 4, generator=g)
    return tokens, CompressionContext(importance=importance, keys=keys)


def _run(c, tokens, ctx):
    return c(tokens, importance=ctx.importance, keys=ctx.keys)


@pytest.fixture(scope="module")
def tiny():
    return T.model().eval()


@pytest.mark.parametrize("name", METHODS)
@pytest.mark.parametrize("budget", [{"keep_ratio": 0.1}, {"keep_ratio": 0.25}, {"keep_ratio": 0.5},
                                    {"keep_ratio": 1.0}, {"target": 4}, {"target": 9}])
def test_output_count_is_num_tokens_and_the_plan_assigns_each_token_once(name, budget):
    c = build_compressor(name, D, **budget)
    tokens, ctx = _inputs()
    m = c.num_tokens(N)
    out = _run(c, tokens, ctx)
    plan = c.plan(tokens, ctx)
    assert out.shape == (2, m, D) and plan.num_slots == m
    assert plan.assignment.shape == (2, N) and int(plan.assignment.min()) >= -1 and int(plan.assignment.max()) < m
    # kept tokens each own a slot, and the output is the shared merge of the plan
    for row, kept in zip(plan.assignment, plan.kept):
        assert len(set(row[kept].tolist())) == int(kept.sum())
    torch.testing.assert_close(out, merge(tokens, plan), rtol=0, atol=0)
    if name != "prumerge":  # the only method with an adaptive count leaves slots empty
        assert plan.mask.all()
    expected = {"keep_ratio": {0.1: 2, 0.25: 4, 0.5: 8, 1.0: 16}, "target": {4: 4, 9: 9}}
    (kind, value), = budget.items()
    if name == "pool" and kind == "keep_ratio":  # the grid side scales by sqrt(r): s = round(4 sqrt(r))
        assert m == {0.1: 1, 0.25: 4, 0.5: 9, 1.0: 16}[value]
    else:
        assert m == expected[kind][value]


def test_merge_averages_by_weight_and_leaves_empty_slots_zero():
    x = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [2.0, 2.0], [9.0, 9.0], [4.0, 0.0]]], requires_grad=True)
    plan = MergePlan(torch.tensor([[0, 0, 1, -1, 1]]), torch.tensor([[1.0, 3.0, 0.0, 5.0, 0.0]]),
                     torch.zeros(1, 5, dtype=torch.bool), 3)
    out = merge(x, plan)
    # slot 0: weights 1:3; slot 1: members weigh 0, so their plain mean; slot 2: nobody; token 3 dropped
    torch.testing.assert_close(out, torch.tensor([[[0.25, 0.75], [3.0, 1.0], [0.0, 0.0]]]))
    assert plan.mask.tolist() == [[True, True, False]] and plan.sizes().tolist() == [[2, 2, 0]]
    out.sum().backward()
    assert x.grad[0, 3].abs().sum() == 0 and x.grad[0, 1].abs().sum() > 0


# --- vmtc ---------------------------------------------------------------------------------------
def test_vmtc_keeps_the_most_important_tokens_unchanged_and_merges_the_rest():
    tokens, ctx = _inputs()
    c = build_compressor("vmtc", D, target=8, primary_fraction=0.5)  # k = 4 primary, c = 4 clusters
    plan, out = c.plan(tokens, ctx), _run(c, tokens, ctx)
    top = ctx.importance.topk(4, dim=1).indices.sort(1).values
    assert torch.equal(plan.kept, torch.zeros(2, N, dtype=torch.bool).scatter(1, top, True))
    torch.testing.assert_close(out[:, :4], tokens.gather(1, top[..., None].expand(-1, -1, D)), rtol=0, atol=0)
    assert (plan.assignment[~plan.kept] >= 4).all()  # the rest: merged into the clusters, none dropped


def test_vmtc_merges_a_cluster_of_identical_tokens_into_that_token():
    a, b = torch.eye(D)[0] * 3, torch.eye(D)[1] * 2
    tokens = torch.stack([torch.eye(D)[2], a, b, a, b, a])[None]  # token 0: primary; two groups left
    # k-means seeds: the 2 most important of the rest, token 2 (a b) and token 3 (an a), clusters in their order
    importance = torch.tensor([[0.5, 0.02, 0.2, 0.15, 0.05, 0.08]])
    c = build_compressor("vmtc", D, target=3, primary_fraction=1 / 3)
    plan = c.plan(tokens, CompressionContext(importance=importance))
    assert plan.assignment.tolist() == [[0, 2, 1, 2, 1, 2]]
    torch.testing.assert_close(c(tokens, importance=importance)[0, 1:], torch.stack([b, a]))


def test_vmtc_weights_a_merged_token_towards_its_more_important_member():
    x = torch.tensor([[[0.0, 5.0], [1.0, 0.1], [1.0, -0.1]]])
    c = build_compressor("vmtc", 2, target=2, primary_fraction=0.5)  # token 0 primary, 1 and 2 one cluster
    heavy_first = c(x, importance=torch.tensor([[0.6, 0.3, 0.1]]))[0, 1]
    heavy_second = c(x, importance=torch.tensor([[0.6, 0.1, 0.3]]))[0, 1]
    torch.testing.assert_close(heavy_first, (0.3 * x[0, 1] + 0.1 * x[0, 2]) / 0.4)
    assert heavy_first[1] > 0 > heavy_second[1]


def test_kmeans_is_deterministic_separates_groups_and_refuses_more_clusters_than_tokens():
    g = torch.Generator().manual_seed(1)
    centres = torch.eye(D)[:3] * 4
    x = (centres.repeat_interleave(5, 0) + 0.1 * torch.randn(15, D, generator=g))[None]
    labels = spherical_kmeans(x, torch.tensor([[0, 5, 10]]))
    assert labels.tolist() == [[0] * 5 + [1] * 5 + [2] * 5]
    assert torch.equal(labels, spherical_kmeans(x, torch.tensor([[0, 5, 10]])))
    # points at 0, 10, 20, 90 and 100 degrees seeded at 0 and 10: the centres must move to split them 3 / 2
    angles = torch.tensor([0.0, 10, 20, 90, 100]).deg2rad()
    arc = torch.stack([angles.cos(), angles.sin()], -1)[None]
    assert spherical_kmeans(arc, torch.tensor([[0, 1]])).tolist() == [[0, 0, 0, 1, 1]]
    with pytest.raises(ValueError, match="k-means: 4 clusters asked for 3 tokens"):
        spherical_kmeans(torch.randn(1, 3, D), torch.tensor([[0, 1, 2, 0]]))


# --- visionzip ----------------------------------------------------------------------------------
def test_visionzip_keeps_the_top_attended_and_merges_the_rest_into_strided_targets_by_key_similarity():
    tokens, ctx = _inputs()
    c = build_compressor("visionzip", D, target=8, dominant_fraction=0.5)  # 4 dominant, 4 contextual
    plan, out = c.plan(tokens, ctx), _run(c, tokens, ctx)
    top = ctx.importance.topk(4, dim=1).indices.sort(1).values
    torch.testing.assert_close(out[:, :4], tokens.gather(1, top[..., None].expand(-1, -1, D)), rtol=0, atol=0)
    for i in range(2):
        rest = [j for j in range(N) if j not in top[i].tolist()]
        targets = rest[::3]  # 12 left, 4 targets: every 3rd
        keys = F.normalize(ctx.keys[i], dim=-1)
        for j in rest:
            best = targets.index(j) if j in targets else int((keys[targets] @ keys[j]).argmax())
            assert int(plan.assignment[i, j]) == 4 + best
        for s, t in enumerate(targets):  # each contextual token: the plain mean of its target's group
            members = (plan.assignment[i] == 4 + s)
            torch.testing.assert_close(out[i, 4 + s], tokens[i, members].mean(0))
            assert members[t]


def test_visionzip_default_split_is_54_to_10():
    c = build_compressor("visionzip", D, target=64)
    tokens = torch.randn(1, 576, D)
    ctx = CompressionContext(importance=torch.rand(1, 576), keys=torch.randn(1, 576, 4))
    assert int(c.plan(tokens, ctx).kept.sum()) == 54


# --- prumerge -----------------------------------------------------------------------------------
def test_iqr_rule_counts_the_outliers_numpy_would():
    g = torch.Generator().manual_seed(2)
    rows = torch.rand(3, 40, generator=g)
    rows[0, [3, 17, 30]] = torch.tensor([5.0, 6.0, 9.0])  # three clear outliers
    rows[1, 5] = 1.8  # above Q3 + 1.5 IQR (about 1.5), below Q3 + 3 IQR
    rows[2, :] = torch.linspace(0, 1, 40)  # none
    q1, q3 = np.percentile(rows.numpy(), [25, 75], axis=1)
    expected = (rows.numpy() > (q3 + 1.5 * (q3 - q1))[:, None]).sum(1)
    assert iqr_outliers(rows).tolist() == expected.tolist() == [3, 1, 0]


def test_prumerge_keeps_the_outliers_pads_to_the_cap_and_records_the_mean_kept_count():
    tokens, ctx = _inputs(b=3, n=40)
    imp = torch.full((3, 40), 0.01)
    imp[0, [3, 17, 30]] = torch.tensor([0.5, 0.6, 0.9])  # 3 outliers
    imp[2, :8] = torch.linspace(0.5, 0.9, 8)  # 8 outliers, above the cap of 5
    ctx = CompressionContext(importance=imp, keys=ctx.keys)
    c = build_compressor("prumerge", D, target=5, neighbours=40)
    plan = c.plan(tokens, ctx)
    assert plan.kept.sum(1).tolist() == [3, 1, 5]  # row 1: no outlier, its most attended token
    assert plan.kept[0, [3, 17, 30]].all() and plan.kept[2, 3:8].all()  # row 2: the 5 most attended
    assert plan.mask.tolist() == [[True] * 3 + [False] * 2, [True] + [False] * 4, [True] * 5]
    assert c.mean_kept is None  # planning (for a figure) records nothing
    tokens, mask = c.compress(tokens, ctx)
    assert torch.equal(mask, plan.mask) and tokens[~mask].abs().sum() == 0
    assert c.mean_kept == pytest.approx((3 + 1 + 5) / 3)
    c.reset_stats()
    assert c.mean_kept is None


def test_prumerge_kept_tokens_absorb_their_key_similar_neighbours_weighted_by_attention():
    tokens, ctx = _inputs(b=1, n=12, seed=3)
    imp = torch.full((1, 12), 0.02)
    imp[0, [2, 7]] = 0.8
    ctx = CompressionContext(importance=imp, keys=ctx.keys)
    everyone = build_compressor("prumerge", D, target=4, neighbours=12).plan(tokens, ctx)
    keys = F.normalize(ctx.keys[0], dim=-1)
    for j in set(range(12)) - {2, 7}:  # with unlimited neighbours: each joins the most similar kept token
        assert int(everyone.assignment[0, j]) == int((keys[[2, 7]] @ keys[j]).argmax())
    few = build_compressor("prumerge", D, target=4, neighbours=2).plan(tokens, ctx)
    sim = keys[[2, 7]] @ keys.T
    sim[:, [2, 7]] = -2
    chosen = set(sim.topk(2, dim=1).indices.flatten().tolist())
    assert {j for j in range(12) if few.assignment[0, j] >= 0} == chosen | {2, 7}
    out = build_compressor("prumerge", D, target=4, neighbours=2)(tokens, importance=imp, keys=ctx.keys)
    members = few.assignment[0] == 0
    torch.testing.assert_close(out[0, 0], (tokens[0, members] * imp[0, members, None]).sum(0) / imp[0, members].sum())


# --- pool and random ----------------------------------------------------------------------------
def test_pool_averages_the_patch_grid_and_keeps_a_constant_image_constant():
    grid = torch.arange(2 * N * D, dtype=torch.float32).reshape(2, N, D)
    out = build_compressor("pool", D, keep_ratio=0.25)(grid)
    as_image = grid.transpose(1, 2).reshape(2, D, 4, 4)
    expected = F.avg_pool2d(as_image, 2).reshape(2, D, 4).transpose(1, 2)  # raster order of the 2 x 2 grid
    torch.testing.assert_close(out, expected)
    constant = torch.ones(1, N, D) * 0.7
    torch.testing.assert_close(build_compressor("pool", D, target=9)(constant), torch.full((1, 9, D), 0.7))
    bands = build_compressor("pool", D, target=9).plan(constant).assignment.view(4, 4)
    assert bands[:, 0].tolist() == [0, 3, 3, 6] and bands[0].tolist() == [0, 1, 1, 2]  # 4 rows -> 3 symmetric bands


def test_random_is_a_seeded_subset_in_original_order_the_same_for_every_image():
    tokens, _ = _inputs()
    a = build_compressor("random", D, keep_ratio=0.5, seed=0)
    plan = a.plan(tokens)
    idx = a.subset(N)
    assert torch.equal(plan.kept[0], plan.kept[1]) and torch.equal(idx, idx.sort().values)
    torch.testing.assert_close(a(tokens), tokens[:, idx], rtol=0, atol=0)
    assert torch.equal(build_compressor("random", D, keep_ratio=0.5, seed=0).subset(N), idx)
    assert not torch.equal(build_compressor("random", D, keep_ratio=0.5, seed=1).subset(N), idx)


# --- errors -------------------------------------------------------------------------------------
@pytest.mark.parametrize("name,options,message", [
    ("vmtc", {"keep_ratio": 0}, r"keep_ratio=0 must be in \(0, 1\]"),
    ("pool", {"keep_ratio": 1.5}, r"keep_ratio=1.5 must be in \(0, 1\]"),
    ("random", {"keep_ratio": -0.2}, r"keep_ratio=-0.2 must be in \(0, 1\]"),
    ("visionzip", {}, "give exactly one of keep_ratio or target"),
    ("prumerge", {"keep_ratio": 0.5, "target": 4}, "give exactly one of keep_ratio or target"),
    ("vmtc", {"target": 0}, "target=0 must be a whole number >= 1"),
    ("vmtc", {"target": 4, "primary_fraction": 1.2}, r"primary_fraction=1.2 must be in \[0, 1\]"),
    ("prumerge", {"target": 4, "neighbours": -1}, "neighbours=-1 must be a whole number >= 0"),
])
def test_bad_options_are_refused_when_built(name, options, message):
    with pytest.raises(ValueError, match=message):
        build_compressor(name, D, **options)


def test_bad_inputs_are_clear_errors_before_anything_runs():
    with pytest.raises(ValueError, match="target=20 is more than the 16 visual tokens"):
        build_compressor("vmtc", D, target=20).num_tokens(N)
    with pytest.raises(ValueError, match="target=8 is not a square number .*4 or 9"):
        build_compressor("pool", D, target=8).num_tokens(N)
    with pytest.raises(ValueError, match="pools a square patch grid, but got 17 tokens"):
        build_compressor("pool", D, target=4).num_tokens(17)
    tokens, ctx = _inputs()
    with pytest.raises(ValueError, match=r"vmtc: importance of shape \(2, 15\) for 16 tokens.*keeps \[cls\]"):
        build_compressor("vmtc", D, target=4)(tokens, importance=ctx.importance[:, 1:])
    with pytest.raises(ValueError, match="visionzip needs the vision tower's keys"):
        build_compressor("visionzip", D, target=4)(tokens, importance=ctx.importance)


def test_the_model_refuses_a_method_it_cannot_feed_and_stays_as_it_was(tiny):
    from transformers import SiglipVisionConfig, SiglipVisionModel
    _, llm = T.backbones()
    torch.manual_seed(0)
    siglip = SiglipVisionModel(SiglipVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                                  num_attention_heads=2, image_size=16, patch_size=8))
    m = VLModel.from_backbones(siglip, llm, T.tokenizer())
    with pytest.raises(ValueError, match="'vmtc' ranks patches by the \\[cls\\] token's attention, but this vision "
                                         "tower \\(SiglipVisionModel\\) has no \\[cls\\] token"):
        m.set_token_reduction("vmtc", keep_ratio=0.5)
    m.set_token_reduction("pool", keep_ratio=0.25)  # needs no [cls]
    assert m.num_image_tokens == 1
    with_cls = T.model(keep_cls=True)
    with pytest.raises(ValueError, match="'prumerge' reads the tower's attention per patch \\(4 patches\\), but "
                                         "connector 'linear' emits 5 tokens \\(keep_cls adds the \\[cls\\] token\\)"):
        with_cls.set_token_reduction("prumerge", keep_ratio=0.5)
    with pytest.raises(ValueError, match="target=5 is more than the 4 visual tokens"):
        tiny.set_token_reduction("visionzip", target=5)
    assert with_cls.num_image_tokens == 5 and tiny.num_image_tokens == 4 and tiny.config.compressor == "identity"


# --- on the tiny VLM ----------------------------------------------------------------------------
def test_the_model_hands_the_feature_layers_attention_and_keys_to_the_compressor(tiny):
    tiny.set_token_reduction("visionzip", keep_ratio=0.5)
    block = blocks(tiny, "vision")[0]  # feature layer -2 of 2 blocks: hidden state 1, made by block 0
    seen = {}

    def first(name, part=lambda o: o):  # the tower's own call, not a later one that computes the keys again
        def hook(module, inputs, output):
            seen.setdefault(name, part(output))
        return hook

    hooks = [block.self_attn.k_proj.register_forward_hook(first("k")),
             block.self_attn.register_forward_hook(first("attn", lambda o: o[1]))]
    try:
        tokens, ctx = tiny.compression_inputs(torch.randn(2, 3, 16, 16))
        k = seen["k"].view(2, 5, 2, 16).mean(2)[:, 1:]  # 2 heads of 16, [cls] dropped as the connector drops it
        torch.testing.assert_close(ctx.keys, k)
        torch.testing.assert_close(ctx.importance, seen["attn"].mean(1)[:, 0, 1:])
        assert tokens.shape == (2, 4, 64)
    finally:
        for h in hooks:
            h.remove()
        tiny.set_token_reduction("identity")


@pytest.mark.parametrize("name", METHODS)
def test_each_method_runs_in_the_tiny_vlm_and_the_token_count_follows(tiny, name):
    proc = T.processor(tiny)
    tiny.set_token_reduction(name, keep_ratio=0.5)
    try:
        assert tiny.num_image_tokens == proc.num_image_tokens == tiny.compressor.num_tokens(4)
        batch = proc.collate([T.ColorDataset(2)[i] for i in range(2)])
        assert int((batch["input_ids"] == tiny.config.image_token_id).sum()) == 2 * tiny.num_image_tokens
        assert torch.isfinite(tiny(**batch).loss)
        expected = "eager" if name in ("vmtc", "visionzip", "prumerge") else "sdpa"
        assert tiny.vision_tower.config._attn_implementation == expected
    finally:
        tiny.set_token_reduction("identity")


def test_prumerge_padding_never_reaches_the_llm(tiny):
    proc = T.processor(tiny)
    tiny.set_token_reduction("prumerge", keep_ratio=1.0)  # 4 slots; the IQR rule keeps 1 of 4 patches
    try:
        batch = proc.collate([T.ColorDataset(2)[i] for i in range(2)])
        _, padded = tiny.embed(batch["input_ids"], batch["pixel_values"], return_mask=True)
        assert int(padded.sum()) == 2 * 3
        plain = tiny.compressor.compress

        def filled(value, tell=True):
            def compress(tokens, context):
                out, mask = plain(tokens, context)
                return out.masked_fill(~mask[..., None], value), (mask if tell else None)
            return compress

        logits = []
        for value, tell in ((0.0, True), (50.0, True), (50.0, False)):
            tiny.compressor.compress = filled(value, tell)
            logits.append(tiny(**batch).logits[~padded])
        torch.testing.assert_close(logits[0], logits[1], rtol=0, atol=1e-5)
        assert not torch.allclose(logits[0], logits[2], atol=1e-3)  # unmasked, the same values would matter
        del tiny.compressor.compress
        tiny.compressor.reset_stats()
        tiny(**batch)
        assert tiny.compressor.mean_kept == 1.0
    finally:
        tiny.set_token_reduction("identity")


def test_a_model_saved_with_a_compressor_reloads_in_a_fresh_process_that_imported_nothing_else(tmp_path):
    m = T.model(compressor="prumerge", compressor_kwargs={"keep_ratio": 0.5}).eval()
    batch = T.processor(m).collate([T.ColorDataset(1)[0]])
    m.save_pretrained(tmp_path / "prumerge")
    assert m.config.compressor_module == "vlkit.compressors.prumerge"
    again = VLModel.from_pretrained(tmp_path / "prumerge").eval()
    assert again.config.compressor_kwargs == {"keep_ratio": 0.5} and again.num_image_tokens == 2
    torch.testing.assert_close(again(**batch).logits, m(**batch).logits, rtol=0, atol=0)
    plugin = T.model()
    plugin.set_token_reduction("test_halve")  # registered outside vlkit: the saved module brings it back
    plugin.save_pretrained(tmp_path / "halve")
    # nothing imported but the model (and, for a spec, vlkit.specs): the registry finds the methods itself
    code = ("import sys; from vlkit.model import VLModel; from vlkit.compression import available_compressors\n"
            "from vlkit.specs import ModelSpec; ModelSpec(backbones=1, compressor='vmtc')\n"
            "for d in sys.argv[1:]:\n"
            "    m = VLModel.from_pretrained(d)\n"
            "    print(m.config.compressor, m.num_image_tokens, type(m.compressor).__name__)\n"
            "print(available_compressors())")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "prumerge"), str(tmp_path / "halve")],
                         capture_output=True, text=True, env=env, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    lines = out.stdout.split("\n")
    assert lines[:2] == ["prumerge 2 PruMerge", "test_halve 2 Halve"]
    assert all(f"'{name}'" in lines[2] for name in METHODS + ["identity"])
