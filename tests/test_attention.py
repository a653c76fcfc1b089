import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
import _vltiny as T  # noqa: E402

from vlkit.attention import available_attention, capture_attention, register_attention, set_attention  # noqa: E402


def _batch(m):
    ds = T.ColorDataset(2)
    return T.processor(m).collate([ds[0], ds[1]])


def test_capture_matches_sdpa_and_records_causal_maps():
    m = T.model().eval()
    b = _batch(m)
    ref = m(**b).logits
    m2 = T.model(llm_attn_implementation="vlkit_capture").eval()
    assert m2.language_model.config._attn_implementation == "vlkit_capture"
    with capture_attention() as maps:
        out = m2(**b).logits
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    assert sorted(maps) == [0, 1]
    a = maps[0]
    L = b["input_ids"].shape[1]
    assert a.shape == (2, 2, L, L)
    assert torch.all(a.triu(1) == 0)  # causal
    torch.testing.assert_close(a.sum(-1), torch.ones(2, 2, L))
    # switching back and forth at run time
    set_attention(m2.language_model, "eager")
    torch.testing.assert_close(m2(**b).logits, ref, atol=1e-5, rtol=1e-5)


def test_registered_function_changes_output():
    from vlkit.attention import eager_attention

    def uniform(module, q, k, v, mask, scaling, dropout=0.0, **kw):  # ignores scores: a visible change
        return eager_attention(module, q * 0, k, v, mask, scaling, dropout)

    register_attention("test_uniform", uniform)
    assert "test_uniform" in available_attention()
    m = T.model().eval()
    b = _batch(m)
    ref = m(**b).logits
    set_attention(m.language_model, "test_uniform")
    assert not torch.allclose(m(**b).logits, ref)
    with pytest.raises(ValueError, match="unknown attention implementation"):
        set_attention(m.language_model, "no_such_attention")


def _prompt(m):
    b = T.processor(m).prompt(["what color is the image?"], [T.ColorDataset(1)[0]["image"]])
    b.pop("labels")
    return b


def test_capture_with_steps_keeps_every_decoding_step_and_the_last_as_before():
    m = T.model(llm_attn_implementation="vlkit_capture").eval()
    b = _prompt(m)
    t = b["input_ids"].shape[1]
    with torch.no_grad(), capture_attention(steps=True) as maps:
        new = m.generate(**b, max_new_tokens=4, do_sample=False, min_new_tokens=4)
    assert new.shape[1] == 4 and len(maps.steps) == 4  # the prefill, then one forward per further token
    assert maps.steps[0][0].shape == (1, 2, t, t)
    for i, step in enumerate(maps.steps[1:], 1):
        assert sorted(step) == [0, 1] and step[1].shape == (1, 2, 1, t + i)
    assert all(maps[layer] is maps.steps[-1][layer] for layer in (0, 1))  # as a dict: the last forward's maps
    with torch.no_grad(), capture_attention() as plain:
        m.generate(**b, max_new_tokens=4, do_sample=False, min_new_tokens=4)
    assert plain.steps is None and plain[1].shape == (1, 2, 1, t + 3)


def test_nested_captures_record_in_the_innermost_and_leave_the_outer_in_place():
    m = T.model(llm_attn_implementation="vlkit_capture").eval()
    b = _batch(m)
    with capture_attention() as outer:
        with capture_attention() as inner:  # both empty (equal as dicts) when the inner one closes
            pass
        with torch.no_grad():
            m(**b)
    assert not inner and sorted(outer) == [0, 1]
