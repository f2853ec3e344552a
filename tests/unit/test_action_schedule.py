import numpy as np
import pytest

from dp_core.control import ActionSchedule

DT = 0.1


def schedule(**kw) -> ActionSchedule:
    kw = {"workspace_min": [0.0, 0.0], "workspace_max": [100.0, 100.0]} | kw
    return ActionSchedule(DT, **kw)


def ramp(n: int = 8, start: float = 1.0) -> np.ndarray:
    """Chunk whose action i is (start + i, 0): easy to tell apart."""
    return np.stack([start + np.arange(n), np.zeros(n)], 1)


@pytest.mark.parametrize("latency, dropped", [(0.0, 0), (0.15, 1), (0.4, 4)])
def test_late_actions_are_dropped(latency: float, dropped: int) -> None:
    s = schedule(watchdog_s=1.0)  # the whole 0.8 s chunk plays out
    stats = s.add_chunk(10.0, ramp(), now=10.0 + latency)  # margin 0.01: due <= now + 0.01 dropped
    assert (stats.received, stats.dropped, s.pending) == (8, dropped, 8 - dropped)
    assert stats.first_due == pytest.approx(10.0 + (dropped + 1) * DT)
    sent = [a for k in range(1, 9) for a in s.pop_due(10.0 + k * DT + 1e-6)]
    assert [a.due for a in sent] == pytest.approx([10.0 + k * DT for k in range(dropped + 1, 9)])
    assert [a.action[0] for a in sent] == pytest.approx(list(ramp()[dropped:, 0]))
    assert (s.stats.dropped, s.stats.sent) == (dropped, 8 - dropped)
    assert s.stats.fraction_dropped == pytest.approx(dropped / 8)


def test_all_late_chunk_schedules_nothing_and_does_not_feed_the_watchdog() -> None:
    s = schedule()
    stats = s.add_chunk(10.0, ramp(), now=11.0)
    assert (stats.dropped, stats.first_due, s.pending) == (8, None, 0)
    assert s.hold(11.0)


def test_newest_chunk_wins_from_its_first_valid_action() -> None:
    s = schedule()
    s.add_chunk(0.0, ramp(start=1.0), now=0.0)  # due 0.1 .. 0.8
    assert [a.due for a in s.pop_due(0.25)] == pytest.approx([0.1, 0.2])
    # Chunk B from the observation at 0.2 arrives at 0.32: its 0.3 action is late, 0.4 is first valid.
    stats = s.add_chunk(0.2, ramp(start=50.0), now=0.32)
    assert (stats.dropped, stats.replaced) == (1, 5)  # A's 0.4 .. 0.8 replaced, A's 0.3 kept
    sent = s.pop_due(0.45)
    assert [a.due for a in sent] == pytest.approx([0.3, 0.4])
    assert [a.action[0] for a in sent] == [3.0, 51.0]
    assert [a.stamp for a in sent] == [0.0, 0.2]  # each action knows the observation it came from
    assert s.pending == 6  # B's 0.5 .. 1.0


def test_obs_stamp_is_carried_when_scheduling_from_arrival() -> None:
    s = schedule()
    s.add_chunk(0.3, ramp(n=2), now=0.3, obs_stamp=0.1)  # no latency compensation: due from arrival
    assert [(a.due, a.stamp) for a in s.pop_due(0.5)] == [(pytest.approx(0.4), 0.1), (pytest.approx(0.5), 0.1)]


def test_replacement_off_grid_keeps_earlier_actions() -> None:
    s = schedule()
    s.add_chunk(0.0, ramp(start=1.0), now=0.0)
    stats = s.add_chunk(0.25, ramp(n=4, start=50.0), now=0.26)  # due 0.35 .. 0.65, none late
    assert (stats.dropped, stats.replaced) == (0, 5)  # A's 0.4 .. 0.8
    sent = s.pop_due(0.7)
    assert [a.due for a in sent] == pytest.approx([0.1, 0.2, 0.3, 0.35, 0.45, 0.55, 0.65])
    assert [a.action[0] for a in sent] == [1.0, 2.0, 3.0, 50.0, 51.0, 52.0, 53.0]


def test_workspace_clamp() -> None:
    s = schedule()
    stats = s.add_chunk(0.0, np.array([[-5.0, 50.0], [50.0, 50.0], [120.0, 130.0]]), now=0.0)
    assert stats.clamped == 2
    assert [a.action.tolist() for a in s.pop_due(0.3)] == [[0.0, 50.0], [50.0, 50.0], [100.0, 100.0]]


def test_max_step_limits_the_norm_and_updates_from_sent_actions() -> None:
    s = schedule(max_step=5.0)
    s.add_chunk(0.0, np.array([[10.0, 10.0], [16.0, 18.0], [16.0, 17.0], [25.0, 17.0]]), now=0.0)
    first = s.pop_due(0.1)
    assert first[0].action.tolist() == [10.0, 10.0]  # no predecessor: not limited
    # The caller was late: both overdue actions come out, in order, each limited relative to the last sent.
    sent = s.pop_due(0.3)
    assert [a.due for a in sent] == pytest.approx([0.2, 0.3])
    np.testing.assert_allclose(sent[0].action, [13.0, 14.0])  # (6, 8) shortened to length 5
    np.testing.assert_allclose(sent[1].action, [16.0, 17.0])  # |(3, 3)| < 5 from the limited action
    np.testing.assert_allclose(s.pop_due(0.4)[0].action, [21.0, 17.0])
    assert s.stats.limited == 2


def test_watchdog_fires_discards_the_schedule_and_clears_on_a_new_chunk() -> None:
    s = schedule(watchdog_s=0.5)
    assert s.hold(0.0)  # no chunk yet
    s.add_chunk(0.0, ramp(), now=0.0)
    assert not s.hold(0.5)
    assert len(s.pop_due(0.45)) == 4
    assert s.hold(0.51)
    assert s.pop_due(0.6) == [] and s.pending == 0
    assert s.stats.expired == 4
    s.add_chunk(0.9, ramp(start=10.0), now=0.95)
    assert not s.hold(0.95)
    sent = s.pop_due(1.0)
    assert [a.due for a in sent] == pytest.approx([1.0]) and sent[0].action[0] == 10.0


@pytest.mark.parametrize(
    "actions, match",
    [
        (np.array([[1.0, np.nan], [1.0, 1.0]]), r"NaN/inf values in rows \[0\]"),
        (np.array([[1.0, 1.0], [np.inf, 1.0]]), r"NaN/inf values in rows \[1\]"),
        (np.zeros((3, 3)), r"shape \(N >= 1, 2\); got \(3, 3\)"),
        (np.zeros(2), r"got \(2,\)"),
        (np.zeros((0, 2)), r"got \(0, 2\)"),
    ],
)
def test_bad_chunks_raise_and_change_nothing(actions: np.ndarray, match: str) -> None:
    s = schedule()
    s.add_chunk(0.0, ramp(), now=0.0)
    before = (s.pending, s.stats.chunks, s.stats.received, s.last_chunk_time)
    with pytest.raises(ValueError, match=match):
        s.add_chunk(0.1, actions, now=0.2)
    assert (s.pending, s.stats.chunks, s.stats.received, s.last_chunk_time) == before


def test_bad_configuration() -> None:
    with pytest.raises(ValueError, match="workspace"):
        schedule(workspace_min=[0.0, 10.0], workspace_max=[1.0, 5.0])
    with pytest.raises(ValueError, match="max_step"):
        schedule(max_step=0.0)
