"""The teleop and recorder nodes in one process (isolated ROS context): command path, limits, services."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.ros


def pose(node, x: float, y: float):
    from dp_bringup.ros_conversions import pose_stamped

    return pose_stamped(node.get_clock().now().nanoseconds * 1e-9, "world", [x, y, 0.0], [0.0, 0.0, 0.0, 1.0])


def call(ros, client, timeout: float = 5.0):
    from std_srvs.srv import Trigger

    assert client.wait_for_service(timeout_sec=timeout), client.srv_name
    future = client.call_async(Trigger.Request())
    ros.spin_until(future.done, timeout)
    assert future.done(), f"{client.srv_name} did not answer"
    return future.result()


def test_teleop_follows_targets_within_the_executor_limits(ros) -> None:
    from rclpy.parameter import Parameter
    from std_srvs.srv import Trigger

    from dp_bringup.nodes.teleop_node import TeleopNode

    node = ros.add(TeleopNode(
        context=ros.context,
        cli_args=["--ros-args", "--params-file", str(REPO / "config" / "teleop.yaml")],
        parameter_overrides=[Parameter("input", value="topic")],
    ))
    assert node.get_parameter("max_speed").value == 800.0
    probe, commands, state, target = _command_probe(ros)

    ros.spin_until(lambda: False, 0.3)
    assert commands == []  # nothing before the measured pose
    measured = [480.0, 100.0]
    probe.create_timer(0.01, lambda: state.publish(pose(probe, *measured)))
    ros.spin_until(lambda: len(commands) >= 3, 5.0)
    np.testing.assert_allclose(commands[0], [480.0, 100.0])
    timer = probe.create_timer(0.02, lambda: target.publish(pose(probe, 700.0, 100.0)))  # beyond the workspace
    ros.spin_until(lambda: commands[-1][0] >= 512.0, 5.0)
    steps = np.linalg.norm(np.diff(np.array(commands), axis=0), axis=1)
    assert steps.max() <= 8.0 + 1e-9  # max_speed / rate_hz
    assert max(c[0] for c in commands) == 512.0  # clamped to workspace_max
    probe.destroy_timer(timer)

    # Pause before the cell resets: no command while measured poses keep coming, until the resync.
    assert call(ros, probe.create_client(Trigger, "/teleop/pause")).success
    ros.spin_until(lambda: False, 0.1)  # a command in flight when it paused
    n = len(commands)
    ros.spin_until(lambda: False, 0.4)  # ~40 poses stamped after the pause
    assert len(commands) == n
    measured = [50.0, 60.0]  # the cell was reset
    assert call(ros, probe.create_client(Trigger, "/teleop/resync")).success
    ros.spin_until(lambda: len(commands) > n + 3, 5.0)
    np.testing.assert_allclose(commands[n], [50.0, 60.0])  # restarted there, not walking back from 512


def _command_probe(ros):
    """A node that records teleop's commands (x, y) and publishes measured poses and targets."""
    from geometry_msgs.msg import PoseStamped
    from rclpy.qos import qos_profile_sensor_data

    probe = ros.probe("teleop_probe")
    commands: list[np.ndarray] = []
    probe.create_subscription(PoseStamped, "/robot/servo_target",
                              lambda m: commands.append(np.array([m.pose.position.x, m.pose.position.y])), 10)
    state = probe.create_publisher(PoseStamped, "/robot/tcp_pose", qos_profile_sensor_data)
    target = probe.create_publisher(PoseStamped, "/teleop/target", 10)
    return probe, commands, state, target


def _teleop_rig(ros, **params):
    from rclpy.parameter import Parameter

    from dp_bringup.nodes.teleop_node import TeleopNode

    node = ros.add(TeleopNode(context=ros.context, parameter_overrides=[
        Parameter("input", value="topic"), Parameter("max_speed", value=1000.0),
        *(Parameter(k, value=v) for k, v in params.items())]))
    probe, commands, state, target = _command_probe(ros)
    probe.create_timer(0.02, lambda: target.publish(pose(probe, 400.0, 100.0)))  # the operator keeps pushing
    return node, probe, commands, state


def test_teleop_stops_without_a_measured_pose_and_restarts_from_it(ros) -> None:
    """No measured pose for state_timeout_s (the driver lost the robot): commands stop, and restart from the
    pose measured when it returns, not from where the input integrated meanwhile."""
    node, probe, commands, state = _teleop_rig(ros, state_timeout_s=0.2)
    arm = np.array([100.0, 100.0])
    state_timer = probe.create_timer(0.01, lambda: state.publish(pose(probe, *arm)))
    ros.spin_until(lambda: len(commands) > 5, 5.0)
    assert commands[-1][0] > 100.0
    probe.destroy_timer(state_timer)  # silence
    ros.spin_until(lambda: False, 0.4)
    n = len(commands)
    ros.spin_until(lambda: False, 0.4)
    assert len(commands) == n and node._counts["state_lost"] == 1  # stopped, though the input kept coming
    arm[:] = [120.0, 100.0]  # back, where the arm stopped
    probe.create_timer(0.01, lambda: state.publish(pose(probe, *arm)))
    ros.spin_until(lambda: len(commands) > n + 3, 5.0)
    # from there: the returned pose, or one speed-limited step (1000 / 100 Hz) towards the operator's target
    # when a target arrived before the first tick (CI saw 130.0), not on from the last command sent before
    assert np.linalg.norm(commands[n] - [120.0, 100.0]) <= 10.0 + 1e-9, commands[n]


def test_teleop_resyncs_when_the_arm_falls_behind(ros) -> None:
    """An arm that does not move (protective stop): with max_tracking_error the command never runs more than
    that (plus one step) ahead of it, so clearing the stop does not send the arm to the integrated input."""
    node, probe, commands, state = _teleop_rig(ros, max_tracking_error=80.0)
    probe.create_timer(0.01, lambda: state.publish(pose(probe, 100.0, 100.0)))
    ros.spin_until(lambda: len(commands) > 60, 5.0)
    assert max(abs(c[0] - 100.0) for c in commands) <= 80.0 + 10.0
    assert node._counts["tracking_lost"] >= 2


def test_recorder_node_records_through_services_and_buttons(ros, tmp_path: Path) -> None:
    from geometry_msgs.msg import Pose, PoseArray, PoseStamped
    from rclpy.parameter import Parameter
    from rclpy.qos import qos_profile_sensor_data
    from sensor_msgs.msg import Image, Joy
    from std_srvs.srv import Trigger

    from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus

    from dp_bringup.nodes.demo_recorder_node import DemoRecorderNode
    from dp_bringup.ros_image import numpy_to_image
    from dp_core.camera_sources import ATTRIBUTE, CameraSource, read_cameras
    from dp_core.episode_store import EpisodeStore

    dataset = tmp_path / "demos.zarr"
    node = ros.add(DemoRecorderNode(
        context=ros.context,
        cli_args=["--ros-args", "--params-file", str(REPO / "config" / "recorder.yaml")],
        parameter_overrides=[Parameter("dataset", value=str(dataset)),
                             Parameter("after_episode_services", value=["/fake/reset", "/fake/resync"])],
    ), cleanup=lambda: node.close())
    probe = ros.probe("recorder_probe")
    after: list[str] = []

    def service(name: str):
        def handle(_request, response):
            after.append(name)
            response.success = True
            return response

        return probe.create_service(Trigger, f"/fake/{name}", handle)

    service("reset"), service("resync")
    image = probe.create_publisher(Image, "/camera_0/color/image_raw", qos_profile_sensor_data)
    keypoints = probe.create_publisher(PoseArray, "/pusht/keypoints", qos_profile_sensor_data)
    tcp = probe.create_publisher(PoseStamped, "/robot/tcp_pose", qos_profile_sensor_data)
    command = probe.create_publisher(PoseStamped, "/robot/servo_target", 10)
    buttons = probe.create_publisher(Joy, "/spacemouse/buttons", 10)
    start, stop = (probe.create_client(Trigger, f"/demo_recorder/{n}") for n in ("start", "stop"))

    assert not call(ros, start).success  # nothing received yet: refused with the stale streams named
    frame = np.zeros((120, 160, 3), np.uint8)
    frame[:, :80] = 200
    t = [0]

    def publish() -> None:
        t[0] += 1
        stamp = probe.get_clock().now().to_msg()
        image.publish(numpy_to_image(frame, "rgb8", stamp))
        kp = PoseArray()
        kp.header.stamp = stamp
        kp.poses = [Pose() for _ in range(9)]
        for i, p in enumerate(kp.poses):
            p.position.x, p.position.y = float(i), float(t[0])
        keypoints.publish(kp)
        tcp.publish(pose(probe, 10.0, float(t[0])))
        command.publish(pose(probe, 11.0, float(t[0])))

    probe.create_timer(0.02, publish)
    diagnostics = probe.create_publisher(DiagnosticArray, "/diagnostics", 10)  # as the camera node names its camera
    probe.create_timer(0.2, lambda: diagnostics.publish(DiagnosticArray(status=[
        DiagnosticStatus(name="camera: camera_0", hardware_id="817612070123"), DiagnosticStatus(name="policy")])))
    ros.spin_until(lambda: False, 0.5)
    result = call(ros, start)
    assert result.success and result.message == "recording episode 0"
    ros.spin_until(lambda: False, 1.0)
    result = call(ros, stop)
    assert result.success and "saved episode 0" in result.message, result.message
    ros.spin_until(lambda: len(after) == 2, 5.0)
    assert after == ["reset", "resync"]  # after each episode, in order
    store = EpisodeStore.open(dataset)
    n = store.n_steps
    assert 3 <= n <= 14 and store.n_episodes == 1  # ~1 s at 10 Hz
    assert store.read("img").shape == (n, 96, 96, 3)
    assert store.read("keypoint").shape == (n, 18) and store.read("agent_pos").shape == (n, 2)
    action, agent = store.read("action"), store.read("agent_pos")
    assert np.all(action[:, 0] == 11.0) and np.all(agent[:, 0] == 10.0)
    assert np.all(action[:, 1] >= agent[:, 1])  # the command of the step, not an older one
    assert read_cameras(store.group.attrs.get(ATTRIBUTE)) == {"img": CameraSource(120, 160, "817612070123")}
    dts = np.diff(store.read("timestamp"))
    assert np.all(dts > 0) and np.median(dts) == pytest.approx(0.1, abs=0.03)  # the 10 Hz timer (jitters under load)

    def press(button: int) -> None:
        for state in ([0, 0], [1 if button == 0 else 0, 1 if button == 1 else 0], [0, 0]):
            buttons.publish(Joy(buttons=state))
            ros.spin_until(lambda: False, 0.1)

    press(0)  # start
    assert node.recorder.recording
    ros.spin_until(lambda: False, 0.5)
    press(1)  # discard
    assert not node.recorder.recording
    press(0)
    ros.spin_until(lambda: False, 0.5)
    press(0)  # stop: saved
    assert EpisodeStore.open(dataset).n_episodes == 2


def test_spacemouse_node_without_a_device_exits_with_a_clear_message(monkeypatch, capsys) -> None:
    import pyspacemouse

    from dp_bringup.nodes import spacemouse_node

    monkeypatch.setattr(pyspacemouse, "get_connected_devices", lambda: [])
    with pytest.raises(SystemExit) as exc:
        spacemouse_node.main([])
    assert exc.value.code == 1
    err = capsys.readouterr().err
    assert "no SpaceMouse found" in err and "Traceback" not in err


def test_sim_cell_rejects_a_non_finite_target_and_runs_state_only(request) -> None:
    import math
    import time

    import rclpy
    from geometry_msgs.msg import PoseStamped
    from rclpy.executors import SingleThreadedExecutor

    from conftest import unique_domain_id
    from dp_bringup.nodes.pusht_sim_node import PushTSimNode

    context = rclpy.Context()
    rclpy.init(context=context, domain_id=unique_domain_id(request))
    try:
        sim = PushTSimNode(context=context, parameter_overrides=[rclpy.Parameter("render_size", value=0)])
        probe = rclpy.create_node("probe", context=context)
        pub = probe.create_publisher(PoseStamped, "/robot/servo_target", 10)
        executor = SingleThreadedExecutor(context=context)
        executor.add_node(sim)
        executor.add_node(probe)
        bad = PoseStamped()
        bad.pose.position.x = math.nan
        deadline = time.monotonic() + 5.0
        while sim._rejected_targets == 0 and time.monotonic() < deadline:
            pub.publish(bad)
            executor.spin_once(timeout_sec=0.05)  # a callback's exception would propagate from here
        assert sim._rejected_targets >= 1
        for _ in range(20):  # and the state-only cell keeps publishing without camera images
            executor.spin_once(timeout_sec=0.02)
        sim.finish()
    finally:
        rclpy.try_shutdown(context=context)


def test_sim_cell_ignores_targets_published_before_its_reset(request) -> None:
    """A servo target still in flight when ~/reset ran (teleop paused just before) must not move the new episode."""
    import time

    import rclpy
    from geometry_msgs.msg import PoseStamped
    from std_srvs.srv import Trigger

    from conftest import unique_domain_id
    from dp_bringup.nodes.pusht_sim_node import PushTSimNode

    context = rclpy.Context()
    rclpy.init(context=context, domain_id=unique_domain_id(request))
    try:
        sim = PushTSimNode(context=context, parameter_overrides=[rclpy.Parameter("render_size", value=0)])
        sim.cell.stop()  # no physics thread: the target is read back as set
        before = time.time_ns()
        sim._on_reset(Trigger.Request(), Trigger.Response())
        start = sim.cell._target.copy()
        old = PoseStamped()
        old.pose.position.x, old.pose.position.y = 400.0, 400.0
        sim._on_target(old, {"source_timestamp": before})
        np.testing.assert_array_equal(sim.cell._target, start)
        assert sim._stale_targets == 1
        sim._on_target(old, {"source_timestamp": time.time_ns()})
        np.testing.assert_array_equal(sim.cell._target, [400.0, 400.0])
        sim.destroy_node()
    finally:
        rclpy.try_shutdown(context=context)


def test_scripted_teleop_thread_ends_at_shutdown(ros, tmp_path: Path) -> None:
    """The demonstration thread stops when the node shuts down (it used to go on publishing and calling
    services on the destroyed node), and a shutdown is not reported as a failed recording."""
    from geometry_msgs.msg import PoseStamped
    from rclpy.parameter import Parameter

    from dp_bringup.nodes.scripted_teleop_node import ScriptedTeleopNode
    from conftest import write_episodes

    demos = write_episodes(tmp_path / "demos.zarr", [{"action": np.full((30, 2), 250.0, np.float32)}])
    node = ros.add(ScriptedTeleopNode(context=ros.context, parameter_overrides=[
        Parameter("demo_dataset", value=str(demos)), Parameter("num_demos", value=1),
        Parameter("service_timeout_s", value=30.0)]))
    probe = ros.probe("probe")
    state = probe.create_publisher(PoseStamped, "/robot/tcp_pose", 10)
    probe.create_timer(0.02, lambda: state.publish(pose(probe, 250.0, 250.0)))
    ros.spin_until(node._state_seen.is_set, 5.0)
    assert node._state_seen.is_set()
    ros.spin_until(lambda: False, 0.3)  # the thread now waits for the teleop's resync service (none here)
    assert node._thread.is_alive()
    start = time.monotonic()
    node.stop()
    assert not node._thread.is_alive() and time.monotonic() - start < 1.0
    assert node.finished.is_set() and node.failed is None


def test_recorder_node_image_size_keeps_the_camera_size_with_0_0(ros, tmp_path: Path) -> None:
    """ROS cannot type an empty list, so [0, 0] (not []) asks for the camera's own size."""
    from rclpy.parameter import Parameter

    from dp_bringup.nodes.demo_recorder_node import DemoRecorderNode

    def make(size: list[int]):
        return DemoRecorderNode(context=ros.context, cli_args=["--ros-args", "--params-file", str(REPO / "config" / "recorder.yaml")],
                                parameter_overrides=[Parameter("dataset", value=str(tmp_path / f"d{size[0]}.zarr")),
                                                     Parameter("image_size", value=size)])

    node = make([0, 0])
    assert node.recorder.streams["img"].image_size is None
    node.close()
    for bad in ([96], [0, 96]):
        with pytest.raises(ValueError, match=r"image_size must be \[height, width\]"):
            make(bad)
