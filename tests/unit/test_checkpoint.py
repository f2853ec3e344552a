from pathlib import Path

import pytest
import torch

from conftest import tiny_policy_config
from dp_core import CheckpointError, DiffusionPolicy, load_policy, save_policy
from dp_core.config import ObsSpec


def _policy() -> DiffusionPolicy:
    torch.manual_seed(0)
    cfg = tiny_policy_config({"cam": ObsSpec("rgb", [32, 32, 3]), "pos": ObsSpec("low_dim", [3])}, 2)
    p = DiffusionPolicy(cfg)
    p.normalizer.fit({"pos": torch.randn(100, 3).numpy()}, (torch.randn(100, 2) * 5).numpy())
    return p.eval()


def _obs() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return {
        "cam": torch.randint(0, 255, (2, 2, 32, 32, 3), generator=g, dtype=torch.uint8),
        "pos": torch.randn(2, 2, 3, generator=g),
    }


def test_save_load_gives_identical_actions(tmp_path: Path) -> None:
    policy = _policy()
    path = save_policy(policy, tmp_path / "p.safetensors")
    loaded = load_policy(path, "cpu")
    assert loaded.cfg == policy.cfg
    a = policy.predict_action(_obs(), generator=torch.Generator().manual_seed(7))["action_pred"]
    b = loaded.predict_action(_obs(), generator=torch.Generator().manual_seed(7))["action_pred"]
    assert torch.equal(a, b)
    c = loaded.predict_action(_obs(), generator=torch.Generator().manual_seed(8))["action_pred"]
    assert not torch.equal(a, c)


def test_half_precision_file_loads_as_float32(tmp_path: Path) -> None:
    policy = _policy()
    full = save_policy(policy, tmp_path / "f.safetensors")
    half = save_policy(policy, tmp_path / "h.safetensors", half=True)
    assert half.stat().st_size < 0.6 * full.stat().st_size
    loaded = load_policy(half, "cpu")
    assert next(loaded.parameters()).dtype == torch.float32


def test_missing_corrupt_and_incompatible_files_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="not found.*nope.safetensors"):
        load_policy(tmp_path / "nope.safetensors")
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x00garbage" * 10)
    with pytest.raises(CheckpointError, match="bad.safetensors"):
        load_policy(bad)
    good = save_policy(_policy(), tmp_path / "good.safetensors")
    truncated = tmp_path / "trunc.safetensors"
    truncated.write_bytes(good.read_bytes()[:-1000])
    with pytest.raises(CheckpointError, match="trunc.safetensors"):
        load_policy(truncated)
    other = _policy()
    other.cfg.unet.down_dims = [16, 32]  # config no longer matches the weights
    mismatched = save_policy(other, tmp_path / "mismatch.safetensors")
    with pytest.raises(CheckpointError, match="mismatch.safetensors.*do not match"):
        load_policy(mismatched)
    from dp_core.checkpoint import main

    assert main([str(mismatched), str(tmp_path / "out.safetensors")]) == 2  # dp-export: an error message, no traceback
    assert not (tmp_path / "out.safetensors").exists()


def test_export_keeps_normaliser_in_fp32(tmp_path: Path) -> None:
    from safetensors.torch import load_file

    from dp_core.checkpoint import export_policy

    src = save_policy(_policy(), tmp_path / "p.safetensors")
    dst = export_policy(src, tmp_path / "p16.safetensors")
    tensors = load_file(str(dst))
    assert tensors["normalizer.action.scale"].dtype == torch.float32
    assert tensors["denoiser.head.1.weight"].dtype == torch.float16
    a = load_policy(src).predict_action(_obs(), generator=torch.Generator().manual_seed(7))["action_pred"]
    b = load_policy(dst).predict_action(_obs(), generator=torch.Generator().manual_seed(7))["action_pred"]
    assert torch.allclose(a, b, atol=0.05 * a.abs().max().item())
