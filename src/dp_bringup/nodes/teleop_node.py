"""Teleoperation: a SpaceMouse twist or a published target, integrated into safe servo targets.

At ``rate_hz`` the node publishes a ``PoseStamped`` on ``command_topic`` (``/robot/servo_target``, the
executor's command path) stamped ``lead_time_s`` ahead: the driver or the simulated cell moves there.
The target comes from :class:`dp_core.teleop.TeleopTarget` and passes the executor's
:class:`dp_core.control.CommandLimiter` (workspace box, ``max_speed``); axes the action does not
drive, and the orientation, are held at ``fixed_pose``, as by the executor.

Inputs (``input``): ``spacemouse`` integrates ``geometry_msgs/Twist`` from ``twist_topic``;
``topic`` moves toward ``geometry_msgs/PoseStamped`` targets on ``target_topic`` (scripts, a GUI, a
keyboard publisher). Stale input holds the pose. The node starts from the first measured pose on
``state_topic`` and sends nothing before; ``~/resync`` (std_srvs/Trigger) restarts from the next
measured pose, e.g. after the simulated cell was reset. ``~/pause`` stops the commands until the next
``~/resync``: call it before the cell resets, so that nothing commands the old position after the reset.
The node resyncs by itself when the measured pose stops (``state_timeout_s``: the driver lost the robot)
or, with ``max_tracking_error`` > 0, when the arm lags the command by more (a protective stop): the
input integrated meanwhile is dropped, never replayed as a jump once the arm moves again.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
from geometry_msgs.msg import PoseStamped, Twist
from rclpy.node import Node
from rclpy.qos import qos_profile_sensor_data
from std_srvs.srv import Trigger

from dp_bringup.node_runner import check_parameters, diagnostic_status, publish_diagnostics, run_node
from dp_bringup.ros_conversions import POSITION_AXES, action_to_pose, pose_stamped, stamp_to_seconds
from dp_core.control import CommandLimiter
from dp_core.teleop import TeleopTarget

INPUTS = ("spacemouse", "topic")
DEFAULTS: dict[str, Any] = {  # the simulated Push-T cell (pixels); config/teleop.yaml repeats them
    "input": "spacemouse",
    "rate_hz": 100.0,
    "lead_time_s": 0.02,  # stamp = when the pose must be reached
    "input_timeout_s": 0.2,
    "state_timeout_s": 0.25,  # no measured pose for this long (driver disconnected): stop, resync when it returns
    "max_tracking_error": 0.0,  # units; > 0: the command this far from the measured pose (arm stopped) -> resync
    "workspace_min": [0.0, 0.0],  # one value per driven axis (x, y[, z])
    "workspace_max": [512.0, 512.0],
    "max_speed": 800.0,  # units/s; the step limit per tick is max_speed / rate_hz
    "fixed_pose": [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0],
    "frame_id": "world",
    "twist_topic": "/spacemouse/twist",
    "target_topic": "/teleop/target",
    "state_topic": "/robot/tcp_pose",
    "command_topic": "/robot/servo_target",
}


class TeleopNode(Node):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__("teleop", **kwargs)
        self.declare_parameters("", list(DEFAULTS.items()))
        check_parameters(self)
        p = {name: self.get_parameter(name).value for name in DEFAULTS}
        if p["input"] not in INPUTS:
            raise ValueError(f"input must be one of {INPUTS}; got {p['input']!r}")
        if p["rate_hz"] <= 0 or p["max_speed"] <= 0:
            raise ValueError(f"rate_hz and max_speed must be > 0; got {p['rate_hz']}, {p['max_speed']}")
        dim = len(p["workspace_min"])
        if not 1 <= dim <= len(POSITION_AXES):
            raise ValueError(f"workspace_min has {dim} values; teleop drives 1 to 3 of {POSITION_AXES}")
        limiter = CommandLimiter(p["workspace_min"], p["workspace_max"], max_step=p["max_speed"] / p["rate_hz"])
        self.target = TeleopTarget(limiter, input_timeout_s=p["input_timeout_s"], max_dt=2.0 / p["rate_hz"])
        self._names = list(POSITION_AXES[:dim])
        self._fixed_pose = list(p["fixed_pose"])
        action_to_pose(np.zeros(dim), self._names, self._fixed_pose)  # fail now on a bad fixed_pose
        self._frame_id = p["frame_id"]
        self._lead = p["lead_time_s"]
        self._resync_after: float | None = 0.0  # sync on the first measured pose stamped after this (inf: paused)
        self._state_timeout, self._max_error = p["state_timeout_s"], p["max_tracking_error"]
        if self._state_timeout <= 0 or self._max_error < 0:
            raise ValueError(f"state_timeout_s must be > 0 and max_tracking_error >= 0; got "
                             f"{self._state_timeout}, {self._max_error}")
        self._measured: tuple[float, np.ndarray] | None = None  # (arrival time, position) of the last pose
        self._counts = {"sent": 0, "clamped": 0, "speed_limited": 0, "bad_input": 0, "state_lost": 0,
                        "tracking_lost": 0}

        self.command_pub = self.create_publisher(PoseStamped, p["command_topic"], 10)
        self.diag_pub = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self.create_subscription(PoseStamped, p["state_topic"], self._on_state, qos_profile_sensor_data)
        if p["input"] == "spacemouse":
            self.create_subscription(Twist, p["twist_topic"], self._on_twist, 10)
            source = f"twist on {p['twist_topic']}"
        else:
            self.create_subscription(PoseStamped, p["target_topic"], self._on_target, 10)
            source = f"targets on {p['target_topic']}"
        self.create_service(Trigger, "~/resync", self._on_resync)
        self.create_service(Trigger, "~/pause", self._on_pause)
        self.create_timer(1.0 / p["rate_hz"], self._on_tick)
        self.create_timer(1.0, self._publish_diagnostics)
        self.get_logger().info(f"teleop of {self._names} from {source} -> {p['command_topic']} at "
                               f"{p['rate_hz']:.0f} Hz, max speed {p['max_speed']}/s; waiting for {p['state_topic']}")

    def _now(self) -> float:
        return self.get_clock().now().nanoseconds * 1e-9

    def _on_state(self, msg: PoseStamped) -> None:
        p = msg.pose.position
        self._measured = (self._now(), np.array([p.x, p.y, p.z][: self.target.dim]))
        if self._resync_after is None or stamp_to_seconds(msg.header.stamp) <= self._resync_after:
            return
        self.target.sync(self._measured[1])
        self._resync_after = None
        self.get_logger().info(f"teleop starts from the measured pose {self.target.command.round(4).tolist()}")

    def _on_twist(self, msg: Twist) -> None:
        v = msg.linear
        self._set(lambda now: self.target.set_twist([v.x, v.y, v.z], now))

    def _on_target(self, msg: PoseStamped) -> None:
        p = msg.pose.position
        self._set(lambda now: self.target.set_target([p.x, p.y, p.z][: self.target.dim], now))

    def _set(self, apply) -> None:
        if self._resync_after is not None:
            return  # not synced to the measured pose yet: ignore input
        try:
            apply(self._now())
        except ValueError as exc:
            self._counts["bad_input"] += 1
            self.get_logger().error(f"ignored teleop input: {exc}", throttle_duration_sec=1.0)

    def _on_resync(self, _request: Trigger.Request, response: Trigger.Response) -> Trigger.Response:
        self._resync_after = self._now()
        response.success, response.message = True, "restarting from the next measured pose"
        return response

    def _on_pause(self, _request: Trigger.Request, response: Trigger.Response) -> Trigger.Response:
        self._resync_after = math.inf
        response.success, response.message = True, "paused until ~/resync"
        return response

    def _on_tick(self) -> None:
        if self._resync_after is not None:
            return
        now = self._now()
        if self._lost_the_arm(now):
            return
        out = self.target.tick(now)
        if out is None:
            return
        position, orientation = action_to_pose(out.command, self._names, self._fixed_pose)
        self.command_pub.publish(pose_stamped(now + self._lead, self._frame_id, position, orientation))
        self._counts["sent"] += 1
        self._counts["clamped"] += out.clamped
        self._counts["speed_limited"] += out.step_limited

    def _lost_the_arm(self, now: float) -> bool:
        """Stop and wait for a fresh measured pose when the last one is stale, or the arm has fallen behind the
        command by more than ``max_tracking_error``."""
        arrival, measured = self._measured
        error = float(np.linalg.norm(self.target.command - measured))
        if now - arrival > self._state_timeout:
            reason, count = f"no measured pose for {now - arrival:.2f} s", "state_lost"
        elif self._max_error > 0 and error > self._max_error:
            reason, count = f"the arm is {error:.3f} from the command (max_tracking_error {self._max_error})", "tracking_lost"
        else:
            return False
        self._counts[count] += 1
        self._resync_after = now
        self.get_logger().warning(f"{reason}: teleop stopped; it restarts from the next measured pose")
        return True

    def _publish_diagnostics(self) -> None:
        synced = self._resync_after is None
        level = DiagnosticStatus.OK if synced else DiagnosticStatus.WARN
        message = ("teleoperating" if synced else "paused until ~/resync" if self._resync_after == math.inf
                   else "waiting for the measured pose")
        status = diagnostic_status(f"{self.get_name()}: teleop", level, message, dict(self._counts))
        publish_diagnostics(self, self.diag_pub, [status])


def main(args: list[str] | None = None) -> None:
    run_node(TeleopNode, args)
