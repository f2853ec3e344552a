"""Observation values from ROS 2 message fields, without ROS.

The functions read only the standard field names (``header.stamp``, ``pose.position``, ``data``,
``step``, ...), so they decode rclpy messages in the live nodes and rosbags' deserialised messages in
bag conversion and replay alike: one decoding for the policy node, the bag converter and the replay.

Images: ``rgb8``, ``bgr8`` (H x W x 3 uint8), ``mono8`` (H x W uint8) and, for depth, ``mono16`` /
``16UC1`` (H x W uint16). Rows may be padded (``step`` > row size); 16-bit data may be big-endian.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .config import ObsSpec

# encoding -> (dtype, channels)
ENCODINGS: dict[str, tuple[type[np.generic], int]] = {
    "rgb8": (np.uint8, 3),
    "bgr8": (np.uint8, 3),
    "mono8": (np.uint8, 1),
    "mono16": (np.uint16, 1),
    "16UC1": (np.uint16, 1),
}
_COLOUR = ("rgb8", "bgr8", "mono8")
_LUMA = np.array([0.299, 0.587, 0.114])  # ITU-R BT.601, applied to R, G, B
POSITION_AXES = ("x", "y", "z")  # action dimensions map onto the TCP position in this order
LOW_DIM_TYPES = ("PoseStamped", "PoseArray", "JointState")
OBS_TYPES = ("Image", *LOW_DIM_TYPES)  # short names, as in the policy node's obs_types parameter


def stamp_seconds(stamp) -> float:
    """A ``builtin_interfaces/Time`` as float seconds."""
    return stamp.sec + stamp.nanosec * 1e-9


def image_layout(encoding: str) -> tuple[np.dtype, int]:
    if encoding not in ENCODINGS:
        raise ValueError(f"unsupported image encoding {encoding!r}; supported: {', '.join(ENCODINGS)}")
    dtype, channels = ENCODINGS[encoding]
    return np.dtype(dtype), channels


def image_to_numpy(msg, desired_encoding: str | None = None) -> np.ndarray:
    """Unpack an Image into a new array (H x W x 3 or H x W), honouring ``step`` and endianness.

    ``desired_encoding`` converts between ``rgb8``, ``bgr8`` and ``mono8`` (None keeps the message's).
    """
    dtype, channels = image_layout(msg.encoding)
    row_bytes = msg.width * channels * dtype.itemsize
    if msg.step < row_bytes or len(msg.data) < msg.step * msg.height:
        raise ValueError(
            f"inconsistent Image: {msg.width}x{msg.height} {msg.encoding}, step {msg.step}, {len(msg.data)} bytes"
        )
    rows = np.frombuffer(msg.data, np.uint8, count=msg.step * msg.height).reshape(msg.height, msg.step)
    wire = dtype.newbyteorder(">" if msg.is_bigendian else "<")
    arr = np.array(rows[:, :row_bytes]).view(wire).astype(dtype, copy=False)  # always a copy of the data
    arr = arr.reshape((msg.height, msg.width, 3) if channels == 3 else (msg.height, msg.width))
    if desired_encoding is None or desired_encoding == msg.encoding:
        return arr
    return convert_encoding(arr, msg.encoding, desired_encoding)


def convert_encoding(arr: np.ndarray, src: str, dst: str) -> np.ndarray:
    """Convert a uint8 image between ``rgb8``, ``bgr8`` and ``mono8``."""
    if src not in _COLOUR or dst not in _COLOUR:
        raise ValueError(f"cannot convert {src!r} to {dst!r}: only between {', '.join(_COLOUR)}")
    if src == dst:
        return arr
    if src == "mono8":
        return np.repeat(arr[..., None], 3, axis=2)
    rgb = arr if src == "rgb8" else arr[..., ::-1]
    if dst == "mono8":
        return np.clip(np.rint(rgb @ _LUMA), 0, 255).astype(np.uint8)
    return np.ascontiguousarray(rgb if dst == "rgb8" else rgb[..., ::-1])


def low_dim_from_msg(msg, type_name: str, dim: int) -> np.ndarray:
    """A low-dim observation vector of length ``dim`` from a state message of type ``type_name``.

    PoseStamped: the first ``dim`` of (x, y, z); PoseArray: (x, y) or (x, y, z) of every pose,
    flattened, whichever matches ``dim``; JointState: the first ``dim`` joint positions.
    """
    if type_name == "PoseStamped":
        p = msg.pose.position
        values = [p.x, p.y, p.z]
    elif type_name == "PoseArray":
        n = len(msg.poses)
        per_pose = dim // n if n and dim % n == 0 else 0
        if per_pose not in (2, 3):
            raise ValueError(f"PoseArray of {n} poses cannot give {dim} values (needs 2 or 3 per pose)")
        values = [v for pose in msg.poses for v in (pose.position.x, pose.position.y, pose.position.z)[:per_pose]]
    elif type_name == "JointState":
        values = list(msg.position)
    else:
        raise TypeError(f"unsupported observation message type {type_name!r}; expected one of {LOW_DIM_TYPES}")
    if len(values) < dim:
        raise ValueError(f"{type_name} gives {len(values)} values, observation needs {dim}")
    return np.asarray(values[:dim], dtype=np.float32)


def observation_from_msg(msg, type_name: str, spec: ObsSpec) -> tuple[float, np.ndarray]:
    """``(header stamp in s, value)`` of one observation sample as the policy consumes it.

    Images come back as recorded (rgb8; resizing to the policy's input is the policy loop's job),
    low-dim values as ``spec.shape[0]`` float32 values: the message's values ``columns[0]:columns[1]`` when
    the spec picks columns (as training picked them from the recorded vector), else its first ones.
    """
    stamp = stamp_seconds(msg.header.stamp)
    if spec.type == "rgb":
        if type_name != "Image":
            raise TypeError(f"an rgb observation needs Image messages, not {type_name}")
        return stamp, image_to_numpy(msg, "rgb8")
    why = columns_unreadable(spec, type_name)
    if why:
        raise TypeError(why)
    if spec.columns is None:
        return stamp, low_dim_from_msg(msg, type_name, spec.shape[0])
    return stamp, low_dim_from_msg(msg, type_name, spec.columns[1])[spec.columns[0]:]


def columns_unreadable(spec: ObsSpec, type_name: str) -> str | None:
    """Why a low-dim observation's ``columns`` cannot be read from ``type_name`` messages (None: they can).
    A PoseArray's values per pose follow from how many values are asked for, so a slice of the vector it was
    recorded as (2 or 3 per pose) has no sure counterpart in the message: it takes no columns."""
    if type_name == "PoseArray" and spec.columns is not None:
        return (f"columns {spec.columns} of a PoseArray observation: give the keypoints' whole vector (no columns), "
                "the values per pose follow from its length")
    return None


def position_from_msg(msg, names: Sequence[str]) -> np.ndarray:
    """The named axes (of x, y, z) of a PoseStamped's position, e.g. a recorded servo target."""
    p = msg.pose.position
    xyz = {"x": p.x, "y": p.y, "z": p.z}
    bad = [n for n in names if n not in xyz]
    if bad:
        raise ValueError(f"action dimensions {bad} are not position axes {POSITION_AXES}")
    return np.array([xyz[n] for n in names], dtype=np.float64)
