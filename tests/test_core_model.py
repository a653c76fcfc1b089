"""The paper-agnostic model core: inserted modules, token-reduction switches, image positions for
attention functions, a text-reading connector that never sees the answer, strict reloading."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))
import _plugins  # noqa: E402,F401  (registers the test parts)
import _vltiny as T  # noqa: E402

from vlkit import attention  # noqa: E402
from vlkit.model import VLModel  # noqa: E402

LAST = {"vision_feature_layer": -1}  # the connector reads the last vision block, so every block may hold an insertion
ADAPTER = {"name": "test_residual", "towers": ["llm", "vision"], "places": ["attention", "mlp"], "layers": None,
           "options": {"rank": 2}}


def _batch(m, n=2):
    ds = T.ColorDataset(n)
    return T.processor(m).collate([ds[i] for i in range(n)])


def test_inserted_modules_sit_in_every_block_start_as_identity_and_change_outputs_once_trained():
    plain, adapted = T.model(**LAST).eval(), T.model(**LAST, insertions=[ADAPTER]).eval()
    n_blocks = 2 + 2  # LLM + vision tower of the tiny model
    assert len(adapted.inserted) == n_blocks * 2
    assert "llm_0_attention" in adapted.inserted and "vision_1_mlp" in adapted.inserted
    b = _batch(plain)
    torch.testing.assert_close(adapted(**b).logits, plain(**b).logits, rtol=0, atol=0)
    with torch.no_grad():
        adapted.inserted["llm_1_attention"].up.weight.normal_()
    assert not torch.allclose(adapted(**b).logits, plain(**b).logits)
    # the towers keep their stock parameter names
    names = {n for n, _ in adapted.named_parameters()} - {n for n, _ in plain.named_parameters()}
    assert names and all(n.startswith("inserted.") for n in names)


def test_vision_insertions_act_inside_the_tower():
    m = T.model(insertions=[{**ADAPTER, "towers": ["vision"], "layers": [0]}]).eval()
    b = _batch(m)
    before = m.encode_images(b["pixel_values"])
    with torch.no_grad():
        m.inserted["vision_0_attention"].up.weight.normal_()
    assert not torch.allclose(m.encode_images(b["pixel_values"]), before)


def test_save_and_reload_round_trip_the_inserted_modules(tmp_path):
    m = T.model(**LAST, insertions=[ADAPTER]).eval()
    with torch.no_grad():
        for mod in m.inserted.values():
            mod.up.weight.normal_()
    b = _batch(m)
    m.save_pretrained(tmp_path / "m")
    again = VLModel.from_pretrained(tmp_path / "m").eval()
    assert set(again.inserted) == set(m.inserted)
    torch.testing.assert_close(again(**b).logits, m(**b).logits, rtol=0, atol=0)


def test_reloading_with_missing_or_unexpected_tensors_is_an_error_naming_them(tmp_path):
    import json
    m = T.model(**LAST, insertions=[ADAPTER])
    m.save_pretrained(tmp_path / "m")
    cfg_path = tmp_path / "m" / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["insertions"] = []  # the checkpoint now holds tensors the config does not expect
    cfg_path.write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match=r"unexpected tensors.*unexpected inserted\.llm_0_attention"):
        VLModel.from_pretrained(tmp_path / "m")
    T.model(**LAST).save_pretrained(tmp_path / "plain")
    cfg = json.loads((tmp_path / "plain" / "config.json").read_text())
    cfg["insertions"] = [ADAPTER]  # the config expects tensors the checkpoint lacks
    (tmp_path / "plain" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match=r"missing inserted\."):
        VLModel.from_pretrained(tmp_path / "plain")


@pytest.mark.parametrize("bad,message", [
    ({"name": "nope"}, "unknown insertion 'nope'; known insertions: .*test_residual"),
    ({**ADAPTER, "places": ["ffn"]}, "unknown place 'ffn'; known places: attention, mlp"),
    ({**ADAPTER, "towers": ["audio"]}, "unknown tower 'audio'"),
    ({**ADAPTER, "layers": [7]}, r"has 2 blocks, no block \[7\]"),
])
def test_bad_insertions_are_clear_errors(bad, message):
    with pytest.raises(ValueError, match=message):
        T.model(**LAST, insertions=[bad])


def test_quantised_llm_keeps_full_precision_inserted_modules_that_train():
    import bitsandbytes as bnb

    from vlkit.specs import LoraSpec, ParamGroup, TrainSpec
    from vlkit.train import train
    m = T.model(llm_quantization="nf4", insertions=[{**ADAPTER, "towers": ["llm"]}])
    assert any(isinstance(x, bnb.nn.Linear4bit) for x in m.language_model.modules())
    assert all(p.dtype == torch.float32 for p in m.inserted.parameters())
    before = {n: p.detach().clone() for n, p in m.inserted.named_parameters()}
    spec = TrainSpec(groups=(ParamGroup("insertions", 1e-2), ParamGroup("lora", 1e-2)), steps=3, batch_size=4,
                     lora=LoraSpec(r=4, alpha=8), mixed_precision="no", progress=False)
    train(m, T.ColorDataset(8), spec, processor=T.processor(m))
    assert any(not torch.equal(before[n], p) for n, p in m.inserted.named_parameters())
    assert any("lora_" in n for n, p in m.named_parameters() if p.requires_grad)
    assert not any(p.requires_grad for n, p in m.named_parameters() if n.startswith("connector."))


def test_set_token_reduction_switches_count_processor_and_tower_attention():
    m = T.model().eval()
    proc = T.processor(m)
    assert m.num_image_tokens == 4 and proc.num_image_tokens == 4
    sdpa = m.vision_tower.config._attn_implementation
    m.set_token_reduction("test_topk_cls", keep=2)
    assert m.num_image_tokens == proc.num_image_tokens == 2 and m.config.compressor == "test_topk_cls"
    assert m.vision_tower.config._attn_implementation == "eager"  # [cls] attention needs probabilities
    b = _batch(m)
    assert int((b["input_ids"] == m.config.image_token_id).sum()) == 2 * 2
    assert torch.isfinite(m(**b).loss)
    m.set_token_reduction("test_halve")
    assert m.num_image_tokens == 2 and m.vision_tower.config._attn_implementation == sdpa
    with pytest.raises(ValueError, match="image-token slots"):  # a batch expanded for the old count
        m.set_token_reduction("identity")
        m(**b)
    with pytest.raises(ValueError, match="unknown compressor 'zip'; known compressors: .*identity"):
        m.set_token_reduction("zip")
    with pytest.raises(ValueError, match="keep=9 is more than the 4 tokens"):
        m.set_token_reduction("test_topk_cls", keep=9)
    assert m.num_image_tokens == 4  # a refused switch leaves the model as it was


def test_vision_attention_is_pinned_kept_on_reload_and_after_a_reduction_switch(tmp_path):
    sdpa = T.model().eval()
    m = T.model(vision_attn_implementation="eager").eval()
    assert sdpa.vision_tower.config._attn_implementation == "sdpa"
    assert m.vision_tower.config._attn_implementation == "eager"
    b = _batch(m)
    with torch.no_grad():  # the same function either way: only speed differs
        torch.testing.assert_close(m(**b).logits, sdpa(**b).logits, atol=1e-5, rtol=1e-5)
    m.save_pretrained(tmp_path)
    assert VLModel.from_pretrained(tmp_path).vision_tower.config._attn_implementation == "eager"
    m.set_token_reduction("test_halve")
    assert m.vision_tower.config._attn_implementation == "eager"


def _recording_attention(seen):
    def fn(module, query, key, value, attention_mask, scaling, dropout=0.0, **kw):
        seen.append(attention.image_key_mask(query.shape[0], key.shape[-2]).clone())
        return attention.eager_attention(module, query, key, value, attention_mask, scaling, dropout, **kw)
    return fn


def test_attention_functions_see_the_image_positions_in_forward_generate_and_cached_scoring():
    seen: list[torch.Tensor] = []
    attention.register_attention("test_recording", _recording_attention(seen))
    m = T.model(llm_attn_implementation="test_recording").eval()
    proc = T.processor(m)
    red = Image.new("RGB", (16, 16), (255, 0, 0))
    b = proc.prompt(["what color is the image?", "what color is it?"], [red, None])
    b.pop("labels")
    slots = b["input_ids"] == m.config.image_token_id
    m(**b)
    assert len(seen) == 2 and all(torch.equal(s, slots) for s in seen)  # one per layer
    seen.clear()
    m.generate(**b, max_new_tokens=3, do_sample=False)
    assert len(seen) == 2 * 3
    last = seen[-1]  # keys = prompt + 2 generated tokens: text
    assert last.shape == (2, slots.shape[1] + 2) and torch.equal(last[:, : slots.shape[1]], slots)
    assert not last[:, slots.shape[1]:].any()
    # a continuation on the prompt's cache, its rows reindexed as choice scoring does
    seen.clear()
    out = m(**b, use_cache=True)
    out.cache.batch_select_indices(torch.tensor([0, 0, 1]))
    out.cache.vlkit_image_mask = out.cache.vlkit_image_mask[[0, 0, 1]]
    more = torch.full((3, 2), T.tokenizer().pad_token_id)
    m(input_ids=more, cache=out.cache, attention_mask=torch.ones(3, slots.shape[1] + 2, dtype=torch.long))
    assert torch.equal(seen[-1][:, : slots.shape[1]], slots[[0, 0, 1]])
    with pytest.raises(RuntimeError, match="no image positions are set"):
        attention.image_key_mask(2, 5)


def test_slots_a_compressor_leaves_empty_are_hidden_from_the_llm_in_forward_generate_and_continuations():
    m = T.model(compressor="test_pad_half").eval()
    proc = T.processor(m)
    b = proc.prompt(["what color is the image?", "what color is it?"],
                    [Image.new("RGB", (16, 16), (255, 0, 0)), Image.new("RGB", (16, 16), (0, 0, 255))])
    b.pop("labels")
    slots = b["input_ids"] == m.config.image_token_id
    _, padded = m.embed(b["input_ids"], b["pixel_values"], b["attention_mask"], return_mask=True)
    assert int(padded.sum()) == 2 * 2 and not (padded & ~slots).any()  # the last 2 of each image's 4 slots
    rows = torch.tensor([0, 0, 1])
    more = torch.full((3, 2), T.tokenizer().pad_token_id)

    def run(fill: float):
        m.compressor.fill = fill
        out = m(**b, use_cache=True)
        gen = m.generate(**b, max_new_tokens=3, do_sample=False, output_scores=True, return_dict_in_generate=True)
        m.select_cache_rows(out.cache, rows)  # a continuation per candidate, as choice scoring does
        cont = m(input_ids=more, cache=out.cache,
                 attention_mask=torch.cat([b["attention_mask"][rows], torch.ones(3, 2, dtype=torch.long)], 1))
        return out.logits[~padded], torch.stack(gen.scores), cont.logits

    for hidden, changed in zip(run(0.0), run(1e3)):
        torch.testing.assert_close(hidden, changed)
    # the control: the same values in slots the model is not told are empty do reach the LLM
    plain = m.compressor.compress
    m.compressor.compress = lambda tokens, context: (plain(tokens, context)[0], None)
    assert not any(torch.allclose(x, y) for x, y in zip(run(0.0), run(1e3)))


def test_a_text_reading_connector_never_sees_the_answer():
    m = T.model(connector="test_text_reader").eval()
    proc = T.processor(m)
    ds = T.ColorDataset(1)
    batch = proc.collate([ds[0]])
    other = {**ds[0], "conversations": [ds[0]["conversations"][0], {"from": "gpt", "value": "it is blue."}]}
    batch2 = proc.collate([other])
    captured = []
    prompt2 = {**ds[0], "conversations": [{"from": "human", "value": "<image>\nwhat is it?"}, ds[0]["conversations"][1]]}
    hook = m.connector.register_forward_hook(lambda mod, i, o: captured.append(o.detach().clone()))
    m(**batch)
    m(**batch2)
    m(**proc.collate([prompt2]))
    hook.remove()
    assert not torch.equal(batch["input_ids"], batch2["input_ids"])  # the answers differ
    torch.testing.assert_close(captured[0], captured[1], rtol=0, atol=0)  # the visual tokens do not
    assert not torch.allclose(captured[0], captured[2])  # while the prompt does reach them


def test_a_text_reading_connector_never_sees_an_answer_in_evaluation_either():
    m = T.model(connector="test_text_reader").eval()
    proc = T.processor(m)
    image = T.ColorDataset(1)[0]["image"]

    def visual(conversation, **kw):
        seen = []
        hook = m.connector.register_forward_hook(lambda mod, i, o: seen.append(o.detach().clone()))
        batch = proc([conversation], [image], **kw)
        batch.pop("labels")  # evaluation: nothing says which tokens are answers but the processor's text mask
        with torch.no_grad():
            m(**batch)
            m.generate(**batch, max_new_tokens=1, do_sample=False) if kw else None
        hook.remove()
        assert all(torch.equal(seen[0], s) for s in seen)  # forward and generate read the same tokens
        return seen[0]

    def chat(first_answer, question="what colour is it?"):
        return [{"from": "human", "value": "<image>\nwhat is it?"}, {"from": "gpt", "value": first_answer},
                {"from": "human", "value": question}, {"from": "gpt", "value": "red."}]

    # equal up to the summation order of sequences of other lengths
    torch.testing.assert_close(visual(chat("a square.")), visual(chat("a big blue circle.")), rtol=0, atol=1e-6)
    torch.testing.assert_close(visual(chat("a square."), add_generation_prompt=True),
                               visual(chat("a big blue circle."), add_generation_prompt=True), rtol=0, atol=1e-6)
    # a later question is not read either: it could give an earlier answer away
    torch.testing.assert_close(visual(chat("a square.")), visual(chat("a square.", "and its shape?")), rtol=0, atol=1e-6)
    first = [{"from": "human", "value": "<image>\nwhat colour is it?"}, {"from": "gpt", "value": "a square."}]
    assert not torch.allclose(visual(chat("a square.")), visual(first))  # while the first question is read


def test_prefill_flops_count_quantised_layers_as_their_full_precision_products():
    from vlkit.eval.efficiency import prefill_flops
    plain, quantised = T.model().eval(), T.model(llm_quantization="nf4").eval()
    b = T.processor(plain).prompt(["what color is the image?"], [T.ColorDataset(1)[0]["image"]])
    b.pop("labels")
    flops = prefill_flops(plain, b)
    assert flops > 0 and prefill_flops(quantised, b) == flops
    halved = T.model().eval()
    halved.set_token_reduction("test_halve")
    hb = T.processor(halved).prompt(["what color is the image?"], [T.ColorDataset(1)[0]["image"]])
    hb.pop("labels")
    assert prefill_flops(halved, hb) < flops  # fewer visual tokens, fewer FLOPs
