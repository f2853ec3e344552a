"""Offline replay through the policy node's code path; shared decoding of ROS and bag messages."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import REPO, agent_xy, tiny_policy_config, write_cell_bag
from dp_core.bag_io import BagError, typestore_for
from dp_core.checkpoint import save_policy
from dp_core.config import ConfigError, ObsSpec
from dp_core.control.policy_params import PolicyNodeParams, load_node_params
from dp_core.msg_fields import observation_from_msg
from dp_core.policy import DiffusionPolicy
from dp_core.replay import ReplayResult, action_errors, main, replay_bag, summarize

PARAMS = REPO / "config" / "pusht_sim.yaml"


def _policy() -> DiffusionPolicy:
    torch.manual_seed(0)
    obs = {"keypoint": ObsSpec("low_dim", [18]), "agent_pos": ObsSpec("low_dim", [2], source="state", columns=[0, 2])}
    return DiffusionPolicy(tiny_policy_config(obs, 2))


def test_replay_runs_the_node_loop_at_recorded_times(tmp_path: Path) -> None:
    bag = write_cell_bag(tmp_path / "bag", seconds=3.0)
    # obs keys/topics/types, dt, warm start: as the node in the sim cell; a chunk every control step
    params = dataclasses.replace(load_node_params(PARAMS), replan_steps=1, warm_start=True)
    policy = _policy()
    result = replay_bag(bag, policy, params, progress=False)
    # ticks every 0.1 s of receive time from 0.1 s after the first message, and one after the last message
    assert len(result.chunks) == 30 and not result.refusals
    # each chunk's first action runs before the next chunk replaces the rest
    assert result.chunks[0].shape == (1, 2) and not result.warm[0] and all(result.warm[1:])
    # each chunk is stamped with the newest aligned observation: the last agent pose received before the tick
    steps = np.diff(result.stamps)
    assert np.all((steps > 0.079) & (steps < 0.121)), steps
    assert len(result.ref_stamps) == 31 and result.ref_values[0] == pytest.approx(agent_xy(0.1))
    again = replay_bag(bag, policy, params, progress=False)  # seeded: reproducible
    np.testing.assert_array_equal(np.stack(again.chunks), np.stack(result.chunks))
    part = replay_bag(bag, policy, params, progress=False, window=(1.0, 2.0))  # ticks 1.002 .. 1.902 s
    assert len(part.chunks) == 10 and part.stamps[0] == pytest.approx(result.stamps[9])
    report = summarize(result, ["x", "y"], params.dt, 0.25)
    assert report["chunks"] == 30 and set(report["action_error"]["per_dim"]) == {"x", "y"}
    assert report["compared_actions"] >= 29 and len(report["action_error"]["rmse_by_step"]) == 1
    assert 0 < report["latency_ms"]["p50"] <= report["latency_ms"]["p99"]


def test_replay_replans_every_ta_steps_and_retries_a_hold_one_step_later(tmp_path: Path) -> None:
    """Default replan_steps 0: a chunk every n_action_steps * dt (0.8 s), executed whole; a hold retries at dt."""
    bag = write_cell_bag(tmp_path / "bag", seconds=4.0, gap=(1.0, 1.75))  # no agent pose from 1.0 to 1.75 s
    params = load_node_params(PARAMS)
    assert params.replan_steps == 0 and params.replan_period(_policy().cfg) == pytest.approx(0.8)
    result = replay_bag(bag, _policy(), params, progress=False)
    t = np.asarray(result.stamps) - 1000.0  # newest aligned observation of each chunk
    # ticks (receive time, 2 ms after the stamps) at 0.102, 0.902 s; at 1.702 s the newest pose is 0.98 s (older
    # than max_obs_age_s 0.25): hold, and try again one dt later, when poses are back: 1.802 s, then 2.602 and
    # 3.402 s (the newest pose received before each is 20 ms older), and one tick after the last message
    np.testing.assert_allclose(t, [0.1, 0.9, 1.8, 2.58, 3.38, 4.0], atol=1e-6)
    assert sum(result.refusals.values()) == 1
    report = summarize(result, ["x", "y"], params.dt, 0.25)
    assert len(report["action_error"]["rmse_by_step"]) == 8  # all Ta actions of each chunk are executed


def test_replay_confirms_recorded_camera_serials_from_the_bag(tmp_path: Path) -> None:
    """As the policy node: frames of an image key recorded with a serial are used once the camera node's
    /diagnostics in the bag names that serial; another serial, or none, and they are refused."""
    from dp_core.camera_sources import CameraSource

    torch.manual_seed(0)
    obs = {"image": ObsSpec("rgb", [32, 32, 3]), "agent_pos": ObsSpec("low_dim", [2], source="state", columns=[0, 2])}
    policy = DiffusionPolicy(tiny_policy_config(obs, 2))
    params = load_node_params(PARAMS)
    cameras = {"image": CameraSource(16, 16, "111")}

    def replay(name: str, serials: list[str] | None) -> ReplayResult:
        return replay_bag(write_cell_bag(tmp_path / name, seconds=3.0, serials=serials), policy, params,
                          progress=False, cameras=cameras)

    named = replay("named", ["111"])
    assert len(named.chunks) >= 3 and named.rejected["image"] <= 1  # a frame received before the first status
    for name, serials in [("other", ["222"]), ("unnamed", None)]:
        refused = replay(name, serials)
        assert not refused.chunks and refused.rejected["image"] > 50, name  # 61 frames, all refused
    unchecked = replay_bag(tmp_path / "unnamed", policy, dataclasses.replace(params, check_cameras=False),
                           progress=False, cameras=cameras)
    assert len(unchecked.chunks) == len(named.chunks)


def test_replan_steps_is_checked_against_the_policy() -> None:
    cfg = _policy().cfg  # horizon 16, To 2: a chunk holds 15 actions from the newest observation's step on
    assert PolicyNodeParams(replan_steps=1).replan_period(cfg) == pytest.approx(0.1)
    assert PolicyNodeParams(replan_steps=15, dt=0.05).replan_period(cfg) == pytest.approx(0.75)
    with pytest.raises(ConfigError, match="replan_steps 16 exceeds the 15 actions"):
        PolicyNodeParams(replan_steps=16).replan_period(cfg)
    with pytest.raises(ConfigError, match="replan_steps must be >= 0"):
        PolicyNodeParams(replan_steps=-1).validate()


def test_replay_skips_a_malformed_sample_as_the_node_does(tmp_path: Path) -> None:
    from dp_core.bag_io import BagReader, BagWriter

    ts = typestore_for("kilted")
    good = write_cell_bag(tmp_path / "good", seconds=3.0)
    bag = tmp_path / "one_bad"
    with BagReader(good) as reader, BagWriter(bag, "kilted") as writer:
        for topic, info in reader.topics.items():
            writer.add_topic(topic, info.msgtype)
        inserted = False
        for m in reader.messages(list(reader.topics), raw=True):
            writer.write(m.topic, m.log_time_ns, bytes(m.msg))
            if m.topic == "/pusht/keypoints" and not inserted and m.log_time_ns > reader.start_ns + 1_500_000_000:
                kept = ts.deserialize_cdr(bytes(m.msg), "geometry_msgs/msg/PoseArray")
                lost = ts.types["geometry_msgs/msg/PoseArray"](header=kept.header, poses=[])  # the tracker lost the block
                writer.write(m.topic, m.log_time_ns + 1000, bytes(ts.serialize_cdr(lost, "geometry_msgs/msg/PoseArray")))
                inserted = True
    params = dataclasses.replace(load_node_params(PARAMS), replan_steps=1)
    result = replay_bag(bag, _policy(), params, progress=False)
    assert result.rejected == {"keypoint": 1} and len(result.chunks) == 30
    assert summarize(result, ["x", "y"], 0.1, 0.25)["rejected_samples"] == {"keypoint": 1}


def test_action_errors_compare_each_action_at_its_due_time() -> None:
    ref_t = np.arange(0.0, 3.0, 0.1)
    ref = np.stack([10 * ref_t, -ref_t], 1)
    stamps = [0.5, 0.6]
    exact = [np.stack([10 * (s + 0.1 * np.arange(1, 9)), -(s + 0.1 * np.arange(1, 9))], 1) for s in stamps]
    result = ReplayResult(start=0.0, stamps=stamps, chunks=exact, latencies=[0.01, 0.02], warm=[False, True],
                          ref_stamps=ref_t, ref_values=ref)
    pred, rec, horizon = action_errors(result, dt=0.1, max_gap_s=0.25)
    assert pred.shape == (16, 2) and np.abs(pred - rec).max() < 1e-9 and horizon.tolist() == list(range(8)) * 2
    late = ReplayResult(start=0.0, stamps=stamps, chunks=[c + [1.0, 0.0] for c in exact], latencies=[0.01, 0.02],
                        warm=[False, True], ref_stamps=ref_t, ref_values=ref)
    report = summarize(late, ["x", "y"], 0.1, 0.25)["action_error"]
    assert report["per_dim"]["x"]["mae"] == pytest.approx(1.0) and report["per_dim"]["y"]["rmse"] == pytest.approx(0.0, abs=1e-9)
    assert report["rmse"] == pytest.approx(np.sqrt(0.5))


def test_bag_and_ros_messages_decode_identically() -> None:
    """The policy node decodes rclpy messages, replay decodes rosbags' messages: same function, same values."""
    from geometry_msgs.msg import Pose, PoseArray, PoseStamped
    from rclpy.serialization import serialize_message

    from dp_bringup.ros_image import numpy_to_image

    ts = typestore_for("kilted")
    pose = PoseStamped()
    pose.header.stamp.sec, pose.header.stamp.nanosec = 12, 345_000_000
    pose.pose.position.x, pose.pose.position.y = 1.5, -2.5
    kps = PoseArray(header=pose.header, poses=[Pose() for _ in range(3)])
    for i, p in enumerate(kps.poses):
        p.position.x, p.position.y = float(i), float(-i)
    image = numpy_to_image(np.arange(4 * 5 * 3, dtype=np.uint8).reshape(4, 5, 3), "bgr8", pose.header.stamp)
    cases = [(pose, "PoseStamped", ObsSpec("low_dim", [2])), (kps, "PoseArray", ObsSpec("low_dim", [6])),
             (image, "Image", ObsSpec("rgb", [4, 5, 3]))]
    for msg, type_name, spec in cases:
        msgtype = f"{type(msg).__module__.split('.')[0]}/msg/{type_name}"
        bag_msg = ts.deserialize_cdr(serialize_message(msg), msgtype)
        live, replayed = observation_from_msg(msg, type_name, spec), observation_from_msg(bag_msg, type_name, spec)
        assert live[0] == replayed[0] == pytest.approx(12.345)
        np.testing.assert_array_equal(live[1], replayed[1])
        assert live[1].dtype == replayed[1].dtype


def test_replay_errors(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    bag = write_cell_bag(tmp_path / "bag", seconds=1.0)
    params = PolicyNodeParams(obs_topics=["/pusht/keypoints", "/robot/tcp_posе"])  # a Cyrillic 'е': no such topic
    with pytest.raises(BagError, match="not in the bag"):
        replay_bag(bag, _policy(), params, progress=False)
    model = save_policy(_policy(), tmp_path / "p.safetensors")
    assert main([str(bag), "--checkpoint", str(tmp_path / "nope.safetensors")]) == 1
    assert "policy file not found" in capsys.readouterr().err
    assert main([str(bag), "--checkpoint", str(model), "--reference-topic", "/executor/executed"]) == 1
    assert "/executor/executed" in capsys.readouterr().err
    assert main([str(bag), "--checkpoint", str(model), "--params", str(tmp_path / "none.yaml")]) == 1
    assert "parameter file not found" in capsys.readouterr().err


def test_cli_writes_report_and_plot(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    import json

    bag = write_cell_bag(tmp_path / "bag", seconds=2.0)
    model = save_policy(_policy(), tmp_path / "p.safetensors")
    out, png = tmp_path / "r.json", tmp_path / "r.png"
    assert main([str(bag), "--checkpoint", str(model), "--params", str(PARAMS), "--plot", str(png), "--output", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["chunks"] == 3 and report["action_error"]["rmse"] > 0  # at 0.1, 0.9, 1.7 s: one every Ta = 8 steps
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    assert "action error MAE/RMSE" in capsys.readouterr().out


def test_live_observations_take_the_columns_training_took() -> None:
    """A spec with columns [2, 4] trained on values 2:4 of the recorded vector: the node and replay must read
    the same ones from the message (they read its first two)."""
    from sensor_msgs.msg import JointState

    from dp_core.config import ActionSpec, ShapeMeta
    from dp_core.control.policy_params import used_observations

    msg = JointState(position=[0.0, 1.0, 2.0, 3.0, 4.0, 5.0])
    _, value = observation_from_msg(msg, "JointState", ObsSpec("low_dim", [2], source="joints", columns=[2, 4]))
    assert value.tolist() == [2.0, 3.0]
    _, value = observation_from_msg(msg, "JointState", ObsSpec("low_dim", [2], source="joints", columns=[0, 2]))
    assert value.tolist() == [0.0, 1.0]
    meta = ShapeMeta(obs={"kp": ObsSpec("low_dim", [2], source="keypoint", columns=[2, 4])}, action=ActionSpec(2))
    params = PolicyNodeParams(obs_keys=["kp"], obs_topics=["/pusht/keypoints"], obs_types=["PoseArray"])
    with pytest.raises(ConfigError, match=r"observation 'kp': columns \[2, 4\] of a PoseArray observation"):
        used_observations(params, meta)
    meta.obs["kp"].columns = [0, 2]  # also from 0: recorded with 3 values per pose, the first 2 are x, y, z[0]
    with pytest.raises(ConfigError, match="PoseArray"):
        used_observations(params, meta)
