"""Policy node: time-aligned observations in, timestamped action chunks out (docs/interfaces.md).

The executor thread only fills the observation buffer (cheap callbacks); inference runs at
`rate_hz` in a dedicated thread, so it never blocks the subscriptions. (A multi-threaded rclpy
executor was measured to slow CPU inference 40-fold through GIL contention.)
"""

from __future__ import annotations

import threading
import time
from collections import deque

import numpy as np
import rclpy
import torch
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
from geometry_msgs.msg import PoseArray, PoseStamped
from rclpy.node import Node
from rclpy.qos import qos_profile_sensor_data
from sensor_msgs.msg import Image, JointState
from std_msgs.msg import Float64
from trajectory_msgs.msg import JointTrajectory

from dp_bringup.node_runner import diagnostic_status, publish_diagnostics, run_node
from dp_bringup.ros_conversions import chunk_to_msg, low_dim_from_msg, stamp_to_seconds
from dp_bringup.ros_image import image_to_numpy
from dp_core.checkpoint import load_policy
from dp_core.control.policy_loop import PolicyLoop
from dp_core.fast_inference import InferenceOptions
from dp_core.inference import PolicyRunner

MSG_TYPES = {"Image": Image, "PoseStamped": PoseStamped, "PoseArray": PoseArray, "JointState": JointState}


class PolicyNode(Node):
    def __init__(self) -> None:
        super().__init__("policy")
        checkpoint = self.declare_parameter("checkpoint", "").value
        device = self.declare_parameter("device", "auto").value
        self.rate_hz = self.declare_parameter("rate_hz", 10.0).value
        self.dt = self.declare_parameter("dt", 0.1).value
        max_age = self.declare_parameter("max_obs_age_s", 0.25).value
        keys = list(self.declare_parameter("obs_keys", ["keypoint", "agent_pos"]).value)
        topics = list(self.declare_parameter("obs_topics", ["/pusht/keypoints", "/robot/tcp_pose"]).value)
        types = list(self.declare_parameter("obs_types", ["PoseArray", "PoseStamped"]).value)
        self.action_names = list(self.declare_parameter("action_names", ["x", "y"]).value)
        warm_start = self.declare_parameter("warm_start", True).value
        self.extra_latency = self.declare_parameter("extra_latency_s", 0.0).value
        chunk_topic = self.declare_parameter("chunk_topic", "/policy/action_chunk").value
        cpu_threads = self.declare_parameter("cpu_threads", 1).value
        inference = InferenceOptions(
            fast=self.declare_parameter("fast_inference", True).value,
            precision=self.declare_parameter("inference_precision", "fp32").value,
            cuda_graph=self.declare_parameter("cuda_graph", True).value,
        )
        if not checkpoint:
            raise ValueError("parameter 'checkpoint' is required (a .safetensors policy file)")
        if not len(keys) == len(topics) == len(types):
            raise ValueError(f"obs_keys, obs_topics and obs_types must have equal lengths: {keys} {topics} {types}")

        if cpu_threads > 0:  # few threads: OpenMP workers spinning beside the other nodes cost more than they give
            torch.set_num_threads(cpu_threads)
        policy = load_policy(checkpoint, device)
        cfg = policy.cfg
        missing = set(cfg.shape_meta.obs) - set(keys)
        if missing:
            raise ValueError(f"policy needs observations {sorted(missing)} that obs_keys {keys} do not provide")
        if len(self.action_names) != cfg.shape_meta.action.dim:
            raise ValueError(f"action_names {self.action_names} vs policy action dim {cfg.shape_meta.action.dim}")
        self.loop = PolicyLoop(PolicyRunner(policy, dt=self.dt, warm_start=warm_start, inference=inference), self.dt, max_age)

        for key, topic, type_name in zip(keys, topics, types):
            if type_name not in MSG_TYPES:
                raise ValueError(f"obs_types entry '{type_name}' is not one of {sorted(MSG_TYPES)}")
            if key not in cfg.shape_meta.obs:
                self.get_logger().info(f"observation '{key}' on {topic} is not used by this policy")
                continue
            self.create_subscription(MSG_TYPES[type_name], topic, self._make_callback(key), qos_profile_sensor_data)
        self.chunk_pub = self.create_publisher(JointTrajectory, chunk_topic, 10)
        self.latency_pub = self.create_publisher(Float64, "/policy/inference_time", 10)
        self.diag_pub = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self.ages: deque[float] = deque(maxlen=100)
        self.stats = {"chunks": 0, "refused": 0, "warm": 0, "last_refusal": "", "last_latency_s": 0.0}
        self.create_timer(1.0, self._publish_diagnostics)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._inference_loop, name="inference", daemon=True)
        self._thread.start()
        self.get_logger().info(
            f"policy {checkpoint} on {policy.device} ({'fast' if policy.uses_fast_path else 'reference'} path, "
            f"{inference.precision}): {cfg.denoiser} {cfg.kind}, To={cfg.n_obs_steps} "
            f"Tp={cfg.horizon} Ta={cfg.n_action_steps}, observations {dict(zip(keys, topics))}"
        )

    def _make_callback(self, key: str):
        spec = self.loop.specs[key]

        def callback(msg) -> None:
            stamp = stamp_to_seconds(msg.header.stamp)
            value = image_to_numpy(msg, "rgb8") if spec.type == "rgb" else low_dim_from_msg(msg, spec.shape[0])
            self.loop.add(key, stamp, value)

        return callback

    def _now(self) -> float:
        return self.get_clock().now().nanoseconds * 1e-9

    def _inference_loop(self) -> None:
        period = 1.0 / self.rate_hz
        next_t = time.monotonic()
        while not self._stop.is_set() and rclpy.ok():
            try:
                self._tick()
            except Exception as exc:  # keep running; a bad sample must not kill the node
                if self._stop.is_set() or not rclpy.ok():
                    break  # shutting down: the context went away under a publish
                self.get_logger().error(f"inference failed: {exc!r}", throttle_duration_sec=2.0)
            next_t += period
            delay = next_t - time.monotonic()
            if delay > 0:
                self._stop.wait(delay)
            else:  # inference slower than the rate: start the next one now, do not queue up
                next_t = time.monotonic()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2.0)

    def _tick(self) -> None:
        chunk = self.loop.tick(self._now())
        if chunk is None:
            self.stats["refused"] += 1
            self.stats["last_refusal"] = self.loop.refusal.message if self.loop.refusal else ""
            self.get_logger().warn(f"holding: {self.stats['last_refusal']}", throttle_duration_sec=2.0)
            return
        if self.extra_latency > 0:  # artificial delay, for latency-robustness experiments
            time.sleep(self.extra_latency)
        self.chunk_pub.publish(chunk_to_msg(chunk.stamp, chunk.actions, self.action_names, self.dt))
        self.latency_pub.publish(Float64(data=chunk.latency_s))
        age = self._now() - chunk.stamp
        self.ages.append(age)
        self.stats["chunks"] += 1
        self.stats["warm"] += int(chunk.warm)
        self.stats["last_latency_s"] = chunk.latency_s
        self.get_logger().info(
            f"chunk {self.stats['chunks']}: observation age {age:.3f} s, "
            f"inference {chunk.latency_s * 1e3:.0f} ms ({'warm' if chunk.warm else 'cold'})",
            throttle_duration_sec=5.0,
        )

    def _publish_diagnostics(self) -> None:
        s = self.stats
        refusing = bool(s["last_refusal"]) and s["refused"] > 0
        values = dict(s)
        if self.ages:  # observation stamp -> chunk published, over the last 100 chunks
            p50, p99 = np.percentile(self.ages, [50, 99])
            values.update(obs_to_chunk_p50_s=f"{p50:.4f}", obs_to_chunk_p99_s=f"{p99:.4f}")
        level = DiagnosticStatus.WARN if refusing else DiagnosticStatus.OK
        publish_diagnostics(self, self.diag_pub, [diagnostic_status("policy", level, s["last_refusal"] or "running", values)])
        s["last_refusal"] = ""


def main(args: list[str] | None = None) -> None:
    run_node(PolicyNode, args, PolicyNode.stop)


if __name__ == "__main__":
    main()
