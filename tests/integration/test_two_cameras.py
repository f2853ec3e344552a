"""Two simulated cameras feeding a two-camera image policy through the ROS 2 nodes (benchmarks/bench_cameras.py).

Functional checks only (both cameras delivered and recorded, the policy produced chunks from both, the
synchronisation replay ran); the timing figures are the benchmark's job (docs/performance.md).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO

pytestmark = [pytest.mark.slow, pytest.mark.ros]


def test_two_free_running_cameras_reach_the_policy(tmp_path: Path) -> None:
    if shutil.which("ros2") is None:
        pytest.fail("ros2 not on PATH: run through ./scripts/test.sh (it sources scripts/env.sh)")
    out = tmp_path / "report.json"
    run = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "bench_cameras.py"), "--cameras", "2", "--episode-s", "8",
         "--keep", str(tmp_path / "work"), "--output", str(out)],
        capture_output=True, text=True, timeout=300,
    )
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
    report = json.loads(out.read_text())
    cams = report["per_camera"]
    assert [c["topic"] for c in cams] == ["/camera_0/color/image_raw", "/camera_1/color/image_raw"]
    for cam in cams:  # 8 s episode at 30 Hz, plus start-up: well over 100 frames each
        assert cam["frames"] > 100 and 20 < cam["measured_rate_hz"] < 40, cam
    sync = report["sync"]
    assert sync["chunks"] >= 3, sync  # the policy node ran on observations holding both cameras
    assert sync["sync_error_ms"]["n"] == 2 * sync["chunks"]
