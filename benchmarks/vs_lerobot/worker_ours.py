"""Benchmark worker for our side (dp_core), run in our main venv or in the torch 2.9.1 venv.

Inference times our closed-loop entry point, ``PolicyRunner.infer`` (numpy observations in,
numpy chunk out, cold start, DDIM); ``path: model`` times ``DiffusionPolicy.predict_action`` on
device tensors. Training times ``Trainer.train_step`` (batch gather, forward, loss, backward,
clipping, AdamW, LR schedule, EMA) on a synthetic zarr dataset of the case's shapes.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from common import Bench, obs_history, param_count, serve

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "src"))

from dp_core.config import load_config
from dp_core.dataset import EpisodeStore
from dp_core.fast_inference import InferenceOptions
from dp_core.inference import PolicyRunner
from dp_core.policy import DiffusionPolicy


def synthetic_store(path: Path, shape_meta, episodes: int = 4, length: int = 120) -> None:
    """Random episodes with every ``data/<source>`` the shape metadata reads."""
    rng = np.random.default_rng(0)
    store = EpisodeStore.open(path, mode="a")
    for _ in range(episodes):
        ep = {}
        for spec in shape_meta.obs.values():
            if spec.type == "rgb":
                ep[spec.source] = rng.integers(0, 256, (length, *spec.shape), dtype=np.uint8)
            else:
                width = spec.columns[1] if spec.columns else spec.shape[0]
                ep[spec.source] = rng.uniform(0, 512, (length, width)).astype(np.float32)
        ep[shape_meta.action.source] = rng.uniform(0, 512, (length, shape_meta.action.dim)).astype(np.float32)
        store.add_episode(ep)


class OursBench(Bench):
    def setup(self, case: dict) -> dict:
        cfg = load_config(REPO / "config" / f"{case['preset']}.yaml", case["overrides"])
        if case["task"] == "infer":
            self.policy = DiffusionPolicy(cfg.policy).to(self.device).eval()
            compile_ = os.environ.get("DP_BENCH_INFER_COMPILE") == "1"  # the ours-compile side
            self.policy.configure_inference(InferenceOptions(compile=compile_))
            obs = obs_history(case["model"])
            if case["path"] == "e2e":
                self.runner = PolicyRunner(self.policy, warm_start=False)
                self.obs, self.t = obs, 0.0
                self.fn = self._runner_call
            else:
                self.tensors = {k: torch.as_tensor(v)[None].to(self.device) for k, v in obs.items()}
                self.fn = self._predict_call
            return {"params": param_count(self.policy), "compile": compile_,
                    "entry": "PolicyRunner.infer" if case["path"] == "e2e" else "DiffusionPolicy.predict_action"}
        # dp_core.train imports tensorboard: only needed for training cases.
        from dp_core.train import Trainer

        self.tmp = tempfile.TemporaryDirectory(prefix="bench_vs_lerobot_")
        data = Path(self.tmp.name) / "data.zarr"
        synthetic_store(data, cfg.policy.shape_meta)
        cfg.data.path = str(data)
        cfg.data.val_ratio = 0.0
        cfg.train.output_dir = str(Path(self.tmp.name) / "run")
        cfg.train.device = case["device"]
        cfg.train.batch_size = case["batch_size"]
        cfg.train.num_steps = 1_000_000
        cfg.train.mixed_precision = "bf16" if case["precision"] == "bf16" else "no"
        cfg.train.cuda_graph = os.environ.get("DP_BENCH_TRAIN_CUDA_GRAPH") == "1"  # the ours-graph side, else eager
        self.trainer = Trainer(cfg)
        self.fn = self.trainer.train_step
        return {"params": param_count(self.trainer.policy), "entry": "Trainer.train_step", "ema": True,
                "cuda_graph": self.trainer.graph_step is not None}

    def _runner_call(self) -> None:
        self.t += self.runner.dt
        self.runner.infer(self.obs, self.t)

    def _predict_call(self) -> None:
        self.policy.predict_action(self.tensors)

    def call(self) -> None:
        self.fn()

    def teardown(self) -> None:
        tmp = getattr(self, "tmp", None)
        super().teardown()
        if tmp is not None:
            tmp.cleanup()


if __name__ == "__main__":
    serve(OursBench())
