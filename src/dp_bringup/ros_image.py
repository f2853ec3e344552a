"""sensor_msgs/Image <-> numpy without cv_bridge (which breaks with numpy 2); decoding is in dp_core.msg_fields.

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

from dp_core.msg_fields import convert_encoding, image_layout, image_to_numpy  # decoding is ROS-free (bag replay)

__all__ = ["convert_encoding", "image_to_numpy", "numpy_to_image"]


def numpy_to_image(
    image: np.ndarray, encoding: str = "rgb8", stamp: Time | None = None, frame_id: str = ""
) -> Image:
    """Pack an H x W x 3 (colour) or H x W (mono, depth) array into an unpadded Image message."""
    dtype, channels = image_layout(encoding)
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
