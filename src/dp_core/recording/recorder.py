"""Demonstration recording at the control rate: stamped samples in, one aligned dataset step per tick out.

Callbacks hand each observation of each stream (:meth:`EpisodeRecorder.observe`) and the newest
commanded target (:meth:`EpisodeRecorder.command`) to the recorder; a timer at the control rate calls
:meth:`EpisodeRecorder.tick`. Each tick samples every stream (images resized as configured) into one
step, aligned by stamp as the policy node aligns its observations: the step's time is the oldest of the
streams' newest stamps (a camera frame arrives some time after it was captured), and each stream gives
its newest sample at or before that time, so a pose is never newer than the image beside it. The step's
``action`` is the commanded target *due* one ``dt`` after the step's time (commands carry the time the
robot should reach them; between two commands it is interpolated), written at the next tick: the
executor's convention (an action chunk's first action is due one ``dt`` after its observation), and
``dp-bag2zarr``'s, so a session gives the same labels recorded live or converted from a bag. A step whose
samples are older than ``max_age_s`` (or whose action is unknown: no command within ``max_age_s`` of
the time it is due) is dropped and counted, never filled with stale data; the episode goes on after
such a gap, and training windows do not span it (:func:`dp_core.dataset.segments` cuts episodes where
their ``timestamp`` steps are uneven). Samples stamped more than ``max_age_s`` after ``now`` are refused.

Keys written per step: each stream's key, ``action`` and ``timestamp`` (the tick's time, seconds).
Each image stream's camera (native frame size, serial when known) is stored with the dataset
(:mod:`dp_core.camera_sources`); an episode whose cameras differ from the dataset's is refused.
"""

from __future__ import annotations

import bisect
import logging
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import cv2
import numpy as np

from ..camera_sources import ATTRIBUTE as CAMERAS_ATTRIBUTE
from ..camera_sources import CameraSource, read_cameras, with_new_episode, write_cameras
from ..control.obs_buffer import ObsBuffer
from ..control_period import ATTRIBUTE as PERIOD_ATTRIBUTE
from ..control_period import period_mismatch, read_period
from ..control.stamps import STAMP_TOLERANCE_S as _EPS
from ..control.stamps import interpolate
from .episode_writer import EpisodeWriter

log = logging.getLogger(__name__)
RESERVED_KEYS = ("action", "timestamp")
COMMAND_HISTORY = 4096  # commands kept (about 40 s at 100 Hz): far more than a step needs


class RecorderError(RuntimeError):
    """A recorder request that cannot be carried out now (the message says why)."""


@dataclass(frozen=True)
class StreamSpec:
    """One recorded observation stream: ``low_dim`` vectors of ``dim`` values or ``image`` frames.

    ``image_size`` (height, width) resizes images before they are stored; None keeps the incoming size.
    """

    key: str
    kind: Literal["low_dim", "image"]
    dim: int = 0
    image_size: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        if not self.key or self.key in RESERVED_KEYS:
            raise ValueError(f"stream key {self.key!r} is empty or reserved ({', '.join(RESERVED_KEYS)})")
        if self.kind not in ("low_dim", "image"):
            raise ValueError(f"stream {self.key}: kind must be 'low_dim' or 'image', got {self.kind!r}")
        if self.kind == "low_dim" and self.dim < 1:
            raise ValueError(f"stream {self.key}: low_dim needs dim >= 1, got {self.dim}")
        if self.image_size is not None and (len(self.image_size) != 2 or min(self.image_size) < 1):
            raise ValueError(f"stream {self.key}: image_size must be (height, width) >= 1, got {self.image_size}")


@dataclass
class EpisodeSummary:
    index: int
    steps: int
    duration_s: float
    dropped_steps: int
    stale: dict[str, int] = field(default_factory=dict)  # stream (or "action") -> ticks it was stale
    videos: list[Path] = field(default_factory=list)


def resize_image(image: np.ndarray, size: tuple[int, int] | None) -> np.ndarray:
    """``image`` (H x W x 3 uint8) resized to ``size`` = (height, width) by area averaging."""
    if size is None or image.shape[:2] == tuple(size):
        return image
    return cv2.resize(image, (size[1], size[0]), interpolation=cv2.INTER_AREA)


class EpisodeRecorder:
    """Start, sample, stop or discard episodes into an :class:`EpisodeWriter`; see the module docstring.

    With ``video_dir``, each image stream is also written as ``<video_dir>/episode_<index>/<key>.mp4``
    (full-size frames at the control rate), kept only for committed episodes.
    """

    def __init__(
        self,
        writer: EpisodeWriter,
        streams: Sequence[StreamSpec],
        action_dim: int,
        dt: float,
        max_age_s: float = 0.25,
        video_dir: str | Path | None = None,
    ) -> None:
        keys = [s.key for s in streams]
        if not streams or len(set(keys)) != len(keys):
            raise ValueError(f"need at least one stream and unique keys; got {keys}")
        if action_dim < 1 or dt <= 0 or max_age_s <= 0:
            raise ValueError(f"need action_dim >= 1, dt > 0, max_age_s > 0; got {action_dim}, {dt}, {max_age_s}")
        expected = sorted([*keys, *RESERVED_KEYS])
        if writer.keys and writer.keys != expected:
            raise RecorderError(f"{writer.path} holds keys {writer.keys}; this recorder writes {expected}")
        self.writer = writer
        self.streams = {s.key: s for s in streams}
        self.action_dim = action_dim
        self.dt = dt
        self.max_age_s = max_age_s
        self.video_dir = None if video_dir is None else Path(video_dir)
        self._samples = ObsBuffer(keys, n_obs_steps=1, dt=dt, max_age=max_age_s)  # the policy node's alignment
        self._native: dict[str, tuple[int, int]] = {}  # image stream -> (height, width) of its newest frame
        self._serials: dict[str, str] = {}  # image stream -> serial of its camera, when known
        self._command_stamps: list[float] = []  # due times, ascending
        self._commands: list[np.ndarray] = []
        self._pending: tuple[dict[str, np.ndarray], float] | None = None  # (step, its time) awaiting its action
        self._pending_frames: dict[str, np.ndarray] = {}
        self._start = 0.0
        self._dropped = 0
        self._stale: dict[str, int] = {}
        self._videos: dict[str, object] = {}
        if self.video_dir is not None:
            for partial in self.video_dir.glob("*.partial"):  # videos of episodes never committed
                shutil.rmtree(partial, ignore_errors=True)

    @property
    def recording(self) -> bool:
        return self.writer.active

    @property
    def steps(self) -> int:
        """Steps of the episode in progress."""
        return self.writer.episode_steps

    # -- inputs ------------------------------------------------------------------------------------
    def observe(self, key: str, value: np.ndarray, stamp: float, now: float | None = None) -> None:
        """The newest sample of stream ``key`` (taken at ``stamp``); raises ValueError on a bad value, or (given
        ``now``) on a stamp more than ``max_age_s`` after it."""
        spec = self.streams.get(key)
        if spec is None:
            raise ValueError(f"unknown stream {key!r}; configured: {sorted(self.streams)}")
        value = np.asarray(value)
        if spec.kind == "low_dim":
            value = value.reshape(-1).astype(np.float32)
            if value.shape != (spec.dim,) or not np.all(np.isfinite(value)):
                raise ValueError(f"stream {key}: need {spec.dim} finite values, got {value.tolist()}")
        elif value.ndim != 3 or value.shape[2] != 3 or value.dtype != np.uint8 or not min(value.shape[:2]) > 0:
            raise ValueError(f"stream {key}: need an H x W x 3 uint8 image, got {value.shape} {value.dtype}")
        self._samples.add(key, stamp, value, now)
        if spec.kind == "image":
            self._native[key] = value.shape[:2]

    def set_serial(self, key: str, serial: str) -> None:
        """The serial of the camera behind image stream ``key`` (stored with the dataset's cameras)."""
        if key not in self.streams or self.streams[key].kind != "image":
            raise ValueError(f"{key!r} is not an image stream; image streams: "
                             f"{[k for k, s in self.streams.items() if s.kind == 'image']}")
        self._serials[key] = serial

    def cameras(self) -> dict[str, CameraSource]:
        """The camera of each image stream that has delivered a frame: native size and serial."""
        return {key: CameraSource(*hw, self._serials.get(key, "")) for key, hw in self._native.items()}

    def _recorded_cameras(self) -> dict[str, CameraSource]:
        return read_cameras(self.writer.group.attrs.get(CAMERAS_ATTRIBUTE))

    def command(self, action: np.ndarray, stamp: float) -> None:
        """A commanded target (``action_dim`` values) due at ``stamp`` (its message's stamp: when the robot
        should reach it)."""
        action = np.asarray(action, dtype=np.float32).reshape(-1)
        if action.shape != (self.action_dim,) or not np.all(np.isfinite(action)):
            raise ValueError(f"action: need {self.action_dim} finite values, got {action.tolist()}")
        stamp = float(stamp)
        if not np.isfinite(stamp):
            raise ValueError(f"action: stamp must be finite; got {stamp}")
        i = bisect.bisect_left(self._command_stamps, stamp)
        if i < len(self._command_stamps) and self._command_stamps[i] == stamp:
            self._commands[i] = action
            return
        self._command_stamps.insert(i, stamp)
        self._commands.insert(i, action)
        if len(self._commands) > COMMAND_HISTORY:
            del self._command_stamps[:-COMMAND_HISTORY], self._commands[:-COMMAND_HISTORY]

    def stale_inputs(self, now: float) -> list[str]:
        """Streams (and ``action``) with no sample within ``max_age_s`` of ``now`` (or one stamped more than
        ``max_age_s`` after it)."""
        newest = {k: self._samples.newest_stamp(k) for k in self.streams}
        newest["action"] = self._command_stamps[-1] if self._command_stamps else None
        return [k for k, t in newest.items() if t is None or abs(now - t) > self.max_age_s]

    def _action_due(self, t: float) -> np.ndarray | None:
        """The commanded target due at ``t``: interpolated between the commands around it (at most ``max_age_s``
        apart), as ``dp-bag2zarr`` labels steps; when none is due at or after ``t`` yet, the newest one if at most
        ``max_age_s`` older (a position target holds until the next); else None."""
        stamps = self._command_stamps
        if not stamps:
            return None
        if t > stamps[-1] + _EPS:
            return self._commands[-1] if t - stamps[-1] <= self.max_age_s else None
        i = max(bisect.bisect_left(stamps, t - _EPS), 1)
        pair = slice(i - 1, i + 1)
        value, ok = interpolate(np.asarray(stamps[pair]), np.stack(self._commands[pair]), np.array([t]), self.max_age_s)
        return value[0].astype(np.float32) if ok[0] else None

    # -- episode control -------------------------------------------------------------------------
    def start(self, now: float) -> int:
        """Begin an episode; returns its index. Refused while one runs or while an input is stale."""
        if self.recording:
            raise RecorderError(f"already recording episode {self.writer.n_episodes} ({self.steps} steps)")
        stale = self.stale_inputs(now)
        if stale:
            raise RecorderError(f"not starting: no recent data (within {self.max_age_s} s) from {', '.join(stale)}")
        why = period_mismatch(read_period(self.writer.group.attrs), self.dt)
        if why:
            raise RecorderError(f"not starting: the episodes in {self.writer.path} were {why}: record into a new "
                                "dataset, or at their rate")
        recorded = self._recorded_cameras()
        for key, live in self.cameras().items():
            why = recorded[key].mismatch(live) if key in recorded else None
            if why:
                raise RecorderError(f"not starting: {key}: {why} in the episodes already in {self.writer.path}; "
                                    "record into a new dataset, or restore the cameras")
        self.writer.begin()
        self._pending, self._start, self._dropped, self._stale = None, now, 0, {}
        if self.video_dir is not None:
            self._open_videos()
        return self.writer.n_episodes

    def tick(self, now: float) -> None:
        """Sample one step (call at the control rate); does nothing when not recording."""
        if not self.recording:
            return
        self._finish_pending(now)
        stale = [k for k in self.stale_inputs(now) if k != "action"]
        if stale:
            self._drop(stale)
            return
        aligned = self._samples.get(now)
        if aligned is None:  # a stream with nothing old enough to stand beside the others
            self._drop([self._samples.refusal.stream])
            return
        step, frames = {}, {}
        for key, spec in self.streams.items():
            value = aligned.values[key][0]
            if spec.kind == "image":
                if key in self._videos:
                    frames[key] = value  # full size, into the video once the step is written
                value = resize_image(value, spec.image_size)
            step[key] = value
        step["timestamp"] = np.float64(now)
        self._pending, self._pending_frames = (step, aligned.stamp), frames

    def stop(self, now: float) -> EpisodeSummary:
        """Finish and commit the episode; an episode without a single complete step is discarded."""
        if not self.recording:
            raise RecorderError("not recording: nothing to stop")
        self._finish_pending(now)
        index = self.writer.n_episodes
        if self.writer.episode_steps == 0:
            self.discard()
            raise RecorderError(f"episode {index} had no complete step (stale inputs: {self._stale}); discarded")
        self.writer.sync()  # a failed background write fails the stop before anything is committed
        # before the commit: a committed episode always has its cameras
        self.writer.group.attrs[CAMERAS_ATTRIBUTE] = write_cameras(with_new_episode(self._recorded_cameras(), self.cameras()))
        self.writer.group.attrs[PERIOD_ATTRIBUTE] = self.dt
        steps = self.writer.commit()
        videos = self._close_videos(keep=index)
        return EpisodeSummary(index, steps, now - self._start, self._dropped, dict(self._stale), videos)

    def discard(self) -> int:
        """Drop the episode in progress; returns how many steps it had."""
        if not self.recording:
            raise RecorderError("not recording: nothing to discard")
        self._pending = None
        self._close_videos(keep=None)
        return self.writer.discard()

    def close(self) -> None:
        """Discard an unfinished episode and release the videos and the writer."""
        if self.recording:
            n = self.discard()
            log.warning("discarded the unfinished episode (%d steps) on shutdown", n)
        self.writer.close()

    # -- internals ---------------------------------------------------------------------------------
    def _finish_pending(self, now: float) -> None:
        """Give the pending step its action (the target due one ``dt`` after the step's time) and write it."""
        if self._pending is None:
            return
        (step, t0), self._pending = self._pending, None
        action = None if "action" in self.stale_inputs(now) else self._action_due(t0 + self.dt)
        if action is None:
            self._drop(["action"])
            return
        step["action"] = action
        self.writer.append(step)
        for key, frame in self._pending_frames.items():  # the videos hold exactly the dataset's steps
            self._videos[key].append_data(frame)

    def _drop(self, stale: list[str]) -> None:
        self._dropped += 1
        for key in stale:
            self._stale[key] = self._stale.get(key, 0) + 1

    def _episode_video_dir(self, index: int, partial: bool) -> Path:
        return self.video_dir / f"episode_{index:06d}{'.partial' if partial else ''}"

    def _open_videos(self) -> None:
        import imageio.v2 as imageio

        folder = self._episode_video_dir(self.writer.n_episodes, partial=True)
        folder.mkdir(parents=True, exist_ok=True)
        for key, spec in self.streams.items():
            if spec.kind == "image":
                self._videos[key] = imageio.get_writer(folder / f"{key}.mp4", fps=1.0 / self.dt,
                                                       macro_block_size=2, ffmpeg_log_level="error")

    def _close_videos(self, keep: int | None) -> list[Path]:
        if not self._videos:
            return []
        for video in self._videos.values():
            video.close()
        keys, self._videos = list(self._videos), {}
        # The episode was committed (or discarded) before this: the partial folder goes either way.
        partial = self._episode_video_dir(self.writer.n_episodes - (keep is not None), partial=True)
        if keep is None:
            shutil.rmtree(partial, ignore_errors=True)
            return []
        final = self._episode_video_dir(keep, partial=False)
        shutil.rmtree(final, ignore_errors=True)
        partial.rename(final)
        return [final / f"{key}.mp4" for key in keys]
