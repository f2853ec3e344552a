"""Episode storage in zarr and the To/Tp window dataset used for training.

Layout (the original Diffusion Policy's, read as is from zarr v2; written as zarr v3):
``data/<key>`` arrays of shape ``(N, ...)`` with all episodes concatenated, and
``meta/episode_ends`` with each episode's exclusive end index.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import zarr

from .config import DataConfig, PolicyConfig, ShapeMeta


class DatasetError(ValueError):
    """A dataset file is missing, malformed or lacks a key the config asks for."""


def committed_episode_ends(raw: np.ndarray) -> np.ndarray:
    """The committed prefix of a raw ``meta/episode_ends``: positive and strictly increasing.

    A commit interrupted between growing the array and writing its value leaves a trailing fill value
    (0); that entry and anything after a non-increasing one are not committed.
    """
    raw = np.asarray(raw, dtype=np.int64).reshape(-1)
    bad = np.flatnonzero(np.diff(np.concatenate([[0], raw])) <= 0)
    return raw[: bad[0]] if len(bad) else raw


class EpisodeStore:
    """Read and append episodes in a zarr group with ``data/*`` and ``meta/episode_ends``.

    Appending writes the data arrays first and ``meta/episode_ends`` last, so a crash
    mid-episode leaves at most unreferenced trailing rows, which readers ignore.
    """

    def __init__(self, group: zarr.Group, path: Path) -> None:
        self.group = group
        self.path = path

    @classmethod
    def open(cls, path: str | Path, mode: str = "r") -> "EpisodeStore":
        path = Path(path)
        if mode == "r" and not path.exists():
            raise DatasetError(f"dataset not found: {path}")
        try:
            group = zarr.open_group(str(path), mode=mode, zarr_format=None if path.exists() else 3)
        except Exception as exc:  # zarr raises several types for unreadable stores
            raise DatasetError(f"{path}: not a readable zarr group ({exc})") from exc
        store = cls(group, path)
        if mode == "r":
            for name in ("data", "meta/episode_ends"):
                if name not in group:
                    raise DatasetError(f"{path}: missing '{name}' (expected data/<key> and meta/episode_ends)")
        return store

    @property
    def episode_ends(self) -> np.ndarray:
        if "meta/episode_ends" not in self.group:
            return np.zeros(0, dtype=np.int64)
        return committed_episode_ends(self.group["meta/episode_ends"][:])

    @property
    def n_episodes(self) -> int:
        return len(self.episode_ends)

    @property
    def n_steps(self) -> int:
        ends = self.episode_ends
        return int(ends[-1]) if len(ends) else 0

    def keys(self) -> list[str]:
        return sorted(self.group["data"].array_keys()) if "data" in self.group else []

    def read(self, key: str, stop: int | None = None) -> np.ndarray:
        """All committed rows of ``data/<key>`` (or the first ``stop`` rows)."""
        if f"data/{key}" not in self.group:
            raise DatasetError(f"{self.path}: no array 'data/{key}'; available: {self.keys()}")
        arr = self.group[f"data/{key}"]
        n = self.n_steps if stop is None else stop
        if arr.shape[0] < n:
            raise DatasetError(f"{self.path}: data/{key} has {arr.shape[0]} rows but episode_ends needs {n}")
        return np.asarray(arr[:n])

    def add_episode(self, episode: dict[str, np.ndarray], chunk_steps: int = 1000) -> None:
        """Append one episode (same length for every key); commits ``episode_ends`` last."""
        lengths = {k: len(v) for k, v in episode.items()}
        if len(set(lengths.values())) != 1:
            raise DatasetError(f"episode arrays differ in length: {lengths}")
        length = next(iter(lengths.values()))
        if length == 0:
            raise DatasetError("cannot add an empty episode")
        start = self.n_steps
        data = self.group.require_group("data")
        if start == 0 and self.keys():
            existing = set(self.keys())
            if existing != set(episode):
                raise DatasetError(f"episode keys {sorted(episode)} differ from dataset keys {sorted(existing)}")
        for key, value in episode.items():
            value = np.asarray(value)
            if key not in data:
                data.create_array(key, shape=(0, *value.shape[1:]), dtype=value.dtype,
                                  chunks=(chunk_steps, *value.shape[1:]))
            arr = data[key]
            if arr.shape[1:] != value.shape[1:]:
                raise DatasetError(f"data/{key}: step shape {value.shape[1:]} != stored {arr.shape[1:]}")
            arr.resize((start + length, *arr.shape[1:]))
            arr[start : start + length] = value
        missing = set(self.keys()) - set(episode)
        if missing:
            raise DatasetError(f"episode lacks keys {sorted(missing)} present in the dataset")
        ends = np.append(self.episode_ends, start + length).astype(np.int64)
        meta = self.group.require_group("meta")
        if "episode_ends" in meta:
            meta["episode_ends"].resize(ends.shape)
            meta["episode_ends"][:] = ends
        else:
            meta.create_array("episode_ends", data=ends, chunks=(100_000,))


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
        obs = {}
        for key, spec in shape_meta.obs.items():
            raw = store.read(spec.source)
            if spec.type == "rgb":
                if raw.shape[1:] != tuple(spec.shape):
                    raise DatasetError(f"data/{spec.source}: image shape {raw.shape[1:]} != config {spec.shape}")
                obs[key] = raw if raw.dtype == np.uint8 else np.clip(raw, 0, 255).astype(np.uint8)
            else:
                flat = raw.reshape(len(raw), -1).astype(np.float32)
                if spec.columns is not None:
                    flat = flat[:, spec.columns[0] : spec.columns[1]]
                if flat.shape[1] != spec.shape[0]:
                    raise DatasetError(f"data/{spec.source}: {flat.shape[1]} values per step, config says {spec.shape[0]}")
                obs[key] = flat
        action = store.read(shape_meta.action.source).reshape(store.n_steps, -1).astype(np.float32)
        if action.shape[1] != shape_meta.action.dim:
            raise DatasetError(f"data/{shape_meta.action.source}: dim {action.shape[1]} != config {shape_meta.action.dim}")
        return cls(obs, action)


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
    """Load the dataset once and return (train, val or None, the training step arrays)."""
    store = EpisodeStore.open(data_cfg.path)
    if store.n_episodes < 1:
        raise DatasetError(f"{store.path}: no episodes")
    arrays = StepArrays.load(store, policy_cfg.shape_meta)
    train_eps, val_eps = split_episodes(store.n_episodes, data_cfg)
    pad_before, pad_after = policy_cfg.n_obs_steps - 1, policy_cfg.n_action_steps - 1
    ends = store.episode_ends
    train = WindowDataset(arrays, window_indices(ends, train_eps, policy_cfg.horizon, pad_before, pad_after), policy_cfg.n_obs_steps)
    val = None
    if len(val_eps):
        val = WindowDataset(arrays, window_indices(ends, val_eps, policy_cfg.horizon, pad_before, pad_after), policy_cfg.n_obs_steps)
    return train, val, arrays

