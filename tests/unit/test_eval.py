"""Push-T evaluation paths on an untrained tiny policy (fast; the trained scores are in models/README.md)."""

from pathlib import Path

import pytest
import torch

from conftest import tiny_policy_config
from dp_core import save_policy
from dp_core.config import ObsSpec
from dp_core.eval_latency import run_delayed_episode
from dp_core.eval_pusht import evaluate, main, run_episode
from dp_core.inference import PolicyRunner
from dp_core.policy import DiffusionPolicy
from dp_core.sim.pusht import PushTConfig, PushTEnv


@pytest.fixture
def policy() -> DiffusionPolicy:
    torch.manual_seed(0)
    cfg = tiny_policy_config({"keypoint": ObsSpec("low_dim", [18]), "agent_pos": ObsSpec("low_dim", [2], source="state", columns=[0, 2])}, 2)
    p = DiffusionPolicy(cfg)
    p.normalizer.fit({"keypoint": (torch.rand(100, 18) * 512).numpy(), "agent_pos": (torch.rand(100, 2) * 512).numpy()},
                     (torch.rand(100, 2) * 512).numpy())
    return p.eval()


def test_virtual_clock_executor_without_delay_matches_plain_receding_horizon(policy: DiffusionPolicy) -> None:
    env = PushTEnv(PushTConfig(render_size=0, max_steps=40))
    plain, _ = run_episode(env, PolicyRunner(policy, seed=3), seed=5)
    cov, received, dropped = run_delayed_episode(env, PolicyRunner(policy, seed=3), 5, 0.0, True, policy.cfg.n_action_steps)
    assert cov == pytest.approx(plain.max_coverage, abs=1e-12) and dropped == 0 and received == 5 * 15


def test_delay_drops_late_actions_only_with_compensation(policy: DiffusionPolicy) -> None:
    env = PushTEnv(PushTConfig(render_size=0, max_steps=16))
    _, received, dropped = run_delayed_episode(env, PolicyRunner(policy, seed=3), 5, 0.2, True, 8)
    assert dropped == 2 * 2  # two chunks, the actions due at +0.1 s and +0.2 s of each arrive late
    _, _, dropped = run_delayed_episode(env, PolicyRunner(policy, seed=3), 5, 0.2, False, 8)
    assert dropped == 0


def test_evaluate_report_and_cli(policy: DiffusionPolicy, tmp_path: Path, capsys) -> None:
    path = save_policy(policy, tmp_path / "p.safetensors")
    report = evaluate(path, episodes=2, seed=7, max_steps=20, progress=False)
    assert report["episodes"] == 2 and 0.0 <= report["score"] <= 1.0 and len(report["per_episode"]) == 2
    assert report["inference"]["latency_ms"]["chunks"] == 2 * 3
    assert main(["pusht", "--checkpoint", str(tmp_path / "missing.safetensors")]) == 2
    assert "missing.safetensors" in capsys.readouterr().err


def test_sampler_options_out_of_range_are_errors(policy: DiffusionPolicy, tmp_path: Path, capsys) -> None:
    """--warm-strength 0 or 5 and --steps 0 were taken as 'the policy's value' or used unchecked."""
    path = save_policy(policy, tmp_path / "p.safetensors")
    for option, message in [(["--warm-start", "--warm-strength", "0"], "warm_start_strength must be in"),
                            (["--warm-start", "--warm-strength", "5"], "warm_start_strength must be in"),
                            (["--steps", "0"], "must be >= 1")]:
        assert main(["pusht", "--checkpoint", str(path), "--episodes", "1", "--max-steps", "4", *option]) == 2
        assert message in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:  # warm-start settings without a warm start would be silently unused
        main(["pusht", "--checkpoint", str(path), "--episodes", "1", "--warm-steps", "4"])
    assert exc.value.code == 2 and "apply with --warm-start" in capsys.readouterr().err
    # a chunk holds horizon - n_obs_steps + 1 = 15 actions: replanning less often would run execution dry
    assert main(["latency", "--checkpoint", str(path), "--episodes", "1", "--replan-steps", "16"]) == 2
    assert "replan_steps must be 1 to 15" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["latency", "--checkpoint", str(path), "--replan-steps", "0"])
    report = evaluate(path, episodes=1, max_steps=4, progress=False, warm_start=True, warm_steps=2, warm_strength=0.5)
    assert report["episodes"] == 1
