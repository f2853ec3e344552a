"""Conversions between dp_bringup's ROS messages and plain values (conventions: docs/interfaces.md)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from builtin_interfaces.msg import Duration, Time
from geometry_msgs.msg import PoseStamped
from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint

from dp_core.msg_fields import POSITION_AXES, stamp_seconds

_TIME_FROM_START_TOL = 1e-3  # s


def stamp_to_seconds(stamp: Time) -> float:
    return stamp_seconds(stamp)


def seconds_to_stamp(seconds: float) -> Time:
    sec = math.floor(seconds)
    nanosec = round((seconds - sec) * 1e9)
    if nanosec >= 1_000_000_000:
        sec, nanosec = sec + 1, nanosec - 1_000_000_000
    return Time(sec=int(sec), nanosec=int(nanosec))


def chunk_from_msg(msg: JointTrajectory, dt: float | None = None) -> tuple[float, np.ndarray, list[str]]:
    """``(header stamp in s, actions (N, A), dimension names)`` of an action-chunk message.

    With ``dt``, checks that point i has ``time_from_start == (i + 1) * dt`` (the policy and the
    executor must agree on dt). Raises ``ValueError`` on a malformed chunk.
    """
    names = list(msg.joint_names)
    if not names or not msg.points:
        raise ValueError(f"action chunk needs joint_names and points; got {len(names)} names, {len(msg.points)} points")
    for i, point in enumerate(msg.points):
        if len(point.positions) != len(names):
            raise ValueError(f"point {i} has {len(point.positions)} positions for {len(names)} joint_names {names}")
        if dt is not None:
            t = point.time_from_start.sec + point.time_from_start.nanosec * 1e-9
            if abs(t - (i + 1) * dt) > _TIME_FROM_START_TOL:
                raise ValueError(
                    f"point {i} has time_from_start {t:.4f} s, expected (i + 1) * dt = {(i + 1) * dt:.4f} s"
                )
    actions = np.array([point.positions for point in msg.points], dtype=float)
    return stamp_to_seconds(msg.header.stamp), actions, names


def action_to_pose(
    action: Sequence[float], names: Sequence[str], fixed_pose: Sequence[float]
) -> tuple[list[float], list[float]]:
    """``(position xyz, orientation xyzw)``: the action's named axes over ``fixed_pose`` [x, y, z, qx, qy, qz, qw]."""
    if len(fixed_pose) != 7:
        raise ValueError(f"fixed_pose must be [x, y, z, qx, qy, qz, qw]; got {len(fixed_pose)} values")
    if abs(math.hypot(*fixed_pose[3:]) - 1.0) > 1e-3:
        raise ValueError(f"fixed_pose orientation {list(fixed_pose[3:])} is not a unit quaternion")
    if len(action) != len(names):
        raise ValueError(f"action has {len(action)} values for {len(names)} dimension names {list(names)}")
    position = [float(v) for v in fixed_pose[:3]]
    for name, value in zip(names, action):
        if name not in POSITION_AXES:
            raise ValueError(f"action dimension '{name}' is not one of {POSITION_AXES}")
        position[POSITION_AXES.index(name)] = float(value)
    return position, [float(v) for v in fixed_pose[3:]]


def pose_stamped(stamp: float, frame_id: str, position: Sequence[float], orientation: Sequence[float]) -> PoseStamped:
    msg = PoseStamped()
    msg.header.stamp = seconds_to_stamp(stamp)
    msg.header.frame_id = frame_id
    p, q = msg.pose.position, msg.pose.orientation
    p.x, p.y, p.z = (float(v) for v in position)
    q.x, q.y, q.z, q.w = (float(v) for v in orientation)
    return msg


def chunk_to_msg(stamp: float, actions: np.ndarray, names: Sequence[str], dt: float) -> JointTrajectory:
    """Action chunk message: point ``i`` = ``actions[i]``, due ``(i + 1) * dt`` after ``stamp``."""
    if actions.ndim != 2 or actions.shape[1] != len(names):
        raise ValueError(f"actions of shape {actions.shape} do not match names {list(names)}")
    msg = JointTrajectory()
    msg.header.stamp = seconds_to_stamp(stamp)
    msg.joint_names = list(names)
    for i, action in enumerate(actions):
        point = JointTrajectoryPoint(positions=[float(v) for v in action])
        t = seconds_to_stamp((i + 1) * dt)
        point.time_from_start = Duration(sec=t.sec, nanosec=t.nanosec)
        msg.points.append(point)
    return msg
