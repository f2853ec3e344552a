import numpy as np
import pytest

from dp_core.control import ObsBuffer, RefusalKind

# 30 Hz camera (nominal k/30 s) with jitter within +-5 ms, and a 125 Hz robot (k * 8 ms).
CAMERA = [0.000, 0.036, 0.064, 0.101, 0.129, 0.170, 0.198, 0.233]
ROBOT = [round(0.008 * k, 3) for k in range(31)]  # 0.000 .. 0.240


def frame(stamp: float) -> np.ndarray:
    return np.full((4, 4, 3), stamp, np.float32)


def filled(camera: list[float], robot: list[float], **kw) -> ObsBuffer:
    kw = {"n_obs_steps": 2, "dt": 0.1, "max_age": 0.1} | kw
    buf = ObsBuffer(["camera", "robot"], **kw)
    for t in camera:
        buf.add("camera", t, frame(t))
    for t in robot:
        buf.add("robot", t, np.array([t, -t]))
    return buf


def test_aligns_jittered_streams_on_the_dt_grid() -> None:
    obs = filled(CAMERA, ROBOT).get(now=0.25)
    assert obs is not None
    # t0 = min(0.233, 0.240) = 0.233; targets 0.133 and 0.233; last sample at or before each.
    assert obs.stamp == pytest.approx(0.233)
    assert obs.sample_stamps["camera"] == pytest.approx([0.129, 0.233])
    assert obs.sample_stamps["robot"] == pytest.approx([0.128, 0.232])
    assert obs.values["camera"].shape == (2, 4, 4, 3)
    assert obs.values["camera"][:, 0, 0, 0] == pytest.approx([0.129, 0.233])
    np.testing.assert_allclose(obs.values["robot"], [[0.128, -0.128], [0.232, -0.232]])


def test_dropped_frames_reuse_the_last_earlier_frame() -> None:
    camera = [0.0, 0.033, 0.167, 0.2]  # 0.067, 0.1 and 0.133 dropped
    buf = filled(camera, ROBOT[:27], n_obs_steps=3)  # robot up to 0.208
    obs = buf.get(now=0.21)
    assert obs is not None and obs.stamp == pytest.approx(0.2)
    # targets 0.0, 0.1, 0.2
    assert obs.sample_stamps["camera"] == pytest.approx([0.0, 0.033, 0.2])
    assert obs.sample_stamps["robot"] == pytest.approx([0.0, 0.096, 0.2])


def test_out_of_order_and_duplicate_samples() -> None:
    rng = np.random.default_rng(0)
    buf = filled(CAMERA, [ROBOT[i] for i in rng.permutation(len(ROBOT))])
    assert buf.stamps("robot") == ROBOT
    buf.add("robot", 0.232, np.array([9.0, 9.0]))  # same stamp: replaces
    assert buf.stamps("robot") == ROBOT
    obs = buf.get(now=0.25)
    assert obs is not None
    assert obs.sample_stamps["robot"] == pytest.approx([0.128, 0.232])
    assert obs.values["robot"][1].tolist() == [9.0, 9.0]


def test_stale_stream_is_named() -> None:
    buf = filled([0.0, 0.033, 0.067, 0.1], [0.0, 0.1, 0.2, 0.3, 0.4, 0.5], max_age=0.2)
    assert buf.get(now=0.5) is None
    r = buf.refusal
    assert r is not None and r.kind is RefusalKind.STALE and r.stream == "camera"
    assert r.seconds == pytest.approx(0.4)
    assert "camera" in r.message and "0.400 s" in r.message
    buf.add("camera", 0.4, frame(0.4))
    assert buf.get(now=0.5) is not None and buf.refusal is None


def test_empty_stream_refuses() -> None:
    buf = filled([], ROBOT)
    assert buf.get(now=0.25) is None
    assert buf.refusal is not None and buf.refusal.kind is RefusalKind.EMPTY and buf.refusal.stream == "camera"
    assert "camera" in buf.refusal.message


def test_short_history_uses_oldest_sample_only_within_half_dt() -> None:
    buf = filled([0.2], ROBOT[:26])  # robot up to 0.2; targets 0.1 and 0.2
    assert buf.get(now=0.2) is None
    assert buf.refusal.kind is RefusalKind.NO_HISTORY and buf.refusal.stream == "camera"
    assert buf.refusal.seconds == pytest.approx(0.1)
    buf.add("camera", 0.14, frame(0.14))  # 40 ms after the 0.1 target: close enough
    obs = buf.get(now=0.2)
    assert obs is not None and obs.sample_stamps["camera"] == pytest.approx([0.14, 0.2])


def test_capacity_keeps_the_newest_samples() -> None:
    buf = ObsBuffer(["robot"], n_obs_steps=2, dt=0.1, max_age=1.0, capacity=8)
    for k in range(20):
        buf.add("robot", 0.01 * k, np.zeros(2))
    expected = [0.01 * k for k in range(12, 20)]
    assert buf.stamps("robot") == expected
    buf.add("robot", 0.005, np.zeros(2))  # older than everything held: inserted then evicted
    assert buf.stamps("robot") == expected


def test_bad_input() -> None:
    buf = ObsBuffer(["robot"], n_obs_steps=2, dt=0.1, max_age=1.0)
    with pytest.raises(KeyError, match="unknown stream 'camera'"):
        buf.add("camera", 0.0, np.zeros(2))
    with pytest.raises(ValueError, match="finite"):
        buf.add("robot", float("nan"), np.zeros(2))
    buf.add("robot", 0.0, np.zeros(2))
    with pytest.raises(ValueError, match="shape"):
        buf.add("robot", 0.1, np.zeros(3))
    with pytest.raises(ValueError, match="unique"):
        ObsBuffer(["a", "a"], n_obs_steps=2, dt=0.1, max_age=1.0)


def test_samples_stamped_in_the_future() -> None:
    buf = filled(CAMERA, ROBOT)
    assert buf.get(0.24) is not None
    # Told the time, add refuses a stamp more than max_age ahead: one bad frame cannot push the history out.
    with pytest.raises(ValueError, match="in the future"):
        buf.add("camera", 3600.0, frame(0.0), now=0.24)
    buf.add("camera", 0.24 + 0.1, frame(0.34), now=0.24)  # within max_age: accepted
    assert buf.stamps("camera")[-1] == pytest.approx(0.34)
    # Without the time, get refuses while a stream's newest sample lies that far ahead.
    buf.add("robot", 50.0, np.array([0.0, 0.0]))
    assert buf.get(0.26) is None
    assert buf.refusal.kind is RefusalKind.FUTURE and buf.refusal.stream == "robot"
    assert "in the future" in buf.refusal.message


def test_alignment_at_clock_time_stamps() -> None:
    # Real stamps are clock times (~1.7e9 s, float64 resolution ~2.4e-7 s): a sample stamped exactly on a
    # grid time t0 - k * dt must be taken, not the one before it (1e-9 s of tolerance missed 20 % of them).
    def seconds(ns: int) -> float:
        sec, nanosec = divmod(ns, 10**9)
        return sec + nanosec * 1e-9  # as msg_fields.stamp_seconds

    misaligned = 0
    for i in range(200):
        base = 1_761_000_000 * 10**9 + i * 7_340_000
        buf = ObsBuffer(["camera", "state"], n_obs_steps=3, dt=0.1, max_age=1.0)
        for k in range(-3, 3):
            buf.add("camera", seconds(base + k * 100_000_000), np.array([k]))
        for j in range(-15, 11):
            buf.add("state", seconds(base + j * 20_000_000), np.array([j]))
        obs = buf.get(now=seconds(base + 200_000_000))
        misaligned += (obs.values["camera"][:, 0].tolist(), obs.values["state"][:, 0].tolist()) != ([0, 1, 2], [0, 5, 10])
    assert misaligned == 0


def test_fast_streams_keep_the_history_a_window_needs() -> None:
    # A 500 Hz robot state beside a camera 60 ms behind it: the window ends at the camera's newest frame and
    # its oldest step needs robot samples from 0.16 s before the robot's newest one (64 samples were 0.128 s).
    buf = ObsBuffer(["camera", "robot"], n_obs_steps=3, dt=0.1, max_age=0.25)
    for k in range(31):
        buf.add("camera", 0.1 * k - 0.06 + 1e-4, np.array([k]))
    for j in range(1501):
        buf.add("robot", 0.002 * j, np.array([j]))
    obs = buf.get(now=3.0)
    assert obs is not None and obs.sample_stamps["robot"][0] == pytest.approx(2.74, abs=1e-3)
    assert len(buf.stamps("robot")) <= (0.2 + 0.25 + 0.1) / 0.002 + 2  # and no more than the window


def test_newest_stamp() -> None:
    buf = ObsBuffer(["a", "b"], n_obs_steps=2, dt=0.1, max_age=0.25)
    assert buf.newest_stamp("a") is None
    buf.add("a", 1.0, np.zeros(1))
    buf.add("a", 0.9, np.zeros(1))  # out of order: the newest stays the newest
    assert buf.newest_stamp("a") == 1.0 and buf.newest_stamp("b") is None
