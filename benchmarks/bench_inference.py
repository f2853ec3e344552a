"""Per-chunk inference latency of the policy presets (random weights), printed as JSON.

    python benchmarks/bench_inference.py --device cpu --threads 1            # the CPU target rows
    python benchmarks/bench_inference.py --device cuda --matrix full         # everything, on a GPU

One JSON line per row as it is measured, then one JSON document with the hardware and all rows.
A row is (preset, cameras, image size, sampler setting, path): batch 1, observations encoded once
per chunk, ``--warmup`` chunks, then ``--repeats`` chunks or ``--budget-s`` seconds, whichever ends
first (at least 5). Times: wall clock (p50, p99, mean) and the calling thread's CPU time (p50; on a
shared machine it is less disturbed by other processes than wall time). Paths: ``reference``
(diffusers' step, plain modules), ``fast`` (the default path of DiffusionPolicy), and on CUDA also
``fast-bf16``; CUDA rows of the fast paths include CUDA-graph replay. Image presets take a
``--cameras`` count (extra cameras are copies of the first camera's spec) and ``--image-sizes``
(the crop keeps the preset's crop-to-image ratio).
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import os
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))  # time this checkout's code, whatever is installed
sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/machine.py

from dp_core.checkpoint import resolve_device
from dp_core.config import ObsSpec, PolicyConfig, load_config
from dp_core.fast_inference import InferenceOptions
from dp_core.policy import DiffusionPolicy, shift_chunk
from machine import code_version, cpu_model

SETTINGS = {"ddpm100": ("ddpm", 100, False), "ddim16": ("ddim", 16, False), "ddim8": ("ddim", 8, False),
            "ddim4": ("ddim", 4, False), "warm": ("ddim", 16, True)}
PATHS = {"reference": InferenceOptions(fast=False), "fast": InferenceOptions(),
         "fast-bf16": InferenceOptions(precision="bf16"), "fast-compile": InferenceOptions(compile=True),
         "fast-bf16-compile": InferenceOptions(precision="bf16", compile=True),
         "fast-ort": InferenceOptions(backend="onnxruntime"),
         "fast-ort-int8": InferenceOptions(backend="onnxruntime", precision="int8"), "fast-splitk": InferenceOptions(split_k=True),
         "fast-bf16-splitk": InferenceOptions(precision="bf16", split_k=True),
         "fast-bf16-compile-splitk": InferenceOptions(precision="bf16", compile=True, split_k=True),
         "fast-triton": InferenceOptions(split_k="triton"), "fast-bf16-triton": InferenceOptions(precision="bf16", split_k="triton"),
         "fast-compile-triton": InferenceOptions(compile=True, split_k="triton"),
         "fast-bf16-compile-triton": InferenceOptions(precision="bf16", compile=True, split_k="triton"),
         "fast-nosplit": InferenceOptions(split_k=False),
         "fast-bf16-compile-nosplit": InferenceOptions(precision="bf16", compile=True, split_k=False),
         "fast-int8": InferenceOptions(precision="int8"), "fast-int8-compile": InferenceOptions(precision="int8", compile=True)}
# The targets: rows that must be measured on every run of the default matrix.
TARGET_ROWS = [
    ("pusht_state_unet_small", 0, None, "ddim16"),
    ("pusht_image_unet_small", 1, (96, 96), "ddim8"),
]


def variant(preset: str, cameras: int, size: tuple[int, int] | None) -> PolicyConfig:
    """The preset's policy config with ``cameras`` copies of its camera at ``size`` (H, W)."""
    cfg = load_config(REPO / "config" / f"{preset}.yaml").policy
    rgb = cfg.shape_meta.rgb_keys
    if not rgb:
        return cfg
    spec = cfg.shape_meta.obs[rgb[0]]
    h0, w0 = spec.shape[:2]
    h, w = size or (h0, w0)
    obs = {k: v for k, v in cfg.shape_meta.obs.items() if v.type != "rgb"}
    for i in range(cameras):
        obs[rgb[0] if i == 0 else f"{rgb[0]}_{i}"] = ObsSpec("rgb", [h, w, 3], source=f"{spec.source}_{i}")
    vision = cfg.vision
    if vision.crop_shape:
        ch, cw = vision.crop_shape
        vision = replace(vision, crop_shape=[round(h * ch / h0), round(w * cw / w0)])
    return replace(cfg, shape_meta=replace(cfg.shape_meta, obs=obs), vision=vision)


def fake_obs(cfg: PolicyConfig, device: torch.device) -> dict[str, torch.Tensor]:
    obs = {}
    for key, spec in cfg.shape_meta.obs.items():
        shape = (1, cfg.n_obs_steps, *spec.shape)
        if spec.type == "rgb":
            obs[key] = torch.randint(0, 255, shape, dtype=torch.uint8, device=device)
        else:
            obs[key] = torch.randn(shape, device=device)
    return obs


def bench(policy: DiffusionPolicy, setting: str, warmup: int, repeats: int, budget_s: float) -> dict:
    """Latency of one chunk; warm-start rows feed each chunk the previous one, shifted."""
    _, steps, warm = SETTINGS[setting]
    device = policy.device
    cfg = policy.cfg
    obs = fake_obs(cfg, device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    prev = policy.predict_action(obs, num_inference_steps=steps)["action_pred"]
    wall, cpu = [], []
    start = time.perf_counter()
    for i in range(warmup + repeats):
        sync()
        t0, c0 = time.perf_counter(), time.thread_time()
        guess = shift_chunk(prev, cfg.n_action_steps) if warm else None
        prev = policy.predict_action(obs, warm_start=guess, num_inference_steps=steps)["action_pred"]
        sync()
        if i >= warmup:
            wall.append(time.perf_counter() - t0)
            cpu.append(time.thread_time() - c0)
            if len(wall) >= 5 and time.perf_counter() - start > budget_s:
                break
    ms, cpu_ms = np.array(wall) * 1e3, np.array(cpu) * 1e3
    label = setting if not warm else f"warm{cfg.diffusion.warm_start_steps}"
    return {
        "setting": label,
        "p50_ms": round(float(np.median(ms)), 2),
        "p99_ms": round(float(np.percentile(ms, 99)), 2),
        "mean_ms": round(float(ms.mean()), 2),
        "cpu_p50_ms": round(float(np.median(cpu_ms)), 2),
        "runs": len(ms),
    }


def rows(matrix: str, presets: list[str] | None, cameras: list[int], sizes: list[tuple[int, int]], settings: list[str]) -> list[tuple]:
    """(preset, cameras, size, setting) rows: ``targets`` (the issue's CPU targets) or ``full``."""
    if matrix == "targets" and presets is None:
        return list(TARGET_ROWS)
    out = []
    for preset in presets or sorted(p.stem for p in (REPO / "config").glob("pusht_*.yaml") if "sim" not in p.stem):
        cfg = load_config(REPO / "config" / f"{preset}.yaml").policy
        if cfg.kind != "diffusion":
            continue
        image = bool(cfg.shape_meta.rgb_keys)
        for n in cameras if image else [0]:
            for size in sizes if image else [None]:
                out.extend((preset, n, size, s) for s in settings)
    return out


def load_average() -> list[float] | None:
    return [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--matrix", choices=["targets", "full"], default="targets",
                        help="targets: the issue's CPU target rows (unless --presets); full: presets x cameras x sizes x settings")
    parser.add_argument("--presets", nargs="+", default=None, help="config/<name>.yaml presets (default: all diffusion presets)")
    parser.add_argument("--cameras", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--image-sizes", nargs="+", default=["96x96", "240x320"], help="HxW")
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    parser.add_argument("--paths", nargs="+", default=None, choices=list(PATHS),
                        help="default: reference and fast (+ fast-bf16 on CUDA)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch default)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--budget-s", type=float, default=20.0, help="stop a row after this long (>= 5 runs)")
    parser.add_argument("--output", default=None, help="also write the JSON document here")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    paths = args.paths or (["reference", "fast", "fast-bf16"] if device.type == "cuda" else ["reference", "fast"])
    sizes = [tuple(int(v) for v in s.lower().split("x")) for s in args.image_sizes]
    load_before = load_average()
    results = []
    for preset, cameras, size, setting in rows(args.matrix, args.presets, args.cameras, sizes, args.settings):
        cfg = variant(preset, cameras, size)
        cfg.diffusion.inference_scheduler = SETTINGS[setting][0]
        for path in paths:  # a policy per path: the fast path changes the encoders' layout for good
            torch.manual_seed(0)
            policy = DiffusionPolicy(cfg).to(device).eval()
            shape = cfg.shape_meta.obs[cfg.shape_meta.rgb_keys[0]].shape[:2] if cameras else None
            key = {"preset": preset, "cameras": cameras, "image": "x".join(map(str, shape)) if shape else None, "path": path}
            try:
                policy.configure_inference(PATHS[path])
            except ValueError as e:  # a path this policy has not (e.g. ONNX Runtime for a transformer): say so, go on
                results.append({**key, "setting": setting, "skipped": str(e)})
                print(json.dumps(results[-1]), flush=True)
                continue
            row = bench(policy, setting, args.warmup, args.repeats, args.budget_s)
            results.append({**key, **row, "options": dataclasses.asdict(policy.inference_options),
                            "load_avg": load_average()})
            print(json.dumps(results[-1]), flush=True)
            del policy
            gc.collect()  # the policy and its sampler refer to each other: free its ONNX Runtime sessions now
    meta = {
        "commit": code_version(),
        "device": str(device),
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "load_avg_before": load_before,
        "load_avg_after": load_average(),
        "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    doc = {"meta": meta, "results": results}
    print(json.dumps(doc, indent=2))
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(json.dumps(doc, indent=2))


if __name__ == "__main__":
    main()
