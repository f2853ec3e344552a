"""The policy node survives malformed or mis-stamped observation messages (it skips and counts them)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from conftest import REPO, unique_domain_id

rclpy = pytest.importorskip("rclpy")
from geometry_msgs.msg import Pose, PoseArray  # noqa: E402
from rclpy.executors import SingleThreadedExecutor  # noqa: E402
from rclpy.qos import qos_profile_sensor_data  # noqa: E402

from dp_bringup.nodes.policy_node import PolicyNode  # noqa: E402


def test_a_malformed_sample_is_rejected_not_fatal(tmp_path: Path, request: pytest.FixtureRequest) -> None:
    params = tmp_path / "params.yaml"
    params.write_text(f"policy:\n  ros__parameters:\n    checkpoint: {REPO / 'models' / 'pusht_state_unet_small.safetensors'}\n"
                      "    device: cpu\n    inference_backend: torch\n    cpu_threads: 1\n")
    context = rclpy.Context()
    rclpy.init(args=["--ros-args", "--params-file", str(params)], context=context, domain_id=unique_domain_id(request))
    try:
        node = PolicyNode(context=context)
        probe = rclpy.create_node("probe", context=context)
        pub = probe.create_publisher(PoseArray, "/pusht/keypoints", qos_profile_sensor_data)
        executor = SingleThreadedExecutor(context=context)
        executor.add_node(node)
        executor.add_node(probe)
        msg = PoseArray(poses=[Pose() for _ in range(8)])  # one keypoint short of the 9 the policy reads
        deadline = time.monotonic() + 10.0
        while node.stats["rejected_samples"] < 3 and time.monotonic() < deadline:
            msg.header.stamp = node.get_clock().now().to_msg()
            pub.publish(msg)
            executor.spin_once(timeout_sec=0.05)  # a callback's exception would propagate from here
        assert node.stats["rejected_samples"] >= 3
        assert "8 poses" in node.stats["last_rejected_sample"]  # (last_refusal is also the inference thread's)
        # A well-formed sample stamped far ahead (a clock out of sync) is refused too, and names the reason.
        msg = PoseArray(poses=[Pose() for _ in range(9)])
        now = node.get_clock().now().nanoseconds
        msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(now + 3600 * 10**9, 10**9)
        before = node.stats["rejected_samples"]
        deadline = time.monotonic() + 5.0
        while node.stats["rejected_samples"] == before and time.monotonic() < deadline:
            pub.publish(msg)
            executor.spin_once(timeout_sec=0.05)
        assert "in the future" in node.stats["last_rejected_sample"]
        # The inference thread runs on the node's own context (it checked rclpy's default one and ended at once).
        assert node._thread.is_alive() and node.stats["refused"] > 0
        node.stop()
    finally:
        rclpy.try_shutdown(context=context)
