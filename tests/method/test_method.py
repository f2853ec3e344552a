"""Tests of what the method claims, on tiny policies trained here on the CPU.

Each trains a small UNet for a few hundred steps on synthetic demonstrations.
Tolerances were set from measured values (in comments) with a safety margin.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import experiment, tiny_policy_config, write_episodes
from dp_core.config import DiffusionConfig, ObsSpec
from dp_core.policy import DiffusionPolicy, shift_chunk
from dp_core.train import Trainer

pytestmark = pytest.mark.slow


def _train(data: Path, out: Path, obs: dict, action_dim: int, steps: int, **policy_kw) -> DiffusionPolicy:
    cfg = experiment(data, tiny_policy_config(obs, action_dim, **policy_kw), out,
                     num_steps=steps, batch_size=64, lr=2e-3, lr_warmup_steps=20, val_every=10**9,
                     checkpoint_every=10**9)
    cfg.data.val_ratio = 0.0
    trainer = Trainer(cfg)
    for _ in range(steps):
        trainer.train_step()
    params = list(trainer.policy.parameters())
    trainer.ema.copy_to(params)
    return trainer.policy.eval()


def test_linear_feedback_is_learned(tmp_path: Path) -> None:
    """Demonstrations a = -K s: the policy's chunk predicts -K s (the paper's linear-control result)."""
    rng = np.random.default_rng(0)
    K = np.array([[1.0, 0.5], [-0.3, 0.8]], np.float32)
    episodes = []
    for s in rng.uniform(-1, 1, (300, 2)).astype(np.float32):
        episodes.append({"state": np.repeat(s[None], 16, 0), "action": np.repeat((-K @ s)[None], 16, 0)})
    data = write_episodes(tmp_path / "lin.zarr", episodes)
    policy = _train(data, tmp_path / "run", {"state": ObsSpec("low_dim", [2])}, 2, steps=600)
    test_s = torch.from_numpy(rng.uniform(-0.9, 0.9, (64, 2)).astype(np.float32))
    obs = {"state": test_s[:, None].expand(-1, 2, -1)}
    chunk = policy.predict_action(obs, generator=torch.Generator().manual_seed(0), num_inference_steps=50)["action"]
    target = -(test_s @ torch.from_numpy(K).T)
    err = (chunk - target[:, None]).abs()
    p95 = torch.quantile(err.flatten(), 0.95).item()
    print(f"linear feedback: mean abs error {err.mean():.4f}, p95 {p95:.4f}")
    # Measured (600 steps): mean 0.045, p95 0.19, on actions spanning about +-1.3.
    assert err.mean() < 0.08, f"mean abs error {err.mean():.4f}"
    assert p95 < 0.3, f"p95 abs error {p95:.4f}"


def test_diffusion_keeps_both_modes_regression_averages_them(tmp_path: Path) -> None:
    """Same observation, half the demos go +1 and half -1."""
    episodes = [
        {"state": np.zeros((16, 1), np.float32), "action": np.full((16, 1), sign, np.float32)}
        for sign in [1.0, -1.0] * 50
    ]
    data = write_episodes(tmp_path / "bimodal.zarr", episodes)
    obs_spec = {"state": ObsSpec("low_dim", [1])}
    obs = {"state": torch.zeros(400, 2, 1)}
    diffusion = _train(data, tmp_path / "diff", obs_spec, 1, steps=300)
    samples = diffusion.predict_action(obs, generator=torch.Generator().manual_seed(0))["action"].mean(dim=(1, 2))
    up, down = (samples > 0.5).float().mean().item(), (samples < -0.5).float().mean().item()
    print(f"bimodal: +1 {up:.2f}, -1 {down:.2f}")
    # Measured: about 50 % / 50 %, every sample near +-1.
    assert up > 0.3 and down > 0.3, f"mode fractions +1: {up:.2f}, -1: {down:.2f}"
    assert samples.abs().mean() > 0.8
    regression = _train(data, tmp_path / "reg", obs_spec, 1, steps=300, kind="regression")
    mean = regression.predict_action({"state": torch.zeros(1, 2, 1)})["action"]
    print(f"regression: {mean.flatten().tolist()}")
    # Measured: |prediction| below 0.01: the average of the two modes, which no demo does.
    assert mean.abs().max() < 0.2, f"regression predicts {mean.flatten().tolist()}"


def test_warm_start_is_closer_to_converged_chunk_and_continuous(ramp_dataset: Path, tmp_path: Path) -> None:
    """Warm start from the shifted previous chunk beats a cold start with the same few steps."""
    steps = 2
    diffusion = DiffusionConfig(num_inference_steps=16, warm_start_steps=steps, warm_start_strength=0.2)
    policy = _train(ramp_dataset, tmp_path / "run", {"pos": ObsSpec("low_dim", [2])}, 1, steps=600, diffusion=diffusion)
    rng = np.random.default_rng(5)
    n = 64
    x0 = torch.from_numpy(rng.uniform(-0.8, 0.8, n).astype(np.float32))
    v = torch.from_numpy(rng.uniform(-0.04, 0.04, n).astype(np.float32))

    def obs_at(t: int) -> dict[str, torch.Tensor]:
        x = x0[:, None] + v[:, None] * torch.tensor([t - 1.0, t])
        return {"pos": torch.stack([x, v[:, None].expand(-1, 2)], dim=-1)}

    g = torch.Generator().manual_seed(0)
    ta = policy.cfg.n_action_steps
    prev = policy.predict_action(obs_at(10), generator=g, num_inference_steps=16)["action_pred"]
    ref = policy.predict_action(obs_at(10 + ta), generator=g, num_inference_steps=50)["action_pred"]
    warm = policy.predict_action(obs_at(10 + ta), warm_start=shift_chunk(prev, ta), generator=g)["action_pred"]
    cold = policy.predict_action(obs_at(10 + ta), generator=g, num_inference_steps=steps)["action_pred"]
    warm_err = (warm - ref).abs().mean().item()
    cold_err = (cold - ref).abs().mean().item()
    print(f"warm {warm_err:.4f} cold {cold_err:.4f}")
    # Measured: warm 0.054 vs cold 0.168 (actions span about 4).
    assert warm_err < 0.5 * cold_err, f"warm {warm_err:.4f} vs cold {cold_err:.4f}"
    # Executed actions across the boundary: last of the previous chunk vs first of the new one.
    start = policy.cfg.n_obs_steps - 1
    expected_step = v.abs()[:, None]
    warm_jump = ((warm[:, start] - prev[:, start + ta - 1]).abs() - expected_step).abs().mean().item()
    cold_jump = ((cold[:, start] - prev[:, start + ta - 1]).abs() - expected_step).abs().mean().item()
    print(f"jump warm {warm_jump:.4f} cold {cold_jump:.4f}")
    # Measured: warm 0.036 vs cold 0.186.
    assert warm_jump < 0.5 * cold_jump, f"boundary jump warm {warm_jump:.4f} vs cold {cold_jump:.4f}"
    assert warm_jump < 0.08, f"boundary jump warm {warm_jump:.4f}"
