"""A timestamped TCP pose trajectory: positions interpolate linearly, orientations by slerp.

Poses are UR poses ``[x, y, z, rx, ry, rz]`` (metres, rotation vector in radians). Times are on any
monotonic clock, as long as every call uses the same one.
"""

from __future__ import annotations

import math

import numpy as np

from .rotations import quat_slerp, quat_to_rotvec, rotvec_to_quat

_MIN_SEGMENT_S = 1e-6


def as_pose(pose: np.ndarray | list[float]) -> np.ndarray:
    """Validate and copy a 6-vector pose as float64."""
    arr = np.array(pose, dtype=np.float64).reshape(-1)
    if arr.shape != (6,) or not np.all(np.isfinite(arr)):
        raise ValueError(f"pose must be 6 finite numbers [x, y, z, rx, ry, rz], got {pose!r}")
    return arr


class PoseTrajectoryInterpolator:
    """Piecewise pose trajectory through timestamped knots.

    ``traj(t)`` gives the pose at ``t``: the first knot before the start, the last after the end.
    """

    def __init__(self, times: list[float] | np.ndarray, poses: list | np.ndarray) -> None:
        times = np.asarray(times, dtype=np.float64).reshape(-1)
        if len(times) == 0 or len(times) != len(poses):
            raise ValueError("need at least one knot and one pose per time")
        if np.any(np.diff(times) <= 0.0):
            raise ValueError("knot times must be strictly increasing")
        poses = [as_pose(p) for p in poses]
        self._times = times
        self._pos = np.stack([p[:3] for p in poses])
        self._quat = np.stack([rotvec_to_quat(p[3:]) for p in poses])

    @property
    def times(self) -> np.ndarray:
        return self._times.copy()

    @property
    def end_time(self) -> float:
        return float(self._times[-1])

    def __len__(self) -> int:
        return len(self._times)

    def _position_and_quat(self, t: float) -> tuple[np.ndarray, np.ndarray]:
        i = int(np.searchsorted(self._times, t, side="right"))  # knots at or before t
        if i == 0:
            return self._pos[0], self._quat[0]
        if i == len(self._times):
            return self._pos[-1], self._quat[-1]
        t0, t1 = self._times[i - 1], self._times[i]
        alpha = (t - t0) / (t1 - t0)
        pos = self._pos[i - 1] + alpha * (self._pos[i] - self._pos[i - 1])
        return pos, quat_slerp(self._quat[i - 1], self._quat[i], alpha)

    def __call__(self, t: float) -> np.ndarray:
        pos, quat = self._position_and_quat(float(t))
        return np.concatenate([pos, quat_to_rotvec(quat)])

    def schedule_waypoint(
        self, pose: np.ndarray | list[float], target_time: float, now: float, max_speed: float = math.inf
    ) -> float:
        """Reach ``pose`` at ``target_time``, or later if that needs more than ``max_speed`` (m/s).

        The trajectory is cut at ``now`` (its pose there becomes the first knot); knots after ``now``
        and before the new waypoint are kept, those at or after it are replaced by it (the newest
        command wins). Returns the time the waypoint was scheduled at.
        """
        if not max_speed > 0.0:
            raise ValueError("max_speed must be positive")
        pose = as_pose(pose)
        start_pos, start_quat = self._position_and_quat(now)
        keep = (self._times > now) & (self._times < target_time)
        times = [now, *self._times[keep]]
        pos = [start_pos, *self._pos[keep]]
        quats = [start_quat, *self._quat[keep]]

        reach_time = times[-1] + float(np.linalg.norm(pose[:3] - pos[-1])) / max_speed
        t = max(float(target_time), reach_time)
        if t - times[-1] < _MIN_SEGMENT_S:  # no time left to move: the waypoint replaces the last knot
            times.pop()
            pos.pop()
            quats.pop()
        times.append(t)
        pos.append(pose[:3])
        quats.append(rotvec_to_quat(pose[3:]))
        self._times = np.asarray(times)
        self._pos = np.stack(pos)
        self._quat = np.stack(quats)
        return t
