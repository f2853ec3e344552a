"""Episode storage in zarr, without torch: the layout and its reader.

Layout (the original Diffusion Policy's, read as is from zarr v2; written as zarr v3):
``data/<key>`` arrays of shape ``(N, ...)`` with all episodes concatenated, and
``meta/episode_ends`` with each episode's exclusive end index. Writers commit ``meta/episode_ends``
last (:mod:`dp_core.recording.episode_writer`), so only its committed prefix counts.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import zarr


class DatasetError(ValueError):
    """A dataset file is missing, malformed or lacks a key the config asks for."""


def committed_episode_ends(raw: np.ndarray) -> np.ndarray:
    """The committed entries of a raw ``meta/episode_ends``: all but trailing fill values (0).

    A commit interrupted between growing the array and writing its value leaves one trailing 0; that
    entry is not committed. Ends must not decrease (an end repeated is an empty episode, which other tools
    may write); a decreasing one is damage, a :class:`DatasetError`, not a reason to drop the episodes after it.
    """
    raw = np.asarray(raw, dtype=np.int64).reshape(-1)
    n = len(raw)
    while n and raw[n - 1] == 0:
        n -= 1
    ends = raw[:n]
    bad = np.flatnonzero(np.diff(np.concatenate([[0], ends])) < 0)
    if len(bad):
        raise DatasetError(f"meta/episode_ends decreases at entry {bad[0]} ({ends[max(bad[0] - 1, 0)]} -> {ends[bad[0]]}): "
                           "the dataset is damaged")
    return ends


def check_steps(stored: dict[str, tuple[tuple[int, ...], np.dtype]],
                given: dict[str, tuple[tuple[int, ...], np.dtype]]) -> None:
    """Raise :class:`DatasetError` unless ``given`` steps (``{key: (step shape, dtype)}``) have exactly the
    ``stored`` keys and step shapes, and dtypes that store without changing kind (no float images into uint8,
    no float timestamps into ints)."""
    missing, extra = sorted(set(stored) - set(given)), sorted(set(given) - set(stored))
    if missing or extra:
        raise DatasetError(f"keys differ from the dataset's {sorted(stored)}: missing {missing}, extra {extra}")
    for key, (shape, dtype) in given.items():
        if tuple(shape) != tuple(stored[key][0]):
            raise DatasetError(f"data/{key}: step shape {tuple(shape)} != stored {tuple(stored[key][0])}")
        if not np.can_cast(dtype, stored[key][1], casting="same_kind"):
            raise DatasetError(f"data/{key}: dtype {dtype} cannot be stored as {stored[key][1]}")


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

    def _check_schema(self, episode: dict[str, np.ndarray]) -> None:
        """An episode for a dataset that already has arrays must have exactly its keys, per-step shapes, and
        dtypes that store without changing kind (no float images into uint8, no float timestamps into ints)."""
        if not self.keys():
            return
        data = self.group["data"]
        check_steps({k: (data[k].shape[1:], data[k].dtype) for k in self.keys()},
                    {k: (v.shape[1:], v.dtype) for k, v in episode.items()})

    def add_episode(self, episode: dict[str, np.ndarray], chunk_steps: int = 1000) -> None:
        """Append one episode (same length for every key); commits ``episode_ends`` last. The episode is checked
        against the dataset's keys, shapes and dtypes (:class:`DatasetError`) before anything is written."""
        lengths = {k: len(v) for k, v in episode.items()}
        if len(set(lengths.values())) != 1:
            raise DatasetError(f"episode arrays differ in length: {lengths}")
        length = next(iter(lengths.values()))
        if length == 0:
            raise DatasetError("cannot add an empty episode")
        episode = {k: np.asarray(v) for k, v in episode.items()}
        self._check_schema(episode)
        start = self.n_steps
        data = self.group.require_group("data")
        for key, value in episode.items():
            if key not in data:
                data.create_array(key, shape=(0, *value.shape[1:]), dtype=value.dtype,
                                  chunks=(chunk_steps, *value.shape[1:]))
            arr = data[key]
            arr.resize((start + length, *arr.shape[1:]))
            arr[start : start + length] = value
        ends = np.append(self.episode_ends, start + length).astype(np.int64)
        meta = self.group.require_group("meta")
        if "episode_ends" in meta:
            meta["episode_ends"].resize(ends.shape)
            meta["episode_ends"][:] = ends
        else:
            meta.create_array("episode_ends", data=ends, chunks=(100_000,))
