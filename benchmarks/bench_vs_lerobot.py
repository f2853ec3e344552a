"""Our Diffusion Policy against LeRobot's (lerobot 0.4.4) at equal sizes, in one run; prints JSON.

    bash benchmarks/setup_envs.sh            # once: .bench-venvs/{lerobot,ours-torch29}
    python benchmarks/bench_vs_lerobot.py --device cpu --threads 1

Sides, each a worker process in its own environment, all on this machine in this run:
``ours`` (this venv), ``ours-torch29`` (our code on LeRobot's torch 2.9.1), ``lerobot``, and on
request ``ours-graph`` (ours with ``train.cuda_graph``; training cases only) and ``ours-compile``
(ours with ``InferenceOptions(compile=True)``; inference cases only).
Cases are built from our configs (``PRESET:CAMERAS:STEPS`` for inference, ``PRESET:CAMERAS:BATCH``
for training); LeRobot gets the same sizes, random weights. The workers are timed in turns
(A B C, C B A, ...) so that drift of a shared machine spreads over all sides.

Inference: p50/p99 of one chunk, batch 1, cold start, DDIM with the given steps; ``e2e`` is each
side's closed-loop entry point with numpy in and out (ours ``PolicyRunner.infer``, LeRobot a
rollout step that generates a chunk), ``model`` the bare sampler (``predict_action`` /
``generate_actions``). Training: samples/s of a full optimisation step on synthetic data.
Ratios are ours/LeRobot: latency ratio < 1 and throughput ratio > 1 mean ours is faster.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
from tqdm import tqdm

REPO = Path(__file__).resolve().parents[1]
WORKERS = Path(__file__).resolve().parent / "vs_lerobot"
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/machine.py

from dp_core.config import ConfigError, load_config
from machine import code_version, cpu_model

LEROBOT_GROUP_NORM_CHANNELS = 16  # LeRobot: GroupNorm(num_features // 16) in the ResNet


TRAIN_ONLY_SIDES = {"ours-graph": {"DP_BENCH_TRAIN_CUDA_GRAPH": "1"}}  # side -> environment of its worker
INFER_ONLY_SIDES = {"ours-compile": {"DP_BENCH_INFER_COMPILE": "1"}}


class Worker:
    """One side's worker process, spoken to in JSON lines."""

    def __init__(self, name: str, python: str, script: str, threads: int, extra_env: dict[str, str] | None = None) -> None:
        self.name = name
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
        env.update(extra_env or {})
        if threads:
            env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
        self.proc = subprocess.Popen(
            [python, str(WORKERS / script)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            text=True, cwd=REPO, env=env, bufsize=1,
        )

    def ask(self, **msg) -> dict:
        self.proc.stdin.write(json.dumps(msg) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"worker {self.name} exited (code {self.proc.wait()}); see its stderr above")
        reply = json.loads(line)
        if not reply.get("ok"):
            raise RuntimeError(f"worker {self.name}: {reply.get('error')}\n{reply.get('traceback', '')}")
        return reply

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.write(json.dumps({"cmd": "quit"}) + "\n")
            self.proc.stdin.flush()
            self.proc.wait(timeout=60)


def parse_spec(spec: str) -> tuple[str, int, int, int | None]:
    """``PRESET:CAMERAS:NUMBER[:REPS]``; REPS overrides the timed calls per side per round."""
    parts = spec.split(":")
    try:
        if len(parts) not in (3, 4):
            raise ValueError
        reps = int(parts[3]) if len(parts) == 4 else None
        if reps is not None and reps < 1:
            raise ValueError
        return parts[0], int(parts[1]), int(parts[2]), reps
    except ValueError:
        raise SystemExit(f"bad case '{spec}': expected PRESET:CAMERAS:NUMBER[:REPS], e.g. pusht_image_unet:2:16") from None


def case_config(preset: str, cameras: int, steps: int | None) -> tuple[list[str], dict, list[str]]:
    """Our config overrides, the sizes handed to LeRobot, and what does not map exactly."""
    path = REPO / "config" / f"{preset}.yaml"
    overrides = ["policy.diffusion.inference_scheduler=ddim"]
    if steps is not None:
        overrides.append(f"policy.diffusion.num_inference_steps={steps}")
    cfg = load_config(path, overrides).policy
    rgb = cfg.shape_meta.rgb_keys
    if cameras and not rgb:
        raise SystemExit(f"{preset} has no camera; use CAMERAS 0")
    if cameras < len(rgb):
        raise SystemExit(f"{preset} has {len(rgb)} cameras; cannot drop to {cameras}")
    if rgb:
        shape = cfg.shape_meta.obs[rgb[0]].shape
        for i in range(len(rgb), cameras):
            overrides.append(f"policy.shape_meta.obs.{rgb[0]}{i + 1}={{type: rgb, shape: {shape}, source: img{i + 1}}}")
        cfg = load_config(path, overrides).policy
    sm, u, v, d = cfg.shape_meta, cfg.unet, cfg.vision, cfg.diffusion
    if cfg.kind != "diffusion" or cfg.denoiser != "unet":
        raise SystemExit(f"{preset}: only the diffusion UNet has a LeRobot counterpart")
    low = {k: sm.obs[k].shape[0] for k in sm.low_dim_keys}
    if not low:
        raise SystemExit(f"{preset}: LeRobot needs a low-dim state input")
    model = {
        "horizon": cfg.horizon, "n_obs_steps": cfg.n_obs_steps, "n_action_steps": cfg.n_action_steps,
        "action_dim": sm.action.dim, "down_dims": u.down_dims, "kernel_size": u.kernel_size,
        "n_groups": u.n_groups, "step_embed_dim": u.step_embed_dim, "num_keypoints": v.num_keypoints,
        "crop_shape": v.crop_shape, "cameras": sm.rgb_keys,
        "image_shape": sm.obs[sm.rgb_keys[0]].shape if sm.rgb_keys else None,
        "low_dims": low, "state_key": "agent_pos" if "agent_pos" in low else next(iter(low)),
        "num_train_timesteps": d.num_train_timesteps, "beta_schedule": d.beta_schedule, "clip_sample": d.clip_sample,
    }
    notes = []
    if sm.rgb_keys and v.feature_dim != 2 * v.num_keypoints:
        notes.append(f"camera feature: ours {v.feature_dim}, LeRobot fixed at 2*num_keypoints={2 * v.num_keypoints}")
    if sm.rgb_keys and v.group_norm_channels != LEROBOT_GROUP_NORM_CHANNELS:
        notes.append(f"ResNet GroupNorm: ours {v.group_norm_channels} channels/group, LeRobot 16")
    if len(low) > 1:
        others = [k for k in low if k != model["state_key"]]
        notes.append(f"'{model['state_key']}' -> observation.state, {others} -> observation.environment_state "
                     "(same global condition size, different order)")
    return overrides, model, notes


COMMON_NOTES = [
    ("LeRobot: noise_scheduler_type=DDIM, use_film_scale_modulation=True, use_separate_rgb_encoder_per_camera=True, "
     "use_group_norm=True, pretrained_backbone_weights=None, resnet18, crop_is_random=True; other sizes from our config"),
    "LeRobot's UNet asks horizon % 2**len(down_dims) == 0 (ours 2**(len-1)); both hold for horizon 16",
    ("inference inputs: the same seeded uint8 HWC images and float state; LeRobot converts them with its "
     "preprocess_observation + preprocessor (normalise) as in lerobot_eval.rollout"),
    ("training: ours Trainer.train_step (AdamW wd 1e-6, grad clip 1.0, EMA update every step, uint8 images to "
     "device); LeRobot preprocessor + update_policy (Adam wd 1e-6, grad clip 10, no EMA, float32 images to device); "
     "no data loader workers on either side"),
    ("CUDA: both sides train with TF32 matrix products and cuDNN autotuning (LeRobot's train and eval scripts "
     "set them; our Trainer's allow_tf32 default); our fp32 inference runs without TF32"),
]


def summarize_times(times: list[float]) -> dict:
    ms = np.asarray(times) * 1e3
    return {"p50_ms": round(float(np.median(ms)), 3), "p99_ms": round(float(np.percentile(ms, 99)), 3),
            "mean_ms": round(float(ms.mean()), 3), "n": len(ms)}


def run_case(workers: list[Worker], case: dict, warmup: int, rounds: int, reps: int, bar: tqdm) -> dict:
    skip = TRAIN_ONLY_SIDES if case["task"] == "infer" else INFER_ONLY_SIDES
    workers = [w for w in workers if w.name not in skip]
    infos = {w.name: w.ask(cmd="setup", case=case)["info"] for w in workers}
    times: dict[str, list[float]] = {w.name: [] for w in workers}
    try:
        for w in workers:
            w.ask(cmd="run", n=warmup)
        for r in range(rounds):
            for w in workers if r % 2 == 0 else workers[::-1]:
                times[w.name] += w.ask(cmd="run", n=reps)["times_s"]
                bar.update(1)
    finally:
        for w in workers:
            w.ask(cmd="teardown")
    results = {}
    for name, ts in times.items():
        row = {**summarize_times(ts), "params": infos[name]["params"], "entry": infos[name]["entry"]}
        row.update({k: infos[name][k] for k in ("cuda_graph", "compile") if k in infos[name]})
        if case["task"] == "train":
            row["samples_per_s"] = round(case["batch_size"] / (row["p50_ms"] / 1e3), 2)
        results[name] = row
    return {"results": results, "infos": infos}


def ratios(results: dict, task: str) -> dict:
    if "lerobot" not in results:
        return {}
    theirs = results["lerobot"]
    out = {}
    for name, row in results.items():
        if name == "lerobot":
            continue
        if task == "infer":
            out[f"{name}/lerobot_p50"] = round(row["p50_ms"] / theirs["p50_ms"], 3)
            out[f"{name}/lerobot_p99"] = round(row["p99_ms"] / theirs["p99_ms"], 3)
        else:
            out[f"{name}/lerobot_samples_per_s"] = round(row["samples_per_s"] / theirs["samples_per_s"], 3)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads in every worker (0: torch default)")
    parser.add_argument("--infer", nargs="*", default=None, metavar="PRESET:CAMERAS:STEPS[:REPS]")
    parser.add_argument("--train", nargs="*", default=None, metavar="PRESET:CAMERAS:BATCH[:REPS]")
    parser.add_argument("--paths", nargs="+", default=["e2e"], choices=["e2e", "model"])
    parser.add_argument("--precisions", nargs="+", default=None, choices=["fp32", "bf16"],
                        help="training precisions (default: fp32 on CPU, fp32 and bf16 on CUDA)")
    parser.add_argument("--sides", nargs="+", default=["ours", "ours-torch29", "lerobot"],
                        choices=["ours", "ours-torch29", "lerobot", "ours-graph", "ours-compile"])
    parser.add_argument("--envs", default=str(REPO / ".bench-venvs"), help="folder made by setup_envs.sh")
    parser.add_argument("--python", nargs="+", default=[], metavar="SIDE=PATH",
                        help="interpreter of a side instead of --envs (ours: this interpreter), e.g. lerobot=/opt/lr/bin/python")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=4, help="interleaved rounds per case")
    parser.add_argument("--reps", type=int, default=5, help="timed chunks per side per round")
    parser.add_argument("--train-warmup", type=int, default=3)
    parser.add_argument("--train-rounds", type=int, default=4)
    parser.add_argument("--train-reps", type=int, default=3)
    parser.add_argument("--output", help="also write the JSON here")
    args = parser.parse_args()

    gpu = args.device == "cuda"
    if args.infer is None:
        args.infer = (["pusht_image_unet:2:16", "pusht_image_unet:1:16", "pusht_image_unet_small:1:16",
                       "pusht_state_unet_small:0:16"] if gpu else
                      ["pusht_state_unet_small:0:16", "pusht_state_unet_small:0:8", "pusht_image_unet_small:1:8"])
    if args.train is None:
        args.train = (["pusht_image_unet:2:64", "pusht_image_unet_small:1:64", "pusht_state_unet_small:0:256"] if gpu
                      else ["pusht_state_unet_small:0:256", "pusht_image_unet_small:1:8"])
    precisions = args.precisions or (["fp32", "bf16"] if gpu else ["fp32"])
    if not gpu and "bf16" in precisions:
        raise SystemExit("bf16 training is only compared on CUDA")

    pythons = {"ours": sys.executable, "ours-graph": sys.executable, "ours-compile": sys.executable,
               "ours-torch29": str(Path(args.envs) / "ours-torch29" / "bin" / "python"),
               "lerobot": str(Path(args.envs) / "lerobot" / "bin" / "python")}
    for item in args.python:
        side, _, path = item.partition("=")
        if side not in pythons or not path:
            raise SystemExit(f"bad --python '{item}': expected SIDE=PATH with SIDE one of {sorted(pythons)}")
        pythons[side] = path
    for side in args.sides:
        if not Path(pythons[side]).exists():
            raise SystemExit(f"{pythons[side]} missing: run benchmarks/setup_envs.sh first")

    cases = []
    try:
        for spec in args.infer:
            preset, cams, steps, reps = parse_spec(spec)
            overrides, model, notes = case_config(preset, cams, steps)
            for path in args.paths:
                cases.append({"task": "infer", "path": path, "preset": preset, "cameras": len(model["cameras"]),
                              "steps": steps, "reps": reps or args.reps, "overrides": overrides, "model": model,
                              "notes": notes})
        for spec in args.train:
            preset, cams, batch, reps = parse_spec(spec)
            overrides, model, notes = case_config(preset, cams, None)
            for precision in precisions:
                cases.append({"task": "train", "preset": preset, "cameras": len(model["cameras"]), "batch_size": batch,
                              "reps": reps or args.train_reps, "precision": precision, "overrides": overrides,
                              "model": model, "notes": notes})
    except ConfigError as exc:
        raise SystemExit(f"config error: {exc}") from None
    for case in cases:
        case.update(device=args.device, threads=args.threads)

    load_start = os.getloadavg()
    started = datetime.datetime.now(datetime.UTC)
    script = {"ours": "worker_ours.py", "ours-torch29": "worker_ours.py", "ours-graph": "worker_ours.py",
              "ours-compile": "worker_ours.py", "lerobot": "worker_lerobot.py"}
    extra_env = {**TRAIN_ONLY_SIDES, **INFER_ONLY_SIDES}
    workers = [Worker(side, pythons[side], script[side], args.threads, extra_env.get(side)) for side in args.sides]
    out_cases = []
    sides_info: dict = {}
    n_infer = len(set(args.sides) - TRAIN_ONLY_SIDES.keys())
    n_train = len(set(args.sides) - INFER_ONLY_SIDES.keys())
    total = sum(args.rounds * n_infer if c["task"] == "infer" else args.train_rounds * n_train for c in cases)
    try:
        with tqdm(total=total, desc="bench_vs_lerobot", file=sys.stderr) as bar:
            for case in cases:
                infer = case["task"] == "infer"
                bar.set_postfix_str(f"{case['task']} {case['preset']} x{case['cameras']}")
                res = run_case(workers, case,
                               args.warmup if infer else args.train_warmup,
                               args.rounds if infer else args.train_rounds,
                               case["reps"], bar)
                for name, info in res["infos"].items():
                    sides_info[name] = {"versions": info["versions"], "threads": info["threads"]}
                params = {r["params"] for r in res["results"].values()}
                row = {k: case[k] for k in ("task", "preset", "cameras", "steps", "path", "batch_size", "precision") if k in case}
                row["results"] = res["results"]
                row["ratios"] = ratios(res["results"], case["task"])
                row["same_param_count"] = len(params) == 1
                row["not_matched"] = case["notes"]
                out_cases.append(row)
                print(json.dumps(row), file=sys.stderr, flush=True)
    finally:
        for w in workers:
            w.close()

    gpu_name = None
    if gpu:
        try:
            gpu_name = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
                                      check=False, capture_output=True, text=True).stdout.strip() or None
        except FileNotFoundError:
            gpu_name = "unknown (no nvidia-smi)"
    report = {
        "meta": {
            "command": " ".join([Path(sys.executable).name, *sys.argv]),
            "commit": code_version(),
            "started_utc": started.isoformat(timespec="seconds"),
            "device": args.device, "gpu": gpu_name, "cpu": cpu_model(),
            "cpu_count": os.cpu_count(), "threads": args.threads,
            "loadavg_start": [round(x, 2) for x in load_start],
            "loadavg_end": [round(x, 2) for x in os.getloadavg()],
            "interleaving": f"{args.rounds} rounds (train {args.train_rounds}) of n calls per side after "
                            f"{args.warmup} (train {args.train_warmup}) warm-up calls; sides alternate order each round",
            "sides": sides_info,
            "notes": COMMON_NOTES,
        },
        "cases": out_cases,
    }
    text = json.dumps(report, indent=2)
    print(text)
    if args.output:
        Path(args.output).write_text(text + "\n")


if __name__ == "__main__":
    main()
