"""benchmarks/bench_bag_timing.py: camera drop counting and the replay of the policy's frame choice."""

from __future__ import annotations

import importlib.util
from types import SimpleNamespace

import pytest
from conftest import REPO

spec = importlib.util.spec_from_file_location("bench_bag_timing", REPO / "benchmarks" / "bench_bag_timing.py")
timing = importlib.util.module_from_spec(spec)
spec.loader.exec_module(timing)


class FakeBag:
    """``messages(topics)`` over ``{topic: [(stamp_s, receive_s), ...]}``."""

    def __init__(self, data: dict[str, list[tuple[float, float]]]) -> None:
        self.data = data

    def messages(self, topics: list[str]):
        for topic in topics:
            for stamp, received in self.data[topic]:
                sec = int(stamp)
                header = SimpleNamespace(stamp=SimpleNamespace(sec=sec, nanosec=round((stamp - sec) * 1e9)))
                yield SimpleNamespace(msg=SimpleNamespace(header=header), log_time_ns=round(received * 1e9))


def test_dropped_frames_and_latency() -> None:
    stamps = [10 + i / 30 for i in range(30) if i not in (5, 6, 20)]  # three frames missing
    bag = FakeBag({"/cam": [(s, s + 0.002) for s in stamps]})
    out = timing.camera_timing(bag, "/cam", 30.0)
    assert out["frames"] == 27 and out["dropped_frames"] == 3
    assert out["delivery_latency_ms"]["p50"] == pytest.approx(2.0, abs=1e-3)


def test_camera_sync_replays_the_last_frame_at_or_before_each_grid_time() -> None:
    period = 1 / 30
    a = [(10 + i * period, 0.0) for i in range(60)]
    b = [(10 + i * period + 0.010, 0.0) for i in range(60)]  # 10 ms behind camera a
    chunk_stamps = [(11.0, 0.0), (11.5, 0.0)]
    bag = FakeBag({"/a": a, "/b": b, "/chunk": chunk_stamps})
    out = timing.camera_sync(bag, ["/a", "/b"], "/chunk", n_obs_steps=2, dt=0.1)
    assert out["sync_error_ms"]["n"] == 4
    # At t = 11.0 camera a has a frame at 11.0 and camera b's last is 10.9767 (10 ms after 10.9667).
    assert out["sync_error_ms"]["max"] == pytest.approx(23.33, abs=0.05)


def test_observation_to_chunk_latency_is_receive_minus_stamp() -> None:
    bag = FakeBag({"/chunk": [(10.0, 10.040), (10.8, 10.835), (11.6, 11.700)]})
    out = timing.chunk_latency(bag, "/chunk")
    assert out["chunks"] == 3 and out["obs_to_chunk_ms"]["p50"] == pytest.approx(40.0, abs=1e-3)
    assert out["obs_to_chunk_ms"]["max"] == pytest.approx(100.0, abs=1e-3)
