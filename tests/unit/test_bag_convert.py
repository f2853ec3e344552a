"""Bag -> zarr dataset: timestamp alignment, episode splitting, errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from conftest import REPO, agent_xy, write_cell_bag
from dp_core.bag_convert import convert_bag, load_conversion_config, main, sample_index
from dp_core.control.stamps import interpolate
from dp_core.bag_io import BagError
from dp_core.config import ConfigError, ObsSpec, ShapeMeta
from dp_core.dataset import EpisodeStore, StepArrays

CONFIG = REPO / "config" / "bag_pusht_sim.yaml"


def test_sample_index_and_interpolation() -> None:
    stamps = np.array([0.0, 0.1, 0.2, 0.5])
    assert sample_index(stamps, np.array([-0.1, 0.0, 0.15, 0.2 - 1e-12, 0.7])).tolist() == [-1, 0, 1, 2, 3]
    values = np.array([[0.0], [1.0], [2.0], [5.0]])
    out, ok = interpolate(stamps, values, np.array([0.05, 0.2, 0.3, 0.6, -0.01]), max_gap=0.25)
    assert ok.tolist() == [True, True, False, False, False]  # 0.3 lies in a 0.3 s gap; 0.6 and -0.01 outside
    assert out[:2, 0] == pytest.approx([0.5, 2.0])


def test_sample_index_at_clock_time_stamps() -> None:
    # 50 Hz samples stamped exactly on a 0.1 s grid at clock times (~1.7e9 s): each grid time takes its own sample.
    base = 1_712_345_679_123_456_789
    ns = base + 20_000_000 * np.arange(300)
    stamps = ns // 10**9 + (ns % 10**9) * 1e-9
    times = stamps[0] + 0.1 * np.arange(60)
    assert sample_index(stamps, times).tolist() == list(range(0, 300, 5))


@pytest.mark.parametrize("storage", ["mcap", "sqlite3"])
def test_cell_bag_to_dataset(tmp_path: Path, storage: str) -> None:
    bag = write_cell_bag(tmp_path / "bag", seconds=6.0, gap=(3.0, 3.5), storage=storage)
    cfg = load_conversion_config(CONFIG, ["streams.img.shape=[8,8,3]"])
    store = EpisodeStore.open(tmp_path / "out.zarr", mode="a")
    report = convert_bag(bag, store, cfg, progress=False)
    # 61 steps on the 0.1 s grid; at 3.3 and 3.4 s the agent pose is older than 0.25 s: two episodes
    assert (report.steps, report.kept, report.episodes) == (61, 59, [33, 26])
    assert report.dropped == {"stale keypoint": 2}
    store = EpisodeStore.open(tmp_path / "out.zarr")
    assert store.keys() == ["action", "img", "keypoint", "state", "timestamp"]
    t = store.read("timestamp") - 1000.0
    assert t[:3] == pytest.approx([0.0, 0.1, 0.2]) and t[33] == pytest.approx(3.5)
    # As the policy node: a step's observation time is the oldest of the streams' newest stamps (2.98 s, the
    # last agent pose, during the gap), every stream gives its last sample at or before it, and the action is
    # the pose due one step after it.
    def last(stamps: np.ndarray, times: np.ndarray) -> np.ndarray:
        return stamps[np.searchsorted(stamps, times + 1e-9) - 1]

    poses = np.array([i / 50 for i in range(301) if not 3.0 <= i / 50 < 3.5])
    frames = np.arange(121) / 20
    obs_t = np.minimum(last(poses, t), last(frames, t))
    assert obs_t[30:33] == pytest.approx([2.98] * 3) and obs_t[:30] == pytest.approx(t[:30])
    np.testing.assert_allclose(store.read("state"), np.array([agent_xy(x) for x in last(poses, obs_t)]), atol=1e-3)
    np.testing.assert_allclose(store.read("action"), np.array([agent_xy(x + 0.1) for x in obs_t]), atol=1e-3)
    keypoint = store.read("keypoint").reshape(-1, 9, 2)
    np.testing.assert_allclose(keypoint[:, 3], store.read("state") + [3, -3], atol=1e-3)
    img = store.read("img")
    assert img.shape == (59, 8, 8, 3) and img.dtype == np.uint8
    assert img[:, 0, 0, 0].tolist() == [round(x * 20) % 256 for x in last(frames, obs_t)]  # frame i is filled with i
    # the training code reads it with the Push-T configs' observation mapping
    meta = ShapeMeta(obs={"keypoint": ObsSpec("low_dim", [18]), "agent_pos": ObsSpec("low_dim", [2], "state", [0, 2]),
                          "image": ObsSpec("rgb", [8, 8, 3], "img")})
    arrays = StepArrays.load(store, meta)
    assert arrays.action.shape == (59, 2) and arrays.obs["image"].shape == (59, 8, 8, 3)
    assert store.group.attrs["control_dt"] == pytest.approx(0.1)  # the grid's period, for training to carry on
    # Appending on another grid would mix periods in one dataset: refused, nothing written
    with pytest.raises(BagError, match=r"recorded every 0.1 s \(10 Hz\), not every 0.05 s"):
        convert_bag(bag, EpisodeStore.open(tmp_path / "out.zarr", mode="a"), load_conversion_config(CONFIG, ["dt=0.05"]),
                    progress=False)
    assert EpisodeStore.open(tmp_path / "out.zarr").n_steps == 59


def test_cli_appends_and_reports_errors(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    bag = write_cell_bag(tmp_path / "bag", seconds=3.0)
    out = tmp_path / "out.zarr"
    assert main([str(bag), "-o", str(out), "--config", str(CONFIG)]) == 0
    assert EpisodeStore.open(out).n_episodes == 1
    assert main([str(bag), "-o", str(out), "--config", str(CONFIG)]) == 1
    assert "exists; pass --append" in capsys.readouterr().err
    assert main([str(bag), "-o", str(out), "--config", str(CONFIG), "--append"]) == 0
    assert EpisodeStore.open(out).n_episodes == 2
    # a bag without the action topic: clear error, and no empty dataset left behind
    new = tmp_path / "new.zarr"
    assert main([str(bag), "-o", str(new), "--config", str(CONFIG), "action.topic=/nope"]) == 1
    err = capsys.readouterr().err
    assert "dp-bag2zarr: error: " in err and "/nope" in err and "not in the bag" in err and not new.exists()
    assert "Traceback" not in err
    assert main([str(tmp_path / "missing"), "-o", str(new), "--config", str(CONFIG)]) == 1
    assert "bag not found" in capsys.readouterr().err


def test_config_errors_name_the_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="streams.state.dimm"):
        load_conversion_config(CONFIG, ["streams.state.dimm=2"])
    with pytest.raises(ConfigError, match="streams: at least one"):
        load_conversion_config(CONFIG, ["streams={}"])
    with pytest.raises(ConfigError, match=r"streams.img.shape must be \[H, W, 3\]"):
        load_conversion_config(CONFIG, ["streams.img.shape=[8,8]"])


def test_no_aligned_steps_and_wrong_types(tmp_path: Path) -> None:
    bag = write_cell_bag(tmp_path / "bag", seconds=1.0)
    store = EpisodeStore.open(tmp_path / "out.zarr", mode="a")
    with pytest.raises(BagError, match=r"no run of >= 16 aligned steps among 11"):
        convert_bag(bag, store, load_conversion_config(CONFIG), progress=False)
    with pytest.raises(BagError, match="has type sensor_msgs/msg/Image, expected one of"):
        convert_bag(bag, store, load_conversion_config(CONFIG, ["streams.state.topic=/camera_0/color/image_raw"]),
                    progress=False)
    with pytest.raises(BagError, match="PoseArray of 9 poses cannot give 5 values"):
        convert_bag(bag, store, load_conversion_config(CONFIG, ["streams.keypoint.dim=5", "min_episode_steps=2"]),
                    progress=False)
    assert store.n_episodes == 0


def test_cameras_are_recorded_and_other_cameras_refused(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """As the demonstration recorder: each image key's native size and serial (from the camera node's
    /diagnostics in the bag) go into the dataset's ``cameras``; a bag from other cameras is not appended."""
    from dp_core.camera_sources import ATTRIBUTE, CameraSource, read_cameras

    out = tmp_path / "out.zarr"

    def cameras() -> dict[str, CameraSource]:
        return read_cameras(EpisodeStore.open(out).group.attrs.get(ATTRIBUTE))

    def episodes() -> int:
        return EpisodeStore.open(out).n_episodes

    bag = write_cell_bag(tmp_path / "a", seconds=3.0, serials=["817612070123"])
    assert main([str(bag), "-o", str(out), "--config", str(CONFIG)]) == 0
    assert "'img': camera 16x16, serial 817612070123" in capsys.readouterr().out
    assert cameras() == {"img": CameraSource(16, 16, "817612070123")}
    assert main([str(bag), "-o", str(out), "--config", str(CONFIG), "--append"]) == 0 and episodes() == 2
    refusals = {
        "other": (write_cell_bag(tmp_path / "b", seconds=3.0, serials=["999"]), "camera serial 999, recorded from 817612070123"),
        "unnamed": (write_cell_bag(tmp_path / "c", seconds=3.0), "this bag names no serial for it"),
        "size": (write_cell_bag(tmp_path / "d", seconds=3.0, image_size=20, serials=["817612070123"]),
                 "frames are 20x20, recorded at 16x16"),
    }
    for name, (other, why) in refusals.items():
        assert main([str(other), "-o", str(out), "--config", str(CONFIG), "--append"]) == 1, name
        err = capsys.readouterr().err
        assert why in err and "convert into a new dataset" in err, err
        assert episodes() == 2 and cameras() == {"img": CameraSource(16, 16, "817612070123")}
    # without /diagnostics the serial stays unknown (the size is still checked), and the CLI says so
    new = tmp_path / "new.zarr"
    assert main([str(refusals["unnamed"][0]), "-o", str(new), "--config", str(CONFIG)]) == 0
    assert "serial unknown" in capsys.readouterr().out
    assert read_cameras(EpisodeStore.open(new).group.attrs.get(ATTRIBUTE)) == {"img": CameraSource(16, 16, "")}
    swapped = write_cell_bag(tmp_path / "e", seconds=3.0, serials=["111", "222"])
    with pytest.raises(BagError, match=r"camera_0 was named as cameras \['111', '222'\]"):
        convert_bag(swapped, EpisodeStore.open(tmp_path / "x.zarr", mode="a"), load_conversion_config(CONFIG), progress=False)
