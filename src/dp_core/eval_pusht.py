"""Push-T evaluation as the paper scores it, and the ``dp-eval`` command.

``dp-eval pusht --checkpoint models/pusht_state_unet_small.safetensors --episodes 50 --seed 100000``

Episode ``i`` starts from seed ``seed + i``; the policy runs receding-horizon (a chunk
every Ta steps, from noise; ``--warm-start``: warm-started from the previous one) for at most 300 steps. Score = mean
over episodes of the maximum reward, reward = clip(coverage / 0.95, 0, 1).
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from .checkpoint import CheckpointError, load_policy
from .config import ShapeMeta
from .control_period import check_policy_period
from .fast_inference import InferenceOptions
from .inference import PolicyRunner, observation_from_sources, stack_history
from .sim.pusht import PushTConfig, PushTEnv, pusht_score


@dataclass
class EpisodeResult:
    seed: int
    max_coverage: float
    steps: int
    success: bool


def pusht_render_size(shape_meta: ShapeMeta) -> int:
    """The simulator's image size for a policy's image observations (0: none); they must be square and equal."""
    sizes = {key: tuple(shape_meta.obs[key].shape[:2]) for key in shape_meta.rgb_keys}
    if not sizes:
        return 0
    (h, w), *others = set(sizes.values())
    if others or h != w:
        raise ValueError(f"the Push-T simulator renders one square image size; the policy's image observations "
                         f"are {sizes}")
    return h


def pusht_sources(env_obs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Simulator observation under the dataset's array names (``img`` is the image)."""
    out = dict(env_obs)
    if "image" in env_obs:
        out["img"] = env_obs["image"]
    return out


def run_episode(
    env: PushTEnv, runner: PolicyRunner, seed: int, video: list[np.ndarray] | None = None, video_size: int = 256
) -> tuple[EpisodeResult, list[float]]:
    cfg = runner.policy.cfg
    sm = cfg.shape_meta
    runner.reset()
    obs = env.reset(seed=seed)
    history = [observation_from_sources(pusht_sources(obs), sm)]
    latencies, max_cov, step, success, done = [], 0.0, 0, False, False
    if video is not None:
        video.append(env.render(video_size))
    while not done:
        result = runner.infer(stack_history(history, sm, cfg.n_obs_steps), t=step * runner.dt)
        latencies.append(result.latency_s)
        start = cfg.n_obs_steps - 1
        for action in result.chunk[start : start + cfg.n_action_steps]:
            obs, coverage, done, info = env.step(action)
            history.append(observation_from_sources(pusht_sources(obs), sm))
            history = history[-cfg.n_obs_steps :]
            max_cov, step, success = max(max_cov, coverage), step + 1, success or info["success"]
            if video is not None:
                video.append(env.render(video_size))
            if done:
                break
    return EpisodeResult(seed, max_cov, step, success), latencies


def evaluate(
    checkpoint: str | Path,
    episodes: int = 50,
    seed: int = 100_000,
    device: str = "auto",
    num_inference_steps: int | None = None,
    warm_start: bool = False,
    warm_steps: int | None = None,
    warm_strength: float | None = None,
    max_steps: int = 300,
    video_dir: str | Path | None = None,
    progress: bool = True,
    inference: InferenceOptions | None = None,
) -> dict:
    """Evaluate a policy file in the Push-T simulator; returns the report dict."""
    policy = load_policy(checkpoint, device)
    d = policy.cfg.diffusion
    given = {"num_inference_steps": num_inference_steps, "warm_start_steps": warm_steps, "warm_start_strength": warm_strength}
    overrides = {k: v for k, v in given.items() if v is not None}
    replace(d, **overrides)  # checks them with the policy's schedule (ConfigError, a ValueError)
    for key, value in overrides.items():  # in place: the policy's samplers read this object
        setattr(d, key, value)
    env = PushTEnv(PushTConfig(max_steps=max_steps, render_size=pusht_render_size(policy.cfg.shape_meta)))
    check_policy_period(checkpoint, 1.0 / env.config.control_hz)
    runner = PolicyRunner(policy, dt=1.0 / env.config.control_hz, warm_start=warm_start, seed=seed, inference=inference)
    warmup_s = runner.warmup()  # graph capture or the ONNX Runtime graph happen here, not in the first episode's latencies
    results, latencies = [], []
    bar = tqdm(range(episodes), desc="Push-T eval", disable=not progress, dynamic_ncols=True)
    for i in bar:
        frames: list[np.ndarray] | None = [] if video_dir else None
        res, lat = run_episode(env, runner, seed + i, frames)
        results.append(res)
        latencies.extend(lat)
        bar.set_postfix(score=f"{pusht_score([r.max_coverage for r in results]):.3f}")
        if video_dir and frames:
            import imageio.v2 as imageio

            Path(video_dir).mkdir(parents=True, exist_ok=True)
            imageio.mimsave(Path(video_dir) / f"episode_{seed + i}.mp4", frames, fps=env.config.control_hz)
    lat_ms = np.asarray(latencies) * 1e3
    max_covs = [r.max_coverage for r in results]
    return {
        "checkpoint": str(checkpoint),
        "kind": policy.cfg.kind,
        "episodes": episodes,
        "seeds": [seed, seed + episodes - 1],
        "score": pusht_score(max_covs),
        "mean_max_coverage": float(np.mean(max_covs)),
        "success_rate": float(np.mean([r.success for r in results])),
        "inference": {
            "device": str(policy.device),
            "path": "fast" if policy.uses_fast_path else "reference",
            "backend": policy.inference_options.backend,
            "precision": policy.inference_options.precision,
            "warmup_s": round(warmup_s, 3),
            "scheduler": d.inference_scheduler,
            "num_inference_steps": d.num_inference_steps,
            "warm_start": warm_start,
            "warm_start_steps": d.warm_start_steps,
            "warm_start_strength": d.warm_start_strength,
            "latency_ms": {
                "p50": float(np.percentile(lat_ms, 50)),
                "p90": float(np.percentile(lat_ms, 90)),
                "p99": float(np.percentile(lat_ms, 99)),
                "mean": float(lat_ms.mean()),
                "chunks": int(lat_ms.size),
            },
        },
        "per_episode": [asdict(r) for r in results],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="dp-eval", description="Evaluate a policy file.")
    sub = parser.add_subparsers(dest="task", required=True)
    p = sub.add_parser("pusht", help="score a policy in the simulated Push-T task (paper metric)")
    p.add_argument("--checkpoint", required=True, help="policy file (.safetensors)")
    p.add_argument("--episodes", type=int, default=50)
    p.add_argument("--seed", type=int, default=100_000, help="episode i uses seed + i")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1 ...")
    p.add_argument("--steps", type=int, default=None, help="denoising steps for cold starts (default: the policy's)")
    p.add_argument("--warm-start", action="store_true",
                   help="start each chunk from the previous one, re-noised (fewer steps; default: from pure noise)")
    p.add_argument("--warm-steps", type=int, default=None, help="denoising steps of a warm start (default: the policy's)")
    p.add_argument("--warm-strength", type=float, default=None, help="re-noising strength of a warm start, (0, 1]")
    p.add_argument("--max-steps", type=int, default=300)
    p.add_argument("--reference-inference", action="store_true", help="sample on the reference path, not the fast one")
    p.add_argument("--inference-backend", choices=["torch", "onnxruntime"], default="torch",
                   help="onnxruntime: the UNet's denoising step in ONNX Runtime (CPU)")
    p.add_argument("--inference-precision", choices=["fp32", "bf16", "int8"], default="fp32",
                   help="bf16: CUDA; int8: int8 weights for the deep convolutions (CPU: with --inference-backend "
                        "onnxruntime; CUDA: torch)")
    p.add_argument("--output", default=None, help="write the JSON report here")
    p.add_argument("--video-dir", default=None, help="write one mp4 per episode here")
    lat = sub.add_parser("latency", help="Push-T score under observation-to-chunk delays, compensation on/off")
    lat.add_argument("--checkpoint", required=True, help="policy file (.safetensors)")
    lat.add_argument("--episodes", type=int, default=20)
    lat.add_argument("--seed", type=int, default=100_000)
    lat.add_argument("--delays", type=float, nargs="+", default=[0.0, 0.1, 0.2, 0.4], help="seconds")
    lat.add_argument("--device", default="auto")
    lat.add_argument("--output", default=None, help="write the JSON table here")
    lat.add_argument("--replan-steps", type=int, default=None,
                     help="a new chunk every this many steps (default: the policy's n_action_steps, as the policy node)")
    lat.add_argument("--warm-start", action="store_true", help="start each chunk from the previous one (default: from noise)")
    for sp in (p, lat):
        sp.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (default 1: batch-1 inference is fastest so, and does not "
                             "collapse when other processes share the cores; 0: torch's default)")
    args = parser.parse_args(argv)
    if args.episodes < 1:
        parser.error("--episodes must be >= 1")
    if args.threads < 0:
        parser.error("--threads must be >= 0")
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.task == "latency":
        if args.replan_steps is not None and args.replan_steps < 1:
            parser.error("--replan-steps must be >= 1")
        return _latency_main(args)
    if not args.warm_start and (args.warm_steps is not None or args.warm_strength is not None):
        parser.error("--warm-steps and --warm-strength apply with --warm-start")
    try:
        report = evaluate(
            args.checkpoint, args.episodes, args.seed, args.device, args.steps,
            args.warm_start, args.warm_steps, args.warm_strength, args.max_steps, args.video_dir,
            inference=InferenceOptions(fast=not args.reference_inference, backend=args.inference_backend,
                                       precision=args.inference_precision),
        )
    except (CheckpointError, ValueError) as exc:
        print(f"dp-eval: error: {exc}", file=sys.stderr)
        return 2
    summary = {k: v for k, v in report.items() if k != "per_episode"}
    print(json.dumps(summary, indent=2))
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(json.dumps(report, indent=2))
    return 0


def _latency_main(args: argparse.Namespace) -> int:
    from .eval_latency import latency_table

    try:
        policy = load_policy(args.checkpoint, args.device)
        check_policy_period(args.checkpoint, 1.0 / PushTConfig().control_hz)
    except (CheckpointError, ValueError) as exc:
        print(f"dp-eval: error: {exc}", file=sys.stderr)
        return 2
    try:
        rows = latency_table(policy, args.delays, args.episodes, args.seed, args.replan_steps, args.warm_start)
    except ValueError as exc:
        print(f"dp-eval: error: {exc}", file=sys.stderr)
        return 2
    print("delay_s  steps  compensation  score   mean_max_cov  dropped")
    for r in rows:
        print(f"{r['delay_s']:7.2f}  {r['delay_steps']:5.1f}  {str(r['compensation']):12}  {r['score']:.3f}   "
              f"{r['mean_max_coverage']:.3f}         {r['fraction_dropped']:.3f}")
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(json.dumps({"checkpoint": args.checkpoint, "episodes": args.episodes,
                                                 "seed": args.seed, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
