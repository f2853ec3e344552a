"""Shared fixtures: small synthetic datasets and tiny policy configs."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch

from dp_core.config import (
    ActionSpec,
    DataConfig,
    DiffusionConfig,
    ExperimentConfig,
    ObsSpec,
    PolicyConfig,
    ShapeMeta,
    TrainConfig,
    UnetConfig,
    VisionConfig,
)
from dp_core.dataset import EpisodeStore

REPO = Path(__file__).resolve().parents[1]
PUSHT_ZARR = Path(os.environ.get("DP_PUSHT_ZARR", REPO.parent / "shared" / "data" / "pusht" / "pusht_cchi_v7_replay.zarr"))

torch.set_num_threads(1)


def write_episodes(path: Path, episodes: list[dict[str, np.ndarray]]) -> Path:
    store = EpisodeStore.open(path, mode="a")
    for ep in episodes:
        store.add_episode(ep)
    return path


def tiny_policy_config(obs: dict[str, ObsSpec], action_dim: int, **kw) -> PolicyConfig:
    """A UNet small enough to train in seconds on a CPU."""
    defaults = dict(
        shape_meta=ShapeMeta(obs=obs, action=ActionSpec(dim=action_dim)),
        horizon=16,
        n_obs_steps=2,
        n_action_steps=8,
        unet=UnetConfig(down_dims=[32, 64], step_embed_dim=32),
        vision=VisionConfig(crop_shape=[28, 28], num_keypoints=8, feature_dim=16),
        diffusion=DiffusionConfig(num_inference_steps=16),
    )
    defaults.update(kw)
    return PolicyConfig(**defaults)


def experiment(data_path: Path, policy: PolicyConfig, out: Path, **train_kw) -> ExperimentConfig:
    train = dict(output_dir=str(out), batch_size=64, num_steps=20, lr=1e-3, lr_warmup_steps=10,
                 log_every=5, val_every=10, checkpoint_every=10)
    train.update(train_kw)
    return ExperimentConfig(
        name="test",
        policy=policy,
        data=DataConfig(path=str(data_path), val_ratio=0.1),
        train=TrainConfig(**train),
    )


@pytest.fixture
def ramp_dataset(tmp_path: Path) -> Path:
    """1-D points moving at constant speed: obs ``pos`` = (x_t, v), action = x_{t+1}."""
    rng = np.random.default_rng(0)
    episodes = []
    for _ in range(40):
        x0, v = rng.uniform(-1, 1), rng.uniform(-0.05, 0.05)
        x = x0 + v * np.arange(41)
        pos = np.stack([x[:-1], np.full(40, v)], 1).astype(np.float32)
        episodes.append({"pos": pos, "action": x[1:, None].astype(np.float32)})
    return write_episodes(tmp_path / "ramp.zarr", episodes)


@pytest.fixture
def image_dataset(tmp_path: Path) -> Path:
    """A bright square at the agent position on a 32x32 image; action = next position."""
    rng = np.random.default_rng(1)
    episodes = []
    for _ in range(6):
        pos = np.cumsum(rng.normal(0, 1, (20, 2)), 0) + 16
        img = np.zeros((20, 32, 32, 3), np.uint8)
        for i, (x, y) in enumerate(np.clip(pos, 2, 29).astype(int)):
            img[i, y - 2 : y + 2, x - 2 : x + 2] = 255
        episodes.append({"img": img, "agent": pos.astype(np.float32), "action": (pos + 1).astype(np.float32)})
    return write_episodes(tmp_path / "img.zarr", episodes)


class RosHarness:
    """An isolated rclpy context (own domain id, localhost discovery) with a single-threaded executor."""

    def __init__(self, domain_id: int) -> None:
        import rclpy
        from rclpy.executors import SingleThreadedExecutor

        self._rclpy = rclpy
        self.domain_id = domain_id  # for processes that must join this graph
        self.context = rclpy.Context()
        rclpy.init(context=self.context, domain_id=domain_id)
        self.executor = SingleThreadedExecutor(context=self.context)
        self._nodes: list = []
        self._cleanups: list = []

    def add(self, node, cleanup=None):
        """Spin ``node`` with the others; ``cleanup`` runs before it is destroyed."""
        self.executor.add_node(node)
        self._nodes.append(node)
        if cleanup is not None:
            self._cleanups.append(cleanup)
        return node

    def probe(self, name: str):
        return self.add(self._rclpy.create_node(name, context=self.context))

    def spin_until(self, done, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not done() and time.monotonic() < deadline:
            self.executor.spin_once(timeout_sec=0.01)

    def close(self) -> None:
        self.executor.shutdown()
        for cleanup in self._cleanups:
            cleanup()
        for node in self._nodes:
            node.destroy_node()
        self._rclpy.try_shutdown(context=self.context)


def unique_domain_id(request: pytest.FixtureRequest) -> int:
    """A ROS domain id unique per test and process (150-229)."""
    offset = zlib.crc32(request.node.nodeid.encode()) % 40
    return 150 + (os.getpid() + offset) % 80


def run_triton_interpreted(script: str) -> None:
    """Runs ``script`` in a child process with Triton's interpreter on (``TRITON_INTERPRET`` must be set
    before Triton is imported), so that its kernels run on CPU tensors; it must print ``ok``."""
    env = {**os.environ, "TRITON_INTERPRET": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO / "src"), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300,
                          check=False)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-4000:]


@pytest.fixture
def ros(monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest):
    """A :class:`RosHarness` whose domain id is unique per test and process."""
    monkeypatch.setenv("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    harness = RosHarness(domain_id=unique_domain_id(request))
    yield harness
    harness.close()


def agent_xy(t: float) -> tuple[float, float]:
    """The synthetic cell's agent path: straight, constant speed."""
    return 100.0 + 10.0 * t, 200.0 - 5.0 * t


def write_cell_bag(path: Path, seconds: float = 4.0, t0: float = 1000.0, gap: tuple[float, float] | None = None,
                   image_size: int = 16, storage: str = "mcap", serials: list[str] | None = None) -> Path:
    """A bag with the Push-T cell's topics (message times relative to ``t0``): agent pose and 9 keypoints
    at 50 Hz, a 20 Hz camera, servo targets every 0.1 s stamped with their due time on the agent's path.
    Each message is received 2 ms after its stamp; ``gap`` = (start, stop): no agent poses in between.
    ``serials``: /diagnostics once a second naming camera_0's serial, as the camera node does (one after
    the other when several are given).
    """
    from rosbags.rosbag2 import Writer
    from rosbags.rosbag2.enums import StoragePlugin

    from dp_core.bag_io import typestore_for

    ts = typestore_for("kilted")
    T, H = ts.types["builtin_interfaces/msg/Time"], ts.types["std_msgs/msg/Header"]
    Pt, Q, Pose = ts.types["geometry_msgs/msg/Point"], ts.types["geometry_msgs/msg/Quaternion"], ts.types["geometry_msgs/msg/Pose"]
    PS, PA, Img = ts.types["geometry_msgs/msg/PoseStamped"], ts.types["geometry_msgs/msg/PoseArray"], ts.types["sensor_msgs/msg/Image"]

    def header(t: float):
        ns = round((t0 + t) * 1e9)
        return H(stamp=T(sec=ns // 10**9, nanosec=ns % 10**9), frame_id="world")

    def pose(x: float, y: float):
        return Pose(position=Pt(x=x, y=y, z=0.0), orientation=Q(x=0.0, y=0.0, z=0.0, w=1.0))

    events = []
    for i in range(int(seconds * 50) + 1):
        t = i / 50
        if gap and gap[0] <= t < gap[1]:
            continue
        x, y = agent_xy(t)
        events.append((t, "/robot/tcp_pose", PS(header=header(t), pose=pose(x, y))))
        kps = [pose(x + k, y - k) for k in range(9)]
        events.append((t, "/pusht/keypoints", PA(header=header(t), poses=kps)))
    for i in range(int(seconds * 20) + 1):
        t = i / 20
        img = np.full((image_size, image_size, 3), i % 256, np.uint8)
        events.append((t, "/camera_0/color/image_raw", Img(header=header(t), height=image_size, width=image_size,
                                                           encoding="rgb8", is_bigendian=0, step=image_size * 3,
                                                           data=img.reshape(-1))))
    for i in range(int(seconds * 10) + 1):
        due = i / 10 + 0.1  # sent one step ahead of when it is due, as the executor does
        events.append((i / 10, "/robot/servo_target", PS(header=header(due), pose=pose(*agent_xy(due)))))
    types = {"/robot/tcp_pose": PS, "/pusht/keypoints": PA, "/camera_0/color/image_raw": Img, "/robot/servo_target": PS}
    if serials:
        DA, DS = ts.types["diagnostic_msgs/msg/DiagnosticArray"], ts.types["diagnostic_msgs/msg/DiagnosticStatus"]
        types["/diagnostics"] = DA
        for i in range(int(seconds) + 1):
            status = DS(level=0, name="camera: camera_0", message="streaming", hardware_id=serials[i % len(serials)], values=[])
            events.append((float(i), "/diagnostics", DA(header=header(float(i)), status=[status])))
    events.sort(key=lambda e: e[0])
    with Writer(path, version=9, storage_plugin=StoragePlugin[storage.upper()]) as writer:
        conns = {topic: writer.add_connection(topic, cls.__msgtype__, typestore=ts) for topic, cls in types.items()}
        for t, topic, msg in events:
            writer.write(conns[topic], round((t0 + t + 0.002) * 1e9), bytes(ts.serialize_cdr(msg, msg.__msgtype__)))
    return path


CELL_TOPICS = {"/robot/tcp_pose": 201, "/pusht/keypoints": 201, "/camera_0/color/image_raw": 81, "/robot/servo_target": 41}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The Docker tests run last: a first image build writes about 8 GB and leaves dockerd busy, which
    must not change what the other tests see."""
    items.sort(key=lambda item: item.path.name == "test_docker.py")  # stable: the order is kept otherwise
