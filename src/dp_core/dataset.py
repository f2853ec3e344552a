"""The To/Tp window dataset used for training, over episodes in zarr (:mod:`dp_core.episode_store`)."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch

from .config import DataConfig, PolicyConfig, ShapeMeta
from .episode_store import DatasetError, EpisodeStore, committed_episode_ends

log = logging.getLogger(__name__)

__all__ = ["DatasetError", "EpisodeStore", "StepArrays", "WindowDataset", "build_datasets",
           "committed_episode_ends", "segments", "split_episodes", "window_indices"]


def window_indices(episode_ends: np.ndarray, episodes: np.ndarray, horizon: int, pad_before: int, pad_after: int) -> np.ndarray:
    """Global frame indices ``(num_windows, horizon)`` of every window of the given episodes.

    Windows start from ``-pad_before`` to ``length - horizon + pad_after`` within each
    episode; out-of-episode positions repeat the first or last frame.
    """
    starts = np.concatenate([[0], episode_ends[:-1]])
    out = []
    for ep in episodes:
        s, e = int(starts[ep]), int(episode_ends[ep])
        length = e - s
        first = np.arange(-pad_before, length - horizon + pad_after + 1)
        if len(first) == 0:
            continue
        local = np.clip(first[:, None] + np.arange(horizon)[None, :], 0, length - 1)
        out.append(local + s)
    if not out:
        return np.zeros((0, horizon), dtype=np.int64)
    return np.concatenate(out).astype(np.int64)


def segments(episode_ends: np.ndarray, timestamps: np.ndarray | None, gap_factor: float = 1.5) -> tuple[np.ndarray, np.ndarray]:
    """Episodes cut where their steps are not evenly spaced: ``(segment_ends, episode of each segment)``.

    A recorder drops steps whose inputs were stale (a camera stall) and the episode goes on after the gap;
    a window must not span it as if its frames were one period apart. A cut falls between two steps more
    than ``gap_factor`` times the episode's median step apart. Without ``timestamps``, the episodes.
    """
    if timestamps is None:
        return episode_ends, np.arange(len(episode_ends))
    ends, owner, start = [], [], 0
    for ep, end in enumerate(episode_ends):
        steps = np.diff(timestamps[start:end])
        cuts = start + 1 + np.flatnonzero(steps > gap_factor * np.median(steps)) if len(steps) else []
        for cut in [*cuts, int(end)]:
            ends.append(int(cut))
            owner.append(ep)
        start = int(end)
    return np.array(ends, dtype=np.int64), np.array(owner, dtype=np.int64)


def split_episodes(n_episodes: int, cfg: DataConfig) -> tuple[np.ndarray, np.ndarray]:
    """Validation episodes drawn at random (seeded); training optionally capped."""
    rng = np.random.default_rng(cfg.split_seed)
    n_val = min(max(1, round(n_episodes * cfg.val_ratio)), n_episodes - 1) if cfg.val_ratio > 0 else 0
    perm = rng.permutation(n_episodes)
    val, train = np.sort(perm[:n_val]), np.sort(perm[n_val:])
    if cfg.max_train_episodes is not None:
        train = np.sort(rng.choice(train, size=min(cfg.max_train_episodes, len(train)), replace=False))
    return train, val


@dataclass
class StepArrays:
    """Per-step arrays in memory: observations by obs key, and actions."""

    obs: dict[str, np.ndarray]
    action: np.ndarray

    @classmethod
    def load(cls, store: EpisodeStore, shape_meta: ShapeMeta) -> "StepArrays":
        """Read the config's observations and actions; ``DatasetError`` for shapes unlike the config's,
        non-finite values (naming the first step and its episode), or float images not on the 0-255 scale."""
        obs = {}
        for key, spec in shape_meta.obs.items():
            raw = store.read(spec.source)
            if spec.type == "rgb":
                if raw.shape[1:] != tuple(spec.shape):
                    raise DatasetError(f"data/{spec.source}: image shape {raw.shape[1:]} != config {spec.shape}")
                obs[key] = raw if raw.dtype == np.uint8 else _float_images_to_uint8(raw, spec.source)
            else:
                flat = raw.reshape(len(raw), -1).astype(np.float32)
                if spec.columns is not None:
                    flat = flat[:, spec.columns[0] : spec.columns[1]]
                if flat.shape[1] != spec.shape[0]:
                    raise DatasetError(f"data/{spec.source}: {flat.shape[1]} values per step, config says {spec.shape[0]}")
                _check_finite(flat, spec.source, store.episode_ends)
                obs[key] = flat
        action = store.read(shape_meta.action.source).reshape(store.n_steps, -1).astype(np.float32)
        if action.shape[1] != shape_meta.action.dim:
            raise DatasetError(f"data/{shape_meta.action.source}: dim {action.shape[1]} != config {shape_meta.action.dim}")
        _check_finite(action, shape_meta.action.source, store.episode_ends)
        return cls(obs, action)


def _check_finite(values: np.ndarray, source: str, episode_ends: np.ndarray) -> None:
    """``DatasetError`` naming the first step (and its episode) with a NaN or infinite value: one such value
    would turn the normaliser, and then every weight, into NaN."""
    bad = ~np.isfinite(values).all(axis=1)
    if bad.any():
        step = int(np.argmax(bad))
        episode = int(np.searchsorted(episode_ends, step, side="right"))
        raise DatasetError(f"data/{source}: non-finite values at step {step} (episode {episode}) and "
                           f"{int(bad.sum()) - 1} more steps; fix or remove those episodes")


def _float_images_to_uint8(raw: np.ndarray, source: str) -> np.ndarray:
    """Float images on the 0-255 scale as uint8 (rounded); others are refused rather than silently blackened."""
    if raw.size == 0:
        return raw.astype(np.uint8)
    lo, hi = float(raw.min()), float(raw.max())  # NaN or inf anywhere shows here
    if not (np.isfinite(lo) and np.isfinite(hi)):
        raise DatasetError(f"data/{source}: images hold NaN or infinite values")
    if hi <= 1.0:
        raise DatasetError(f"data/{source}: float images with values in [{lo:g}, {hi:g}]; the dataset format stores "
                           "them 0-255 (uint8, or floats on that scale): multiply by 255")
    if lo < -0.5 or hi > 255.5:
        raise DatasetError(f"data/{source}: float images with values in [{lo:g}, {hi:g}], outside 0-255")
    work = raw if raw.flags.writeable else raw.copy()  # in place: a dataset's images can be gigabytes
    np.rint(work, out=work)
    np.clip(work, 0, 255, out=work)
    return work.astype(np.uint8)


class WindowDataset(torch.utils.data.Dataset):
    """Windows of ``horizon`` actions with the first ``n_obs_steps`` observations."""

    def __init__(self, arrays: StepArrays, indices: np.ndarray, n_obs_steps: int) -> None:
        self.arrays = arrays
        self.indices = indices
        self.n_obs_steps = n_obs_steps

    def __len__(self) -> int:
        return len(self.indices)

    def batch(self, items: np.ndarray) -> dict:
        """Vectorised gather of several windows: ``{"obs": {k: (B, To, ...)}, "action": (B, Tp, A)}``."""
        idx = self.indices[items]
        obs_idx = idx[:, : self.n_obs_steps]
        return {
            "obs": {k: torch.from_numpy(v[obs_idx]) for k, v in self.arrays.obs.items()},
            "action": torch.from_numpy(self.arrays.action[idx]),
        }

    def __getitem__(self, i: int) -> dict:
        b = self.batch(np.array([i]))
        return {"obs": {k: v[0] for k, v in b["obs"].items()}, "action": b["action"][0]}


def build_datasets(data_cfg: DataConfig, policy_cfg: PolicyConfig) -> tuple[WindowDataset, WindowDataset | None, StepArrays]:
    """Load the dataset once and return (train, val or None, the step arrays of all episodes). ``val`` is None
    without validation episodes, or when they are all too short to give a window."""
    store = EpisodeStore.open(data_cfg.path)
    if store.n_episodes < 1:
        raise DatasetError(f"{store.path}: no episodes")
    arrays = StepArrays.load(store, policy_cfg.shape_meta)
    train_eps, val_eps = split_episodes(store.n_episodes, data_cfg)
    pad_before, pad_after = policy_cfg.n_obs_steps - 1, policy_cfg.n_action_steps - 1
    ends, owner = segments(store.episode_ends, store.read("timestamp") if "timestamp" in store.keys() else None)

    def windows(episodes: np.ndarray) -> WindowDataset:
        idx = window_indices(ends, np.flatnonzero(np.isin(owner, episodes)), policy_cfg.horizon, pad_before, pad_after)
        return WindowDataset(arrays, idx, policy_cfg.n_obs_steps)

    val = windows(val_eps) if len(val_eps) else None
    if val is not None and len(val) == 0:
        log.warning("%s: the validation episodes %s give no windows (shorter than the horizon); no validation",
                    store.path, val_eps.tolist())
        val = None
    return windows(train_eps), val, arrays

