"""The teleoperated target position: integrated from a twist, or following a target stream, always limited.

:class:`TeleopTarget` produces one position command per control tick for the axes it drives (x, y[, z]).
It starts from the measured pose (:meth:`TeleopTarget.sync`) and sends nothing before that. Inputs:

- a twist (:meth:`set_twist`): the linear velocity of the driven axes is integrated over the time since
  the last tick (at most ``max_dt``, so a stalled loop cannot produce a jump); a twist older than
  ``input_timeout_s`` counts as zero, so a lost input device stops the motion;
- a target (:meth:`set_target`): the command moves toward it; a target older than ``input_timeout_s``
  is ignored and the command holds.

Every command passes the :class:`~dp_core.control.CommandLimiter` of the executor (workspace box and
largest step per tick, i.e. a speed limit), and integration continues from the limited command, so
pushing against the workspace boundary does not wind up.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..control.command_limits import CommandLimiter, Limited


class TeleopTarget:
    def __init__(self, limiter: CommandLimiter, input_timeout_s: float = 0.2, max_dt: float = 0.05) -> None:
        if input_timeout_s <= 0 or max_dt <= 0:
            raise ValueError(f"input_timeout_s and max_dt must be > 0; got {input_timeout_s}, {max_dt}")
        self.limiter = limiter
        self.input_timeout_s = input_timeout_s
        self.max_dt = max_dt
        self._command: np.ndarray | None = None
        self._last_tick: float | None = None
        self._twist: tuple[np.ndarray, float] | None = None
        self._target: tuple[np.ndarray, float] | None = None

    @property
    def dim(self) -> int:
        return self.limiter.dim

    @property
    def synced(self) -> bool:
        return self._command is not None

    @property
    def command(self) -> np.ndarray | None:
        """The last command sent."""
        return None if self._command is None else self._command.copy()

    def sync(self, measured: Sequence[float] | np.ndarray) -> None:
        """Restart from the measured position; forgets pending inputs. Outside the workspace, the commands move
        into it from there at the step limit (the goal is the nearest point of the box)."""
        pos = np.asarray(measured, dtype=float).reshape(-1)[: self.dim]
        if pos.shape != (self.dim,) or not np.all(np.isfinite(pos)):
            raise ValueError(f"measured position must have {self.dim} finite values; got {list(measured)}")
        self.limiter.reset(pos)
        self._command = self.limiter.clamp(pos)
        self._twist = self._target = None
        self._last_tick = None

    def set_twist(self, linear: Sequence[float] | np.ndarray, now: float) -> None:
        """Velocity of the driven axes (units/s); extra values (z, angular) beyond ``dim`` are ignored."""
        v = np.asarray(linear, dtype=float).reshape(-1)
        if v.size < self.dim or not np.all(np.isfinite(v[: self.dim])):
            raise ValueError(f"twist needs {self.dim} finite linear values; got {v.tolist()}")
        self._twist, self._target = (v[: self.dim].copy(), now), None

    def set_target(self, target: Sequence[float] | np.ndarray, now: float) -> None:
        """A position to move toward (units of the workspace)."""
        t = np.asarray(target, dtype=float).reshape(-1)
        if t.shape != (self.dim,) or not np.all(np.isfinite(t)):
            raise ValueError(f"target must have {self.dim} finite values; got {t.tolist()}")
        self._target, self._twist = (t, now), None

    def tick(self, now: float) -> Limited | None:
        """The command for this tick (None before :meth:`sync`)."""
        if self._command is None:
            return None
        dt = 0.0 if self._last_tick is None else min(max(now - self._last_tick, 0.0), self.max_dt)
        self._last_tick = now
        goal = self._command
        if self._twist is not None and now - self._twist[1] <= self.input_timeout_s:
            goal = self._command + self._twist[0] * dt
        elif self._target is not None and now - self._target[1] <= self.input_timeout_s:
            goal = self._target[0]
        out = self.limiter.apply(goal)
        self._command = out.command
        return out
