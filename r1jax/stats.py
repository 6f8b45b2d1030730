"""Small statistics for results over seeds: the mean and its 95% Student-t interval."""
from __future__ import annotations

import math
from collections.abc import Sequence

_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228)  # t_{0.975, df}, df 1..10


def t_quantile(df: int) -> float:
    """t_{0.975, df}: the table for df ≤ 10, above it the Cornish–Fisher series (error < 1e-3)."""
    if df < 1:
        raise ValueError(f"t_quantile needs df >= 1, got {df}")
    if df <= len(_T975):
        return _T975[df - 1]
    z = 1.959964
    return z + (z ** 3 + z) / (4 * df) + (5 * z ** 5 + 16 * z ** 3 + 3 * z) / (96 * df ** 2)


def mean_interval(values: Sequence[float]) -> tuple[float, float]:
    """(mean, half-width of the 95% Student-t interval) of finite `values`; NaN half-width for one value,
    (NaN, NaN) for none."""
    values = [float(v) for v in values if math.isfinite(float(v))]
    n = len(values)
    if n == 0:
        return math.nan, math.nan
    mean = sum(values) / n
    if n < 2:
        return mean, math.nan
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    return mean, t_quantile(n - 1) * sd / math.sqrt(n)


def format_interval(mean: float, half: float, digits: int = 3) -> str:
    """"0.412 ± 0.051", "0.412" without an interval, "–" without a value."""
    if not math.isfinite(mean):
        return "–"
    return f"{mean:.{digits}f}" + (f" ± {half:.{digits}f}" if math.isfinite(half) else "")
