"""vlkit.stats: mean ± sd, t-intervals, the paired seeds x problems bootstrap and the verdict words."""
import numpy as np
import pytest
from scipy import stats as sps

from vlkit import stats


def test_mean_sd_and_t_interval_match_textbook_values():
    assert stats.mean_sd([62.4, 69.2, 75.5]) == pytest.approx((69.033, 6.552), abs=1e-3)
    assert stats.mean_sd([5.0]) == (5.0, 0.0)
    lo, hi = stats.t_interval([62.4, 69.2, 75.5])
    half = sps.t.ppf(0.975, 2) * 6.5516 / np.sqrt(3)
    assert (lo, hi) == pytest.approx((69.033 - half, 69.033 + half), abs=1e-2)
    assert stats.format_mean_sd([62.4, 69.2, 75.5]) == "69.0 ± 6.6 (n=3)"
    with pytest.raises(ValueError, match="at least 2"):
        stats.t_interval([1.0])


def _arms(rng, p_a, p_b, seeds=3, problems=400, seed_noise=0.0):
    def arm(p):
        return np.stack([(rng.random(problems) < p + rng.normal(0, seed_noise)).astype(float) for _ in range(seeds)])
    return arm(p_a), arm(p_b)


def test_a_real_gap_is_reproduced_and_noise_is_not_distinguishable():
    rng = np.random.default_rng(0)
    a, b = _arms(rng, 0.5, 0.7)
    c = stats.paired_bootstrap(a, b, n_boot=2000)
    assert c.difference == pytest.approx(20, abs=5) and c.low > 0
    assert stats.verdict(c, "better") == "reproduced"
    assert stats.verdict(c, "worse") == "not reproduced"
    a, b = _arms(rng, 0.6, 0.6)
    same = stats.paired_bootstrap(a, b, n_boot=2000)
    assert same.low < 0 < same.high
    assert stats.verdict(same, "better") == "not distinguishable"
    assert stats.verdict(same, "no worse", margin=10) == "reproduced"


def test_seed_noise_widens_the_interval():
    rng = np.random.default_rng(1)
    quiet = stats.paired_bootstrap(*_arms(rng, 0.5, 0.55), n_boot=2000)
    noisy = stats.paired_bootstrap(*_arms(rng, 0.5, 0.55, seed_noise=0.08), n_boot=2000)
    assert noisy.high - noisy.low > 1.5 * (quiet.high - quiet.low)


def test_pairing_over_problems_narrows_the_interval():
    rng = np.random.default_rng(2)
    hard = rng.random(500) < 0.5  # problems both arms get right or wrong together
    a = np.stack([hard ^ (rng.random(500) < 0.05) for _ in range(3)]).astype(float)
    b = np.stack([hard ^ (rng.random(500) < 0.05) for _ in range(3)]).astype(float)
    paired = stats.paired_bootstrap(a, b, n_boot=2000)
    unpaired = stats.paired_bootstrap(a, b[:, rng.permutation(500)], n_boot=2000)
    assert paired.high - paired.low < 0.6 * (unpaired.high - unpaired.low)


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="different problems"):
        stats.paired_bootstrap(np.ones((2, 5)), np.ones((2, 6)))
    with pytest.raises(ValueError, match="NaN"):
        stats.paired_bootstrap(np.full((2, 5), np.nan), np.ones((2, 5)))
    with pytest.raises(ValueError, match="unknown claim"):
        stats.verdict(stats.paired_bootstrap(np.ones((1, 3)), np.ones((1, 3)), n_boot=10), "greater")


def test_floor_and_ceiling_make_a_task_untestable():
    assert stats.at_floor_or_ceiling([25.3, 24.1, 26.0], chance=25.0)
    assert stats.at_floor_or_ceiling([99.6, 100.0, 99.8], chance=25.0)
    assert not stats.at_floor_or_ceiling([25.0, 60.0, 71.0], chance=25.0)
