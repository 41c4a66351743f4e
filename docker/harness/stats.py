"""Pure-Python statistics matching NumPy's defaults (no NumPy needed).

* percentile(): numpy.percentile(..., method="linear") including NumPy's
  two-sided lerp (a + (b-a)*t for t < 0.5, b - (b-a)*(1-t) otherwise), so results
  agree with NumPy to the last bit for the same inputs.
* mean(): math.fsum / n (correctly rounded; NumPy's pairwise sum can differ in
  the last ulp for long inputs).
* pstd(): population standard deviation (numpy.std, ddof=0).
"""

import math


def mean(values):
    values = list(values)
    if not values:
        return None
    return math.fsum(values) / len(values)


def pstd(values):
    values = list(values)
    if not values:
        return None
    m = mean(values)
    return math.sqrt(math.fsum((v - m) * (v - m) for v in values) / len(values))


def _lerp(a, b, t):
    diff = b - a
    if t >= 0.5:
        return b - diff * (1.0 - t)
    return a + diff * t


def percentile_sorted(sorted_values, q):
    """Percentile q (0..100) of an already sorted non-empty list, NumPy 'linear'."""
    n = len(sorted_values)
    if n == 0:
        return None
    if n == 1:
        return float(sorted_values[0])
    virtual = (n - 1) * (q / 100.0)
    lo = int(math.floor(virtual))
    if lo < 0:
        lo = 0
    if lo >= n - 1:
        return float(sorted_values[n - 1])
    gamma = virtual - lo
    return float(_lerp(float(sorted_values[lo]), float(sorted_values[lo + 1]), gamma))


def percentile(values, q):
    return percentile_sorted(sorted(values), q)


def cv_population(values):
    """Coefficient of variation = population std / mean; inf for a non-positive mean.

    This is the convergence test's CV (FORMAT.md 12.1).
    """
    values = list(values)
    if not values:
        return math.inf
    m = mean(values)
    if m <= 0:
        return math.inf
    return pstd(values) / m


def cv_reported(values):
    """The reported final_cv: NumPy std/mean, 0.0 when the mean <= 0 or no values."""
    values = list(values)
    if not values:
        return 0.0
    m = mean(values)
    if m <= 0:
        return 0.0
    return pstd(values) / m


def length_summary(values):
    """{"min","max","mean","p50","p95"} of a list of token counts."""
    s = sorted(values)
    if not s:
        return {"min": None, "max": None, "mean": None, "p50": None, "p95": None}
    return {
        "min": s[0],
        "max": s[-1],
        "mean": mean(s),
        "p50": percentile_sorted(s, 50),
        "p95": percentile_sorted(s, 95),
    }


def latency_summary(values, with_min_max=True):
    """{"mean","median","p95","p99",["min","max"],"samples"} in the input's unit."""
    s = sorted(values)
    out = {
        "mean": mean(s) if s else None,
        "median": percentile_sorted(s, 50),
        "p95": percentile_sorted(s, 95),
        "p99": percentile_sorted(s, 99),
    }
    if with_min_max:
        out["min"] = s[0] if s else None
        out["max"] = s[-1] if s else None
    out["samples"] = len(s)
    return out
