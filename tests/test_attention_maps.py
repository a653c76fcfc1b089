"""One generation's attention captured for the explorer (vlkit.attention_maps): the rows are the right ones,
the model is left as it was, and bad input is a clear error."""
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))
import _vltiny as T  # noqa: E402
from _vltiny import one_thread  # noqa: E402,F401

from vlkit import attention  # noqa: E402
from vlkit.attention_maps import capture_generation  # noqa: E402
from vlkit.compressors import PlanCompressor  # noqa: E402

PROMPT = "what color is the image?"
RED = Image.new("RGB", (16, 16), (255, 0, 0))


def _noisy(seed=0):
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (16, 16, 3), dtype=np.uint8))


@pytest.fixture(scope="module")
def tiny():
    m = T.model().eval()
    return m, T.processor(m)


def test_rows_are_the_attention_that_chose_each_token(tiny):
    """Each answer row equals the row of the query before that token in one forward over prompt + answer, and
    each prompt row its own: the decoding steps are assembled at the right positions."""
    m, p = tiny
    g = capture_generation(m, p, _noisy(), PROMPT, max_new_tokens=5)
    assert len(g.answer) == len(g.answer_ids) == 5
    ids = torch.tensor([g.prompt_ids + g.answer_ids[:-1]])
    pixels = p.image_processor([_noisy()], return_tensors="pt")["pixel_values"]
    attention.set_attention(m.language_model, "vlkit_capture")
    try:
        with torch.no_grad(), attention.capture_attention() as maps:
            m(input_ids=ids, pixel_values=pixels)
    finally:
        attention.set_attention(m.language_model, "sdpa")
    rows = [q.position for q in g.queries]
    full = np.stack([maps[layer][0][:, rows].numpy() for layer in range(2)])
    np.testing.assert_allclose(g.llm, full, atol=1e-5)
    # the answer's first row is the prompt's last query; later ones the answer tokens before them
    assert [q.position for q in g.answer] == list(range(len(g.prompt_ids) - 1, len(ids[0])))
    assert g.image_positions.tolist() == np.flatnonzero(ids[0].numpy() == m.config.image_token_id).tolist()
    assert g.answer_text == p.decode(torch.tensor([g.answer_ids]))[0]


def test_capture_restores_attention_and_mode_also_on_error(tiny, monkeypatch):
    m, p = tiny
    m.train()
    capture_generation(m, p, RED, PROMPT, max_new_tokens=2)
    assert m.training and m.language_model.config._attn_implementation == "sdpa"
    assert m.vision_tower.config._attn_implementation == "sdpa"
    monkeypatch.setattr(m, "generate", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("boom")))
    with pytest.raises(RuntimeError, match="boom"):
        capture_generation(m, p, RED, PROMPT)
    assert m.training and m.language_model.config._attn_implementation == "sdpa"
    m.eval()


def test_a_methods_own_attention_is_kept_and_must_record(tiny):
    """A registered function outside transformers (CMAI, FastV) runs as it is; recording nothing is an error."""
    m, p = tiny
    calls = []

    def silent(module, q, k, v, mask, scaling, dropout=0.0, **kw):
        calls.append(module.layer_idx)
        return attention.eager_attention(module, q, k, v, mask, scaling, dropout)

    def recording(module, q, k, v, mask, scaling, dropout=0.0, **kw):
        calls.append(module.layer_idx)
        out, probs = attention.eager_attention(module, q, k, v, mask, scaling, dropout)
        attention.record(module, probs)
        return out, probs

    def first_layer_only(module, q, k, v, mask, scaling, dropout=0.0, **kw):
        out, probs = attention.eager_attention(module, q, k, v, mask, scaling, dropout)
        if module.layer_idx == 0:
            attention.record(module, probs)
        return out, probs

    attention.register_attention("test_silent", silent)
    attention.register_attention("test_recording", recording)
    attention.register_attention("test_first_layer_only", first_layer_only)
    try:
        for name in ("test_silent", "test_first_layer_only"):
            attention.set_attention(m.language_model, name)
            with pytest.raises(RuntimeError, match=r"vlkit\.attention\.record"):
                capture_generation(m, p, RED, PROMPT, max_new_tokens=2)
        attention.set_attention(m.language_model, "test_recording")
        calls.clear()
        g = capture_generation(m, p, RED, PROMPT, max_new_tokens=2)
        assert calls and g.llm.shape[:2] == (2, 2)
        assert m.language_model.config._attn_implementation == "test_recording"
    finally:
        attention.set_attention(m.language_model, "sdpa")


def test_bad_input_is_a_clear_error(tiny):
    m, p = tiny
    for prompt in ("", "   \n"):
        with pytest.raises(ValueError, match="prompt is empty"):
            capture_generation(m, p, RED, prompt)
    with pytest.raises(ValueError, match=r"are 32x32 but the vision tower takes 16x16"):
        capture_generation(m, p, torch.zeros(3, 32, 32), PROMPT)
    wrong = T.VLProcessor.for_model(m, T.CLIPImageProcessor(size={"shortest_edge": 24},
                                                            crop_size={"height": 24, "width": 24}), T.tokenizer())
    with pytest.raises(ValueError, match="processor's images are 24x24"):
        capture_generation(m, wrong, RED, PROMPT)
    with pytest.raises(TypeError, match="VLModel"):
        capture_generation(m.language_model, p, RED, PROMPT)
    with pytest.raises(TypeError, match="PIL image"):
        capture_generation(m, p, "red.png", PROMPT)
    g = capture_generation(m, p, RED, PROMPT, max_new_tokens=2)
    for token in (len(g.queries), -1, 1.0):
        with pytest.raises(IndexError, match="out of range"):
            g.to_image(0, None, token)
    with pytest.raises(IndexError, match="layer 2 is out of range"):
        g.to_image(2, None, 0)


def test_visual_tokens_map_onto_the_patch_grid_through_the_compressor():
    m = T.model().eval()
    p = T.processor(m)
    g = capture_generation(m, p, _noisy(), PROMPT, max_new_tokens=1)
    assert g.grid == (2, 2) and g.patch_slot.tolist() == [0, 1, 2, 3] and g.kept is None
    np.testing.assert_allclose(g.on_grid(np.array([1.0, 2.0, 3.0, 4.0])), [1.0, 2.0, 3.0, 4.0])

    m.set_token_reduction("vmtc", keep_ratio=0.5)
    g = capture_generation(m, p, _noisy(), PROMPT, max_new_tokens=1)
    pixels = p.image_processor([_noisy()], return_tensors="pt")["pixel_values"]
    assert isinstance(m.compressor, PlanCompressor)
    plan = m.compressor.plan(*m.compression_inputs(pixels))
    assert g.patch_slot.tolist() == plan.assignment[0].tolist() and g.kept.tolist() == plan.kept[0].tolist()
    assert len(g.image_positions) == 2  # two slots reach the LLM
    values = np.array([0.6, 0.3])
    sizes = np.bincount(g.patch_slot, minlength=2)
    np.testing.assert_allclose(g.on_grid(values), values[g.patch_slot] / sizes[g.patch_slot])

    kept_cls = T.model(keep_cls=True).eval()
    g = capture_generation(kept_cls, T.processor(kept_cls), RED, PROMPT, max_new_tokens=1)
    assert g.patch_slot.tolist() == [1, 2, 3, 4]  # slot 0 is the [cls] token, on no patch

    neck = T.model(connector="cls_every_k", connector_kwargs={"k": 1, "neck": 8}).eval()
    g = capture_generation(neck, T.processor(neck), RED, PROMPT, max_new_tokens=1)
    assert g.patch_slot is None and g.on_grid(np.ones(2)) is None  # [cls] per layer: no grid to invent
