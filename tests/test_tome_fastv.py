"""ToMe (merging in the vision tower) and FastV (pruning in the LLM) as registered compressors (notebook 06)."""
import math
import sys
from pathlib import Path

import pytest
import torch
from transformers import (CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModel, DynamicCache, LlamaConfig,
                          LlamaForCausalLM)

sys.path.insert(0, str(Path(__file__).parent))
import _vltiny as T  # noqa: E402
from _vltiny import one_thread  # noqa: E402,F401  (autouse: one torch thread in this module)

from vlkit.attention import set_attention  # noqa: E402
from vlkit.compressors.fastv import select_kept  # noqa: E402
from vlkit.compressors.tome import (Matching, bipartite_soft_matching, merge_wavg, proportional_bias,  # noqa: E402
                                    reachable, schedule)
from vlkit.eval.scoring import continuation_scores  # noqa: E402
from vlkit.insertions import blocks  # noqa: E402
from vlkit.model import VLModel  # noqa: E402
from vlkit.processor import VLProcessor  # noqa: E402


def _model(image=64, vision_layers=4, llm_layers=2, seed=0, **kwargs):
    """A tiny VLM whose tower has the workbook's geometry (64 px, 8 px patches: 64 patches + [cls]) or less."""
    torch.manual_seed(seed)
    vision = CLIPVisionModel(CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=vision_layers,
                                              num_attention_heads=2, image_size=image, patch_size=8))
    llm = LlamaForCausalLM(LlamaConfig(vocab_size=len(T.tokenizer()), hidden_size=64, intermediate_size=128,
                                       num_hidden_layers=llm_layers, num_attention_heads=2, num_key_value_heads=2,
                                       max_position_embeddings=256))
    torch.manual_seed(seed + 1)
    return VLModel.from_backbones(vision, llm, T.tokenizer(), **kwargs).eval()


def _processor(m, image):
    return VLProcessor.for_model(m, CLIPImageProcessor(size={"shortest_edge": image},
                                                       crop_size={"height": image, "width": image}), T.tokenizer())


def _images(n):
    ds = T.ColorDataset(n)
    return [ds[i]["image"] for i in range(n)]


# --- ToMe: the math --------------------------------------------------------------------------------------


def test_matching_merges_the_most_similar_pair_first_and_never_cls():
    torch.manual_seed(0)
    metric = torch.randn(1, 7, 8)  # [cls], then A = tokens 2, 4, 6 and B = tokens 1, 3, 5
    metric[0, 4] = metric[0, 3]    # identical pair: A index 2 -> B index 1
    metric[0, 0] = metric[0, 1]    # [cls] identical to a B token too, yet protected
    m = bipartite_soft_matching(metric, 1)
    assert m.src.tolist() == [[2]] and m.dst.tolist() == [[1]]
    assert m.keep.tolist() == [[0, 1, 3]]  # [cls] (A index 0) kept, first
    assert bipartite_soft_matching(metric, 1, protect_first=False).src.tolist() == [[0]]  # unprotected, it goes
    with pytest.raises(ValueError, match="0..3 of 7"):
        bipartite_soft_matching(metric, 4)  # ToMe's bound: half of the 6 unprotected tokens


def test_merge_wavg_adds_sizes_and_takes_size_weighted_means():
    x = torch.arange(7 * 2, dtype=torch.float).view(1, 7, 2)
    m = Matching(keep=torch.tensor([[0, 1, 3]]), src=torch.tensor([[2]]), dst=torch.tensor([[1]]))  # token 4 -> 3
    merged, size = merge_wavg(x, m)
    assert merged.shape == (1, 6, 2) and size[0, :, 0].tolist() == [1, 1, 1, 1, 2, 1]  # [A kept, B]
    torch.testing.assert_close(merged[0, 4], (x[0, 3] + x[0, 4]) / 2)
    # again, with sizes: a token of 2 patches weighs twice a token of 1
    size_in = torch.tensor([1., 1., 1., 2., 3., 1., 1.]).view(1, 7, 1)
    merged, size = merge_wavg(x, m, size_in)
    assert size[0, 4, 0] == 5 and size.sum() == size_in.sum()
    torch.testing.assert_close(merged[0, 4], (2 * x[0, 3] + 3 * x[0, 4]) / 5)


def test_proportional_bias_is_log_size_so_a_merged_key_counts_as_its_copies():
    torch.manual_seed(0)
    q, k, v = torch.randn(1, 1, 3, 4), torch.randn(1, 1, 3, 4), torch.randn(1, 1, 3, 4)
    k[..., 2, :], v[..., 2, :] = k[..., 1, :], v[..., 1, :]  # keys 1 and 2 are copies: merge them
    size = torch.tensor([1., 2.]).view(1, 2, 1)
    bias = proportional_bias(size)
    assert bias.shape == (1, 1, 1, 2) and torch.allclose(bias.exp().flatten(), size.flatten())
    whole = torch.softmax(q @ k.transpose(-1, -2), -1) @ v
    merged = torch.softmax(q @ k[..., :2, :].transpose(-1, -2) + bias, -1) @ v[..., :2, :]
    torch.testing.assert_close(merged, whole)


def test_schedule_spreads_merges_evenly_within_the_bound():
    assert reachable(65, 3) == 56  # 65 -> 33 -> 17 -> 9: the workbook tower's limit
    assert schedule(65, 3, 32) == [11, 11, 10]
    assert schedule(65, 3, 56) == [32, 16, 8]  # at the limit only the decreasing schedule fits
    for total in (1, 30, 45, 55):
        plan, t = schedule(65, 3, total), 65
        assert sum(plan) == total
        for r in plan:
            assert r <= (t - 1) // 2
            t -= r
    with pytest.raises(ValueError, match="at most 56 of 65"):
        schedule(65, 3, 57)


# --- ToMe: the patched tower ---------------------------------------------------------------------------------


def test_tome_tower_returns_n_minus_merges_with_cls_kept_and_log_size_in_the_mask():
    m = _model()
    px = torch.randn(2, 3, 64, 64)
    m.set_token_reduction("tome", r=8)
    assert m.compressor.merges == [8, 8, 8] and m.num_image_tokens == 64 - 3 * 8
    seen = []
    blocks(m, "vision")[1].self_attn.register_forward_pre_hook(
        lambda mod, a, kw: seen.append(kw["attention_mask"]), with_kwargs=True)
    with torch.no_grad():
        out = m.vision_tower(pixel_values=px, output_hidden_states=True)
        assert [h.shape[1] for h in out.hidden_states] == [65, 57, 49, 41, 41]  # the last layer does not merge
        assert m.encode_images(px).shape == (2, 40, 64)
    sizes = m.compressor.sizes
    assert sizes[:, 0].eq(1).all() and sizes.sum(1).eq(65).all()  # [cls] alone; every patch somewhere
    first = m.compressor.positions[..., 0]
    assert first[:, 0].eq(0).all() and (first.diff(dim=1) > 0).all()  # [cls] first, then raster order for the LLM
    # layer 0 matches on its keys averaged over heads, and layer 1 attends with log(size) of that merge
    layer0 = blocks(m, "vision")[0]
    with torch.no_grad():
        keys = layer0.self_attn.k_proj(layer0.layer_norm1(out.hidden_states[0])).view(2, 65, 2, 16).mean(2)
    _, by_hand = merge_wavg(out.hidden_states[0], bipartite_soft_matching(keys, 8))
    assert seen[0].shape == (2, 1, 1, 57) and torch.equal(seen[0], proportional_bias(by_hand))
    assert (by_hand > 1).any()
    m.set_token_reduction("tome", keep_ratio=0.125)  # the docstring's lowest ratio on this tower
    assert m.compressor.merges == [32, 16, 8] and m.num_image_tokens == 8


def test_tome_with_r0_is_the_tower_and_detach_restores_it():
    m = _model()
    proc = _processor(m, 64)
    examples = [{"image": im, "conversations": T.ColorDataset(1)[0]["conversations"]} for im in _images(2)]
    b = proc.collate(examples)
    layers = blocks(m, "vision")
    with torch.no_grad():
        ref = m(**b).logits
        m.set_token_reduction("tome", r=0)
        assert "forward" in vars(layers[0])  # patched, yet nothing merges
        assert torch.equal(m(**b).logits, ref)
        m.set_token_reduction("tome", r=4)
        assert not torch.allclose(m(**proc.collate(examples)).logits[:, -1], ref[:, -1])  # merging does change it
        m.set_token_reduction("identity")
        assert torch.equal(m(**b).logits, ref)
    assert all("forward" not in vars(layer) and not layer.self_attn.k_proj._forward_hooks for layer in layers)


def test_tome_refuses_what_it_cannot_do_and_leaves_the_model_as_it_was():
    m = _model()
    px = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        ref = m.encode_images(px)
    with pytest.raises(ValueError, match="ToMe's bound"):
        m.set_token_reduction("tome", r=17)  # 65 -> 48 -> 31: layer 2 can merge 15
    with pytest.raises(ValueError, match="lowest keep_ratio here is 0.125"):
        m.set_token_reduction("tome", keep_ratio=0.1)
    with pytest.raises(ValueError, match="one of keep_ratio"):
        m.set_token_reduction("tome", keep_ratio=0.5, r=2)
    assert m.config.compressor == "identity" and m.num_image_tokens == 64
    with torch.no_grad():
        assert torch.equal(m.encode_images(px), ref)
    grid = _model(connector="cls_every_k", connector_kwargs={"k": 2})
    with pytest.raises(ValueError, match="map each token on its own"):
        grid.set_token_reduction("tome", r=2)


def test_tome_end_to_end_on_the_tiny_vlm_and_reload(tmp_path):
    m = T.model().eval()  # 2-layer tower, 4 patches: one merging layer, at most 2 merges
    proc = T.processor(m)
    ds = T.ColorDataset(2)
    with torch.no_grad():
        ref = m(**proc.collate([ds[0], ds[1]])).logits
        m.set_token_reduction("tome", keep_ratio=0.5)
        assert m.num_image_tokens == proc.num_image_tokens == 2
        b = proc.collate([ds[0], ds[1]])
        assert int((b["input_ids"] == m.config.image_token_id).sum()) == 2 * 2
        out = m(**b)
        assert torch.isfinite(out.loss)
        m.save_pretrained(tmp_path)
        assert torch.equal(VLModel.from_pretrained(tmp_path).eval()(**b).logits, out.logits)
        m.set_token_reduction("identity")
        assert torch.equal(m(**proc.collate([ds[0], ds[1]])).logits, ref)


# --- FastV ------------------------------------------------------------------------------------------------------

K = 1


@pytest.fixture(scope="module")
def fv_module():
    """A 4-layer LLM reading 16 visual tokens (32 px images), left- and right-padded batches."""
    m = _model(image=32, vision_layers=2, llm_layers=4)
    proc = _processor(m, 32)
    imgs = _images(2)
    left = proc.prompt(["what color is the image?", "what color is it? it is"], imgs)
    right = proc([[{"from": "human", "value": "<image>\nwhat color?"}, {"from": "gpt", "value": "it is red."}],
                  [{"from": "human", "value": "<image>\nwhat color is the image?"},
                   {"from": "gpt", "value": "it is blue, it is blue."}]], imgs)
    for b in (left, right):
        b.pop("labels")
    assert not left["attention_mask"][:, 0].all() and not right["attention_mask"][:, -1].all()  # both paddings
    return m, proc, {"left": left, "right": right}


@pytest.fixture
def fv(fv_module):
    yield fv_module
    fv_module[0].set_token_reduction("identity")  # each test starts from the plain model, failed or not


def _flops(m, b):
    # FlopCounterMode, as vlkit.eval.efficiency.prefill_flops counts (without its bitsandbytes import: seconds)
    from torch.utils.flop_counter import FlopCounterMode
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        m(**b)
    return counter.get_total_flops()


def _image(m, b):
    return b["input_ids"] == m.config.image_token_id


def test_fastv_keeping_everything_is_the_model(fv):
    m, _, batches = fv
    with torch.no_grad():
        refs = {k: m(**b).logits for k, b in batches.items()}
        for drop in (False, True):
            m.set_token_reduction("fastv", K=K, keep_ratio=1.0, drop=drop)
            for k, b in batches.items():  # (a padding query attends to nothing: its logits mean nothing)
                real = b["attention_mask"].bool()
                torch.testing.assert_close(m(**b).logits[real], refs[k][real], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("padding", ["left", "right"])
def test_fastv_keeps_the_top_of_each_rows_last_real_token_attention_at_K(fv, padding):
    m, _, batches = fv
    b = batches[padding]
    m.language_model.set_attn_implementation("eager")
    with torch.no_grad():
        att = m(**b, output_attentions=True).attentions[K].mean(1)  # [B, L, L], by hand
    m.language_model.set_attn_implementation("sdpa")
    image = _image(m, b)

    def top8(query):
        scores = att[torch.arange(2), query].masked_fill(~image, -1)
        kept = torch.zeros_like(image)
        return kept.scatter(1, scores.topk(8, dim=1).indices, True)

    last_real = b["attention_mask"].shape[1] - 1 - b["attention_mask"].flip(1).argmax(1)
    expected = top8(last_real)
    m.set_token_reduction("fastv", K=K, keep_ratio=0.5)
    assert m.compressor.effective_tokens(16) == 8 and m.num_image_tokens == 16
    with torch.no_grad():
        m(**b)
    pruned = m.compressor.pruned
    assert torch.equal(image & ~pruned, expected) and not (pruned & ~image).any()
    if padding == "right":  # the check can fail: the last position (a pad) would rank otherwise
        assert not torch.equal(top8(torch.full((2,), image.shape[1] - 1)), expected)
    # the selection itself, on constructed scores: rows with different image counts
    scores = torch.tensor([[9., 1., 5., 3., 0.], [2., 8., 7., 6., 1.]])
    image = torch.tensor([[False, True, True, True, True], [True, True, False, False, False]])
    assert select_kept(scores, image, 0.5).tolist() == [[False, False, True, True, False],
                                                        [False, True, False, False, False]]


def test_after_K_a_pruned_token_changes_nothing_while_a_kept_one_does(fv):
    m, _, batches = fv
    b = batches["right"]
    layers = blocks(m, "llm")
    m.set_token_reduction("fastv", K=K, keep_ratio=0.5, drop=False)
    with torch.no_grad():
        ref = m(**b).logits
    pruned = m.compressor.pruned
    kept_image = _image(m, b) & ~pruned
    text = ~_image(m, b)

    def perturbed(layer, where):
        h = layers[layer].register_forward_pre_hook(
            lambda mod, args, kw: ((args[0] + 50 * where[..., None],), kw), with_kwargs=True)
        try:
            with torch.no_grad():
                out = m(**b).logits
        finally:
            h.remove()
        if layer > K:
            assert torch.equal(m.compressor.pruned, pruned)  # the same decision, made before the change
        return out

    after = perturbed(K + 1, pruned)  # pruned tokens' states entering the cut layers
    torch.testing.assert_close(after[~pruned], ref[~pruned], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(perturbed(K + 1, kept_image)[text], ref[text], atol=1e-3)  # kept ones still count
    assert not torch.allclose(perturbed(K, pruned)[text], ref[text], atol=1e-3)  # layers 0..K see them all


@pytest.mark.parametrize("padding", ["left", "right"])
def test_dropping_gives_the_masked_logits_and_saves_flops(fv, padding):
    m, _, batches = fv
    b = batches[padding]
    m.set_token_reduction("fastv", K=K, keep_ratio=0.5, drop=False)
    with torch.no_grad():
        masked = m(**b).logits
    flops_masked = _flops(m, b)
    m.set_token_reduction("fastv", K=K, keep_ratio=0.5)  # drop=True: plain prefills drop
    with torch.no_grad():
        out = m(**b)
    assert out.cache is None  # dropped tokens leave no consistent cache
    pruned = m.compressor.pruned
    assert pruned.sum(1).tolist() == [8, 8]
    assert torch.isnan(out.logits[pruned]).all() and torch.isfinite(out.logits[~pruned]).all()
    shown = ~pruned & b["attention_mask"].bool()  # a padding query attends to nothing: its logits mean nothing
    torch.testing.assert_close(out.logits[shown], masked[shown], atol=1e-5, rtol=1e-5)
    assert _flops(m, b) < 0.9 * flops_masked


def test_fastv_with_a_kv_cache_keeps_the_prompts_decision(fv):
    m, proc, batches = fv
    b = batches["left"]
    mask = b["attention_mask"]
    answer = torch.tensor(T.tokenizer().encode(" it is red.", add_special_tokens=False)).expand(2, -1)
    full_mask = torch.cat([mask, torch.ones_like(answer)], 1)
    start = mask.sum(1, keepdim=True)
    m.set_token_reduction("fastv", K=K, keep_ratio=0.5)
    with torch.no_grad():
        out = m(**b, position_ids=(mask.cumsum(1) - 1).clamp(min=0), use_cache=True)
        decision = m.compressor.pruned
        assert torch.equal(out.cache.vlkit_fastv_pruned, decision) and decision.any()
        cont = m(input_ids=answer, cache=out.cache, attention_mask=full_mask,
                 position_ids=start + torch.arange(answer.shape[1])).logits
        # the whole sequence at once, with the prompt's decision handed over on an empty cache
        preset = DynamicCache()
        preset.vlkit_fastv_pruned = decision
        whole = m(input_ids=torch.cat([b["input_ids"], answer], 1), pixel_values=b["pixel_values"],
                  attention_mask=full_mask, position_ids=(full_mask.cumsum(1) - 1).clamp(min=0), cache=preset).logits
    torch.testing.assert_close(cont, whole[:, -answer.shape[1]:], atol=1e-5, rtol=1e-5)
    # choice scoring copies the prompt's cache per candidate, the decision with it
    prompts, images = ["<image>\nwhat color is the image?", "<image>\nwhat color?"], _images(2)
    cands = [["it is red.", "it is blue."], ["it is green.", "it is white.", "it is red."]]
    pruned_scores = continuation_scores(m, proc, prompts, images, cands, progress=False)
    m.set_token_reduction("fastv", K=K, keep_ratio=1.0)
    kept_all = continuation_scores(m, proc, prompts, images, cands, progress=False)
    m.set_token_reduction("identity")
    plain = continuation_scores(m, proc, prompts, images, cands, progress=False)
    flat = lambda s: torch.tensor([v for row in s for v, _ in row])  # noqa: E731
    torch.testing.assert_close(flat(kept_all), flat(plain), atol=1e-4, rtol=1e-5)
    assert not torch.allclose(flat(pruned_scores), flat(plain), atol=1e-4)


def test_fastv_runs_eager_attention_only_where_it_ranks_unless_capturing(fv, monkeypatch):
    import vlkit.attention as A
    m, _, batches = fv
    eager_layers = []
    real = A.eager_attention
    monkeypatch.setattr(A, "eager_attention", lambda mod, *a, **kw: eager_layers.append(mod.layer_idx) or real(mod, *a, **kw))
    m.set_token_reduction("fastv", K=K, keep_ratio=0.5)  # on the fixture's SDPA LLM
    with torch.no_grad():
        m(**batches["left"])
        assert eager_layers == [K]  # the other layers keep SDPA: FastV's saving is not eaten by eager attention
        eager_layers.clear()
        with A.capture_attention() as maps:
            m(**batches["left"])
    assert eager_layers == list(range(len(blocks(m, "llm")))) and sorted(maps) == eager_layers


def test_fastv_generates_on_its_cache(fv):
    m, _, batches = fv
    b = batches["left"]
    with torch.no_grad():
        ref = m.generate(**b, max_new_tokens=4, do_sample=False)
        m.set_token_reduction("fastv", K=K, keep_ratio=1.0)
        assert torch.equal(m.generate(**b, max_new_tokens=4, do_sample=False), ref)
        m.set_token_reduction("fastv", K=2, keep_ratio=0.25)
        assert m.generate(**b, max_new_tokens=4, do_sample=False).shape == ref.shape


def test_fastv_refuses_a_layer_beyond_the_llm_and_leaves_the_model(fv):
    m, _, _ = fv
    with pytest.raises(ValueError, match="K=3 leaves no layer to prune in this 4-layer LLM"):
        m.set_token_reduction("fastv", K=3, keep_ratio=0.5)
    with pytest.raises(ValueError, match="K=9"):
        m.set_token_reduction("fastv", K=9)
    with pytest.raises(ValueError, match="keep_ratio=0"):
        m.set_token_reduction("fastv", K=1, keep_ratio=0)
    assert m.config.compressor == "identity" and m.language_model.config._attn_implementation == "sdpa"
    assert not any(h for layer in blocks(m, "llm") for h in layer._forward_pre_hooks.values())


def test_fastv_end_to_end_with_labels_reload_and_identity_restores(fv, tmp_path):
    m, proc, _ = fv
    ds = T.ColorDataset(2)
    b = proc.collate([ds[0], ds[1]])
    with torch.no_grad():
        ref = m(**b)
        m.set_token_reduction("fastv", K=1, keep_ratio=0.5)
        out = m(**b)  # labels: the masked path, every position's logits
        assert torch.isfinite(out.logits).all() and torch.isfinite(out.loss) and not math.isclose(out.loss, ref.loss)
        m.save_pretrained(tmp_path)
        again = VLModel.from_pretrained(tmp_path).eval()
        assert again.language_model.config._attn_implementation == "vlkit_fastv"
        torch.testing.assert_close(again(**b).logits, out.logits, atol=1e-6, rtol=1e-6)
        again.set_token_reduction("identity")
        assert again.language_model.config._attn_implementation == "sdpa"
        set_attention(m.language_model, "eager")  # switching FastV's attention away is caught
        with pytest.raises(RuntimeError, match="would run unpruned"):
            m(**b)
        m.set_token_reduction("identity")
        assert torch.equal(m(**b).logits, ref.logits)


# --- with the connector-side methods: one compressor at a time, attach-then-count, one cache reindexing ---------


def test_switches_between_tome_fastv_and_connector_side_methods_and_a_refused_one_restores_the_last():
    m = _model()  # 64 patches + [cls], a 4-layer tower, a 2-layer LLM
    px = torch.randn(2, 3, 64, 64)
    layers, llm_attention = blocks(m, "vision"), m.language_model.config._attn_implementation
    with torch.no_grad():
        m.set_token_reduction("tome", r=8)
        # ToMe goes through the model's compress(tokens, context) as any compressor: the default one
        tokens, context = m.compression_inputs(px)
        assert tokens.shape == (2, 40, 64) and context.importance is None and context.keys is None
        out, mask = m.compressor.compress(tokens, context)
        assert torch.equal(out, tokens) and mask is None
        ref, mask = m.encode_images(px, return_mask=True)
        assert ref.shape == (2, 40, 64) and mask is None
        # a connector-side budget above the tokens fails only when counted, after ToMe was detached: it is back
        with pytest.raises(ValueError, match="more than the 64 visual tokens"):
            m.set_token_reduction("visionzip", target=65)
        assert (m.config.compressor, m.config.compressor_module, m.num_image_tokens) == (
            "tome", "vlkit.compressors.tome", 40)
        assert torch.equal(m.encode_images(px), ref)
        # a connector-side method after ToMe reads the whole tower: all 64 patches, [cls] attention and keys
        m.set_token_reduction("visionzip", keep_ratio=0.5)
        assert all("forward" not in vars(layer) for layer in layers) and m.num_image_tokens == 32
        tokens, context = m.compression_inputs(px)
        assert tokens.shape[1] == 64 and context.importance.shape == (2, 64) and context.keys.shape == (2, 64, 16)
        assert m.encode_images(px).shape == (2, 32, 64)

        m.set_token_reduction("fastv", K=0, keep_ratio=0.5)
        assert m.language_model.config._attn_implementation == "vlkit_fastv" and m.num_image_tokens == 64
        out, mask = m.compressor.compress(*m.compression_inputs(px))
        assert out.shape == (2, 64, 64) and mask is None  # every slot reaches the LLM, which prunes
        for name, options, message in (("tome", {"r": 17}, "ToMe's bound"),
                                        ("random", {"target": 65}, "more than the 64 visual tokens")):
            with pytest.raises(ValueError, match=message):
                m.set_token_reduction(name, **options)
            assert m.config.compressor == "fastv" and m.language_model.config._attn_implementation == "vlkit_fastv"
            assert all("forward" not in vars(layer) for layer in layers)
        # from FastV to a method that pads: the LLM's attention is its own again, the padded slots hidden
        m.set_token_reduction("prumerge", keep_ratio=0.5)
        assert m.language_model.config._attn_implementation == llm_attention
        proc = _processor(m, 64)
        b = proc.prompt(["what color is the image?", "what color is it?"], _images(2))
        b.pop("labels")
        cache = m(**b, use_cache=True).cache
        assert cache.vlkit_padded_mask.any() and cache.vlkit_image_mask.any()
        assert not hasattr(cache, "vlkit_fastv_pruned")


def test_one_select_cache_rows_reindexes_every_mask_vlkit_keeps_on_a_cache():
    from vlkit import attention
    assert VLModel.select_cache_rows is attention.select_cache_rows  # one implementation, two ways to reach it
    cache = DynamicCache()
    keys = torch.randn(2, 1, 5, 4)
    cache.update(keys, torch.randn(2, 1, 5, 4), 0)
    masks = {name: torch.rand(2, 5) > 0.5
             for name in ("vlkit_image_mask", "vlkit_padded_mask", "vlkit_fastv_pruned", "vlkit_some_future_mask")}
    for name, value in masks.items():
        setattr(cache, name, value)
    rows = [1, 0, 1]  # a list as well as a tensor
    attention.select_cache_rows(cache, rows)
    assert torch.equal(cache.layers[0].keys, keys[rows])
    for name, value in masks.items():
        assert torch.equal(getattr(cache, name), value[rows]), name


def test_the_registry_finds_both_without_importing_them(monkeypatch):
    # as in a fresh process: no vlkit.compressors module imported, none of their names registered (all
    # restored afterwards)
    import vlkit
    from transformers import AttentionInterface

    from vlkit.compression import COMPRESSORS, available_compressors, build_compressor
    # every method vlkit.compressors registers (tome, fastv and the connector-side ones): re-importing
    # the package registers them all again, as a fresh process would
    available_compressors()  # loaded, to know what to unload
    ours = sorted(n for n, c in COMPRESSORS._classes.items() if c.__module__.startswith("vlkit.compressors."))
    assert {"tome", "fastv"} <= set(ours)
    for name in ours:
        monkeypatch.delitem(COMPRESSORS._classes, name)
    for mod in [k for k in sys.modules if k.startswith("vlkit.compressors")]:
        monkeypatch.delitem(sys.modules, mod)
    monkeypatch.delattr(vlkit, "compressors")
    monkeypatch.setitem(AttentionInterface._global_mapping, "vlkit_fastv",
                        AttentionInterface._global_mapping["vlkit_fastv"])
    assert {"tome", "fastv"} <= set(available_compressors())
    assert set(ours) <= set(available_compressors())
    assert build_compressor("fastv", 8, K=2).num_tokens(16) == 16
