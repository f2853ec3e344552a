"""Scripted teleoperation of the simulated Push-T cell: re-enacts human demonstrations, recording each.

For each of ``num_demos`` demonstrations starting at ``first_demo`` of ``demo_dataset`` (the Push-T
demonstrations; episode ``i`` starts from the cell's seed ``i``, so launch the cell with
``seed = first_demo`` and ``auto_reset`` false), this node: resyncs the teleop node to the measured
pose, starts the recorder, publishes the demonstration's targets at ``rate_hz`` on ``target_topic``
(the teleop node's ``topic`` input, so they pass the same limits and command path as a SpaceMouse),
stops the recorder, pauses teleop and resets the cell to the next seed. Then it exits, which ends the launch.
This is the hands-free stand-in for a person with a SpaceMouse, used by tests and demos.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from geometry_msgs.msg import PoseStamped
from rclpy.client import Client
from rclpy.node import Node
from rclpy.qos import qos_profile_sensor_data
from std_srvs.srv import Trigger

from dp_bringup.node_runner import check_parameters, run_node
from dp_bringup.ros_conversions import pose_stamped
from dp_core.sim.pusht_demos import demo_actions

DEFAULTS: dict[str, Any] = {
    "demo_dataset": "",
    "first_demo": 0,
    "num_demos": 3,
    "rate_hz": 10.0,  # the demonstrations' control rate
    "target_topic": "/teleop/target",
    "state_topic": "/robot/tcp_pose",
    "frame_id": "world",
    "recorder": "/demo_recorder",
    "teleop": "/teleop",
    "cell_reset": "/pusht_sim/reset",
    "service_timeout_s": 20.0,  # how long to wait for a service (and for the recorder to accept ~/start)
}


class ScriptedTeleopNode(Node):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__("scripted_teleop", **kwargs)
        self.declare_parameters("", list(DEFAULTS.items()))
        check_parameters(self)
        self.p = {name: self.get_parameter(name).value for name in DEFAULTS}
        if not self.p["demo_dataset"]:
            raise ValueError("parameter 'demo_dataset' (the Push-T demonstrations .zarr) is required")
        demos = range(self.p["first_demo"], self.p["first_demo"] + self.p["num_demos"])
        self.demos = [(i, demo_actions(self.p["demo_dataset"], i)) for i in demos]  # fail now on a bad dataset
        self.target_pub = self.create_publisher(PoseStamped, self.p["target_topic"], 10)
        self._state_seen = threading.Event()
        self.create_subscription(PoseStamped, self.p["state_topic"], lambda _: self._state_seen.set(),
                                 qos_profile_sensor_data)
        self.clients_ = {
            "start": self.create_client(Trigger, f"{self.p['recorder']}/start"),
            "stop": self.create_client(Trigger, f"{self.p['recorder']}/stop"),
            "resync": self.create_client(Trigger, f"{self.p['teleop']}/resync"),
            "pause": self.create_client(Trigger, f"{self.p['teleop']}/pause"),
            "reset": self.create_client(Trigger, self.p["cell_reset"]),
        }
        self.finished = threading.Event()
        self._stopping = threading.Event()  # set at shutdown: the thread ends without touching the node again
        self.failed: str | None = None
        self.create_timer(0.1, self._check_finished)
        self._thread = threading.Thread(target=self._run, name="scripted-teleop", daemon=True)
        self._thread.start()

    def _check_finished(self) -> None:
        if self.finished.is_set():
            raise SystemExit(1 if self.failed else 0)  # the launch (and its caller) sees a failed recording

    def stop(self) -> None:
        """End the demonstration thread (at shutdown, before the node is destroyed)."""
        self._stopping.set()
        self._thread.join(timeout=2.0)

    def _wait(self, seconds: float) -> None:
        """Sleep ``seconds``; raises ``_Stopped`` as soon as the node shuts down."""
        if self._stopping.wait(timeout=max(0.0, seconds)):
            raise _Stopped

    def _until(self, ready: Callable[[], bool], timeout_s: float) -> bool:
        """Whether ``ready()`` turned true within ``timeout_s`` (polled); raises ``_Stopped`` at shutdown."""
        deadline = time.monotonic() + timeout_s
        while not ready():
            if time.monotonic() > deadline:
                return False
            self._wait(0.05)
        return True

    def _call(self, name: str, retry_until_success: bool = False) -> str:
        client: Client = self.clients_[name]
        timeout = self.p["service_timeout_s"]
        deadline = time.monotonic() + timeout
        if not self._until(client.service_is_ready, timeout):
            raise RuntimeError(f"service {client.srv_name} not available")
        while True:
            future = client.call_async(Trigger.Request())
            if not self._until(future.done, timeout):
                raise RuntimeError(f"service {client.srv_name} did not answer")
            result = future.result()
            if result.success or not retry_until_success:
                if not result.success:
                    raise RuntimeError(f"{client.srv_name} failed: {result.message}")
                return result.message
            if time.monotonic() > deadline:
                raise RuntimeError(f"{client.srv_name} kept failing: {result.message}")
            self._wait(0.2)

    def _run(self) -> None:
        try:
            if not self._until(self._state_seen.is_set, self.p["service_timeout_s"]):
                raise RuntimeError(f"no measured pose on {self.p['state_topic']}")
            period = 1.0 / self.p["rate_hz"]
            for n, (index, actions) in enumerate(self.demos):
                if n:  # pause teleop first: it would command the old position after the reset
                    self._call("pause")
                    self._call("reset")
                self._call("resync")
                self._wait(0.3)  # teleop picks up the new measured pose
                self._call("start", retry_until_success=True)
                self.get_logger().info(f"demonstration {index}: {len(actions)} targets at {self.p['rate_hz']:.0f} Hz")
                next_t = time.monotonic()
                for action in [*actions, actions[-1], actions[-1]]:  # hold the last target while it is recorded
                    stamp = self.get_clock().now().nanoseconds * 1e-9
                    self.target_pub.publish(pose_stamped(stamp, self.p["frame_id"], [action[0], action[1], 0.0],
                                                         [0.0, 0.0, 0.0, 1.0]))
                    next_t += period
                    self._wait(next_t - time.monotonic())
                self.get_logger().info(self._call("stop"))
        except _Stopped:  # shutdown: the recorder's own cleanup deals with an open episode
            pass
        except Exception as exc:  # report and end the launch; nothing half-recorded is committed
            self.failed = str(exc)
            self.get_logger().error(f"scripted teleop failed: {exc}")
        finally:
            self.finished.set()


class _Stopped(Exception):
    """The node is shutting down."""


def main(args: list[str] | None = None) -> None:
    run_node(ScriptedTeleopNode, args, cleanup=ScriptedTeleopNode.stop)
