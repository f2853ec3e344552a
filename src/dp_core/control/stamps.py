"""Stamps (float seconds): how close two must be to count as the same time, and values interpolated at them.

ROS stamps are clock times near 1.7e9 s, where a float64 resolves about 2.4e-7 s; a grid time computed as
``t0 - k * dt`` or ``stamp + i * dt`` may land a few of those steps away from a sample stamped exactly on it.
1 us covers that rounding (up to about 4e9 s) and is far below any sensor or control period.
"""

import numpy as np

STAMP_TOLERANCE_S = 1e-6


def interpolate(stamps: np.ndarray, values: np.ndarray, times: np.ndarray, max_gap: float) -> tuple[np.ndarray, np.ndarray]:
    """Linear interpolation of ``values`` (N, D) at ``times``; ``ok`` where bracketed by samples <= max_gap apart."""
    hi = np.clip(np.searchsorted(stamps, times, side="left"), 0, len(stamps) - 1)
    exact = np.abs(stamps[hi] - times) <= STAMP_TOLERANCE_S
    lo = np.clip(hi - 1, 0, len(stamps) - 1)
    inside = (times >= stamps[0] - STAMP_TOLERANCE_S) & (times <= stamps[-1] + STAMP_TOLERANCE_S)
    gap = stamps[hi] - stamps[lo]
    ok = inside & (exact | (gap <= max_gap + STAMP_TOLERANCE_S))
    w = np.where(exact | (gap <= 0), 1.0, (times - stamps[lo]) / np.where(gap > 0, gap, 1.0))[:, None]
    return values[lo] * (1 - w) + values[hi] * w, ok
