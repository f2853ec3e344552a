"""Shared by the benchmark workers of both sides (stdlib, numpy and torch only).

A worker is a long-lived process that the driver (``benchmarks/bench_vs_lerobot.py``)
talks to over stdin/stdout, one JSON object per line:

    {"cmd": "setup", "case": {...}}   build the model of one case      -> {"ok": true, "info": {...}}
    {"cmd": "run", "n": 5}            time n calls (chunks or steps)   -> {"ok": true, "times_s": [...]}
    {"cmd": "teardown"}               free the model                   -> {"ok": true}
    {"cmd": "quit"}

Only the protocol writes to the real stdout; library chatter goes to stderr.
"""

from __future__ import annotations

import gc
import json
import os
import sys
import time
import traceback
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

SEED = 1234


def obs_history(model: dict, seed: int = SEED) -> dict[str, np.ndarray]:
    """The same To observations for both sides: ``{key: (To, ...)}``, images uint8 HWC.

    Keys are ours (``shape_meta.obs`` names); the LeRobot worker maps them to its features.
    """
    rng = np.random.default_rng(seed)
    to = model["n_obs_steps"]
    out = {}
    for key in model["cameras"]:
        out[key] = rng.integers(0, 256, (to, *model["image_shape"]), dtype=np.uint8)
    for key, dim in model["low_dims"].items():
        out[key] = rng.uniform(0.0, 512.0, (to, dim)).astype(np.float32)
    return out


def train_batch(model: dict, batch_size: int, seed: int = SEED) -> dict[str, np.ndarray]:
    """A synthetic training batch: ``obs`` as in :func:`obs_history` with a batch axis, and actions."""
    rng = np.random.default_rng(seed)
    to, tp = model["n_obs_steps"], model["horizon"]
    obs = {key: rng.integers(0, 256, (batch_size, to, *model["image_shape"]), dtype=np.uint8) for key in model["cameras"]}
    for key, dim in model["low_dims"].items():
        obs[key] = rng.uniform(0.0, 512.0, (batch_size, to, dim)).astype(np.float32)
    action = rng.uniform(0.0, 512.0, (batch_size, tp, model["action_dim"])).astype(np.float32)
    return {"obs": obs, "action": action}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_calls(fn: Callable[[], Any], n: int, device: torch.device) -> list[float]:
    """Wall time of ``n`` calls of ``fn``, each bracketed by a device synchronisation."""
    times = []
    for _ in range(n):
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return times


def param_count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def configure_threads(case: dict) -> None:
    threads = int(case.get("threads") or 0)
    if threads:
        torch.set_num_threads(threads)


def versions() -> dict:
    import importlib.metadata as md

    out = {"python": sys.version.split()[0], "torch": torch.__version__}
    for name in ("torchvision", "diffusers", "lerobot"):
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            pass
    return out


class Bench:
    """One side's benchmark: ``setup`` builds a case and returns its info; ``call`` is one timed unit."""

    device: torch.device

    def setup(self, case: dict) -> dict:
        raise NotImplementedError

    def call(self) -> None:
        raise NotImplementedError

    def teardown(self) -> None:
        for name in list(vars(self)):
            if name != "device":
                delattr(self, name)
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def serve(bench: Bench) -> None:
    """Answer the driver's commands until ``quit`` or end of input."""
    proto = os.fdopen(os.dup(sys.stdout.fileno()), "w", buffering=1)
    sys.stdout = sys.stderr
    for line in sys.stdin:
        if not line.strip():
            continue
        msg = json.loads(line)
        cmd = msg.get("cmd")
        try:
            if cmd == "quit":
                break
            if cmd == "setup":
                case = msg["case"]
                configure_threads(case)
                bench.device = torch.device(case["device"])
                torch.manual_seed(SEED)
                info = bench.setup(case)
                reply = {"ok": True, "info": {**info, "versions": versions(), "threads": torch.get_num_threads()}}
            elif cmd == "run":
                reply = {"ok": True, "times_s": time_calls(bench.call, int(msg["n"]), bench.device)}
            elif cmd == "teardown":
                bench.teardown()
                reply = {"ok": True}
            else:
                reply = {"ok": False, "error": f"unknown command {cmd!r}"}
        except Exception as exc:  # noqa: BLE001 - reported to the driver, which aborts with this message
            reply = {"ok": False, "error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()}
        proto.write(json.dumps(reply) + "\n")
