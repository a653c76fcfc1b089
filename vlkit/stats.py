"""Seeds and verdicts: how sure a comparison of two methods is (notebooks 03-08).

A paper's claim is tested with several training seeds, on the same test problems for both
arms. The spread over seeds is usually the largest source of noise at this scale (notebook 03:
binding 62-76 over three seeds of one recipe), so every comparison here resamples seeds *and*
problems (a paired, two-level bootstrap) rather than treating the problems of one run as the
only noise. The verdict words are shared by every notebook and the report:

- ``"reproduced"``: the interval of the difference lies on the claimed side (for a "no worse"
  claim: above ``-margin``);
- ``"not reproduced"``: the interval lies on the other side (for "no worse": below ``-margin``);
- ``"not distinguishable"``: the interval contains both outcomes: the seeds cannot tell;
- ``"not testable at this scale"``: both arms sit at chance (or at the ceiling), so the task
  says nothing about the claim (decided by the caller, see :func:`at_floor_or_ceiling`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
from scipy import stats as _scipy_stats

VERDICTS = ("reproduced", "not reproduced", "not distinguishable", "not testable at this scale")
CLAIMS = ("better", "worse", "no worse", "equal")


def mean_sd(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof 1; 0.0 for a single value) (notebook 03)."""
    x = np.asarray(values, dtype=float)
    if x.size == 0:
        raise ValueError("mean_sd of no values")
    return float(x.mean()), float(x.std(ddof=1)) if x.size > 1 else 0.0


def format_mean_sd(values: Sequence[float], digits: int = 1) -> str:
    """``"68.0 ± 6.6 (n=3)"``; a single value is shown as itself (notebook 03)."""
    m, s = mean_sd(values)
    return f"{m:.{digits}f}" if len(values) == 1 else f"{m:.{digits}f} ± {s:.{digits}f} (n={len(values)})"


def t_interval(values: Sequence[float], confidence: float = 0.95) -> tuple[float, float]:
    """Student-t confidence interval of the mean of ``values`` (seeds) (notebook 03).

    With n seeds the interval has n - 1 degrees of freedom: three seeds give a wide interval
    (t = 4.30 at 95%), which is the honest width.
    """
    x = np.asarray(values, dtype=float)
    if x.size < 2:
        raise ValueError(f"a t-interval needs at least 2 values, got {x.size}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    m, s = x.mean(), x.std(ddof=1)
    half = _scipy_stats.t.ppf(0.5 + confidence / 2, x.size - 1) * s / math.sqrt(x.size)
    return float(m - half), float(m + half)


@dataclass(frozen=True)
class Comparison:
    """Arm B minus arm A, in the units of the scores (e.g. accuracy points) (notebooks 03-08)."""

    difference: float          # mean over seeds and problems of B - A
    low: float                 # bootstrap interval of the difference
    high: float
    confidence: float
    n_seeds: tuple[int, int]   # seeds of A, of B
    n_problems: int

    def __str__(self) -> str:
        return (f"{self.difference:+.1f} [{self.low:+.1f}, {self.high:+.1f}] "
                f"({self.confidence:.0%}, seeds {self.n_seeds[0]}/{self.n_seeds[1]}, {self.n_problems} problems)")


def _matrix(scores, name: str) -> np.ndarray:
    m = np.asarray(scores, dtype=float)
    if m.ndim == 1:
        m = m[None]
    if m.ndim != 2 or m.shape[1] == 0:
        raise ValueError(f"{name}: expected per-seed, per-problem scores [seeds, problems], got shape {m.shape}")
    if not np.isfinite(m).all():
        raise ValueError(f"{name}: scores contain NaN or infinity")
    return m


def paired_bootstrap(a, b, confidence: float = 0.95, n_boot: int = 10_000, seed: int = 0,
                     scale: float = 100.0) -> Comparison:
    """Two-level bootstrap of mean(B) - mean(A), paired over problems (notebooks 03-08).

    ``a`` / ``b``: scores ``[seeds, problems]`` (e.g. 1/0 correctness), the same problems in the
    same column order for both arms; the seeds of the two arms are independent training runs
    (their counts may differ). Each replicate draws seeds with replacement within each arm and
    one shared resample of the problems, so both sources of noise widen the interval and the
    pairing over problems narrows it. ``scale`` multiplies the result (100: accuracy points).
    """
    a, b = _matrix(a, "a"), _matrix(b, "b")
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"the arms were scored on different problems: {a.shape[1]} vs {b.shape[1]} columns")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    rng = np.random.default_rng(seed)
    n_problems = a.shape[1]
    diffs = np.empty(n_boot)
    for i in range(n_boot):
        cols = rng.integers(0, n_problems, n_problems)
        ra = a[rng.integers(0, a.shape[0], a.shape[0])][:, cols].mean()
        rb = b[rng.integers(0, b.shape[0], b.shape[0])][:, cols].mean()
        diffs[i] = rb - ra
    tail = (1 - confidence) / 2
    low, high = np.quantile(diffs, [tail, 1 - tail])
    return Comparison(difference=float(scale * (b.mean() - a.mean())), low=float(scale * low),
                      high=float(scale * high), confidence=confidence, n_seeds=(a.shape[0], b.shape[0]),
                      n_problems=n_problems)


def verdict(comparison: Comparison, claim: str, margin: float = 0.0) -> str:
    """The verdict word for "B is ``claim`` than A" given a :class:`Comparison` (notebooks 03-08).

    ``claim``: ``"better"`` (B > A), ``"worse"`` (B < A), ``"no worse"`` (B >= A - margin: a
    paper's "no loss" claim, e.g. a linear adapter as good as a non-linear one) or ``"equal"``
    (|B - A| <= margin). ``margin`` is in the comparison's units (points).
    """
    if claim not in CLAIMS:
        raise ValueError(f"unknown claim {claim!r}; known: {', '.join(CLAIMS)}")
    if margin < 0:
        raise ValueError(f"margin must be >= 0, got {margin}")
    lo, hi = comparison.low, comparison.high
    if claim == "better":
        return "reproduced" if lo > 0 else "not reproduced" if hi < 0 else "not distinguishable"
    if claim == "worse":
        return "reproduced" if hi < 0 else "not reproduced" if lo > 0 else "not distinguishable"
    if claim == "no worse":
        return "reproduced" if lo > -margin else "not reproduced" if hi < -margin else "not distinguishable"
    inside = -margin <= lo and hi <= margin
    outside = lo > margin or hi < -margin
    return "reproduced" if inside else "not reproduced" if outside else "not distinguishable"


def at_floor_or_ceiling(values: Sequence[float], chance: float, ceiling: float = 100.0,
                        spread: float | None = None) -> bool:
    """True when every value sits within ``spread`` of chance or of the ceiling (notebooks 05-07).

    ``spread`` defaults to the values' own standard deviation (at least one point): a task whose
    every cell is indistinguishable from guessing, or from perfect, cannot test a claim, and is
    reported as ``"not testable at this scale"`` instead of as a table of ties.
    """
    x = np.asarray(values, dtype=float)
    if x.size == 0:
        raise ValueError("at_floor_or_ceiling of no values")
    width = max(1.0, float(x.std(ddof=1)) if x.size > 1 else 0.0) if spread is None else spread
    return bool(np.all(np.abs(x - chance) <= width) or np.all(np.abs(x - ceiling) <= width))
