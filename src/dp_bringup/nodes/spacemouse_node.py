"""SpaceMouse: the device's axes as a geometry_msgs/Twist and its buttons as sensor_msgs/Joy.

Reads the device (pyspacemouse, non-blocking) at ``rate_hz``, maps the six axes through
:class:`dp_core.teleop.SpaceMouseMapping` (deadzone, axis routing, per-axis scale in units/s) and publishes the twist
on ``twist_topic`` and the raw axes and buttons on ``joy_topic``. Without a device the node exits with
a message saying what to check; when the device disappears mid-run it stops publishing (the teleop node
then times the twist out and holds) and tries to reopen it once a second.
"""

from __future__ import annotations

import sys
import time
from typing import Any

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
from geometry_msgs.msg import Twist
from rclpy.node import Node
from sensor_msgs.msg import Joy

from dp_bringup.node_runner import check_parameters, diagnostic_status, publish_diagnostics, run_node
from dp_core.teleop import ReportWatch, SpaceMouseMapping, open_spacemouse, read_latest

DEFAULTS: dict[str, Any] = {
    "rate_hz": 100.0,
    "device": "",  # pyspacemouse device name; "" = the first one connected
    "deadzone": 0.05,
    "report_timeout_s": 0.2,  # no HID report this long: the axes count as at rest (a lost wireless link)
    "scale": [1.0, 1.0, 1.0, 1.0, 1.0, 1.0],  # x, y, z (units/s), roll, pitch, yaw (rad/s) at full deflection
    "axis_map": [0, 1, 2, 3, 4, 5],  # device axis feeding each twist component
    "twist_topic": "/spacemouse/twist",
    "joy_topic": "/spacemouse/buttons",
    "frame_id": "spacemouse",
}


class SpaceMouseNode(Node):
    def __init__(self) -> None:
        super().__init__("spacemouse")
        self.declare_parameters("", list(DEFAULTS.items()))
        check_parameters(self)
        p = {name: self.get_parameter(name).value for name in DEFAULTS}
        if p["rate_hz"] < 1.0:
            raise ValueError(f"rate_hz must be >= 1; got {p['rate_hz']}")
        self.mapping = SpaceMouseMapping(deadzone=p["deadzone"], scale=list(p["scale"]), axis_map=list(p["axis_map"]))
        self._device_name = p["device"]
        self._frame_id = p["frame_id"]
        self.watch = ReportWatch(p["report_timeout_s"])
        self.device = open_spacemouse(self._device_name)  # raises RuntimeError with what to check
        self._errors = 0
        self.twist_pub = self.create_publisher(Twist, p["twist_topic"], 10)
        self.joy_pub = self.create_publisher(Joy, p["joy_topic"], 10)
        self.diag_pub = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self.create_timer(1.0 / p["rate_hz"], self._on_tick)
        self.create_timer(1.0, self._on_second)
        self.get_logger().info(f"SpaceMouse {self.device.name} at {p['rate_hz']:.0f} Hz on {p['twist_topic']}, "
                               f"buttons on {p['joy_topic']} (deadzone {p['deadzone']}, scale {list(p['scale'])})")

    def _on_tick(self) -> None:
        if self.device is None:
            return
        try:
            state = read_latest(self.device)
        except Exception as exc:  # unplugged: HID read errors
            self._errors += 1
            self.get_logger().error(f"SpaceMouse read failed ({exc}); reopening")
            self._close()
            return
        lost = self.watch.lost
        axes = self.watch.axes(state, time.monotonic())
        if self.watch.lost > lost:
            self.get_logger().warning(f"no SpaceMouse report for {self.watch.timeout_s} s while deflected: "
                                      "treated as released")
        v = self.mapping.twist(axes)
        twist = Twist()
        twist.linear.x, twist.linear.y, twist.linear.z = (float(a) for a in v[:3])
        twist.angular.x, twist.angular.y, twist.angular.z = (float(a) for a in v[3:])
        self.twist_pub.publish(twist)
        joy = Joy(axes=[float(a) for a in axes], buttons=[int(b) for b in state.buttons])
        joy.header.stamp, joy.header.frame_id = self.get_clock().now().to_msg(), self._frame_id
        self.joy_pub.publish(joy)

    def _on_second(self) -> None:
        if self.device is None:
            try:
                self.device = open_spacemouse(self._device_name)
                self.get_logger().info(f"SpaceMouse {self.device.name} reopened")
            except RuntimeError as exc:
                self.get_logger().warning(str(exc), throttle_duration_sec=10.0)
        ok = self.device is not None
        status = diagnostic_status("spacemouse", DiagnosticStatus.OK if ok else DiagnosticStatus.ERROR,
                                   "reading" if ok else "device lost, reopening",
                                   {"read_errors": self._errors, "reports_lost": self.watch.lost})
        publish_diagnostics(self, self.diag_pub, [status])

    def _close(self) -> None:
        try:
            if self.device is not None:
                self.device.close()
        except Exception:  # the device is gone already
            pass
        self.device = None


def main(args: list[str] | None = None) -> None:
    try:
        run_node(SpaceMouseNode, args, SpaceMouseNode._close)
    except RuntimeError as exc:  # no device, no HID library: say so without a traceback
        print(f"[spacemouse] ERROR: {exc}", file=sys.stderr)
        sys.exit(1)
