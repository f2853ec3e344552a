from pathlib import Path

import numpy as np
import pytest
import zarr

from conftest import PUSHT_ZARR, write_episodes
from dp_core.config import ActionSpec, DataConfig, ObsSpec, PolicyConfig, ShapeMeta, UnetConfig
from dp_core.dataset import DatasetError, EpisodeStore, StepArrays, WindowDataset, build_datasets, split_episodes, window_indices


def test_windows_pad_by_repeating_edge_frames() -> None:
    # Episode 0 = rows 0..2, episode 1 = rows 3..7; horizon 4, To = 2 (pad 1 before), Ta = 3 (pad 2 after).
    idx = window_indices(np.array([3, 8]), np.array([0, 1]), horizon=4, pad_before=1, pad_after=2)
    expected = [
        [0, 0, 1, 2], [0, 1, 2, 2], [1, 2, 2, 2],
        [3, 3, 4, 5], [3, 4, 5, 6], [4, 5, 6, 7], [5, 6, 7, 7], [6, 7, 7, 7],
    ]
    assert idx.tolist() == expected
    only_second = window_indices(np.array([3, 8]), np.array([1]), 4, 1, 2)
    assert only_second.tolist() == expected[3:]


def _episodes(lengths: list[int]) -> list[dict[str, np.ndarray]]:
    out, t = [], 0
    for n in lengths:
        rows = np.arange(t, t + n, dtype=np.float32)
        out.append({"state": np.stack([rows, -rows], 1), "action": rows[:, None] * 10})
        t += n
    return out


def test_store_round_trip_is_zarr_v3_and_windows_gather_right_rows(tmp_path: Path) -> None:
    path = write_episodes(tmp_path / "d.zarr", _episodes([3, 5]))
    assert zarr.open_group(str(path), mode="r").metadata.zarr_format == 3
    store = EpisodeStore.open(path)
    assert store.episode_ends.tolist() == [3, 8] and store.n_steps == 8
    sm = ShapeMeta(obs={"pos": ObsSpec("low_dim", [1], source="state", columns=[0, 1])}, action=ActionSpec(1))
    arrays = StepArrays.load(store, sm)
    ds = WindowDataset(arrays, window_indices(store.episode_ends, np.array([0, 1]), 4, 1, 2), n_obs_steps=2)
    b = ds.batch(np.array([0, 3]))
    assert b["obs"]["pos"][:, :, 0].tolist() == [[0, 0], [3, 3]]
    assert b["action"][:, :, 0].tolist() == [[0, 0, 10, 20], [30, 30, 40, 50]]
    assert ds[4]["action"].shape == (4, 1)


def test_append_validates_and_reopen_appends(tmp_path: Path) -> None:
    path = write_episodes(tmp_path / "d.zarr", _episodes([3]))
    store = EpisodeStore.open(path, mode="a")
    with pytest.raises(DatasetError, match="differ in length"):
        store.add_episode({"state": np.zeros((2, 2)), "action": np.zeros((3, 1))})
    with pytest.raises(DatasetError, match=r"missing \['action'\], extra \[\]"):
        store.add_episode({"state": np.zeros((2, 2), np.float32)})
    with pytest.raises(DatasetError, match=r"missing \[\], extra \['timestamp'\]"):
        store.add_episode({**_episodes([2])[0], "timestamp": np.arange(2.0)})
    with pytest.raises(DatasetError, match="data/action: dtype float32 cannot be stored as int16"):
        bad = write_episodes(tmp_path / "int.zarr", [{"action": np.zeros((2, 1), np.int16)}])
        EpisodeStore.open(bad, mode="a").add_episode({"action": np.full((2, 1), 0.5, np.float32)})
    with pytest.raises(DatasetError, match="step shape"):
        store.add_episode({"state": np.zeros((2, 3), np.float32), "action": np.zeros((2, 1), np.float32)})
    # A failed append writes nothing: no new array, no rows, the committed episodes unchanged.
    reopened = EpisodeStore.open(path)
    assert reopened.episode_ends.tolist() == [3] and reopened.keys() == ["action", "state"]
    assert [zarr.open_group(str(path))[f"data/{k}"].shape[0] for k in ("action", "state")] == [3, 3]
    store.add_episode(_episodes([3, 2])[1])
    assert EpisodeStore.open(path).episode_ends.tolist() == [3, 5]


def test_uncommitted_rows_are_ignored(tmp_path: Path) -> None:
    path = write_episodes(tmp_path / "d.zarr", _episodes([3]))
    g = zarr.open_group(str(path), mode="a")
    g["data/state"].resize((10, 2))  # as if a writer died before committing episode_ends
    assert EpisodeStore.open(path).read("state").shape == (3, 2)


def test_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="not found"):
        EpisodeStore.open(tmp_path / "missing.zarr")
    path = write_episodes(tmp_path / "d.zarr", _episodes([3]))
    with pytest.raises(DatasetError, match="data/nope"):
        EpisodeStore.open(path).read("nope")
    zarr.open_group(str(tmp_path / "empty.zarr"), mode="w")
    with pytest.raises(DatasetError, match="missing 'data'"):
        EpisodeStore.open(tmp_path / "empty.zarr")


def test_split_is_by_episode_and_cap_applies() -> None:
    train, val = split_episodes(50, DataConfig(val_ratio=0.2, split_seed=3))
    assert len(val) == 10 and len(train) == 40 and not set(train) & set(val)
    capped, val2 = split_episodes(50, DataConfig(val_ratio=0.2, split_seed=3, max_train_episodes=5))
    assert len(capped) == 5 and set(capped) <= set(train) and val2.tolist() == val.tolist()


@pytest.mark.skipif(not PUSHT_ZARR.exists(), reason="shared Push-T demonstrations not present")
def test_reads_original_pusht_zarr_v2() -> None:
    sm = ShapeMeta(
        obs={
            "keypoint": ObsSpec("low_dim", [18], source="keypoint"),
            "agent_pos": ObsSpec("low_dim", [2], source="state", columns=[0, 2]),
        },
        action=ActionSpec(2),
    )
    train, val, arrays = build_datasets(DataConfig(path=str(PUSHT_ZARR), val_ratio=0.02), PolicyConfig(shape_meta=sm))
    assert arrays.action.shape == (25650, 2)
    # 206 episodes, each contributing length - 16 + 7 + 1 + 1 windows.
    assert len(train) + len(val) == 25650 - 206 * 7
    b = train.batch(np.arange(4))
    assert b["obs"]["keypoint"].shape == (4, 2, 18) and b["action"].shape == (4, 16, 2)


def test_windows_do_not_span_a_recording_gap(tmp_path: Path) -> None:
    # A recorder episode whose camera stalled: steps 0..9 at 0.1 s, then 0.6 s later steps 10..19.
    t = np.concatenate([0.1 * np.arange(10), 1.5 + 0.1 * np.arange(10)]) + 1.7e9
    pos = np.arange(20, dtype=np.float32)[:, None]
    episodes = [{"pos": pos, "action": pos, "timestamp": t}, {"pos": pos[:5], "action": pos[:5], "timestamp": t[:5]}]
    path = write_episodes(tmp_path / "d.zarr", episodes)
    sm = ShapeMeta(obs={"pos": ObsSpec("low_dim", [1], source="pos")}, action=ActionSpec(1, source="action"))
    cfg = PolicyConfig(shape_meta=sm, horizon=4, n_obs_steps=2, n_action_steps=2, unet=UnetConfig(down_dims=[8, 16]))
    train, _, _ = build_datasets(DataConfig(path=str(path), val_ratio=0.0), cfg)
    frames = train.indices
    assert len(frames) == 2 * (10 - 1) + (5 - 1)  # L - horizon + pad_before + pad_after + 1 per segment
    assert not np.any((frames.min(1) < 10) & (frames.max(1) >= 10))  # no window crosses the gap
    assert (frames == 10).any() and (frames == 9).any()  # both sides still train


def _one_key_meta(kind: str, shape: list[int]) -> ShapeMeta:
    return ShapeMeta(obs={"x": ObsSpec(kind, shape, source="x")}, action=ActionSpec(1, source="action"))


def test_non_finite_values_are_refused_with_their_step_and_episode(tmp_path: Path) -> None:
    """One NaN would make the normaliser's scale NaN and every weight after the first step."""
    episodes = [{"x": np.zeros((5, 2), np.float32), "action": np.zeros((5, 1), np.float32)} for _ in range(3)]
    episodes[1]["action"][3, 0] = np.nan
    episodes[2]["x"][0, 1] = np.inf
    store = EpisodeStore.open(write_episodes(tmp_path / "d.zarr", episodes))
    with pytest.raises(DatasetError, match=r"data/x: non-finite values at step 10 \(episode 2\)"):
        StepArrays.load(store, _one_key_meta("low_dim", [2]))
    with pytest.raises(DatasetError, match=r"data/action: non-finite values at step 8 \(episode 1\) and 0 more"):
        StepArrays.load(store, ShapeMeta(obs={}, action=ActionSpec(1, source="action")))


def test_float_images_must_be_on_the_0_255_scale(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    action = np.zeros((4, 1), np.float32)
    meta = _one_key_meta("rgb", [8, 8, 3])
    unit = rng.uniform(0, 1, (4, 8, 8, 3)).astype(np.float32)  # 0..1 floats: would all become 0
    store = EpisodeStore.open(write_episodes(tmp_path / "unit.zarr", [{"x": unit, "action": action}]))
    with pytest.raises(DatasetError, match=r"data/x: float images with values in \[0.*1\].*multiply by 255"):
        StepArrays.load(store, meta)
    scaled = unit * 255
    store = EpisodeStore.open(write_episodes(tmp_path / "ok.zarr", [{"x": scaled, "action": action}]))
    images = StepArrays.load(store, meta).obs["x"]
    assert images.dtype == np.uint8 and np.array_equal(images, np.rint(scaled).astype(np.uint8))  # rounded
    wide = scaled.copy()
    wide[0, 0, 0, 0] = 4000.0
    store = EpisodeStore.open(write_episodes(tmp_path / "wide.zarr", [{"x": wide, "action": action}]))
    with pytest.raises(DatasetError, match="outside 0-255"):
        StepArrays.load(store, meta)
