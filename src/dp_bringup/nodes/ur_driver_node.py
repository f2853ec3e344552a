"""UR driver: streams ``/robot/servo_target`` waypoints to the arm with servoL, publishes its state.

A thin adapter over :class:`dp_core.drivers.URServoController` (interpolation, workspace and speed
clamps, watchdog, reconnect). A waypoint is a ``PoseStamped`` in ``frame_id`` (the UR base frame) to be
reached at ``header.stamp``; waypoints in another frame are rejected (no TF lookup here).

Clocks: the controller runs on ``time.monotonic``; stamps are ROS time. A waypoint stamp ``s`` received
when ROS time reads ``r`` and the monotonic clock ``m`` becomes the controller target ``m + (s - r)``; a
state sampled at controller time ``t`` is stamped ``r - (m - t)``. Both offsets are read at conversion
time, so system clock steps (NTP) are picked up at once.

Publishes ``/robot/tcp_pose`` (PoseStamped) and ``/joint_states`` (JointState) at ``publish_rate`` from the
servo thread, and ``/diagnostics`` at 1 Hz.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
from geometry_msgs.msg import Pose, PoseStamped
from rclpy.node import Node
from rclpy.qos import qos_profile_sensor_data
from sensor_msgs.msg import JointState

from dp_bringup.node_runner import check_parameters, diagnostic_status, publish_diagnostics, run_node
from dp_bringup.ros_conversions import pose_stamped, seconds_to_stamp, stamp_to_seconds
from dp_core.drivers.rotations import quat_to_rotvec, rotvec_to_quat
from dp_core.drivers.ur_servo import (
    RobotState,
    RTDEControl,
    RTDEReceive,
    ServoConfig,
    ServoState,
    URServoController,
    rtde_control_factory,
    rtde_receive_factory,
)

JOINT_NAMES = [
    "shoulder_pan_joint",
    "shoulder_lift_joint",
    "elbow_joint",
    "wrist_1_joint",
    "wrist_2_joint",
    "wrist_3_joint",
]
TCP_POSE_TOPIC = "/robot/tcp_pose"
JOINT_STATES_TOPIC = "/joint_states"
DEFAULTS: dict[str, Any] = {  # config/ur_driver.yaml repeats them
    "robot_ip": "",  # required
    "frequency": 125.0,  # Hz: 125 on CB3, up to 500 on e-series
    "lookahead_time": 0.1,
    "gain": 300.0,
    "max_speed": 0.25,  # m/s, TCP
    "max_rot_speed": 1.0,  # rad/s, TCP
    "workspace_min": [-1.0, -1.0, 0.0],  # m, base frame
    "workspace_max": [1.0, 1.0, 1.0],
    "watchdog_s": 0.5,
    "reconnect_period_s": 1.0,
    "publish_rate": 125.0,  # Hz, /robot/tcp_pose and /joint_states (at most frequency)
    "frame_id": "base",  # the UR base frame, in which RTDE poses are expressed
    "command_topic": "/robot/servo_target",
}


def pose_msg_to_ur(pose: Pose) -> np.ndarray:
    """geometry_msgs/Pose -> UR pose [x, y, z, rx, ry, rz] (rotation vector)."""
    q = pose.orientation
    rotvec = quat_to_rotvec(np.array([q.x, q.y, q.z, q.w]))
    return np.array([pose.position.x, pose.position.y, pose.position.z, *rotvec])


class URDriverNode(Node):
    def __init__(
        self,
        control_factory: Callable[[str, float], RTDEControl] = rtde_control_factory,
        receive_factory: Callable[[str, float], RTDEReceive] = rtde_receive_factory,
        **kwargs: Any,
    ) -> None:
        super().__init__("ur_driver", **kwargs)
        self.declare_parameters("", list(DEFAULTS.items()))
        check_parameters(self)
        p = {name: self.get_parameter(name).value for name in DEFAULTS}
        if not p["robot_ip"]:
            raise ValueError("parameter robot_ip is required (the UR controller's address)")
        config = ServoConfig(
            robot_ip=p["robot_ip"],
            frequency=p["frequency"],
            lookahead_time=p["lookahead_time"],
            gain=p["gain"],
            max_speed=p["max_speed"],
            max_rot_speed=p["max_rot_speed"],
            workspace_min=tuple(p["workspace_min"]),
            workspace_max=tuple(p["workspace_max"]),
            watchdog_s=p["watchdog_s"],
            reconnect_period_s=p["reconnect_period_s"],
            state_rate=p["publish_rate"],
        )
        if min(p["publish_rate"], p["frequency"]) < 125.0:
            self.get_logger().warning("state is published below the 125 Hz that docs/interfaces.md promises")
        self._frame_id = p["frame_id"]
        self._waypoints = 0
        self._rejected = 0

        self._pose_pub = self.create_publisher(PoseStamped, TCP_POSE_TOPIC, qos_profile_sensor_data)
        self._joint_pub = self.create_publisher(JointState, JOINT_STATES_TOPIC, qos_profile_sensor_data)
        self._diag_pub = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self.controller = URServoController(config, on_state=self._publish_state, control_factory=control_factory,
                                            receive_factory=receive_factory, clock=time.monotonic)
        self.create_subscription(PoseStamped, p["command_topic"], self._on_waypoint, 10)
        self.create_timer(1.0, self._publish_diagnostics)
        self.controller.start()
        self.get_logger().info(
            f"UR at {config.robot_ip}: servoL at {config.frequency:.0f} Hz from {p['command_topic']} "
            f"(max {config.max_speed} m/s, watchdog {config.watchdog_s} s, workspace {p['workspace_min']} .. "
            f"{p['workspace_max']})"
        )

    def _ros_now(self) -> float:
        return self.get_clock().now().nanoseconds * 1e-9

    def to_controller_time(self, ros_stamp: float) -> float:
        return time.monotonic() + (ros_stamp - self._ros_now())

    def to_ros_time(self, controller_time: float) -> float:
        return self._ros_now() - (time.monotonic() - controller_time)

    def _on_waypoint(self, msg: PoseStamped) -> None:
        frame = msg.header.frame_id
        try:
            if frame and frame != self._frame_id:
                raise ValueError(f"frame '{frame}' is not the driver's frame_id '{self._frame_id}'")
            pose = pose_msg_to_ur(msg.pose)
            target_time = self.to_controller_time(stamp_to_seconds(msg.header.stamp))
            accepted = self.controller.schedule_waypoint(pose, target_time)
        except ValueError as exc:
            self._rejected += 1
            self.get_logger().error(f"rejected waypoint: {exc}", throttle_duration_sec=1.0)
            return
        if accepted:
            self._waypoints += 1
        else:
            self._rejected += 1
            self.get_logger().warning("robot not connected: waypoint dropped", throttle_duration_sec=1.0)

    def _publish_state(self, state: RobotState) -> None:
        """Called by the servo thread at ``publish_rate``."""
        stamp = self.to_ros_time(state.stamp)
        self._pose_pub.publish(
            pose_stamped(stamp, self._frame_id, state.tcp_pose[:3], rotvec_to_quat(state.tcp_pose[3:]))
        )
        joints = JointState(name=JOINT_NAMES, position=[float(q) for q in state.joint_positions])
        joints.header.stamp = seconds_to_stamp(stamp)
        self._joint_pub.publish(joints)

    def _publish_diagnostics(self) -> None:
        s = self.controller.status()
        if s.state is ServoState.DISCONNECTED:
            level, message = DiagnosticStatus.ERROR, "not connected to the robot; reconnecting"
        elif s.watchdog_tripped:
            level, message = DiagnosticStatus.WARN, "watchdog: no recent waypoint, servo stopped, holding"
        elif s.state is ServoState.SERVOING:
            level, message = DiagnosticStatus.OK, "servoing"
        else:
            level, message = DiagnosticStatus.OK, "connected, holding, waiting for a waypoint"
        values = {
            "robot_ip": self.controller.config.robot_ip,
            "connected": s.state is not ServoState.DISCONNECTED,
            "state": s.state.value,
            "watchdog": "tripped" if s.watchdog_tripped else "ok",
            "servo_rate_hz": f"{s.loop_rate_hz:.1f}",
            "connect_failures": s.connect_failures,
            "waypoints_received": self._waypoints,
            "waypoints_rejected": self._rejected,
            "last_error": s.last_error,
        }
        status = diagnostic_status(f"{self.get_name()}: UR servo", level, message, values, self.controller.config.robot_ip)
        publish_diagnostics(self, self._diag_pub, [status])


def main(args: list[str] | None = None) -> None:
    run_node(URDriverNode, args, lambda node: node.controller.stop())

