"""Time-aligned observation history for closed-loop control.

Every stream (camera frames, robot state, ...) arrives at its own rate with jittered stamps.
:class:`ObsBuffer` keeps the newest samples of each stream and, like the real-robot code of the
Diffusion Policy paper, hands the policy ``n_obs_steps`` observations on a regular grid ``dt``
apart that ends at the newest time *every* stream has reached, taking for each grid time the last
sample of each stream at or before it.
"""

from __future__ import annotations

import bisect
import enum
import math
from dataclasses import dataclass

import numpy as np

from .stamps import STAMP_TOLERANCE_S as _EPS  # a sample this close after a target time still counts as at it


class RefusalKind(enum.Enum):
    EMPTY = "empty"
    STALE = "stale"
    NO_HISTORY = "no_history"
    FUTURE = "future"


@dataclass(frozen=True)
class Refusal:
    """Why :meth:`ObsBuffer.get` returned nothing.

    ``seconds``: for ``STALE`` the age of the stream's newest sample; for ``NO_HISTORY`` how far the
    stream's oldest sample lies after the target time it should cover; for ``FUTURE`` how far its newest
    sample lies after ``now``. ``limit`` is the bound it broke.
    """

    kind: RefusalKind
    stream: str
    seconds: float = 0.0
    limit: float = 0.0

    @property
    def message(self) -> str:
        if self.kind is RefusalKind.EMPTY:
            return f"no samples yet on stream '{self.stream}'"
        if self.kind is RefusalKind.STALE:
            return (f"stream '{self.stream}' is stale: its newest sample is {self.seconds:.3f} s old "
                    f"(max_age {self.limit:.3f} s)")
        if self.kind is RefusalKind.FUTURE:
            return (f"stream '{self.stream}' is stamped {self.seconds:.3f} s in the future (tolerance "
                    f"{self.limit:.3f} s): its clock and this one disagree")
        return (f"stream '{self.stream}' has too little history: its oldest sample is {self.seconds:.3f} s "
                f"after the earliest observation time (tolerance {self.limit:.3f} s)")


@dataclass(frozen=True)
class AlignedObs:
    """``n_obs_steps`` aligned observations, oldest first; ``stamp`` is the newest grid time t0."""

    stamp: float
    values: dict[str, np.ndarray]  # stream -> (n_obs_steps, *sample_shape)
    sample_stamps: dict[str, list[float]]  # stream -> stamp of each sample used


class ObsBuffer:
    """Keeps the recent samples of each stream and aligns them on a ``dt`` grid.

    Each stream keeps what :meth:`get` can need, whatever its rate: its samples back to the last one at or
    before ``(n_obs_steps - 1) * dt + max_age + dt`` before its newest sample, and at most ``capacity`` (a
    memory bound: 4096 samples are 2 s at 2 kHz). Samples may arrive out of order; a sample with an
    existing stamp replaces it. A sample stamped more than ``max_age`` after ``now`` is refused when
    :meth:`add` is told ``now`` (a bad stamp far ahead would otherwise push the stream's history out of
    the window), and :meth:`get` refuses to align while a stream's newest sample lies that far ahead.
    """

    def __init__(self, streams: list[str], n_obs_steps: int, dt: float, max_age: float, capacity: int = 4096) -> None:
        if not streams or len(set(streams)) != len(streams):
            raise ValueError(f"streams must be non-empty and unique; got {streams}")
        if n_obs_steps < 1 or capacity < 1:
            raise ValueError(f"n_obs_steps and capacity must be >= 1; got {n_obs_steps}, {capacity}")
        if not (dt > 0 and max_age > 0):
            raise ValueError(f"dt and max_age must be > 0; got {dt}, {max_age}")
        self.n_obs_steps = n_obs_steps
        self.dt = float(dt)
        self.max_age = float(max_age)
        self.capacity = capacity
        self.window = (n_obs_steps - 1) * self.dt + self.max_age + self.dt
        self._stamps: dict[str, list[float]] = {s: [] for s in streams}
        self._values: dict[str, list[np.ndarray]] = {s: [] for s in streams}
        self.refusal: Refusal | None = None  # why the last get() returned None

    @property
    def streams(self) -> list[str]:
        return list(self._stamps)

    def stamps(self, stream: str) -> list[float]:
        """The stamps held for ``stream``, oldest first."""
        return list(self._stamps[self._check(stream)])

    def newest_stamp(self, stream: str) -> float | None:
        """The stamp of ``stream``'s newest sample; None before its first."""
        stamps = self._stamps[self._check(stream)]
        return stamps[-1] if stamps else None

    def add(self, stream: str, stamp: float, value: np.ndarray, now: float | None = None) -> None:
        """Insert one sample in stamp order, dropping those older than the window and beyond ``capacity``.
        Raises ``ValueError`` on a non-finite stamp, a shape unlike the stream's earlier samples, or (given
        ``now``) a stamp more than ``max_age`` after ``now``."""
        stamps, values = self._stamps[self._check(stream)], self._values[stream]
        stamp = float(stamp)
        if not math.isfinite(stamp):
            raise ValueError(f"stream '{stream}': stamp must be finite; got {stamp}")
        if now is not None and stamp - now > self.max_age:
            raise ValueError(Refusal(RefusalKind.FUTURE, stream, stamp - now, self.max_age).message)
        value = np.array(value)
        if values and value.shape != values[0].shape:
            raise ValueError(f"stream '{stream}': sample shape {value.shape} != {values[0].shape} of earlier samples")
        i = bisect.bisect_left(stamps, stamp)
        if i < len(stamps) and stamps[i] == stamp:
            values[i] = value
            return
        stamps.insert(i, stamp)
        values.insert(i, value)
        edge = stamps[-1] - self.window
        old = max(bisect.bisect_right(stamps, edge) - 1, 0, len(stamps) - self.capacity)  # keep the last at/before edge
        if old:
            del stamps[:old], values[:old]

    def get(self, now: float) -> AlignedObs | None:
        """The aligned observation ending at t0 = min over streams of their newest stamp.

        Returns ``None`` and sets :attr:`refusal` when a stream is empty, when a stream's newest sample is
        more than ``max_age`` after ``now``, when ``now - t0 > max_age`` (the stream whose newest sample is
        t0 is reported stale), or when a stream has no sample at or before a target time and its oldest
        sample is more than ``dt / 2`` after it.
        """
        self.refusal = None
        for stream, stamps in self._stamps.items():
            if not stamps:
                return self._refuse(Refusal(RefusalKind.EMPTY, stream))
        newest = max(self._stamps, key=lambda s: self._stamps[s][-1])
        if self._stamps[newest][-1] - now > self.max_age:
            return self._refuse(Refusal(RefusalKind.FUTURE, newest, self._stamps[newest][-1] - now, self.max_age))
        oldest_latest = min(self._stamps, key=lambda s: self._stamps[s][-1])
        t0 = self._stamps[oldest_latest][-1]
        if now - t0 > self.max_age:
            return self._refuse(Refusal(RefusalKind.STALE, oldest_latest, now - t0, self.max_age))
        targets = [t0 - k * self.dt for k in range(self.n_obs_steps - 1, -1, -1)]
        values, sample_stamps = {}, {}
        for stream, stamps in self._stamps.items():
            gap = stamps[0] - targets[0]
            if gap > self.dt / 2 + _EPS:
                return self._refuse(Refusal(RefusalKind.NO_HISTORY, stream, gap, self.dt / 2))
            idx = [max(bisect.bisect_right(stamps, t + _EPS) - 1, 0) for t in targets]
            values[stream] = np.stack([self._values[stream][i] for i in idx])
            sample_stamps[stream] = [stamps[i] for i in idx]
        return AlignedObs(t0, values, sample_stamps)

    def _refuse(self, refusal: Refusal) -> None:
        self.refusal = refusal
        return None

    def _check(self, stream: str) -> str:
        if stream not in self._stamps:
            raise KeyError(f"unknown stream '{stream}'; expected one of {self.streams}")
        return stream
