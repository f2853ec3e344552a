"""Bags with real ROS processes: record the simulated cell, convert, replay; recorder shutdown and kill; player.

Processes run with their own ROS_DOMAIN_ID and localhost discovery.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from conftest import REPO, RosHarness, write_cell_bag
from dp_core.bag_convert import main as bag2zarr
from dp_core.bag_io import BagReader, recover_bag
from dp_core.dataset import EpisodeStore
from dp_core.replay import main as replay

pytestmark = [pytest.mark.slow, pytest.mark.ros]

MODEL = REPO / "models" / "pusht_state_unet_small.safetensors"
SIM_PARAMS = REPO / "config" / "pusht_sim.yaml"
MAX_REPLAY_RMSE = 60.0  # px; measured 40 px between a live run and its offline replay (see docs/bags.md)


def _env(domain: int) -> dict[str, str]:
    if shutil.which("ros2") is None:
        pytest.fail("ros2 not on PATH: run through ./scripts/test.sh (it sources scripts/env.sh)")
    return {**os.environ, "ROS_DOMAIN_ID": str(domain), "ROS_AUTOMATIC_DISCOVERY_RANGE": "LOCALHOST",
            "PYTHONUNBUFFERED": "1"}


def _start(cmd: list[str], log: Path, env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen(cmd, stdout=open(log, "w"), stderr=subprocess.STDOUT, env=env, start_new_session=True)


def _wait_for(log: Path, text: str, timeout: float, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if text in log.read_text():
            return
        if proc is not None and proc.poll() is not None:
            break
        time.sleep(0.5)
    pytest.fail(f"'{text}' not in {log.name} after {timeout:.0f} s:\n{log.read_text()[-3000:]}")


def _stop(procs: list[subprocess.Popen], sig: int = signal.SIGINT) -> None:
    for p in procs:
        if p.poll() is None:
            os.killpg(p.pid, sig)
    for p in procs:
        try:
            p.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()


def _run(pkg_exe: str, *params: str) -> list[str]:
    return ["ros2", "run", "dp_bringup", pkg_exe, "--ros-args", *params]


def test_sim_cell_recorded_converted_and_replayed(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """ros2 launch ... num_episodes:=1 bag:=<dir>, then dp-bag2zarr and dp-replay on the bag."""
    env = _env(100 + os.getpid() % 50)
    bag, log = tmp_path / "cell", tmp_path / "launch.log"
    launch = _start(["ros2", "launch", "dp_bringup", "ur5_pusht.launch.py", "num_episodes:=1", f"checkpoint:={MODEL}",
                     f"bag:={bag}"], log, env)
    try:
        launch.wait(timeout=240)  # the episode's 30 s start with the policy's first command
    except subprocess.TimeoutExpired:
        _stop([launch])
        pytest.fail(f"launch did not finish in 240 s; log:\n{log.read_text()[-4000:]}")
    text = log.read_text()
    assert "PUSHT_SCORE" in text, text[-4000:]
    assert (bag / "metadata.yaml").is_file(), text[-4000:]  # closed when the launch shut down
    with BagReader(bag) as reader:
        counts = {t: i.count for t, i in reader.topics.items()}
    # 10 Hz of commands on an idle machine; an overloaded one gives fewer (gaps where inference lagged)
    assert counts["/robot/tcp_pose"] > 300 and counts["/camera_0/color/image_raw"] > 100, counts
    assert counts["/robot/servo_target"] > 16 and counts["/policy/action_chunk"] > 4, counts

    out = tmp_path / "cell.zarr"
    config = str(REPO / "config" / "bag_pusht_sim.yaml")
    assert bag2zarr([str(bag), "-o", str(out), "--config", config, "min_episode_steps=8"]) == 0
    store = EpisodeStore.open(out)
    assert store.n_episodes >= 1, capsys.readouterr().out  # each of >= 8 aligned steps with an action

    report = tmp_path / "replay.json"
    assert replay([str(bag), "--checkpoint", str(MODEL), "--params", str(SIM_PARAMS), "--plot", str(tmp_path / "r.png"),
                   "--output", str(report)]) == 0
    result = json.loads(report.read_text())
    print(json.dumps(result, indent=1))
    # offline, a chunk every Ta = 8 steps (0.8 s) of recorded time however slowly the live policy ran (the episode
    # lasts up to 30 s, less when it succeeds), each compared where the live commands cover its due times
    with BagReader(bag) as reader:
        recorded_s = (reader.end_ns - reader.start_ns) * 1e-9
    assert result["chunks"] >= 0.85 * recorded_s / 0.8 and result["compared_actions"] > 100  # 46 of 46 in 37 s here
    assert result["action_error"]["rmse"] < MAX_REPLAY_RMSE
    assert (tmp_path / "r.png").stat().st_size > 10_000


POSE = "{header: {frame_id: world}, pose: {position: {x: 1.0, y: 2.0}, orientation: {w: 1.0}}}"


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_recorder_closes_on_sigterm_and_is_recoverable_after_sigkill(tmp_path: Path, sig: int) -> None:
    env = _env(150 + os.getpid() % 50 + (sig == signal.SIGKILL))
    bag = tmp_path / "bag"
    pub = _start(["ros2", "topic", "pub", "-r", "50", "/robot/tcp_pose", "geometry_msgs/msg/PoseStamped", POSE],
                 tmp_path / "pub.log", env)
    rec = _start(_run("bag_recorder", "-p", f"output:={bag}", "-p", "topics:=['/robot/tcp_pose']",
                      "-p", "flush_period_s:=0.5"), tmp_path / "rec.log", env)
    try:
        _wait_for(tmp_path / "rec.log", "recording /robot/tcp_pose", 90, rec)
        time.sleep(4.0)
        os.killpg(rec.pid, sig)
        rec.wait(timeout=20)
    finally:
        _stop([pub, rec])
    if sig == signal.SIGTERM:  # closed: a complete bag
        assert (bag / "metadata.yaml").is_file(), (tmp_path / "rec.log").read_text()
        with BagReader(bag) as reader:
            assert reader.topics["/robot/tcp_pose"].count > 50
    else:  # killed: no metadata.yaml, and everything up to the last flush (<= 0.5 s before the kill) recovers
        assert not (bag / "metadata.yaml").exists()
        report = recover_bag(bag)
        assert report.counts["/robot/tcp_pose"] > 50


def test_player_feeds_recorded_observations_to_the_live_policy_node(tmp_path: Path) -> None:
    domain = 200 + os.getpid() % 30
    env = _env(domain)
    bag = write_cell_bag(tmp_path / "bag", seconds=8.0, t0=1000.0)  # stamps long past: only restamping makes them fresh
    # a chunk every control step (the default is every 0.8 s): at least 10 chunks from the 8 s bag
    policy = _start(_run("policy_node", "--params-file", str(SIM_PARAMS), "-p", f"checkpoint:={MODEL}",
                         "-p", "replan_steps:=1"), tmp_path / "policy.log", env)
    harness = RosHarness(domain)
    player = None
    try:
        from trajectory_msgs.msg import JointTrajectory

        chunks: list[JointTrajectory] = []
        harness.probe("probe").create_subscription(JointTrajectory, "/policy/action_chunk", chunks.append, 10)
        _wait_for(tmp_path / "policy.log", "on cpu", 180, policy)
        player = _start(_run("bag_player", "-p", f"bag:={bag}", "-p", "topics:=['/pusht/keypoints', '/robot/tcp_pose']"),
                        tmp_path / "player.log", env)
        harness.spin_until(lambda: len(chunks) >= 10, timeout=60)
        now = time.time()
    finally:
        _stop([p for p in (player, policy) if p is not None])
        harness.close()
    assert len(chunks) >= 10, (tmp_path / "policy.log").read_text()[-3000:]
    stamp = chunks[-1].header.stamp.sec + chunks[-1].header.stamp.nanosec * 1e-9
    assert abs(now - stamp) < 5.0  # restamped onto the current clock
    assert chunks[-1].joint_names == ["x", "y"] and len(chunks[-1].points) == 15
