from pathlib import Path

import numpy as np
import pytest
from builtin_interfaces.msg import Duration, Time
from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint

from dp_bringup.ros_conversions import action_to_pose, chunk_from_msg, pose_stamped, seconds_to_stamp, stamp_to_seconds

REPO = Path(__file__).resolve().parents[2]
FIXED = [0.0, 0.0, 0.3, 1.0, 0.0, 0.0, 0.0]


def chunk_msg(stamp: Time, actions: list[list[float]], dt: float = 0.1) -> JointTrajectory:
    msg = JointTrajectory(joint_names=["x", "y"])
    msg.header.stamp = stamp
    for i, a in enumerate(actions):
        t = round((i + 1) * dt * 1e9)
        since = Duration(sec=t // 10**9, nanosec=t % 10**9)
        msg.points.append(JointTrajectoryPoint(positions=a, time_from_start=since))
    return msg


def test_chunk_from_msg() -> None:
    msg = chunk_msg(Time(sec=100, nanosec=500_000_000), [[1, 2], [3, 4], [5, 6]])
    stamp, actions, names = chunk_from_msg(msg, dt=0.1)
    assert stamp == pytest.approx(100.5) and names == ["x", "y"]
    np.testing.assert_array_equal(actions, [[1, 2], [3, 4], [5, 6]])


def test_malformed_chunks_are_rejected() -> None:
    with pytest.raises(ValueError, match="0 points"):
        chunk_from_msg(chunk_msg(Time(), []))
    bad = chunk_msg(Time(), [[1, 2], [3, 4]])
    bad.points[1].positions = [3.0]
    with pytest.raises(ValueError, match="point 1 has 1 positions"):
        chunk_from_msg(bad)
    with pytest.raises(ValueError, match="time_from_start 0.2000 s, expected"):
        chunk_from_msg(chunk_msg(Time(), [[1, 2]], dt=0.2), dt=0.1)


def test_action_to_pose_fills_the_rest_from_fixed_pose() -> None:
    assert action_to_pose([10.0, 20.0], ["x", "y"], FIXED) == ([10.0, 20.0, 0.3], [1.0, 0.0, 0.0, 0.0])
    assert action_to_pose([0.5], ["z"], FIXED)[0] == [0.0, 0.0, 0.5]
    with pytest.raises(ValueError, match="'roll' is not one of"):
        action_to_pose([1.0], ["roll"], FIXED)
    with pytest.raises(ValueError, match="fixed_pose must be"):
        action_to_pose([1.0], ["x"], FIXED[:3])
    with pytest.raises(ValueError, match="unit quaternion"):
        action_to_pose([1.0], ["x"], [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0])


def test_stamps_and_pose_stamped() -> None:
    assert seconds_to_stamp(1.9999999999) == Time(sec=2, nanosec=0)
    assert seconds_to_stamp(1_700_000_000.25) == Time(sec=1_700_000_000, nanosec=250_000_000)
    assert stamp_to_seconds(Time(sec=3, nanosec=5)) == pytest.approx(3.000000005)
    msg = pose_stamped(12.5, "world", [1.0, 2.0, 3.0], [0.0, 0.0, 0.0, 1.0])
    assert msg.header.stamp == Time(sec=12, nanosec=500_000_000) and msg.header.frame_id == "world"
    assert (msg.pose.position.x, msg.pose.position.z, msg.pose.orientation.w) == (1.0, 3.0, 1.0)


@pytest.mark.ros
def test_node_publishes_waypoints_at_their_due_times(ros) -> None:
    from diagnostic_msgs.msg import DiagnosticArray
    from geometry_msgs.msg import PoseStamped
    from rclpy.parameter import Parameter

    from dp_bringup.nodes.executor_node import ActionExecutorNode

    node = ros.add(ActionExecutorNode(
        context=ros.context,
        cli_args=["--ros-args", "--params-file", str(REPO / "config" / "pusht_sim.yaml")],
        parameter_overrides=[Parameter("fixed_pose", value=FIXED)],
    ))
    assert node.get_parameter("max_step").value == 80.0  # the YAML file's types fit the declarations
    probe = ros.probe("executor_probe")
    commands: list[tuple[PoseStamped, float]] = []
    executed: list[PoseStamped] = []
    diagnostics: list[DiagnosticArray] = []
    probe.create_subscription(
        PoseStamped, "/robot/servo_target", lambda m: commands.append((m, probe.get_clock().now().nanoseconds)), 10
    )
    probe.create_subscription(PoseStamped, "/executor/executed", executed.append, 10)
    probe.create_subscription(DiagnosticArray, "/diagnostics", diagnostics.append, 10)
    pub = probe.create_publisher(JointTrajectory, "/policy/action_chunk", 10)

    ros.spin_until(lambda: pub.get_subscription_count() > 0 and node.count_subscribers("/robot/servo_target") > 0, 2.0)
    stamp = probe.get_clock().now().nanoseconds
    actions = [[100.0, 100.0], [110.0, 100.0], [120.0, 100.0], [130.0, 100.0]]
    pub.publish(chunk_msg(Time(sec=stamp // 10**9, nanosec=stamp % 10**9), actions))
    ros.spin_until(lambda: len(executed) == 4 and diagnostics, 2.5)

    due = [stamp + (i + 1) * 100_000_000 for i in range(4)]
    got = [m.header.stamp.sec * 10**9 + m.header.stamp.nanosec for m, _ in commands]
    assert np.allclose(got, due, rtol=0, atol=1_000)  # ns; float seconds round to < 1 us
    lead = round(node.get_parameter("lead_time_s").value * 1e9)
    assert all(arrival >= d - lead - 1_000 for (_, arrival), d in zip(commands, due))  # not before due - lead
    assert [(m.pose.position.x, m.pose.position.y, m.pose.position.z) for m, _ in commands] == [
        (a[0], a[1], 0.3) for a in actions
    ]
    assert [m.header.stamp for m in executed] == [m.header.stamp for m, _ in commands]
    def latest() -> dict[str, str]:
        return {kv.key: kv.value for kv in diagnostics[-1].status[0].values}

    ros.spin_until(lambda: "obs_to_due_p50_s" in latest(), 2.5)
    values = latest()
    assert values["actions_received"] == "4" and values["chunks_rejected"] == "0"
    assert float(values["obs_to_due_p50_s"]) == pytest.approx(0.1, abs=1e-3)  # first action due stamp + dt
    assert 0.0 <= float(values["obs_to_sent_p50_s"]) < 0.1  # sent lead_time_s before due, after arrival


@pytest.mark.parametrize("name, value, match", [
    ("max_step", float("nan"), "max_step must be finite"),
    ("lead_time_s", float("nan"), "lead_time_s"),
    ("lead_time_s", 1.5, "lead_time_s"),  # not below watchdog_s (1.2): every action would be sent at once
    ("watchdog_s", float("inf"), "watchdog_s"),
])
def test_node_refuses_unsafe_parameters(ros, name: str, value: float, match: str) -> None:
    from rclpy.parameter import Parameter

    from dp_bringup.nodes.executor_node import ActionExecutorNode

    with pytest.raises(ValueError, match=match):
        ActionExecutorNode(context=ros.context, parameter_overrides=[Parameter(name, value=value)])
