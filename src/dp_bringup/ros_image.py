"""sensor_msgs/Image <-> numpy without cv_bridge (which breaks with numpy 2).

Supported encodings: ``rgb8``, ``bgr8`` (H x W x 3 uint8), ``mono8`` (H x W uint8) and, for depth,
``mono16`` / ``16UC1`` (H x W uint16). Incoming rows may be padded (``step`` > row size); 16-bit data
may be big-endian.
"""

from __future__ import annotations

import array
import sys

import numpy as np
from builtin_interfaces.msg import Time
from sensor_msgs.msg import Image

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


def _layout(encoding: str) -> tuple[np.dtype, int]:
    if encoding not in ENCODINGS:
        raise ValueError(f"unsupported image encoding {encoding!r}; supported: {', '.join(ENCODINGS)}")
    dtype, channels = ENCODINGS[encoding]
    return np.dtype(dtype), channels


def numpy_to_image(
    image: np.ndarray, encoding: str = "rgb8", stamp: Time | None = None, frame_id: str = ""
) -> Image:
    """Pack an H x W x 3 (colour) or H x W (mono, depth) array into an unpadded Image message."""
    dtype, channels = _layout(encoding)
    arr = np.asarray(image)
    shape_ok = arr.ndim == 3 and arr.shape[2] == 3 if channels == 3 else arr.ndim == 2
    if arr.dtype != dtype or not shape_ok:
        expected = "H x W x 3" if channels == 3 else "H x W"
        raise ValueError(f"{encoding} needs an {expected} {dtype} array, got {arr.shape} {arr.dtype}")
    arr = np.ascontiguousarray(arr)
    msg = Image()
    if stamp is not None:
        msg.header.stamp = stamp
    msg.header.frame_id = frame_id
    msg.height, msg.width = int(arr.shape[0]), int(arr.shape[1])
    msg.encoding = encoding
    msg.is_bigendian = int(sys.byteorder == "big")
    msg.step = msg.width * channels * dtype.itemsize
    data = array.array("B")
    data.frombytes(memoryview(arr).cast("B"))  # one copy; assigning an ndarray is element by element
    msg.data = data
    return msg


def image_to_numpy(msg: Image, desired_encoding: str | None = None) -> np.ndarray:
    """Unpack an Image into a new array (H x W x 3 or H x W), honouring ``step`` and endianness.

    ``desired_encoding`` converts between ``rgb8``, ``bgr8`` and ``mono8`` (None keeps the message's).
    """
    dtype, channels = _layout(msg.encoding)
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
