"""Action-chunk executor: plays ``/policy/action_chunk`` out as timed servo waypoints.

Each chunk goes into a :class:`dp_core.control.ActionSchedule` (late actions dropped, newest chunk
wins, workspace clamp, step limit, watchdog). A ``rate_hz`` timer publishes every action that has
come due as a ``PoseStamped`` stamped with its due time on ``command_topic`` and ``/executor/executed``,
``lead_time_s`` ahead of that time: a waypoint's stamp is when the pose must be reached, so the driver
(or the simulated cell, which starts moving toward it on receipt, as in the training data) gets it
one control period early and can move there smoothly instead of rushing after it.
While the watchdog holds, nothing is published, so the driver holds its last waypoint.
With ``latency_compensation`` false, chunks are scheduled from their arrival instead of their stamp
(ablation). Diagnostics give, per chunk, the time from its observation stamp to its first action
sent (``obs_to_sent``) and to that action's due time (``obs_to_due``), p50 and p99 over the last
100 chunks. Callbacks are short and run on the default single-threaded executor.
"""

from __future__ import annotations

import math
from collections import deque
from typing import Any

import numpy as np
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
from geometry_msgs.msg import PoseStamped
from rclpy.node import Node
from trajectory_msgs.msg import JointTrajectory

from dp_bringup.node_runner import check_parameters, diagnostic_status, publish_diagnostics, run_node
from dp_bringup.ros_conversions import POSITION_AXES, action_to_pose, chunk_from_msg, pose_stamped
from dp_core.control import ActionSchedule

EXECUTED_TOPIC = "/executor/executed"
DEFAULTS: dict[str, Any] = {  # the Push-T sim cell (pixels); config/pusht_sim.yaml repeats them
    "dt": 0.1,
    "latency_margin": 0.01,
    "lead_time_s": 0.1,  # send each action this long before it is due (one dt)
    "watchdog_s": 1.2,  # > the policy's replanning period (Ta * dt = 0.8 s) plus its inference time
    "latency_compensation": True,  # False: schedule from arrival (stamp := now), the no-compensation ablation
    "rate_hz": 200.0,
    "workspace_min": [0.0, 0.0],
    "workspace_max": [512.0, 512.0],
    "max_step": 80.0,  # <= 0: no limit
    "fixed_pose": [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0],
    "frame_id": "world",
    "chunk_topic": "/policy/action_chunk",
    "command_topic": "/robot/servo_target",
}


class ActionExecutorNode(Node):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__("action_executor", **kwargs)
        self.declare_parameters("", list(DEFAULTS.items()))
        check_parameters(self)
        p = {name: self.get_parameter(name).value for name in DEFAULTS}
        dim = len(p["workspace_min"])
        if not 1 <= dim <= len(POSITION_AXES):
            raise ValueError(f"workspace_min has {dim} dimensions; actions give 1 to 3 of {POSITION_AXES}")
        if not 0 < p["rate_hz"] < math.inf:
            raise ValueError(f"rate_hz must be > 0; got {p['rate_hz']}")
        if not math.isfinite(p["max_step"]):
            raise ValueError(f"max_step must be finite (<= 0: no limit); got {p['max_step']}")
        if not 0 <= p["lead_time_s"] < p["watchdog_s"]:
            raise ValueError(f"lead_time_s must be >= 0 and < watchdog_s ({p['watchdog_s']}); got {p['lead_time_s']}")
        self._schedule = ActionSchedule(
            p["dt"],
            workspace_min=p["workspace_min"],
            workspace_max=p["workspace_max"],
            max_step=p["max_step"] if p["max_step"] > 0 else None,
            latency_margin=p["latency_margin"],
            watchdog_s=p["watchdog_s"],
        )
        self._names = list(POSITION_AXES[:dim])
        self._fixed_pose = list(p["fixed_pose"])
        action_to_pose(np.zeros(dim), self._names, self._fixed_pose)  # fail now on a bad fixed_pose
        self._frame_id = p["frame_id"]
        self._chunk_topic = p["chunk_topic"]
        self._latency_compensation = p["latency_compensation"]
        self._lead = p["lead_time_s"]
        self._rejected = 0
        self._last_obs_stamp: float | None = None
        self._obs_to_sent: deque[float] = deque(maxlen=100)
        self._obs_to_due: deque[float] = deque(maxlen=100)

        self._command_pub = self.create_publisher(PoseStamped, p["command_topic"], 10)
        self._executed_pub = self.create_publisher(PoseStamped, EXECUTED_TOPIC, 10)
        self._diag_pub = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self.create_subscription(JointTrajectory, self._chunk_topic, self._on_chunk, 10)
        self.create_timer(1.0 / p["rate_hz"], self._on_tick)
        self.create_timer(1.0, self._publish_diagnostics)
        self.get_logger().info(
            f"executing {self._names} chunks from {self._chunk_topic} on {p['command_topic']} "
            f"(dt {p['dt']} s, watchdog {p['watchdog_s']} s, max_step {p['max_step']})"
        )

    def _now(self) -> float:
        return self.get_clock().now().nanoseconds * 1e-9

    def _on_chunk(self, msg: JointTrajectory) -> None:
        now = self._now()
        try:
            stamp, actions, names = chunk_from_msg(msg, self._schedule.dt)
            if names != self._names:
                raise ValueError(f"chunk dimensions {names} != {self._names} configured by the workspace")
            stats = self._schedule.add_chunk(stamp if self._latency_compensation else now, actions, now, obs_stamp=stamp)
        except ValueError as exc:
            self._rejected += 1
            self.get_logger().error(f"rejected action chunk: {exc}", throttle_duration_sec=1.0)
            return
        if stats.first_due is None:
            why = (f"arrived late ({now - stamp:.3f} s after its stamp)" if stats.late == stats.received else
                   f"are late ({stats.late}) or not after an action already sent ({stats.dropped - stats.late})")
            self.get_logger().warning(f"all {stats.received} actions of a chunk {why}", throttle_duration_sec=1.0)

    def _on_tick(self) -> None:
        now = self._now()
        for item in self._schedule.pop_due(now, self._lead):
            if item.stamp != self._last_obs_stamp:  # the first action sent from a new chunk
                self._last_obs_stamp = item.stamp
                self._obs_to_sent.append(now - item.stamp)
                self._obs_to_due.append(item.due - item.stamp)
            position, orientation = action_to_pose(item.action, self._names, self._fixed_pose)
            msg = pose_stamped(item.due, self._frame_id, position, orientation)
            self._command_pub.publish(msg)
            self._executed_pub.publish(msg)
        if self._schedule.hold(now) and self._schedule.stats.chunks:
            self.get_logger().warning(
                f"watchdog: no usable action chunk for > {self._schedule.watchdog_s} s; holding the last waypoint",
                throttle_duration_sec=2.0,
            )

    def _publish_diagnostics(self) -> None:
        now = self._now()
        s = self._schedule.stats
        holding = self._schedule.hold(now)
        if not holding:
            level, message = DiagnosticStatus.OK, "executing"
        elif s.chunks:
            level, message = DiagnosticStatus.WARN, "watchdog: holding, no recent action chunk"
        else:
            level, message = DiagnosticStatus.OK, f"waiting for the first action chunk on {self._chunk_topic}"
        last = self._schedule.last_chunk_time
        values = {
            "chunks_received": s.chunks,
            "chunks_rejected": self._rejected,
            "actions_received": s.received,
            "actions_dropped": s.dropped,
            "actions_late": s.late,
            "fraction_dropped": f"{s.fraction_dropped:.3f}",
            "actions_replaced": s.replaced,
            "actions_expired": s.expired,
            "clock_steps_back": s.clock_steps_back,
            "actions_clamped": s.clamped,
            "actions_step_limited": s.limited,
            "actions_sent": s.sent,
            "actions_pending": self._schedule.pending,
            "watchdog": "holding" if holding else "ok",
            "last_chunk_age_s": "never" if last is None else f"{now - last:.3f}",
        }
        for name, samples in (("obs_to_sent", self._obs_to_sent), ("obs_to_due", self._obs_to_due)):
            if samples:  # observation stamp -> first action of its chunk sent / due, last 100 chunks
                p50, p99 = np.percentile(samples, [50, 99])
                values.update({f"{name}_p50_s": f"{p50:.4f}", f"{name}_p99_s": f"{p99:.4f}"})
        status = diagnostic_status(f"{self.get_name()}: action schedule", level, message, values)
        publish_diagnostics(self, self._diag_pub, [status])


def main(args: list[str] | None = None) -> None:
    run_node(ActionExecutorNode, args)

