"""Timing of a recorded closed-loop run, from its bag: observation-to-chunk latency, executor send times and
camera frame gaps, as JSON.

    ros2 launch dp_bringup pusht_eval.launch.py num_episodes:=3 bag:=bags/timing
    python benchmarks/bench_bag_timing.py bags/timing --lead 0.1 --camera-rate 30

The bag's receive time of each message is when the recorder got it. A chunk's receive time minus its stamp
(the newest observation it was computed from) is the policy node's observation-to-chunk latency. The executor sends each
waypoint ``lead`` seconds before its stamp (its due time: when the robot must be there) or, for the first
actions of a newly arrived chunk, as soon as the chunk arrives; so ``stamp - receive`` is the slack the
driver gets (ideally ``lead`` minus the executor tick and DDS delivery), and a waypoint received after
its stamp arrived too late to be reached on time. For each camera topic, stamp intervals longer than
1.5 frame periods count as dropped frames (one per missing period), and the receive minus the stamp is
the delivery latency. With two or more cameras, ``camera_sync`` is the spread of the frame stamps the
policy's observation alignment picks (see ``camera_sync``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np

from dp_core.bag_io import BagError, BagReader
from dp_core.msg_fields import stamp_seconds


def percentiles(values_ms: np.ndarray) -> dict[str, float]:
    return {"p50": float(np.percentile(values_ms, 50)), "p99": float(np.percentile(values_ms, 99)),
            "max": float(values_ms.max()), "n": int(values_ms.size)}


def command_timing(bag: BagReader, topic: str, lead: float) -> dict:
    stamps, received = [], []
    for m in bag.messages([topic]):
        stamps.append(stamp_seconds(m.msg.header.stamp))
        received.append(m.log_time_ns * 1e-9)
    slack_ms = (np.asarray(stamps) - np.asarray(received)) * 1e3
    return {"topic": topic, "lead_s": lead, "waypoints": int(slack_ms.size),
            "slack_before_due_ms": {"p50": float(np.percentile(slack_ms, 50)),
                                    "p1": float(np.percentile(slack_ms, 1)), "min": float(slack_ms.min())},
            "received_after_due": int(np.count_nonzero(slack_ms < 0)),
            "received_within_10ms_of_lead": float(np.mean(slack_ms >= lead * 1e3 - 10.0))}


def camera_timing(bag: BagReader, topic: str, rate: float) -> dict:
    stamps, received = [], []
    for m in bag.messages([topic]):
        stamps.append(stamp_seconds(m.msg.header.stamp))
        received.append(m.log_time_ns * 1e-9)
    s = np.asarray(stamps)
    gaps = np.diff(s) * rate  # in frame periods
    dropped = int(np.sum(np.round(gaps[gaps > 1.5]) - 1))
    return {"topic": topic, "frames": int(s.size), "rate_hz": rate,
            "measured_rate_hz": float((s.size - 1) / (s[-1] - s[0])) if s.size > 1 else 0.0,
            "dropped_frames": dropped, "dropped_fraction": dropped / max(dropped + s.size, 1),
            "delivery_latency_ms": percentiles((np.asarray(received) - s) * 1e3)}


def chunk_latency(bag: BagReader, topic: str) -> dict:
    """Observation to chunk: each chunk's receive time minus its stamp (the time of the observation it was
    computed from), i.e. alignment wait + inference + publishing + DDS delivery to the recorder."""
    stamps, received = [], []
    for m in bag.messages([topic]):
        stamps.append(stamp_seconds(m.msg.header.stamp))
        received.append(m.log_time_ns * 1e-9)
    out: dict = {"topic": topic, "chunks": len(stamps)}
    if stamps:
        out["obs_to_chunk_ms"] = percentiles((np.asarray(received) - np.asarray(stamps)) * 1e3)
    return out


def camera_sync(bag: BagReader, cameras: list[str], chunk_topic: str, n_obs_steps: int, dt: float) -> dict:
    """Stamp spread between the cameras' frames in each observation the policy used.

    The policy node aligns its inputs on a grid ``t0 - k dt`` (k < To) ending at the chunk's stamp
    t0 and takes, per stream, the last sample at or before each grid time; this replays that choice
    on the recorded frame stamps. The error of one grid time is the newest minus the oldest chosen
    camera frame.
    """
    stamps = {t: np.sort([stamp_seconds(m.msg.header.stamp) for m in bag.messages([t])]) for t in cameras}
    chunks = [stamp_seconds(m.msg.header.stamp) for m in bag.messages([chunk_topic])]
    spread = []
    for t0 in chunks:
        for k in range(n_obs_steps):
            target = t0 - k * dt + 1e-9
            chosen = []
            for s in stamps.values():
                i = np.searchsorted(s, target, side="right") - 1
                if i >= 0:
                    chosen.append(s[i])
            if len(chosen) == len(cameras):
                spread.append(max(chosen) - min(chosen))
    out = {"cameras": cameras, "chunks": len(chunks), "n_obs_steps": n_obs_steps, "dt": dt}
    if spread:
        out["sync_error_ms"] = percentiles(np.asarray(spread) * 1e3)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bag", help="rosbag2 directory of a closed-loop run")
    parser.add_argument("--command-topic", default="/robot/servo_target")
    parser.add_argument("--lead", type=float, default=0.1, help="the executor's lead_time_s")
    parser.add_argument("--camera-topics", nargs="*", default=None,
                        help="image topics (default: every sensor_msgs/Image topic in the bag)")
    parser.add_argument("--camera-rate", type=float, default=30.0, help="nominal frame rate (Hz)")
    parser.add_argument("--chunk-topic", default="/policy/action_chunk")
    parser.add_argument("--n-obs-steps", type=int, default=2, help="the policy's To (camera sync replay)")
    parser.add_argument("--dt", type=float, default=0.1, help="the policy's dt (camera sync replay)")
    args = parser.parse_args()
    try:
        with BagReader(args.bag) as bag:
            cams = args.camera_topics
            if cams is None:
                cams = sorted(t for t, info in bag.topics.items() if info.msgtype == "sensor_msgs/msg/Image")
            report = {"bag": args.bag, "loadavg": os.getloadavg(),
                      "executor": command_timing(bag, args.command_topic, args.lead),
                      "policy": chunk_latency(bag, args.chunk_topic),
                      "cameras": [camera_timing(bag, t, args.camera_rate) for t in cams]}
            if len(cams) > 1:
                report["camera_sync"] = camera_sync(bag, cams, args.chunk_topic, args.n_obs_steps, args.dt)
    except BagError as exc:
        print(f"bench_bag_timing: error: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
