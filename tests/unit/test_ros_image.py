"""numpy <-> sensor_msgs/Image conversions (no cv_bridge)."""

from __future__ import annotations

import numpy as np
import pytest
from builtin_interfaces.msg import Time
from sensor_msgs.msg import Image

from dp_bringup.ros_image import image_to_numpy, numpy_to_image

RNG = np.random.default_rng(0)
RGB = RNG.integers(0, 256, (4, 5, 3), dtype=np.uint8)


@pytest.mark.parametrize(
    "encoding, array",
    [
        ("rgb8", RGB),
        ("bgr8", RGB),
        ("mono8", RNG.integers(0, 256, (4, 5), dtype=np.uint8)),
        ("16UC1", RNG.integers(0, 65536, (4, 5), dtype=np.uint16)),
    ],
)
def test_round_trip(encoding: str, array: np.ndarray) -> None:
    msg = numpy_to_image(array, encoding, stamp=Time(sec=12, nanosec=34), frame_id="cam")
    assert (msg.height, msg.width, msg.encoding) == (4, 5, encoding)
    assert msg.step == 5 * array.itemsize * (3 if array.ndim == 3 else 1)
    assert len(msg.data) == msg.step * msg.height
    assert (msg.header.stamp.sec, msg.header.stamp.nanosec, msg.header.frame_id) == (12, 34, "cam")
    back = image_to_numpy(msg)
    assert back.dtype == array.dtype
    np.testing.assert_array_equal(back, array)
    back[0, 0] = 0  # a writable copy, independent of the message
    np.testing.assert_array_equal(image_to_numpy(msg), array)


def test_non_contiguous_input_is_packed() -> None:
    view = RGB[:, ::2]
    np.testing.assert_array_equal(image_to_numpy(numpy_to_image(view)), view)


def padded(array: np.ndarray, encoding: str, pad: int, big_endian: bool = False) -> Image:
    """An Image whose rows carry ``pad`` junk bytes, as some drivers send."""
    height, width = array.shape[:2]
    wire = array.astype(array.dtype.newbyteorder(">" if big_endian else "<"))
    rows = wire.reshape(height, -1).view(np.uint8)
    junk = np.full((height, pad), 0xAB, np.uint8)
    msg = Image(height=height, width=width, encoding=encoding, is_bigendian=int(big_endian),
                step=rows.shape[1] + pad)
    msg.data = np.concatenate([rows, junk], axis=1).tobytes()
    return msg


def test_row_padding_and_big_endian() -> None:
    np.testing.assert_array_equal(image_to_numpy(padded(RGB, "rgb8", pad=3)), RGB)
    depth = RNG.integers(0, 65536, (3, 4), dtype=np.uint16)
    np.testing.assert_array_equal(image_to_numpy(padded(depth, "16UC1", pad=2, big_endian=True)), depth)
    np.testing.assert_array_equal(image_to_numpy(padded(depth, "mono16", pad=0)), depth)


def test_encoding_conversions() -> None:
    bgr_msg = numpy_to_image(RGB[..., ::-1], "bgr8")
    np.testing.assert_array_equal(image_to_numpy(bgr_msg, "rgb8"), RGB)
    np.testing.assert_array_equal(image_to_numpy(numpy_to_image(RGB), "bgr8"), RGB[..., ::-1])
    mono = image_to_numpy(numpy_to_image(np.array([[[255, 0, 0], [0, 255, 0], [0, 0, 255], [10, 10, 10]]], np.uint8)),
                          "mono8")
    np.testing.assert_array_equal(mono, [[76, 150, 29, 10]])  # BT.601 luma
    gray = np.array([[0, 128]], np.uint8)
    np.testing.assert_array_equal(image_to_numpy(numpy_to_image(gray, "mono8"), "rgb8"), [[[0] * 3, [128] * 3]])


def test_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="H x W x 3"):
        numpy_to_image(RGB[..., 0], "rgb8")
    with pytest.raises(ValueError, match="uint8"):
        numpy_to_image(RGB.astype(np.float32), "rgb8")
    with pytest.raises(ValueError, match="unsupported"):
        numpy_to_image(RGB, "rgba8")
    msg = numpy_to_image(RGB)
    msg.step = 5  # shorter than a row
    with pytest.raises(ValueError, match="inconsistent"):
        image_to_numpy(msg)
    with pytest.raises(ValueError, match="cannot convert"):
        image_to_numpy(numpy_to_image(np.zeros((2, 2), np.uint16), "16UC1"), "rgb8")
