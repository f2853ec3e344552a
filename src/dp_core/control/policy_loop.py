"""The policy node's logic without ROS: time-aligned observations in, timed action chunks out."""

from __future__ import annotations

import threading
from dataclasses import dataclass

import cv2
import numpy as np

from ..camera_sources import CameraSource
from ..inference import PolicyRunner
from .obs_buffer import ObsBuffer, Refusal


@dataclass
class TimedChunk:
    """Actions ``chunk[To - 1:]``; action ``i`` is due at ``stamp + (i + 1) * dt``."""

    stamp: float
    actions: np.ndarray
    latency_s: float
    warm: bool


class PolicyLoop:
    """Buffers samples per observation key and runs the policy on the aligned To-step window.

    Thread-safe: sensor callbacks may ``add`` while another thread runs ``tick``.
    ``cameras``: the recorded camera of image observations (:mod:`dp_core.camera_sources`); frames of
    another native size, or from a camera whose serial (:meth:`set_serial`) differs, are refused.
    """

    def __init__(self, runner: PolicyRunner, dt: float, max_age: float,
                 cameras: dict[str, CameraSource] | None = None) -> None:
        cfg = runner.policy.cfg
        self.runner = runner
        self.dt = dt
        self.specs = cfg.shape_meta.obs
        self.n_obs_steps = cfg.n_obs_steps
        self.buffer = ObsBuffer(list(self.specs), cfg.n_obs_steps, dt, max_age)
        self.cameras = dict(cameras or {})
        self._serials: dict[str, str] = {}
        self._lock = threading.Lock()

    def set_serial(self, key: str, serial: str) -> None:
        """The serial of the camera now behind image observation ``key`` (from the camera node's diagnostics)."""
        self._serials[key] = serial

    def camera_mismatch(self, key: str, height: int, width: int) -> str | None:
        """Why frames of ``height`` x ``width`` on ``key`` are not from the recorded camera (None: they are)."""
        if key not in self.cameras:
            return None
        why = self.cameras[key].mismatch(CameraSource(height, width, self._serials.get(key, "")))
        return None if why is None else (f"observation '{key}': {why}; the policy was trained on the recorded "
                                         "camera (restore it, or set check_cameras: false)")

    @property
    def refusal(self) -> Refusal | None:
        return self.buffer.refusal

    def add(self, key: str, stamp: float, value: np.ndarray, now: float | None = None) -> None:
        """One sample of observation ``key``; images are resized to the policy's input size. Raises
        ``ValueError`` on a sample the policy cannot use (:meth:`ObsBuffer.add` for the stamp and ``now``)."""
        spec = self.specs[key]
        value = np.asarray(value)
        if spec.type == "rgb":
            if value.ndim != 3 or value.shape[2] != spec.shape[2] or not min(value.shape[:2]) > 0:
                raise ValueError(f"observation '{key}': an image of shape {value.shape}, the policy expects "
                                 f"H x W x {spec.shape[2]} with H, W > 0")
            why = self.camera_mismatch(key, *value.shape[:2])
            if why:
                raise ValueError(why)
            h, w = spec.shape[:2]
            if value.shape[:2] != (h, w):
                try:
                    value = cv2.resize(value, (w, h), interpolation=cv2.INTER_AREA)
                except cv2.error as exc:  # e.g. a dtype OpenCV cannot resize
                    raise ValueError(f"observation '{key}': cannot resize a {value.shape} {value.dtype} image: "
                                     f"{exc.msg if hasattr(exc, 'msg') else exc}") from None
        elif value.shape != tuple(spec.shape):
            raise ValueError(f"observation '{key}' has shape {value.shape}, the policy expects {tuple(spec.shape)}")
        with self._lock:
            self.buffer.add(key, stamp, value, now)

    def tick(self, now: float) -> TimedChunk | None:
        """Run the policy when the buffer holds a fresh aligned window; else ``None`` (see :attr:`refusal`)."""
        with self._lock:
            aligned = self.buffer.get(now)
        if aligned is None:
            return None
        result = self.runner.infer(aligned.values, aligned.stamp)
        return TimedChunk(aligned.stamp, result.chunk[self.n_obs_steps - 1 :], result.latency_s, result.warm)
