"""One percentile rule for every latency figure the project prints (server stats, bench)."""
from __future__ import annotations


def percentile(values: list[float], q: float) -> float | None:
    """q in [0, 1]; linear interpolation between closest ranks (numpy's default). None when empty."""
    if not values:
        return None
    xs = sorted(values)
    pos = (len(xs) - 1) * q
    lo = int(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)
