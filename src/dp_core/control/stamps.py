"""How close two stamps (float seconds) must be to count as the same time.

ROS stamps are clock times near 1.7e9 s, where a float64 resolves about 2.4e-7 s; a grid time computed as
``t0 - k * dt`` or ``stamp + i * dt`` may land a few of those steps away from a sample stamped exactly on it.
1 us covers that rounding (up to about 4e9 s) and is far below any sensor or control period.
"""

STAMP_TOLERANCE_S = 1e-6
