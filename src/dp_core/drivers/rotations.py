"""Rotation helpers: UR rotation vectors <-> unit quaternions (x, y, z, w as in geometry_msgs), slerp."""

from __future__ import annotations

import numpy as np

_EPS = 1e-12


def rotvec_to_quat(rotvec: np.ndarray) -> np.ndarray:
    """Rotation vector (axis * angle, rad) -> unit quaternion (x, y, z, w)."""
    rotvec = np.asarray(rotvec, dtype=np.float64)
    angle = float(np.linalg.norm(rotvec))
    half = 0.5 * angle
    # sin(half) / angle, with its Taylor series near zero
    scale = np.sin(half) / angle if angle > 1e-8 else 0.5 - angle**2 / 48.0
    return np.array([*(rotvec * scale), np.cos(half)])


def quat_to_rotvec(quat: np.ndarray) -> np.ndarray:
    """Quaternion (x, y, z, w), normalised here -> rotation vector with angle in [0, pi]."""
    q = np.asarray(quat, dtype=np.float64)
    norm = float(np.linalg.norm(q))
    if norm < _EPS:
        raise ValueError("zero quaternion")
    q = q / norm
    if q[3] < 0.0:
        q = -q
    sin_half = float(np.linalg.norm(q[:3]))
    angle = 2.0 * np.arctan2(sin_half, q[3])
    scale = angle / sin_half if sin_half > 1e-8 else 2.0 + angle**2 / 12.0
    return q[:3] * scale


def quat_slerp(q0: np.ndarray, q1: np.ndarray, alpha: float) -> np.ndarray:
    """Spherical interpolation along the shorter arc; ``alpha`` = 0 gives ``q0``, 1 gives ``q1``."""
    q0 = np.asarray(q0, dtype=np.float64)
    q1 = np.asarray(q1, dtype=np.float64)
    dot = float(np.dot(q0, q1))
    if dot < 0.0:
        q1, dot = -q1, -dot
    if dot > 0.9995:  # nearly parallel: normalised lerp is exact to float precision
        q = q0 + alpha * (q1 - q0)
        return q / np.linalg.norm(q)
    theta = np.arccos(min(dot, 1.0))
    return (np.sin((1.0 - alpha) * theta) * q0 + np.sin(alpha * theta) * q1) / np.sin(theta)


def quat_angle(q0: np.ndarray, q1: np.ndarray) -> float:
    """Angle (rad, in [0, pi]) of the rotation taking ``q0`` to ``q1``."""
    q0 = np.asarray(q0, dtype=np.float64)
    q1 = np.asarray(q1, dtype=np.float64)
    if float(np.dot(q0, q1)) < 0.0:
        q1 = -q1
    # 2 * atan2(|a - b|, |a + b|) is the arc between unit 4-vectors, stable near 0; rotation angle is twice it
    return 4.0 * float(np.arctan2(np.linalg.norm(q1 - q0), np.linalg.norm(q1 + q0)))
