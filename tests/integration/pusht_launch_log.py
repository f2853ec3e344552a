"""Checks on the output of a scored Push-T launch (ur5_pusht.launch.py num_episodes:=1), host or container."""

from __future__ import annotations

import re

MIN_MAX_COVERAGE = 0.5  # the stack must at least half-cover the goal within the episode


def check_pushes_block_to_goal(text: str, seed: int = 100000) -> str:
    """Assert the episode started far from the goal and reached the coverage; returns a summary line."""
    coverages = [float(c) for c in re.findall(r"episode 0: coverage ([0-9.]+)", text)]
    score = re.search(r"PUSHT_SCORE ([0-9.]+) over (\d+) episodes", text)
    max_cov = re.search(rf"episode 0 \(seed {seed}\) done after ([0-9.]+) s: max coverage ([0-9.]+)", text)
    assert score and max_cov, f"no score in the launch output:\n{text[-4000:]}"
    chunks = re.findall(r"chunk (\d+): observation age ([0-9.]+) s, inference (\d+) ms", text)
    summary = f"coverage log {coverages}, max {max_cov.group(2)} after {max_cov.group(1)} s, chunks {chunks[-3:]}"
    assert coverages and coverages[0] < 0.1, f"episode should start far from the goal: {coverages[:3]}"
    assert float(max_cov.group(2)) > MIN_MAX_COVERAGE, f"max coverage {max_cov.group(2)}; log:\n{text[-4000:]}"
    assert "Traceback" not in text, text[-4000:]
    return summary
