"""SpaceMouse mapping, button edges, the shared command limiter and the teleoperated target."""

from __future__ import annotations

import numpy as np
import pytest

from dp_core.control import ActionSchedule, CommandLimiter
from dp_core.teleop import ButtonEdges, SpaceMouseMapping, TeleopTarget
from dp_core.teleop.spacemouse import open_spacemouse, read_latest


def test_deadzone_and_scaling() -> None:
    m = SpaceMouseMapping(deadzone=0.1, scale=[200.0, -100.0, 1.0, 0.5, 0.5, 0.5])
    np.testing.assert_allclose(m.twist([0.05, -0.09, 0.1, 0, 0, 0]), 0.0)  # rest noise inside the deadzone
    np.testing.assert_allclose(m.twist([1.0, 1.0, -1.0, 0, 0, 1.0]), [200.0, -100.0, -1.0, 0, 0, 0.5])
    # Continuous at the deadzone edge, linear beyond it, clipped at full deflection.
    np.testing.assert_allclose(m.twist([0.55, 0, 0, 0, 0, 0])[0], 200.0 * 0.45 / 0.9)
    np.testing.assert_allclose(m.twist([1.7, 0, 0, 0, 0, 0])[0], 200.0)


def test_axis_map_routes_device_axes() -> None:
    # Simulated cell: screen x (right) = -device y (left), screen y (down) = -device x (forward).
    m = SpaceMouseMapping(deadzone=0.0, scale=[-300.0, -300.0, 0.0, 0.0, 0.0, 0.0], axis_map=[1, 0, 2, 3, 4, 5])
    np.testing.assert_allclose(m.twist([1.0, 0.0, 0, 0, 0, 0])[:2], [0.0, -300.0])  # push forward: up
    np.testing.assert_allclose(m.twist([0.0, -0.5, 0, 0, 0, 0])[:2], [150.0, 0.0])  # push right: right
    with pytest.raises(ValueError, match="permutation"):
        SpaceMouseMapping(axis_map=[0, 0, 1, 2, 3, 4])


def test_mapping_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="deadzone"):
        SpaceMouseMapping(deadzone=1.0)
    with pytest.raises(ValueError, match="6 finite"):
        SpaceMouseMapping(scale=[1.0] * 5)
    with pytest.raises(ValueError, match="6 finite axis"):
        SpaceMouseMapping().twist([0.0, float("nan"), 0, 0, 0, 0])


def test_button_edges_fire_once_per_press() -> None:
    edges = ButtonEdges()
    assert edges.pressed([0, 0]) == []
    assert edges.pressed([1, 0]) == [0]
    assert edges.pressed([1, 0]) == []  # held
    assert edges.pressed([1, 1]) == [1]
    assert edges.pressed([0, 0]) == []
    assert edges.pressed([1, 0, 1]) == [0, 2]  # a longer button list (other device) starts released


def test_open_spacemouse_without_device_says_what_to_do(monkeypatch: pytest.MonkeyPatch) -> None:
    import pyspacemouse

    monkeypatch.setattr(pyspacemouse, "get_connected_devices", lambda: [])
    with pytest.raises(RuntimeError, match="no SpaceMouse found.*input:=topic"):
        open_spacemouse()


def test_limiter_clamps_and_limits_steps() -> None:
    lim = CommandLimiter([0.0, 0.0], [10.0, 10.0], max_step=1.0)
    first = lim.apply([12.0, 5.0])
    assert first.command.tolist() == [10.0, 5.0] and first.clamped and not first.step_limited
    second = lim.apply([10.0, 8.0])
    np.testing.assert_allclose(second.command, [10.0, 6.0])
    assert second.step_limited and not second.clamped
    with pytest.raises(ValueError, match="finite"):
        lim.apply([np.inf, 0.0])
    for bad in (0.0, float("nan"), float("inf")):  # None is the only "no limit"
        with pytest.raises(ValueError, match="max_step"):
            CommandLimiter([0.0], [1.0], max_step=bad)


def test_executor_and_teleop_share_the_limiter() -> None:
    schedule = ActionSchedule(0.1, workspace_min=[0.0, 0.0], workspace_max=[10.0, 10.0], max_step=1.0)
    assert isinstance(schedule.limiter, CommandLimiter)
    schedule.add_chunk(0.0, np.array([[5.0, 5.0], [20.0, 5.0]]), now=0.0)
    sent = [a.action.tolist() for a in schedule.pop_due(0.25)]
    assert sent == [[5.0, 5.0], [6.0, 5.0]]  # clamped to 10, then limited to one unit per step


def teleop(max_step: float | None = 5.0, **kw) -> TeleopTarget:
    return TeleopTarget(CommandLimiter([0.0, 0.0], [100.0, 100.0], max_step=max_step), **kw)


def test_nothing_is_sent_before_sync() -> None:
    t = teleop()
    t.set_twist([10.0, 0.0], now=0.0)
    assert t.tick(0.01) is None
    t.sync([50.0, 50.0, 0.3])  # measured pose with an extra axis: only x, y are driven
    assert t.tick(0.02).command.tolist() == [50.0, 50.0]


def test_twist_is_integrated_and_times_out() -> None:
    t = teleop(input_timeout_s=0.2, max_dt=0.05)
    t.sync([50.0, 50.0])
    t.tick(0.0)
    t.set_twist([100.0, -50.0, 7.0, 0.0, 0.0, 1.0], now=0.0)  # z and angular ignored in 2-D
    for i in range(1, 11):
        out = t.tick(i * 0.01)
    np.testing.assert_allclose(out.command, [60.0, 45.0])  # 0.1 s of motion
    out = t.tick(0.5)  # twist 0.5 s old: timed out, no motion despite the long gap
    np.testing.assert_allclose(out.command, [60.0, 45.0])


def test_stall_does_not_jump_and_speed_is_limited() -> None:
    t = teleop(max_step=2.0, max_dt=0.05)
    t.sync([50.0, 50.0])
    t.tick(0.0)
    t.set_twist([1000.0, 0.0], now=0.9)
    out = t.tick(1.0)  # 1 s since the last tick: integrates at most max_dt, then the step limit
    np.testing.assert_allclose(out.command, [52.0, 50.0])
    assert out.step_limited


def test_integration_does_not_wind_up_at_the_boundary() -> None:
    t = teleop(max_step=None)
    t.sync([95.0, 50.0])
    t.tick(0.0)
    for i in range(1, 21):
        t.set_twist([100.0, 0.0], now=i * 0.01)
        t.tick(i * 0.01)
    assert t.command.tolist() == [100.0, 50.0]
    t.set_twist([-100.0, 0.0], now=0.2)
    out = t.tick(0.21)
    np.testing.assert_allclose(out.command, [99.0, 50.0])  # moves back at once


def test_target_input_is_followed_at_limited_speed_and_expires() -> None:
    t = teleop(max_step=5.0, input_timeout_s=0.2)
    t.sync([10.0, 10.0])
    t.set_target([30.0, 10.0], now=0.0)
    commands = [t.tick(i * 0.01).command[0] for i in range(6)]
    assert commands == [15.0, 20.0, 25.0, 30.0, 30.0, 30.0]
    t.set_target([80.0, 10.0], now=0.1)
    assert t.tick(0.5).command.tolist() == [30.0, 10.0]  # stale target: hold
    with pytest.raises(ValueError, match="2 finite"):
        t.set_target([1.0], now=0.6)


def test_sync_forgets_inputs() -> None:
    t = teleop(max_step=None)
    t.sync([10.0, 10.0])
    t.set_target([90.0, 90.0], now=0.0)
    t.sync([40.0, 40.0])  # e.g. the simulated cell was reset
    assert t.tick(0.01).command.tolist() == [40.0, 40.0]


def test_a_robot_outside_the_workspace_is_brought_in_at_the_step_limit() -> None:
    t = teleop(max_step=5.0)
    t.sync([-12.0, 50.0])  # measured 12 outside the box's x = 0 face
    commands = [t.tick(i * 0.01).command.tolist() for i in range(4)]
    assert commands == [[-7.0, 50.0], [-2.0, 50.0], [0.0, 50.0], [0.0, 50.0]]  # not one 12-unit jump


class _QueuedDevice:
    """pyspacemouse's read(): one queued HID report per call, the state's stamp t set when one is processed."""

    def __init__(self, reports: list[float]) -> None:
        self.queue, self.calls = list(reports), 0
        self.state = type("State", (), {"x": 0.0, "t": 0.0})()

    def read(self):
        self.calls += 1
        if self.queue:
            self.state.x, self.state.t = self.queue.pop(0), self.state.t + 1.0
        return self.state


def test_read_latest_drains_the_queued_reports() -> None:
    device = _QueuedDevice([0.8, 0.8, 0.8, 0.0])  # reports came faster than the node polls; the last: released
    assert read_latest(device).x == 0.0 and device.queue == []
    assert read_latest(device).x == 0.0 and device.calls == 5 + 2  # nothing new: two reads
    flood = _QueuedDevice([0.5] * 100)
    read_latest(flood, max_reports=64)
    assert len(flood.queue) == 36  # one call is bounded


def test_a_silent_device_counts_as_released() -> None:
    """pyspacemouse keeps the last deflection when reports stop without an error (a dropped wireless link)."""
    from types import SimpleNamespace

    from dp_core.teleop import ReportWatch

    watch = ReportWatch(timeout_s=0.2)
    pushed = SimpleNamespace(x=1.0, y=0.0, z=0.0, roll=0.0, pitch=0.0, yaw=0.5, t=10.0)
    for i in range(20):  # reports every 10 ms: the deflection holds
        pushed.t = 10.0 + 0.01 * i
        assert watch.axes(pushed, now=0.01 * i) == [1.0, 0.0, 0.0, 0.0, 0.0, 0.5]
    assert watch.axes(pushed, now=0.19 + 0.2) == [1.0, 0.0, 0.0, 0.0, 0.0, 0.5]  # 0.2 s since the last report
    assert watch.axes(pushed, now=0.19 + 0.21) == [0.0] * 6  # silent longer: at rest
    assert watch.axes(pushed, now=5.0) == [0.0] * 6 and watch.lost == 1
    pushed.t = 99.0  # reports again
    assert watch.axes(pushed, now=5.01) == [1.0, 0.0, 0.0, 0.0, 0.0, 0.5]
    rest = SimpleNamespace(x=0.0, y=0.0, z=0.0, roll=0.0, pitch=0.0, yaw=0.0, t=99.0)
    assert watch.axes(rest, now=9.0) == [0.0] * 6 and watch.lost == 1  # a device at rest stops reporting: no loss
