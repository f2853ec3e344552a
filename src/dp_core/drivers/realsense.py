"""Several Intel RealSense cameras streaming at once, without ROS.

:class:`MultiRealsense` runs one worker thread per serial number. Each worker starts a pyrealsense2
pipeline (colour as RGB8, optionally depth as Z16 aligned to colour) and hands every frame set to
``on_frame(serial, stamp_s, color, depth, intrinsics)``:

- ``stamp_s``: the frame's capture time on the host wall clock (``time.time``, the clock ROS time uses).
  With global time enabled (asked for on every sensor that supports it), librealsense already maps the
  hardware timestamp onto the host clock; a ``system_time`` stamp (frame arrival) is used as is; a raw
  ``hardware_clock`` stamp is mapped by the smallest observed arrival lag over the last frames.
- ``color``: H x W x 3 uint8 RGB; ``depth``: H x W uint16 in device units (1 mm by default) or None.

A camera that is absent, fails to start, times out or raises (unplugged) is reported through ``on_status``
and :meth:`MultiRealsense.status`, and restarted every ``retry_period_s`` while the others keep streaming.
Caveat: pyrealsense2 holds the GIL in ``pipeline.start`` (about a second with a camera present), which
stalls the process's other threads meanwhile; waiting for frames releases it.
The pyrealsense2 module is injected (default: imported on start) so tests can pass a fake.
"""

from __future__ import annotations

import dataclasses
import enum
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CameraIntrinsics:
    """Pinhole intrinsics of the colour stream (pixels) and librealsense's distortion model."""

    width: int
    height: int
    fx: float
    fy: float
    ppx: float
    ppy: float
    model: str  # librealsense distortion name, e.g. "inverse_brown_conrady"
    coeffs: tuple[float, ...]


class CameraState(enum.Enum):
    STARTING = "starting"
    STREAMING = "streaming"
    FAILED = "failed"  # waiting retry_period_s before the next start
    STOPPED = "stopped"


@dataclass(frozen=True)
class CameraStatus:
    serial: str
    state: CameraState = CameraState.STOPPED
    message: str = ""
    frames: int = 0  # frames delivered since the worker started
    failures: int = 0  # failed starts or streams since the worker started
    last_stamp: float | None = None


FrameCallback = Callable[[str, float, np.ndarray, np.ndarray | None, CameraIntrinsics], None]
StatusCallback = Callable[[CameraStatus], None]


class HostClockMapper:
    """Maps a frame timestamp (ms, in its librealsense domain) to host wall-clock seconds."""

    def __init__(self, rs: Any, wall_clock: Callable[[], float], window: int = 300) -> None:
        self._rs = rs
        self._wall_clock = wall_clock
        self._lags: deque[float] = deque(maxlen=window)
        self._warned = False

    def __call__(self, frame: Any) -> float:
        stamp_s = frame.get_timestamp() / 1000.0
        domain = frame.get_frame_timestamp_domain()
        if domain == self._rs.timestamp_domain.global_time:
            return stamp_s
        if not self._warned:
            log.warning("RealSense timestamps are in the %s domain, not global_time: stamps are less accurate", domain)
            self._warned = True
        if domain == self._rs.timestamp_domain.system_time:
            return stamp_s
        # hardware clock: arrival = capture + offset + transport lag, so the smallest difference is the offset
        self._lags.append(self._wall_clock() - stamp_s)
        return stamp_s + min(self._lags)


class MultiRealsense:
    """One streaming worker per camera serial; see the module docstring."""

    def __init__(
        self,
        serials: Sequence[str],
        on_frame: FrameCallback,
        width: int = 640,
        height: int = 480,
        fps: int = 30,
        enable_depth: bool = False,
        retry_period_s: float = 2.0,
        frame_timeout_s: float = 1.0,
        on_status: StatusCallback | None = None,
        rs_module: Any = None,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        if not serials or len(set(serials)) != len(serials):
            raise ValueError(f"need distinct camera serial numbers, got {list(serials)}")
        if min(width, height, fps) <= 0 or retry_period_s <= 0 or frame_timeout_s <= 0:
            raise ValueError("width, height, fps, retry_period_s and frame_timeout_s must be positive")
        self.serials = [str(s) for s in serials]
        self.width, self.height, self.fps = int(width), int(height), int(fps)
        self.enable_depth = enable_depth
        self.retry_period_s = retry_period_s
        self.frame_timeout_s = frame_timeout_s
        self._on_frame = on_frame
        self._on_status = on_status
        self._rs = rs_module
        self._wall_clock = wall_clock
        self._lock = threading.Lock()
        self._status = {s: CameraStatus(s) for s in self.serials}
        self._stop_event = threading.Event()
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        """Start one worker thread per camera."""
        if self._threads:
            raise RuntimeError("cameras already started")
        if self._rs is None:
            import pyrealsense2

            self._rs = pyrealsense2
        self._stop_event.clear()
        self._threads = [
            threading.Thread(target=self._worker, args=(s,), name=f"realsense_{s}", daemon=True) for s in self.serials
        ]
        for t in self._threads:
            t.start()

    def stop(self, timeout_s: float | None = None) -> None:
        """Ask every worker to stop its pipeline and join them (``timeout_s`` each; default frame timeout + 2 s)."""
        self._stop_event.set()
        timeout = self.frame_timeout_s + 2.0 if timeout_s is None else timeout_s
        for t in self._threads:
            t.join(timeout)
            if t.is_alive():
                log.error("%s did not stop within %.1f s", t.name, timeout)
        self._threads = []

    def status(self) -> dict[str, CameraStatus]:
        """A snapshot of every camera's status, by serial."""
        with self._lock:
            return dict(self._status)

    # ---- workers ----------------------------------------------------------------------------
    def _update(self, serial: str, **changes: Any) -> None:
        with self._lock:
            old = self._status[serial]
            new = self._status[serial] = dataclasses.replace(old, **changes)
        if self._on_status is not None and (new.state != old.state or new.message != old.message):
            try:
                self._on_status(new)
            except Exception:
                log.exception("camera status callback failed")

    def _worker(self, serial: str) -> None:
        rs = self._rs
        frames_done = failures = 0
        last_error = ""
        while not self._stop_event.is_set():
            self._update(serial, state=CameraState.STARTING, message="")
            failed = False
            pipeline = rs.pipeline()
            try:
                intrinsics, align = self._start_pipeline(pipeline, serial)
                self._update(serial, state=CameraState.STREAMING)
                last_error = ""
                log.info("camera %s streaming %dx%d @ %d fps", serial, self.width, self.height, self.fps)
                to_host = HostClockMapper(rs, self._wall_clock)
                timeout_ms = int(self.frame_timeout_s * 1000)
                while not self._stop_event.is_set():
                    ok, frames = pipeline.try_wait_for_frames(timeout_ms)
                    if not ok:
                        raise TimeoutError(f"no frames within {self.frame_timeout_s:.1f} s")
                    stamp = self._deliver(serial, frames if align is None else align.process(frames), intrinsics,
                                          to_host)
                    if stamp is not None:
                        frames_done += 1
                        self._update(serial, frames=frames_done, last_stamp=stamp)
            except Exception as exc:
                if not self._stop_event.is_set():
                    failed, failures, error = True, failures + 1, f"{type(exc).__name__}: {exc}"
                    level = logging.DEBUG if error == last_error else logging.WARNING  # don't repeat each retry
                    log.log(level, "camera %s failed (%s); retrying every %.1f s", serial, exc, self.retry_period_s)
                    self._update(serial, state=CameraState.FAILED, message=error, failures=failures)
                    last_error = error
            finally:
                try:
                    pipeline.stop()
                except Exception as exc:  # not started, or the device is gone
                    log.debug("camera %s: pipeline.stop: %s", serial, exc)
            if failed:
                self._stop_event.wait(self.retry_period_s)
        self._update(serial, state=CameraState.STOPPED, message="")

    def _start_pipeline(self, pipeline: Any, serial: str) -> tuple[CameraIntrinsics, Any]:
        rs = self._rs
        # pyrealsense2's pipeline.start holds the GIL, for 15 s when the device is absent: check first
        connected = {d.get_info(rs.camera_info.serial_number) for d in rs.context().query_devices()}
        if serial not in connected:
            raise RuntimeError(f"camera {serial} is not connected (connected: {sorted(connected) or 'none'})")
        config = rs.config()
        config.enable_device(serial)
        config.enable_stream(rs.stream.color, self.width, self.height, rs.format.rgb8, self.fps)
        if self.enable_depth:
            config.enable_stream(rs.stream.depth, self.width, self.height, rs.format.z16, self.fps)
        profile = pipeline.start(config)
        for sensor in profile.get_device().query_sensors():
            if sensor.supports(rs.option.global_time_enabled):
                sensor.set_option(rs.option.global_time_enabled, 1.0)
        intr = profile.get_stream(rs.stream.color).as_video_stream_profile().get_intrinsics()
        intrinsics = CameraIntrinsics(
            width=int(intr.width), height=int(intr.height), fx=float(intr.fx), fy=float(intr.fy),
            ppx=float(intr.ppx), ppy=float(intr.ppy), model=str(intr.model).rsplit(".", 1)[-1],
            coeffs=tuple(float(c) for c in intr.coeffs),
        )
        return intrinsics, rs.align(rs.stream.color) if self.enable_depth else None

    def _deliver(self, serial: str, frames: Any, intrinsics: CameraIntrinsics,
                 to_host: HostClockMapper) -> float | None:
        """Hand a frame set to ``on_frame``; returns its stamp, or None for an incomplete set."""
        color_frame = frames.get_color_frame()
        depth_frame = frames.get_depth_frame() if self.enable_depth else None
        if not color_frame or (self.enable_depth and not depth_frame):
            return None  # happens right after start
        stamp = to_host(color_frame)
        color = np.array(color_frame.get_data(), dtype=np.uint8, copy=True)  # the SDK reuses its buffers
        depth = np.array(depth_frame.get_data(), dtype=np.uint16, copy=True) if depth_frame else None
        try:
            self._on_frame(serial, stamp, color, depth, intrinsics)
        except Exception:
            log.exception("frame callback failed for camera %s", serial)
        return stamp
