"""Bag recorder and player QoS choices, the launch file's bag:= option and the policy node's parameter file."""

from __future__ import annotations

import importlib.util

import pytest
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
from rosbags.interfaces import QosDurability, QosReliability

from conftest import REPO
from dp_bringup.nodes.bag_player_node import publisher_qos
from dp_bringup.nodes.bag_recorder_node import subscription_qos, to_bag_qos
from dp_core.config import ActionSpec, ConfigError, ObsSpec, ShapeMeta
from dp_core.control.policy_params import PolicyNodeParams, load_node_params, used_observations

RELIABLE = QoSProfile(depth=10)
LATCHED = QoSProfile(depth=1, durability=DurabilityPolicy.TRANSIENT_LOCAL)


def test_recorder_matches_every_publisher() -> None:
    assert subscription_qos([RELIABLE]).reliability == ReliabilityPolicy.RELIABLE
    mixed = subscription_qos([RELIABLE, qos_profile_sensor_data])  # one best-effort publisher: best effort
    assert mixed.reliability == ReliabilityPolicy.BEST_EFFORT and mixed.durability == DurabilityPolicy.VOLATILE
    assert subscription_qos([LATCHED]).durability == DurabilityPolicy.TRANSIENT_LOCAL
    assert subscription_qos([LATCHED, RELIABLE]).durability == DurabilityPolicy.VOLATILE


def test_recorded_qos_round_trips_to_the_player() -> None:
    sensor = to_bag_qos(qos_profile_sensor_data)
    assert sensor.reliability == QosReliability.BEST_EFFORT and sensor.depth == qos_profile_sensor_data.depth
    assert to_bag_qos(LATCHED).durability == QosDurability.TRANSIENT_LOCAL
    assert publisher_qos([sensor]).reliability == ReliabilityPolicy.BEST_EFFORT
    assert publisher_qos([to_bag_qos(RELIABLE)]).reliability == ReliabilityPolicy.RELIABLE
    assert publisher_qos([to_bag_qos(LATCHED)]).durability == DurabilityPolicy.TRANSIENT_LOCAL
    assert publisher_qos([]).reliability == ReliabilityPolicy.RELIABLE  # nothing recorded: reliable, volatile


def _launch_module():
    spec = importlib.util.spec_from_file_location("ur5_pusht_launch", REPO / "launch" / "ur5_pusht.launch.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_launch_records_the_configs_topics(tmp_path) -> None:
    from launch.actions import ExecuteProcess
    from launch_ros.actions import Node

    launch = _launch_module()
    config = str(REPO / "config" / "pusht_sim.yaml")
    ours = launch._recorder(str(tmp_path / "b"), "dp", config, {})
    assert len(ours) == 1 and isinstance(ours[0], Node)
    rosbag2 = launch._recorder(str(tmp_path / "b"), "ros2bag", config, {})
    process = rosbag2[-1]
    assert isinstance(process, ExecuteProcess)
    cmd = [c[0].text for c in process.cmd]
    assert cmd[:6] == ["ros2", "bag", "record", "-s", "mcap", "-o"] and "/robot/servo_target" in cmd
    empty = tmp_path / "empty.yaml"
    empty.write_text("policy: {ros__parameters: {}}\n")
    with pytest.raises(RuntimeError, match="bag_recorder: ros__parameters: topics"):
        launch._recorder(str(tmp_path / "b"), "auto", str(empty), {})


def test_node_parameter_files_load() -> None:
    sim = load_node_params(REPO / "config" / "pusht_sim.yaml")
    assert sim.obs_keys == ["keypoint", "agent_pos", "image"] and sim.obs_types[2] == "Image"
    real = load_node_params(REPO / "config" / "ur5_real.yaml")
    assert real.obs_topics[2] == "/robot/tcp_pose"
    meta = ShapeMeta(obs={"keypoint": ObsSpec("low_dim", [18]), "agent_pos": ObsSpec("low_dim", [2])}, action=ActionSpec(2))
    assert used_observations(sim, meta) == {"keypoint": ("/pusht/keypoints", "PoseArray"),
                                            "agent_pos": ("/robot/tcp_pose", "PoseStamped")}
    with pytest.raises(ConfigError, match=r"needs observations \['agent_pos'\]"):
        used_observations(PolicyNodeParams(obs_keys=["keypoint", "x"]), meta)


def test_node_parameter_file_errors(tmp_path) -> None:
    bad = tmp_path / "p.yaml"
    bad.write_text("policy:\n  ros__parameters:\n    replan_step: 5\n")
    with pytest.raises(ConfigError, match="policy.ros__parameters.replan_step.*did you mean 'replan_steps'"):
        load_node_params(bad)
    bad.write_text("policy:\n  ros__parameters:\n    rate_hz: 10.0\n")  # a file from before replan_steps
    with pytest.raises(ConfigError, match="'rate_hz' was replaced by replan_steps"):
        load_node_params(bad)
    bad.write_text("policy:\n  ros__parameters:\n    obs_types: [PoseArray, Twist]\n")
    with pytest.raises(ConfigError, match=r"obs_types entries \['Twist'\]"):
        load_node_params(bad)
    bad.write_text("policy:\n  ros__parameters:\n    inference_backend: tensorrt\n")
    with pytest.raises(ConfigError, match="inference_backend must be 'torch', 'onnxruntime' or 'auto'"):
        load_node_params(bad)
    bad.write_text("policy:\n  ros__parameters:\n    inference_backend: onnxruntime\n    inference_compile: true\n")
    with pytest.raises(ConfigError, match="inference_compile applies to the torch backend"):
        load_node_params(bad)
    sim = load_node_params(REPO / "config" / "pusht_sim.yaml")
    assert not sim.inference_options().compile
    sim.inference_compile = True
    assert sim.inference_options().compile
    with pytest.raises(ConfigError, match="no 'executor: ros__parameters:' section"):
        load_node_params(REPO / "config" / "pusht_sim.yaml", node="executor")


def test_player_skips_topics_without_messages(tmp_path, request) -> None:
    import rclpy

    from conftest import unique_domain_id
    from dp_bringup.nodes.bag_player_node import BagPlayerNode
    from dp_core.bag_io import BagWriter, typestore_for

    ts = typestore_for("kilted")
    msg = ts.types["std_msgs/msg/String"](data="x")
    with BagWriter(tmp_path / "bag") as writer:  # a recording stopped before the policy's first chunk
        writer.add_topic("/chatter", "std_msgs/msg/String")
        writer.add_topic("/policy/action_chunk", "trajectory_msgs/msg/JointTrajectory")
        for i in range(3):
            writer.write("/chatter", 1_000_000_000 + i * 10_000_000, bytes(ts.serialize_cdr(msg, "std_msgs/msg/String")))
    context = rclpy.Context()
    rclpy.init(context=context, domain_id=unique_domain_id(request))
    try:
        node = BagPlayerNode(context=context, parameter_overrides=[rclpy.Parameter("bag", value=str(tmp_path / "bag")),
                                                                   rclpy.Parameter("start_delay_s", value=0.0)])
        assert node.topics == ["/chatter"]
        assert node.finished.wait(5.0) and node.published == 3
        node.destroy_node()
    finally:
        rclpy.try_shutdown(context=context)


def test_recorder_hears_a_volatile_publisher_joining_a_latched_one(tmp_path, request) -> None:
    import time

    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    from std_msgs.msg import String

    from conftest import unique_domain_id
    from dp_bringup.nodes.bag_recorder_node import BagRecorderNode
    from dp_core.bag_io import BagReader

    context = rclpy.Context()
    rclpy.init(context=context, domain_id=unique_domain_id(request))
    try:
        talker = rclpy.create_node("talker", context=context)
        latched = talker.create_publisher(String, "/status", LATCHED)
        latched.publish(String(data="latched"))
        recorder = BagRecorderNode(context=context, parameter_overrides=[
            rclpy.Parameter("output", value=str(tmp_path / "bag")), rclpy.Parameter("topics", value=["/status"]),
            rclpy.Parameter("discovery_period_s", value=0.05)])
        executor = SingleThreadedExecutor(context=context)
        executor.add_node(recorder)
        executor.add_node(talker)
        deadline = time.monotonic() + 5.0
        while recorder._subs.get("/status") is None and time.monotonic() < deadline:
            executor.spin_once(timeout_sec=0.05)
        assert recorder._subs["/status"].qos_profile.durability == DurabilityPolicy.TRANSIENT_LOCAL
        volatile = talker.create_publisher(String, "/status", RELIABLE)  # joins later, does not latch
        deadline = time.monotonic() + 2.0
        while time.monotonic() < deadline:
            volatile.publish(String(data="volatile"))
            executor.spin_once(timeout_sec=0.05)
        recorder.writer.close()
        with BagReader(tmp_path / "bag") as bag:
            assert "volatile" in {m.msg.data for m in bag.messages(["/status"])}
    finally:
        rclpy.try_shutdown(context=context)


def test_player_refuses_a_bag_without_messages(tmp_path, request) -> None:
    import rclpy

    from conftest import unique_domain_id
    from dp_bringup.nodes.bag_player_node import BagPlayerNode
    from dp_core.bag_io import BagError, BagWriter

    with BagWriter(tmp_path / "bag") as writer:  # the recorder was stopped before anything was published
        writer.add_topic("/robot/tcp_pose", "geometry_msgs/msg/PoseStamped")
    context = rclpy.Context()
    rclpy.init(context=context, domain_id=unique_domain_id(request))
    try:
        with pytest.raises(BagError, match=r"no messages to play \(topics: \['/robot/tcp_pose'\]\)"):
            BagPlayerNode(context=context, parameter_overrides=[rclpy.Parameter("bag", value=str(tmp_path / "bag"))])
        with pytest.raises(BagError, match="have no messages"):
            BagPlayerNode(context=context, parameter_overrides=[rclpy.Parameter("bag", value=str(tmp_path / "bag")),
                                                                rclpy.Parameter("topics", value=["/robot/tcp_pose"])])
    finally:
        rclpy.try_shutdown(context=context)


def test_scripted_recording_passes_the_expanded_demo_path(tmp_path, monkeypatch) -> None:
    """demo_dataset:=~/... is checked and handed to scripted_teleop as the same absolute path."""
    from launch import LaunchContext
    from launch.actions import DeclareLaunchArgument
    from launch_ros.actions import Node
    from launch_ros.utilities import evaluate_parameters

    spec = importlib.util.spec_from_file_location("teleop_record_launch", REPO / "launch" / "teleop_record.launch.py")
    launch = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(launch)
    monkeypatch.setattr(launch, "get_package_share_directory", lambda _: str(REPO))
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "demos.zarr").mkdir()
    context = LaunchContext()
    for action in launch.generate_launch_description().entities:
        if isinstance(action, DeclareLaunchArgument):
            action.visit(context)  # sets the defaults
    context.launch_configurations.update(dataset=str(tmp_path / "out.zarr"), input="scripted", demo_dataset="~/demos.zarr")
    script = [n for n in launch.launch_setup(context) if isinstance(n, Node) and n.node_executable == "scripted_teleop"]
    params = evaluate_parameters(context, script[0]._Node__parameters)[0]
    assert params["demo_dataset"] == str(tmp_path / "demos.zarr")
    context.launch_configurations["demo_dataset"] = "~/missing.zarr"
    with pytest.raises(RuntimeError, match=f"not found: {tmp_path}/missing.zarr"):
        launch.launch_setup(context)


def test_launch_arguments_left_empty_keep_the_parameter_files_values(monkeypatch) -> None:
    """device, seed, extra_latency, latency_compensation, replan_steps and warm_start override the config only
    when given."""
    from launch import LaunchContext
    from launch.actions import DeclareLaunchArgument
    from launch_ros.actions import Node
    from launch_ros.utilities import evaluate_parameters

    launch = _launch_module()
    monkeypatch.setattr(launch, "get_package_share_directory", lambda _: str(REPO))

    def overrides(**given) -> dict[str, dict]:
        context = LaunchContext()
        for action in launch.generate_launch_description().entities:
            if isinstance(action, DeclareLaunchArgument):
                action.visit(context)
        context.launch_configurations.update(given)
        nodes = [n for n in launch.launch_setup(context) if isinstance(n, Node)]
        return {n.node_executable: evaluate_parameters(context, n._Node__parameters)[1] for n in nodes}

    default = overrides()
    assert set(default["policy_node"]) == {"checkpoint"} and default["action_executor"] == {}
    assert default["pusht_sim"] == {"num_episodes": 0}
    given = overrides(device="cpu", seed="7", extra_latency="0.1", latency_compensation="false", replan_steps="4",
                      warm_start="true")
    assert given["policy_node"] == {"checkpoint": default["policy_node"]["checkpoint"], "device": "cpu",
                                    "extra_latency_s": 0.1, "replan_steps": 4, "warm_start": True}
    assert given["action_executor"] == {"latency_compensation": False} and given["pusht_sim"]["seed"] == 7


def test_the_real_cell_launch_needs_a_checkpoint(monkeypatch) -> None:
    """sim:=false without checkpoint:= used to start the simulated cell's bundled model against the robot."""
    from launch import LaunchContext
    from launch.actions import DeclareLaunchArgument

    launch = _launch_module()
    monkeypatch.setattr(launch, "get_package_share_directory", lambda _: str(REPO))
    context = LaunchContext()
    for action in launch.generate_launch_description().entities:
        if isinstance(action, DeclareLaunchArgument):
            action.visit(context)
    context.launch_configurations.update(sim="false", robot_ip="192.168.1.10")
    with pytest.raises(RuntimeError, match="sim:=false needs checkpoint:="):
        launch.launch_setup(context)
