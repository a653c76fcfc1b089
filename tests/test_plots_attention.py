"""The attention figures (vlkit.plots.attention), headless: they draw the values given, where given."""
import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from PIL import Image  # noqa: E402

from vlkit.plots import attention as P  # noqa: E402

IMAGE = Image.new("RGB", (16, 16), (0, 0, 255))


@pytest.fixture(autouse=True)
def _close():
    yield
    plt.close("all")


def test_patch_heatmap_draws_the_values_on_the_grid_over_the_image():
    values = np.array([0.1, np.nan, 0.3, 0.4, 0.5, 0.6])
    fig = P.patch_heatmap(IMAGE, values, (2, 3), title="t")
    ax = fig.axes[0]
    picture, heat = ax.images
    assert picture.get_array().shape[:2] == (16, 16)
    drawn = heat.get_array()
    assert drawn.shape == (2, 3) and drawn.mask.tolist() == [[False, True, False], [False, False, False]]
    np.testing.assert_allclose(drawn.filled(-1), [[0.1, -1, 0.3], [0.4, 0.5, 0.6]])
    assert heat.get_extent() == [-0.5, 15.5, 15.5, -0.5]  # the grid spans the image
    assert heat.get_clim() == (0, 0.6) and len(fig.axes) == 2  # a colour bar from 0 to the largest value
    with pytest.raises(ValueError, match="5 values for a 2x3 patch grid"):
        P.patch_heatmap(IMAGE, values[:5], (2, 3))
    with pytest.raises(ValueError, match="no values to draw"):
        P.patch_heatmap(IMAGE, np.full(6, np.nan), (2, 3))


def test_token_strip_and_share_bars_draw_their_values():
    fig = P.token_strip([0.2, 0.5, 0.3])
    np.testing.assert_allclose(fig.axes[0].images[0].get_array(), [[0.2, 0.5, 0.3]])
    with pytest.raises(ValueError, match="no values"):
        P.token_strip([])
    fig = P.image_share_bars(["it", "is", "red"], [0.1, 0.7, 0.4], highlight=1)
    bars = fig.axes[0].patches
    np.testing.assert_allclose([b.get_height() for b in bars], [0.1, 0.7, 0.4])
    colours = [b.get_facecolor() for b in bars]
    assert colours[1] != colours[0] == colours[2]  # the selected step stands out
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == ["it", "is", "red"]
    with pytest.raises(ValueError, match="3 tokens but 2 shares"):
        P.image_share_bars(["it", "is", "red"], [0.1, 0.2])


def test_plan_overlay_marks_kept_merged_and_dropped_patches():
    # 4 patches: 0 kept, 1 and 2 merged into slot 1, 3 dropped
    fig = P.plan_overlay(np.asarray(IMAGE), [0, 1, 1, -1], [True, False, False, False])
    rects = fig.axes[0].patches
    outlined = [r for r in rects if not r.get_fill()]
    dark = [r for r in rects if r.get_fill() and r.get_facecolor()[:3] == (0.0, 0.0, 0.0)]
    tinted = [r for r in rects if r.get_fill() and r not in dark]
    assert (len(outlined), len(tinted), len(dark)) == (1, 2, 1)
    assert tinted[0].get_facecolor() == tinted[1].get_facecolor()  # one colour per slot
    with pytest.raises(ValueError, match="one value per patch"):
        P.plan_overlay(IMAGE, [0, 1], [True])
