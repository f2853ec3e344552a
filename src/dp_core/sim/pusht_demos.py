"""The human Push-T demonstrations as scripts: the commanded targets of one recorded episode.

Episode ``i`` of ``pusht_cchi_v7_replay.zarr`` starts from the state that seed ``i`` gives
(:meth:`dp_core.sim.pusht.PushTEnv.reset`), so playing its actions at 10 Hz in a cell reset with seed
``i`` re-enacts the demonstration (closely, not exactly: a real-time cell adds timing jitter).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..episode_store import DatasetError, EpisodeStore


def demo_actions(path: str | Path, episode: int) -> np.ndarray:
    """``(T, 2)`` agent targets (pixels) of demonstration ``episode``."""
    store = EpisodeStore.open(path)
    if not 0 <= episode < store.n_episodes:
        raise DatasetError(f"{path}: episode {episode} out of range (0..{store.n_episodes - 1})")
    ends = store.episode_ends
    start = int(ends[episode - 1]) if episode else 0
    actions = store.read("action", stop=int(ends[episode]))[start:]
    if actions.ndim != 2 or actions.shape[1] != 2:
        raise DatasetError(f"{path}: data/action has shape {actions.shape}, expected (N, 2) Push-T targets")
    return actions.astype(np.float64)
