"""Offline replay of a bag through a policy, along the policy node's code path.

The bag's observation messages go, in the order and at the times they were received, through the
same decoding (:func:`dp_core.msg_fields.observation_from_msg`), observation buffer and
:class:`~dp_core.inference.PolicyRunner` (warm start when the parameters ask for it) as in the live node
(:class:`~dp_core.control.policy_loop.PolicyLoop`), with the node's parameters read from its parameter
file. The loop runs the policy every ``replan_steps * dt`` s of recorded time, and one ``dt`` later
while it holds, as the node's inference thread does.

Each chunk's executed actions (point ``i`` due at ``stamp + (i + 1) * dt``) are compared with the
recorded commands on the reference topic (``/robot/servo_target``: pose due at its stamp), linearly
interpolated at the due time. For a demonstration that is the demonstrator's command; for a bag of
the policy running live it is what the live policy commanded (after the executor's clamps).

    dp-replay bags/run1 --checkpoint models/pusht_state_unet_small.safetensors \\
        --params config/pusht_sim.yaml --plot replay.png --output replay.json
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from .bag_io import BagError, BagReader
from .camera_sources import ATTRIBUTE as CAMERAS_ATTRIBUTE
from .camera_sources import DIAGNOSTICS_TOPIC, CameraSource, cameras_to_confirm, read_cameras, serials_by_key
from .checkpoint import CheckpointError, load_policy, policy_file_extra
from .config import ConfigError
from .control.policy_loop import PolicyLoop
from .control.policy_params import PolicyNodeParams, load_node_params, used_observations
from .control.stamps import interpolate
from .control_period import check_policy_period
from .inference import PolicyRunner
from .msg_fields import observation_from_msg, position_from_msg, stamp_seconds
from .policy import DiffusionPolicy

log = logging.getLogger(__name__)


@dataclass
class ReplayResult:
    start: float  # s, first received message
    stamps: list[float] = field(default_factory=list)  # per chunk: newest observation time
    chunks: list[np.ndarray] = field(default_factory=list)  # per chunk: executed actions (n_action_steps, A)
    latencies: list[float] = field(default_factory=list)
    warm: list[bool] = field(default_factory=list)
    refusals: Counter = field(default_factory=Counter)  # kind -> ticks
    rejected: Counter = field(default_factory=Counter)  # observation key -> refused samples skipped, as the node does
    ref_stamps: np.ndarray = field(default_factory=lambda: np.zeros(0))
    ref_values: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)))


def replay_bag(bag_path: str | Path, policy: DiffusionPolicy, params: PolicyNodeParams,
               reference_topic: str = "/robot/servo_target", seed: int | None = 0, progress: bool = True,
               window: tuple[float, float] = (0.0, float("inf")),
               cameras: dict[str, CameraSource] | None = None) -> ReplayResult:
    """Run ``policy`` over the bag's observations as the policy node with ``params`` would.

    ``window``: run the policy only at ticks this many seconds after the bag's start (observations
    before it still fill the buffer). ``cameras``: the policy file's recorded cameras (frames of another
    size or camera serial are rejected, as the node rejects them with ``check_cameras``; serials are read from
    the bag's ``/diagnostics``, as the node reads them live).
    """
    used = used_observations(params, policy.cfg.shape_meta)
    runner = PolicyRunner(policy, dt=params.dt, warm_start=params.warm_start, seed=seed,
                          inference=params.inference_options())
    checked = (cameras or {}) if params.check_cameras else {}
    loop = PolicyLoop(runner, params.dt, params.max_obs_age_s, checked)
    n_exec = params.replan_steps or policy.cfg.n_action_steps  # executed before the next chunk replaces them
    by_topic: dict[str, list[tuple[str, str]]] = {}
    for key, (topic, type_name) in used.items():
        by_topic.setdefault(topic, []).append((key, type_name))
    period = params.replan_period(policy.cfg)
    ref_t: list[float] = []
    ref_v: list[np.ndarray] = []
    with BagReader(bag_path) as bag:
        types = {topic: [t for _, t in keys] for topic, keys in by_topic.items()}
        types[reference_topic] = ["PoseStamped"]
        bag.require([*by_topic, reference_topic], types)
        result = ReplayResult(start=bag.start_ns * 1e-9)
        next_tick = result.start + params.dt  # the first chance to run; then every period
        # the image keys whose recorded camera has a serial: confirmed by the camera node's /diagnostics
        key_cameras = cameras_to_confirm(used, checked)
        diagnostics = {DIAGNOSTICS_TOPIC} if key_cameras and bag.has_messages(DIAGNOSTICS_TOPIC, "DiagnosticArray") else set()
        if key_cameras and not diagnostics:
            log.warning("%s: no %s in the bag to confirm the recorded camera serials of %s: their frames are "
                        "refused (--params with check_cameras: false accepts them)", bag.path, DIAGNOSTICS_TOPIC,
                        sorted(key_cameras))
        total = sum(bag.topics[t].count for t in {*by_topic, reference_topic, *diagnostics})

        def tick(now: float) -> bool:
            """True when the policy gave a chunk (next tick one period later), else one control step later."""
            if not window[0] <= now - result.start <= window[1]:
                return False
            chunk = loop.tick(now)
            if chunk is None:
                result.refusals[loop.refusal.kind.value] += 1
                return False
            result.stamps.append(chunk.stamp)
            result.chunks.append(chunk.actions[:n_exec])
            result.latencies.append(chunk.latency_s)
            result.warm.append(chunk.warm)
            return True

        for m in tqdm(bag.messages({*by_topic, reference_topic, *diagnostics}), total=total, desc="replay",
                      disable=not progress):
            t = m.log_time_ns * 1e-9
            while next_tick < t:
                next_tick += period if tick(next_tick) else params.dt
            if m.topic in diagnostics:
                for key, serial in serials_by_key(key_cameras, m.msg.status).items():
                    loop.set_serial(key, serial)
                continue
            if m.topic == reference_topic:
                ref_t.append(stamp_seconds(m.msg.header.stamp))
                ref_v.append(position_from_msg(m.msg, params.action_names))
            for key, type_name in by_topic.get(m.topic, ()):
                try:
                    loop.add(key, *observation_from_msg(m.msg, type_name, loop.specs[key]), now=t)
                except ValueError as exc:  # refused (size, encoding, stamp, another camera): the policy node skips it too
                    if not result.rejected:
                        log.warning("%s: skipping samples the policy node would reject, first: %s -> '%s': %s",
                                    bag.path, m.topic, key, exc)
                    result.rejected[key] += 1
                except TypeError as exc:
                    raise BagError(f"{bag.path}: {m.topic} -> '{key}': {exc}") from None
        tick(next_tick)
    order = np.argsort(ref_t, kind="stable")
    result.ref_stamps = np.asarray(ref_t)[order]
    result.ref_values = np.asarray(ref_v).reshape(len(ref_t), -1)[order]
    return result


def action_errors(result: ReplayResult, dt: float, max_gap_s: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(predicted, recorded, horizon index)`` of every executed action with a recorded command at its due time."""
    if not result.chunks or not len(result.ref_stamps):
        return np.zeros((0, 0)), np.zeros((0, 0)), np.zeros(0, int)
    chunks = np.stack(result.chunks)  # (C, Ta, A)
    steps = np.arange(1, chunks.shape[1] + 1)
    due = np.asarray(result.stamps)[:, None] + steps[None, :] * dt
    ref, ok = interpolate(result.ref_stamps, result.ref_values, due.reshape(-1), max_gap_s)
    horizon = np.broadcast_to(np.arange(chunks.shape[1]), due.shape).reshape(-1)
    pred = chunks.reshape(-1, chunks.shape[2])
    return pred[ok], ref[ok], horizon[ok]


def summarize(result: ReplayResult, names: list[str], dt: float, max_gap_s: float) -> dict:
    """Action error (overall, per dimension, per horizon step) and inference latency percentiles."""
    pred, ref, horizon = action_errors(result, dt, max_gap_s)
    report: dict = {"chunks": len(result.chunks), "warm_fraction": float(np.mean(result.warm)) if result.warm else 0.0,
                    "refused_ticks": dict(result.refusals), "rejected_samples": dict(result.rejected),
                    "compared_actions": int(len(pred))}
    if len(pred):
        err = pred - ref
        report["action_error"] = {
            "mae": float(np.abs(err).mean()),
            "rmse": float(np.sqrt((err**2).mean())),
            "per_dim": {n: {"mae": float(np.abs(err[:, i]).mean()), "rmse": float(np.sqrt((err[:, i] ** 2).mean()))}
                        for i, n in enumerate(names)},
            "rmse_by_step": [float(np.sqrt((err[horizon == h] ** 2).mean())) for h in range(int(horizon.max()) + 1)],
        }
    if result.latencies:
        lat = np.asarray(result.latencies) * 1e3
        report["latency_ms"] = {"p50": float(np.percentile(lat, 50)), "p90": float(np.percentile(lat, 90)),
                                "p99": float(np.percentile(lat, 99)), "max": float(lat.max()), "mean": float(lat.mean())}
    return report


def plot(result: ReplayResult, names: list[str], dt: float, path: str | Path, title: str = "", max_gap_s: float = 0.25) -> Path:
    """Recorded commands against each chunk's predicted actions, one panel per action dimension (PNG).

    The recorded line is broken where commands are more than ``max_gap_s`` apart (nothing was commanded).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(names), 1, figsize=(11, 2.6 * len(names) + 0.6), sharex=True, squeeze=False)
    t0 = result.start
    ref_t, ref_v = result.ref_stamps - t0, result.ref_values
    if len(ref_t):
        breaks = np.flatnonzero(np.diff(ref_t) > max_gap_s) + 1
        ref_t = np.insert(ref_t, breaks, np.nan)
        ref_v = np.insert(ref_v, breaks, np.nan, axis=0)
    for i, (ax, name) in enumerate(zip(axes[:, 0], names)):
        if len(ref_t):
            ax.plot(ref_t, ref_v[:, i], color="black", lw=1.5, label="recorded")
        for j, (stamp, chunk) in enumerate(zip(result.stamps, result.chunks)):
            due = stamp - t0 + dt * np.arange(1, len(chunk) + 1)
            ax.plot(due, chunk[:, i], color="tab:orange", lw=0.8, alpha=0.5, label="predicted chunks" if j == 0 else None)
        if result.chunks:
            first = np.array([c[0, i] for c in result.chunks])
            ax.plot(np.asarray(result.stamps) - t0 + dt, first, ".", color="tab:red", ms=3, label="first predicted action")
        ax.set_ylabel(name)
        ax.grid(alpha=0.3)
    axes[0, 0].legend(loc="upper right", fontsize=8)
    axes[-1, 0].set_xlabel("time since the start of the bag (s)")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="dp-replay", description="Replay a bag through a policy offline, as the policy node would.")
    parser.add_argument("bag", help="bag directory (MCAP or sqlite3)")
    parser.add_argument("--checkpoint", required=True, help="policy file (.safetensors)")
    parser.add_argument("--params", default=None,
                        help="the policy node's parameter file (e.g. config/pusht_sim.yaml); default: the node's defaults")
    parser.add_argument("--node", default="policy", help="node name of the section in --params")
    parser.add_argument("--reference-topic", default="/robot/servo_target", help="recorded commands (PoseStamped)")
    parser.add_argument("--device", default=None, help="auto, cpu, cuda (default: the parameter file's)")
    parser.add_argument("--seed", type=int, default=0, help="sampling seed (-1: unseeded, as live)")
    parser.add_argument("--max-gap", type=float, default=0.25, help="s: compare only where recorded commands are this dense")
    parser.add_argument("--from", dest="start", type=float, default=0.0, help="s after the bag's start to begin at")
    parser.add_argument("--to", dest="stop", type=float, default=float("inf"), help="s after the bag's start to end at")
    parser.add_argument("--plot", default=None, help="write predicted vs recorded actions to this PNG")
    parser.add_argument("--output", default=None, help="write the report as JSON")
    args = parser.parse_args(argv)
    try:
        params = load_node_params(args.params, args.node) if args.params else PolicyNodeParams()
        if params.cpu_threads > 0:
            torch.set_num_threads(params.cpu_threads)  # as the node: latencies are comparable
        check_policy_period(args.checkpoint, params.dt)
        policy = load_policy(args.checkpoint, args.device or params.device)
        cameras = read_cameras(policy_file_extra(args.checkpoint).get(CAMERAS_ATTRIBUTE))
        result = replay_bag(args.bag, policy, params, args.reference_topic, None if args.seed < 0 else args.seed,
                            window=(args.start, args.stop), cameras=cameras)
    except (BagError, CheckpointError, ConfigError) as exc:
        print(f"dp-replay: error: {exc}", file=sys.stderr)
        return 1
    report = {"bag": str(args.bag), "checkpoint": str(args.checkpoint), "device": str(policy.device),
              **summarize(result, list(params.action_names), params.dt, args.max_gap)}
    if not result.chunks:
        print(f"dp-replay: error: the policy never ran: refused ticks {dict(result.refusals)}", file=sys.stderr)
        return 1
    err, lat = report.get("action_error"), report["latency_ms"]
    print(f"{report['chunks']} chunks ({report['warm_fraction']:.0%} warm), {report['compared_actions']} actions compared; "
          f"refused ticks {report['refused_ticks']}")
    if err:
        dims = ", ".join(f"{n} {v['mae']:.3f}/{v['rmse']:.3f}" for n, v in err["per_dim"].items())
        print(f"action error MAE/RMSE: overall {err['mae']:.3f}/{err['rmse']:.3f}; {dims}")
    else:
        print(f"no recorded commands on {args.reference_topic} at the predicted actions' due times")
    print(f"inference latency ms: p50 {lat['p50']:.1f}, p90 {lat['p90']:.1f}, p99 {lat['p99']:.1f}, max {lat['max']:.1f} "
          f"on {policy.device}")
    if args.plot:
        print(f"plot: {plot(result, list(params.action_names), params.dt, args.plot, Path(args.bag).name, args.max_gap)}")
    if args.output:
        Path(args.output).write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
