"""End-to-end smoke test: train the CPU preset on the real Push-T demonstrations for a few steps
with the training CLI, then score 2 episodes with the evaluation CLI."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import PUSHT_ZARR, REPO

pytestmark = pytest.mark.slow


@pytest.mark.skipif(not PUSHT_ZARR.exists(), reason="shared Push-T demonstrations not present")
def test_train_then_evaluate_pusht(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO / "src"), os.environ.get("PYTHONPATH")]))}
    out = tmp_path / "run"
    train = subprocess.run(
        [sys.executable, "-m", "dp_core.train", "--config", str(REPO / "config" / "pusht_state_unet_small.yaml"),
         f"data.path={PUSHT_ZARR}", f"train.output_dir={out}", "train.num_steps=20", "train.batch_size=32",
         "train.val_every=10", "train.checkpoint_every=10"],
        capture_output=True, text=True, env=env, timeout=600,
    )
    assert train.returncode == 0, train.stderr[-3000:]
    report = tmp_path / "eval.json"
    ev = subprocess.run(
        [sys.executable, "-m", "dp_core.eval_pusht", "pusht", "--checkpoint", str(out / "policy.safetensors"),
         "--episodes", "2", "--seed", "100000", "--output", str(report)],
        capture_output=True, text=True, env=env, timeout=600,
    )
    assert ev.returncode == 0, ev.stderr[-3000:]
    data = json.loads(report.read_text())
    assert data["episodes"] == 2 and 0.0 <= data["score"] <= 1.0
    assert [e["seed"] for e in data["per_episode"]] == [100000, 100001]
    assert all(e["steps"] == 300 or e["success"] for e in data["per_episode"])
