"""The control period a dataset was recorded at, carried into the policy file and checked where it runs.

A policy reads ``n_obs_steps`` observations ``dt`` apart and its actions are executed ``dt`` apart: run at
another period than its data's, it sees a history spaced wrongly and moves at another speed, with nothing
failing. The recorder and ``dp-bag2zarr`` store the period with the dataset (attribute :data:`ATTRIBUTE`),
refusing to append episodes of another one; training copies it into the policy file's metadata; the
policy node, ``dp-replay`` and ``dp-eval`` refuse a ``dt`` that differs. Datasets without it (the
original Push-T demonstrations) leave it unknown, and nothing is checked.
"""

from __future__ import annotations

ATTRIBUTE = "control_dt"  # seconds, in the dataset's attributes and the policy file's extra metadata
TOLERANCE_S = 1e-6


def read_period(attrs) -> float | None:
    """The recorded period in ``attrs`` (a dataset's attributes or a policy file's extra metadata), or None."""
    value = attrs.get(ATTRIBUTE)
    return None if value is None else float(value)


def period_mismatch(recorded: float | None, dt: float) -> str | None:
    """Why running at ``dt`` does not fit data recorded every ``recorded`` seconds (None: it fits, or unknown)."""
    if recorded is None or abs(recorded - dt) <= TOLERANCE_S:
        return None
    return f"recorded every {recorded:g} s ({1 / recorded:g} Hz), not every {dt:g} s"


def check_policy_period(checkpoint, dt: float) -> None:
    """``ConfigError`` when the policy file ``checkpoint`` was trained on data recorded at another period than
    ``dt`` (reads the file's metadata only)."""
    from .checkpoint import policy_file_extra
    from .config import ConfigError

    why = period_mismatch(read_period(policy_file_extra(checkpoint)), dt)
    if why:
        raise ConfigError(f"{checkpoint}: the policy's training data were {why}: run it at their period (dt)")
