"""Per-chunk inference latency of the policy presets (random weights), printed as JSON.

    python benchmarks/bench_inference.py --device cpu --presets pusht_state_unet_small pusht_image_unet_small

For each preset and sampler setting: p50 / p90 / mean over --repeats chunks after --warmup chunks,
batch 1, observations encoded once per chunk (as in closed loop).
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch

from dp_core.checkpoint import resolve_device
from dp_core.config import load_config
from dp_core.policy import DiffusionPolicy, shift_chunk

REPO = Path(__file__).resolve().parents[1]
SETTINGS = [("ddpm", 100, False), ("ddim", 16, False), ("ddim", 8, False), ("ddim", 4, False), ("ddim", 16, True)]


def fake_obs(policy: DiffusionPolicy, device: torch.device) -> dict[str, torch.Tensor]:
    cfg = policy.cfg
    obs = {}
    for key, spec in cfg.shape_meta.obs.items():
        shape = (1, cfg.n_obs_steps, *spec.shape)
        if spec.type == "rgb":
            obs[key] = torch.randint(0, 255, shape, dtype=torch.uint8, device=device)
        else:
            obs[key] = torch.randn(shape, device=device)
    return obs


def bench(policy: DiffusionPolicy, scheduler: str, steps: int, warm: bool, warmup: int, repeats: int) -> dict:
    device = policy.device
    cfg = policy.cfg
    obs = fake_obs(policy, device)
    prev = policy.predict_action(obs, num_inference_steps=steps)["action_pred"]
    times = []
    for i in range(warmup + repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        guess = shift_chunk(prev, cfg.n_action_steps) if warm else None
        prev = policy.predict_action(obs, warm_start=guess, num_inference_steps=steps)["action_pred"]
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    ms = np.array(times) * 1e3
    label = f"{scheduler}{steps}" if not warm else f"warm{cfg.diffusion.warm_start_steps}"
    return {"setting": label, "p50_ms": float(np.median(ms)), "p90_ms": float(np.percentile(ms, 90)), "mean_ms": float(ms.mean())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="+", default=["pusht_state_unet_small", "pusht_image_unet_small"])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch default)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    results = []
    for preset in args.presets:
        cfg = load_config(REPO / "config" / f"{preset}.yaml").policy
        for scheduler, steps, warm in SETTINGS:
            cfg.diffusion.inference_scheduler = scheduler
            policy = DiffusionPolicy(cfg).to(device).eval()
            row = bench(policy, scheduler, steps, warm, args.warmup, args.repeats)
            results.append({"preset": preset, **row})
            print(json.dumps(results[-1]), flush=True)
    meta = {
        "device": str(device),
        "cpu": platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
    }
    print(json.dumps({"meta": meta, "results": results}, indent=2))


if __name__ == "__main__":
    main()
