"""Safety limits on commanded positions, shared by the action executor and teleoperation.

Every command bound for the robot (or the simulated cell) passes one :class:`CommandLimiter`: it is
clamped into an axis-aligned workspace box, and its step from the previously sent command is limited
in Euclidean norm. A longer step is shortened along its direction, so the commanded path keeps its
shape and, the workspace being a box, stays inside it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Limited:
    """One command after the limits, and which of them acted on it."""

    command: np.ndarray
    clamped: bool  # moved into the workspace box
    step_limited: bool  # shortened to max_step


class CommandLimiter:
    """Workspace clamp and step limit for a stream of position commands of ``dim`` values.

    ``max_step`` (``None``: no limit) bounds the distance between consecutive sent commands. The first
    command after construction or :meth:`reset` has no predecessor and is only clamped.
    """

    def __init__(self, workspace_min: Sequence[float], workspace_max: Sequence[float], max_step: float | None = None) -> None:
        lo, hi = np.asarray(workspace_min, float), np.asarray(workspace_max, float)
        if lo.ndim != 1 or lo.size == 0 or lo.shape != hi.shape or not np.all(lo <= hi):
            raise ValueError(f"workspace_min {lo.tolist()} and workspace_max {hi.tolist()} must be equally long "
                             "non-empty lists with min <= max")
        if max_step is not None and not 0 < max_step < np.inf:
            raise ValueError(f"max_step must be finite and > 0, or None (no limit); got {max_step}")
        self.workspace_min, self.workspace_max = lo, hi
        self.max_step = None if max_step is None else float(max_step)
        self._last: np.ndarray | None = None

    @property
    def dim(self) -> int:
        return self.workspace_min.size

    @property
    def last(self) -> np.ndarray | None:
        """The last command sent (after the limits), or None."""
        return None if self._last is None else self._last.copy()

    def clamp(self, command: np.ndarray) -> np.ndarray:
        """``command`` moved into the workspace box (no step limit, no state change)."""
        return np.clip(np.asarray(command, float), self.workspace_min, self.workspace_max)

    def apply(self, command: Sequence[float] | np.ndarray, step_scale: float = 1.0) -> Limited:
        """Clamp, step-limit against the last sent command (to ``max_step * step_scale``, ``0 <= step_scale
        <= 1``), and remember the result as sent."""
        arr = np.asarray(command, dtype=float)
        if arr.shape != (self.dim,) or not np.all(np.isfinite(arr)):
            raise ValueError(f"command must be {self.dim} finite numbers; got {arr.tolist()}")
        out = self.clamp(arr)
        clamped = bool(np.any(out != arr))
        step_limited = False
        if self.max_step is not None and self._last is not None:
            step = out - self._last
            norm = float(np.linalg.norm(step))
            limit = self.max_step * step_scale
            if norm > limit:
                out = self._last + step * (limit / norm)
                step_limited = True
        self._last = out.copy()
        return Limited(out, clamped, step_limited)

    def reset(self, last: Sequence[float] | np.ndarray | None = None) -> None:
        """Forget the last command, or set it (e.g. to the measured pose, even outside the workspace) so that the
        next step is limited from there: a robot outside the box is brought into it at ``max_step`` per command."""
        self._last = None if last is None else np.asarray(last, float).reshape(self.dim).copy()
