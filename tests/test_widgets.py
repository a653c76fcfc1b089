"""The attention explorer (vlkit.widgets) driven headless through its ipywidgets' state: each control changes
what is drawn, from the cache alone; bad picks are errors; views plug in by name; snapshots are written."""
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from PIL import Image  # noqa: E402
from traitlets import TraitError  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
import _vltiny as T  # noqa: E402
from _vltiny import one_thread  # noqa: E402,F401

from vlkit.widgets import VIEWS, AttentionExplorer, View, register_view  # noqa: E402

PROMPT = "what color is the image?"
IMAGE = Image.fromarray(np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8))


@pytest.fixture(scope="module")
def explorer():
    m = T.model().eval()
    return AttentionExplorer(m, T.processor(m), IMAGE, PROMPT, max_new_tokens=4)


def _heat(e) -> np.ndarray:
    """The values the current figure's heat map shows."""
    return np.ma.filled(e.figure.axes[0].images[-1].get_array(), np.nan).ravel()


def test_layer_head_and_token_controls_change_what_is_drawn(explorer):
    e = explorer
    e.select(view="text → image", layer=0, head="mean", token=len(e.cache.queries) - 1)
    first, png = _heat(e), bytes(e.image.value)
    assert png.startswith(b"\x89PNG")
    e.layer.value = 1  # as the slider does
    assert not np.allclose(_heat(e), first) and bytes(e.image.value) != png
    c = e.cache
    np.testing.assert_allclose(_heat(e), c.llm[1].mean(0)[len(c.queries) - 1][c.image_positions], rtol=1e-6)
    e.head.value = 1
    np.testing.assert_allclose(_heat(e), c.llm[1, 1][len(c.queries) - 1][c.image_positions], rtol=1e-6)
    e.token.value = 0
    np.testing.assert_allclose(_heat(e), c.llm[1, 1][0][c.image_positions], rtol=1e-6)
    assert e.error is None and e.redraw_ms > 0


def test_an_out_of_range_pick_is_an_error_not_a_blank_picture(explorer):
    e = explorer
    e.select(view="text → image", layer=0, token=0)
    png = bytes(e.image.value)
    with pytest.raises(TraitError):
        e.token.value = len(e.cache.queries)
    with pytest.raises(IndexError, match="query token 99 is out of range"):
        e.select(token=99)
    with pytest.raises(IndexError, match="layer 5 is out of range"):
        e.select(layer=5)
    with pytest.raises(IndexError, match="head 2 is out of range"):
        e.select(head=2)
    with pytest.raises(ValueError, match="not available for this model: compressor 'identity'"):
        e.select(view="kept + clusters")
    assert bytes(e.image.value) == png and e.token.value == 0 and e.layer.value == 0


def test_views_pick_their_own_tower_and_controls(explorer):
    e = explorer
    e.select(view="vision [cls] → patches", layer=0, head=1)
    assert e.token.disabled and not e.layer.disabled and e.layer.max == 1
    np.testing.assert_allclose(_heat(e), e.cache.vision[0][1], rtol=1e-6)
    e.layer.value = 1
    np.testing.assert_allclose(_heat(e), e.cache.vision[1][1], rtol=1e-6)
    e.select(view="text → image", layer=0, head="mean")
    e.view.value = "vision [cls] → patches"  # as the menu does: the vision tower's picks come back
    assert (e.layer.value, e.head.value) == (1, 1)
    e.view.value = "answer → image per step"
    assert (e.layer.value, e.head.value) == (0, "mean")
    c = e.cache
    shares = [b.get_height() for b in e.figure.axes[0].patches]
    np.testing.assert_allclose(shares, c.llm[0].mean(0)[-len(c.answer):][:, c.image_positions].sum(-1), rtol=1e-6)


def test_redraws_use_the_cache_not_the_model(tmp_path):
    m = T.model().eval()
    e = AttentionExplorer(m, T.processor(m), IMAGE, PROMPT, max_new_tokens=2)

    def no_call(*a, **k):
        raise AssertionError("the model ran during an interaction")

    for module in (m.language_model, m.vision_tower):
        module.forward = no_call
    for view in e.views:
        e.view.value = view
        e.layer.value = 0
        assert e.error is None, e.error
    assert e.snapshot(tmp_path / "no_model.png").is_file()


def test_a_registered_view_joins_new_explorers_and_its_errors_show_in_the_widget(monkeypatch, tmp_path):
    prepared = []

    class Count(View):
        tower, uses_token = None, False

        def prepare(self, model, processor, cache):
            prepared.append(1)
            return {"tokens": len(cache.queries)}

        def draw(self, ax, cache, selection):
            ax.bar([0], [cache.extras["test count"]["tokens"]])

    class Broken(View):
        def draw(self, ax, cache, selection):
            raise ValueError("nothing to see")

    monkeypatch.setattr(VIEWS, "_classes", dict(VIEWS._classes))  # the registry as it was, after the test
    register_view("test count")(Count)
    register_view("test broken")(Broken)
    m = T.model().eval()
    e = AttentionExplorer(m, T.processor(m), IMAGE, PROMPT, max_new_tokens=2)
    assert "test count" in e.view.options and prepared == [1]
    e.select(view="test count")
    assert e.layer.disabled and e.head.disabled
    assert e.figure.axes[0].patches[0].get_height() == len(e.cache.queries)
    e.view.value = "test broken"  # from the menu: the message says why, and there is no stale picture
    assert e.image.value == b"" and e.figure is None and "nothing to see" in e.message.value
    with pytest.raises(RuntimeError, match="nothing to see"):
        e.select(view="test broken")


def test_snapshot_saves_every_view_to_figures(explorer, monkeypatch, tmp_path):
    monkeypatch.setenv("VLKIT_FIGURES", str(tmp_path))
    path = explorer.snapshot("explorer_test")
    assert path == tmp_path / "explorer_test.png"
    with Image.open(path) as im:
        assert im.size[0] > 600 and im.size[1] > 400
    other = explorer.snapshot(tmp_path / "sub.png", views=["text → image"])
    assert other.is_file()
    with pytest.raises(ValueError, match="unknown view 'nope'"):
        explorer.snapshot("x", views=["nope"])
    with pytest.raises(ValueError, match="neither a figure name nor a path"):
        explorer.snapshot("a/b")


def test_vmtc_view_draws_the_models_plan():
    m = T.model().eval()
    m.set_token_reduction("vmtc", keep_ratio=0.5)
    e = AttentionExplorer(m, T.processor(m), IMAGE, PROMPT, max_new_tokens=2)
    assert "kept + clusters" in e.views and not e.unavailable
    e.select(view="kept + clusters")
    outlined = [r for r in e.figure.axes[0].patches if not r.get_fill()]
    assert len(outlined) == int(e.cache.kept.sum()) >= 1
    # the text -> image map spreads a merged token's attention over the patches it holds
    e.select(view="text → image", layer=1, token=0)
    drawn = _heat(e)
    assert np.isclose(np.nansum(drawn), e.cache.to_image(1, None, 0).sum())



def test_recent_pictures_come_from_the_memo():
    m = T.model().eval()
    e = AttentionExplorer(m, T.processor(m), IMAGE, PROMPT, max_new_tokens=1, memo=2)
    e.select(view="text → image", layer=0, head="mean", token=0)
    first = e.figure
    e.select(layer=1)
    assert e.figure is not first
    e.select(layer=0)
    assert e.figure is first  # drawn once, shown again
    e.select(head=1)  # a third picture: the memo keeps the last two
    e.select(layer=1)
    assert len(e._pictures) == 2
    e.select(head="mean", layer=0)
    assert e.figure is not first  # the oldest was dropped and is drawn anew
    plain = AttentionExplorer(m, T.processor(m), IMAGE, PROMPT, max_new_tokens=1, memo=0)
    shown = plain.figure
    plain.select(layer=0)
    plain.select(layer=1)
    assert plain.figure is not shown and not plain._pictures


def test_every_view_draws_under_fastv_and_tome():
    """FastV keeps its own attention (it records) and prunes tokens after K: pruned tokens get no attention
    there; ToMe's merged tokens are off the patch grid: the text -> image view draws them as a strip."""
    m = T.model().eval()
    p = T.processor(m)
    m.set_token_reduction("fastv", K=0, keep_ratio=0.5)
    e = AttentionExplorer(m, p, IMAGE, PROMPT, max_new_tokens=2)
    last = len(e.cache.queries) - 1
    assert (e.cache.to_image(1, None, last) == 0).sum() == 2 and (e.cache.to_image(0, None, last) > 0).all()
    for view in e.views:
        e.select(view=view)
    m.set_token_reduction("tome", keep_ratio=0.6)
    e = AttentionExplorer(m, p, IMAGE, PROMPT, max_new_tokens=2)
    assert e.cache.patch_slot is None and "kept + clusters" in e.unavailable
    e.select(view="text → image", layer=1)
    assert e.figure.axes[0].images[0].get_array().shape == (1, len(e.cache.image_positions))
    e.select(view="vision [cls] → patches", layer=1)  # after ToMe's merge in layer 0: no grid either
    assert e.figure.axes[0].images[0].get_array().shape == (1, 2)
