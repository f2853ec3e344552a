"""Shared fixtures: small synthetic datasets and tiny policy configs."""

from __future__ import annotations

import os
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


@pytest.fixture
def ros(monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest):
    """A :class:`RosHarness` whose domain id is unique per test and process."""
    monkeypatch.setenv("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    offset = zlib.crc32(request.node.nodeid.encode()) % 40
    harness = RosHarness(domain_id=150 + (os.getpid() + offset) % 80)
    yield harness
    harness.close()
