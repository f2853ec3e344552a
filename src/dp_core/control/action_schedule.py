"""Latency-compensated execution of action chunks (the paper's real-robot scheme).

A chunk computed from the observation at ``stamp`` holds actions due at ``stamp + (i + 1) * dt``.
By the time it arrives, inference latency has made its first actions late: those due at or before
``now + latency_margin``, or no later than an action already sent, are dropped (so sent waypoints are
strictly ordered in time), and the rest replace whatever was scheduled from the first kept action
onward. Sent actions are clamped to a workspace box and their step from the previously sent action is
limited (a speed limit: ``max_step`` per ``dt`` of due time); a watchdog stops execution when chunks
stop coming.

Clocks: ``now`` and the chunks' stamps must come from clocks that agree (one machine, or synchronised).
A chunk stamped more than :data:`FUTURE_TOLERANCE_S` after ``now`` is refused, and ``now`` stepping back
by more than :data:`CLOCK_STEP_BACK_S` (a system clock set back) discards the schedule and waits for a
fresh chunk, as the watchdog does: either would otherwise keep the watchdog quiet while nothing new is sent.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .command_limits import CommandLimiter
from .stamps import STAMP_TOLERANCE_S as _EPS  # due times this close count as equal

FUTURE_TOLERANCE_S = 0.1  # a chunk may be stamped this far after ``now`` (clock offsets between machines)
CLOCK_STEP_BACK_S = 0.1  # ``now`` earlier than the latest ``now`` by more than this: the clock was set back


@dataclass(frozen=True)
class ScheduledAction:
    due: float
    stamp: float  # observation stamp of the chunk the action came from
    action: np.ndarray  # (A,), clamped and step-limited


@dataclass(frozen=True)
class ChunkStats:
    """What :meth:`ActionSchedule.add_chunk` did with one chunk."""

    received: int
    dropped: int  # due at or before now + latency_margin, or at or before the last action sent
    late: int  # of those, due at or before now + latency_margin
    replaced: int  # previously scheduled actions this chunk overrode
    clamped: int  # actions moved into the workspace
    first_due: float | None  # due time of the first kept action; None when all were dropped


@dataclass
class ScheduleStats:
    """Running totals for diagnostics (actions unless named otherwise)."""

    chunks: int = 0
    received: int = 0
    dropped: int = 0  # late on arrival, or not after an action already sent
    late: int = 0  # of those, late on arrival (due at or before now + latency_margin)
    replaced: int = 0  # overridden by a newer chunk (normal in receding-horizon control)
    expired: int = 0  # discarded unsent when the watchdog fired (or the clock stepped back)
    clock_steps_back: int = 0  # times ``now`` went back by more than CLOCK_STEP_BACK_S
    clamped: int = 0
    limited: int = 0
    sent: int = 0

    @property
    def fraction_dropped(self) -> float:
        return self.dropped / self.received if self.received else 0.0


class ActionSchedule:
    """A time-ordered queue of actions fed by chunks and drained by a fast clock.

    Sent actions pass a :class:`~dp_core.control.command_limits.CommandLimiter` (the limits teleoperation
    uses too): clamped into the workspace box on arrival, and ``max_step`` (``None``: no limit) bounds
    the Euclidean norm of the difference between consecutive sent actions, pro rata for an action due
    less than ``dt`` after the previous one (``max_step * gap / dt``: where a new chunk's first action
    falls just after the previous chunk's last sent one, the implied speed stays within
    ``max_step / dt``). The first action ever sent has no predecessor and is not step-limited.

    Watchdog: :meth:`hold` is true when no chunk scheduled an action within ``watchdog_s`` (or none
    ever did; chunks whose actions were all late do not count). While holding, :meth:`pop_due` sends
    nothing and discards the whole schedule, which was planned from observations older than the
    watchdog, and a new chunk discards it before it is scheduled (even if :meth:`pop_due` was not called
    in between): the caller publishes nothing, so the robot holds the last sent waypoint, and execution
    resumes only from a fresh chunk.
    """

    def __init__(
        self,
        dt: float,
        *,
        workspace_min: Sequence[float],
        workspace_max: Sequence[float],
        max_step: float | None = None,
        latency_margin: float = 0.01,
        watchdog_s: float = 1.2,  # > a replanning period of Ta * dt = 0.8 s plus inference (the executor's default)
    ) -> None:
        self.limiter = CommandLimiter(workspace_min, workspace_max, max_step)
        if not (0 < dt < math.inf and 0 < watchdog_s < math.inf and 0 <= latency_margin < math.inf):
            raise ValueError(f"need finite dt > 0, watchdog_s > 0 and latency_margin >= 0; got "
                             f"dt={dt}, watchdog_s={watchdog_s}, latency_margin={latency_margin}")
        self.dt = float(dt)
        self.latency_margin = float(latency_margin)
        self.watchdog_s = float(watchdog_s)
        self.max_step = max_step
        self.workspace_min, self.workspace_max = self.limiter.workspace_min, self.limiter.workspace_max
        self.stats = ScheduleStats()
        self._due: list[float] = []
        self._actions: list[np.ndarray] = []
        self._stamps: list[float] = []
        self._last_chunk: float | None = None
        self._last_sent_due: float | None = None
        self._latest_now: float | None = None

    @property
    def dim(self) -> int:
        return self.workspace_min.size

    @property
    def pending(self) -> int:
        return len(self._due)

    @property
    def last_chunk_time(self) -> float | None:
        """``now`` of the last chunk that scheduled an action."""
        return self._last_chunk

    def add_chunk(self, stamp: float, actions: np.ndarray, now: float, obs_stamp: float | None = None) -> ChunkStats:
        """Schedule ``actions`` (N, A); action i is due at ``stamp + (i + 1) * dt``.

        ``obs_stamp`` (default ``stamp``) is the observation time the chunk was computed from, carried
        by its :class:`ScheduledAction` items for latency accounting; it differs from ``stamp`` only
        when the caller schedules from arrival time (no latency compensation).

        Raises ``ValueError`` (leaving the schedule untouched) on a wrong shape, non-finite values, or a
        ``stamp`` more than :data:`FUTURE_TOLERANCE_S` after ``now``.
        """
        arr = np.asarray(actions, dtype=float)
        if arr.ndim != 2 or arr.shape[0] == 0 or arr.shape[1] != self.dim:
            raise ValueError(f"action chunk must have shape (N >= 1, {self.dim}); got {arr.shape}")
        if not np.isfinite(arr).all():
            rows = np.flatnonzero(~np.isfinite(arr).all(axis=1)).tolist()
            raise ValueError(f"action chunk has NaN/inf values in rows {rows}")
        if not (math.isfinite(stamp) and math.isfinite(now)):
            raise ValueError(f"stamp and now must be finite; got stamp={stamp}, now={now}")
        if stamp > now + FUTURE_TOLERANCE_S:
            raise ValueError(f"chunk stamped {stamp - now:.3f} s in the future (tolerance {FUTURE_TOLERANCE_S} s): "
                             "the clocks of the observations and of the executor disagree")
        self._check_clock(now)
        if self.hold(now):  # the watchdog has fired: what is still scheduled is stale, never send it
            self._expire()
        n = arr.shape[0]
        due = stamp + self.dt * np.arange(1, n + 1)
        late = int(np.count_nonzero(due <= now + self.latency_margin + _EPS))
        cutoff = now + self.latency_margin
        if self._last_sent_due is not None:
            cutoff = max(cutoff, self._last_sent_due)
        first = int(np.count_nonzero(due <= cutoff + _EPS))
        self.stats.chunks += 1
        self.stats.received += n
        self.stats.dropped += first
        self.stats.late += late
        if first == n:
            return ChunkStats(n, first, late, 0, 0, None)
        kept = self.limiter.clamp(arr[first:])
        clamped = int(np.count_nonzero((kept != arr[first:]).any(axis=1)))
        cut = bisect.bisect_left(self._due, float(due[first]) - _EPS)
        replaced = len(self._due) - cut
        self._due[cut:] = due[first:].tolist()
        self._actions[cut:] = list(kept)
        self._stamps[cut:] = [float(stamp if obs_stamp is None else obs_stamp)] * (n - first)
        self._last_chunk = float(now)
        self.stats.replaced += replaced
        self.stats.clamped += clamped
        return ChunkStats(n, first, late, replaced, clamped, float(due[first]))

    def pop_due(self, now: float, lead: float = 0.0) -> list[ScheduledAction]:
        """Remove and return the actions due at or before ``now + lead``, in due order, step-limited (the
        watchdog is judged at ``now``).

        When the caller was late and several are due, all are sent in order rather than only the
        newest: each is still limited relative to its predecessor, and skipping the intermediate
        waypoints would turn the policy's path into a straight chord that can cut corners in contact.
        Their stamps stay their (past) due times so the receiver can see they are late.
        """
        self._check_clock(now)
        if self.hold(now):
            self._expire()
            return []
        n = bisect.bisect_right(self._due, now + lead + _EPS)
        out = [ScheduledAction(due, stamp, self._limit(a, due))
               for due, stamp, a in zip(self._due[:n], self._stamps[:n], self._actions[:n])]
        del self._due[:n], self._stamps[:n], self._actions[:n]
        self.stats.sent += n
        return out

    def _check_clock(self, now: float) -> None:
        """Start over (as after the watchdog) when ``now`` is well before a ``now`` seen earlier."""
        if self._latest_now is not None and now < self._latest_now - CLOCK_STEP_BACK_S:
            self.stats.clock_steps_back += 1
            self._expire()
            self._last_chunk = self._last_sent_due = None
            self._latest_now = now
        else:
            self._latest_now = now if self._latest_now is None else max(self._latest_now, now)

    def _expire(self) -> None:
        self.stats.expired += len(self._due)
        self._due.clear()
        self._actions.clear()
        self._stamps.clear()

    def hold(self, now: float) -> bool:
        """True when no chunk scheduled an action within the last ``watchdog_s`` (or ever)."""
        return self._last_chunk is None or now - self._last_chunk > self.watchdog_s

    def _limit(self, action: np.ndarray, due: float) -> np.ndarray:
        gap = self.dt if self._last_sent_due is None else due - self._last_sent_due
        out = self.limiter.apply(action, step_scale=min(1.0, max(gap, 0.0) / self.dt))
        self._last_sent_due = due
        self.stats.limited += out.step_limited
        return out.command
