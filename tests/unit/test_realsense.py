"""MultiRealsense against a fake pyrealsense2 module: timestamps, failure isolation, retry, shutdown."""

from __future__ import annotations

import enum
import threading
import time
from types import SimpleNamespace

import numpy as np
import pytest

from dp_core.drivers.realsense import CameraIntrinsics, CameraState, CameraStatus, HostClockMapper, MultiRealsense

W, H = 8, 6


class TimestampDomain(enum.Enum):
    hardware_clock = 0
    system_time = 1
    global_time = 2


class FakeDevice:
    """One camera: produces a frame every ``period`` s; ``plugged`` False makes it fail like an unplug."""

    def __init__(self, serial: str, t0_ms: float, period: float = 0.005) -> None:
        self.serial, self.t0_ms, self.period = serial, t0_ms, period
        self.plugged = True
        self.count = 0
        self.starts = 0
        self.global_time_enabled = 0.0
        self.lock = threading.Lock()


class FakeFrame:
    def __init__(self, data: np.ndarray, stamp_ms: float, domain: TimestampDomain) -> None:
        self._data, self._stamp_ms, self._domain = data, stamp_ms, domain

    def get_data(self) -> np.ndarray:
        return self._data

    def get_timestamp(self) -> float:
        return self._stamp_ms

    def get_frame_timestamp_domain(self) -> TimestampDomain:
        return self._domain


def make_fake_rs(devices: dict[str, FakeDevice], domain: TimestampDomain = TimestampDomain.global_time):
    """A stand-in for the pyrealsense2 module, exposing exactly what MultiRealsense uses."""

    class Sensor:
        def __init__(self, device: FakeDevice) -> None:
            self.device = device

        def supports(self, option: str) -> bool:
            return option == "global_time_enabled"

        def set_option(self, option: str, value: float) -> None:
            self.device.global_time_enabled = value

    class Config:
        def __init__(self) -> None:
            self.serial: str | None = None
            self.streams: list[tuple] = []

        def enable_device(self, serial: str) -> None:
            self.serial = serial

        def enable_stream(self, *args: object) -> None:
            self.streams.append(args)

    class Pipeline:
        def __init__(self) -> None:
            self.device: FakeDevice | None = None
            self.depth = False

        def start(self, config: Config) -> SimpleNamespace:
            device = devices.get(config.serial)
            if device is None or not device.plugged:  # the real one holds the GIL for 15 s first
                raise RuntimeError(f"No device connected with serial {config.serial}")
            device.starts += 1
            self.device, self.depth = device, any(s[0] == "depth" for s in config.streams)
            intr = SimpleNamespace(width=W, height=H, fx=5.0, fy=5.5, ppx=4.0, ppy=3.0,
                                   model="distortion.inverse_brown_conrady", coeffs=[0.0] * 5)
            video_profile = SimpleNamespace(get_intrinsics=lambda: intr)
            stream = SimpleNamespace(as_video_stream_profile=lambda: video_profile)
            return SimpleNamespace(
                get_device=lambda: SimpleNamespace(query_sensors=lambda: [Sensor(device)]),
                get_stream=lambda kind: stream,
            )

        def try_wait_for_frames(self, timeout_ms: int) -> tuple[bool, SimpleNamespace | None]:
            device = self.device
            assert device is not None, "not started"
            time.sleep(device.period)
            with device.lock:
                if not device.plugged:
                    raise RuntimeError("Frame didn't arrive within 5000")
                device.count += 1
                n = device.count
            stamp = device.t0_ms + 1000.0 * device.period * n
            color = FakeFrame(np.full((H, W, 3), n % 256, np.uint8), stamp, domain)
            depth = FakeFrame(np.full((H, W), n, np.uint16), stamp, domain) if self.depth else None
            return True, SimpleNamespace(get_color_frame=lambda: color, get_depth_frame=lambda: depth)

        def stop(self) -> None:
            if self.device is None:
                raise RuntimeError("stop() cannot be called before start()")
            self.device = None

    class Context:
        def query_devices(self) -> list[SimpleNamespace]:
            return [SimpleNamespace(get_info=lambda key, d=d: d.serial if key == "serial_number" else "?")
                    for d in devices.values() if d.plugged]

    class Align:
        def __init__(self, to: str) -> None:
            assert to == "color"

        def process(self, frames: SimpleNamespace) -> SimpleNamespace:
            return frames

    return SimpleNamespace(
        pipeline=Pipeline, config=Config, align=Align, context=Context,
        camera_info=SimpleNamespace(serial_number="serial_number"),
        stream=SimpleNamespace(color="color", depth="depth"),
        format=SimpleNamespace(rgb8="rgb8", z16="z16"),
        option=SimpleNamespace(global_time_enabled="global_time_enabled"),
        timestamp_domain=TimestampDomain,
    )


class Recorder:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.frames: dict[str, list[tuple[float, np.ndarray, np.ndarray | None, CameraIntrinsics]]] = {}
        self.statuses: list[CameraStatus] = []

    def on_frame(self, serial, stamp, color, depth, intrinsics) -> None:
        with self.lock:
            self.frames.setdefault(serial, []).append((stamp, color, depth, intrinsics))

    def on_status(self, status: CameraStatus) -> None:
        with self.lock:
            self.statuses.append(status)

    def count(self, serial: str) -> int:
        with self.lock:
            return len(self.frames.get(serial, []))


def wait_for(condition, timeout: float = 2.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


@pytest.fixture
def devices() -> dict[str, FakeDevice]:
    return {"111": FakeDevice("111", t0_ms=1.7e12), "222": FakeDevice("222", t0_ms=1.7e12 + 2.5)}


def test_two_cameras_deliver_frames_with_host_stamps(devices: dict[str, FakeDevice]) -> None:
    rec = Recorder()
    cams = MultiRealsense(["111", "222"], rec.on_frame, width=W, height=H, fps=30, enable_depth=True,
                          on_status=rec.on_status, rs_module=make_fake_rs(devices))
    cams.start()
    try:
        wait_for(lambda: rec.count("111") >= 3 and rec.count("222") >= 3)
    finally:
        cams.stop()
    for serial, dev in devices.items():
        stamp, color, depth, intr = rec.frames[serial][0]
        assert stamp == pytest.approx((dev.t0_ms + 5.0) / 1000.0)  # global time: ms -> host seconds
        assert color.shape == (H, W, 3) and color.dtype == np.uint8
        assert depth is not None and depth.shape == (H, W) and depth.dtype == np.uint16
        assert intr == CameraIntrinsics(W, H, 5.0, 5.5, 4.0, 3.0, "inverse_brown_conrady", (0.0,) * 5)
        assert dev.global_time_enabled == 1.0
        stamps = [f[0] for f in rec.frames[serial]]
        np.testing.assert_allclose(np.diff(stamps), 0.005, atol=1e-6)  # float64 epoch seconds: ~0.2 us steps
    assert {s.state for s in cams.status().values()} == {CameraState.STOPPED}
    assert cams.status()["111"].frames >= 3


def test_unplugged_camera_is_retried_while_the_other_streams(devices: dict[str, FakeDevice]) -> None:
    rec = Recorder()
    cams = MultiRealsense(["111", "222"], rec.on_frame, width=W, height=H, retry_period_s=0.05,
                          on_status=rec.on_status, rs_module=make_fake_rs(devices))
    cams.start()
    try:
        wait_for(lambda: rec.count("111") >= 2 and rec.count("222") >= 2)
        devices["222"].plugged = False
        wait_for(lambda: cams.status()["222"].failures >= 2)  # a stream failure, then a failed restart
        status = cams.status()["222"]
        assert status.state in (CameraState.FAILED, CameraState.STARTING)
        failed = [s for s in rec.statuses if s.serial == "222" and s.state is CameraState.FAILED]
        assert "Frame didn't arrive" in failed[0].message
        n111, n222 = rec.count("111"), rec.count("222")
        wait_for(lambda: rec.count("111") >= n111 + 5)  # the other camera keeps going
        assert rec.count("222") == n222

        devices["222"].plugged = True
        wait_for(lambda: rec.count("222") >= n222 + 2)
        assert cams.status()["222"].state is CameraState.STREAMING
        assert devices["222"].starts >= 2
        assert devices["111"].starts == 1
    finally:
        cams.stop()
    assert not any(t.name.startswith("realsense_") for t in threading.enumerate())


def test_a_missing_camera_does_not_block_shutdown(devices: dict[str, FakeDevice]) -> None:
    rec = Recorder()
    cams = MultiRealsense(["111", "999"], rec.on_frame, retry_period_s=10.0, rs_module=make_fake_rs(devices))
    cams.start()
    wait_for(lambda: cams.status()["999"].state is CameraState.FAILED and rec.count("111") >= 1)
    assert "camera 999 is not connected (connected: ['111', '222'])" in cams.status()["999"].message
    t0 = time.monotonic()
    cams.stop()
    assert time.monotonic() - t0 < 0.5  # the retry wait is interrupted
    assert cams.status()["999"].state is CameraState.STOPPED


def test_callback_errors_do_not_restart_the_camera(devices: dict[str, FakeDevice]) -> None:
    calls = []

    def broken(*args: object) -> None:
        calls.append(args)
        raise ValueError("bug in the consumer")

    cams = MultiRealsense(["111"], broken, rs_module=make_fake_rs(devices))
    cams.start()
    try:
        wait_for(lambda: len(calls) >= 3)
    finally:
        cams.stop()
    assert devices["111"].starts == 1 and cams.status()["111"].failures == 0


def test_hardware_clock_is_mapped_by_the_smallest_lag() -> None:
    rs = SimpleNamespace(timestamp_domain=TimestampDomain)
    wall = iter([100.030, 100.035, 100.080])  # arrival times of frames captured at device 0, 10, 20 ms
    mapper = HostClockMapper(rs, lambda: next(wall))
    stamps = [mapper(FakeFrame(np.zeros(1), ms, TimestampDomain.hardware_clock)) for ms in (0.0, 10.0, 20.0)]
    assert stamps == pytest.approx([100.030, 100.035, 100.045])  # lags 100.030, 100.025, 100.060: min wins
    system = FakeFrame(np.zeros(1), 1.7e12, TimestampDomain.system_time)
    assert mapper(system) == pytest.approx(1.7e9)


def test_rejects_duplicate_serials() -> None:
    with pytest.raises(ValueError, match="distinct"):
        MultiRealsense(["1", "1"], lambda *a: None)


@pytest.mark.ros
def test_camera_node_publishes_images_and_camera_info(devices: dict[str, FakeDevice], ros) -> None:
    from pathlib import Path

    from diagnostic_msgs.msg import DiagnosticArray
    from rclpy.parameter import Parameter
    from rclpy.qos import qos_profile_sensor_data
    from sensor_msgs.msg import CameraInfo, Image

    from dp_bringup.nodes.camera_node import CameraNode
    from dp_bringup.ros_conversions import stamp_to_seconds
    from dp_bringup.ros_image import image_to_numpy

    with pytest.raises(ValueError, match="serials is required"):
        CameraNode(rs_module=make_fake_rs(devices), context=ros.context)  # serials is required
    node = CameraNode(
        rs_module=make_fake_rs(devices),
        context=ros.context,
        cli_args=["--ros-args", "--params-file", str(Path(__file__).parents[2] / "config" / "cameras.yaml")],
        parameter_overrides=[Parameter("serials", value=["222", "111"]), Parameter("enable_depth", value=True)],
    )
    ros.add(node, cleanup=node.cameras.stop)
    probe = ros.probe("camera_probe")
    got: dict[str, list] = {}
    for topic, kind in [("/camera_0/color/image_raw", Image), ("/camera_1/color/image_raw", Image),
                        ("/camera_1/color/camera_info", CameraInfo),
                        ("/camera_1/aligned_depth_to_color/image_raw", Image)]:
        probe.create_subscription(kind, topic, got.setdefault(topic, []).append, qos_profile_sensor_data)
    diagnostics: list[DiagnosticArray] = []
    probe.create_subscription(DiagnosticArray, "/diagnostics", diagnostics.append, 10)
    ros.spin_until(lambda: all(got.values()) and diagnostics, 2.5)

    image = got["/camera_0/color/image_raw"][-1]
    assert image.encoding == "rgb8" and image.header.frame_id == "camera_0_color_optical_frame"
    assert image_to_numpy(image).shape == (H, W, 3)
    stamp = stamp_to_seconds(image.header.stamp)
    assert (stamp * 1000.0 - 1.7e12) % 5.0 == pytest.approx(2.5, abs=1e-3)  # camera 0 is serial 222's clock
    info = got["/camera_1/color/camera_info"][-1]
    assert list(info.k) == [5.0, 0.0, 4.0, 0.0, 5.5, 3.0, 0.0, 0.0, 1.0] and info.distortion_model == "plumb_bob"
    assert got["/camera_1/aligned_depth_to_color/image_raw"][-1].encoding == "16UC1"
    names = sorted(s.name for s in diagnostics[-1].status)
    assert names == ["cameras: camera_0", "cameras: camera_1"]
    assert {s.hardware_id for s in diagnostics[-1].status} == {"111", "222"}

