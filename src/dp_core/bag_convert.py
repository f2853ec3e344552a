"""rosbag2 bags (MCAP or sqlite3) -> training dataset (zarr: ``data/<key>`` + ``meta/episode_ends``).

Topics are aligned by their header stamps on a regular grid ``dt`` apart, by the rule the policy node
applies live (:class:`dp_core.control.obs_buffer.ObsBuffer`): at each grid time the step's observation
time ``t`` is the oldest of the streams' newest stamps, and each observation key takes its last sample at
or before ``t`` (``timestamp`` holds the grid time). The action of step ``t`` is the commanded pose due at ``t + lead_s``
(``/robot/servo_target`` is stamped with the time the pose must be reached, docs/interfaces.md),
linearly interpolated between the recorded waypoints, as the driver moves between them. Messages are
decoded by :mod:`dp_core.msg_fields`, the code the policy node uses.

A step is kept when every stream has a sample at most ``max_age_s`` old and the action is bracketed by
waypoints at most ``max_gap_s`` apart; each run of kept steps of at least ``min_episode_steps`` becomes
one episode (a pause in the recording or a holding robot ends an episode).

The dataset records each image stream's camera as the demonstration recorder does
(:mod:`dp_core.camera_sources`): the native frame size from the bag, and the serial from the camera node's
``/diagnostics`` when the bag has that topic. A bag whose cameras differ from those of the episodes already in
the dataset is refused.

    dp-bag2zarr bags/run1 bags/run2 -o data/cell.zarr --config config/bag_pusht_sim.yaml
"""

from __future__ import annotations

import argparse
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from .bag_io import BagError, BagReader, short_type
from .camera_sources import ATTRIBUTE as CAMERAS_ATTRIBUTE
from .camera_sources import (DIAGNOSTICS_TOPIC, CameraSource, camera_name, read_cameras, serials_from_statuses,
                             with_new_episode, write_cameras)
from .config import ConfigError, apply_overrides, from_dict, read_yaml
from .control.stamps import STAMP_TOLERANCE_S as _EPS  # stamps this close count as equal
from .control.stamps import interpolate
from .control_period import ATTRIBUTE as PERIOD_ATTRIBUTE
from .control_period import period_mismatch, read_period
from .dataset import DatasetError, EpisodeStore
from .msg_fields import LOW_DIM_TYPES, image_to_numpy, low_dim_from_msg, position_from_msg, stamp_seconds


@dataclass
class StreamSpec:
    """One dataset key from one topic: Image, or PoseStamped / PoseArray / JointState (``dim`` values)."""

    topic: str
    dim: int | None = None  # low-dim: values per step (see msg_fields.low_dim_from_msg)
    shape: list[int] | None = None  # images: [H, W, 3] to resize to; None keeps the recorded size


@dataclass
class ActionStreamSpec:
    topic: str = "/robot/servo_target"  # PoseStamped, stamp = when the pose is due
    names: list[str] = field(default_factory=lambda: ["x", "y"])  # position axes, in action order
    lead_s: float | None = None  # action of step t = pose due at t + lead_s; None: dt
    max_gap_s: float = 0.25  # interpolate only between waypoints at most this far apart


@dataclass
class BagConversionConfig:
    dt: float = 0.1
    max_age_s: float = 0.25
    min_episode_steps: int = 16
    streams: dict[str, StreamSpec] = field(default_factory=dict)
    action: ActionStreamSpec = field(default_factory=ActionStreamSpec)
    action_key: str = "action"

    def __post_init__(self) -> None:
        if not self.streams:
            raise ConfigError("streams: at least one dataset key -> topic is needed")
        if self.dt <= 0 or self.max_age_s <= 0:
            raise ConfigError(f"dt and max_age_s must be > 0; got {self.dt}, {self.max_age_s}")
        if self.action_key in self.streams or "timestamp" in self.streams:
            raise ConfigError(f"streams may not use the keys '{self.action_key}' or 'timestamp'")
        for key, spec in self.streams.items():
            if spec.shape is not None and (len(spec.shape) != 3 or spec.shape[2] != 3):
                raise ConfigError(f"streams.{key}.shape must be [H, W, 3]; got {spec.shape}")

    @property
    def lead(self) -> float:
        return self.dt if self.action.lead_s is None else self.action.lead_s


def load_conversion_config(path: str | Path, overrides: list[str] | None = None) -> BagConversionConfig:
    path = Path(path)
    data = read_yaml(path)
    try:
        return from_dict(BagConversionConfig, apply_overrides(data, overrides or []))
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None


@dataclass
class _Stream:
    key: str
    spec: StreamSpec
    type_name: str
    stamps: list[float] = field(default_factory=list)
    values: list[np.ndarray] = field(default_factory=list)  # low-dim only; images are decoded in a second pass
    sizes: set[tuple[int, int]] = field(default_factory=set)  # images: native (height, width) seen


@dataclass
class ConversionReport:
    bag: str
    steps: int  # grid steps between the first and last time all streams have data
    kept: int
    episodes: list[int]  # length of each episode written
    dropped: dict[str, int]  # reason -> steps
    cameras: dict[str, CameraSource] = field(default_factory=dict)  # image key -> camera, as stored


def sample_index(stamps: np.ndarray, times: np.ndarray) -> np.ndarray:
    """Index of the last stamp at or before each time (-1 where none), as the observation buffer picks."""
    return np.searchsorted(stamps, times + _EPS, side="right") - 1


def _runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """``[start, stop)`` of each run of True."""
    edges = np.diff(np.concatenate([[0], mask.astype(np.int8), [0]]))
    return list(zip(np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)))


def convert_bag(bag_path: str | Path, store: EpisodeStore, cfg: BagConversionConfig, progress: bool = True) -> ConversionReport:
    """Append the episodes of one bag to ``store``."""
    why = period_mismatch(read_period(store.group.attrs), cfg.dt)
    if why:
        raise BagError(f"{store.path}: its episodes were {why} (the conversion's dt); convert into a new dataset")
    with BagReader(bag_path) as bag:
        topics = [s.topic for s in cfg.streams.values()] + [cfg.action.topic]
        allowed: dict[str, list[str]] = {cfg.action.topic: ["PoseStamped"]}
        for s in cfg.streams.values():  # a topic feeding several keys must suit all of them
            kinds = ["Image"] if s.dim is None else list(LOW_DIM_TYPES)
            allowed[s.topic] = [k for k in allowed.get(s.topic, kinds) if k in kinds]
        bag.require(topics, allowed)
        info = bag.topics
        streams = [_Stream(k, s, short_type(info[s.topic].msgtype)) for k, s in cfg.streams.items()]
        by_topic: dict[str, list[_Stream]] = {}
        for s in streams:
            by_topic.setdefault(s.spec.topic, []).append(s)
        act_stamps: list[float] = []
        act_values: list[np.ndarray] = []
        diagnostics = [DIAGNOSTICS_TOPIC] if bag.has_messages(DIAGNOSTICS_TOPIC, "DiagnosticArray") else []
        serials: dict[str, set[str]] = {}  # camera name -> serials its diagnostics named
        total = sum(info[t].count for t in {*topics, *diagnostics})
        for m in tqdm(bag.messages({*topics, *diagnostics}), total=total, desc=f"read {bag.path.name}", disable=not progress):
            if m.topic == DIAGNOSTICS_TOPIC:
                for name, serial in serials_from_statuses(m.msg.status).items():
                    serials.setdefault(name, set()).add(serial)
                continue
            if m.topic == cfg.action.topic:
                act_stamps.append(stamp_seconds(m.msg.header.stamp))
                act_values.append(position_from_msg(m.msg, cfg.action.names))
            for s in by_topic.get(m.topic, ()):
                s.stamps.append(stamp_seconds(m.msg.header.stamp))
                if s.type_name != "Image":
                    s.values.append(_low_dim(bag.path, s, m.msg))
                else:
                    s.sizes.add((int(m.msg.height), int(m.msg.width)))
        cameras = _bag_cameras(bag.path, streams, serials)
        _check_cameras(bag.path, store, cameras)

        order = np.argsort(act_stamps, kind="stable")
        a_stamps, a_values = np.asarray(act_stamps)[order], np.asarray(act_values)[order]
        sorted_stamps = {s.key: np.sort(np.asarray(s.stamps), kind="stable") for s in streams}
        start = max(st[0] for st in sorted_stamps.values())
        stop = min(st[-1] for st in sorted_stamps.values())
        n = int(np.floor((stop - start) / cfg.dt + _EPS)) + 1 if stop >= start else 0
        times = start + cfg.dt * np.arange(n)
        keep = np.ones(n, bool)
        dropped: dict[str, int] = {}
        picks: dict[str, np.ndarray] = {}
        newest = {}
        for s in streams:
            idx = sample_index(sorted_stamps[s.key], times)
            newest[s.key] = sorted_stamps[s.key][np.maximum(idx, 0)]
            stale = (idx < 0) | (times - newest[s.key] > cfg.max_age_s)
            dropped[f"stale {s.key}"] = int((stale & keep).sum())
            keep &= ~stale
        # As live: the step's observation time is the oldest of the streams' newest stamps (a camera frame),
        # and every stream gives its sample at or before it.
        obs_t = np.min(np.stack(list(newest.values())), axis=0) if n else times
        for s in streams:
            picks[s.key] = np.maximum(sample_index(sorted_stamps[s.key], obs_t), 0)
        actions, ok = interpolate(a_stamps, a_values, obs_t + cfg.lead, cfg.action.max_gap_s) if len(a_stamps) else (None, np.zeros(n, bool))
        dropped["no action"] = int((~ok & keep).sum())
        keep &= ok
        runs = [(a, b) for a, b in _runs(keep) if b - a >= cfg.min_episode_steps]
        dropped["short run"] = int(keep.sum() - sum(b - a for a, b in runs))
        if not runs:
            reasons = ", ".join(f"{k}: {v}" for k, v in dropped.items() if v) or "no overlap of the streams"
            raise BagError(f"{bag.path}: no run of >= {cfg.min_episode_steps} aligned steps among {n} ({reasons})")

        arrays = {s.key: _gather(bag, s, picks[s.key], np.sort(np.concatenate([np.arange(a, b) for a, b in runs])), progress)
                  for s in streams}
        dataset_cameras = with_new_episode(read_cameras(store.group.attrs.get(CAMERAS_ATTRIBUTE)), cameras)
        store.group.attrs[CAMERAS_ATTRIBUTE] = write_cameras(dataset_cameras)  # before the episodes, as the recorder
        store.group.attrs[PERIOD_ATTRIBUTE] = cfg.dt
        lengths = []
        for a, b in runs:
            episode = {s.key: arrays[s.key][a:b] for s in streams}
            episode[cfg.action_key] = actions[a:b].astype(np.float32)
            episode["timestamp"] = times[a:b]
            store.add_episode(episode)
            lengths.append(int(b - a))
        return ConversionReport(str(bag.path), n, int(sum(lengths)), lengths, {k: v for k, v in dropped.items() if v},
                                {key: dataset_cameras[key] for key in cameras})


def _bag_cameras(path: Path, streams: list[_Stream], serials: dict[str, set[str]]) -> dict[str, CameraSource]:
    """The camera of each image stream: its one native frame size, and the serial its camera node named."""
    cameras = {}
    for s in streams:
        if s.type_name != "Image" or not s.sizes:
            continue
        if len(s.sizes) > 1:
            raise BagError(f"{path}: {s.spec.topic} -> '{s.key}': frames of several sizes "
                           f"{sorted(f'{h}x{w}' for h, w in s.sizes)} (another camera, or its settings changed)")
        named = serials.get(camera_name(s.spec.topic), set())
        if len(named) > 1:
            raise BagError(f"{path}: {camera_name(s.spec.topic)} was named as cameras {sorted(named)} in "
                           f"{DIAGNOSTICS_TOPIC} (cameras swapped during the recording?)")
        cameras[s.key] = CameraSource(*next(iter(s.sizes)), next(iter(named), ""))
    return cameras


def _check_cameras(path: Path, store: EpisodeStore, cameras: dict[str, CameraSource]) -> None:
    """Refuse a bag from other cameras than the dataset's episodes (a policy would mix their views)."""
    recorded = read_cameras(store.group.attrs.get(CAMERAS_ATTRIBUTE))
    for key, cam in cameras.items():
        if key not in recorded:
            continue
        if recorded[key].serial and not cam.serial:
            why = (f"recorded from camera serial {recorded[key].serial}; this bag names no serial for it (no "
                   f"{DIAGNOSTICS_TOPIC} recorded, or no camera node status for its camera in it)")
        else:
            why = recorded[key].mismatch(cam)
        if why:
            raise BagError(f"{path}: '{key}': {why}, in the episodes already in {store.path}; "
                           "convert into a new dataset")


def _low_dim(path: Path, s: _Stream, msg) -> np.ndarray:
    try:
        return low_dim_from_msg(msg, s.type_name, s.spec.dim)
    except (ValueError, TypeError) as exc:
        raise BagError(f"{path}: {s.spec.topic} -> '{s.key}': {exc}") from None


def _gather(bag: BagReader, s: _Stream, picks: np.ndarray, steps: np.ndarray, progress: bool) -> np.ndarray:
    """Per grid step (all n; rows outside ``steps`` are left empty) the chosen sample of stream ``s``."""
    order = np.argsort(np.asarray(s.stamps), kind="stable")  # sorted index -> message index on the topic
    if s.type_name != "Image":
        values = np.stack(s.values)[order]
        return values[picks]
    wanted = {int(order[picks[i]]) for i in steps}  # message indices on the topic that some step uses
    images: dict[int, np.ndarray] = {}
    count = -1
    for m in tqdm(bag.messages([s.spec.topic]), total=len(s.stamps), desc=f"images {s.key}", disable=not progress):
        count += 1
        if count in wanted:
            img = image_to_numpy(m.msg, "rgb8")
            if s.spec.shape is not None and img.shape[:2] != tuple(s.spec.shape[:2]):
                img = cv2.resize(img, (s.spec.shape[1], s.spec.shape[0]), interpolation=cv2.INTER_AREA)
            images[count] = img
    first = next(iter(images.values()))
    out = np.zeros((len(picks), *first.shape), np.uint8)
    for i in steps:
        out[i] = images[int(order[picks[i]])]
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="dp-bag2zarr", description="Convert rosbag2 bags to a training dataset (zarr).")
    parser.add_argument("bags", nargs="+", metavar="BAG_OR_OVERRIDE",
                        help="bag directories (MCAP or sqlite3 storage), and key=value config overrides (e.g. dt=0.05)")
    parser.add_argument("-o", "--output", required=True, help="zarr dataset to write")
    parser.add_argument("--config", required=True, help="conversion config (e.g. config/bag_pusht_sim.yaml)")
    parser.add_argument("--append", action="store_true", help="add episodes to an existing dataset")
    args = parser.parse_intermixed_args(argv)
    overrides = [b for b in args.bags if "=" in b]
    bags = [b for b in args.bags if "=" not in b]
    out = Path(args.output)
    created = False
    try:
        cfg = load_conversion_config(args.config, overrides)
        if out.exists() and not args.append:
            raise DatasetError(f"{out} exists; pass --append to add episodes to it")
        created = not out.exists()
        store = EpisodeStore.open(out, mode="a")
        for bag in bags:
            r = convert_bag(bag, store, cfg)
            print(f"{r.bag}: {len(r.episodes)} episodes {r.episodes}, {r.kept} of {r.steps} steps kept"
                  + (f"; dropped {r.dropped}" if r.dropped else ""))
            for key, cam in r.cameras.items():
                print(f"  '{key}': camera {cam.height}x{cam.width}, " + (f"serial {cam.serial}" if cam.serial else
                      f"serial unknown (no camera named in {DIAGNOSTICS_TOPIC}): a policy checks the frame size only"))
        print(f"{out}: {store.n_episodes} episodes, {store.n_steps} steps, keys {store.keys()}")
    except (BagError, ConfigError, DatasetError) as exc:
        if created and out.exists() and EpisodeStore.open(out, mode="a").n_episodes == 0:
            shutil.rmtree(out)  # do not leave an empty dataset behind
        print(f"dp-bag2zarr: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
