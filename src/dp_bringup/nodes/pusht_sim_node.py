"""Simulated Push-T cell: the same topics as the real cell (camera, TCP pose, servo target).

Physics runs in real time in its own thread (dp_core.sim.pusht_cell); this node publishes
the camera image and the agent pose at their rates with the current ROS time, plus the
block pose, keypoints and coverage for evaluation, and follows `/robot/servo_target`.
With `num_episodes > 0` it prints a JSON score report after that many episodes and exits.
The `~/reset` service (std_srvs/Trigger) ends the episode and starts the next; with `auto_reset`
false (data collection) only it does, so success or a timeout never reset the cell mid-demonstration.
Servo targets published before a reset and delivered after it (DDS source timestamp) are ignored, and
after an automatic reset (success or timeout) every target for `reset_hold_s`: the commands a policy still
sends then were planned for the previous episode's scene.
"""

from __future__ import annotations

import json
import math
import threading
import time
from typing import Any

import numpy as np
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
from geometry_msgs.msg import Pose, PoseArray, PoseStamped
from rclpy.node import Node
from rclpy.qos import qos_profile_sensor_data
from rclpy.subscription import MessageInfo
from sensor_msgs.msg import CameraInfo, Image
from std_msgs.msg import Float64
from std_srvs.srv import Trigger

from dp_bringup.node_runner import check_parameters, diagnostic_status, publish_diagnostics, run_node
from dp_bringup.ros_image import numpy_to_image
from dp_core.sim.pusht import PushTConfig, pusht_score
from dp_core.sim.pusht_cell import CellEpisode, PushTCell


class PushTSimNode(Node):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__("pusht_sim", **kwargs)
        p = {
            "seed": self.declare_parameter("seed", 100_000).value,
            "episode_s": self.declare_parameter("episode_s", 30.0).value,
            "num_episodes": self.declare_parameter("num_episodes", 0).value,
            "start_on_command": self.declare_parameter("start_on_command", True).value,
            "render_size": self.declare_parameter("render_size", 96).value,
            "camera_rate_hz": self.declare_parameter("camera_rate_hz", 30.0).value,
            "state_rate_hz": self.declare_parameter("state_rate_hz", 125.0).value,
            "camera_names": list(self.declare_parameter("camera_names", ["camera_0"]).value),
            "frame_id": self.declare_parameter("frame_id", "pusht_world").value,
            "command_topic": self.declare_parameter("command_topic", "/robot/servo_target").value,
            "report_path": self.declare_parameter("report_path", "").value,
            "auto_reset": self.declare_parameter("auto_reset", True).value,
            "reset_hold_s": self.declare_parameter("reset_hold_s", 1.5).value,
        }
        check_parameters(self)
        self.p = p
        self.finished = threading.Event()
        self.cell = PushTCell(PushTConfig(render_size=p["render_size"]), p["seed"], p["episode_s"], self._on_episode_end,
                              start_on_command=p["start_on_command"], auto_reset=p["auto_reset"],
                              reset_hold_s=p["reset_hold_s"])
        # One image and camera-info topic per camera. The cameras run free at the same rate, evenly
        # staggered (camera k a k/n frame period after camera 0), like unsynchronised real cameras.
        if not p["camera_names"] or len(set(p["camera_names"])) != len(p["camera_names"]):
            raise ValueError(f"camera_names must be non-empty and unique; got {p['camera_names']}")
        self.cameras = [(name, self.create_publisher(Image, f"/{name}/color/image_raw", qos_profile_sensor_data),
                         self.create_publisher(CameraInfo, f"/{name}/color/camera_info", qos_profile_sensor_data))
                        for name in p["camera_names"]]
        self._camera_turn = 0
        self.tcp_pub = self.create_publisher(PoseStamped, "/robot/tcp_pose", qos_profile_sensor_data)
        self.kp_pub = self.create_publisher(PoseArray, "/pusht/keypoints", qos_profile_sensor_data)
        self.block_pub = self.create_publisher(PoseStamped, "/pusht/block_pose", 10)
        self.cov_pub = self.create_publisher(Float64, "/pusht/coverage", 10)
        self.diag_pub = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self.create_subscription(PoseStamped, p["command_topic"], self._on_target, 10)
        self.create_service(Trigger, "~/reset", self._on_reset)
        if p["render_size"] > 0:  # 0: a state-only cell, no camera images
            self.create_timer(1.0 / (p["camera_rate_hz"] * len(self.cameras)), self._publish_camera)
        self._rejected_targets = 0
        self._stale_targets = 0  # published before the last ~/reset, delivered after it
        self._held_targets = 0  # arrived within reset_hold_s of an automatic reset
        self._reset_ns = 0  # system time of the last ~/reset (DDS source timestamps use the same clock)
        self.create_timer(1.0 / p["state_rate_hz"], self._publish_state)
        self.create_timer(0.1, self._publish_coverage)
        self.create_timer(2.0, self._log_progress)
        self.create_timer(1.0, self._publish_diagnostics)
        self.cell.start()
        self.get_logger().info(
            f"Push-T cell running: seed {p['seed']}, {p['episode_s']:.0f} s episodes, "
            f"cameras {', '.join(p['camera_names'])} at {p['camera_rate_hz']:.0f} Hz"
        )

    def _on_target(self, msg: PoseStamped, info: MessageInfo) -> None:
        if info["source_timestamp"] < self._reset_ns:  # meant for the episode before the reset: never move the new one
            self._stale_targets += 1
            return
        try:
            if not self.cell.set_target(np.array([msg.pose.position.x, msg.pose.position.y])):
                self._held_targets += 1
        except ValueError as exc:  # a non-finite target: keep the last one
            self._rejected_targets += 1
            self.get_logger().error(f"rejected servo target: {exc}", throttle_duration_sec=1.0)

    def _on_reset(self, _request: Trigger.Request, response: Trigger.Response) -> Trigger.Response:
        self._reset_ns = time.time_ns()
        done = self.cell.reset()
        response.success = True
        response.message = f"episode {done.index} ended (max coverage {done.max_coverage:.3f}); seed {done.seed + 1} next"
        return response

    def _publish_camera(self) -> None:
        name, image_pub, info_pub = self.cameras[self._camera_turn]
        self._camera_turn = (self._camera_turn + 1) % len(self.cameras)
        obs, _, _ = self.cell.snapshot()
        stamp = self.get_clock().now().to_msg()
        img = numpy_to_image(obs["image"], "rgb8", stamp, name)
        image_pub.publish(img)
        size = obs["image"].shape[0]
        info_pub.publish(CameraInfo(header=img.header, height=size, width=size))

    def _publish_state(self) -> None:
        obs, _, _ = self.cell.snapshot()
        now = self.get_clock().now().to_msg()
        tcp = PoseStamped()
        tcp.header.stamp, tcp.header.frame_id = now, self.p["frame_id"]
        tcp.pose.position.x, tcp.pose.position.y = float(obs["agent_pos"][0]), float(obs["agent_pos"][1])
        tcp.pose.orientation.w = 1.0
        self.tcp_pub.publish(tcp)
        kps = PoseArray()
        kps.header = tcp.header
        for x, y in obs["keypoint"]:
            pose = Pose()
            pose.position.x, pose.position.y, pose.orientation.w = float(x), float(y), 1.0
            kps.poses.append(pose)
        self.kp_pub.publish(kps)
        block = PoseStamped()
        block.header = tcp.header
        bx, by, angle = (float(v) for v in obs["block_pose"])
        block.pose.position.x, block.pose.position.y = bx, by
        block.pose.orientation.z, block.pose.orientation.w = math.sin(angle / 2), math.cos(angle / 2)
        self.block_pub.publish(block)

    def _publish_coverage(self) -> None:
        _, coverage, _ = self.cell.snapshot()
        self.cov_pub.publish(Float64(data=float(coverage)))
        if self.finished.is_set():
            raise SystemExit(0)

    def _log_progress(self) -> None:
        _, coverage, episode = self.cell.snapshot()
        self.get_logger().info(f"episode {episode}: coverage {coverage:.3f}")

    def _on_episode_end(self, ep: CellEpisode) -> None:
        """Runs in the physics thread: log, and stop after num_episodes."""
        self.get_logger().info(
            f"episode {ep.index} (seed {ep.seed}) done after {ep.duration_s:.1f} s: max coverage "
            f"{ep.max_coverage:.3f}{' SUCCESS' if ep.success else ''}; score so far {self.cell.score():.3f} "
            f"over {len(self.cell.results)} episodes"
        )
        n = self.p["num_episodes"]
        if n > 0 and len(self.cell.results) >= n:
            self.finished.set()

    def finish(self) -> None:
        """Stop the physics; after a scored run print the score line and write the report."""
        self.cell.stop()
        if self.p["num_episodes"] > 0:
            report = self.report()
            print(f"PUSHT_SCORE {report['score']:.4f} over {report['episodes']} episodes", flush=True)
            if self.p["report_path"]:
                with open(self.p["report_path"], "w") as f:
                    f.write(json.dumps(report, indent=2))

    def report(self) -> dict:
        n = self.p["num_episodes"]
        results = self.cell.results[:n] if n > 0 else self.cell.results
        return {
            "episodes": len(results),
            "score": pusht_score([r.max_coverage for r in results]) if results else 0.0,
            "mean_max_coverage": float(np.mean([r.max_coverage for r in results])) if results else 0.0,
            "success_rate": float(np.mean([r.success for r in results])) if results else 0.0,
            "per_episode": [vars(r) for r in results],
        }

    def _publish_diagnostics(self) -> None:
        _, coverage, episode = self.cell.snapshot()
        values = {"episode": episode, "coverage": f"{coverage:.4f}", "score_so_far": f"{self.cell.score():.4f}",
                  "rejected_targets": self._rejected_targets, "stale_targets": self._stale_targets,
                  "held_targets": self._held_targets}
        publish_diagnostics(self, self.diag_pub, [diagnostic_status("pusht_sim", DiagnosticStatus.OK, "running", values)])


def main(args: list[str] | None = None) -> None:
    run_node(PushTSimNode, args, PushTSimNode.finish)


if __name__ == "__main__":
    main()
