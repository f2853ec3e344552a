"""Shared fixtures: small synthetic datasets and tiny policy configs."""

from __future__ import annotations

import os
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
