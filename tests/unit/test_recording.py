"""Crash-safe episode writer (SIGKILL of a real writer process) and the control-rate recorder."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import zarr

from dp_core.episode_store import DatasetError, EpisodeStore, committed_episode_ends
from dp_core.recording import EpisodeRecorder, EpisodeWriter, RecorderError, StreamSpec

REPO = Path(__file__).resolve().parents[2]


def step(episode: int, i: int) -> dict[str, np.ndarray]:
    """Deterministic content: every value tells which episode and step it belongs to."""
    v = episode * 1000 + i
    return {"obs": np.full(3, v, np.float32), "img": np.full((4, 4, 3), v % 251, np.uint8),
            "action": np.array([v, -v], np.float32)}


def check_episodes(path: Path, lengths: list[int]) -> None:
    store = EpisodeStore.open(path)
    assert store.episode_ends.tolist() == np.cumsum(lengths).tolist()
    obs = store.read("obs")
    start = 0
    for ep, n in enumerate(lengths):
        expected = np.stack([step(ep, i)["obs"] for i in range(n)])
        np.testing.assert_array_equal(obs[start : start + n], expected)
        start += n


def test_writer_commits_discards_and_reopens(tmp_path: Path) -> None:
    path = tmp_path / "demo.zarr"
    w = EpisodeWriter(path, chunk_steps=8, flush_steps=3)
    for ep, n in enumerate([5, 7]):
        w.begin()
        for i in range(n):
            w.append(step(ep, i))
        assert w.commit() == n
    w.begin()
    for i in range(10):
        w.append(step(2, i))
    assert w.discard() == 10
    assert zarr.open_group(str(path), mode="r")["data/obs"].shape[0] == 12  # flushed rows cut off again
    w.begin()
    w.append(step(2, 0))
    w.commit()
    check_episodes(path, [5, 7, 1])
    assert zarr.open_group(str(path), mode="r").metadata.zarr_format == 3
    # A restart appends.
    w2 = EpisodeWriter(path)
    assert (w2.n_episodes, w2.n_steps, w2.repaired_rows) == (3, 13, 0)
    w2.begin()
    w2.append(step(3, 0))
    w2.commit()
    check_episodes(path, [5, 7, 1, 1])


def test_writer_flushes_in_the_background_and_reports_a_failed_write(tmp_path: Path, monkeypatch) -> None:
    """A flush must not hold up the control-rate tick that triggers it; a write that fails surfaces at the
    commit, which then commits nothing."""
    import threading

    path = tmp_path / "demo.zarr"
    w = EpisodeWriter(path, chunk_steps=8, flush_steps=3)
    started, release = threading.Event(), threading.Event()
    write = EpisodeWriter._write

    def slow_write(self, start, steps):
        started.set()
        release.wait(10.0)
        write(self, start, steps)

    monkeypatch.setattr(EpisodeWriter, "_write", slow_write)
    w.begin()
    t0 = time.monotonic()
    for i in range(3):  # the third append flushes
        w.append(step(0, i))
    assert started.wait(5.0) and time.monotonic() - t0 < 5.0  # returned while the write waits
    release.set()
    w.append(step(0, 3))
    assert w.commit() == 4
    check_episodes(path, [4])

    def failing_write(self, start, steps):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(EpisodeWriter, "_write", failing_write)
    w.begin()
    for i in range(3):
        w.append(step(1, i))
    with pytest.raises(OSError, match="No space left"):
        w.commit()
    with pytest.raises(OSError, match="No space left"):  # still: the episode lacks those rows
        w.commit()
    assert w.discard() == 3
    check_episodes(path, [4])
    w.close()


def test_writer_rejects_mismatched_steps(tmp_path: Path) -> None:
    w = EpisodeWriter(tmp_path / "d.zarr")
    w.begin()
    w.append(step(0, 0))
    with pytest.raises(DatasetError, match=r"keys differ from the dataset.s \[.*\]: missing"):
        w.append({"obs": np.zeros(3, np.float32)})
    with pytest.raises(DatasetError, match="shape"):
        w.append({**step(0, 1), "obs": np.zeros(4, np.float32)})
    with pytest.raises(DatasetError, match="already in progress"):
        w.begin()
    w.discard()
    with pytest.raises(DatasetError, match="no episode in progress"):
        w.commit()


def test_readers_ignore_an_interrupted_commit(tmp_path: Path) -> None:
    assert committed_episode_ends(np.array([5, 9, 0])).tolist() == [5, 9]  # grown, value not yet written
    assert committed_episode_ends(np.array([0])).tolist() == []
    assert committed_episode_ends(np.array([10, 10, 20])).tolist() == [10, 10, 20]  # an empty episode is not damage
    with pytest.raises(DatasetError, match=r"decreases at entry 1 \(10 -> 5\)"):
        committed_episode_ends(np.array([10, 5, 20]))
    path = tmp_path / "d.zarr"
    w = EpisodeWriter(path, flush_steps=1)
    w.begin()
    for i in range(4):
        w.append(step(0, i))
    w.commit()
    w.begin()
    for i in range(3):
        w.append(step(1, i))
    w.flush()
    zarr.open_group(str(path), mode="a")["meta/episode_ends"].resize((2,))  # crash inside commit
    check_episodes(path, [4])
    w2 = EpisodeWriter(path)
    assert w2.episode_ends.tolist() == [4] and w2.repaired_rows == 3
    assert zarr.open_group(str(path), mode="r")["meta/episode_ends"].shape == (1,)


def test_writer_refuses_a_damaged_dataset(tmp_path: Path) -> None:
    path = tmp_path / "d.zarr"
    w = EpisodeWriter(path)
    w.begin()
    w.append(step(0, 0))
    w.append(step(0, 1))
    w.commit()
    zarr.open_group(str(path), mode="a")["data/obs"].resize((1, 3))
    with pytest.raises(DatasetError, match="data/obs has 1 rows but meta/episode_ends commits 2"):
        EpisodeWriter(path)


CHILD = textwrap.dedent("""
    import sys, time
    sys.path.insert(0, {src!r}); sys.path.insert(0, {tests!r})
    from test_recording import step
    from dp_core.recording import EpisodeWriter
    w = EpisodeWriter({path!r}, chunk_steps=16, flush_steps=4)
    ep = w.n_episodes
    print("START", ep, flush=True)
    while True:  # episodes of 5..25 steps, one after another, as fast as possible
        w.begin()
        for i in range(5 + (ep * 7) % 21):
            w.append(step(ep, i))
        w.commit()
        print("COMMITTED", ep, flush=True)
        ep += 1
        if {slow}:
            w.begin()
            for i in range(30):
                w.append(step(ep, i))
            w.sync()  # the flushes run in the background: the first 28 rows are on disk from here
            print("MIDEPISODE", flush=True)
            time.sleep(60)
""")


def run_child(path: Path, slow: bool) -> subprocess.Popen:
    code = CHILD.format(src=str(REPO / "src"), tests=str(REPO / "tests" / "unit"), path=str(path), slow=slow)
    return subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})


def lengths_up_to(n: int) -> list[int]:
    return [5 + (ep * 7) % 21 for ep in range(n)]


def test_sigkill_mid_episode_keeps_finished_episodes(tmp_path: Path) -> None:
    path = tmp_path / "demo.zarr"
    proc = run_child(path, slow=True)
    assert proc.stdout.readline().split() == ["START", "0"]
    assert proc.stdout.readline().split() == ["COMMITTED", "0"]
    assert proc.stdout.readline().strip() == "MIDEPISODE"  # 30 steps of episode 1 flushed, not committed
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
    assert zarr.open_group(str(path), mode="r")["data/obs"].shape[0] > lengths_up_to(1)[0]
    check_episodes(path, lengths_up_to(1))  # readable as it is
    w = EpisodeWriter(path)  # a restart repairs and appends
    assert w.repaired_rows >= 28
    w.begin()
    for i in range(lengths_up_to(2)[1]):
        w.append(step(1, i))
    w.commit()
    check_episodes(path, lengths_up_to(2))


@pytest.mark.slow
def test_sigkill_at_random_moments_never_damages_committed_episodes(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    path = tmp_path / "demo.zarr"
    committed = 0
    for _ in range(6):
        proc = run_child(path, slow=False)
        assert proc.stdout.readline().split() == ["START", str(committed)]
        time.sleep(rng.uniform(0.2, 1.0))
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        store = EpisodeStore.open(path)
        # Everything reported committed is there (one more may have committed after the last report).
        assert store.n_episodes >= committed
        committed = store.n_episodes
        check_episodes(path, lengths_up_to(committed))
    assert committed >= 6


class Clock:
    def __init__(self) -> None:
        self.t = 100.0


def make_recorder(path: Path, video_dir: Path | None = None) -> EpisodeRecorder:
    streams = [StreamSpec("keypoint", "low_dim", dim=4), StreamSpec("img", "image", image_size=(8, 6))]
    return EpisodeRecorder(EpisodeWriter(path), streams, action_dim=2, dt=0.1, max_age_s=0.25, video_dir=video_dir)


def feed(rec: EpisodeRecorder, t: float, k: float) -> None:
    rec.observe("keypoint", np.full(4, k), t)
    rec.observe("img", np.full((16, 12, 3), int(k) % 256, np.uint8), t)
    rec.command(np.array([k, k + 0.5]), t)


def test_recorder_samples_steps_with_the_target_due_one_step_later(tmp_path: Path) -> None:
    rec = make_recorder(tmp_path / "r.zarr")
    with pytest.raises(RecorderError, match="keypoint, img, action"):
        rec.start(0.0)
    feed(rec, 0.01, 0)
    assert rec.start(0.01) == 0
    for k in range(1, 6):  # ticks at k * 0.1 s sample the inputs fed just before
        rec.tick(k * 0.1)
        feed(rec, k * 0.1 + 0.01, k)
    summary = rec.stop(0.6)
    assert (summary.index, summary.steps, summary.dropped_steps) == (0, 5, 0)
    store = EpisodeStore.open(tmp_path / "r.zarr")
    assert store.keys() == ["action", "img", "keypoint", "timestamp"]
    np.testing.assert_array_equal(store.read("keypoint")[:, 0], [0, 1, 2, 3, 4])
    np.testing.assert_array_equal(store.read("action")[:, 0], [1, 2, 3, 4, 5])  # due 0.1 s after each step's samples
    assert store.read("img").shape == (5, 8, 6, 3)
    np.testing.assert_allclose(store.read("timestamp"), [0.1, 0.2, 0.3, 0.4, 0.5])


def test_recorder_pairs_each_image_with_the_state_of_its_capture_time(tmp_path: Path) -> None:
    """A camera frame arrives 60 ms after its capture, the state at once: the step holds the state stamped at
    or before the frame (as the policy node's ObsBuffer pairs them), not the newest one."""
    rec = make_recorder(tmp_path / "r.zarr")
    latency = 0.06
    t, frame = 0.0, 0
    rec.command(np.zeros(2), 0.0)
    steps_at = [0.3, 0.4, 0.5, 0.6]
    while t < 0.65:  # state (keypoint = its own stamp) at 125 Hz; frames (value = frame number) at 30 Hz
        rec.observe("keypoint", np.full(4, t), t)
        if frame / 30 + latency <= t + 1e-9:
            rec.observe("img", np.full((16, 12, 3), frame, np.uint8), frame / 30)
            frame += 1
        rec.command(np.array([t + 0.02, t + 0.02]), t + 0.02)  # teleop stamps a target 20 ms ahead: its due time
        if t >= 0.1 and not rec.recording:
            rec.start(t)
        if steps_at and t >= steps_at[0] - 1e-9:
            rec.tick(t)
            steps_at.pop(0)
        t = round(t + 0.008, 6)
    rec.stop(0.65)
    store = EpisodeStore.open(tmp_path / "r.zarr")
    image_ms = store.read("img")[:, 0, 0, 0].astype(float) * 1000 / 30  # capture time of each step's frame
    state_ms = store.read("keypoint")[:, 0] * 1000
    assert len(image_ms) >= 3
    assert np.all(state_ms <= image_ms + 1e-6) and np.all(image_ms - state_ms < 8.0 + 1e-6)  # one state period
    # The action is the target due one step after the frame's capture (as the executor will run it and
    # dp-bag2zarr labels it), not the newest target at the next tick (about 0.18 s after the capture here).
    np.testing.assert_allclose(store.read("action")[:, 0] * 1000, image_ms + 100.0, atol=1e-3)


def test_recorder_stores_its_period_and_refuses_another(tmp_path: Path) -> None:
    path = tmp_path / "r.zarr"
    rec = make_recorder(path)  # dt 0.1
    feed(rec, 0.0, 0)
    rec.start(0.0)
    rec.tick(0.1)
    feed(rec, 0.1, 1)
    rec.stop(0.2)
    assert zarr.open_group(str(path), mode="r").attrs["control_dt"] == 0.1
    fast = EpisodeRecorder(EpisodeWriter(path), [StreamSpec("keypoint", "low_dim", dim=4), StreamSpec("img", "image", image_size=(8, 6))],
                           action_dim=2, dt=0.05, max_age_s=0.25)
    feed(fast, 1.0, 2)
    with pytest.raises(RecorderError, match=r"were recorded every 0.1 s \(10 Hz\), not every 0.05 s"):
        fast.start(1.0)


def test_recorder_refuses_samples_stamped_in_the_future(tmp_path: Path) -> None:
    """One sample stamped far ahead would block every later step (its stream never aligns) while the inputs
    looked fresh: it is refused when the recorder is told the time, and reported stale otherwise."""
    rec = make_recorder(tmp_path / "r.zarr")
    feed(rec, 0.0, 0)
    with pytest.raises(ValueError, match="in the future"):
        rec.observe("keypoint", np.zeros(4), 100.0, now=0.0)
    assert rec.stale_inputs(0.05) == []
    rec.command(np.zeros(2), 100.0)
    assert rec.stale_inputs(0.05) == ["action"]
    with pytest.raises(RecorderError, match="no recent data .* from action"):
        rec.start(0.05)


def test_recorder_drops_stale_steps_and_discards(tmp_path: Path) -> None:
    rec = make_recorder(tmp_path / "r.zarr")
    feed(rec, 0.0, 0)
    rec.start(0.0)
    rec.tick(0.1)
    rec.observe("keypoint", np.full(4, 1.0), 0.15)
    rec.command(np.array([1.0, 1.0]), 0.15)
    rec.tick(0.3)  # image last seen at 0.0: stale, step dropped; the 0.1 step gets its action
    feed(rec, 0.35, 2)
    rec.tick(0.4)
    summary = rec.stop(0.45)
    assert summary.steps == 2 and summary.dropped_steps == 1 and summary.stale == {"img": 1}
    with pytest.raises(RecorderError, match="nothing to stop"):
        rec.stop(0.5)
    feed(rec, 0.5, 3)
    rec.start(0.5)
    with pytest.raises(RecorderError, match="already recording"):
        rec.start(0.5)
    rec.tick(0.6)
    rec.tick(0.65)
    assert rec.discard() == 1
    assert EpisodeStore.open(tmp_path / "r.zarr").episode_ends.tolist() == [2]
    with pytest.raises(ValueError, match="4 finite"):
        rec.observe("keypoint", np.zeros(3), 1.0)


def test_recorder_keeps_videos_of_committed_episodes_only(tmp_path: Path) -> None:
    videos = tmp_path / "videos"
    rec = make_recorder(tmp_path / "r.zarr", video_dir=videos)
    for attempt in range(2):
        t0 = attempt * 1.0
        feed(rec, t0, 0)
        rec.start(t0)
        for k in range(1, 4):
            rec.tick(t0 + k * 0.1)
            feed(rec, t0 + k * 0.1, k)
        if attempt == 0:
            rec.discard()
        else:
            summary = rec.stop(t0 + 0.4)
    assert summary.videos == [videos / "episode_000000" / "img.mp4"]
    assert summary.videos[0].stat().st_size > 0
    assert sorted(p.name for p in videos.iterdir()) == ["episode_000000"]


def test_recorder_refuses_a_dataset_with_other_keys(tmp_path: Path) -> None:
    w = EpisodeWriter(tmp_path / "r.zarr")
    w.begin()
    w.append({"other": np.zeros(2, np.float32)})
    w.commit()
    with pytest.raises(RecorderError, match="holds keys"):
        make_recorder(tmp_path / "r.zarr")


def test_recorder_stores_its_cameras_and_refuses_other_ones(tmp_path: Path) -> None:
    """Native frame size and serial go with the dataset; a later episode from another camera is refused."""
    path = tmp_path / "r.zarr"
    rec = make_recorder(path)
    with pytest.raises(ValueError, match="not an image stream"):
        rec.set_serial("keypoint", "1")
    feed(rec, 0.0, 0)  # 16 x 12 frames, stored at 8 x 6
    rec.start(0.0)
    rec.tick(0.1)
    feed(rec, 0.11, 1)
    rec.stop(0.2)
    assert zarr.open_group(str(path), mode="r").attrs["cameras"] == {"img": {"height": 16, "width": 12, "serial": ""}}
    rec = make_recorder(path)  # a restart, now with the camera node's serial: filled in at the next commit
    rec.set_serial("img", "123")
    feed(rec, 1.0, 2)
    rec.start(1.0)
    rec.tick(1.1)
    feed(rec, 1.11, 3)
    rec.stop(1.2)
    assert zarr.open_group(str(path), mode="r").attrs["cameras"]["img"]["serial"] == "123"
    rec = make_recorder(path)  # restarted: the camera node has not named the serial yet
    feed(rec, 2.0, 4)
    with pytest.raises(RecorderError, match="serial is not known yet"):
        rec.start(2.0)
    rec.set_serial("img", "456")  # the other camera on this stream
    feed(rec, 2.0, 4)
    with pytest.raises(RecorderError, match="img: camera serial 456, recorded from 123"):
        rec.start(2.0)
    rec = make_recorder(path)  # restarted with the camera at another resolution
    rec.observe("keypoint", np.zeros(4), 2.0)
    rec.observe("img", np.zeros((18, 12, 3), np.uint8), 2.0)
    rec.command(np.zeros(2), 2.0)
    with pytest.raises(RecorderError, match="img: frames are 18x12, recorded at 16x12"):
        rec.start(2.0)
    assert EpisodeStore.open(path).n_episodes == 2


def test_videos_hold_exactly_the_recorded_steps(tmp_path: Path) -> None:
    import imageio.v2 as imageio

    rec = EpisodeRecorder(EpisodeWriter(tmp_path / "r.zarr"), [StreamSpec("img", "image"), StreamSpec("pos", "low_dim", dim=2)],
                          action_dim=2, dt=0.1, max_age_s=0.25, video_dir=tmp_path / "v")
    for k in range(11):
        t = k * 0.1
        rec.observe("img", np.full((32, 32, 3), 20 * k, np.uint8), t)
        rec.observe("pos", [k, k], t)
        if k < 3 or k > 6:  # the teleop command pauses: two steps lose their action and are dropped
            rec.command([k, k], t)
        if k == 0:
            rec.start(t)
        rec.tick(t)
    summary = rec.stop(1.1)
    stored = (EpisodeStore.open(tmp_path / "r.zarr").read("img")[:, 0, 0, 0] // 20).tolist()
    in_video = [round(frame[..., 0].mean() / 20) for frame in imageio.mimread(summary.videos[0])]
    assert summary.dropped_steps == 2 and in_video == stored == [0, 1, 2, 3, 6, 7, 8, 9, 10]


def test_a_writer_keeps_a_dataset_with_an_empty_episode(tmp_path: Path) -> None:
    path = tmp_path / "d.zarr"
    store = EpisodeStore.open(path, mode="a")
    for _ in range(2):
        store.add_episode({"action": np.zeros((10, 1), np.float32)})
    meta = zarr.open_group(str(path), mode="a")["meta/episode_ends"]
    meta.resize((3,))
    meta[:] = [10, 10, 20]  # as another tool may write: episode 1 empty
    EpisodeWriter(path).close()  # opening repairs interrupted commits only
    store = EpisodeStore.open(path)
    assert store.episode_ends.tolist() == [10, 10, 20] and store.read("action").shape == (20, 1)
