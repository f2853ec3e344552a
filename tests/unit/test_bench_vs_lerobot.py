"""benchmarks/bench_vs_lerobot.py: case mapping and our side's worker protocol (LeRobot needs its own venv)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from dp_core.config import load_config
from dp_core.policy import DiffusionPolicy

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_vs_lerobot", REPO / "benchmarks" / "bench_vs_lerobot.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_paper_image_case_with_two_cameras_maps_every_size(bench):
    overrides, model, notes = bench.case_config("pusht_image_unet", 2, 16)
    cfg = load_config(REPO / "config" / "pusht_image_unet.yaml", overrides).policy
    assert cfg.shape_meta.rgb_keys == ["image", "image2"] == model["cameras"]
    assert cfg.diffusion.inference_scheduler == "ddim" and cfg.diffusion.num_inference_steps == 16
    assert model["down_dims"] == [512, 1024, 2048] and model["step_embed_dim"] == 128
    assert model["image_shape"] == [96, 96, 3] and model["crop_shape"] == [84, 84]
    assert model["low_dims"] == {"agent_pos": 2} and model["state_key"] == "agent_pos"
    assert notes == []


def test_state_case_notes_the_environment_state_split(bench):
    _, model, notes = bench.case_config("pusht_state_unet_small", 0, 8)
    assert model["cameras"] == [] and model["low_dims"] == {"keypoint": 18, "agent_pos": 2}
    assert len(notes) == 1 and "environment_state" in notes[0]


def test_bad_case_specs_are_rejected(bench):
    assert bench.parse_spec("pusht_image_unet:2:16:1") == ("pusht_image_unet", 2, 16, 1)
    for bad in ("pusht_image_unet:2", "pusht_image_unet:two:16", "pusht_image_unet:2:16:0"):
        with pytest.raises(SystemExit):
            bench.parse_spec(bad)
    with pytest.raises(SystemExit, match="cannot drop"):
        bench.case_config("pusht_image_unet", 0, 16)


@pytest.mark.slow
def test_our_worker_times_inference_and_training_steps(bench):
    proc = subprocess.Popen([sys.executable, str(REPO / "benchmarks" / "vs_lerobot" / "worker_ours.py")],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=REPO)

    def ask(**msg):
        proc.stdin.write(json.dumps(msg) + "\n")
        proc.stdin.flush()
        return json.loads(proc.stdout.readline())

    try:
        overrides, model, _ = bench.case_config("pusht_state_unet_small", 0, 2)
        base = {"preset": "pusht_state_unet_small", "overrides": overrides, "model": model, "device": "cpu", "threads": 1}
        params = sum(p.numel() for p in DiffusionPolicy(load_config(REPO / "config" / "pusht_state_unet_small.yaml").policy).parameters())
        for case in ({**base, "task": "infer", "path": "e2e"}, {**base, "task": "infer", "path": "model"},
                     {**base, "task": "train", "batch_size": 4, "precision": "fp32"}):
            reply = ask(cmd="setup", case=case)
            assert reply["ok"], reply
            assert reply["info"]["params"] == params and reply["info"]["threads"] == 1
            times = ask(cmd="run", n=2)["times_s"]
            assert len(times) == 2 and all(t > 0 for t in times)
            assert ask(cmd="teardown")["ok"]
        bad = ask(cmd="setup", case={**base, "task": "infer", "path": "e2e", "preset": "no_such_preset"})
        assert not bad["ok"] and "no_such_preset" in bad["error"]
        assert ask(cmd="frobnicate") == {"ok": False, "error": "unknown command 'frobnicate'"}
    finally:
        proc.stdin.write(json.dumps({"cmd": "quit"}) + "\n")
        proc.stdin.flush()
        assert proc.wait(timeout=60) == 0
