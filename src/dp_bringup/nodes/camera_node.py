"""RealSense cameras: publishes each camera's colour frames and intrinsics (docs/interfaces.md).

Camera ``i`` (the i-th entry of ``serials``) publishes ``/camera_<i>/color/image_raw`` (rgb8) and
``/camera_<i>/color/camera_info``, and with ``enable_depth`` also
``/camera_<i>/aligned_depth_to_color/image_raw`` (16UC1, device units, 1 mm by default) and its
camera_info, all with the sensor-data QoS. Stamps are the frames' capture times mapped onto the host
clock by :class:`dp_core.drivers.MultiRealsense` (ROS time is system time). Messages are published from
the camera worker threads. ``/diagnostics`` carries one status per camera at 1 Hz; failures and restarts
are logged by dp_core (Python logging).
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
from rclpy.exceptions import ParameterUninitializedException
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.qos import qos_profile_sensor_data
from sensor_msgs.msg import CameraInfo, Image

from dp_bringup.node_runner import check_parameters, diagnostic_status, publish_diagnostics, run_node
from dp_bringup.ros_conversions import seconds_to_stamp
from dp_bringup.ros_image import numpy_to_image
from dp_core.drivers.realsense import CameraIntrinsics, CameraState, MultiRealsense

DEFAULTS: dict[str, Any] = {  # config/cameras.yaml repeats them
    "width": 640,
    "height": 480,
    "fps": 30,
    "enable_depth": False,
    "retry_period_s": 2.0,
    "frame_timeout_s": 1.0,
}
_LEVELS = {
    CameraState.STREAMING: DiagnosticStatus.OK,
    CameraState.STARTING: DiagnosticStatus.WARN,
    CameraState.FAILED: DiagnosticStatus.ERROR,
    CameraState.STOPPED: DiagnosticStatus.WARN,
}


def camera_info(intrinsics: CameraIntrinsics, header: Any) -> CameraInfo:
    """CameraInfo for an unrectified pinhole camera with librealsense's distortion coefficients."""
    i = intrinsics
    equidistant = i.model == "kannala_brandt4"
    return CameraInfo(
        header=header,
        width=i.width,
        height=i.height,
        distortion_model="equidistant" if equidistant else "plumb_bob",
        d=list(i.coeffs[:4] if equidistant else i.coeffs[:5]),
        k=[i.fx, 0.0, i.ppx, 0.0, i.fy, i.ppy, 0.0, 0.0, 1.0],
        r=[1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0],
        p=[i.fx, 0.0, i.ppx, 0.0, 0.0, i.fy, i.ppy, 0.0, 0.0, 0.0, 1.0, 0.0],
    )


class CameraNode(Node):
    def __init__(self, rs_module: Any = None, **kwargs: Any) -> None:
        super().__init__("cameras", **kwargs)
        self.declare_parameter("serials", Parameter.Type.STRING_ARRAY)  # required, no default
        self.declare_parameters("", list(DEFAULTS.items()))
        check_parameters(self)
        p = {name: self.get_parameter(name).value for name in DEFAULTS}
        try:
            serials = list(self.get_parameter("serials").value)
        except ParameterUninitializedException:
            raise ValueError("parameter serials is required: the RealSense serial numbers, as strings") from None
        self._index = {serial: i for i, serial in enumerate(serials)}
        self._color_pubs, self._info_pubs, self._depth_pubs, self._depth_info_pubs = [], [], [], []
        for i in range(len(serials)):
            self._color_pubs.append(
                self.create_publisher(Image, f"/camera_{i}/color/image_raw", qos_profile_sensor_data)
            )
            self._info_pubs.append(
                self.create_publisher(CameraInfo, f"/camera_{i}/color/camera_info", qos_profile_sensor_data)
            )
            if p["enable_depth"]:
                ns = f"/camera_{i}/aligned_depth_to_color"
                self._depth_pubs.append(self.create_publisher(Image, f"{ns}/image_raw", qos_profile_sensor_data))
                self._depth_info_pubs.append(
                    self.create_publisher(CameraInfo, f"{ns}/camera_info", qos_profile_sensor_data)
                )
        self._diag_pub = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self._last_frames: dict[str, tuple[float, int]] = {}

        self.cameras = MultiRealsense(
            serials,
            self._on_frame,
            width=p["width"],
            height=p["height"],
            fps=p["fps"],
            enable_depth=p["enable_depth"],
            retry_period_s=p["retry_period_s"],
            frame_timeout_s=p["frame_timeout_s"],
            rs_module=rs_module,
        )
        self.create_timer(1.0, self._publish_diagnostics)
        self.cameras.start()
        self.get_logger().info(
            f"{len(serials)} camera(s) {serials}: {p['width']}x{p['height']} @ {p['fps']} fps, "
            f"depth {'on' if p['enable_depth'] else 'off'}"
        )

    def _on_frame(
        self, serial: str, stamp: float, color: np.ndarray, depth: np.ndarray | None, intrinsics: CameraIntrinsics
    ) -> None:
        """Called by the camera's worker thread for every frame."""
        i = self._index[serial]
        frame_id = f"camera_{i}_color_optical_frame"
        image = numpy_to_image(color, "rgb8", seconds_to_stamp(stamp), frame_id)
        self._color_pubs[i].publish(image)
        self._info_pubs[i].publish(camera_info(intrinsics, image.header))
        if depth is not None:
            self._depth_pubs[i].publish(numpy_to_image(depth, "16UC1", image.header.stamp, frame_id))
            self._depth_info_pubs[i].publish(camera_info(intrinsics, image.header))

    def _publish_diagnostics(self) -> None:
        now = time.time()
        statuses = []
        for serial, s in self.cameras.status().items():
            i = self._index[serial]
            prev_t, prev_frames = self._last_frames.get(serial, (now, s.frames))
            self._last_frames[serial] = (now, s.frames)
            fps = (s.frames - prev_frames) / (now - prev_t) if now > prev_t else 0.0
            values = {
                "serial": serial,
                "state": s.state.value,
                "fps": f"{fps:.1f}",
                "frames": s.frames,
                "failures": s.failures,
                "last_frame_age_s": "never" if s.last_stamp is None else f"{now - s.last_stamp:.3f}",
                "error": s.message,
            }
            message = s.state.value + (f": {s.message}" if s.message else "")
            statuses.append(diagnostic_status(f"{self.get_name()}: camera_{i}", _LEVELS[s.state], message, values, serial))
        publish_diagnostics(self, self._diag_pub, statuses)


def main(args: list[str] | None = None) -> None:
    run_node(CameraNode, args, lambda node: node.cameras.stop())

