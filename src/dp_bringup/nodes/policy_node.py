"""Policy node: time-aligned observations in, timestamped action chunks out (docs/interfaces.md).

The executor thread only fills the observation buffer (cheap callbacks); inference runs in a
dedicated thread, so it never blocks the subscriptions, once every `replan_steps` control steps
(default: the policy's n_action_steps, Ta), and again one step later while it holds. (A multi-threaded
rclpy executor was measured to slow CPU inference 40-fold through GIL contention.)
"""

from __future__ import annotations

import dataclasses
import sys
import threading
import time
from collections import deque
from typing import Any

import numpy as np
import torch
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
from geometry_msgs.msg import PoseArray, PoseStamped
from rclpy.node import Node
from rclpy.qos import qos_profile_sensor_data
from sensor_msgs.msg import Image, JointState
from std_msgs.msg import Float64
from trajectory_msgs.msg import JointTrajectory

from dp_bringup.node_runner import check_parameters, diagnostic_status, publish_diagnostics, run_node
from dp_bringup.ros_conversions import chunk_to_msg
from dp_core.camera_sources import ATTRIBUTE as CAMERAS_ATTRIBUTE
from dp_core.camera_sources import DIAGNOSTICS_TOPIC, cameras_to_confirm, read_cameras, serials_by_key
from dp_core.checkpoint import CheckpointError, load_policy, policy_file_extra
from dp_core.control_period import check_policy_period
from dp_core.control.policy_loop import PolicyLoop
from dp_core.control.policy_params import PolicyNodeParams, check_renamed, used_observations
from dp_core.inference import PolicyRunner
from dp_core.msg_fields import observation_from_msg

MSG_TYPES = {"Image": Image, "PoseStamped": PoseStamped, "PoseArray": PoseArray, "JointState": JointState}


class PolicyNode(Node):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__("policy", **kwargs)
        defaults = PolicyNodeParams()
        check_renamed(self._parameter_overrides)  # an older parameter file: say what replaced it
        p = PolicyNodeParams(**{f.name: self.declare_parameter(f.name, getattr(defaults, f.name)).value
                                for f in dataclasses.fields(PolicyNodeParams)})
        check_parameters(self)
        p.validate()
        if not p.checkpoint:
            raise ValueError("parameter 'checkpoint' is required (a .safetensors policy file)")
        self.dt, self.extra_latency = p.dt, p.extra_latency_s
        self.action_names = list(p.action_names)
        checkpoint, device, cpu_threads, max_age = p.checkpoint, p.device, p.cpu_threads, p.max_obs_age_s
        keys, topics = list(p.obs_keys), list(p.obs_topics)

        if cpu_threads > 0:  # few threads: OpenMP workers spinning beside the other nodes cost more than they give
            torch.set_num_threads(cpu_threads)
        check_policy_period(checkpoint, self.dt)  # before the weights load: the file's metadata only
        policy = load_policy(checkpoint, device)
        cfg = policy.cfg
        used = used_observations(p, cfg.shape_meta)
        self.period = p.replan_period(cfg)
        if self.period >= 1.0:
            self.get_logger().warning(f"a chunk every {self.period:.2f} s: the executor's watchdog_s (default 1.2 s) "
                                      "must exceed that plus inference, or it stops the robot between chunks")
        runner = PolicyRunner(policy, dt=self.dt, warm_start=p.warm_start, inference=p.inference_options())
        self.get_logger().info(f"warm-up inference ({policy.device}, {policy.inference_options.backend} backend, "
                               f"{'fast' if policy.uses_fast_path else 'reference'} path): {runner.warmup():.2f} s")
        cameras = read_cameras(policy_file_extra(checkpoint).get(CAMERAS_ATTRIBUTE)) if p.check_cameras else {}
        self.loop = PolicyLoop(runner, self.dt, max_age, cameras)
        self._image_cameras = cameras_to_confirm(used, cameras)
        if self._image_cameras:  # the camera node names each camera's serial in its diagnostics
            self.create_subscription(DiagnosticArray, DIAGNOSTICS_TOPIC, self._on_diagnostics, 10)
        for key, cam in cameras.items():
            self.get_logger().info(f"observation '{key}': recorded from a {cam.height}x{cam.width} camera"
                                   f"{f' (serial {cam.serial})' if cam.serial else ''}; other cameras are refused")
        for key, topic in zip(keys, topics):
            if key not in used:
                self.get_logger().info(f"observation '{key}' on {topic} is not used by this policy")
        for key, (topic, type_name) in used.items():
            callback = self._make_callback(key, type_name)
            self.create_subscription(MSG_TYPES[type_name], topic, callback, qos_profile_sensor_data)
        self.chunk_pub = self.create_publisher(JointTrajectory, p.chunk_topic, 10)
        self.latency_pub = self.create_publisher(Float64, "/policy/inference_time", 10)
        self.diag_pub = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self.ages: deque[float] = deque(maxlen=100)
        self.stats = {"chunks": 0, "refused": 0, "warm": 0, "rejected_samples": 0, "last_refusal": "",
                      "last_rejected_sample": "", "last_latency_s": 0.0}
        self.create_timer(1.0, self._publish_diagnostics)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._inference_loop, name="inference", daemon=True)
        self._thread.start()
        self.get_logger().info(
            f"policy {checkpoint} on {policy.device} ({'fast' if policy.uses_fast_path else 'reference'} path, "
            f"{policy.inference_options.precision}): {cfg.denoiser} {cfg.kind}, To={cfg.n_obs_steps} "
            f"Tp={cfg.horizon} Ta={cfg.n_action_steps}, a chunk every {self.period:.2f} s, observations {dict(zip(keys, topics))}"
        )

    def _make_callback(self, key: str, type_name: str):
        spec = self.loop.specs[key]

        def callback(msg) -> None:
            try:
                self.loop.add(key, *observation_from_msg(msg, type_name, spec), now=self._now())  # as replay does
            except ValueError as exc:  # a malformed sample (wrong size, encoding, non-finite stamp, other camera): skip it
                self.stats["rejected_samples"] += 1
                self.stats["last_refusal"] = self.stats["last_rejected_sample"] = str(exc)
                self.get_logger().error(f"rejected a sample of '{key}': {exc}", throttle_duration_sec=2.0)

        return callback

    def _on_diagnostics(self, msg: DiagnosticArray) -> None:
        for key, serial in serials_by_key(self._image_cameras, msg.status).items():
            self.loop.set_serial(key, serial)

    def _now(self) -> float:
        return self.get_clock().now().nanoseconds * 1e-9

    def _inference_loop(self) -> None:
        next_t = time.monotonic()
        while not self._stop.is_set() and self.context.ok():
            published = False
            try:
                published = self._tick()
            except Exception as exc:  # keep running; a bad sample must not kill the node
                if self._stop.is_set() or not self.context.ok():
                    break  # shutting down: the context went away under a publish
                self.get_logger().error(f"inference failed: {exc!r}", throttle_duration_sec=2.0)
            next_t += self.period if published else self.dt  # holding: try again at the next control step
            delay = next_t - time.monotonic()
            if delay > 0:
                self._stop.wait(delay)
            else:  # inference slower than the rate: start the next one now, do not queue up
                next_t = time.monotonic()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2.0)

    def _tick(self) -> bool:
        """Run the policy once; True when a chunk was published."""
        chunk = self.loop.tick(self._now())
        if chunk is None:
            self.stats["refused"] += 1
            self.stats["last_refusal"] = self.loop.refusal.message if self.loop.refusal else ""
            self.get_logger().warning(f"holding: {self.stats['last_refusal']}", throttle_duration_sec=2.0)
            return False
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
        return True

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
    try:
        run_node(PolicyNode, args, PolicyNode.stop)
    except CheckpointError as exc:  # missing or mismatched policy file: a message, not a traceback
        print(f"policy_node: error: {exc}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
